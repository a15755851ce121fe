"""The Python client: endpoint list, retries with the same request id, pipelining, one exception hierarchy."""
import itertools
import os
import random
import time
from typing import NamedTuple

import zmq

from . import errors, keys, protocol, transport
from .errors import ConfigError
from .protocol import pack_value, unpack_value

DEFAULT_TIMEOUT = 3.0   # per attempt; above the default 2.0 s replication_timeout so a slow commit still answers
MAX_UNRESOLVED = 100    # writes of unknown outcome the client keeps asking the node to remember ...
UNRESOLVED_TTL = 30.0   # ... for this long (nodes forget a silent client after session_timeout, 60 s)
RETRYABLE = (errors.NotPrimary, errors.Unavailable)


class Version(NamedTuple):
    """One sibling of a dynamo-mode key."""
    value: object        # None for a delete
    deleted: bool        # a tombstone
    node_id: int         # the node that accepted the write
    origin: int          # that node's origin id for the run (node_id << 32 | incarnation)
    seq: int             # the write's seq in its origin's log
    hlc: int             # hybrid logical clock timestamp: (milliseconds << 16) | counter


class Dot(NamedTuple):
    """A dynamo-mode write's identity: the origin (node run) that accepted it and its seq there."""
    node_id: int
    origin: int
    seq: int


def _options(**given):
    """The trailing options map of a request (docs/PROTOCOL.md), or nothing."""
    options = {k: v for k, v in given.items() if v is not None}
    return (options,) if options else ()


def _dot(result):
    """A write reply -> its Dot in dynamo mode ([applied, seq, origin]); None in leader mode."""
    if len(result) < 3 or not result[2]:
        return None
    return Dot(result[2] >> 32, result[2], result[1])


class Versions(NamedTuple):
    """A dynamo-mode key's siblings (empty: absent) and its causal context."""
    siblings: list
    context: bytes

    @property
    def conflict(self) -> bool:
        return len(self.siblings) > 1

    @property
    def winner(self):
        """The sibling get() shows: highest timestamp, then lowest node id (None: no siblings)."""
        return max(self.siblings, key=lambda v: (v.hlc, -v.node_id), default=None)


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


def _parse_endpoints(endpoints):
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


