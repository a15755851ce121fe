"""Leader-mode replication: the primary's and the secondaries' side of the log stream.

docs/REPLICATION.md describes the protocol. These classes decide and keep replication state; the
node loop gives them decoded peer messages and the time, and what they send goes into `out`, the
iteration's Sends (sends.py), which the loop sends after the iteration's commit. Tests read those
values with real storage and no sockets.
"""
import logging
from typing import NamedTuple

from . import errors, faults, limits, protocol

FETCH_RETRY = 1.0                 # seconds before an unanswered FETCH or SNAPSHOT is sent again
SNAPSHOT_IDLE = 60.0              # seconds an unused snapshot is kept for a secondary to come back

log = logging.getLogger(__name__)


class LogServer:
    """Serves FETCH and SNAPSHOT from this node's own log and data, whatever its role: secondaries
    fetch from the primary, a candidate that won fetches the log it adopts from a voter."""

    def __init__(self, engine, config, out):
        self.engine = engine
        self.storage = engine.storage
        self.node_id = config.node_id
        self.out = out
        self._snapshots = {}            # snapshot seq -> [snapshot, term, last used]
        self.counters = {"fetches_served": 0, "snapshots_served": 0}

    def on_fetch(self, fields, envelope, now):
        node_id, _term, from_seq = fields
        st = self.storage
        if st.restoring:
            return      # our log and data are being replaced: nothing to serve (the asker retries)
        if from_seq < st.first_seq:
            self.out.reply_peer(envelope, protocol.encode_peer("NEED_SNAPSHOT", st.term, self.node_id, st.first_seq))
            return
        from_seq = min(from_seq, st.last_seq + 1)
        self.counters["fetches_served"] += 1
        entries = st.read_entries(from_seq, *limits.FETCH["leader"])
        self.out.reply_peer(envelope, protocol.encode_peer(
            "ENTRIES", st.term, self.node_id, from_seq - 1, st.term_at(from_seq - 1), entries,
            self.engine.commit_seq, st.last_seq))

    def on_snapshot(self, fields, envelope, now):
        node_id, _term, asked_seq, asked_cursor = fields
        eng = self.engine
        if self.storage.restoring or (eng.role == "primary" and eng.commit_seq < eng.term_first_seq):
            # Restoring: nothing to serve. A new primary: its applied data may lag entries its
            # predecessor committed, and the receiver empties its log for the snapshot: wait
            # (the asker retries) until this term's first entry, and so all before it, commits.
            return
        snapshot_seq, cursor = asked_seq, asked_cursor
        held = self._snapshots.get(snapshot_seq) if snapshot_seq else None
        if held is None:
            # Taken between loop iterations, data is exactly at applied_seq.
            snapshot_seq = self.storage.applied_seq
            held = [self.storage.data_snapshot(), self.storage.term_at(snapshot_seq), now]
            self._snapshots[snapshot_seq] = held
            self.counters["snapshots_served"] += 1
            cursor = None
            log.info("snapshot at seq %d for node %d", snapshot_seq, node_id)
        held[2] = now
        items, next_cursor = self.storage.snapshot_page(held[0], cursor, *limits.SNAPSHOT)
        self.out.reply_peer(envelope, protocol.encode_peer(
            "SNAPSHOT_CHUNK", self.storage.term, self.node_id, asked_seq, asked_cursor, snapshot_seq, held[1],
            items, next_cursor))

    def housekeeping(self, now):
        for seq in [s for s, held in self._snapshots.items() if now - held[2] > SNAPSHOT_IDLE]:
            del self._snapshots[seq]

    def close(self):
        self._snapshots.clear()     # snapshots hold RocksDB open


