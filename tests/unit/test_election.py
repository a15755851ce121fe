"""Failure detection, standing and vote counting (election.py) with a fake clock."""
import random
from types import SimpleNamespace

from zmqstore import config
from zmqstore.leader.election import OPEN_FIELD_AFTER, Election
from zmqstore.leader.membership import Membership

PEERS = [{"node_id": n, "host": "127.0.0.1", "port": 9000 + n} for n in (1, 2, 3)]


def make(node_id, size=3):
    peers = [p for p in PEERS[:size] if p["node_id"] != node_id]
    cfg = config.resolve(None, {"node_id": node_id, "port": 9100 + node_id, "data_dir": "/tmp/unused", "peers": peers})
    return Election(cfg, Membership.from_config(cfg), now=0.0, draw=random.Random(1).random)


def role(node_id, term=1, role_="secondary", leader_id=1, lost=False, voter=True, last_seq=10):
    return (node_id, term, role_, leader_id, last_seq, term, last_seq, lost, voter, "h:1", "h:2", False, [2, 2])


def test_loss_is_judged_after_election_interval():
    e = make(2)
    e.heard_leader(1.0)
    assert not e.leader_lost(1.4)
    assert e.leader_lost(1.5)
    assert not e.leader_lost(1.4)      # no primary known: judged by time all the same
    e.voted(1.6)
    assert not e.leader_lost(2.0)      # a candidate we voted for gets its interval
    assert e.leader_lost(2.1)


def test_stands_only_when_a_majority_lost_the_primary_and_it_is_the_lowest():
    e2, e3 = make(2), make(3)
    for e in (e2, e3):
        e.on_role(role(3 if e is e2 else 2, lost=False), 1.0)
    assert not e2.should_stand(1.0, term=1)       # node 3 still hears the primary: no majority lost
    e2.on_role(role(3, lost=True), 1.1)
    e3.on_role(role(2, lost=True), 1.1)
    assert e2.should_stand(1.1, term=1)           # lowest alive voter
    assert not e3.should_stand(1.1, term=1)       # node 2 is lower and alive
    assert not e2.should_stand(1.1 + e2.interval, term=1)   # node 3's view went stale: not alive


def test_learners_neither_count_nor_stand_before_others():
    e3 = make(3)
    e3.on_role(role(2, lost=True, voter=False), 1.0)
    assert not e3.should_stand(1.0, term=1)       # node 2 is a learner: its view does not count
    e3.on_role(role(1, lost=True, voter=True), 1.0)
    assert not e3.should_stand(1.0, term=1)       # node 1 (a voter, lower) is the one to stand


def test_any_voter_may_stand_after_a_long_time_without_a_primary():
    e3 = make(3)
    e3.on_role(role(2, lost=True), 0.0)
    e3.leader_lost(0.0)               # leaderless from 0.0
    late = OPEN_FIELD_AFTER * e3.interval + e3.interval   # past any jitter
    e3.on_role(role(2, lost=True), late)
    assert e3.should_stand(late, term=1)


def test_a_pause_of_this_node_is_not_taken_for_silence_of_others():
    e = make(2)
    e.note_loop(0.1)
    e.heard_leader(1.0)
    e.on_role(role(3), 1.0)
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.05):
        e.note_loop(t)                              # the loop runs every 0.1 s at most
    assert e.counters["pauses_detected"] == 0
    e.note_loop(4.0)                                # 3 s without running (SIGSTOP, GC)
    assert not e.leader_lost(4.0) and e.alive(3, 4.0)
    assert e.counters["pauses_detected"] == 1


def test_votes_a_majority_wins_and_the_best_log_is_adopted():
    e = make(1)
    e.on_role(role(2, term=3), 0.0)
    term = e.stand(1.0, term=3, last_term=3, last_seq=10, reason="test")
    assert term == 4 and e.candidacy.votes.keys() == {1}
    assert not e.on_vote(4, 2, False, 12, 3, 1.01)            # a refusal
    assert not e.on_vote(3, 2, True, 12, 3, 1.01)             # another term
    assert e.on_vote(4, 2, True, 12, 3, 1.02)                 # a majority of 3
    assert e.best_log() == (2, 12, 3)                          # node 2's log is longer
    e.finish(1.05, won=True)
    assert e.latest["outcome"] == "won" and e.latest["votes"] == [1, 2] and e.latest["duration_ms"] == 50.0


