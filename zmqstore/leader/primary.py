"""The primary's side of the log stream (docs/REPLICATION.md): it publishes the entries it staged,
counts what a quorum holds, runs the heartbeat rounds that confirm linearizable reads, and judges
whether a majority still answers. What it sends goes into the iteration's Sends."""
from bisect import bisect_right
from collections import deque
from math import inf

from .. import errors, protocol
from ..metrics import Histogram
from .read_index import Answers

SENT_KEPT = 4096        # publish times kept for the round-trip figures (the oldest half goes past it)
# A commit move waits this long for the next CHANGE to carry it before a HEARTBEAT announces it
# alone: one client's sequential writes then wake each secondary once per write, not twice.
COMMIT_NOTICE_DELAY = 0.005
# A read round asks only as many voters as it needs, in turn among those that answered within
# RECENT_ANSWERS heartbeat intervals; one not confirmed within ROUND_WIDEN_AFTER seconds is asked
# of every secondary (docs/REPLICATION.md, "Reads").
RECENT_ANSWERS = 2.5
ROUND_WIDEN_AFTER = 0.01


def new_round_counts() -> dict:
    """The read-round counters (status, metrics): rounds started, and those asked of every secondary
    after their targets were silent. Roles keeps one across its terms as primary."""
    return {"read_rounds": 0, "read_rounds_widened": 0}


