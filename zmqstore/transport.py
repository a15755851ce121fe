"""Socket creation: binding with clear errors, identities, high-water marks, linger and size caps."""
import errno

import zmq

from .errors import ConfigError

# Messages queued per peer before ZeroMQ drops (ROUTER) or blocks (DEALER): above the deepest
# pipeline a client may open (MAX_IN_FLIGHT), and low enough that one client cannot queue unbounded memory.
ROUTER_HWM = 10_000
MAX_IN_FLIGHT = 5_000
HANDSHAKE_MS = 5_000


def endpoint(host, port) -> str:
    return f"tcp://{host}:{port}"


def _bind(sock, host, port, what):
    try:
        sock.bind(endpoint(host, port))
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{what} {host}:{port} is already in use; stop the process holding it "
                              f"or choose another port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"{what} {host}:{port}: address not available on this machine; fix --host") from None
        raise ConfigError(f"cannot bind {what} {host}:{port}: {exc}") from None


def curve_server(sock, pair):
    """CurveZMQ as a server with this key pair (keys.KeyPair); the ZAP handler then sees each
    client's public key (docs/SECURITY.md)."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True


def curve_client(sock, pair, server_public):
    """CurveZMQ as a client with this key pair, to a server that must hold `server_public`'s secret."""
    sock.curve_publickey = pair.public
    sock.curve_secretkey = pair.secret
    sock.curve_serverkey = server_public


def bind_router(ctx, host, port, max_msg_size, guard, what="port", send_hwm=ROUTER_HWM, mandatory=False,
                curve=None):
    """A node's client port or peer port. `guard` makes the ZAP handler decide every connection;
    `curve` (a key pair) turns on CurveZMQ. Frames larger than max_msg_size drop the sender's
    connection. mandatory: a send to a connection whose queue is full raises zmq.Again instead of
    dropping the message (outbox.py)."""
    sock = ctx.socket(zmq.ROUTER)
    guard(sock)
    if curve is not None:
        curve_server(sock, curve)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    sock.setsockopt(zmq.SNDHWM, send_hwm)
    # A connection that has not finished its handshake within this time is closed (libzmq's
    # default is 30 s): idle sockets that never greet cannot pile up.
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    if mandatory:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # Peers connect with a fixed identity (node-<id>). A peer that restarts, or reconnects after a
    # partition that swallowed its old connection's FIN, takes its identity over at once: by
    # default a ROUTER refuses the new connection while it still holds the half-open old one.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    _bind(sock, host, port, what)
    return sock


# What a subscriber may send a PUB: its handshake (CurveZMQ's INITIATE is about 300 bytes; the limit
# applies to it too) and subscriptions (a flag byte and a prefix: everything, the empty prefix, or
# in a partitioned dynamo cluster one 3-byte topic per partition owned, docs/PARTITIONING.md). A
# larger frame drops the connection before it is buffered.
PUB_MAX_INBOUND = 1024
SUB_TOPICS_HWM = 2 * 4096 + 64   # room for every partition's topic, unsubscribed and subscribed again


def bind_pub(ctx, host, port, guard, curve=None):
    """The node's change-stream socket, peer plane: `guard` admits only members."""
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, PUB_MAX_INBOUND)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    guard(sock)
    if curve is not None:
        curve_server(sock, curve)
    _bind(sock, host, port, "pub_port")
    return sock


