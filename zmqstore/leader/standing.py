"""Leader mode's elections inside a node, as `Roles` carries them out (docs/REPLICATION.md, "Who
stands, and when" and "Votes"): the bootstrap of a new cluster, standing, winning (and adopting a
voter's log first), and answering others' vote requests. `election.py` judges (views, majorities,
whose log is best); this persists terms and votes before anything leaves and switches roles through
`Roles`, of which it is a part (a mixin: `Roles` holds the state it reads)."""
import logging

from .. import protocol
from .election import Election
from .secondary import Secondary

log = logging.getLogger("zmqstore.leader.roles")


class Standing:
    def _try_bootstrap(self, now):
        """--role primary on an empty data dir: once a majority (this node included) reports empty
        logs, stand for term 1. It is a real election (votes persisted, one per term), so two nodes
        given --role primary by mistake cannot both lead term 1."""
        st = self.storage
        if self.election.candidacy is not None:
            return
        heard = [self.election.views[pid] for pid in self.election.peers_heard(now)]
        if any(v.last_seq or v.term > 1 for v in heard) or st.term > 1 or st.voted_for not in (0, self.node_id):
            self.bootstrapping = False
            log.warning("--role primary ignored: the cluster already has state or another node bootstraps it; "
                        "joining as a learner")
            return
        if 1 + len(heard) >= self.majority and now >= self.election.backoff_until:
            # Always term 1 (again, after a failed attempt: the same vote for ourselves): fresh
            # nodes vote only in term 1, so a later term could never be won.
            log.info("a majority reports empty data dirs: standing for term 1 to bootstrap the cluster")
            self._stand(now, "bootstrapping a new cluster", term=1)

    def _try_genesis(self, now):
        """A data dir restored from a backup (--restore) is a learner holding the backup at its seq,
        in its term T: the restored nodes elect their first primary in term T + 1, their genesis
        election, the only one a restored learner votes or stands in, with one vote like any other.
        The lowest node id among those heard at the same restore point stands once they are a
        majority (one candidate, as in the empty bootstrap), and a candidate that lost stands again
        in the same term. A node that hears a cluster gone past that point is a plain learner.
        Known limit: votes split between two candidates in that term, with the rest of the nodes
        down, wait for those nodes (or for every node to be restored again)."""
        st, election = self.storage, self.election
        if election.candidacy is not None or self.secondary.leader_id:
            return
        if st.term == self.genesis and st.voted_for not in (0, self.node_id):
            return      # its one vote in the genesis term went to another candidate: never a second
        heard = {pid: election.views[pid] for pid in election.peers_heard(now)}
        if st.term > self.genesis or any(v.term > self.genesis or v.last_seq > st.last_seq for v in heard.values()):
            self.genesis = 0
            log.warning("restored from a backup, but the cluster is past its restore point (seq %d, term %d): a "
                        "learner until a primary brings it up to date", st.last_seq, st.term)
            return
        same = [pid for pid, v in heard.items() if v.last_seq == st.last_seq and v.term in (self.genesis - 1,
                                                                                              self.genesis)]
        # A node that stood already stands again (its vote is its own); else the lowest id stands.
        first = st.voted_for == self.node_id or all(self.node_id < pid for pid in same)
        if 1 + len(same) >= self.majority and first and now >= election.backoff_until:
            log.info("a majority holds the same restore point (seq %d): standing for term %d, the restored "
                     "cluster's first", st.last_seq, self.genesis)
            self._stand(now, "electing the restored cluster's first primary", term=self.genesis)

    def _maybe_stand(self, now):
        st, election = self.storage, self.election
        if (self.primary is not None or election.candidacy is not None or st.learner or st.restoring
                or self.bootstrapping or self.genesis or not self._may_vote()
                or not election.leader_lost(now)
                or not election.should_stand(now, st.term)):
            return
        leader = self.secondary.leader_id
        self._stand(now, f"no word from primary {leader} for {(now - election.leader_heard) * 1000:.0f} ms"
                    if leader else "no primary known")

    def _may_vote(self) -> bool:
        """Whether this node votes and may stand: a voter of the membership in use, or of the
        committed one while its removal from it is appended but not committed. That is a primary
        removing itself that lost its place before the removal committed: it stands (without
        counting its own vote) so that the removal can commit and the cluster goes on; otherwise
        the remaining voters, lacking the entry, could wait for its vote for ever (Raft thesis
        4.2.2: servers not in their latest configuration still take part until it commits)."""
        if self.removed:
            return False
        return self.node_id in self.membership.voters or any(
            m.node_id == self.node_id and m.voter for m in self.engine.committed_members)

    def _stand(self, now, reason, term=None):
        st, election = self.storage, self.election
        self.engine.flush()     # an election decision reads the durable log, with what this iteration staged
        term = election.stand(now, st.term, st.last_term, st.last_seq, reason, term)
        # Synced before any request leaves. Standing in the bootstrap makes a founding voter, like
        # voting in it does (a crash before winning must not leave only learners behind).
        founding = self.bootstrapping or (self.genesis and term == self.genesis)
        self.engine.record_vote(term, self.node_id, learner=False if founding else None)
        self.engine.role = "candidate"
        self.secondary = Secondary(self.engine, self.config, self.out, 0, asks=self.read_asks)
        log.info("starting an election for term %d: %s; voters alive: %s", term, reason,
                 sorted([self.node_id, *election.peers_heard(now)]))
        body = protocol.encode_peer("VOTE_REQUEST", term, self.node_id, st.last_seq, st.last_term)
        for peer_id in self.peers:
            self.out.send_to(peer_id, body)
        if election.has_majority():
            self._won(now)

    def _won(self, now):
        term = self.election.candidacy.term
        best, best_last, best_term = self.election.best_log()
        if best == self.node_id:
            self.election.finish(now, won=True)
            self._lead(term, now)
            return
        log.info("won term %d; adopting node %d's log (up to seq %d of term %d) before serving",
                 term, best, best_last, best_term)
        self.election.extend(now)
        self._follow(term, best, now, sync_target=best_last)
        self._check_synced(now)

    def _check_synced(self, now):
        sec = self.secondary
        if sec is not None and sec.sync_target is not None and sec.synced:
            self.election.finish(now, won=True)
            self._lead(self.storage.term, now)

    # ------------------------------------------------------------ voting for others

    def _on_vote_request(self, fields, envelope, now):
        term, candidate, _last_seq, _last_term = fields
        st = self.storage
        if self.primary is None:
            self.engine.flush()     # an election decision reads the durable log, with what this iteration staged
        voters = self.membership.voters
        granted = (candidate in voters and self._may_vote()
                   and Election.grants(term, candidate, st, self._lost_primary(now)))
        if granted:
            if term > st.term:
                if self.election.candidacy is not None:
                    self.election.finish(now, won=False)
                self._follow(term, 0, now)
            # A learner votes only in the bootstrap election of a new cluster (term 1, empty log) or
            # the genesis election of a restored one: it is then a founding member with nothing
            # forgotten, so it votes from now on.
            genesis = bool(st.learner)
            self.engine.record_vote(term, candidate, learner=False if genesis else None)   # synced first
            self.bootstrapping = False                    # another node stands: let it lead
            self.election.voted(now)
            log.info("voted for node %d in term %d", candidate, term)
        else:
            log.info("refused node %d's vote request for term %d (our term %d, voted for %d, %s)", candidate,
                     term, st.term, st.voted_for, "not both voting members" if candidate not in voters or
                     not self._may_vote() else "learner" if st.learner else
                     "primary lost" if self._lost_primary(now) else "primary still heard")
        self.out.reply_peer(envelope, protocol.encode_peer(
            "VOTE", st.term, self.node_id, granted, st.last_seq, st.last_term, st.first_seq))
