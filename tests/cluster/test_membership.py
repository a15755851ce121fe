"""Membership changes with real processes (issue 13, docs/MEMBERSHIP.md): growing under load with
--join, shrinking including the primary, replacing a dead node, a join whose primary dies, and a
removed node that comes back with its old flags. Every acknowledged write survives each change."""
import time

from zmqstore import Retry, errors
from zmqstore.testing.load import Writer
from zmqstore.testing.process import wait_until

from test_failover import FAILOVER_RETRY, assert_all_present, caught_up, status_of


def members_of(node):
    """{node id: voter} as the node reports its membership ({} when it does not answer)."""
    st = status_of(node)
    return {m["node_id"]: m["voter"] for m in st.get("members", [])}


def voters_everywhere(cluster, ids, expected):
    """Every node of `ids` reports exactly `expected` as its voters."""
    return all({n for n, v in members_of(cluster.nodes[i]).items() if v} == set(expected) for i in ids)


def test_grow_from_3_to_5_under_write_load(cluster):
    c = cluster()
    with Writer(c, "g", FAILOVER_RETRY) as w:
        w.wait_for(200)
        for node_id in (4, 5):
            c.add_node(node_id)
            c.start(node_id, wait=False)
            # a learner first, promoted by the primary once it has caught up
            wait_until(lambda: members_of(c.nodes[1]).get(node_id) is True, 20,
                       message=f"node {node_id} promoted to voter")
            w.wait_for(100)
        wait_until(lambda: voters_everywhere(c, range(1, 6), range(1, 6)), 10, message="every node sees 5 voters")
        w.wait_for(200)
    assert w.errors == 0
    for node_id in (4, 5):
        wait_until(lambda: caught_up(c.nodes[node_id], c.nodes[1]), 10, message="caught up")
        assert_all_present(c.nodes[node_id], w.acked)
    log4 = c.nodes[4].log()
    assert "--join: added by entry" in log4 and "caught up with primary 1" in log4
    assert "promoting learner 4 to voter" in c.nodes[1].log()
    # The grown cluster's majority is 3 of 5: with two nodes down it still commits.
    c.nodes[2].kill()
    c.nodes[3].kill()
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after-grow", 1)
        assert db.get("after-grow") == 1


def test_shrink_from_5_to_3_including_the_primary(cluster):
    c = cluster(size=5)
    with Writer(c, "s", FAILOVER_RETRY) as w:
        w.wait_for(200)
        with c.client(retry=FAILOVER_RETRY) as db:
            db.remove_member(5)
            w.wait_for(100)
            started = time.monotonic()
            db.remove_member(1)             # the primary: it commits the change, then hands over
        assert c.wait_primary(10, among=(2, 3, 4)) == 2
        w.wait_for(200)
        handover = time.monotonic() - started
    assert w.errors == 0
    assert handover < 10
    wait_until(lambda: voters_everywhere(c, (2, 3, 4), (2, 3, 4)), 10, message="nodes 2-4 see voters 2-4")
    for node_id in (2, 3, 4):
        wait_until(lambda: caught_up(c.nodes[node_id], c.nodes[2]), 10, message="caught up")
        assert_all_present(c.nodes[node_id], w.acked)
    for node_id in (1, 5):
        assert "removed from the cluster by entry" in c.nodes[node_id].log()
        assert status_of(c.nodes[node_id])["role"] == "removed"
        with c.nodes[node_id].client(retry=Retry(max_tries=1)) as db:
            try:
                db.get("s0", stale=True)
                raise AssertionError("a removed node served a read")
            except errors.NotPrimary as exc:
                assert "removed from the cluster" in str(exc)
    # A majority of the three is two: one more loss is survived.
    c.nodes[4].kill()
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after-shrink", 1)


def test_replace_a_dead_node_by_a_new_id_on_a_new_address(cluster):
    c = cluster()
    with Writer(c, "r", FAILOVER_RETRY) as w:
        w.wait_for(200)
        c.nodes[3].kill()
        w.wait_for(100)                         # two of three still commit
        c.add_node(4)                           # node 4 on 127.0.0.5
        c.start(4, wait=False)
        wait_until(lambda: members_of(c.nodes[1]).get(4) is True, 20, message="node 4 promoted")
        with c.client(retry=FAILOVER_RETRY) as db:
            db.remove_member(3)
        wait_until(lambda: voters_everywhere(c, (1, 2, 4), (1, 2, 4)), 10, message="voters 1, 2, 4")
        w.wait_for(200)
    assert w.errors == 0
    wait_until(lambda: caught_up(c.nodes[4], c.nodes[1]), 10, message="caught up")
    assert_all_present(c.nodes[4], w.acked)
    # Node 4 now counts: with node 2 down too, nodes 1 and 4 still commit.
    c.nodes[2].kill()
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after-replace", 1)