class Primary:
    """The primary's side: publishes the log and counts acknowledgements (LogServer answers FETCH
    and SNAPSHOT)."""

    def __init__(self, engine, config, out, now):
        self.engine = engine
        self.storage = engine.storage
        self.config = config
        self.out = out
        self.node_id = config.node_id
        self.match = {p.node_id: 0 for p in config.peers}        # highest seq each peer holds durably
        self.voter = {p.node_id: False for p in config.peers}    # learners' copies do not count toward commit
        self.acked_round = {p.node_id: 0 for p in config.peers}  # highest heartbeat round each answered
        self.last_heard = {p.node_id: now for p in config.peers}  # a grace period from the start of the term
        self.majority = config.cluster_size // 2 + 1
        self.round = 0                  # the latest heartbeat round started
        self._published_commit = -1
        self.counters = {}

    # ------------------------------------------------------------ the stream

    def publish_entries(self, prev_seq, prev_term, entries):
        """Stream entries staged in this iteration. Sent before our own flush, so the secondaries'
        fsyncs overlap ours; advance_commit() never counts an entry we do not hold durably."""
        last_seq = prev_seq + len(entries)
        self.out.publish_early(protocol.encode_peer(
            "CHANGE", self.storage.term, self.node_id, prev_seq, prev_term, entries, self.engine.commit_seq,
            last_seq))
        self._published_commit = self.engine.commit_seq

    def heartbeat(self, start_round=False):
        """Publish a HEARTBEAT (commit seq and, with start_round, a new read-confirmation round)."""
        if start_round:
            self.round += 1
        st = self.storage
        self.out.publish(protocol.encode_peer(
            "HEARTBEAT", st.term, self.node_id, self.round, self.engine.commit_seq, st.last_seq))
        self._published_commit = self.engine.commit_seq

    def publish_commit_if_moved(self):
        if self.engine.commit_seq != self._published_commit:
            self.heartbeat()

    def advance_commit(self):
        """Commit the highest seq that write_quorum nodes hold, this one included (entries published
        before our own flush may be on secondaries first), if it is of this term. The engine
        applies it to data after the replies that waited for it have left (Engine.apply_to_commit)."""
        own = self.storage.last_seq
        voter = self.voter
        values = sorted([own, *(seq for pid, seq in self.match.items() if voter[pid])], reverse=True)
        if len(values) < self.config.write_quorum:
            return
        candidate = min(values[self.config.write_quorum - 1], own)
        if candidate > self.engine.commit_seq and self.storage.term_at(candidate) == self.storage.term:
            self.engine.commit_seq = candidate

    def confirmed_round(self):
        """The latest round a majority (this node included) has answered in this term."""
        values = sorted([self.round, *self.acked_round.values()], reverse=True)
        return values[self.majority - 1]

    def heard(self, node_id, now):
        """A peer of this term answered (an ACK, a role query or reply)."""
        if node_id in self.last_heard:
            self.last_heard[node_id] = now

    def pardon(self, now):
        """This process was paused: judge the peers from now on, not across the pause."""
        for node_id in self.last_heard:
            self.last_heard[node_id] = now

    def has_majority(self, now):
        """Whether a majority (this node included) was heard from within election_interval."""
        window = self.config.election_interval
        heard = sum(1 for t in self.last_heard.values() if now - t < window)
        return heard + 1 >= self.majority

    # ------------------------------------------------------------ acknowledgements

    def on_ack(self, fields, now):
        node_id, term, last_seq, round_, voter = fields
        if term != self.storage.term or node_id not in self.match:
            return
        if last_seq > self.engine.last_seq:
            # no copy can hold entries this primary never sent (a forged or broken ACK would count toward commit)
            raise errors.BadArgument(f"ACK from node {node_id} claims seq {last_seq}; this primary's log ends at "
                                     f"{self.engine.last_seq}")
        self.last_heard[node_id] = now
        self.match[node_id] = last_seq          # its latest report: it may have lost data and restarted
        self.voter[node_id] = voter
        if self.acked_round[node_id] < round_ <= self.round:   # a round from another run means nothing
            self.acked_round[node_id] = round_
        self.advance_commit()

    def status(self, now):
        window = self.config.election_interval
        return [{"node_id": pid, "role": "secondary", "last_seq": self.match[pid],
                 "alive": now - self.last_heard[pid] < window}
                for pid in sorted(self.match)]


