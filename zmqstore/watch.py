"""Change feeds on the client port (docs/WATCH.md): every watch this node serves, and what the loop
sends each one at the end of an iteration. The mode's feed (leader/feed.py) says who may serve and
reads committed changes; this module keeps positions, prefixes and credit, and never buffers a
change for a watcher: it reads them when the watcher can take them."""
import logging
from collections import Counter

from . import errors, protocol

WATCH_BUDGET = 8 << 20          # bytes of replies a watcher may have unacknowledged (its credit's cap)
WATCH_MAX = 1024                # watches per node ...
WATCH_PER_CONNECTION = 64       # ... and per client connection
WATCH_PROGRESS = 1.0            # seconds of silence after which a watcher is told how current it is

log = logging.getLogger(__name__)


class Watch:
    __slots__ = ("envelope", "request_id", "prefix", "through", "credit", "window", "stale", "snapshot",
                 "snapshot_seq", "cursor", "sent_at", "paused_at")

    def __init__(self, envelope, request_id, prefix, through, credit, stale, now):
        self.envelope, self.request_id, self.prefix = envelope, request_id, prefix
        self.through = through          # every change up to this seq has been sent (or is in a sent page)
        self.credit = credit            # bytes it may still be sent
        self.window = credit            # what it was given at the start: window - credit is in flight
        self.stale = stale
        self.snapshot = None            # while the snapshot is sent: the RocksDB snapshot ...
        self.snapshot_seq = None        # ... the seq it is at ...
        self.cursor = None              # ... and the next page's first key (None: the start)
        self.sent_at = now              # the last reply sent
        self.paused_at = None           # when its credit ran out (None: it has some)