def test_a_join_whose_primary_is_killed_mid_change(cluster):
    c = cluster()
    with Writer(c, "j", FAILOVER_RETRY) as w:
        w.wait_for(200)
        c.add_node(4)
        c.start(4, wait=False)
        # Kill the primary as soon as the learner is in its membership (committed or not).
        wait_until(lambda: 4 in members_of(c.nodes[1]), 20, interval=0.005, message="node 4 added")
        c.nodes[1].kill()
        assert c.wait_primary(10, among=(2, 3)) == 2
        # The new primary finishes the job: node 4 is a member (its join retried if the entry was
        # lost with the primary) and is promoted once caught up.
        wait_until(lambda: members_of(c.nodes[2]).get(4) is True, 30, message="node 4 promoted by node 2")
        w.wait_for(200)
    assert w.errors == 0
    wait_until(lambda: caught_up(c.nodes[4], c.nodes[2]), 10, message="caught up")
    assert_all_present(c.nodes[4], w.acked)
    assert_all_present(c.nodes[2], w.acked)


def test_a_removed_node_restarted_with_its_old_flags_cannot_disturb_the_cluster(cluster):
    c = cluster()
    with c.client(retry=FAILOVER_RETRY) as db:
        for i in range(50):
            db.put(f"k{i}", i)
        db.remove_member(3)
    wait_until(lambda: status_of(c.nodes[3]).get("role") == "removed", 10, message="node 3 removed")
    c.nodes[3].stop()
    term = status_of(c.nodes[1])["term"]
    c.start(3, wait=False)                      # its old --peers and --role flags
    c.nodes[3].wait_ready(15)
    wait_until(lambda: "removed from the cluster by entry" in c.nodes[3].log().split("stopped cleanly")[-1], 10,
               message="the restarted node says it was removed")
    # It stays out: it sends no role queries or votes, and the others would refuse them.
    with c.client(retry=FAILOVER_RETRY) as db:
        for i in range(20):
            db.put(f"after{i}", i)
    time.sleep(4 * 0.5)                         # several election intervals in which it could have stood
    assert status_of(c.nodes[1])["term"] == term and status_of(c.nodes[1])["role"] == "primary"
    assert sorted(members_of(c.nodes[1])) == [1, 2]
    assert status_of(c.nodes[3])["role"] == "removed"


def test_membership_requests_are_checked(cluster):
    c = cluster()
    # With keys (ZMQSTORE_TEST_KEYS) a member is added with its public key, and only so.
    key = {"key": c.keys.public_key(7)} if c.keys is not None else {}
    with c.client(retry=FAILOVER_RETRY) as db:
        members = db.members()
        assert [m["node_id"] for m in members] == [1, 2, 3] and all(m["voter"] for m in members)
        taken = members[1]
        for bad, why in (((2, "127.0.0.9", 9000), "already a member"),
                         ((7, taken["host"], taken["port"]), "already used by node 2"),
                         ((7, "127.0.0.9", 9000, 9000), "three distinct TCP ports")):
            try:
                db.add_member(*bad, **key)
                raise AssertionError(f"{bad} was accepted")
            except errors.BadArgument as exc:
                assert why in str(exc)
        if c.keys is not None:
            try:
                db.add_member(7, "127.0.0.9", 9000)
                raise AssertionError("a member without a key was added to a cluster with keys")
            except errors.BadArgument as exc:
                assert "this cluster uses keys" in str(exc)
        # Removing a node that is not a member changes nothing; adding the same member twice neither.
        seq = db.remove_member(9)
        assert seq == status_of(c.nodes[1])["membership_seq"]
        first = db.add_member(7, "127.0.0.9", 9000, **key)
        assert db.add_member(7, "127.0.0.9", 9000, **key) == first
        assert {m["node_id"]: m["voter"] for m in db.members()}[7] is False    # a learner until caught up
        db.remove_member(7)
        assert [m["node_id"] for m in db.members()] == [1, 2, 3]


def test_a_member_that_missed_the_changes_finds_the_cluster_through_its_flags(cluster):
    """Node 3 is down while nodes 4 and 5 join and nodes 1 and 2 leave. Its data dir records the
    membership {1, 2, 3}; none of those serve any more. Restarted with flags naming the current
    nodes (what an operator does), it connects to them as contacts, follows node 4's stream (a
    primary is followed whether or not it is a member here yet, as in Raft), catches up, and uses the
    membership that names node 4; node 4 counts it again."""
    c = cluster()
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("before", 0)
        c.nodes[3].stop()
        for node_id in (4, 5):
            c.add_node(node_id)
            c.start(node_id, wait=False)
            wait_until(lambda: members_of(c.nodes[1]).get(node_id) is True, 20, message=f"node {node_id} a voter")
        db.remove_member(1)
        assert c.wait_primary(10, among=(2, 4, 5)) == 2
        for i in range(100):
            db.put(f"k{i}", i)
    # Node 2 leaves too: node 4 leads, a node node 3 has never heard of.
    with c.client(retry=FAILOVER_RETRY) as db:
        db.remove_member(2)
    assert c.wait_primary(10, among=(4, 5)) == 4
    c.nodes[2].stop()
    c.start(3, wait=False)
    c.nodes[3].wait_ready(15)
    wait_until(lambda: status_of(c.nodes[3]).get("primary_id") == 4 and caught_up(c.nodes[3], c.nodes[4]), 20,
               message="node 3 following node 4, caught up")
    assert sorted(members_of(c.nodes[3])) == [3, 4, 5]
    with c.client(retry=FAILOVER_RETRY) as db:
        assert db.get("k99") == 99
    c.nodes[5].kill()                     # nodes 3 and 4 are a majority of {3, 4, 5}
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after", 1)


