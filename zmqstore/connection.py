"""A client's connection to one node at a time: endpoints, CurveZMQ keys, the DEALER socket, sending
a request and reading its reply, redirects and moving on to the next endpoint. No retries here: the
Client and its Pipeline decide those (docs/CLIENT.md)."""
import logging
import random
import time

import zmq

from . import errors, keys, protocol, transport
from .errors import ConfigError

log = logging.getLogger(__name__)

# Refusals a retry on another node (or the same one later) may cure; timeouts are retried too.
RETRYABLE = (errors.NotPrimary, errors.Unavailable)


class Retry:
    """Retry policy: up to `max_tries` attempts, exponential backoff with jitter, an overall deadline.
    The defaults ride out a failover (about 1 s with the default election interval): ten attempts
    spread over about 3 s of pauses, each trying the next endpoint or the primary a node named."""

    def __init__(self, max_tries=10, delay=0.05, backoff=2.0, max_delay=0.5, max_jitter=0.5, deadline=15.0):
        self.max_tries = max_tries
        self.delay = delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.max_jitter = max_jitter
        self.deadline = deadline

    def sleeps(self, started=None):
        """Yields the pause before each retry; stops when tries or the deadline (counted from
        `started`, default now) run out."""
        end = (time.monotonic() if started is None else started) + self.deadline
        delay = self.delay
        for _ in range(self.max_tries - 1):
            pause = min(delay, self.max_delay) * (1 + random.uniform(0, self.max_jitter))
            if time.monotonic() + pause >= end:
                return
            yield pause
            delay *= self.backoff