class Watches:
    """Every watch, keyed by (connection identity, WATCH request id). `feed`: the mode's feed, None
    when the mode serves none (WATCH is refused). `send(frames)` sends a reply (the outbox's send);
    it returns False when the client's connection is gone."""

    def __init__(self, feed, send, idle_timeout):
        self.feed = feed
        self._send = send
        self.idle_timeout = idle_timeout
        self._watches = {}
        self._per_connection = Counter()
        self.busy = False               # a watcher with credit is behind: the loop must not sleep
        self.counters = {"watches_opened": 0, "watches_compacted": 0, "watches_dropped": 0}

    def __len__(self):
        return len(self._watches)

    def handle(self, request, envelope, now):
        """A WATCH or WATCH_CREDIT -> the body of a reply to send now, or None. Raises a
        ZmqstoreError for a WATCH that cannot start (answered like any refused request)."""
        if self.feed is None:
            raise errors.UnsupportedOperation("this node does not serve watches in its mode yet (docs/WATCH.md)")
        if request.command == "WATCH_CREDIT":
            return self._credit(request, envelope, now)
        return self._open(request, envelope, now)

    def _open(self, request, envelope, now):
        prefix, from_, snapshot, credit, stale = request.args
        refusal = self.feed.refusal(stale)
        if refusal is not None:
            raise refusal
        if credit < 1:
            raise errors.BadArgument("WATCH.credit must be at least 1 byte")
        key = (envelope[0], request.request_id)
        old = self._watches.pop(key, None)      # the same WATCH again (a retry): it starts afresh
        if old is not None:
            self._forget(key, old)
        if len(self._watches) >= WATCH_MAX or self._per_connection[key[0]] >= WATCH_PER_CONNECTION:
            raise errors.Unavailable(f"this node serves at most {WATCH_MAX} watches, {WATCH_PER_CONNECTION} per "
                                     f"connection; close some or watch through another node")
        if snapshot:
            if from_ is not None:
                raise errors.BadArgument("a watch starts either from a position or with a snapshot, not both")
            taken, through = self.feed.snapshot()
        else:
            taken, through = None, self.feed.start(from_)
        watch = Watch(list(envelope), request.request_id, prefix or b"", through, min(credit, WATCH_BUDGET), stale,
                      now)
        if taken is not None:
            watch.snapshot, watch.snapshot_seq = taken, through
        self._watches[key] = watch
        self._per_connection[key[0]] += 1
        self.counters["watches_opened"] += 1
        self.busy = True
        if taken is not None:
            return None         # its first snapshot page says where it starts
        body = protocol.encode_ok(request.request_id, "changes", self.feed.wire(through), [])    # where it starts
        watch.credit -= len(body)
        if watch.credit <= 0:
            watch.paused_at = now
        return body

    def _credit(self, request, envelope, now):
        watch_id, credit = request.args
        watch = self._watches.get((envelope[0], watch_id))
        if watch is None:
            return protocol.encode_error(watch_id, "unavailable", f"no watch {watch_id} on this connection (dropped "
                                         f"after {self.idle_timeout:.0f} s without credit, or the node restarted): "
                                         f"watch again from your position")
        if credit:
            watch.credit = min(WATCH_BUDGET, watch.credit + credit)
            if watch.credit > 0:
                watch.paused_at = None
            self.busy = True
        return None

    def _forget(self, key, watch):
        watch.snapshot = None           # a RocksDB snapshot pins data: let it go at once
        self._per_connection[key[0]] -= 1
        if not self._per_connection[key[0]]:
            del self._per_connection[key[0]]

    def _end(self, key, watch, body):
        """Send a watch its last reply (an error) and forget it."""
        del self._watches[key]
        self._forget(key, watch)
        self._send(watch.envelope + [body])

    def _reply(self, key, watch, body, now):
        watch.credit -= len(body)
        watch.sent_at = now
        if watch.credit <= 0:
            watch.paused_at = now
        if self._send(watch.envelope + [body]) is False and key in self._watches:
            # Its client has gone, or the reply was dropped over the client's output limits: a
            # stream with a hole in it must not go on. The client, hearing nothing more, resumes
            # from the last position it received.
            del self._watches[key]
            self._forget(key, watch)
            self.counters["watches_dropped"] += 1

    def connection_dropped(self, identity):
        """The outbox dropped a reply to this connection (outbox.on_drop): end its watches."""
        for key in [k for k in self._watches if k[0] == identity]:
            self._forget(key, self._watches.pop(key))
            self.counters["watches_dropped"] += 1

    # ------------------------------------------------------------ the end of each loop iteration

    def pump(self, now):
        """Send every watcher with credit what it lacks, progress to the quiet ones; end the watches
        this node may no longer serve, and drop those without credit for idle_timeout."""
        self.busy = False
        if not self._watches:
            return
        feed = self.feed
        upto = feed.position()
        refusal = {stale: feed.refusal(stale) for stale in (False, True)}
        behind = {}                     # position -> (position, [(key, watch)]): one read serves them all
        for key, watch in list(self._watches.items()):
            if key not in self._watches:
                continue        # ended meanwhile: a reply to its connection was dropped (connection_dropped)
            error = refusal[watch.stale]
            if error is not None:
                self._end(key, watch, protocol.encode_exception(watch.request_id, error))
            elif watch.credit <= 0:
                if now - watch.paused_at > self.idle_timeout:
                    del self._watches[key]
                    self._forget(key, watch)
                    self.counters["watches_dropped"] += 1
            elif watch.snapshot is not None:
                self._snapshot_page(key, watch, now)
            elif feed.behind(watch.through, upto):
                behind.setdefault(feed.group_key(watch.through), (watch.through, []))[1].append((key, watch))
            elif now - watch.sent_at >= WATCH_PROGRESS:
                self._reply(key, watch, protocol.encode_ok(watch.request_id, "changes", feed.wire(watch.through), []),
                            now)
        for through, group in behind.values():
            # One read for the group, no larger than the least credit among it (at least one
            # entry): no watcher is sent more than its credit plus one entry's changes.
            budget = min(w.credit for _, w in group)
            try:
                new_through, changes = feed.read(through, upto, budget)
            except errors.Compacted as exc:
                for key, watch in group:
                    if key in self._watches:
                        self.counters["watches_compacted"] += 1
                        self._end(key, watch, protocol.encode_exception(watch.request_id, exc))
                continue
            for key, watch in group:
                if key in self._watches:
                    self._changes(key, watch, new_through, changes, now)
        self.busy = any(w.credit > 0 and (w.snapshot is not None or feed.behind(w.through, upto))
                        for w in self._watches.values())

    def _changes(self, key, watch, through, changes, now):
        prefix = watch.prefix
        items = [item for k, item in changes if k.startswith(prefix)] if prefix else [item for _, item in changes]
        watch.through = through
        # Nothing under its prefix: the position moves silently (a reconnection would read these
        # entries again and find nothing), and progress tells the watcher at most once a second.
        if items or now - watch.sent_at >= WATCH_PROGRESS:
            self._reply(key, watch, protocol.encode_ok(watch.request_id, "changes", self.feed.wire(through), items),
                        now)

    def _snapshot_page(self, key, watch, now):
        items, cursor = self.feed.snapshot_page(watch.snapshot, watch.prefix or None, watch.cursor, watch.credit)
        done = cursor is None
        if done:
            watch.snapshot = None
            watch.through = watch.snapshot_seq
        else:
            watch.cursor = cursor
        self._reply(key, watch, protocol.encode_ok(watch.request_id, "snapshot", self.feed.wire(watch.snapshot_seq),
                                                   [list(item) for item in items], done), now)

    def status(self) -> dict:
        """STATUS's `watches` (docs/PROTOCOL.md): how many, how many paused (out of credit), and the
        most bytes any watcher has been sent beyond what it acknowledged."""
        watches = self._watches.values()
        return {"open": len(self._watches), "paused": sum(1 for w in watches if w.credit <= 0),
                "in_flight_max": max((w.window - w.credit for w in watches), default=0), **self.counters}

    def close(self):
        for watch in self._watches.values():
            watch.snapshot = None
        self._watches.clear()
