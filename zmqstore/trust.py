"""The trust boundary: who may connect to a node's ports, and which node a peer message may speak for
(docs/SECURITY.md).

Every handshake on a node's sockets is decided here, by a ZAP handler (ZeroMQ's authentication
protocol, RFC 27) that the node loop serves like any other socket:

- peer domain (the peer port and the PUB): with keys (CurveZMQ), only the nodes' keys, each named
  `node-<id>` for the node its file names; without keys, only the hosts of the cluster's members;
- client domain (the client port): with keys, only allow-listed client keys, named `rw` or `ro`;
  without keys, anyone; either way up to `max_connections` connections at once, and at most
  `max_connections_per_host` from one address (so one host cannot take every slot).

Each peer message must then come from the node it names: `admits` compares the connection's
User-Id (with keys) or peer address (without) with that node's. A process without a node's key, or
on another address, can neither pose as a peer nor listen to the change stream.

pyzmq's `zmq.auth` authenticators keep one allow list for every domain and run in a thread of their
own; the rules here differ by domain and count the client port's connections, which the loop knows,
so the handler is this small class instead (the choice is recorded in docs/SECURITY.md).
"""
import collections
import logging
import os
import socket
import time

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from .config import host_addresses
from .keys import READ_ONLY

ZAP_ENDPOINT = "inproc://zeromq.zap.01"     # where libzmq sends ZAP requests (RFC 27)
PEER_DOMAIN = b"zmqstore-peer"
CLIENT_DOMAIN = b"zmqstore-client"
_OK, _DENIED = b"200", b"400"
# What the loop learns from the client port's monitor: connections opened and closed.
_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
ZAP_PER_PASS = 256      # handshakes decided per loop iteration, so a connection flood cannot hold the loop
EVENTS_PER_PASS = 1024  # monitor events read per call, likewise

log = logging.getLogger(__name__)


