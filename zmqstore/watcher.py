"""The client side of a change feed (docs/WATCH.md): a Watcher follows one WATCH on a connection of
its own, returns credit as it consumes replies, and on a timeout, `not_primary` or `unavailable`
reconnects and resumes from its position, so that it yields every change once, in seq order."""
import collections
import time
from typing import NamedTuple

import zmq

from . import errors, protocol, transport
from .api import Call
from .protocol import unpack_value

WATCH_WINDOW = 2 << 20      # bytes of replies the node may send ahead; half of it is returned at a time
WATCH_PROGRESS = 1.0        # the node's progress interval (watch.py): silence past 3 of them + timeout is a dead link


class WatchEvent(NamedTuple):
    """One change (or, from a snapshot, one key as it was at `seq`)."""
    seq: int
    key: object             # str (bytes when not UTF-8, or with decode_keys=False)
    value: object           # None when deleted
    deleted: bool


class Watcher:
    """An iterator of WatchEvent (see Client.watch). It returns once a node has accepted the watch
    (with the client's retry policy), so a watch "from now" starts before the call returns.
    `through`: every change under the prefix with a seq up to it has been yielded or is waiting to
    be.
    `snapshot_seq`: the seq the snapshot was taken at (snapshot=True). Not thread-safe."""

    def __init__(self, client, prefix, from_seq, snapshot, stale, window=WATCH_WINDOW):
        self._client = client
        self.prefix = prefix
        self.through = from_seq
        self.snapshot_seq = None
        self._want_snapshot = snapshot
        self.stale = stale
        self.window = window
        self.connection = client.connection.sibling()
        self._events = collections.deque()
        self._pages = []                # snapshot pages held until the last one arrives
        self._watch_id = None           # the request id of the WATCH in force (None: none sent yet)
        self._consumed = 0              # reply bytes read since credit was last returned
        self._failures = None           # the retry policy's pauses while reconnecting
        self.replies = 0                # replies read (progress included)
        self.reconnections = 0
        try:
            while not self.replies:         # the node has placed the watch: "from now" is now
                self._receive(None)
        except BaseException:
            self.close()
            raise

    def __iter__(self):
        return self

    def __next__(self) -> WatchEvent:
        while not self._events:
            self._receive(None)
        return self._events.popleft()

    def poll(self, timeout) -> list:
        """The events here now, else those of the first replies to arrive within `timeout` seconds
        (an empty list when none did): it returns as soon as there are some."""
        end = time.monotonic() + timeout
        while not self._events:
            left = end - time.monotonic()
            if left <= 0:
                break
            self._receive(left)
        while self._watch_id is not None and self.connection.sock.poll(0, zmq.POLLIN):
            self._receive(0)        # what else has arrived already
        events = list(self._events)
        self._events.clear()
        return events

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ the stream

    def _start(self):
        """Send a WATCH from where this watcher is: its position, else a snapshot (again, when one
        was interrupted) or now."""
        client = self._client
        self._watch_id = client.next_request_id()
        self._pages = []
        self._consumed = 0
        snapshot = self._want_snapshot and self.snapshot_seq is None
        position = None if snapshot else self.through
        body = client.encode(Call("WATCH", (self.prefix, position, snapshot, self.window, self.stale), None),
                             self._watch_id)
        self._heard = time.monotonic()
        if not self.connection.ready():
            raise errors.ConnectionTimeout(f"cannot reach {self.connection.endpoint}")
        try:
            transport.send_nowait(self.connection.sock, body)
        except zmq.Again:
            raise errors.ConnectionTimeout(f"could not send to {self.connection.endpoint}") from None

    def _receive(self, timeout):
        """Read one reply (waiting up to `timeout`, None: as long as a live stream may be silent);
        reconnect after a failure the retry policy allows."""
        try:
            if self._watch_id is None:
                self._start()
            silence = 3 * WATCH_PROGRESS + self.connection.timeout
            wait = silence if timeout is None else min(timeout, silence)
            sock = self.connection.sock
            if not sock.poll(wait * 1000, zmq.POLLIN):
                if timeout is not None and timeout < silence and time.monotonic() - self._heard < silence:
                    return      # the caller's timeout, not the stream's
                raise errors.ConnectionTimeout(f"no reply from {self.connection.endpoint} within {silence:.1f} s")
            raw = transport.recv(sock)
            self._read(raw)
            self._failures = None
        except (errors.NotPrimary, errors.Unavailable, errors.ConnectionTimeout) as exc:
            self._reconnect(exc)

    _heard = 0.0

    def _read(self, raw):
        reply = protocol.decode_reply(raw)
        if reply.request_id != self._watch_id:
            return      # a reply to an earlier WATCH (before a reconnection)
        self._heard = time.monotonic()
        self.replies += 1
        if not reply.ok:
            code, message, details = reply.result
            exc = errors.error_from_code(code, message, details)
            self._watch_id = None
            raise exc
        self._consumed += len(raw)
        if self._consumed >= self.window // 2:
            client = self._client
            credit = client.encode(Call("WATCH_CREDIT", (self._watch_id, self._consumed), None),
                                   client.next_request_id())
            self._consumed = 0
            try:
                transport.send_nowait(self.connection.sock, credit)
            except zmq.Again:
                pass    # the link is stuck: the stream stalls and the watcher reconnects
        kind = reply.result[0]
        if kind == "changes":
            _, through, items = reply.result
            base = self.through if self.through is not None else -1
            decode_key = self._client._decode_key
            for seq, key, value in items:
                if seq > base:
                    self._events.append(WatchEvent(seq, decode_key(key), None if value is None else
                                                   unpack_value(value), value is None))
            self.through = through if self.through is None else max(self.through, through)
        elif kind == "snapshot":
            _, seq, items, done = reply.result
            self._pages.append(items)
            if done:
                decode_key = self._client._decode_key
                for page in self._pages:
                    self._events.extend(WatchEvent(seq, decode_key(k), unpack_value(v), False) for k, v in page)
                self._pages = []
                self.snapshot_seq = self.through = seq

    def _reconnect(self, failure):
        """Pause as the retry policy says (raising `failure` when it runs out), then go to the
        primary a not_primary named, else to the next endpoint; the next read sends a new WATCH."""
        if self._failures is None:
            self._failures = self._client.retry.sleeps()
        pause = next(self._failures, None)
        if pause is None:
            self._failures = None
            raise failure
        time.sleep(pause)
        hint = self.connection.redirect(failure.details) if isinstance(failure, errors.NotPrimary) else None
        self.connection.next_endpoint(hint)
        self._watch_id = None
        self.reconnections += 1
