"""The node's state: the log, staging and group commit, applying committed entries. No sockets.

The node loop feeds requests in arrival order (`handle`, see commands.py), then calls `flush()` once
per loop iteration: the log entries staged since the last flush go to RocksDB in one batch (one fsync).
`handle` returns each reply with the commit seq it waits for: a write waits for its own entry, a
read of a key with an uncommitted write waits for that write; everything else may leave at once.

- Standalone (no peers): an entry is committed as soon as it is durable, so data is written in the
  same batch as the log and commit_seq = last_seq after every flush.
- Replicated primary: flush writes the log only; entries are applied to data once the primary
  (primary.py) reports them committed (`apply_committed`). Requests are judged against committed
  data plus the uncommitted writes (`_pending`), so outcomes follow log order.
- Secondary: writes and non-stale reads are refused with `not_primary`; entries arrive through
  `append_entries` and are applied up to the commit seq the primary announced. They are staged like
  a primary's: every CHANGE of an iteration goes to RocksDB in the iteration's one batch, and the
  ACKs leave after it (sends.py).

`last_seq`, `last_term`, `applied_seq` and `term_at` describe the log as the iteration's commit
will leave it (staged entries included); `storage`'s fields describe what is durable now. What a
message reports is sent after the commit, so it may report the former; an election decision
(vote, candidacy) reads the storage after the staged batch is written (`flush`, roles.py).

A write's outcome is remembered per client (sessions.py), so a client that retries after a lost
reply gets the first outcome, not a second apply.
"""
import logging
import time

from .. import errors, protocol
from .commands import Commands
from .follower_log import FollowerLog
from .membership import Membership
from .shared_entry import SharedEntry, opens, shared_size
from ..protocol import OP_PUT, LogEntry, Member
from ..sessions import Sessions
from ..storage import (META_APPLIED_SEQ, META_LAST_SEQ, META_LAST_TERM, META_LEADER, META_LEARNER,
                      META_TERM, META_VOTED_FOR)

TRIM_SLACK = 0.1                # trim the log once it exceeds log_retention by 10% (amortises the delete)

log = logging.getLogger(__name__)