class Gatekeeper:
    """Decides every handshake (serve the `zap` socket) and admits peer messages (`admits`).
    Create it before any guarded socket binds; `close()` closes its sockets."""

    def __init__(self, ctx, peers, max_connections, max_per_host, security=None):
        self.security = security
        # A connection's User-Id is what _decide named its key: "node-<id>", or "rw"/"ro" for clients.
        self.meta = "User-Id" if security is not None else "Peer-Address"
        self.set_peers(peers)
        self.max_connections, self.max_per_host = max_connections, max_per_host
        # The client port's connections. `open_from` counts every open one per address, exactly (the
        # monitor gives each one's file descriptor when it is accepted and when it closes). Admission
        # happens later, at the handshake, where no descriptor is known: `admitted` counts the
        # admitted ones per address, and when a connection from an address closes it is clamped to
        # what is still open from there. It may so over-count for a while (a host's unfinished
        # handshakes and refused sockets close within seconds), which refuses only that host.
        self.connections = {}       # file descriptor -> peer address
        self.open_from = collections.Counter()
        self.admitted = collections.Counter()
        self.admitted_total = 0
        self.refused = {PEER_DOMAIN: 0, CLIENT_DOMAIN: 0, "message": 0}
        self._logged = {PEER_DOMAIN: 0, CLIENT_DOMAIN: 0, "message": 0}
        self.monitor = None
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        try:
            self.zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            self.zap.close()    # an open socket would make the context's term() wait forever
            raise

    def set_peers(self, peers):
        """Admit the peers given (config.Peer, or protocol.Member as the membership records them) and
        no one else, from the next handshake and message on (docs/MEMBERSHIP.md)."""
        security = self.security
        if security is not None:
            # Only the peers' keys: not this node's own, nor keys in the directory of nodes not members.
            # A node whose key is being rotated has two (keys.py): either is that node's. A member
            # added at runtime brings its key in its membership record.
            self.node_of_key = {key: p.node_id for p in peers for key in security.nodes.get(p.node_id, ())}
            for p in peers:
                key = getattr(p, "key", None)
                if key is not None:
                    self.node_of_key[key.encode()] = p.node_id
            self.allowed = {p.node_id: frozenset({f"node-{p.node_id}"}) for p in peers}
            self.member_hosts = frozenset()
        else:
            self.allowed = {p.node_id: host_addresses(p.host) for p in peers}
            for peer in peers:
                if not self.allowed[peer.node_id]:
                    log.warning("peer %d's host %r does not resolve: its connections will be refused",
                                peer.node_id, peer.host)
            self.member_hosts = frozenset().union(*self.allowed.values())

    # ------------------------------------------------------------ sockets

    @staticmethod
    def guard_peer(sock):
        """The peer port and the PUB: members only (before the socket binds)."""
        sock.zap_domain = PEER_DOMAIN

    def guard_client(self, sock):
        """The client port: counted, and capped at max_connections (before the socket binds)."""
        sock.zap_domain = CLIENT_DOMAIN
        endpoint = f"inproc://zmqstore-monitor-{id(sock)}"
        sock.monitor(endpoint, _MONITOR_EVENTS)
        monitor = sock.context.socket(zmq.PAIR)
        # libzmq sends monitor events blocking: a full queue would stall every socket of the context
        # (the peer plane included) during a connection flood while the loop is busy. Unbounded here;
        # the events are a few bytes each and the loop reads them first in every iteration.
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(endpoint)
        self.monitor = monitor

    def close(self):
        for sock in (self.monitor, self.zap):
            if sock is not None:
                sock.close(linger=0)

    # ------------------------------------------------------------ the loop's side

    def serve(self):
        """Answer waiting ZAP requests, each after noting the connections opened and closed so far
        (a connection's ACCEPTED event precedes its handshake)."""
        zap = self.zap
        for _ in range(ZAP_PER_PASS):
            if self.monitor is not None:
                self.count_connections()
            if not zap.poll(0):
                return
            request = zap.recv_multipart()
            try:
                reply = self._decide(request)
            except Exception:       # a REP socket must answer, or it can never take another request
                log.exception("refusing a handshake the ZAP handler could not decide")
                reply = [b"1.0", request[1] if len(request) > 1 else b"", _DENIED, b"internal error", b"", b""]
            zap.send_multipart(reply)

    def count_connections(self):
        """Read the client port's monitor: connections opened and closed (at most EVENTS_PER_PASS)."""
        monitor = self.monitor
        for _ in range(EVENTS_PER_PASS):
            if not monitor.poll(0):
                break
            parsed = parse_monitor_message(monitor.recv_multipart())
            event, fd = parsed["event"], parsed["value"]
            if event == zmq.EVENT_ACCEPTED:
                address = _peer_address(fd)
                self.connections[fd] = address
                self.open_from[address] += 1
            elif event == zmq.EVENT_DISCONNECTED and fd in self.connections:
                address = self.connections.pop(fd)
                self.open_from[address] -= 1
                still = self.open_from[address]
                if self.admitted[address] > still:
                    self.admitted_total -= self.admitted[address] - still
                    self.admitted[address] = still
                if not still:
                    del self.open_from[address], self.admitted[address]

    def housekeeping(self):
        """Every second: closed connections noted, and admissions clamped to what is still open from
        each address (an admission whose ACCEPTED event came after it, and whose connection closed
        unseen, would otherwise hold its slot)."""
        self.count_connections()
        for address in list(self.admitted):
            if self.admitted[address] > self.open_from[address]:
                self.admitted_total -= self.admitted[address] - self.open_from[address]
                self.admitted[address] = self.open_from[address]

    def _decide(self, request):
        """A ZAP request -> its reply: [version, request id, status, text, user id, metadata]."""
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", _DENIED, b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        address = address.decode("ascii", "replace")
        user, why = self._user(domain, address, mechanism, request[6:])
        if user is not None:
            return [version, request_id, _OK, b"OK", user.encode(), b""]
        self._note_refusal(domain, address, why)
        return [version, request_id, _DENIED, why.encode(), b"", b""]

    def _user(self, domain, address, mechanism, credentials):
        """(the connection's User-Id, None) when admitted, else (None, why not)."""
        security = self.security
        key = None
        if security is not None:
            if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
                return None, "keys are required"
            key = z85.encode(credentials[0])
        elif mechanism != b"NULL":
            return None, "this node has no keys"
        if domain == PEER_DOMAIN:
            if security is None:
                return ("", None) if address in self.member_hosts else (None, "not a member's host")
            node_id = self.node_of_key.get(key)
            return (f"node-{node_id}", None) if node_id is not None else (None, "not a node's key")
        if domain == CLIENT_DOMAIN:
            if self.admitted[address] >= self.max_per_host:
                return None, f"max_connections_per_host = {self.max_per_host} reached"
            if self.admitted_total >= self.max_connections:
                return None, f"max_connections = {self.max_connections} reached"
            role = "" if security is None else security.clients.get(key)
            if role is None and key in self.node_of_key:
                # A member's node key: a node admitted by `add-member --key` asks for its membership
                # (--join); it may do that and nothing else (node_may).
                role = f"node-{self.node_of_key[key]}"
            if role is None:
                return None, "not an allowed client key"
            self.admitted[address] += 1
            self.admitted_total += 1
            return role, None
        return None, "unknown ZAP domain"

    def _note_refusal(self, domain, address, why):
        if self._count(domain):
            log.warning("refused a connection from %s to the %s plane: %s (%d refused so far)", address,
                        "peer" if domain == PEER_DOMAIN else "client", why, self.refused[domain])

    def refuse_message(self, source, what):
        """A peer message dropped (not admitted, malformed, or refused on its content): counted, and
        logged at most once a second."""
        if self._count("message"):
            log.warning("refused %s from %s (%d peer messages refused so far)", what, source,
                        self.refused["message"])

    def _count(self, kind) -> bool:
        """Count one refusal; True when it should be logged (a flood of refusals is not a flood of lines)."""
        self.refused[kind] += 1
        now = time.monotonic()
        if now - self._logged[kind] >= 1.0:
            self._logged[kind] = now
            return True
        return False

    def admits(self, message, meta, envelope) -> bool:
        """Whether a request (validated) on the peer port may be from the node it names: it arrived on a
        connection whose `self.meta` property is `meta` and whose routing identity (`envelope`) is that
        node's, node-<id>. (The identity matters because replies go by it: a connection that took over
        another node's identity would receive that node's replies.)"""
        sender = protocol.peer_sender(message)
        return meta in self.allowed.get(sender, ()) and envelope == [b"node-%d" % sender]

    @staticmethod
    def read_only(user) -> bool:
        """Whether a client connection's User-Id is a read-only key's."""
        return user == READ_ONLY

    @staticmethod
    def node_may(user, request) -> bool:
        """What a node's key may ask on a client port (with keys): PING, STATUS, MEMBERS, and
        ADD_MEMBER for itself (--join). A client key may ask anything its role allows."""
        if not user.startswith("node-"):
            return True
        if request.command in ("PING", "STATUS", "MEMBERS"):
            return True
        return request.command == "ADD_MEMBER" and user == f"node-{request.args[0]}"


def _peer_address(fd) -> str:
    """The IP address of the connection on file descriptor `fd` (a duplicate is asked, then closed).
    "?" when it is already gone: the monitor event may be read after the connection closed."""
    try:
        dup = os.dup(fd)
    except OSError:
        return "?"
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return "?"
    with sock:
        try:
            return sock.getpeername()[0]
        except OSError:
            return "?"
