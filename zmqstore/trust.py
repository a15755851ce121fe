"""The trust boundary of the peer plane: who may connect to a node's peer port and PUB, and which node
a peer message may speak for (docs/SECURITY.md).

Without keys, a member is known by its host: pyzmq's ZAP handler (`zmq.auth`, on the NULL mechanism)
lets only the members' hosts complete a handshake with the peer port and the PUB, and each peer
message must come from the host of the node id it names. A process on another address can neither
pose as a peer nor listen to the change stream. The client port is not restricted here.
"""
import logging

from zmq.auth.thread import ThreadAuthenticator

from . import protocol
from .config import host_addresses

# The ZAP domain of the peer plane. On the NULL mechanism libzmq asks the ZAP handler only for
# sockets that set a domain, so the client port (no domain) is never held up by it.
PEER_DOMAIN = b"zmqstore-peer"
# zmq.auth allows every NULL connection until an address is allowed; a node without peers allows
# this one, which no connection can come from, so that nobody is admitted.
_NOBODY = "nobody"

log = logging.getLogger(__name__)


class PeerGate:
    """Admission to the peer plane, by host. `guard(sock)` before a peer socket binds; `admits` per
    message; `close()` stops the ZAP handler thread."""

    def __init__(self, ctx, peers):
        self.hosts_of = {p.node_id: host_addresses(p.host) for p in peers}
        for peer in peers:
            if not self.hosts_of[peer.node_id]:
                log.warning("peer %d's host %r does not resolve: its connections will be refused",
                            peer.node_id, peer.host)
        allowed = set().union(*self.hosts_of.values()) if peers else set()
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("zmqstore.zap"))
        self._auth.start()
        self._auth.allow(*(allowed or {_NOBODY}))

    @staticmethod
    def guard(sock):
        """Make `sock` ask the ZAP handler about every connection (before it binds)."""
        sock.zap_domain = PEER_DOMAIN

    def admits(self, message, peer_address) -> bool:
        """Whether `message` (validated) may be from the node it names, arriving from `peer_address`."""
        return peer_address in self.hosts_of.get(protocol.peer_sender(message), ())

    def close(self):
        self._auth.stop()