def parse_endpoints(endpoints):
    """-> (["host:port", ...], {"host:port": node id}) from "host:port" or "ID@host:port" items."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    result, node_ids = [], {}
    for e in endpoints:
        e = e.strip()
        node_id, at, rest = e.partition("@")
        if at:
            if not node_id.isdigit():
                raise ValueError(f"endpoint {e!r} must be host:port or ID@host:port")
            e = rest
        if e.startswith("tcp://"):
            e = e[len("tcp://"):]
        host, sep, port = e.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"endpoint {e!r} must be host:port or ID@host:port")
        result.append(f"{host}:{int(port)}")
        if at:
            node_ids[result[-1]] = int(node_id)
    if not result:
        raise ValueError("at least one endpoint is needed")
    return result, node_ids


class Connection:
    """Not thread-safe (like a socket). `endpoints`: "host:port" or "ID@host:port" items, a list or
    a comma-separated string; with keys every endpoint names its node (parse_endpoints).
    `context`: the ZeroMQ context class (zmq.asyncio.Context for the asyncio client, whose
    sockets it then makes; `attempt` is for blocking ones)."""

    def __init__(self, endpoints, timeout, secret_key=None, node_keys=None, context=zmq.Context):
        self.endpoints, self._node_ids = parse_endpoints(endpoints)
        self._credentials = (secret_key, node_keys)
        self._keys = None
        if secret_key is not None or node_keys is not None:
            if secret_key is None or node_keys is None:
                raise ValueError("keys need both secret_key (this client's NAME.key_secret) and node_keys")
            self._keys = keys.load_client_keys(secret_key, node_keys)
            self._node_keys_dir = node_keys
            unnamed = [e for e in self.endpoints if e not in self._node_ids]
            if unnamed:
                raise ValueError(f"with keys every endpoint must name its node as ID@host:port: {unnamed}")
        self.timeout = timeout
        self._context = context
        self._ctx = context()
        self.sock = None
        self.batches = True
        self._candidates = []       # sockets to a node whose key is rotated, one per key (handshake)
        self._endpoint_index = 0
        try:
            self._connect()
        except errors.ConnectionTimeout:
            pass            # the first attempt tries again and reports it

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._endpoint_index]

    def sibling(self) -> "Connection":
        """Another connection to the same endpoints with the same keys, starting at this one's
        current endpoint (a watch's own: docs/WATCH.md)."""
        other = Connection(self.named_endpoints(), self.timeout, *self._credentials, context=self._context)
        if other._endpoint_index != self._endpoint_index:
            other._endpoint_index = self._endpoint_index
            try:
                other._connect()
            except errors.ConnectionTimeout:
                pass
        return other

    def named_endpoints(self) -> list:
        """Every endpoint, as ID@host:port when its node id is known."""
        return [f"{self._node_ids[e]}@{e}" if e in self._node_ids else e for e in self.endpoints]

    def _connect(self):
        """Open the socket(s) to the current endpoint in place of the old ones. When that fails (no key
        for the node, a key ZeroMQ refuses) no socket is left and ConnectionTimeout is raised; the
        next attempt tries again, so the caller's retry policy moves on as after a timeout."""
        self._close_socket()
        self.batches = True     # pipelines send batches until this node answers one `malformed` (pipeline.py)
        opened = []
        try:
            server_keys = self._server_keys()
            for key in server_keys:
                opened.append(self._socket(key, immediate=len(server_keys) > 1))
        except (zmq.ZMQError, ConfigError) as exc:
            for sock in opened:
                sock.close(linger=0)
            raise errors.ConnectionTimeout(f"cannot connect to {self.endpoint}: {exc}") from None
        if len(opened) > 1:
            # The node's key is being rotated (docs/SECURITY.md): one socket per key it may hold;
            # handshake() keeps the one that completes its handshake.
            self._candidates = opened
        self.sock = opened[0]

    def _server_keys(self) -> tuple:
        """The keys the current endpoint's node may hold; (None,) without keys. The node keys are
        read again at each connection: a node's next key added while this client runs (a rotation,
        docs/SECURITY.md) is then tried after the first timeout. A directory that cannot be read
        (being changed) keeps the keys read before."""
        if self._keys is None:
            return (None,)
        try:
            self._keys = self._keys._replace(nodes=keys.load_node_keys(self._node_keys_dir))
        except ConfigError as exc:
            log.warning("keeping the node keys read before: %s", exc)
        node_id = self._node_ids.get(self.endpoint)
        node_keys = self._keys.nodes.get(node_id)
        if not node_keys:
            raise ConfigError(f"no key for node {node_id} in the node keys")
        return node_keys

    def _socket(self, node_key=None, immediate=False):
        """A DEALER connected to the current endpoint, expecting `node_key` when given (CurveZMQ).
        immediate: it can send only once its handshake has completed."""
        sock = self._ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if self._context is zmq.Context:    # blocking: the asyncio client times its own waits
                sock.setsockopt(zmq.RCVTIMEO, max(1, int(self.timeout * 1000)))
                # A send to a node that is down queues up to SNDHWM messages, then blocks: bound that wait too.
                sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout * 1000)))
            sock.setsockopt(zmq.SNDHWM, transport.ROUTER_HWM)
            if immediate:
                sock.setsockopt(zmq.IMMEDIATE, 1)
            if node_key is not None:
                transport.curve_client(sock, self._keys.own, node_key)
            sock.connect("tcp://" + self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def ready(self) -> bool:
        """Connect when no socket is open, then handshake(); False when either failed."""
        if self.sock is None:
            try:
                self._connect()
            except errors.ConnectionTimeout:
                return False
        return self.handshake()

    def handshake(self) -> bool:
        """With a node whose key is being rotated: wait up to the timeout for the first of the sockets
        (one per key) to complete its handshake, and keep that one. True at once otherwise."""
        if not self._candidates:
            return True
        poller = zmq.Poller()
        for sock in self._candidates:
            poller.register(sock, zmq.POLLOUT)
        ready = dict(poller.poll(self.timeout * 1000))
        if not ready:
            return False
        self.sock = next(sock for sock in self._candidates if sock in ready)
        for sock in self._candidates:
            if sock is not self.sock:
                sock.close(linger=0)
        self._candidates = []
        return True

    def _close_socket(self):
        for sock in self._candidates or [self.sock]:
            if sock is not None:
                sock.close(linger=0)
        self.sock, self._candidates = None, []

    def redirect(self, details) -> str:
        """The primary's address a not_primary reply names (None when it names none), learning its id."""
        address = details.get("primary_address")
        if address and details.get("primary_id"):
            self._node_ids.setdefault(address, details["primary_id"])
        return address

    def next_endpoint(self, hint=None):
        """Reconnect: to the primary a node named, else to the next endpoint in the list. A failure
        to connect is reported by the next attempt."""
        if hint and (self._keys is None or hint in self._node_ids):
            if hint not in self.endpoints:
                self.endpoints.append(hint)
            self._endpoint_index = self.endpoints.index(hint)
        else:
            self._endpoint_index = (self._endpoint_index + 1) % len(self.endpoints)
        try:
            self._connect()
        except errors.ConnectionTimeout:
            pass

    def attempt(self, body, request_id):
        """Send one request body and return its OK reply's fields; raises the reply's error, or
        ConnectionTimeout when no handshake, send or reply happens within the timeout."""
        if self.sock is None:
            self._connect()             # raises ConnectionTimeout when it cannot
        if not self.handshake():
            raise errors.ConnectionTimeout(f"no handshake with {self.endpoint} within {self.timeout} s")
        sock = self.sock
        try:
            transport.send(sock, body)
        except zmq.Again:
            raise errors.ConnectionTimeout(f"could not send to {self.endpoint} within {self.timeout} s") from None
        while True:
            try:
                raw = transport.recv(sock)
            except zmq.Again:
                raise errors.ConnectionTimeout(f"no reply from {self.endpoint} within {self.timeout} s") from None
            reply = protocol.decode_reply(raw)
            if reply.request_id != request_id:
                continue  # a late reply to an earlier attempt
            if reply.ok:
                return reply.result
            code, message, details = reply.result
            raise errors.error_from_code(code, message, details)

    def close(self):
        self._close_socket()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)     # closes any socket left open too: never waits
            self._ctx = None
