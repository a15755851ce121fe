"""What peers send to DynamoEngine, checked and joined (docs/DYNAMO.md, docs/SECURITY.md): key
states and vectors refused when this node cannot justify them, read repairs and anti-entropy pages
joined into its data, a resync's applied seqs adopted. A mixin of `DynamoEngine` (engine.py), which
holds the state these methods read and write: applied seqs, the log, the staging batch."""
import time

from .. import errors
from ..storage import META_FIRST, log_key
from ..versions import EMPTY, HLC_LOGICAL_BITS, KeyState, merge
from .antientropy import bucket_keys
from .layout import MAX_CLOCK_AHEAD, _U64, _decode_state, bucket_of, origin_name, origin_partition


class PeerInput:
    def durable_state(self, key):
        """The key's state as stored (bytes or None), for a peer's quorum read."""
        return self.storage.get_cf("data", key)

    def check_remote(self, hlc, vectors=()):
        """Refuse what came from a peer that this node cannot justify (docs/SECURITY.md): a clock more
        than MAX_CLOCK_AHEAD ahead of ours (adopted, it would win every key and overflow our clock),
        or a context or applied vector claiming writes of this node's own origin beyond those it made
        (it would make this node's next writes look superseded)."""
        if hlc > (int((time.time() + MAX_CLOCK_AHEAD) * 1000) << HLC_LOGICAL_BITS):
            raise errors.MalformedMessage(f"a clock of {hlc >> HLC_LOGICAL_BITS} ms is more than "
                                          f"{MAX_CLOCK_AHEAD:.0f} s ahead of this node's")
        for vector in vectors:
            claim = self.overclaim(vector)
            if claim is not None:
                raise errors.MalformedMessage(f"a context claims write {claim[1]} of this node's origin "
                                              f"{origin_name(claim[0])}, which has made {claim[2]}")

    def overclaim(self, vector):
        """(origin, seq claimed, seq made) for a vector naming a write of this run that it has not
        made, else None."""
        if not self.per_partition:
            own = self.applied[self.origin]
            claimed = vector.get(self.origin, 0)
            return (self.origin, claimed, own) if claimed > own else None
        for origin, claimed in vector.items():
            if origin & self._run_mask == self.run and claimed > self.applied.get(origin, 0):
                return origin, claimed, self.applied.get(origin, 0)
        return None

    def remote_state(self, raw) -> KeyState:
        """A key state from a peer, decoded and checked (check_remote) for each sibling."""
        state = _decode_state(raw)
        for sib in state.siblings:
            self.check_remote(sib.hlc)
            if self.is_own(sib.node) and sib.seq > self.applied.get(sib.node, 0):
                raise errors.MalformedMessage(f"a sibling claims write {sib.seq} of this node's origin "
                                              f"{origin_name(sib.node)}, which has made "
                                              f"{self.applied.get(sib.node, 0)}")
        self.check_remote(0, (state.ctx,))
        return state

    def join_state(self, key, remote, remote_applied=None):
        """Join a key state from a peer into ours (read repair). Returns our new state."""
        local = self.load(key)
        merged = merge(local, remote, self.applied, remote_applied)
        if merged != local:
            self._store(key, local, merged)
        return merged

    # ------------------------------------------------------------ anti-entropy

    def merge_range(self, bucket, cursor, next_cursor, items, remote_applied, pulling=False):
        """Join a peer's page of a bucket into our data: each of its key states, and for our keys in
        the same span that it lacks, what its applied vector says it has seen. Returns keys changed.
        pulling: the bucket is a partition this node pulls (moves.py): it may have held it before
        and dropped it, keeping its own origins' seqs (never reused), so those seqs do not say it has
        seen those writes and lacks them for a reason; the join goes by the rest of its vector."""
        self.check_remote(0, (remote_applied,))
        local_applied = self.applied
        if pulling and self.per_partition:
            local_applied = {o: s for o, s in self.applied.items()
                             if not (self.is_own(o) and origin_partition(o) == bucket)}
        states = []
        for key, raw in items:   # all checked before any is joined
            if bucket_of(key) != bucket:
                raise errors.MalformedMessage(f"key outside bucket {bucket} in a range reply")
            states.append((key, self.remote_state(raw)))
        changed = 0
        remote_keys = set()
        for key, state in states:
            remote_keys.add(key)
            local = self.load(key)
            merged = merge(local, state, local_applied, remote_applied)
            if merged != local:
                self._store(key, local, merged)
                changed += 1
        for key in list(bucket_keys(self.storage, bucket, cursor, next_cursor)):
            if key in remote_keys:
                continue
            local = self.load(key)
            merged = merge(local, EMPTY, local_applied, remote_applied)
            if merged != local:
                self._store(key, local, merged)
                changed += 1
        return changed

    def adopt_applied(self, vector):
        """After a full resync from a peer whose applied vector was `vector` when it began: our data
        now holds every entry up to it, so our applied vector moves up; the log entries we hold
        below the new seq are dropped (a fetch must never be served a range with a hole)."""
        for origin, seq in vector.items():
            if self.is_own(origin) or seq <= self.applied.get(origin, 0):
                continue
            batch = self._staging()
            batch.delete_range_cf("log", log_key(origin, 0), log_key(origin, seq + 1))
            if self.per_partition:
                self._by_partition.setdefault(origin_partition(origin), set()).add(origin)
            self.applied[origin] = seq
            self._moved.add(origin)
            self.first[origin] = seq + 1
            batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(seq + 1))