def test_own_log_wins_a_tie_and_a_higher_last_term_beats_a_longer_log():
    e = make(1)
    e.stand(0.0, term=1, last_term=2, last_seq=10, reason="test")
    e.on_vote(2, 2, True, 10, 2, 0.1)
    assert e.best_log()[0] == 1
    e = make(1)
    e.stand(0.0, term=1, last_term=2, last_seq=10, reason="test")
    e.on_vote(2, 3, True, 50, 1, 0.1)
    assert e.best_log()[0] == 1


def test_a_failed_candidacy_backs_off():
    e = make(1)
    e.on_role(role(2, lost=True), 0.0)
    e.stand(0.0, term=1, last_term=1, last_seq=1, reason="test")
    assert e.expired(e.interval)
    e.finish(e.interval, won=False)
    assert e.latest["outcome"] == "failed" and e.candidacy is None
    assert e.interval <= e.backoff_until <= 2 * e.interval          # a random back-off of 0-1 interval
    before = e.backoff_until - 1e-6
    e.on_role(role(2, lost=True), before)
    assert before < e.interval or not e.should_stand(before, term=2)   # not while backing off
    e.on_role(role(2, lost=True), e.backoff_until)
    assert e.should_stand(e.backoff_until, term=2)                    # then it may stand again


def test_vote_granting_rules():
    st = SimpleNamespace(term=3, voted_for=0, learner=0, restoring=0, leader_id=1, genesis_term=0)
    assert Election.grants(4, 2, st, lost_primary=True)
    assert not Election.grants(4, 2, st, lost_primary=False)    # still hears its primary
    st.leader_id = 0
    assert Election.grants(4, 2, st, lost_primary=False)        # knows no primary: none to lose
    st.leader_id = 1
    assert not Election.grants(2, 2, st, lost_primary=True)     # an older term
    st.voted_for = 3
    assert not Election.grants(3, 2, st, lost_primary=True)     # voted for another in this term
    assert Election.grants(3, 3, st, lost_primary=True)         # the same vote, asked again
    st.restoring = 1
    assert not Election.grants(5, 2, st, lost_primary=True)     # nor does a node installing a snapshot
    st.restoring, st.learner = 0, 1
    assert not Election.grants(5, 2, st, lost_primary=True)     # a learner does not vote ...
    fresh = SimpleNamespace(term=0, voted_for=0, learner=1, restoring=0, last_seq=0, leader_id=0, genesis_term=0)
    assert Election.grants(1, 2, fresh, lost_primary=True)      # ... except to bootstrap a new cluster
    fresh.last_seq = 1
    assert not Election.grants(1, 2, fresh, lost_primary=True)  # not once it holds anything
    # A data dir restored from a backup at term 7: a learner that votes in term 8 only, the genesis
    # election of the restored cluster, and in no later term (that cluster went on without it).
    restored = SimpleNamespace(term=7, voted_for=0, learner=1, restoring=0, last_seq=500, leader_id=0,
                               genesis_term=8)
    assert Election.grants(8, 2, restored, lost_primary=True)
    assert not Election.grants(9, 2, restored, lost_primary=True)
    assert not Election.grants(1, 2, restored, lost_primary=True)


def test_the_membership_value_gives_the_peers_and_the_majority():
    for size, majority in ((1, 1), (2, 2), (3, 2), (4, 3), (5, 3)):
        peers = [{"node_id": n, "host": "127.0.0.1", "port": 9000 + 10 * n} for n in range(2, size + 1)]
        cfg = config.resolve(None, {"node_id": 1, "port": 9100, "data_dir": "/tmp/unused", "peers": peers})
        m = Membership.from_config(cfg)
        assert (sorted(m.peers), sorted(m.voters), m.majority) == (list(range(2, size + 1)), list(range(1, size + 1)),
                                                                    majority)
