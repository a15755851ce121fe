"""Replies to clients under a byte budget per connection (docs/SECURITY.md, "Bounded cost").

ZeroMQ bounds what a connection may queue in messages (SNDHWM), not bytes: 1,500 unread replies of
1 MiB once held 1.5 GB. So the client port's SNDHWM is set (`send_hwm`) so that a full queue holds
about `limit` bytes of the largest replies, and at least MIN_HWM of them (the node gives each queue
half of client_output_limit), and ROUTER_MANDATORY makes a send to a full queue fail instead of
vanishing. Such a reply waits here, in the connection's backlog, and leaves as the client reads
(`flush`, every loop iteration). A backlog that would pass `limit` bytes means the client is not
reading: its further replies are dropped and its requests ignored (`refuses`) until the backlog has
drained to half. All backlogs together hold at most GLOBAL_LIMITS times `limit`; when they are full,
the largest stalled one is emptied first, so clients that read keep their replies. After a flush
that moved a backlog the loop also wakes when the socket can send (`draining`); otherwise it retries
on a short timer, and a backlog that sent nothing for STALLED_AFTER less and less often (up to every
RETRY_MAX seconds), so neither readers nor stalled clients can make the loop spin.
"""
import collections
import errno
import logging
import time

import zmq

from . import protocol, transport

# The largest reply a node sends, beyond the value itself: a scan page is about 1 MiB of items.
REPLY_OVERHEAD = 64 << 10
# A queue holds at least this many replies whatever their size, so that a pipelining client (64 in
# flight by default) never waits on the node's own queue: with 1 MiB values that queue may then hold
# up to MIN_HWM MiB, more than half of client_output_limit.
MIN_HWM = 128
GLOBAL_LIMITS = 4           # every backlog together: this many times the per-connection limit
STALLED_AFTER = 0.05        # seconds without progress before a backlog counts as stalled ...
RETRY_MAX = 0.1             # ... and is then retried less and less often, up to this interval

log = logging.getLogger(__name__)


