"""Nodes of a partitioned dynamo cluster (docs/PARTITIONING.md) that must pull partitions outside a
--join, real processes on 127.0.0.2...: one restored from an old copy of its data dir, whose
co-owners trimmed the log entries it lacks (its streams cannot complete the partition, so it pulls
it again, and a key deleted and collected after the copy stays deleted); one added by add-member
and started with --peers."""
import shutil

from zmqstore import Retry
from zmqstore.dynamo.layout import bucket_of
from zmqstore.dynamo.placement import Placement
from zmqstore.testing.process import wait_until

RETRY = Retry(max_tries=20, deadline=15.0)


def converged(c):
    return all((n.status() or {}).get("converged") for n in c.nodes.values())


def keys_of(partition, prefix, count):
    out, i = [], 0
    while len(out) < count:
        key = f"{prefix}{i}"
        i += 1
        if bucket_of(key.encode()) == partition:
            out.append(key)
    return out


def test_a_node_restored_from_an_old_copy_pulls_what_its_co_owners_trimmed(cluster, tmp_path):
    conf = tmp_path / "retention.ini"
    conf.write_text("[cluster]\nlog_retention = 5\n")
    c = cluster(size=3, mode="dynamo", args=["--replicas", "2", "--config", str(conf)], keys=False)
    placement = Placement(list(c.nodes), 2)
    p = min(q for q in range(4096) if placement.owners(q) in ((1, 3), (3, 1)))     # node 1 writes it
    early, late = keys_of(p, "early-", 10), keys_of(p, "late-", 30)
    doomed = keys_of(p, "doomed-", 1)[0]
    node1, node3 = c.nodes[1], c.nodes[3]
    with node1.client(retry=RETRY) as db1:
        for j, key in enumerate(early):
            db1.put(key, j)
        db1.put(doomed, "old value")
        wait_until(lambda: converged(c), 20, message="convergence")
        node3.stop()
        backup = tmp_path / "node3-copy"
        shutil.copytree(node3.data_dir, backup)
        c.start(3)
        assert db1.delete(doomed) is True
        for j, key in enumerate(late):
            db1.put(key, j)
        wait_until(lambda: converged(c), 20, message="convergence")
        with node3.client(retry=RETRY) as db3:
            wait_until(lambda: not db1.get_versions(doomed).siblings and not db3.get_versions(doomed).siblings,
                       20, message="the tombstone collected on both owners")

        def trimmed():      # node 1's log keeps the last 5 of its 42 writes, none the copy lacks
            return (node1.status() or {}).get("log_entries", {}).get("1", 99) <= 10
        wait_until(trimmed, 20, message="node 1's log trimmed past the copy")
        node3.stop()
        shutil.rmtree(node3.data_dir)
        shutil.copytree(backup, node3.data_dir)
        c.start(3)
        wait_until(lambda: converged(c), 30, message="convergence after the restore")
        with node3.client(retry=Retry(max_tries=1)) as db3:       # node 3 owns p: read there
            assert [db3.get(key) for key in late] == list(range(len(late)))
            assert [db3.get(key) for key in early] == list(range(len(early)))
            assert db3.get(doomed) is None and not db3.get_versions(doomed).siblings
        assert db1.get(doomed) is None
        status = node3.status()
        assert status["partitions_pulled"] >= 1 and status["keys"] == placement_keys(placement, 3, early + late)


def placement_keys(placement, node_id, keys):
    return sum(1 for key in keys if node_id in placement.owners(bucket_of(key.encode())))


def test_a_node_added_by_add_member_and_started_with_peers_pulls_its_partitions(cluster):
    """The operator adds node 4 with add-member and starts it with --peers (not --join): once it
    hears from its peers that it was added by a change, it pulls every partition it owns, and
    meanwhile forwards what it has not pulled: every read through it is right."""
    c = cluster(size=3, mode="dynamo", args=["--replicas", "2"], keys=False)
    count = 3000
    with c.nodes[1].client(retry=RETRY) as db:
        with db.pipeline(64) as p:
            for i in range(count):
                p.put(f"key{i}", i)
            p.execute()
        node4 = c.add_node(4, join=False)
        db.add_member(4, node4.host, node4.port, node4.pub_port, node4.peer_port)
    c.start(4)
    wait_until(lambda: "started without --join: pulling the" in node4.log(), 10,
               message="node 4 learns it was added by a change")
    with node4.client(retry=RETRY) as db4:
        with db4.pipeline(64) as p:
            for i in range(count):
                p.get(f"key{i}")
            assert p.execute() == list(range(count))
    wait_until(lambda: converged(c), 60, message="four nodes converged, nothing moving")
    placement = Placement([1, 2, 3, 4], 2)
    status = node4.status()
    assert status["partitions_pulled"] == len(placement.owned_by(4))
    assert status["keys"] == sum(1 for i in range(count) if 4 in placement.owners(bucket_of(f"key{i}".encode())))
