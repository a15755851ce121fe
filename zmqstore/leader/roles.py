"""Leader mode inside a node: who this node is (primary, secondary, candidate), the moves between
those roles, and the peer messages that drive them (docs/REPLICATION.md).

`election.py` judges (views, losing the primary, standing, counting votes), `primary.py`,
`secondary.py` and `log_server.py` replicate; this module carries out their decisions: persisting terms and
votes (synced at once: nothing decided in an iteration leaves before the iteration's commit, see
sends.py), switching roles, and saying when this node stopped leading (`take_deposed`: the replies
it holds must then fail). What it sends goes into `out`, the iteration's Sends. The node loop calls
`tick`, `on_request` (ROUTER) and `on_message` (SUB and DEALER replies).
"""
import logging

from .. import protocol
from .election import Election
from ..faults import NONE
from .log_server import LogServer
from .primary import Primary, new_round_counts
from .read_index import Asks
from .secondary import Secondary
from .standing import Standing

log = logging.getLogger(__name__)

PROMOTE_LAG = 1000      # a learner within this many entries of the commit seq is made a voter


class Roles(Standing):
    def __init__(self, out, engine, config, now, draw, faults=NONE):
        self.out = out                  # the iteration's Sends (sends.py)
        self.engine = engine
        self.storage = engine.storage
        self.config = config
        self.node_id = config.node_id
        self.membership = engine.membership
        self.peers = self.membership.peers
        self.majority = self.membership.majority
        self.contacts = self._contacts()
        self._leader_was_member = False   # the primary we follow was a member when we began (or became one)
        self.removed = False            # a committed membership left this node out: it serves nothing
        self.promote_lag = PROMOTE_LAG
        self.round_trips = {}           # peer id -> metrics.Histogram, kept across this node's terms as primary
        self.round_counts = new_round_counts()     # likewise (Primary.start_round)
        engine.peer_floor = self._peer_floor
        self.election = Election(config, self.membership, now, draw)
        self.log_server = LogServer(engine, config, out)
        self.read_asks = Asks(engine.storage)     # ReadIndex reads this node serves (read_index.py)
        self.primary = None
        self.secondary = None
        self.bootstrapping = False
        self.genesis = 0                # restored from a backup: the term of its first election (standing.py)
        self.deposed = False            # stopped leading since take_deposed() last asked
        self.faults = faults            # test-only switches (faults.py)
        self._learner_target = None     # (primary, its commit seq when first heard): a learner's goal
        self._peer_handlers = {"ROLE": self._on_role_query, "VOTE_REQUEST": self._on_vote_request,
                               "ACK": self._on_ack, "FETCH": self._on_fetch, "SNAPSHOT": self._on_snapshot,
                               "READ_INDEX": self._on_read_index}
        self._choose_role(now)
        engine.on_membership = self._membership_changed
        if self.membership.seq:
            flags = engine.flags_membership
            differences = self.membership.differs_from(flags) if flags.peers else []
            if differences:
                log.warning("the flags' peers differ from the cluster's membership (entry %d), which is followed: %s",
                            self.membership.seq, "; ".join(differences))

    def _membership_changed(self, membership):
        """The membership in use changed (an entry appended or applied, a truncation, a snapshot):
        quorums, views and the primary's bookkeeping follow it at once (docs/MEMBERSHIP.md)."""
        old = self.membership
        self.membership, self.peers, self.majority = membership, membership.peers, membership.majority
        self.contacts = self._contacts()
        if self.secondary is not None and self.secondary.leader_id in membership.peers:
            self._leader_was_member = True
        self.election.set_membership(membership)
        if self.primary is not None:
            self.primary.set_membership(membership)
        if membership.seq != old.seq:   # (also called when the committed one changes: not news here)
            log.info("membership of entry %d: voters %s, learners %s (was entry %d)", membership.seq,
                     sorted(membership.voters), sorted(set(membership.members) - membership.voters), old.seq)

    def _contacts(self) -> tuple:
        """Whom this node connects to and admits: the members; those of the committed membership
        until the next one commits (a member being removed still hears its removal commit, and its
        followers still hear it hand over); and the peers its flags name (the operator's word: a
        node that was down while the members it knows left finds the cluster through them). Only
        members vote, count, and move this node's term, but the stream of a primary (CHANGE,
        HEARTBEAT) is followed from whoever leads, as in Raft."""
        membership = self.membership
        extra, seen = [], set(membership.members) | {self.node_id}
        for p in (*self.engine.committed_members, *self.config.peers):
            if p.node_id not in seen:
                seen.add(p.node_id)
                extra.append(p)
        return membership.peer_list + tuple(extra) if extra else membership.peer_list

    def _choose_role(self, now):
        cfg, st = self.config, self.storage
        if not cfg.majority_quorum and cfg.write_quorum < self.majority:
            log.warning("write_quorum = %d is below a majority (%d): a write is acknowledged before a majority "
                        "holds it, so a failover can lose acknowledged writes", cfg.write_quorum, self.majority)
        # Empty log, at most term 1: a new cluster (a bootstrap interrupted by a crash goes on).
        fresh = st.term <= 1 and st.last_seq == 0
        if fresh and cfg.role == "primary":
            log.info("empty data dir and --role primary: bootstrapping as primary of term 1 once a majority "
                     "of the cluster reports empty data dirs")
            self.bootstrapping = True
        elif not fresh and cfg.role is not None:
            log.info("data dir has state (term %d, last_seq %d): --role %s is ignored; following the "
                     "cluster's primary", st.term, st.last_seq, cfg.role)
        # Restored from a backup (backup.py): the genesis election, until a primary is known. A
        # restart part-way through it goes on with it (as a learner, or as its candidate).
        self.genesis = st.genesis_term if (st.genesis_term and not st.leader_id and st.term <= st.genesis_term
                                           and (st.learner or st.voted_for == self.node_id)) else 0
        if self.genesis:
            log.info("restored from a backup at seq %d (term %d): electing the restored cluster's first primary in "
                     "term %d with the members at the same restore point", st.last_seq, st.last_term, self.genesis)
        elif st.learner and not self.bootstrapping:
            log.info("new data dir: a learner (no votes, no candidacy) until it has caught up with a primary, "
                     "or has voted in the bootstrap of a new cluster")
        # The primary recorded for our term may be this node, before a restart: it leads no more.
        leader = st.leader_id if st.leader_id != self.node_id else 0
        self._follow(st.term, leader, now)

    # ------------------------------------------------------------ role changes

    def _follow(self, term, leader_id, now, sync_target=None):
        """Become a secondary of leader_id (0: not known yet) in term; with sync_target, a candidate
        that won and adopts voter leader_id's log first."""
        if self.primary is not None:
            self.engine.flush()   # what this iteration staged belongs to our term, not the next one
            self.primary = None
            self.deposed = True
        syncing = sync_target is not None
        peer = self.peers.get(leader_id)
        self.engine.follow(term, 0 if syncing else leader_id, None if syncing or peer is None else peer.address,
                           role="candidate" if syncing else "secondary")
        self.secondary = Secondary(self.engine, self.config, self.out, leader_id, sync_target, self.read_asks)
        self._leader_was_member = leader_id in self.peers
        self._learner_target = None
        if self.faults.crash_in_snapshot:
            self.secondary.crash_after_chunks = self.faults.crash_in_snapshot
        if leader_id and not syncing:
            self.bootstrapping = False     # someone leads: nothing left to bootstrap
            self.genesis = 0
            log.info("following primary %d in term %d", leader_id, term)
            self.election.heard_leader(now)
        self.secondary.start(now)

    def _lead(self, term, now):
        self.bootstrapping = False
        self.genesis = 0
        self.engine.become_primary(term)
        self.secondary = None
        self.primary = Primary(self.engine, self.config, self.membership, self.out, now, self.round_trips,
                               self.round_counts)
        self.election.heard_leader(now)
        log.info("serving as primary of term %d (log at seq %d)", term, self.engine.last_seq)

    def take_deposed(self) -> bool:
        """Whether this node stopped leading since the last call: no reply it held as primary may
        then say its request succeeded (modes.LeaderMode fails them)."""
        deposed, self.deposed = self.deposed, False
        return deposed

    def observe(self, term, leader_id, now):
        """The term of any peer message. A higher one is adopted: this node becomes a secondary, of
        leader_id when the message names the primary of that term."""
        st = self.storage
        if leader_id == self.node_id:
            leader_id = 0   # a peer's memory of an earlier run of this node
        if term > st.term:
            if self.bootstrapping and (term > 1 or self.election.candidacy is None):
                self.bootstrapping = False
                log.warning("--role primary ignored: the cluster is already in term %d (another node bootstraps "
                            "it, or this empty data dir was lost or replaced); joining as a learner", term)
            log.info("term %d seen (ours: %d): %s", term, st.term,
                     f"following primary {leader_id}" if leader_id else "no primary known in it yet")
            if self.election.candidacy is not None:
                self.election.finish(now, won=False)
            self._follow(term, leader_id, now)
        elif term == st.term and leader_id and self.primary is None and (
                self.election.candidacy is not None or self.secondary.leader_id != leader_id):
            if self.election.candidacy is not None:
                self.election.finish(now, won=False)   # another candidate won this term without us
            self._follow(term, leader_id, now)     # learnt who leads the term we voted in

    # ------------------------------------------------------------ timers

    def note_loop(self, now):
        """Every loop iteration: a pause of this process restarts every "last heard" clock."""
        if self.election.note_loop(now) and self.primary is not None:
            self.primary.pardon(now)

    def tick(self, now):
        """Every election_interval / 5: heartbeat, judge the primary, stand, send role queries."""
        st = self.storage
        if self._check_removed(now):
            return
        if self.primary is not None:
            self.primary.heartbeat()
            self._maybe_promote()
            if not self.primary.has_majority(now) and not self.faults.deposed_reads:
                log.warning("primary of term %d heard from no majority within %.2f s: stepping down",
                            st.term, self.config.election_interval)
                self._follow(st.term, 0, now)
        elif self.election.candidacy is not None:
            if self.election.expired(now):
                self.election.finish(now, won=False)
                self._follow(st.term, 0, now)
            else:
                self.secondary.tick(now)
        else:
            self.secondary.tick(now)
            self._check_learner()
            if self.bootstrapping:
                self._try_bootstrap(now)
            elif self.genesis:
                self._try_genesis(now)
            self._maybe_stand(now)
        body = protocol.encode_peer("ROLE", *self._role_fields(now))
        for peer in self.contacts:      # the members, and whoever else may know the way to them
            self.out.send_to(peer.node_id, body)

    def _heard_leader(self, now):
        """Word from our primary. Once the membership this node uses, committed and applied here,
        has left it out, it is handing over (it steps down at its next tick): treat it as lost
        now, so the lowest remaining voter stands without waiting out election_interval."""
        membership = self.membership
        if (self._leader_was_member and self.secondary.leader_id not in membership.members
                and membership.seq <= self.engine.applied_seq):
            self.election.leader_gone(now)
        else:
            self.election.heard_leader(now)

    def _check_removed(self, now) -> bool:
        """Whether a committed membership left this node out: a primary hands over (it steps down,
        and the lowest remaining voter stands); any node then stops serving and talking to the peers
        (docs/MEMBERSHIP.md)."""
        removed_by = self.engine.removed_by
        if removed_by is None:
            if self.removed:
                self.removed = False
                log.info("a member again (membership of entry %d)", self.membership.seq)
            return False
        if not self.removed:
            self.removed = True
            log.warning("removed from the cluster by entry %d: serving no requests and no longer taking part; "
                        "stop this node (or add it again and restart it with --join)", removed_by)
            if self.primary is not None:
                self._follow(self.storage.term, 0, now)
            if self.election.candidacy is not None:
                self.election.finish(now, won=False)
        self.engine.role = "removed"
        return True

    def _maybe_promote(self):
        """The primary makes a learner a voter once it holds the log up to within promote_lag entries of
        the commit seq, durably, with a data dir that has caught up (its ACKs say it votes)."""
        primary, engine = self.primary, self.engine
        learners = [nid for nid, m in self.membership.peers.items() if not m.voter]
        if not learners or not engine.membership_settled():
            return
        for nid in learners:
            if primary.voter.get(nid) and primary.match.get(nid, 0) + self.promote_lag >= engine.commit_seq:
                seq = engine.append_membership(self.membership.promoting(nid))
                log.info("promoting learner %d to voter (it holds seq %d, commit seq %d): entry %d", nid,
                         primary.match[nid], engine.commit_seq, seq)
                return

    def _peer_floor(self):
        """The lowest seq the node must keep while short of disk (Engine._maybe_trim): a primary,
        what a member it hears lacks (members down take a snapshot when they return); another
        role, what any peer lacks as it last said, heard lately or not. A secondary that becomes
        primary must bring the others up to date from its log: a new primary serves no snapshot
        before its term's first entry commits (log_server.py), which may need those others."""
        if self.primary is not None:
            return self.primary.needed_from()
        return min((v.last_seq + 1 for v in self.election.views.values()), default=None)

    def _role_fields(self, now):
        st, cfg = self.storage, self.config
        return (self.node_id, st.term, self.engine.role, st.leader_id, st.last_seq, st.last_term,
                self.engine.commit_seq, self._lost_primary(now), not (st.learner or st.restoring), cfg.address,
                f"{cfg.host}:{cfg.pub_port}", self.engine.space_alarm, protocol.peer_versions())

    def _lost_primary(self, now):
        if self.primary is not None:
            return False
        if self.election.candidacy is not None:
            return True
        return self.election.leader_lost(now)

    def _check_learner(self):
        """A learner becomes a voter once it has applied what the primary had committed when the
        learner first heard it (a fixed target: under a steady load the commit seq keeps moving)."""
        st, sec = self.storage, self.secondary
        if not st.learner or not sec.leader_id or sec.last_heard is None or sec.sync_target is not None:
            return
        if self._learner_target is None:
            self._learner_target = (sec.leader_id, sec.leader_commit)
            self._learner_since, self._learner_warned = sec.last_heard, False
        leader, target = self._learner_target
        if 1 + len(self.election.peers_heard(sec.last_heard)) < self.majority:
            return      # hear a majority first: a newer term than our primary's would show there
        if sec.last_heard - self._learner_since > 5.0 and not self._learner_warned:
            self._learner_warned = True
            log.warning("still a learner 5 s after first hearing primary %d: applied %d, target %d, matched %d, "
                        "primary's commit %d, installing %s", leader, st.applied_seq, target, sec.matched,
                        sec.leader_commit, sec.installing)
        if leader == sec.leader_id and not sec.installing and st.applied_seq >= target:
            self.engine.become_voter()
            log.info("caught up with primary %d (applied seq %d, its commit seq was %d): now a voter",
                     sec.leader_id, st.applied_seq, target)

    # ------------------------------------------------------------ messages on the ROUTER

    def on_request(self, msg, envelope, now):
        if self.removed:
            return
        handler = self._peer_handlers.get(msg.command)
        if handler is None:
            log.debug("ignoring %s on the ROUTER", msg.command)
            return
        handler(msg.fields, envelope, now)

    def _on_role_query(self, fields, envelope, now):
        self._on_role(fields, now)
        self.out.reply_peer(envelope, protocol.encode_peer("ROLE_REPLY", *self._role_fields(now)))

    def _on_role(self, fields, now):
        view = self.election.on_role(fields, now)
        sender = fields[0]
        if view is None:
            self._maybe_catch_up(sender, fields[6], now)
            return      # not a member here: only its commit seq is of use
        self.observe(view.term, sender if view.role == "primary" else view.leader_id, now)
        if view.term == self.storage.term:
            if self.primary is not None:
                self.primary.heard(sender, now)
            elif view.role == "primary" and sender == self.secondary.leader_id:
                self._heard_leader(now)
                # Also over DEALER: if the change stream (PUB) is cut, this is how a secondary
                # learns it is behind, and FETCH repairs it.
                self.secondary.on_leader_progress(view.last_seq, view.commit_seq, now)
        self._maybe_catch_up(sender, view.commit_seq, now)
        if self.primary is None and self.election.candidacy is None:
            self._maybe_stand(now)

    def _maybe_catch_up(self, sender, commit_seq, now):
        """A contact (member or not) reports entries committed beyond ours while no primary is
        heard: take them from it. The membership changes among them may name a primary this node
        does not know yet, and cannot reach or admit until it does (docs/MEMBERSHIP.md)."""
        sec = self.secondary
        if (sec is not None and self.primary is None and self.election.candidacy is None
                and commit_seq > self.engine.commit_seq and self.election.leader_lost(now)):
            sec.catch_up_committed(sender, commit_seq, now)

    def _from_member(self, node_id) -> bool:
        return node_id in self.peers

    def _on_ack(self, fields, envelope, now):
        if not self._from_member(fields[0]):
            return
        self.observe(fields[1], 0, now)
        if self.primary is not None:
            self.primary.on_ack(fields, now)

    def _on_read_index(self, fields, envelope, now):
        node_id, term, ask = fields
        if not self._from_member(node_id):
            return
        self.observe(term, 0, now)
        if self.primary is not None and term == self.storage.term:
            self.primary.on_read_index(node_id, envelope, ask)

    def _on_fetch(self, fields, envelope, now):
        if self._from_member(fields[0]):
            self.observe(fields[1], 0, now)
        self.log_server.on_fetch(fields, envelope, now)

    def _on_snapshot(self, fields, envelope, now):
        if self._from_member(fields[0]):
            self.observe(fields[1], 0, now)
        self.log_server.on_snapshot(fields, envelope, now)

    # ------------------------------------------------------------ messages on SUB and DEALERs

    def on_message(self, msg, now):
        if self.removed:
            return
        command, fields = msg.command, msg.fields
        if command == "ROLE_REPLY":
            self._on_role(fields, now)
        elif command == "VOTE":
            term, node_id, granted, last_seq, last_term, _first_seq = fields
            if not self._from_member(node_id):
                return
            self.observe(term, 0, now)
            if self.election.on_vote(term, node_id, granted, last_seq, last_term, now):
                self._won(now)
        elif command in ("CHANGE", "HEARTBEAT", "ENTRIES", "NEED_SNAPSHOT", "SNAPSHOT_CHUNK", "READ_INDEX_REPLY"):
            # CHANGE and HEARTBEAT come only from the primary of their term (followed whether or not it
            # is a member here yet); the others may come from a voter.
            stream = command in ("CHANGE", "HEARTBEAT")
            sec = self.secondary
            if sec is not None and sec.from_source(msg):
                self._on_committed_entries(msg, now)
                return
            if not (stream or self._from_member(fields[1]) or (sec is not None and fields[1] == sec.leader_id)):
                return
            self.observe(fields[0], fields[1] if stream else 0, now)
            sec = self.secondary
            if sec is None or not sec.on_message(msg, now):
                return
            if sec.sync_target is None:
                self._heard_leader(now)
                self._check_learner()
            else:
                self.election.extend(now)
                self._check_synced(now)
        else:
            log.debug("ignoring %s on a peer socket", command)

    def _on_committed_entries(self, msg, now):
        """An answer from a contact this node takes committed entries from (member or not). Its
        term fences them: a contact in a later term may hold entries committed in that term, which
        the primary of ours lacks, and our ACKs to that primary must never cover them; so a higher
        term is adopted first (a new Secondary: the next role query asks again), as Raft adopts the
        term of any message. Only a node that hears no primary asks a contact at all."""
        if msg.fields[0] > self.storage.term:
            self.observe(msg.fields[0], 0, now)
            return
        self.secondary.on_message(msg, now)

    # ------------------------------------------------------------ status

    def status(self, now):
        side = self.primary or self.secondary
        peers = side.status(now)
        for row in peers:
            peer = self.peers.get(row["node_id"])
            row["address"] = peer.address if peer else None
        quorum = self.primary.write_quorum if self.primary else self.config.write_quorum
        return {"peers": peers, "write_quorum": quorum, **self.engine.follower_counters, **self.log_server.counters,
                **self.round_counts, **self.election.status(now, self.storage)}

    def housekeeping(self, now):
        self.log_server.housekeeping(now)

    def close(self):
        self.log_server.close()
