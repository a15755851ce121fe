"""A secondary's side of the log stream (docs/REPLICATION.md): it matches each batch of entries
against its log (`plan_append`), stages and acknowledges them, repairs gaps with FETCH, installs
snapshots, and is how a winning candidate adopts a voter's log. What it sends goes into the
iteration's Sends; what it stages is written by the iteration's one commit."""
import logging
from typing import NamedTuple

from .. import faults, protocol
from .read_index import Asks

FETCH_RETRY = 1.0                 # seconds before an unanswered FETCH or SNAPSHOT is sent again
SOURCE_PATIENCE = 2.0             # seconds a contact may leave a catch-up request unanswered ...
SOURCE_BACKOFF = 5.0              # ... before it is left alone for this long (also after a refusal)

log = logging.getLogger("zmqstore.leader")


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
    up to seq `sync_target` through FETCH (and SNAPSHOT): the same repair path, without ACKs.

    While no primary is heard, committed entries can also be taken from any contact
    (`catch_up_committed`): a committed entry is the same in every log, so whoever reports it
    committed can supply it. This is how a member whose log missed the membership changes that
    name the current primary (it was down or cut off while they committed) learns who the
    members are, and so can reach that primary at all (docs/MEMBERSHIP.md)."""

    def __init__(self, engine, config, out, leader_id, sync_target=None, asks=None):
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
        self._outstanding = None        # (kind, body, sent at, (snapshot seq, cursor), to) awaiting its reply
        self._source = None             # the contact committed entries are being taken from (not the primary)
        self._source_since = 0.0        # when its latest answer (or the catch-up) began
        self._shunned = {}              # contact -> until when it is not asked again
        self._snapshot_seq = None       # the snapshot being installed (0: a new one was asked for)
        self.crash_after_chunks = None  # test-only (docs/TESTING.md): die after installing this many chunks
        self._refusal_logged = False
        self.counters = engine.follower_counters    # the engine's: they count across terms and primaries
        if self.storage.restoring:
            log.info("a snapshot install was interrupted: it starts over once the primary is known")
        self._handlers = {"CHANGE": self._on_log_batch, "ENTRIES": self._on_log_batch,
                          "HEARTBEAT": self._on_heartbeat, "NEED_SNAPSHOT": self._on_need_snapshot,
                          "SNAPSHOT_CHUNK": self._on_snapshot_chunk, "READ_INDEX_REPLY": self._on_read_index_reply}
        # ReadIndex reads served here (read_index.py): the node's, kept across primaries and terms
        self.read_index = asks if asks is not None else Asks(self.storage)
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
        if handler is None:
            return False
        if self.from_source(msg):
            _FROM_SOURCE[msg.command](self, msg.command, fields, now)
            return False    # not the primary: nothing about it was heard
        if fields[0] != self.storage.term or fields[1] != self.leader_id or not self.leader_id:
            return False
        if msg.command == "ENTRIES" and not self._awaits("fetch", self.leader_id):
            # Only an answer to our FETCH to it: one sent to this node while it was a contact,
            # before it won this term, holds its log as it was then, not the primary's word.
            return False
        leader_last = fields[-1] if msg.command in ("CHANGE", "ENTRIES", "HEARTBEAT") else None
        if (leader_last is not None and max(leader_last, self.leader_last) < self.engine.applied_seq
                and not self.storage.restoring):
            # Its log is shorter than what we applied: it lost its data dir. Following it would
            # silently diverge (a node with a new data dir neither bootstraps nor stands; see
            # docs/REPLICATION.md), so refuse loudly. Judged on the most it has said in this term:
            # a reply (ROUTER) built before its flush can arrive after stream messages (PUB, another
            # connection) that announced later entries, and a primary's log never shrinks in its term.
            if not self._refusal_logged:    # once per primary and term: it repeats with every message
                self._refusal_logged = True
                log.error("node %d's log ends at seq %d, below our applied seq %d: it lost data, or entries "
                          "were acknowledged without a majority (write_quorum below a majority); not following",
                          self.leader_id, leader_last, self.engine.applied_seq)
            return False
        self.last_heard = now
        if self._source is not None and self._snapshot_seq is None:
            self._end_catch_up()    # the primary is heard: it is the one to follow
        handler(msg.command, fields, now)
        return True

    def from_source(self, msg) -> bool:
        """Whether `msg` answers a catch-up request to a contact (committed entries: no term or
        primary is learnt from it)."""
        return self._source is not None and msg.fields[1] == self._source and msg.command in _FROM_SOURCE

    def _awaits(self, kind, node_id) -> bool:
        out = self._outstanding
        return out is not None and out[0] == kind and out[4] == node_id

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
        if self._source is not None:
            self._end_catch_up()    # the primary is heard: it is the one to ask
        self.leader_commit = max(self.leader_commit, min(leader_commit, leader_last))
        self.leader_last = max(self.leader_last, leader_last)
        self._apply_commit()
        self._catch_up(now)

    def _heard_progress(self, commit_seq, leader_last):
        # max: a stale reply (see on_message) must not move either back; neither shrinks in a term
        self.leader_commit = max(self.leader_commit, commit_seq)
        self.leader_last = max(self.leader_last, leader_last)

    def _on_heartbeat(self, command, fields, now):
        _term, _leader, round_, commit_seq, leader_last = fields
        self._heard_progress(commit_seq, leader_last)
        self._apply_commit()
        # Answer a new read round, news about our log, or a periodic beat; under load the primary
        # may send a HEARTBEAT for every commit, and repeating the same ACK would only cost CPU.
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
        if self.installing:
            self._heard_progress(commit_seq, leader_last)
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
                self.engine.append_entries(plan.seq, plan.entries, commit_seq)   # written at the iteration's commit
            self.matched = max(self.matched, prev_seq + len(entries))
            self._ack(now)
        self._heard_progress(commit_seq, leader_last)   # not before append_entries checked the entries
        self._apply_commit()
        self._catch_up(now)

    # ------------------------------------------------------------ ReadIndex reads (read_index.py)

    @property
    def serves_reads(self) -> bool:
        """Whether a ReadIndex read can be served here: a primary followed, no log being replaced."""
        return bool(self.leader_id) and self.sync_target is None and not self.installing

    def send_read_index(self, now):
        """At the end of an iteration in which reads arrived: one ask for all of them."""
        asks = self.read_index
        ask = asks.take_ask(now, self.config.heartbeat_interval)
        if ask is not None and not self.out.request(
                self.leader_id, protocol.encode_peer("READ_INDEX", self.node_id, self.storage.term, ask)):
            asks.unsent()

    def _on_read_index_reply(self, command, fields, now):
        _term, _leader, ask, commit_seq = fields
        if not self.read_index.on_reply(ask, commit_seq):
            return
        # the primary's word, like a HEARTBEAT's: apply up to it, fetching what is missing
        self.leader_commit = max(self.leader_commit, commit_seq)
        self.leader_last = max(self.leader_last, commit_seq)
        self._apply_commit()
        self._catch_up(now)

    def _truncate(self, seq, source=None):
        if seq > self.engine.last_seq:
            return
        log.info("dropping our entries from seq %d: they are not in %s log", seq,
                 f"primary {self.leader_id}'s" if source is None else f"the committed (node {source}'s)")
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

    def _fetch(self, from_seq, now, force=False, to=None):
        if self._outstanding is not None and not force:
            return
        body = protocol.encode_peer("FETCH", self.node_id, self.storage.term, from_seq)
        self.counters["fetches"] += 1
        self._send_request("fetch", body, now, None, to)

    # ------------------------------------------------------------ committed entries from a contact

    def catch_up_committed(self, node_id, commit_seq, now):
        """Contact node_id reports commit seq `commit_seq`, beyond what this node holds, while no
        primary is heard (the node's decision): take the committed entries from it. Entries past
        its commit seq are not taken: they may be leftovers that a later primary replaces."""
        if (self.sync_target is not None or self._snapshot_seq is not None or self._outstanding is not None
                or node_id == self.leader_id or self._shunned.get(node_id, 0.0) > now
                or commit_seq <= max(self.matched, self.engine.applied_seq)):
            return
        if self._source != node_id:
            log.info("no primary heard, and node %d reports entries committed up to seq %d (we hold %d): "
                     "taking them from it", node_id, commit_seq, self.matched)
            self.counters["committed_catch_ups"] += 1
        self._source, self._source_since = node_id, now
        if self.storage.restoring:
            # A snapshot install was interrupted (a crash, or a new term): our log and data are
            # gone already, so this contact's snapshot can only help.
            self._request_snapshot(0, None, now, node_id)
        else:
            self._fetch(self.matched + 1, now, to=node_id)

    def _end_catch_up(self):
        if self._outstanding is not None and self._outstanding[4] == self._source:
            self._outstanding = None
            self._snapshot_seq = None
        self._source = None

    def _shun(self, node_id, now, reason, seconds=SOURCE_BACKOFF):
        """Ask this contact nothing for `seconds`: it does not answer, or cannot help."""
        log.info("not taking committed entries from node %d for %.0f s: %s", node_id, seconds, reason)
        self._shunned[node_id] = now + seconds
        self._end_catch_up()
    def _on_committed_entries(self, command, fields, now):
        _term, source, prev_seq, prev_term, entries, commit_seq, _last = fields
        out = self._outstanding
        if out is None or out[0] != "fetch" or out[4] != source or self.installing:
            return
        self._outstanding = None
        entries = entries[:max(0, commit_seq - prev_seq)]     # only what it knows is committed
        if not entries:
            self._source = None
            return
        self._source_since = now
        plan = plan_append(self.engine, prev_seq, prev_term, entries)
        if plan.kind == "fetch":
            # A gap (its log starts after ours ends), or our entry at prev_seq is not the committed
            # one: everything we hold past what we know to be committed is a leftover.
            if plan.truncate and prev_seq <= self.matched:
                # It disagrees with an entry we know to be committed: its log is not the cluster's
                # (a lost data dir, or write_quorum below a majority). Never taken from.
                log.error("node %d's entry at seq %d differs from ours, which is committed: not taking entries "
                          "from it", source, prev_seq)
                self._shun(source, now, "its log differs from the committed one", seconds=3600.0)
                return
            if plan.truncate:
                self._truncate(self.matched + 1, source)
            self._fetch(self.matched + 1 if plan.truncate else plan.seq, now, force=True, to=source)
            return
        if plan.truncate:
            self._truncate(plan.seq, source)
        end = prev_seq + len(entries)
        if plan.kind == "append":
            self.engine.append_entries(plan.seq, plan.entries, end)
        self.matched = max(self.matched, end)
        self.leader_commit = max(self.leader_commit, end)
        self._apply_commit()
        if end < commit_seq:
            self._fetch(end + 1, now, to=source)
        else:
            self._source = None

    # ------------------------------------------------------------ snapshots

    def _on_need_snapshot(self, command, fields, now):
        sender = fields[1]
        if self._snapshot_seq is not None:
            return  # already installing (a duplicate FETCH answered twice)
        log.info("%s no longer holds our next entry (its log starts at %d): installing a snapshot",
                 f"primary {sender}" if sender == self.leader_id else f"node {sender}", fields[2])
        self._request_snapshot(0, None, now, sender)

    def _request_snapshot(self, snapshot_seq, cursor, now, to=None):
        self._snapshot_seq = snapshot_seq
        body = protocol.encode_peer("SNAPSHOT", self.node_id, self.storage.term, snapshot_seq, cursor)
        self._send_request("snapshot", body, now, (snapshot_seq, cursor), to)

    def _send_request(self, kind, body, now, key, to=None):
        """Send a FETCH or SNAPSHOT (to the primary unless `to` says otherwise) and remember it until
        answered. Not connected to it (just started, or it is down): the next tick sends it again,
        instead of waiting FETCH_RETRY."""
        to = self.leader_id if to is None else to
        sent = self.out.request(to, body)
        self._outstanding = (kind, body, now if sent else float("-inf"), key, to)

    def _on_snapshot_chunk(self, command, fields, now):
        _term, sender, asked_seq, asked_cursor, snapshot_seq, snapshot_term, items, next_cursor, members = fields
        out = self._outstanding
        if out is None or out[0] != "snapshot" or out[3] != (asked_seq, asked_cursor) or out[4] != sender:
            return  # answers a request that is no longer outstanding (late, or a duplicate)
        first = snapshot_seq != asked_seq or asked_cursor is None
        if first and sender == self._source and snapshot_seq < self.engine.last_seq and not self.storage.restoring:
            # Not from the primary: it may lack entries of ours that a primary counted in a commit,
            # and installing it would drop them. Left to the primary (or a more current contact).
            self._shun(sender, now, f"its snapshot ends at seq {snapshot_seq}, before our log does "
                       f"({self.engine.last_seq})")
            return
        if sender == self._source:
            self._source_since = now
        # The membership at the snapshot's seq comes with its last chunk; checked before anything changes.
        members = protocol.decode_members(members) if members is not None and next_cursor is None else None
        self._outstanding = None
        # A chunk from the start: a new snapshot, or one replacing ours after it expired on the primary.
        if first:
            self.matched = 0    # the log is about to be emptied
        self.engine.install_snapshot_chunk(snapshot_seq, snapshot_term, items, first, next_cursor is None, members)
        if self.crash_after_chunks is not None:
            self.crash_after_chunks -= 1
            if self.crash_after_chunks <= 0 and next_cursor is not None:
                log.warning("test switch: exiting in the middle of a snapshot install")
                faults.crash()
        if next_cursor is not None:
            self._request_snapshot(snapshot_seq, next_cursor, now, sender)
            return
        log.info("snapshot at seq %d installed", snapshot_seq)
        self.counters["snapshots_installed"] += 1
        self._snapshot_seq = None
        self.matched = snapshot_seq
        if sender == self._source:
            self.leader_commit = max(self.leader_commit, snapshot_seq)
        self._fetch(snapshot_seq + 1, now, to=sender)

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
        if out is not None and out[4] == self._source and now - self._source_since >= SOURCE_PATIENCE:
            self._shun(self._source, now, f"no answer for {SOURCE_PATIENCE:.0f} s")
            out = None
        if out is not None and now - out[2] >= FETCH_RETRY:
            self._send_request(out[0], out[1], now, out[3], out[4])
        if self.storage.restoring and self._snapshot_seq is None and self.leader_id:
            self._request_snapshot(0, None, now)


_FROM_SOURCE = {"ENTRIES": Secondary._on_committed_entries, "NEED_SNAPSHOT": Secondary._on_need_snapshot,
                "SNAPSHOT_CHUNK": Secondary._on_snapshot_chunk}
