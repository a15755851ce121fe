"""Replies held until what they report is true, for both modes: one queue, one readiness rule, one
timeout path (docs/ARCHITECTURE.md).

A reply is held with `until`, a condition only the mode reads (leader mode: the commit seq and the
read round it needs; dynamo mode: the batch that makes it durable and how many nodes must hold the
write, or a quorum read itself). At the end of each loop iteration (modes.Mode.end_iteration:
before the iteration's fsync, for what earlier commits made ready, and after it), the node asks the mode for its rule (`ready()`, a predicate on `until` for this moment) and
releases, in arrival order, every held reply the rule accepts; one past its deadline gets the
mode's error instead (`expired(held)`): a reply waits at most `replication_timeout` once held.
Every reply is held for the same timeout, so arrival order is deadline order. A reply whose body
is not known when it is held (a dynamo quorum read, built once its peers have answered) is held
with body None; its `until` then carries the body (`until.reply`) by the time the rule accepts it. A pass is skipped
when the mode's `progress()` has not moved and no deadline has passed: a node holding many replies
it cannot release yet (a primary that lost its majority) does not scan them all every iteration.
That is sound because a mode holds only replies its rule does not accept yet (it sends the others
at once), so one held since the last pass cannot be ready until the progress moves.
"""


class Held:
    __slots__ = ("envelope", "body", "request_id", "is_write", "until", "deadline", "command", "started")

    def __init__(self, envelope, body, request_id, is_write, until, deadline, command, started):
        self.envelope, self.body, self.request_id = envelope, body, request_id
        self.is_write, self.until, self.deadline = is_write, until, deadline
        self.command, self.started = command, started


class Replies:
    def __init__(self, send, record=None):
        self._send = send           # frames -> None: the outbox's send
        self._record = record       # (command, reply body, arrival, now) -> None: metrics.Recorder.request
        self._held = []             # Held, in arrival order (so also in deadline order)
        self._progress = None       # the mode's progress at the last pass that kept replies

    def __bool__(self):
        return bool(self._held)

    def __len__(self):
        return len(self._held)

    @property
    def next_deadline(self):
        """The earliest deadline of a held reply (every reply waits the same timeout), or None."""
        return self._held[0].deadline if self._held else None

    def held_writes(self) -> int:
        return sum(1 for h in self._held if h.is_write)

    def hold(self, envelope, body, request_id, is_write, until, deadline, command=None, started=None):
        self._held.append(Held(envelope, body, request_id, is_write, until, deadline, command, started))

    def release(self, ready, expired, now, fail_all=False, progress=None):
        """Send every held reply `ready(until)` accepts, in arrival order; answer those past their
        deadline (with fail_all: every one not sent) with `expired(held)`; keep the rest.
        `progress`: the mode's progress; when it equals the last pass's and no deadline has passed,
        nothing can have become ready and the pass is skipped."""
        if (progress is not None and progress == self._progress and not fail_all and self._held
                and now < self._held[0].deadline):
            return
        kept, send, record = [], self._send, self._record
        for h in self._held:
            if not fail_all and ready(h.until):
                body = h.body if h.body is not None else h.until.reply
            elif fail_all or h.deadline <= now:
                body = expired(h)
            else:
                kept.append(h)
                continue
            send(h.envelope + [body])
            if record is not None:
                record(h.command, body, h.started, now)
        self._held = kept
        self._progress = progress
