"""The client side of a change feed (docs/WATCH.md). `WatchStream` is a watch without I/O, shared by
both clients: the WATCH to send from where it stands, what each reply means, when to return credit.
`Watcher` drives one on a blocking connection of its own (aio.py has the asyncio driver): it
reconnects on a timeout, `not_primary` or `unavailable` and resumes from its position, so it yields
every change once, in seq order."""
import collections
import time
from typing import NamedTuple

import zmq

from . import errors, protocol, transport
from .api import Call, Dot, Versions, versions_list
from .protocol import unpack_value

WATCH_WINDOW = 2 << 20      # bytes of replies the node may send ahead; half of it is returned at a time
WATCH_WINDOW_MAX = 8 << 20  # the most a node gives (watch.WATCH_BUDGET): a larger window would never be half used
WATCH_PROGRESS = 1.0        # the node's progress interval (watch.py): silence past 3 of them + timeout is a dead link
RESUMABLE = (errors.NotPrimary, errors.Unavailable, errors.ConnectionTimeout)


def check_watch_args(from_seq, snapshot, window, from_vector=None):
    if from_seq is not None and from_vector is not None:
        raise ValueError("from_seq is leader mode's position, from_vector dynamo mode's: give one")
    if (from_seq is not None or from_vector is not None) and snapshot:
        raise ValueError("watch from a position or with a snapshot, not both")
    if not 1 <= window <= WATCH_WINDOW_MAX:
        raise ValueError(f"window must be 1 to {WATCH_WINDOW_MAX} bytes")


class WatchEvent(NamedTuple):
    """One change (or, from a snapshot, one key as it was at `seq`)."""
    seq: int
    key: object             # str (bytes when not UTF-8, or with decode_keys=False)
    value: object           # None when deleted
    deleted: bool


class DynamoWatchEvent(NamedTuple):
    """One change a dynamo-mode node applied: the write (`value`, `deleted`) with its `dot`, and the
    key's versions as the node held them when it sent the change (`siblings`, a list of Version:
    more than one is a conflict). From a snapshot: `seq` 0, `dot` None, the key's versions (at
    least one of them not a delete), `value` and `deleted` what get() shows."""
    seq: int
    key: object
    value: object
    deleted: bool
    dot: object             # Dot(node_id, origin, seq)
    siblings: list


class WatchStream:
    """A watch's state. `through`: every change under the prefix with a seq up to it is in `events`
    or was taken from there; `snapshot_seq`: the seq of the snapshot (snapshot=True), once whole."""

    def __init__(self, client, prefix, from_seq, snapshot, stale, window):
        self.client = client            # request ids, encoding, key decoding
        self.prefix, self.through, self.stale, self.window = prefix, from_seq, stale, window
        self.want_snapshot = snapshot
        self.snapshot_seq = None
        self.events = collections.deque()
        self.watch_id = None            # the request id of the WATCH in force (None: none sent yet)
        self.replies = 0                # replies read (progress included)
        self.reconnections = 0
        self.heard = 0.0                # when the last reply (or the WATCH) went
        self._failures = None           # the retry policy's pauses while reconnecting
        self._pages = []                # snapshot pages held until the last one arrives
        self._snapshot_left = 0         # snapshot events in `events` not taken yet
        self._consumed = 0              # reply bytes read since credit was last returned

    @property
    def resume_seq(self):
        """The position to resume from to get every event not taken from `events` yet. Leader mode
        (`from_seq=`): the seq before the first one waiting, else `through`; the events of one
        entry share a seq, so resuming before an entry some of whose events were taken gives
        those again. Dynamo mode (`from_vector=`): `through` with each origin set back before its
        first event waiting. None while snapshot events are still waiting: only a new snapshot
        gives them again."""
        if self._snapshot_left:
            return None
        if not isinstance(self.through, dict):
            return self.events[0].seq - 1 if self.events else self.through
        position = dict(self.through)
        for event in reversed(self.events):
            if event.dot is not None:
                position[event.dot.origin] = event.seq - 1
        return position

    @property
    def silence(self) -> float:
        """How long a live stream can be silent, beyond the connection's timeout."""
        return 3 * WATCH_PROGRESS

    def start(self) -> bytes:
        """The WATCH to send now: from the position, else a snapshot (again, when one was
        interrupted) or now."""
        client = self.client
        self.watch_id = client.next_request_id()
        self._pages, self._consumed = [], 0
        snapshot = self.want_snapshot and self.snapshot_seq is None
        position = None if snapshot else self.through
        if isinstance(position, dict):
            position = [[origin, seq] for origin, seq in sorted(position.items()) if seq]
        self.heard = time.monotonic()
        return client.encode(Call("WATCH", (self.prefix, position, snapshot, self.window, self.stale), None),
                             self.watch_id)

    def read(self, raw):
        """One reply. Returns a WATCH_CREDIT body to send, or None; raises the error that ended the
        watch (then `watch_id` is None: the next start() resumes)."""
        reply = protocol.decode_reply(raw)
        if reply.request_id != self.watch_id or self.watch_id is None:
            return None     # a reply to an earlier WATCH (before a reconnection)
        self.heard = time.monotonic()
        if not reply.ok:
            self.watch_id = None
            raise errors.error_from_code(*reply.result)
        self.replies += 1
        self._failures = None           # placed and answering: a later failure starts the policy afresh
        kind = reply.result[0]
        decode_key = self.client._decode_key
        if kind == "changes":
            _, through, items = reply.result
            if isinstance(through, list):
                self._dynamo_changes(through, items, decode_key)
            else:
                base = self.through if self.through is not None else -1
                for seq, key, value in items:
                    if seq > base:
                        self.events.append(WatchEvent(seq, decode_key(key), None if value is None else
                                                      unpack_value(value), value is None))
                self.through = through if self.through is None else max(self.through, through)
        elif kind == "snapshot":
            _, seq, items, done = reply.result
            self._pages.append(items)
            if done:
                for page in self._pages:
                    if isinstance(seq, list):       # dynamo mode: [key, siblings], the value get() shows
                        for k, siblings in page:
                            versions = versions_list(siblings)
                            shown = Versions(versions, b"").winner      # a delete may win over a write
                            self.events.append(DynamoWatchEvent(0, decode_key(k), shown.value, shown.deleted, None,
                                                                versions))
                    else:
                        self.events.extend(WatchEvent(seq, decode_key(k), unpack_value(v), False) for k, v in page)
                    self._snapshot_left += len(page)
                self._pages = []
                self.snapshot_seq = self.through = (dict(seq) if isinstance(seq, list) else seq)
        self._consumed += len(raw)
        return self._credit()

    def _dynamo_changes(self, through, items, decode_key):
        position = dict(self.through) if isinstance(self.through, dict) else {}
        for origin, seq, _hlc, key, value, siblings in items:
            if seq > position.get(origin, 0):
                self.events.append(DynamoWatchEvent(seq, decode_key(key), None if value is None else unpack_value(value),
                                                    value is None, Dot(origin >> 32, origin, seq),
                                                    versions_list(siblings)))
        for origin, seq in through:
            if seq > position.get(origin, 0):
                position[origin] = seq
        self.through = position

    def take(self):
        """The next event (the watcher's caller took it)."""
        if self._snapshot_left:
            self._snapshot_left -= 1
        return self.events.popleft()

    def take_all(self) -> list:
        taken = list(self.events)
        self.events.clear()
        self._snapshot_left = 0
        return taken

    def pause_after(self, failure) -> float:
        """How long to wait after `failure` (a RESUMABLE error) before reconnecting, as the
        client's retry policy says; raises `failure` when the policy has run out."""
        if self._failures is None:
            self._failures = self.client.retry.sleeps()
        pause = next(self._failures, None)
        if pause is None:
            self._failures = None
            raise failure
        return pause

    def reconnect(self, connection, failure):
        """Go to the primary a not_primary named, else to the next endpoint; the next read sends a
        new WATCH from the position."""
        hint = connection.redirect(failure.details) if isinstance(failure, errors.NotPrimary) else None
        connection.next_endpoint(hint)
        self.watch_id = None
        self.reconnections += 1

    def _credit(self):
        if self._consumed < self.window // 2:
            return None
        credit, self._consumed = self._consumed, 0
        client = self.client
        return client.encode(Call("WATCH_CREDIT", (self.watch_id, credit), None), client.next_request_id())