class Plan(NamedTuple):
    """What a secondary does with a batch of entries from the primary."""
    kind: str               # "append", "fetch" or "none"
    seq: int = 0            # append: seq of entries[0]; fetch: first seq to ask for
    entries: tuple = ()
    truncate: bool = False  # append: drop our entries from seq on first


def plan_append(log_, prev_seq, prev_term, entries):
    """Match a batch (prev_seq, prev_term, entries) against our log (docs/REPLICATION.md): `log_`
    has `last_seq` and `term_at(seq)` (the engine: staged entries included)."""
    last = log_.last_seq
    if prev_seq > last:
        return Plan("fetch", last + 1)
    ours = log_.term_at(prev_seq)
    if ours is not None and ours != prev_term:
        # Our entry at prev_seq is not the primary's: everything from it on is an uncommitted
        # leftover. Drop it and ask again from there.
        return Plan("fetch", prev_seq, truncate=True)
    seq, i = prev_seq + 1, 0
    while i < len(entries) and seq <= last:
        ours = log_.term_at(seq)
        if ours is not None and ours != protocol.entry_term(entries[i]):
            return Plan("append", seq, tuple(entries[i:]), truncate=True)
        i, seq = i + 1, seq + 1
    if i == len(entries):
        return Plan("none")
    return Plan("append", seq, tuple(entries[i:]))