def send_hwm(limit, max_value_size) -> int:
    """The client port's SNDHWM: about `limit` bytes of the largest replies, within [MIN_HWM, ROUTER_HWM]."""
    largest = max(max_value_size, 1 << 20) + REPLY_OVERHEAD
    return max(MIN_HWM, min(transport.ROUTER_HWM, limit // largest))


class _Backlog:
    __slots__ = ("queue", "size", "over", "retry_at", "delay", "progress_at")

    def __init__(self, now):
        self.queue = collections.deque()
        self.size = 0
        self.over = False
        self.retry_at = 0.0     # when flush tries this backlog next
        self.delay = 0.0        # grows while a stalled backlog's attempts make no progress
        self.progress_at = now  # when it was made or last sent something


class Grouped(list):
    """The envelope of a request that came in a batch (docs/PROTOCOL.md section 2, "Batches"): its
    reply may share a message with others to the same client. `envelope + [body]` keeps the mark,
    so replies held for later (replies.py) are grouped when they are released."""
    __slots__ = ()

    def __add__(self, other):
        return Grouped(list.__add__(self, other))


class Outbox:
    """Sends frames ([identity, ..., body]) on a ROUTER with ROUTER_MANDATORY set. A reply to a
    batched request (frames of type Grouped) waits in `groups` until `send_groups`, which the
    loop calls after each pass that can make replies (node.py)."""

    def __init__(self, sock, limit):
        self.sock, self.limit = sock, limit
        # Called with a connection's identity when a reply to it is dropped (over its limit, or its
        # queue emptied to make room): a stream of replies (a watch) cannot go on after a hole.
        self.on_drop = None
        self.backlogs = {}      # identity -> _Backlog, only for connections whose queue is full
        self.total = 0          # bytes in every backlog
        self.dropped = 0        # replies dropped over a limit
        # Some backlog is moving (new, or its last attempt sent something): the loop then also wakes
        # when the socket can send (POLLOUT), not only on the retry timer. A stalled one never sets
        # it, so a client that does not read cannot make the loop spin.
        self.draining = False
        self.groups = {}        # identity -> reply bodies to batched requests, until send_groups

    def send(self, frames):
        """Send or queue a reply; returns False when it was not (its client has gone, or it was
        dropped over the limits: `on_drop` is told). A grouped one returns True: it leaves at
        send_groups, where the same holds."""
        if type(frames) is Grouped:
            bodies = self.groups.get(frames[0])
            if bodies is None:
                self.groups[frames[0]] = [frames[-1]]
            else:
                bodies.append(frames[-1])
            return True
        backlog = self.backlogs.get(frames[0])
        if backlog is None:
            try:
                transport.try_send_frames(self.sock, frames)
                return True
            except zmq.Again:
                backlog = self.backlogs[frames[0]] = _Backlog(time.monotonic())
                self.draining = True
            except zmq.ZMQError as exc:
                if exc.errno == errno.EHOSTUNREACH:
                    return False    # the client has gone: its reply has nobody to go to
                raise
        size = sum(map(len, frames))
        if self.total + size > GLOBAL_LIMITS * self.limit:
            self._evict_stalled(time.monotonic())
        if backlog.over or backlog.size + size > self.limit or self.total + size > GLOBAL_LIMITS * self.limit:
            if not backlog.over:
                log.warning("a client is not reading its replies (%d bytes waiting, limit %d): dropping its "
                            "replies and ignoring its requests until it reads", backlog.size, self.limit)
            backlog.over = True
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(frames[0])
            return False
        backlog.queue.append(frames)
        backlog.size += size
        self.total += size
        return True

    def send_groups(self):
        """Send the grouped replies: per client, as few messages as hold GROUP_BYTES of bodies each
        (one larger body goes alone), so that no message is larger than the largest single reply
        (the client port's SNDHWM assumes so: send_hwm)."""
        groups, self.groups = self.groups, {}
        limit = protocol.GROUP_BYTES
        for identity, bodies in groups.items():
            frames, size = [identity], 0
            for body in bodies:
                if size and size + len(body) > limit:
                    self.send(frames)
                    frames, size = [identity], 0
                frames.append(body)
                size += len(body)
            self.send(frames)

    def _evict_stalled(self, now):
        """All backlogs together are full: empty the largest one that is not moving (its client
        stopped reading), rather than drop the replies of clients that read."""
        stalled = [(identity, b) for identity, b in self.backlogs.items()
                   if now - b.progress_at >= STALLED_AFTER and b.queue]
        if stalled:
            identity, victim = max(stalled, key=lambda item: item[1].size)
            if self.on_drop is not None:
                self.on_drop(identity)
            self.dropped += len(victim.queue)
            self.total -= victim.size
            victim.queue.clear()
            victim.size = 0
            victim.over = True
            log.warning("every client's reply queues are full: dropped a stalled client's %d waiting replies",
                        self.dropped)

    def flush(self, now):
        """Send what the backlogs hold, as far as each client's queue takes it."""
        self.draining = False
        for identity, backlog in list(self.backlogs.items()):
            if backlog.retry_at > now:
                continue
            queue, before = backlog.queue, backlog.size
            try:
                while queue:
                    transport.try_send_frames(self.sock, queue[0])
                    backlog.size -= sum(map(len, queue.popleft()))
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                queue.clear()       # the client has gone
                backlog.size = 0
            self.total -= before - backlog.size
            if not queue:
                del self.backlogs[identity]
                continue
            if backlog.size < before:
                backlog.delay, backlog.progress_at = 0.0, now
                self.draining = True
            elif now - backlog.progress_at < STALLED_AFTER:
                pass    # its client reads: tried again on the loop's short timer. (Not `draining`: POLLOUT
                        # says only that *some* connection can take more, so it would make the loop spin.)
            else:
                backlog.delay = min(RETRY_MAX, max(0.001, 2 * backlog.delay))
                backlog.retry_at = now + backlog.delay
            if backlog.over and backlog.size <= self.limit // 2:
                backlog.over = False

    def next_retry(self) -> float:
        """When flush should next be called (monotonic seconds)."""
        return min(b.retry_at for b in self.backlogs.values())

    def refuses(self, identity) -> bool:
        """True while this client's backlog is over the limit: its requests are ignored."""
        backlog = self.backlogs.get(identity)
        return backlog is not None and backlog.over