class Watcher:
    """An iterator of WatchEvent (see Client.watch). It returns once a node has accepted the watch
    (with the client's retry policy), so a watch "from now" starts before the call returns.
    `through`: every change under the prefix with a seq up to it has been yielded or is waiting to
    be; `snapshot_seq`: the seq the snapshot was taken at (snapshot=True). Not thread-safe."""

    def __init__(self, client, prefix, from_seq, snapshot, stale, window=WATCH_WINDOW):
        self.stream = WatchStream(client, prefix, from_seq, snapshot, stale, window)
        self.connection = client.connection.sibling()
        try:
            while not self.stream.replies:  # the node has placed the watch: "from now" is now
                self._receive(None)
        except BaseException:
            self.close()
            raise

    through = property(lambda self: self.stream.through)
    snapshot_seq = property(lambda self: self.stream.snapshot_seq)
    resume_seq = property(lambda self: self.stream.resume_seq)
    reconnections = property(lambda self: self.stream.reconnections)

    def __iter__(self):
        return self

    def __next__(self) -> WatchEvent:
        while not self.stream.events:
            self._receive(None)
        return self.stream.take()

    def poll(self, timeout) -> list:
        """The events here now, else those of the first replies to arrive within `timeout` seconds
        (an empty list when none did): it returns as soon as there are some."""
        events = self.stream.events
        end = time.monotonic() + timeout
        while not events:
            left = end - time.monotonic()
            if left <= 0:
                break
            self._receive(left)
        while self.stream.watch_id is not None and self.connection.sock.poll(0, zmq.POLLIN):
            self._receive(0)        # what else has arrived already
        return self.stream.take_all()

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _receive(self, timeout):
        """Read one reply (waiting up to `timeout`, None: as long as a live stream may be silent);
        reconnect after a failure the retry policy allows."""
        stream, connection = self.stream, self.connection
        try:
            if stream.watch_id is None:
                body = stream.start()
                if not connection.ready():
                    raise errors.ConnectionTimeout(f"cannot reach {connection.endpoint}")
                self._send(body)
            silence = stream.silence + connection.timeout
            wait = silence if timeout is None else min(timeout, silence)
            if not connection.sock.poll(wait * 1000, zmq.POLLIN):
                if time.monotonic() - stream.heard < silence:
                    return      # the caller's timeout, not the stream's
                raise errors.ConnectionTimeout(f"no reply from {connection.endpoint} within {silence:.1f} s")
            credit = stream.read(transport.recv(connection.sock))
            if credit is not None:
                self._send(credit)
        except RESUMABLE as exc:
            time.sleep(stream.pause_after(exc))
            stream.reconnect(connection, exc)

    def _send(self, body):
        try:
            transport.send_nowait(self.connection.sock, body)
        except zmq.Again:
            raise errors.ConnectionTimeout(f"could not send to {self.connection.endpoint}") from None

