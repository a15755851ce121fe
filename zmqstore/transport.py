"""Socket creation: binding with clear errors, identities, high-water marks, linger and size caps."""
import errno

import zmq

from .errors import ConfigError

ROUTER_HWM = 100_000   # queued messages per peer before ROUTER drops; pipelined clients keep many in flight


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


def bind_router(ctx, host, port, max_msg_size):
    """The node's request socket. Frames larger than max_msg_size drop the sender's connection."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
    _bind(sock, host, port, "port")
    return sock


def bind_pub(ctx, host, port):
    """The node's change-stream socket."""
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    _bind(sock, host, port, "pub_port")
    return sock


def connect_dealer(ctx, host, port, identity=None, source_host=None, max_msg_size=-1):
    """A DEALER to a node's ROUTER; with source_host, outgoing traffic leaves from that address
    (ZeroMQ `tcp://SRC:0;DST:PORT`) so partitions between node addresses can be made with iptables."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    target = f"{host}:{port}"
    sock.connect(f"tcp://{source_host}:0;{target}" if source_host else f"tcp://{target}")
    return sock
