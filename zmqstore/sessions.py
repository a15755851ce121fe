"""Client sessions: the outcome of each client's applied writes, kept until the client stops waiting.

A client retries a write with the same request id after a timeout or reconnect; the node must then
answer with the first outcome instead of applying the write again. Every request carries `open_from`,
the lowest request id its client still waits for, so outcomes below it are dropped: memory stays
bounded by what clients have in flight, however many writes pass through the log meanwhile. A
client silent for `session_timeout` is forgotten altogether (its retries must end well before).
"""
import collections

MAX_OUTCOMES_PER_CLIENT = 10_000   # above the deepest pipeline (transport.MAX_IN_FLIGHT)


STALE = object()   # lookup(): a request below its client's open_from, a late copy never to apply


class _Session:
    __slots__ = ("outcomes", "last_seen", "floor", "evicted")

    def __init__(self, now):
        self.outcomes = collections.OrderedDict()   # request_id -> seq, in arrival order
        self.last_seen = now
        self.floor = 0          # the highest open_from this client sent: it waits for nothing below
        self.evicted = 0        # the highest request id whose record the cap dropped


class Sessions:
    def __init__(self, timeout):
        self.timeout = timeout
        self._clients = {}

    def __len__(self):
        return sum(len(s.outcomes) for s in self._clients.values())

    @property
    def clients(self):
        return len(self._clients)

    def lookup(self, client_id, request_id, open_from, now):
        """The seq of an applied write with this id (negative: fenced), None, or STALE when the
        request is below an open_from this client already sent: the client gave up on or resolved
        every such request, so this is a late copy and must not be applied. Also drops outcomes
        below open_from."""
        session = self._clients.get(client_id)
        if session is None:
            session = self._clients[client_id] = _Session(now)
        session.last_seen = now
        if request_id < session.floor:
            return STALE
        session.floor = max(session.floor, open_from)
        outcomes = session.outcomes
        while outcomes:
            first = next(iter(outcomes))
            if first >= open_from:
                break
            outcomes.popitem(last=False)
        return outcomes.get(request_id)

    def peek(self, client_id, request_id, now):
        """(seq of the write with this id or None, whether None is certain): not certain when the
        record may have been dropped (the cap, or the client's open_from passed it). A client
        asking is not idle."""
        session = self._clients.get(client_id)
        if session is None:
            return None, True
        session.last_seen = now
        seq = session.outcomes.get(request_id)
        return seq, seq is not None or (request_id > session.evicted and request_id >= session.floor)

    def record(self, client_id, request_id, seq, now):
        """seq: the log entry holding the request; negative for a fence (never to be applied)."""
        session = self._clients.get(client_id)
        if session is None:
            session = self._clients[client_id] = _Session(now)
        session.last_seen = now     # on a secondary, its writes are the only sign the client lives
        outcomes = session.outcomes
        outcomes[request_id] = seq
        if len(outcomes) > MAX_OUTCOMES_PER_CLIENT:
            # A client holding open_from down forever cannot grow this; what is dropped is unknown.
            dropped, _ = outcomes.popitem(last=False)
            session.evicted = max(session.evicted, dropped)

    def forget_from(self, seq):
        """Drop the records of entries from seq on (truncated: they are no longer in the log)."""
        for session in self._clients.values():
            dropped = [rid for rid, s in session.outcomes.items() if abs(s) >= seq]
            for rid in dropped:
                del session.outcomes[rid]

    def expire(self, now):
        """Forget clients silent for longer than the timeout; returns how many."""
        cutoff = now - self.timeout
        stale = [cid for cid, s in self._clients.items() if s.last_seen < cutoff]
        for cid in stale:
            del self._clients[cid]
        return len(stale)