def test_a_member_whose_log_missed_the_primarys_addition_catches_up_from_a_member(cluster, tmp_path):
    """Node 4 (joined with --join: no flags name the others) applies node 1's removal, then is down
    while node 1 is added again and node 2 removed, so node 1 leads {1, 3, 4}. Node 4's log says
    {2, 3, 4}: it neither connects to node 1 nor admits it, and node 1's stream cannot reach it.
    Node 3 is a member it knows: its role reply reports a commit seq beyond node 4's, node 4 takes
    the committed entries from it, and the membership entries among them name node 1; node 4
    connects, follows node 1 and counts again (docs/MEMBERSHIP.md)."""
    c = cluster()
    c.add_node(4)
    c.start(4, wait=False)
    wait_until(lambda: members_of(c.nodes[1]).get(4) is True, 20, message="node 4 a voter")
    with c.client(retry=FAILOVER_RETRY) as db:
        db.remove_member(1)                     # node 1 hands over to node 2
    assert c.wait_primary(10, among=(2, 3, 4)) == 2
    wait_until(lambda: sorted(members_of(c.nodes[4])) == [2, 3, 4], 10, message="node 4 applied node 1's removal")
    c.nodes[4].stop()
    c.nodes[1].stop()
    c.rejoin(1, tmp_path / "node1-again")       # on its old address, with an empty data dir
    wait_until(lambda: members_of(c.nodes[2]).get(1) is True, 20, message="node 1 a voter again")
    with c.client(retry=FAILOVER_RETRY) as db:
        db.remove_member(2)                     # node 2 hands over to the lowest remaining voter: node 1
        assert c.wait_primary(10, among=(1, 3)) == 1
        for i in range(50):
            db.put(f"k{i}", i)
    c.nodes[2].stop()
    c.start(4, wait=False)                      # as it was started: --join, a no-op for a member
    c.nodes[4].wait_ready(15)
    wait_until(lambda: status_of(c.nodes[4]).get("primary_id") == 1 and caught_up(c.nodes[4], c.nodes[1]), 20,
               message="node 4 following node 1, caught up")
    assert sorted(members_of(c.nodes[4])) == [1, 3, 4]
    assert "reports entries committed up to seq" in c.nodes[4].log()
    c.nodes[3].kill()                           # nodes 1 and 4 are a majority of {1, 3, 4}
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after", 1)
        assert db.get("k49") == 49


def test_with_keys_only_a_node_whose_key_was_admitted_can_join(cluster):
    """With keys (CurveZMQ), add-member --key records the new node's public key; the members then
    admit that key on the peer plane, and on the client port for asking to join (nothing else). A
    node with a key pair nobody admitted is refused at the handshake and never becomes a member."""
    c = cluster(keys=True)
    for node_id in (4, 5):
        c.add_node(node_id, admit=False)           # its key pair, as datastore-cli keygen node<ID> makes it
    key4 = c.keys.public_key(4)
    n4 = c.nodes[4]
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("k", 1)
        db.add_member(4, n4.host, n4.port, n4.pub_port, n4.peer_port, key=key4)
        c.start(4, wait=False)
        wait_until(lambda: {m["node_id"]: m["voter"] for m in db.members()}.get(4) is True, 30,
                   message="node 4 a voter")
        assert {m["node_id"]: m.get("key") for m in db.members()}[4] == key4
        c.start(5, wait=False)                     # never admitted
        wait_until(lambda: "not an allowed client key" in c.nodes[1].log() + c.nodes[2].log() + c.nodes[3].log(),
                   15, message="node 5's handshake refused")
        assert sorted(m["node_id"] for m in db.members()) == [1, 2, 3, 4]
        assert "--join: added by entry" not in c.nodes[5].log()
        c.nodes[5].kill()
    wait_until(lambda: caught_up(c.nodes[4], c.nodes[1]), 10, message="caught up")
    with c.nodes[4].client(retry=Retry(max_tries=1)) as db4:
        assert db4.get("k", stale=True) == 1
    # A node's key on a client port may ask to join, and nothing else.
    node_key = c.keys.client_kwargs("node4")
    with c.nodes[1].client(retry=Retry(max_tries=1), **node_key) as as_node4:
        assert [m["node_id"] for m in as_node4.members()] == [1, 2, 3, 4]
        for call in (lambda: as_node4.put("k", 2), lambda: as_node4.get("k"), lambda: as_node4.remove_member(2)):
            try:
                call()
                raise AssertionError("a node's key was allowed more than joining")
            except errors.Forbidden as exc:
                assert "a node's key may only ask to join" in str(exc)