def encode_key(key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys are str or bytes, not {type(key).__name__}")


class Client:
    """A connection to a zmqstore cluster. Not thread-safe: use one per thread (like a socket).

    `endpoints`: "host:port", a comma-separated string or a list. `decode_keys`: scan yields str
    keys (bytes for keys that are not UTF-8); False yields bytes always.

    With keys (CurveZMQ, docs/SECURITY.md): `secret_key` is this client's NAME.key_secret and
    `node_keys` the directory of the nodes' public keys (node<ID>.key); each endpoint then names its
    node, "ID@host:port", so the client knows which key that node must prove it holds. A redirect
    names the primary's id, so it can be followed to any node.
    """

    def __init__(self, endpoints, timeout=DEFAULT_TIMEOUT, retry=None, decode_keys=True,
                 max_request_size=16 << 20, secret_key=None, node_keys=None):
        self.endpoints, self._node_ids = _parse_endpoints(endpoints)
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
        self.retry = retry or Retry()
        self.decode_keys = decode_keys
        self.max_request_size = max_request_size
        self.client_id = os.urandom(16)
        self._ids = itertools.count(1)
        self.last_request_id = 0      # the id of the latest request sent (for outcome())
        # Writes whose outcome is unknown (timeouts): open_from stays at or below them, so the node
        # keeps their outcomes for outcome() until asked (or its session_timeout passes).
        self._unresolved = []
        self._ctx = zmq.Context()
        self._sock = None
        self._candidates = []       # sockets to a node whose key is rotated, one per key (_handshake)
        self._endpoint_index = 0
        self._connect()

    # ------------------------------------------------------------ connection

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._endpoint_index]

    def _connect(self, endpoint=None):
        self._close_socket()
        if endpoint is not None:
            if endpoint not in self.endpoints:
                self.endpoints.append(endpoint)
            self._endpoint_index = self.endpoints.index(endpoint)
        if self._keys is None:
            self._sock = self._socket()
            return
        # Read again at each connection: a node's next key added while this client runs (a rotation,
        # docs/SECURITY.md) is then tried after the first timeout. A directory being changed keeps the last.
        try:
            self._keys = self._keys._replace(nodes=keys.load_node_keys(self._node_keys_dir))
        except ConfigError:
            pass
        node_id = self._node_ids.get(self.endpoint)
        node_keys = self._keys.nodes.get(node_id)
        if not node_keys:
            raise errors.ConnectionTimeout(f"no key for the node at {self.endpoint} (node {node_id}) in the "
                                           f"node keys")
        if len(node_keys) == 1:
            self._sock = self._socket(node_keys[0])
        else:
            # The node's key is being rotated (docs/SECURITY.md): one socket per key it may hold;
            # _handshake keeps the one that completes its handshake.
            self._candidates = [self._socket(key, immediate=True) for key in node_keys]
            self._sock = self._candidates[0]

    def _socket(self, node_key=None, immediate=False):
        """A DEALER connected to the current endpoint, expecting `node_key` when given (CurveZMQ).
        immediate: it can send only once its handshake has completed."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(self.timeout * 1000)))
        # A send to a node that is down queues up to SNDHWM messages, then blocks: bound that wait too.
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout * 1000)))
        sock.setsockopt(zmq.SNDHWM, transport.ROUTER_HWM)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if node_key is not None:
            transport.curve_client(sock, self._keys.own, node_key)
        sock.connect("tcp://" + self.endpoint)
        return sock

    def _handshake(self) -> bool:
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
        self._sock = next(sock for sock in self._candidates if sock in ready)
        for sock in self._candidates:
            if sock is not self._sock:
                sock.close(linger=0)
        self._candidates = []
        return True

    def _close_socket(self):
        for sock in self._candidates or [self._sock]:
            if sock is not None:
                sock.close(linger=0)
        self._sock, self._candidates = None, []

    def _redirect(self, details) -> str:
        """The primary's address a not_primary reply names (None when it names none), learning its id."""
        address = details.get("primary_address")
        if address and details.get("primary_id"):
            self._node_ids.setdefault(address, details["primary_id"])
        return address

    def _next_endpoint(self, hint=None):
        """Reconnect: to the primary a node named, else to the next endpoint in the list."""
        if hint and (self._keys is None or hint in self._node_ids):
            self._connect(hint)
        else:
            self._endpoint_index = (self._endpoint_index + 1) % len(self.endpoints)
            self._connect()

    def close(self):
        self._close_socket()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------ request/reply with retries

    def _encode(self, command, request_id, args, open_from=None):
        """One request body. `open_from`: the lowest request id still awaited (default: this one);
        the node may forget the outcomes of this client's earlier writes."""
        open_from = request_id if open_from is None else open_from
        if self._unresolved:
            if time.monotonic() - self._unresolved[0][1] > UNRESOLVED_TTL:
                self._unresolved = [u for u in self._unresolved if time.monotonic() - u[1] <= UNRESOLVED_TTL]
            if self._unresolved:
                open_from = min(open_from, *(rid for rid, _ in self._unresolved))
        body = protocol.encode_request(command, self.client_id, request_id, open_from, *args)
        if len(body) > self.max_request_size:
            raise errors.RequestTooLarge(f"{command} request of {len(body)} bytes exceeds max_request_size "
                                         f"{self.max_request_size}")
        return body

    def _call(self, command, *args):
        """Send one request and return the OK reply's fields. Timeouts and redirects are retried with
        the same request id, so a write is applied at most once."""
        request_id = self.last_request_id = next(self._ids)
        body = self._encode(command, request_id, args)
        started = time.monotonic()
        sleeps = None
        while True:
            hint = None
            try:
                return self._attempt(body, request_id)
            except errors.NotPrimary as exc:
                failure, hint = exc, self._redirect(exc.details)
            except (errors.Unavailable, errors.ConnectionTimeout) as exc:
                failure = exc
            except errors.ReplicationTimeout as exc:
                self._unresolve(request_id)
                exc.request_id = request_id
                raise
            if sleeps is None:
                sleeps = self.retry.sleeps(started)
            pause = next(sleeps, None)
            if pause is None:
                if command in protocol.WRITE_COMMANDS:
                    self._unresolve(request_id)
                failure.request_id = request_id
                raise failure
            time.sleep(pause)
            self._next_endpoint(hint)

    def _unresolve(self, request_id):
        self._unresolved.append((request_id, time.monotonic()))
        del self._unresolved[:-MAX_UNRESOLVED]

    def outcome(self, request_id) -> str:
        """What became of a write that raised ReplicationTimeout, ConnectionTimeout or another
        error after it may have been sent (its `exc.request_id`), asked of the current primary:
        "committed": it was applied, once. "not_found": it was not applied, and the primary has
        fenced its request id (logged and committed a marker), so it never will be, even if a copy
        is still on its way. "unknown": the node cannot tell (more than 30 s passed, so this client
        no longer asks nodes to keep the record, or the primary has not been recording writes for
        long enough, e.g. it restarted on a trimmed log). The answer waits for the commit of the
        write or fence; while no majority answers, the call retries like any other and finally
        raises the last error."""
        state, _seq = self._call("OUTCOME", request_id)
        if state in ("committed", "not_found"):
            self._unresolved = [u for u in self._unresolved if u[0] != request_id]
        return state

    def _attempt(self, body, request_id):
        if not self._handshake():
            raise errors.ConnectionTimeout(f"no handshake with {self.endpoint} within {self.timeout} s")
        sock = self._sock
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

    # ------------------------------------------------------------ operations

    def ping(self) -> int:
        """The id of the node this client talks to."""
        return self._call("PING")[0]

    def get(self, key, default=None, stale=False, with_conflict=False, r=None):
        """The key's value, or `default` when absent. In dynamo mode the value is the winner among
        the key's siblings (highest timestamp, then lowest node id); with_conflict=True returns
        (value, conflict), conflict being True when the key has siblings (see get_versions).
        Dynamo mode: `r` nodes are read and their versions joined (stale ones are repaired);
        default: the cluster's read_quorum."""
        result = self._call("GET", encode_key(key), bool(stale), *_options(r=r))
        value = default if result[0] is None else unpack_value(result[0])
        if with_conflict:
            return value, bool(result[1]) if len(result) > 1 else False
        return value

    def get_versions(self, key, r=None) -> "Versions":
        """Dynamo mode: every sibling of the key and the context to resolve them with
        put(key, value, context=versions.context) (or delete(key, context=...))."""
        siblings, context = self._call("GET_VERSIONS", encode_key(key), *_options(r=r))
        return Versions([Version(None if value is None else unpack_value(value), value is None, origin >> 32,
                                 origin, seq, hlc) for value, origin, seq, hlc in siblings], context)

    def put(self, key, value, context=None, w=None):
        """Write key = value. Returns None in leader mode; in dynamo mode the new version's
        `Dot(node_id, origin, seq)`. Dynamo mode: with `context` (from get_versions) the write
        replaces exactly the versions that context covers; others written meanwhile stay as
        siblings. `w`: the reply waits until w nodes hold the write (default: write_quorum)."""
        if context is None:
            result = self._call("PUT", encode_key(key), pack_value(value), *_options(w=w))
        else:
            result = self._call("PUT_CTX", encode_key(key), pack_value(value), bytes(context), *_options(w=w))
        return _dot(result)

    def delete(self, key, context=None, w=None) -> bool:
        """Delete key; True if it existed. Dynamo mode: a tombstone; with `context`, it replaces
        exactly the versions that context covers (and returns the tombstone's Dot)."""
        if context is None:
            return self._call("DEL", encode_key(key), *_options(w=w))[0]
        return _dot(self._call("PUT_CTX", encode_key(key), None, bytes(context), *_options(w=w)))

    def cas(self, key, expected, new) -> bool:
        """Set key to `new` if its value is `expected` (None: only if absent). Values compare by
        their msgpack encoding. Leader mode only."""
        exp = None if expected is None else pack_value(expected)
        return self._call("CAS", encode_key(key), exp, pack_value(new))[0]

    def put_many(self, items, w=None) -> None:
        """Write all items atomically: a dict or an iterable of (key, value). `w` as for put."""
        pairs = items.items() if hasattr(items, "items") else items
        self._call("PUT_MANY", [[encode_key(k), pack_value(v)] for k, v in pairs], *_options(w=w))

    def scan(self, prefix=None, start=None, end=None, limit=None, stale=False):
        """Iterate (key, value) in key order over [start, end) and/or a prefix, at most `limit` items.
        Pages are fetched as the iterator advances; the scan is not a snapshot across pages.
        `stale`: read the node talked to, without redirect (a committed prefix)."""
        prefix = encode_key(prefix) if prefix is not None else None
        cursor = encode_key(start) if start is not None else None
        end = encode_key(end) if end is not None else None
        remaining = limit
        while remaining is None or remaining > 0:
            items, cursor = self._call("SCAN", cursor, end, prefix, remaining, bool(stale))
            for key, value in items:
                yield self._decode_key(key), unpack_value(value)
            if remaining is not None:
                remaining -= len(items)
            if cursor is None:
                return

    def _decode_key(self, key):
        if not self.decode_keys:
            return key
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key

    def status(self) -> dict:
        return self._call("STATUS")[0]

    def pipeline(self, max_in_flight=64):
        if not 1 <= max_in_flight <= transport.MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be 1..{transport.MAX_IN_FLIGHT}")
        from .pipeline import Pipeline
        return Pipeline(self, max_in_flight)