def connect_sub(ctx, peer, source_host, max_msg_size, curve=None, topics=None):
    """A SUB connected to one peer's PUB, sending from source_host: one per peer, so that what
    arrives is known to come from that peer. Subscribed to `topics` (None: everything). `curve`:
    (own pair, peer's public key)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    # Subscriptions travel to the PUB as messages under the SUB's send high-water mark: past it
    # libzmq drops them without a word (seen: with 4,096 topics, a quarter arrived at the default 1,000).
    sock.setsockopt(zmq.SNDHWM, SUB_TOPICS_HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    set_topics(sock, (), topics)
    try:
        if curve is not None:
            curve_client(sock, *curve)
        sock.connect(f"tcp://{source_host}:0;{peer.host}:{peer.pub_port}")
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def set_topics(sock, old, new):
    """Move a SUB's subscriptions from the topics `old` to `new` (None: everything, b"")."""
    old = {b""} if old is None else set(old)
    new = {b""} if new is None else set(new)
    for topic in old - new:
        sock.setsockopt(zmq.UNSUBSCRIBE, topic)
    for topic in new - old:
        sock.setsockopt(zmq.SUBSCRIBE, topic)


def connect_dealer(ctx, host, port, identity=None, source_host=None, max_msg_size=-1, immediate=False, curve=None):
    """A DEALER to a node's ROUTER; with source_host, outgoing traffic leaves from that address
    (ZeroMQ `tcp://SRC:0;DST:PORT`) so partitions between node addresses can be made with iptables.
    immediate: queue nothing for a peer that is not connected (a send fails instead), so a peer
    that comes back does not receive a backlog of stale requests."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    target = f"{host}:{port}"
    try:
        if curve is not None:
            curve_client(sock, *curve)
        sock.connect(f"tcp://{source_host}:0;{target}" if source_host else f"tcp://{target}")
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


# Hot-path send/recv. pyzmq's sugar layer (send_multipart, recv_multipart, enum flags) costs more
# than the messages themselves at our sizes: measured 2.8 us for send_multipart + 2 recv against
# 0.6 us for the Cython backend methods with int flags. These call the backend directly.
_backend_send = zmq.backend.Socket.send
_backend_recv = zmq.backend.Socket.recv
_backend_get = zmq.backend.Socket.get
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock, frames):
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _backend_send(sock, frame, _SNDMORE if i < last else 0)


def try_send_frames(sock, frames):
    """send_frames without blocking: raises zmq.Again when a ROUTER_MANDATORY socket's queue for the
    addressed connection is full (checked at the first frame; later frames of a message always go)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _backend_send(sock, frame, (_SNDMORE | NOBLOCK) if i < last else NOBLOCK)


def recv_frames(sock, flags=0):
    """All frames of the next message; raises zmq.Again with NOBLOCK when none is waiting."""
    frames = [_backend_recv(sock, flags)]
    while _backend_get(sock, _RCVMORE):
        frames.append(_backend_recv(sock, 0))
    return frames


def recv_with_meta(sock, prop, flags=0):
    """All frames of the next message as bytes, and one metadata property of the connection it came
    on: "Peer-Address" (its IP address) or "User-Id" (what the ZAP handler named the connection's key)."""
    frames = [_backend_recv(sock, flags, False)]
    while frames[-1].more:
        frames.append(_backend_recv(sock, 0, False))
    return [f.bytes for f in frames], frames[-1].get(prop)


def recv_routed(sock, flags=0):
    """recv_frames for a ROUTER: the identity frame is always followed by at least one more, so one
    RCVMORE check is saved on the usual two-frame message (each check costs about 0.7 us)."""
    frames = [_backend_recv(sock, flags), _backend_recv(sock, 0)]
    while _backend_get(sock, _RCVMORE):
        frames.append(_backend_recv(sock, 0))
    return frames


def has_input(sock):
    """True when a message is waiting (ZMQ_EVENTS; also processes pending socket commands)."""
    return bool(_backend_get(sock, _EVENTS) & _POLLIN)


def can_send(sock):
    """True when a message would be taken now (ZMQ_EVENTS has POLLOUT)."""
    return bool(_backend_get(sock, _EVENTS) & _POLLOUT)


def send(sock, frame):
    _backend_send(sock, frame, 0)


def send_nowait(sock, frame):
    """send without blocking: raises zmq.Again when the socket cannot take it now."""
    _backend_send(sock, frame, NOBLOCK)


def recv(sock):
    return _backend_recv(sock, 0)