class Secondary:
    """A secondary's side: follows the primary's stream, repairs gaps, installs snapshots. One
    instance per (term, primary): the node makes a new one when either changes.

    `matched` is the highest seq known to equal the primary's log: committed entries always do, and a
    CHANGE or ENTRIES from the current primary vouches for what it covers. Entries beyond it may be
    leftovers of an earlier term, so ACKs report `matched`, never `last_seq`, and only entries up to
    `matched` are applied.

    With `sync_target` set, this is a candidate that won and adopts the log of voter `leader_id`
    up to seq `sync_target` through FETCH (and SNAPSHOT): the same repair path, without ACKs."""

    def __init__(self, engine, config, out, leader_id, sync_target=None):
        self.engine = engine
        self.storage = engine.storage
        self.config = config
        self.out = out
        self.node_id = config.node_id
        self.leader_id = leader_id
        self.sync_target = sync_target
        self.leader_commit = 0
        self.leader_last = 0
        self.last_heard = None
        self.matched = engine.applied_seq   # a new primary vouches for nothing yet
        self._last_ack = (None, 0.0)    # (matched, time) of the last ACK sent
        self._round_acked = 0           # the last HEARTBEAT round answered, in this primary's term
        self._outstanding = None        # (kind, body, sent at, (snapshot seq, cursor)) awaiting its reply
        self._snapshot_seq = None       # the snapshot being installed (0: a new one was asked for)
        self.crash_after_chunks = None  # test-only (docs/TESTING.md): die after installing this many chunks
        self._refusal_logged = False
        self.counters = {"fetches": 0, "snapshots_installed": 0, "truncations": 0}
        if self.storage.restoring:
            log.info("a snapshot install was interrupted: it starts over once the primary is known")
        self._handlers = {"CHANGE": self._on_log_batch, "ENTRIES": self._on_log_batch,
                          "HEARTBEAT": self._on_heartbeat, "NEED_SNAPSHOT": self._on_need_snapshot,
                          "SNAPSHOT_CHUNK": self._on_snapshot_chunk}
        if sync_target is not None:
            self._handlers.pop("CHANGE")
            self._handlers.pop("HEARTBEAT")

    @property
    def installing(self):
        return self._snapshot_seq is not None or bool(self.storage.restoring)

    @property
    def synced(self):
        """A candidate holds the adopted log: up to the voter's last seq, and nothing else."""
        return (not self.installing and self.matched >= self.sync_target
                and self.engine.last_seq == self.sync_target)

    def start(self, now):
        """Begin following: a candidate asks for the adopted log at once."""
        if self.sync_target is not None:
            self.leader_last = self.sync_target
            self._fetch(self.matched + 1, now)

    # ------------------------------------------------------------ messages from the primary

    def on_message(self, msg, now):
        """A message from the primary (or the voter a candidate adopts from). The node has already
        adopted any higher term. Returns True when it came from whom this follows, in this term."""
        handler = self._handlers.get(msg.command)
        fields = msg.fields
        if handler is None or fields[0] != self.storage.term or fields[1] != self.leader_id or not self.leader_id:
            return False
        leader_last = fields[-1] if msg.command in ("CHANGE", "ENTRIES", "HEARTBEAT") else None
        if leader_last is not None and leader_last < self.engine.applied_seq and not self.storage.restoring:
            # Its log is shorter than what we applied: it lost its data dir. Following it would
            # silently diverge (a node with a new data dir neither bootstraps nor stands; see
            # docs/REPLICATION.md), so refuse loudly.
            if not self._refusal_logged:    # once per primary and term: it repeats with every message
                self._refusal_logged = True
                log.error("node %d's log ends at seq %d, below our applied seq %d: it lost data, or entries "
                          "were acknowledged without a majority (write_quorum below a majority); not following",
                          self.leader_id, leader_last, self.engine.applied_seq)
            return False
        self.last_heard = now
        handler(msg.command, fields, now)
        return True

    def _ack(self, now):
        if self.installing or self.sync_target is not None:
            return  # our log is being replaced, or we adopt a voter's log: nothing to report
        self._last_ack = (self.matched, now)
        st = self.storage
        self.out.send_to(self.leader_id, protocol.encode_peer(
            "ACK", self.node_id, st.term, self.matched, self._round_acked, not (st.learner or st.restoring)))

    def on_leader_progress(self, leader_last, leader_commit, now):
        """The primary's last and commit seq from its role query or reply (DEALER), not the stream."""
        if self.sync_target is not None or self.installing:
            return
        self.leader_commit = max(self.leader_commit, min(leader_commit, leader_last))
        self.leader_last = max(self.leader_last, leader_last)
        self._apply_commit()
        self._catch_up(now)

    def _on_heartbeat(self, command, fields, now):
        _term, _leader, round_, commit_seq, leader_last = fields
        self.leader_commit, self.leader_last = commit_seq, leader_last
        self._apply_commit()
        # Answer a new read round, news about our log, or a periodic beat; under load the primary
        # sends a HEARTBEAT for nearly every commit, and repeating the same ACK would only cost CPU.
        last_matched, last_time = self._last_ack
        if (round_ != self._round_acked or self.matched != last_matched
                or now - last_time >= self.config.heartbeat_interval):
            self._round_acked = max(self._round_acked, round_)
            self._ack(now)
        self._catch_up(now)

    def _on_log_batch(self, command, fields, now):
        _term, _leader, prev_seq, prev_term, entries, commit_seq, leader_last = fields
        if command == "ENTRIES" and self._outstanding is not None and self._outstanding[0] == "fetch":
            self._outstanding = None
        self.leader_commit, self.leader_last = commit_seq, leader_last
        if self.installing:
            return  # the snapshot comes first
        plan = plan_append(self.engine, prev_seq, prev_term, entries)
        if plan.kind == "fetch":
            if plan.truncate:
                # Our entry at prev_seq is not the primary's: drop every unverified entry at once
                # and ask again from the last verified one.
                self._truncate(self.matched + 1)
                self._fetch(self.matched + 1, now, force=True)
            else:
                self._fetch(plan.seq, now, force=command == "ENTRIES")
        else:
            if plan.truncate:
                self._truncate(plan.seq)
            if plan.kind == "append":
                self.engine.append_entries(plan.seq, plan.entries)   # written at the iteration's commit
            self.matched = max(self.matched, prev_seq + len(entries))
            self._ack(now)
        self._apply_commit()
        self._catch_up(now)

    def _truncate(self, seq):
        if seq > self.engine.last_seq:
            return
        log.info("dropping our entries from seq %d: they are not in primary %d's log", seq, self.leader_id)
        self.engine.truncate_from(seq)
        self.counters["truncations"] += 1

    def _apply_commit(self):
        if self.installing:
            return
        target = min(self.leader_commit, self.matched)
        if target > self.engine.applied_seq:
            self.engine.apply_committed(target)

    def _catch_up(self, now):
        """Behind the primary, or holding entries it has not vouched for: ask from the last match."""
        if not self.installing and (self.matched < self.leader_last or self.matched < self.engine.last_seq):
            self._fetch(self.matched + 1, now)

    def _fetch(self, from_seq, now, force=False):
        if self._outstanding is not None and not force:
            return
        body = protocol.encode_peer("FETCH", self.node_id, self.storage.term, from_seq)
        self.counters["fetches"] += 1
        self._send_request("fetch", body, now, None)

    # ------------------------------------------------------------ snapshots

    def _on_need_snapshot(self, command, fields, now):
        if self._snapshot_seq is not None:
            return  # already installing (a duplicate FETCH answered twice)
        log.info("primary %d no longer holds our next entry (its log starts at %d): installing a snapshot",
                 self.leader_id, fields[2])
        self._request_snapshot(0, None, now)

    def _request_snapshot(self, snapshot_seq, cursor, now):
        self._snapshot_seq = snapshot_seq
        body = protocol.encode_peer("SNAPSHOT", self.node_id, self.storage.term, snapshot_seq, cursor)
        self._send_request("snapshot", body, now, (snapshot_seq, cursor))

    def _send_request(self, kind, body, now, key):
        """Send a FETCH or SNAPSHOT and remember it until answered. Not connected to the primary
        (just started, or it is down): the next tick sends it, instead of waiting FETCH_RETRY."""
        sent = self.out.send_to(self.leader_id, body)
        self._outstanding = (kind, body, now if sent else float("-inf"), key)

    def _on_snapshot_chunk(self, command, fields, now):
        _term, _leader, asked_seq, asked_cursor, snapshot_seq, snapshot_term, items, next_cursor = fields
        out = self._outstanding
        if out is None or out[0] != "snapshot" or out[3] != (asked_seq, asked_cursor):
            return  # answers a request that is no longer outstanding (late, or a duplicate)
        self._outstanding = None
        # A chunk from the start: a new snapshot, or one replacing ours after it expired on the primary.
        first = snapshot_seq != asked_seq or asked_cursor is None
        if first:
            self.matched = 0    # the log is about to be emptied
        self.engine.install_snapshot_chunk(snapshot_seq, snapshot_term, items, first, next_cursor is None)
        if self.crash_after_chunks is not None:
            self.crash_after_chunks -= 1
            if self.crash_after_chunks <= 0 and next_cursor is not None:
                log.warning("test switch: exiting in the middle of a snapshot install")
                faults.crash()
        if next_cursor is not None:
            self._request_snapshot(snapshot_seq, next_cursor, now)
            return
        log.info("snapshot at seq %d installed", snapshot_seq)
        self.counters["snapshots_installed"] += 1
        self._snapshot_seq = None
        self.matched = snapshot_seq
        self._fetch(snapshot_seq + 1, now)

    # ------------------------------------------------------------ timers

    def status(self, now):
        alive = self.last_heard is not None and now - self.last_heard < self.config.election_interval
        role = "primary" if self.sync_target is None else "voter (adopting its log)"
        return [{"node_id": self.leader_id, "role": role, "alive": alive, "last_seq": self.leader_last,
                 "commit_seq": self.leader_commit}] if self.leader_id else []

    def tick(self, now):
        """Resend a FETCH or SNAPSHOT that got no answer (the primary may have restarted); start a
        snapshot install over when one was interrupted."""
        out = self._outstanding
        if out is not None and now - out[2] >= FETCH_RETRY:
            self._send_request(out[0], out[1], now, out[3])
        if self.storage.restoring and self._snapshot_seq is None and self.leader_id:
            self._request_snapshot(0, None, now)
