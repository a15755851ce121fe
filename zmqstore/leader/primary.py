"""The primary's side of the log stream (docs/REPLICATION.md): it publishes the entries it staged,
counts what a quorum holds, runs the heartbeat rounds that confirm linearizable reads, and judges
whether a majority still answers. What it sends goes into the iteration's Sends."""
from .. import errors, protocol


class Primary:
    """The primary's side: publishes the log and counts acknowledgements (LogServer answers FETCH
    and SNAPSHOT)."""

    def __init__(self, engine, config, membership, out, now):
        self.engine = engine
        self.storage = engine.storage
        self.config = config
        self.out = out
        self.node_id = config.node_id
        peers = membership.peers
        self.match = {pid: 0 for pid in peers}          # highest seq each peer holds durably
        self.voter = {pid: False for pid in peers}      # learners' copies do not count toward commit
        self.acked_round = {pid: 0 for pid in peers}    # highest heartbeat round each answered
        self.last_heard = {pid: now for pid in peers}   # a grace period from the start of the term
        self.majority = membership.majority
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
