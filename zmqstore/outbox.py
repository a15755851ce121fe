"""Replies to clients under a byte budget per connection (docs/SECURITY.md, "Bounded cost").

ZeroMQ bounds what a connection may queue in messages (SNDHWM), not bytes: 1,500 unread replies of
1 MiB once held 1.5 GB. So the client port's SNDHWM is set (`send_hwm`) so that a full queue holds
about `limit` bytes of the largest replies, and ROUTER_MANDATORY makes a send to a full queue fail
instead of vanishing. Such a reply waits here, in the connection's backlog, and leaves as the client
reads (`flush`, every loop iteration). A backlog that would pass `limit` bytes means the client is not
reading: its further replies are dropped and its requests ignored (`refuses`) until the backlog has
drained to half. A client that reads its replies never meets either bound.
"""
import collections
import errno
import logging

import zmq

from . import transport

# The largest reply a node sends, beyond the value itself: a scan page is about 1 MiB of items.
REPLY_OVERHEAD = 64 << 10
MIN_HWM = 16

log = logging.getLogger(__name__)


def send_hwm(limit, max_value_size) -> int:
    """The client port's SNDHWM: about `limit` bytes of the largest replies, within [MIN_HWM, ROUTER_HWM]."""
    largest = max(max_value_size, 1 << 20) + REPLY_OVERHEAD
    return max(MIN_HWM, min(transport.ROUTER_HWM, limit // largest))


class _Backlog:
    __slots__ = ("queue", "size", "over")

    def __init__(self):
        self.queue = collections.deque()
        self.size = 0
        self.over = False


class Outbox:
    """Sends frames ([identity, ..., body]) on a ROUTER with ROUTER_MANDATORY set."""

    def __init__(self, sock, limit):
        self.sock, self.limit = sock, limit
        self.backlogs = {}      # identity -> _Backlog, only for connections whose queue is full
        self.dropped = 0        # replies dropped over the limit (status: replies_dropped)

    def send(self, frames):
        backlog = self.backlogs.get(frames[0])
        if backlog is None:
            try:
                transport.try_send_frames(self.sock, frames)
                return
            except zmq.Again:
                backlog = self.backlogs[frames[0]] = _Backlog()
            except zmq.ZMQError as exc:
                if exc.errno == errno.EHOSTUNREACH:
                    return      # the client has gone: its reply has nobody to go to
                raise
        size = sum(map(len, frames))
        if backlog.size + size > self.limit:
            if not backlog.over:
                log.warning("a client is not reading its replies (%d bytes waiting, limit %d): dropping its "
                            "replies and ignoring its requests until it reads", backlog.size, self.limit)
            backlog.over = True
            self.dropped += 1
            return
        backlog.queue.append(frames)
        backlog.size += size

    def flush(self):
        """Send what the backlogs hold, as far as each client's queue takes it."""
        for identity, backlog in list(self.backlogs.items()):
            queue = backlog.queue
            try:
                while queue:
                    transport.try_send_frames(self.sock, queue[0])
                    backlog.size -= sum(map(len, queue.popleft()))
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                queue.clear()
            if not queue:
                del self.backlogs[identity]
            elif backlog.over and backlog.size <= self.limit // 2:
                backlog.over = False

    def refuses(self, identity) -> bool:
        """True while this client's backlog is over the limit: its requests are ignored."""
        backlog = self.backlogs.get(identity)
        return backlog is not None and backlog.over
