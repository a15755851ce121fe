"""Dynamo-mode membership with real processes (issue 13, docs/MEMBERSHIP.md, "Dynamo mode"): a node
joins with --join and receives the data through the logs and anti-entropy; remove_member drops a
node from every view, tombstone collection stops waiting for it, and the removed node learns it and
refuses requests; it can come back only from an empty data dir."""
import os
import subprocess
import sys

import pytest

from zmqstore import errors
from zmqstore.client import Retry
from zmqstore.testing.load import Writer
from zmqstore.testing.process import wait_until

from test_dynamo import cluster  # noqa: F401 (the fixture: a started 3-node dynamo cluster)

ONCE = Retry(max_tries=1)
PATIENT = Retry(max_tries=50, deadline=20.0)


def status(node):
    return node.status() or {}


def members(node):
    return sorted(m["node_id"] for m in status(node).get("members", []))


def test_a_node_joins_under_writes_and_receives_every_key(cluster):
    c = cluster
    with c.nodes[2].client(retry=PATIENT) as db:
        for i in range(300):
            db.put(f"old{i}", i)
        for i in range(0, 300, 3):
            db.delete(f"old{i}")
    with Writer(c, "w", PATIENT) as w:
        w.wait_for(100)
        c.add_node(4)
        c.start(4, wait=False)
        c.nodes[4].wait_ready(20)
        wait_until(lambda: all(members(c.nodes[i]) == [1, 2, 3, 4] for i in range(1, 5)), 15,
                   message="every node sees members 1-4")
        w.wait_for(100)
    assert w.errors == 0
    wait_until(lambda: c.dynamo_converged(), 30, message="four nodes converged")
    with c.nodes[4].client(retry=ONCE) as db:
        assert all(db.get(f"old{i}") == (None if i % 3 == 0 else i) for i in range(300))
        for key, value in w.acked.items():
            assert db.get(key) == value
        db.put("from-4", 4)
    with c.nodes[1].client(retry=PATIENT) as db:
        wait_until(lambda: db.get("from-4") == 4, 10, message="node 4's write on node 1")
        assert db.put("quorum", 1, w=4) is not None      # all four count toward w
    assert "--join: added by record counter 1" in c.nodes[4].log()


def test_removing_a_dead_node_lets_tombstone_collection_proceed(cluster):
    c = cluster
    with c.nodes[1].client(retry=PATIENT) as db:
        for i in range(50):
            db.put(f"k{i}", i)
        wait_until(lambda: c.dynamo_converged(), 20, message="converged")
        c.nodes[3].kill()
        for i in range(50):
            db.delete(f"k{i}")
        # Node 3 has not applied the deletes: their tombstones wait for it.
        wait_until(lambda: status(c.nodes[2]).get("tombstones") == 50, 10, message="node 2 applied the deletes")
        assert status(c.nodes[1])["tombstones"] == 50
    with c.nodes[2].client(retry=PATIENT) as db:
        db.remove_member(3)                          # on any node; node 3 is dead: at once
        assert [m["node_id"] for m in db.members()] == [1, 2]
    wait_until(lambda: members(c.nodes[1]) == [1, 2], 10, message="node 1 heard of the removal")
    wait_until(lambda: status(c.nodes[1]).get("tombstones") == 0 and status(c.nodes[2]).get("tombstones") == 0, 30,
               message="tombstones collected without node 3")
    assert [p["node_id"] for p in status(c.nodes[1])["peers"]] == [2]
    assert status(c.nodes[1])["leaving"] == [3]     # dead: not yet shown that it knows
    with c.nodes[1].client(retry=ONCE) as db:
        with pytest.raises(errors.BadArgument, match="exceeds the cluster's 2 nodes"):
            db.put("x", 1, w=3)
        db.put("x", 1, w=2)
        assert db.get("k1") is None
    # Node 3, restarted with its old flags, hears of its removal from the others (they keep asking
    # it until it says it knows) and takes no writes that would reach no one.
    c.start(3, wait=False)
    c.nodes[3].wait_ready(15)
    wait_until(lambda: status(c.nodes[3]).get("role") == "removed", 15, message="node 3 learned of its removal")
    with c.nodes[3].client(retry=ONCE) as db:
        with pytest.raises(errors.Unavailable, match="removed from the cluster"):
            db.put("lost", 1)
    wait_until(lambda: all(status(c.nodes[i]).get("leaving") == [] for i in (1, 2)), 10, message="node 3 let go")


def test_a_removed_node_learns_it_refuses_requests_and_rejoins_only_from_an_empty_data_dir(cluster, tmp_path):
    c = cluster
    with c.nodes[3].client(retry=PATIENT) as db:
        for i in range(30):
            db.put(f"k{i}", i)
    wait_until(lambda: c.dynamo_converged(), 20, message="converged")
    with c.nodes[1].client(retry=PATIENT) as db:       # node 3 is alive and converged: removable
        db.remove_member(3)
    wait_until(lambda: status(c.nodes[3]).get("role") == "removed", 10, message="node 3 learned of its removal")
    assert "was removed from the cluster by node 1" in c.nodes[3].log()
    assert members(c.nodes[2]) == [1, 2]
    # Node 3 said it knows and holds nothing they lack: the others let it go (its dir may be wiped).
    wait_until(lambda: all(status(c.nodes[i]).get("leaving") == [] for i in (1, 2)), 10, message="node 3 let go")
    with c.nodes[3].client(retry=ONCE) as db:
        with pytest.raises(errors.Unavailable, match="removed from the cluster"):
            db.get("k1")
        with pytest.raises(errors.Unavailable, match="removed from the cluster"):
            db.put("k1", "lost?")
    with c.nodes[1].client(retry=ONCE) as db:
        assert db.get("k29") == 29                  # node 3's writes stay with the others
    # Back with --join and its old data dir: refused, it says why.
    c.nodes[3].stop()
    c.nodes[3].join = ",".join(n.named_endpoint if c.keys else n.endpoint for i, n in c.nodes.items() if i != 3)
    c.start(3, wait=False)
    wait_until(lambda: not c.nodes[3].alive(), 20, message="node 3 refused to start")
    assert c.nodes[3].proc.returncode != 0
    assert "join again with an empty --data-dir" in c.nodes[3].log()
    # From an empty one (with keys, its key admitted first, as for any new node) it joins again.
    c.rejoin(3, tmp_path / "node3-again")
    c.nodes[3].wait_ready(20)
    wait_until(lambda: all(members(c.nodes[i]) == [1, 2, 3] for i in (1, 2, 3)), 15, message="node 3 back")
    wait_until(lambda: c.dynamo_converged(), 30, message="converged again")
    with c.nodes[3].client(retry=ONCE) as db:
        assert db.get("k29") == 29


def test_the_cli_changes_a_dynamo_membership(cluster):
    """datastore-cli add-member, members and remove-member against a dynamo node: the number it
    prints is the node's record counter (not a log entry), and the others hear of the change."""
    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *cluster.cli_args([1]), *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    key = ["--key", os.path.join(cluster.keys.nodes, "node7.key")] if cluster.keys else []
    if cluster.keys:
        cluster.keys.for_node(7)
    assert "node 7 added (record counter 1)" in cli("add-member", "7", "127.0.0.8:9700", *key)
    wait_until(lambda: 7 in members(cluster.nodes[2]), 10, message="node 2 heard of node 7")
    assert "127.0.0.8:9700" in cli("members")
    assert "node 7 removed (record counter 2)" in cli("remove-member", "7")
    wait_until(lambda: 7 not in members(cluster.nodes[3]), 10, message="node 3 heard of the removal")