class Primary:
    """The primary's side: publishes the log and counts acknowledgements (LogServer answers FETCH
    and SNAPSHOT)."""

    def __init__(self, engine, config, membership, out, now, round_trips=None, round_counts=None):
        self.engine = engine
        self.storage = engine.storage
        self.config = config
        self.out = out
        self.node_id = config.node_id
        self.match = {}                 # peer id -> highest seq it holds durably
        self.voter = {}                 # peer id -> its data dir votes (an ACK's flag): else its copy does not count
        self.acked_round = {}           # peer id -> highest heartbeat round it answered
        self.last_heard = {}            # peer id -> when it last answered (a grace period from the start)
        self.caught_up_at = {}          # peer id -> when it last held the whole log (its lag in seconds)
        # peer id -> Histogram: entries published -> its ACK of them (kept by Roles across terms)
        self.round_trips = round_trips if round_trips is not None else {}
        self._sent = []                 # (last seq, prev seq, when published), ascending
        self._latest = now              # the latest time this was told (the grace period of a new member)
        self.round = 0                  # the latest heartbeat round started
        self._published_commit = -1
        self._notice_due = inf          # when a commit move no message carried yet is announced alone
        self._targeted = deque()        # (round, when started) of targeted rounds maybe not confirmed yet
        self.round_counts = round_counts if round_counts is not None else new_round_counts()
        self._term_from = None          # (term, a seq whose entry is of that term): _of_this_term
        self.read_answers = Answers()   # secondaries' READ_INDEX asks waiting for their round
        self.round_asked = False        # one of them asks for a new round
        self.counters = {}
        self.set_membership(membership)

    def set_membership(self, membership):
        """Count the members' copies, answers and rounds, and the voters' only toward quorums (a
        learner's copy never counts; neither does this node's once the membership leaves it out)."""
        for pid in membership.peers:
            if pid not in self.match:
                self.match[pid], self.voter[pid], self.acked_round[pid] = 0, False, 0
                self.last_heard[pid] = self.caught_up_at[pid] = self._latest
                self.round_trips.setdefault(pid, Histogram())
        for table in (self.match, self.voter, self.acked_round, self.last_heard, self.caught_up_at):
            for pid in [pid for pid in table if pid not in membership.peers]:
                del table[pid]
        self.voters = membership.voters
        self.own_counts = self.node_id in membership.voters
        self.majority = membership.majority
        cfg = self.config
        self.write_quorum = membership.majority if cfg.majority_quorum else cfg.write_quorum

    # ------------------------------------------------------------ the stream

    def publish_entries(self, prev_seq, prev_term, entries, now):
        """Stream entries staged in this iteration. Sent before our own flush, so the secondaries'
        fsyncs overlap ours; advance_commit() never counts an entry we do not hold durably."""
        last_seq = prev_seq + len(entries)
        sent = self._sent
        if len(sent) >= SENT_KEPT:
            del sent[:SENT_KEPT // 2]
        sent.append((last_seq, prev_seq, now))
        self.out.publish_early(protocol.encode_peer(
            "CHANGE", self.storage.term, self.node_id, prev_seq, prev_term, entries, self.engine.commit_seq,
            last_seq))
        self._published_commit = self.engine.commit_seq
        self._notice_due = inf

    def heartbeat(self):
        """Publish a HEARTBEAT to every secondary: the commit seq, and the latest read round (which
        so reaches the voters a targeted round did not ask)."""
        self.out.publish(self._heartbeat_body())
        self._published_commit = self.engine.commit_seq
        self._notice_due = inf
        self._targeted.clear()          # every secondary is asked for the latest round

    def start_round(self, now):
        """Start a read-confirmation round: its HEARTBEAT goes to as many voters as a majority
        needs beside this node, in turn among those that answered lately, each under its topic
        (docs/PROTOCOL.md, HEARTBEAT); to every secondary when too few answered lately."""
        self.round += 1
        self.round_counts["read_rounds"] += 1
        targets = self._round_targets(now)
        if not targets:
            self.heartbeat()
            return
        body = self._heartbeat_body()
        for pid in targets:
            self.out.publish(body, protocol.stream_topic(pid))
        self._targeted.append((self.round, now))

    def _round_targets(self, now) -> list:
        """The voters a new round asks (empty: ask every secondary)."""
        need = self.majority - self.own_counts
        window = RECENT_ANSWERS * self.config.heartbeat_interval
        recent = [pid for pid in sorted(self.last_heard) if pid in self.voters and now - self.last_heard[pid] < window]
        if need <= 0 or len(recent) < need:
            return []
        first = self.round % len(recent)
        return [recent[(first + i) % len(recent)] for i in range(need)]

    def widen_round(self, now) -> float:
        """Once a targeted round has gone unconfirmed for ROUND_WIDEN_AFTER, ask every secondary
        for the latest round (confirming it confirms every earlier one); returns when the loop must
        come back to check (inf: no targeted round waits)."""
        targeted = self._targeted
        if not targeted:
            return inf
        confirmed = self.confirmed_round()
        while targeted and targeted[0][0] <= confirmed:
            targeted.popleft()
        if not targeted:
            return inf
        due = targeted[0][1] + ROUND_WIDEN_AFTER
        if now < due:
            return due
        self.round_counts["read_rounds_widened"] += 1
        self.heartbeat()
        return inf

    def _heartbeat_body(self) -> bytes:
        st = self.storage
        return protocol.encode_peer("HEARTBEAT", st.term, self.node_id, self.round, self.engine.commit_seq,
                                    st.last_seq)

    def announce_commit(self, now) -> float:
        """Publish a commit move that no CHANGE carried within COMMIT_NOTICE_DELAY; returns when the
        loop must come back to do it (inf: nothing waits). The clients' replies do not wait for this:
        only the secondaries' applying (their stale reads and watches) does."""
        if self.engine.commit_seq != self._published_commit:
            if self._notice_due == inf:
                self._notice_due = now + COMMIT_NOTICE_DELAY
            elif now >= self._notice_due:
                self.heartbeat()
        return self._notice_due

    def advance_commit(self):
        """Commit the highest seq that write_quorum nodes hold, this one included (entries published
        before our own flush may be on secondaries first), if it is of this term. The engine
        applies it to data after the replies that waited for it have left (Engine.apply_to_commit)."""
        own = self.storage.last_seq
        voter, voters = self.voter, self.voters
        values = sorted([*((own,) if self.own_counts else ()),
                         *(seq for pid, seq in self.match.items() if voter[pid] and pid in voters)], reverse=True)
        quorum = self.write_quorum
        if len(values) < quorum:
            return
        candidate = min(values[quorum - 1], own)
        if candidate > self.engine.commit_seq and self._of_this_term(candidate):
            self.engine.commit_seq = candidate

    def _of_this_term(self, seq) -> bool:
        """Whether the entry at seq is of this term. Terms never fall along a log, and none in a
        primary's log is above its own term, so once an entry is found to be of this term every
        later one is: the log is read (an entry decoded) only until then, not once per commit."""
        term = self.storage.term
        first = self._term_from
        if first is not None and first[0] == term and seq >= first[1]:
            return True
        if self.storage.term_at(seq) != term:
            return False
        self._term_from = (term, seq)
        return True

    def confirmed_round(self):
        """The latest round a majority (this node included) has answered in this term."""
        voters = self.voters
        values = sorted([*((self.round,) if self.own_counts else ()),
                         *(r for pid, r in self.acked_round.items() if pid in voters)], reverse=True)
        return values[self.majority - 1] if len(values) >= self.majority else 0

    # ------------------------------------------------------------ ReadIndex (read_index.py)

    def on_read_index(self, node_id, envelope, ask):
        """A member's READ_INDEX in this term (or this node's own, envelope None: reads it held as
        a secondary): answered once a round started after it is confirmed."""
        self.read_answers.add(node_id, envelope, ask, self.round + 1)
        self.round_asked = True

    def answer_read_indexes(self, own_asks=None):
        answers = self.read_answers
        if answers:
            engine = self.engine
            answers.answer(self.out, self.storage.term, self.node_id, engine.commit_seq, self.confirmed_round(),
                           engine.commit_seq >= engine.term_first_seq, own_asks)

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
        self._latest = now
        window, voters = self.config.election_interval, self.voters
        heard = sum(1 for pid, t in self.last_heard.items() if pid in voters and now - t < window)
        return heard + self.own_counts >= self.majority

    # ------------------------------------------------------------ acknowledgements

    def on_ack(self, fields, now):
        node_id, term, last_seq, round_, voter = fields
        if term != self.storage.term or node_id not in self.match:
            return
        if last_seq > self.engine.last_seq:
            # no copy can hold entries this primary never sent (a forged or broken ACK would count toward commit)
            raise errors.BadArgument(f"ACK from node {node_id} claims seq {last_seq}; this primary's log ends at "
                                     f"{self.engine.last_seq}")
        self.last_heard[node_id] = self._latest = now
        if last_seq > self.match[node_id]:
            self._round_trip(node_id, last_seq, now)
        if last_seq >= self.engine.last_seq:
            self.caught_up_at[node_id] = now
        self.match[node_id] = last_seq          # its latest report: it may have lost data and restarted
        self.voter[node_id] = voter
        if self.acked_round[node_id] < round_ <= self.round:   # a round from another run means nothing
            self.acked_round[node_id] = round_
        self.advance_commit()

    def needed_from(self):
        """The lowest seq a member heard within election_interval (of the latest time this was
        told) lacks, None when there is none: what a primary short of disk keeps (Engine._maybe_trim)."""
        window, now = self.config.election_interval, self._latest
        lacking = [seq + 1 for pid, seq in self.match.items() if now - self.last_heard[pid] < window]
        return min(lacking) if lacking else None

    def _round_trip(self, node_id, last_seq, now):
        """The time from publishing the latest entries this ACK covers to the ACK. One longer than
        election_interval is a peer catching up after it was away (it would report how long), not
        a round trip: the lag figures show those."""
        sent = self._sent
        last = bisect_right(sent, (last_seq, inf)) - 1     # the latest publish this ACK covers
        if last >= 0 and sent[last][0] > self.match[node_id]:
            seconds = now - sent[last][2]
            if seconds <= self.config.election_interval:
                self.round_trips[node_id].observe(seconds)

    def lag_seconds(self, pid, now) -> float:
        """How long the peer has lacked entries: since the first publish it does not hold (0.0 while
        it holds the whole log; since it last did, when that publish is no longer remembered)."""
        held = self.match[pid]
        if held >= self.engine.last_seq:
            return 0.0
        sent = self._sent
        first = bisect_right(sent, (held, inf))
        since = sent[first][2] if first < len(sent) and (first or sent[0][1] <= held) else self.caught_up_at[pid]
        return round(max(0.0, now - since), 3)

    def status(self, now):
        window = self.config.election_interval
        return [{"node_id": pid, "role": "secondary" if pid in self.voters else "learner", "last_seq": self.match[pid],
                 "alive": now - self.last_heard[pid] < window, "voter": self.voter[pid],
                 "lag_seconds": self.lag_seconds(pid, now), "last_heard": round(now - self.last_heard[pid], 3)}
                for pid in sorted(self.match)]
