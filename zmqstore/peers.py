"""The peer plane's sockets (docs/ARCHITECTURE.md, "One process, one loop"): the peer port
(ROUTER), this node's change stream (PUB), and for each peer one SUB on its stream and one DEALER
to its peer port (per key it may hold). Messages in are checked against the connection they came
on (trust.py) and handed to the mode's peer side (`peering`: Roles or Replication); messages out
are an iteration's Sends items, sent after its commit (sends.py)."""
import collections
import itertools
import logging
import random
import time

import zmq

from . import errors, protocol, transport
from .sends import REPLY, TO_PEER

PEER_DRAIN = 4096             # messages taken from one peer socket per loop iteration
VERSION_LOG_INTERVAL = 60.0   # seconds between two lines about one peer's unsupported version
# Messages that announce the sender's accepted peer versions, in their last field.
ANNOUNCING = frozenset({"ROLE", "ROLE_REPLY", "DSTATUS", "DSTATUS_REPLY"})

log = logging.getLogger("zmqstore.node")


class PeerPlane:
    def __init__(self, ctx, config, gate, security, faults):
        own = security.own if security is not None else None
        self.gate, self.faults = gate, faults
        # What a peer may send: log entries and states each up to about max_request_size.
        self.frame_max = 2 * config.max_request_size + (1 << 20)
        self.limits = None              # set by attach(): the engine's limits with frame_max
        self.peering = None             # the mode's peer side (None standalone)
        self.subs = {}                  # peer id -> SUBs connected to that peer's PUB (one per key)
        self.topics = None              # what the SUBs subscribe to (None: everything; transport.set_topics)
        self.dealers = {}               # peer id -> DEALERs to that peer's peer port (one per key)
        self.router = self.pub = None
        self._ctx, self._config, self._security, self._own = ctx, config, security, own
        self._where = {}                # peer id -> (host, pub port, peer port, key) its sockets were made for
        self._sub_peers, self._dealer_peers = {}, {}
        self.version = 0                # changes whenever the sockets do (the loop then polls the new list)
        self.announced = {}             # peer id -> (lowest, highest) peer version it accepts, as it said
        self._version_logged = {}       # source -> when its unsupported version was last logged
        self.spoken = protocol.speak(())    # the version peer messages are encoded in (_choose_version)
        self.received = collections.Counter()   # peer messages taken (valid, from a member), by command
        try:
            self.router = transport.bind_router(ctx, config.host, config.peer_port, self.frame_max, gate.guard_peer,
                                                what="peer_port", curve=own)
            self.pub = transport.bind_pub(ctx, config.host, config.pub_port, gate.guard_peer, curve=own)
        except BaseException:
            self.close()
            raise

    def attach(self, peering, limits):
        self.peering = peering
        self.limits = limits._replace(max_request_size=self.frame_max)

    @property
    def sockets(self) -> list:
        """What the loop polls for input, the peer port first."""
        return [self.router, *self._sub_peers, *self._dealer_peers]

    def serve(self, sock):
        """Take what one of `sockets` holds."""
        if sock is self.router:
            self._serve_router(sock)
        elif sock in self._sub_peers:
            self._serve_socket(sock, self._sub_peers[sock], protocol.PEER_STREAM)
        else:
            self._serve_socket(sock, self._dealer_peers[sock], protocol.PEER_REPLIES)

    def close(self):
        for sock in (self.router, self.pub, *itertools.chain(*self.subs.values(), *self.dealers.values())):
            if sock is not None:
                sock.close(linger=0)

    def set_topics(self, topics):
        """Subscribe every peer's stream to `topics` (None: everything), now and at each connect."""
        if topics is not self.topics and topics != self.topics:
            for socks in self.subs.values():
                for sock in socks:
                    transport.set_topics(sock, self.topics, topics)
            self.topics = topics

    def set_peers(self, peers):
        """Connect to the peers (config.Peer or protocol.Member: the membership's) that are new or
        moved; close the sockets of those that left (docs/MEMBERSHIP.md)."""
        wanted = {p.node_id: p for p in peers}
        self.announced = {nid: versions for nid, versions in self.announced.items() if nid in wanted}
        self._choose_version()
        where = {nid: (p.host, p.pub_port, p.peer_port, getattr(p, "key", None)) for nid, p in wanted.items()}
        for nid in [nid for nid in self._where if where.get(nid) != self._where[nid]]:
            for sock in (*self.subs.pop(nid, ()), *self.dealers.pop(nid, ())):
                sock.close(linger=0)
            del self._where[nid]
        for nid, peer in wanted.items():
            if nid not in self._where:
                self._connect(peer)
                self._where[nid] = where[nid]
        self._sub_peers = {sock: node_id for node_id, socks in self.subs.items() for sock in socks}
        self._dealer_peers = {sock: node_id for node_id, socks in self.dealers.items() for sock in socks}
        self.version += 1

    def _connect(self, peer):
        ctx, config, security, own = self._ctx, self._config, self._security, self._own
        # One SUB and one DEALER per key the peer may hold: two while its key is rotated
        # (docs/SECURITY.md). Only those expecting the key it holds complete a handshake:
        # messages arrive on them, and sends go to them (the others refuse, IMMEDIATE).
        curves = [None]
        if security is not None:
            keys = list(security.nodes.get(peer.node_id, ()))
            key = getattr(peer, "key", None)
            if key is not None and key.encode() not in keys:
                keys.append(key.encode())
            curves = [(own, key) for key in keys]
            if not curves:
                log.warning("no public key for node %d (not in node_keys, none in its membership record): "
                            "not connecting to it", peer.node_id)
        self.subs[peer.node_id] = tuple(
            transport.connect_sub(ctx, peer, config.host, self.frame_max, curve, self.topics) for curve in curves)
        self.dealers[peer.node_id] = tuple(transport.connect_dealer(
            ctx, peer.host, peer.peer_port, identity=b"node-%d" % config.node_id,
            source_host=config.host, max_msg_size=self.frame_max, immediate=True, curve=curve)
            for curve in curves)

    def send(self, items):
        """Send an iteration's peer messages (sends.py). A message to a peer that cannot take it
        now (not connected, or its queue full) is dropped: every one is resent or made up for
        (FETCH and DFETCH retries, the next heartbeat or status report)."""
        for kind, target, body in items:
            if kind is TO_PEER:
                self._send_to(target, body)
            elif kind is REPLY:
                transport.send_frames(self.router, target + [body])
            elif not (self.faults.drop_changes and random.random() < self.faults.drop_changes):   # PUBLISH
                if target is None:
                    transport.send(self.pub, body)
                else:       # a topic: only the peers subscribed to it get the message (set_topics)
                    transport.send_frames(self.pub, [target, body])

    def _send_to(self, node_id, body):
        for dealer in self.dealers.get(node_id, ()):
            try:
                transport.send_nowait(dealer, body)
                return
            except zmq.Again:
                pass

    def reachable(self, node_id):
        """Whether a message to that peer would be taken now: a DEALER with a completed connection
        (IMMEDIATE) and room in its queue."""
        return any(transport.can_send(dealer) for dealer in self.dealers.get(node_id, ()))

    def _serve_router(self, sock):
        """Requests on the peer port: each must name a member, and come on that member's connection
        (its key with keys, its host without)."""
        gate = self.gate
        for taken in range(PEER_DRAIN):
            if taken and not transport.has_input(sock):    # as in _serve_socket
                return
            try:
                frames, meta = transport.recv_with_meta(sock, gate.meta, transport.NOBLOCK)
            except zmq.Again:
                return
            try:
                envelope, body = protocol.split_frames(frames)
                message = protocol.decode_peer(body, self.limits)
            except errors.UnsupportedVersion as exc:
                self._refuse_version(self._name(meta), exc)
                continue
            except errors.RequestError as exc:
                gate.refuse_message(meta, f"a malformed peer message ({exc})")
                continue
            if message.command not in protocol.PEER_REQUESTS or not gate.admits(message, meta, envelope):
                gate.refuse_message(meta, f"{message.command} naming node {protocol.peer_sender(message)}")
            elif self.peering is not None:
                self._handle(self.peering.on_request, message, envelope)

    def _serve_socket(self, sock, peer_id, commands):
        """What one peer sends on the sockets this node connected to it: its change stream (a SUB)
        or its replies (a DEALER). Each message must be one of `commands` and name that peer."""
        for taken in range(PEER_DRAIN):
            # After the first, ask ZMQ_EVENTS whether another is waiting: for the common lone
            # message (a CHANGE, an ACK) that is cheaper than the failing recv that ends a drain.
            if taken and not transport.has_input(sock):
                return
            try:
                body = transport.recv_frames(sock, transport.NOBLOCK)[-1]
            except zmq.Again:
                return
            message = self._decode(body, f"node {peer_id}")
            if message is None:
                continue
            if message.command not in commands or protocol.peer_sender(message) != peer_id:
                self.gate.refuse_message(f"node {peer_id}",
                                         f"{message.command} naming node {protocol.peer_sender(message)}")
            else:
                self._handle(self.peering.on_message, message)

    def _decode(self, body, source):
        try:
            return protocol.decode_peer(body, self.limits)
        except errors.UnsupportedVersion as exc:
            self._refuse_version(source, exc)
            return None
        except errors.RequestError as exc:
            self.gate.refuse_message(source, f"a malformed peer message ({exc})")
            return None

    def _refuse_version(self, source, exc):
        """A peer of a release this one cannot talk to: said plainly, once a minute per source
        (docs/OPERATIONS.md, "Upgrading")."""
        now = time.monotonic()
        if now - self._version_logged.get(source, -VERSION_LOG_INTERVAL) >= VERSION_LOG_INTERVAL:
            self._version_logged[source] = now
            log.error("refusing peer messages from %s: %s. It runs a release whose peer protocol this one "
                      "does not speak; upgrade through releases whose peer versions overlap, one node at a "
                      "time (docs/OPERATIONS.md, \"Upgrading\")", source, exc.message)

    def _name(self, meta):
        """The peer a connection's User-Id or address belongs to, as the other sockets' lines name it."""
        nodes = [nid for nid, allowed in self.gate.allowed.items() if meta in allowed]
        return f"node {nodes[0]}" if len(nodes) == 1 else meta

    def _note_versions(self, message):
        """Record the peer versions a ROLE or DSTATUS announces; a change (an upgraded peer) is logged."""
        sender, versions = protocol.peer_sender(message), tuple(message.fields[-1])
        if self.announced.get(sender) != versions:
            if sender in self.announced or list(versions) != protocol.peer_versions():
                log.info("node %d accepts peer protocol versions %d..%d (this node: %d..%d)", sender,
                         *versions, *protocol.peer_versions())
            self.announced[sender] = versions
            self._choose_version()

    def announced_by_all(self, peer_ids, version) -> bool:
        """Whether each of these peers announced a range that holds `version` (one not heard from
        yet has not)."""
        announced = self.announced
        for pid in peer_ids:
            versions = announced.get(pid)
            if versions is None or not versions[0] <= version <= versions[1]:
                return False
        return True

    def _choose_version(self):
        """Encode in the highest version every peer announced it accepts (docs/PROTOCOL.md, section 6)."""
        before = self.spoken
        self.spoken = protocol.speak(self.announced.values())
        if self.spoken != before:
            log.info("encoding peer messages in version %d: the highest every peer accepts", self.spoken)

    def _handle(self, handler, message, *args):
        """A handler that raises drops its message and logs the sender; it never ends the node
        (storage failures stay fail-stop)."""
        self.received[message.command] += 1
        if message.command in ANNOUNCING:
            self._note_versions(message)
        try:
            handler(message, *args, time.monotonic())
        except errors.StorageError:
            raise
        except errors.RequestError as exc:     # refused on its content (a field this node cannot justify)
            self.gate.refuse_message(f"node {protocol.peer_sender(message)}", f"{message.command} ({exc})")
        except Exception:
            log.exception("dropping a %s from node %s that could not be processed", message.command,
                          protocol.peer_sender(message))
