"""Leader-mode failure detection, terms and votes (docs/REPLICATION.md, "Roles, elections and failover").

No I/O and no storage writes: the node gives this the role queries, votes and the time it receives,
and `draw` (a callable returning a float in [0, 1): the node's random numbers, seeded in the
simulations); this keeps the views of the peers and decides when the primary is lost, when to
stand, whether a vote is won and whose log to adopt. The node persists terms and votes and sends
the messages.
"""
import logging
from typing import NamedTuple

log = logging.getLogger(__name__)

OPEN_FIELD_AFTER = 3      # election intervals without a primary after which any voter may stand


class PeerView:
    """What a peer last said about itself in a ROLE or ROLE_REPLY."""

    __slots__ = ("heard", "term", "role", "leader_id", "last_seq", "last_term", "commit_seq", "leader_lost",
                 "voter", "address", "pub_address", "space_alarm")

    def __init__(self):
        self.heard = None
        self.term = self.leader_id = self.last_seq = self.last_term = self.commit_seq = 0
        self.role = "unknown"
        self.leader_lost = False
        self.voter = self.space_alarm = False
        self.address = self.pub_address = ""


class Vote(NamedTuple):
    last_term: int
    last_seq: int


class Candidacy:
    __slots__ = ("term", "started", "deadline", "votes", "reason", "won_at")

    def __init__(self, term, now, deadline, reason):
        self.term, self.started, self.deadline, self.reason = term, now, deadline, reason
        self.votes = {}         # node id -> Vote
        self.won_at = None


