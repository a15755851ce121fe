"""A secondary's side of the log (mixed into Engine): entries from the primary staged in the
iteration's batch, a conflicting tail truncated, a snapshot installed chunk by chunk. The state
these touch (the staged batch, `_pending`, `_unapplied`, the seqs) is Engine's (engine.py).
"""
import time

from .. import errors, protocol
from ..protocol import OP_PUT
from ..storage import META_APPLIED_SEQ, META_LAST_SEQ, META_LAST_TERM, META_RESTORING


class FollowerLog:
    """Engine's methods for the log a secondary takes from its primary."""

    def append_entries(self, first_seq, raw_entries, leader_commit=0):
        """Stage entries first_seq.. (already checked to follow our log) in this iteration's batch:
        written with the iteration's commit (`flush`, one fsync for every CHANGE of the iteration),
        and applied once committed (`apply_committed` joins the same batch). Returns the new last seq.
        Catching up, everything before these entries is applied and most of them are committed
        (up to `leader_commit`): those are applied straight into the batch, not tracked as pending.
        Every entry is decoded before any is staged: a malformed one leaves nothing in the batch."""
        entries = [protocol.decode_peer_entry(raw) for raw in raw_entries]
        batch = self._staging()
        seq = first_seq
        now = time.monotonic()
        before = self._applied
        direct = before == first_seq - 1
        for raw, entry in zip(raw_entries, entries):
            batch.append(seq, raw)
            self._record_session(entry, seq, now)   # a retry after failover must find it
            if direct and seq <= leader_commit:
                for op in protocol.data_ops(entry):
                    if op[0] == OP_PUT:
                        batch.put(op[1], op[2])
                    else:
                        batch.delete(op[1])
                members = protocol.entry_members(entry)
                if members is not None:
                    self._apply_members(batch, seq, members)
                self._applied = seq
            else:
                direct = False
                self._stage_pending(seq, entry.ops)
            self._staged_terms[seq] = self._last_term = entry.term
            seq += 1
        if self._applied > before:
            batch.set_meta(META_APPLIED_SEQ, self._applied)
            self.commit_seq = max(self.commit_seq, self._applied)
        self._next_seq = seq
        return seq - 1

    def truncate_from(self, seq):
        """Drop our entries from seq on: they conflict with the primary's log, so they were never
        committed. Refuses to drop an applied entry. (Rare: what this iteration staged is written
        first, and the truncation in a batch of its own.)"""
        self.flush()
        st = self.storage
        if seq <= st.applied_seq:
            raise errors.StorageError(f"refusing to truncate applied entry {seq} (applied {st.applied_seq})")
        batch = st.batch()
        batch.truncate_log(seq, st.last_seq, st.term_at(seq - 1))
        st.commit(batch)
        for s in range(seq, self._next_seq):
            self._unapplied.pop(s, None)
            self._member_entries.pop(s, None)
        self.sessions.forget_from(seq)
        self._last_term = st.last_term
        self._pending = {}
        for s in sorted(self._unapplied):   # the latest remaining write per key, in log order
            for op in self._unapplied[s]:
                self._pending[op[1]] = (op[2] if op[0] == OP_PUT else None, s)
        self._next_seq = seq
        self._update_membership()

    def install_snapshot_chunk(self, snapshot_seq, snapshot_term, items, first, last, members=None):
        """Write one snapshot chunk; the first one empties data and log, the last one makes the
        snapshot the new base of the log, with `members` ((seq, members) or None), the membership
        at its seq. (What this iteration staged is written first.)"""
        self.flush()
        st = self.storage
        batch = st.batch()
        if first:
            # The records of the snapshot's writes are not ours, and records of our unapplied
            # entries may name entries the primary never had.
            self.sessions_complete_since = time.monotonic()
            self.sessions.forget_from(st.applied_seq + 1)
            batch.clear_all()
            batch.set_meta(META_RESTORING, 1)
            batch.set_meta(META_LAST_SEQ, 0)
            batch.set_meta(META_LAST_TERM, 0)
            batch.set_meta(META_APPLIED_SEQ, 0)
            self._pending.clear()
            self._unapplied.clear()
            self._member_entries.clear()
        for key, value in items:
            batch.put(key, value)
        if last:
            batch.set_meta(META_RESTORING, 0)
            batch.trim_log(snapshot_seq + 1, snapshot_seq + 1, snapshot_term)  # first_seq, trim_term
            batch.set_meta(META_LAST_SEQ, snapshot_seq)
            batch.set_meta(META_LAST_TERM, snapshot_term)
            batch.set_meta(META_APPLIED_SEQ, snapshot_seq)
            if members is not None:
                self._apply_members(batch, *members)
        st.commit(batch)
        if last:
            self._next_seq = snapshot_seq + 1
            self.commit_seq = self._applied = snapshot_seq
            self._last_term = snapshot_term
        elif first:
            self._next_seq = 1
            self.commit_seq = self._applied = 0
            self._last_term = 0
        self._update_membership()