class Engine(FollowerLog):
    def __init__(self, storage, config, version):
        self.storage = storage
        self.config = config
        self.version = version
        self.started = time.monotonic()
        self.limits = protocol.Limits(config.max_key_size, config.max_value_size,
                                      config.max_batch_items, config.max_request_size)
        # The membership (membership.py): the latest membership entry in the log, else the one the
        # data holds, else the flags. `on_membership` (set by Roles) hears of every change.
        self.membership = None
        self._membership_source = None    # (seq, members) the membership was made from (None: the flags)
        self.on_membership = None
        self._member_entries = {}     # seq -> members (tuple of Member): membership entries above applied_seq
        self._members_applied = protocol.decode_members(storage.members) if storage.members else None
        self.flags_membership = Membership.from_config(config)   # what the flags say (Roles logs how the record differs)
        self.role = "primary"
        self.leader_address = None
        self.extra_status = None      # set by the node: a callable giving replication fields for STATUS
        self.primary_changes = 0      # times a primary other than the last one known took over (metrics)
        self._last_primary = 0
        # what this node did as a secondary, counted over the process's life (STATUS, metrics)
        self.follower_counters = {"fetches": 0, "snapshots_installed": 0, "truncations": 0, "committed_catch_ups": 0}
        self.space_alarm = False      # short of disk (space.py): the log keeps only what it must
        self.trim_floor = None        # set by LogServer: a callable giving the lowest seq the log must keep
        self.peer_floor = None        # set by Roles: the lowest seq to keep while short of disk (None: none)
        self.term_first_seq = 0       # on a replicated primary: the seq of its term's first (empty) entry
        self._batch = None
        self._staged = []             # entries (bytes) staged since the last flush, for the change stream
        self._staged_terms = {}       # seq -> term of each entry staged since the last flush
        self._open = None             # the shared entry later writes of this iteration may join (shared_entry.py)
        self.peers_read_shared = None  # set by the node: whether every member said it reads shared entries
        self._pending = {}            # key -> (value or None, seq): the latest write not yet applied
        self._unapplied = {}          # seq -> ops of log entries above applied_seq
        self._next_seq = storage.last_seq + 1
        self._last_term = storage.last_term
        self._applied = storage.applied_seq
        self.sessions = Sessions(config.session_timeout)
        # Since when every write this node holds is recorded in sessions: always, when its log
        # reaches back to seq 1; else from start-up (the trimmed entries' records are gone).
        self.sessions_complete_since = float("-inf") if storage.first_seq <= 1 else self.started
        self._recover()
        self._update_membership()
        # Standalone or replicated is decided at start: a node that has peers, by its flags or its records.
        self.replicated = bool(self.membership.peers)
        if not self.replicated and storage.last_seq > storage.applied_seq:
            # A standalone node commits what is durable: apply what a crash left unapplied.
            self.apply_committed(storage.last_seq)
        self.commit_seq = storage.applied_seq
        self.commands = Commands(self)
        self.handle = self.commands.handle   # request -> (reply body, commit seq it waits for; 0: none)

    def _recover(self):
        """Rebuild in-memory state from the log: client outcomes, and the entries not yet applied."""
        st = self.storage
        now = time.monotonic()
        for seq, raw in st.log_entries(st.first_seq):
            entry = protocol.decode_entry(raw)
            self._record_session(entry, seq, now)
            if seq > st.applied_seq:
                self._stage_pending(seq, entry.ops)
        if self.sessions.clients:
            log.info("recovered %d write outcomes of %d clients from the retained log",
                     len(self.sessions), self.sessions.clients)

    def housekeeping(self, now):
        """Periodic work: forget clients that went silent."""
        expired = self.sessions.expire(now)
        if expired:
            log.debug("forgot %d idle client sessions", expired)

    # ------------------------------------------------------------ role

    def become_primary(self, term):
        """Lead `term` (won, or bootstrapped). A replicated primary starts its term with an empty
        entry: entries of earlier terms commit only under one of the current term (DESIGN.md 4.2),
        and this one commits as soon as a quorum holds it, so nothing waits for the next write."""
        self.role = "primary"
        self.leader_address = self.config.address
        if self.storage.term != term or self.storage.leader_id != self.config.node_id or self.storage.learner:
            self._set_term(term, self.config.node_id, self.config.node_id, learner=False)
            if self.replicated:
                # A cluster that never recorded its membership (it comes from the flags) records it now.
                ops = () if self.membership.seq else protocol.members_ops(self.membership.member_list)
                self.term_first_seq = self._append_entry(b"", 0, ops)

    def follow(self, term, leader_id, leader_address, role="secondary"):
        """Follow `leader_id` (0: not known yet) in `term`; persisted before anything is sent in that
        term. A new term starts without a vote."""
        self.role = role
        self.leader_address = leader_address
        st = self.storage
        if st.term != term:
            self._set_term(term, leader_id, 0)
        elif st.leader_id != leader_id:
            self._set_term(term, leader_id, st.voted_for)

    def record_vote(self, term, candidate_id, learner=None):
        """Persist (synced) a vote for candidate_id in term (and the learner flag, when given),
        before the vote is sent."""
        st = self.storage
        self._set_term(term, st.leader_id if term == st.term else 0, candidate_id, learner)

    def _set_term(self, term, leader_id, voted_for, learner=None):
        """term, its primary and our vote in it (and, when given, the learner flag), synced at once
        with whatever this iteration staged (a secondary's entries: a vote or a new term never
        leaves behind entries this node already matched)."""
        if leader_id and leader_id != self._last_primary:     # a vote stores 0 between two terms of one primary
            self.primary_changes += 1
            self._last_primary = leader_id
        batch = self._staging()
        batch.set_meta(META_TERM, term)
        batch.set_meta(META_LEADER, leader_id)
        batch.set_meta(META_VOTED_FOR, voted_for)
        if learner is not None:
            batch.set_meta(META_LEARNER, int(learner))
        self.flush()

    def become_voter(self):
        """A learner that caught up with the primary of this term votes from now on. It counts as
        having voted for that primary: it may have voted in this term before its data dir was lost."""
        st = self.storage
        self._set_term(st.term, st.leader_id, st.voted_for or st.leader_id, learner=False)

    # ------------------------------------------------------------ entry points for the loop

    @property
    def last_seq(self):
        return self._next_seq - 1

    @property
    def last_term(self):
        return self._last_term

    @property
    def applied_seq(self):
        return self._applied

    def term_at(self, seq):
        """The term of the entry at seq, staged or durable; None beyond the log or trimmed away."""
        term = self._staged_terms.get(seq)
        return term if term is not None else self.storage.term_at(seq)

    def take_staged(self):
        """The entries staged since the last flush as (prev_seq, prev_term, [entry bytes]), for the
        change stream (a replicated primary streams them while its own flush is under way)."""
        self._close_shared()
        if not self._staged:
            return None
        entries, self._staged = self._staged, []
        return self.storage.last_seq, self.storage.last_term, entries

    def flush(self):
        """Write everything staged since the last flush in one batch (fsync per setting).
        Any failure raises StorageError: the node must stop, since replies may wait on this batch."""
        self._close_shared()
        batch = self._batch
        if batch is None:
            return
        st = self.storage
        self._staged = []
        self._staged_terms.clear()
        try:
            last_seq = self._next_seq - 1
            batch.set_meta(META_LAST_SEQ, last_seq)
            batch.set_meta(META_LAST_TERM, self._last_term)
            if not self.replicated:
                batch.set_meta(META_APPLIED_SEQ, last_seq)
            self._maybe_trim(batch, last_seq)
            st.commit(batch)
        except errors.StorageError:
            raise
        except Exception as exc:
            raise errors.StorageError(f"commit failed: {type(exc).__name__}: {exc}") from exc
        self._batch = None
        if not self.replicated:
            self.commit_seq = self._applied = last_seq
            self._pending.clear()
            self._unapplied.clear()

    def apply_to_commit(self):
        """Apply what the primary has committed but not yet applied (done after the replies left).
        When a batch is staged, the apply joins it: one RocksDB write instead of two."""
        if self._applied < self.commit_seq:
            self.apply_committed(self.commit_seq)

    def apply_committed(self, commit_seq, now=False):
        """Apply log entries up to commit_seq to data: in the staged batch when there is one (the
        entries and their effect are written together), else, or with `now` (a scan is about to
        read RocksDB), in a batch of its own written at once without fsync: the entries themselves
        are durable in the log."""
        st = self.storage
        start = self._applied + 1
        staged = self._batch
        join = staged is not None and not now
        # Only entries durable in the log (or written in the same batch) are applied.
        commit_seq = min(commit_seq, self.last_seq if join else st.last_seq)
        if commit_seq < start:
            self.commit_seq = max(self.commit_seq, min(commit_seq, self._applied))
            return
        batch = staged if join else st.batch()
        pending = self._pending
        for seq in range(start, commit_seq + 1):
            ops = self._unapplied.pop(seq, None)
            members = self._member_entries.pop(seq, None)
            if ops is None:
                entry = protocol.decode_entry(next(st.log_entries(seq, seq))[1])
                ops, members = protocol.data_ops(entry), protocol.entry_members(entry)
            if members is not None:
                self._apply_members(batch, seq, members)
            for op in ops:
                key = op[1]
                if op[0] == OP_PUT:
                    batch.put(key, op[2])
                else:
                    batch.delete(key)
                if pending.get(key, (None, 0))[1] == seq:
                    del pending[key]
        batch.set_meta(META_APPLIED_SEQ, commit_seq)
        self._applied = commit_seq
        if not join:
            st.commit(batch, sync=False)
            if staged is not None:      # the staged batch must not set applied_seq back when it is written
                staged.set_meta(META_APPLIED_SEQ, commit_seq)
        self.commit_seq = max(self.commit_seq, commit_seq)

    def make_room(self):
        """Short of disk (space.py): trim the log with this iteration's flush, even if nothing is
        written (_maybe_trim says what stays)."""
        st = self.storage
        if self.space_alarm and not st.restoring and st.first_seq <= st.applied_seq:
            self._staging()

    def _maybe_trim(self, batch, last_seq):
        """Keep about log_retention entries (short of disk: only what it must), and never drop one
        that is not applied yet or that a snapshot in use needs."""
        st = self.storage
        # Short of disk, a node keeps only what it must (Roles._peer_floor): a primary, the entries
        # a member it hears still lacks (members behind that are down take a snapshot when they
        # return); another role, the entries any peer lacks, so that it can bring them up to date
        # if it becomes primary (docs/OPERATIONS.md, "Disk space").
        short = self.space_alarm
        retention = 0 if short else self.config.log_retention
        if last_seq - st.first_seq + 1 <= retention * (1 + TRIM_SLACK):
            return
        new_first = min(last_seq - retention + 1, st.applied_seq + 1)
        floors = (self.trim_floor, self.peer_floor if short else None)
        for floor in (f() for f in floors if f is not None):
            if floor is not None:
                new_first = min(new_first, floor)
        if new_first <= st.first_seq:
            return
        batch.trim_log(st.first_seq, new_first, st.term_at(new_first - 1))

    # ------------------------------------------------------------ membership

    def _apply_members(self, batch, seq, members):
        """A committed membership is recorded with the batch that applies it (a newer one, from a
        join's reply, is kept)."""
        if self._members_applied is None or seq >= self._members_applied[0]:
            batch.set_members(protocol.encode_members(seq, members))
            self._members_applied = (seq, members)
            self._update_membership(applied_changed=True)

    @property
    def committed_members(self) -> tuple:
        """The members of the membership applied here (committed), () when none is recorded."""
        return self._members_applied[1] if self._members_applied is not None else ()

    def _update_membership(self, applied_changed=False):
        """Recompute the membership in use after the log changed; tell Roles when it did (or when
        the committed one did: Roles keeps talking to its members until the next one commits)."""
        seq = max(self._member_entries, default=0)
        applied = self._members_applied
        if seq and (applied is None or seq > applied[0]):
            source = (seq, self._member_entries[seq])
        elif applied is not None:
            source = (applied[0], applied[1])
        else:
            source = None
        if source == self._membership_source and self.membership is not None and not applied_changed:
            return
        self._membership_source = source
        new = Membership(self.config.node_id, source[1], source[0]) if source else self.flags_membership
        self.membership = new
        if self.on_membership is not None:
            self.on_membership(new)

    @property
    def removed_by(self):
        """The seq of the committed membership entry this node is not in (None: it is a member, or
        no membership was recorded)."""
        applied = self._members_applied
        if applied is None or any(m.node_id == self.config.node_id for m in applied[1]):
            return None
        return applied[0]

    def append_membership(self, members, client_id=b"", request_id=0):
        """Stage a membership entry (the primary; membership.py checked the change). Returns its seq."""
        return self._append_entry(client_id, request_id, protocol.members_ops(members))

    def membership_settled(self) -> bool:
        """Whether a membership change may start: this term's first entry is committed (so every
        change of an earlier term is), and so is the latest membership entry."""
        return self.commit_seq >= max(self.term_first_seq, max(self._member_entries, default=0))

    # ------------------------------------------------------------ helpers

    def _staging(self):
        if self._batch is None:
            self._batch = self.storage.batch()
        return self._batch

    def _stage_pending(self, seq, ops):
        if type(ops) is dict:   # a membership change: tracked apart, applies nothing to data
            self._member_entries[seq] = tuple(Member(*m) for m in ops["members"])
            self._update_membership()
            ops = ()
        ops = ops or ()       # a fence applies nothing
        self._unapplied[seq] = ops
        self._pend(seq, ops)

    def _pend(self, seq, ops):
        """Reads and later writes see these ops, logged at seq, before they are applied."""
        pending = self._pending
        for op in ops:
            pending[op[1]] = (op[2] if op[0] == OP_PUT else None, seq)

    def lookup(self, key):
        """(value, seq of the uncommitted write it comes from, or 0)."""
        hit = self._pending.get(key)
        if hit is not None:
            return hit
        return self.storage.get(key), 0

    def append(self, request, ops):
        """Stage a client request's entry; returns its seq."""
        return self._append_entry(request.client_id, request.request_id, ops)

    def append_fence(self, client_id, request_id):
        """Stage a fence: request_id of client_id is declared not applied, for good. Returns its seq."""
        return self._append_entry(client_id, request_id, protocol.FENCE)

    def _record_session(self, entry, seq, now):
        """Remember which seq holds a client's request (a fence is recorded as -seq), each of a
        shared entry's."""
        if entry.client_id:
            if entry.ops is None:
                self.sessions.record(entry.client_id, entry.request_id, -seq, now)
            else:
                for client_id, request_id in protocol.entry_writers(entry):
                    self.sessions.record(client_id, request_id, seq, now)

    def _append_entry(self, client_id, request_id, ops):
        """Log a write (or a fence, a membership change, a term's first entry) and stage it, and,
        standalone, its effect on data; returns its seq. A write with ops joins this iteration's
        shared entry when it fits there, or starts one (docs/PROTOCOL.md section 5); the rest get
        entries of their own."""
        batch = self._staging()
        shareable = type(ops) is tuple and ops and client_id
        size = shared_size(client_id, ops) if shareable else 0
        shared = self._open
        if shareable and shared is not None and shared.takes(size, len(ops), self.limits.max_batch_items):
            seq = shared.add(client_id, request_id, ops, size)
            if self.replicated:
                self._pend(seq, ops)
        else:
            self._close_shared()
            seq = self._next_seq
            self._next_seq = seq + 1
            term = self.storage.term
            self._staged_terms[seq] = self._last_term = term
            if shareable and opens(size) and self._may_share():
                self._open = shared = SharedEntry(seq, term, client_id, request_id, ops, size)
                logged = shared.ops         # the list later writes extend: applied as one entry
            else:
                raw = protocol.encode_entry(LogEntry(term, client_id, request_id, ops))
                batch.append(seq, raw)
                if self.replicated:
                    self._staged.append(raw)
                logged = ops
            if self.replicated:
                self._stage_pending(seq, logged)
        if not self.replicated:
            pending = self._pending
            for op in ops or ():
                if op[0] == OP_PUT:
                    batch.put(op[1], op[2])
                    pending[op[1]] = (op[2], seq)
                else:
                    batch.delete(op[1])
                    pending[op[1]] = (None, seq)
        if client_id:
            self.sessions.record(client_id, request_id, -seq if ops is None else seq, time.monotonic())
        return seq

    def _may_share(self) -> bool:
        """Whether a new entry may be shared: every peer reads shared entries. Stricter than a peer
        message's rule (peers_take): a peer not heard from yet counts as not reading them, since an
        entry stays in the log that every later member must read."""
        return protocol.peers_read_shared_entries() and (self.peers_read_shared is None or self.peers_read_shared())

    def _close_shared(self):
        """Encode this iteration's shared entry into the staged batch (and the change stream):
        no later write joins it."""
        shared = self._open
        if shared is None:
            return
        self._open = None
        raw = protocol.encode_entry(shared.entry())
        self._batch.append(shared.seq, raw)
        if self.replicated:
            self._staged.append(raw)