class Election:
    def __init__(self, config, membership, now, draw):
        self.node_id = config.node_id
        self.draw = draw
        self.interval = config.election_interval
        self.majority = membership.majority
        self.voters = membership.voters
        self.views = {node_id: PeerView() for node_id in membership.peers}
        self.leader_heard = now         # the last word from the primary of our term (start-up counts)
        self.leaderless_since = now     # since when no primary is known or heard (None: one is)
        self._open_field_jitter = draw() * self.interval
        self.backoff_until = 0.0
        self.candidacy = None
        self.last_loop = now
        self.latest = None              # the latest election this node stood in, for STATUS
        self.counters = {"elections_started": 0, "elections_won": 0, "pauses_detected": 0}

    def set_membership(self, membership):
        """Views of the members only (a new member's starts empty); majorities of the voters."""
        self.majority, self.voters = membership.majority, membership.voters
        self.views = {nid: self.views.get(nid) or PeerView() for nid in membership.peers}
        c = self.candidacy
        if c is not None:
            c.votes = {nid: vote for nid, vote in c.votes.items() if nid in self.voters or nid == self.node_id}

    # ------------------------------------------------------------ hearing

    def note_loop(self, now):
        """Called as each loop iteration's poll returns, before any message is handled. A long gap means this node was not running (a
        GC pause, SIGSTOP, an overloaded machine): it heard nothing because it did not listen, so
        every "last heard" restarts now instead of being judged against its own pause. Returns
        True when it found such a gap."""
        paused = now - self.last_loop > self.interval / 2
        if paused:
            self.counters["pauses_detected"] += 1
            log.warning("the loop did not run for %.0f ms: not judging peers by that gap",
                        (now - self.last_loop) * 1000)
            self.leader_heard = now
            for view in self.views.values():
                if view.heard is not None:
                    view.heard = now
            if self.candidacy is not None:
                self.candidacy.deadline = max(self.candidacy.deadline, now + self.interval)
        self.last_loop = now
        return paused

    def on_role(self, fields, now):
        """A ROLE or ROLE_REPLY: update the sender's view. Returns it (None: not a configured peer)."""
        node_id = fields[0]
        view = self.views.get(node_id)
        if view is None:
            return None
        (_, view.term, view.role, view.leader_id, view.last_seq, view.last_term, view.commit_seq,
         view.leader_lost, view.voter, view.address, view.pub_address, view.space_alarm, _versions) = fields
        view.heard = now
        return view

    def heard_leader(self, now):
        self.leader_heard = now
        self.leaderless_since = None

    def leader_gone(self, now):
        """Our primary is leaving the cluster (a committed membership left it out): lost from now."""
        self.leader_heard = min(self.leader_heard, now - self.interval)
        if self.leaderless_since is None:
            self.leaderless_since = now

    def alive(self, node_id, now):
        view = self.views[node_id]
        return view.heard is not None and now - view.heard < self.interval

    def peers_heard(self, now):
        return [pid for pid in self.views if self.alive(pid, now)]

    def short_of_space(self, now):
        """The peers heard within election_interval whose space alarm is on (space.py). Asked for
        every write a primary takes: the usual answer, none, is found without sorting."""
        if not any(v.space_alarm for v in self.views.values()):
            return []
        return [pid for pid, v in sorted(self.views.items()) if v.space_alarm and self.alive(pid, now)]

    def voted(self, now):
        """We just voted for a candidate: give it election_interval to win before judging again
        (Raft resets its election timer on a grant for the same reason)."""
        self.leader_heard = max(self.leader_heard, now)

    def leader_lost(self, now):
        """A secondary's judgement: no primary (or candidate we voted for) heard for
        election_interval, whether or not it knows which node leads."""
        lost = now - self.leader_heard >= self.interval
        if lost and self.leaderless_since is None:
            self.leaderless_since = now
        return lost

    # ------------------------------------------------------------ standing

    def should_stand(self, now, term):
        """Whether this voter, having lost the primary, starts an election now (docs/REPLICATION.md:
        a majority reports the primary lost, and this is the lowest alive voter, or nobody has led
        for a while)."""
        if self.candidacy is not None or now < self.backoff_until:
            return False
        alive = [pid for pid in self.views if pid in self.voters and self.alive(pid, now) and self.views[pid].voter]
        lost = 1 + sum(1 for pid in alive if self.views[pid].leader_lost)
        if lost < self.majority:
            return False
        if min([self.node_id, *alive]) == self.node_id:
            return True
        since = self.leaderless_since
        return since is not None and now - since >= OPEN_FIELD_AFTER * self.interval + self._open_field_jitter

    def stand(self, now, term, last_term, last_seq, reason, new_term=None):
        """Start a candidacy; returns its term: new_term, or one above every term seen. The node
        persists the term and its own vote before any VOTE_REQUEST leaves."""
        if new_term is None:
            new_term = max([term, *(v.term for v in self.views.values())]) + 1
        self.candidacy = Candidacy(new_term, now, now + self.interval, reason)
        self.candidacy.votes[self.node_id] = Vote(last_term, last_seq)
        self.counters["elections_started"] += 1
        self.latest = {"term": new_term, "candidate": self.node_id, "reason": reason, "votes": [self.node_id],
                       "outcome": "voting", "duration_ms": None}
        return new_term

    def on_vote(self, term, node_id, granted, last_seq, last_term, now):
        """A VOTE for our candidacy. Returns True when it makes a majority (the election is won)."""
        c = self.candidacy
        if c is None or term != c.term or c.won_at is not None or node_id not in self.voters:
            return False
        if not granted:
            return False
        c.votes[node_id] = Vote(last_term, last_seq)
        self.latest["votes"] = sorted(c.votes)
        if not self.has_majority():
            return False
        c.won_at = now
        return True

    def has_majority(self) -> bool:
        """Whether the candidacy's votes make a majority of the voters. A candidate that is not a
        voter itself (its log holds a primary's removal of itself, appended but not committed)
        does not count its own: it stands so that the entry can commit (Raft thesis 4.2.2), and its
        log still counts in `best_log`."""
        c = self.candidacy
        return sum(1 for nid in c.votes if nid in self.voters) >= self.majority

    def best_log(self):
        """(node id, last seq, last term) of the most up-to-date log among the voters and ours; ours
        on a tie. Any log at least as up to date as every log of a majority holds every committed
        entry (Raft's Leader Completeness argument), whether or not its holder votes."""
        c = self.candidacy
        node_id, vote = max(c.votes.items(), key=lambda item: (item[1].last_term, item[1].last_seq,
                                                               item[0] == self.node_id))
        return node_id, vote.last_seq, vote.last_term

    def expired(self, now):
        c = self.candidacy
        return c is not None and now >= c.deadline

    def extend(self, now):
        """The adopted log is arriving: keep the candidacy alive while it makes progress."""
        if self.candidacy is not None:
            self.candidacy.deadline = now + self.interval

    def finish(self, now, won):
        """End the candidacy: won (now serving) or failed (back off before standing again)."""
        c = self.candidacy
        self.candidacy = None
        if c is None:
            return
        self.latest["outcome"] = "won" if won else "failed"
        self.latest["duration_ms"] = round((now - c.started) * 1000, 1)
        if won:
            self.counters["elections_won"] += 1
            self.leaderless_since = None
            log.info("won the election for term %d in %.0f ms (votes from %s)", c.term,
                     (now - c.started) * 1000, sorted(c.votes))
        else:
            self.backoff_until = now + self.draw() * self.interval
            log.info("election for term %d failed after %.0f ms with votes from %s; backing off",
                     c.term, (now - c.started) * 1000, sorted(c.votes))

    # ------------------------------------------------------------ voting for others

    @staticmethod
    def grants(term, candidate_id, storage, lost_primary):
        """Whether to vote for candidate_id in term (the node persists the vote before replying). A
        learner (except for the bootstrap of a new cluster: term 1, an empty log), or a node part-way
        through a snapshot install (its log and data are emptied, so it no longer shows entries it
        once acknowledged), does not vote. A node that hears a primary does not vote either."""
        if storage.restoring or term < storage.term:
            return False
        if storage.learner and not (term == 1 and storage.last_seq == 0) and term != storage.genesis_term:
            return False    # a learner votes only to bootstrap a new cluster: term 1 with nothing held, or
                            # the genesis election of a cluster restored from a backup (leader/standing.py)
        if term == storage.term and storage.voted_for not in (0, candidate_id):
            return False
        return lost_primary or not storage.leader_id    # knowing no primary, there is none to lose

    def status(self, now, storage):
        return {"voted_for": storage.voted_for, "voter": not (storage.learner or storage.restoring),
                "latest_election": self.latest,
                "views": {pid: {"role": v.role, "term": v.term, "alive": self.alive(pid, now),
                                "leader_lost": v.leader_lost, "space_alarm": v.space_alarm}
                          for pid, v in self.views.items()},
                **self.counters}
