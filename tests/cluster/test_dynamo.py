"""Dynamo mode with real processes: every node accepts writes, replicas converge, concurrent writes
become siblings that resolve the same way everywhere, deletes never resurrect. Partitions are cut
with iptables between the nodes' loopback addresses (skipped where iptables cannot be used)."""
import json
import time

import pytest

from zmqstore import errors
from zmqstore.client import Retry
from zmqstore.testing import partition
from zmqstore.testing.process import Cluster, NodeProcess, free_port, wait_until

needs_iptables = pytest.mark.skipif(not partition.available(),
                                    reason="needs iptables and root to cut links (.ci/run installs iptables)")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, size=3, mode="dynamo", args=["--log-level", "DEBUG"])
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def cut(cluster):
    p = partition.Partitioner({i: n.host for i, n in cluster.nodes.items()})
    try:
        yield p
    finally:
        p.close()


def clients(cluster):
    return {i: n.client(timeout=2.0, retry=Retry(max_tries=1)) for i, n in cluster.nodes.items()}


def snapshot(db, keys):
    """What one node holds for `keys`: every sibling (value, origin, seq) and the winner."""
    out = {}
    for k in keys:
        v = db.get_versions(k)
        out[k] = (sorted((repr(s.value), s.origin, s.seq, s.deleted) for s in v.siblings), db.get(k))
    return out


def converged(cluster):
    return cluster.dynamo_converged()


def test_every_node_accepts_writes_and_all_converge(cluster):
    dbs = clients(cluster)
    try:
        for i, db in dbs.items():
            for j in range(50):
                db.put(f"n{i}-{j}", {"from": i, "j": j})
        dbs[1].put_many({"batch-a": 1, "batch-b": 2})
        wait_until(lambda: converged(cluster), 10, message="convergence")
        keys = [f"n{i}-{j}" for i in dbs for j in range(50)] + ["batch-a", "batch-b"]
        views = [snapshot(db, keys) for db in dbs.values()]
        assert views[0] == views[1] == views[2]
        assert dbs[3].get("n1-7") == {"from": 1, "j": 7} and dbs[2].get("batch-b") == 2
        assert dict(dbs[2].scan(prefix="batch-")) == {"batch-a": 1, "batch-b": 2}
        assert dbs[2].get("n1-7", with_conflict=True) == ({"from": 1, "j": 7}, False)
        st = dbs[1].status()
        assert st["mode"] == "dynamo" and st["conflicts"] == 0 and len(st["applied"]) == 3
    finally:
        for db in dbs.values():
            db.close()


def test_a_pipeline_offers_every_dynamo_operation(cluster):
    """Pipelines share the client's operations: dots, get_versions, contexts, w and r."""
    with cluster.nodes[1].client() as db, cluster.nodes[2].client() as other:
        p = db.pipeline()
        p.put("k", 1, w=3).put("j", 2).get_versions("k", r=2).get("k", with_conflict=True, r=2)
        dot, _dot_j, versions, (value, conflict) = p.execute()
        assert dot.node_id == 1 and [v.value for v in versions.siblings] == [1] and (value, conflict) == (1, False)
        assert other.get("k", stale=True) == 1              # w=3: node 2 held it before the reply
        replaced, deleted, after = db.pipeline().put("k", 3, context=versions.context).delete(
            "j", w=2).get("k").execute()
        assert replaced.seq > dot.seq and deleted is True and after == 3
        cluster.nodes[3].kill()                             # now w=3 cannot be met, w=2 can
        short, met = db.pipeline().put("q", 1, w=3).put("q", 2, w=2).execute(raise_on_error=False)
        assert isinstance(short, errors.ReplicationTimeout) and met.node_id == 1


def test_cas_is_refused_and_bad_contexts_change_nothing(cluster):
    with cluster.nodes[1].client(retry=Retry(max_tries=1)) as db:
        db.put("k", 1)
        with pytest.raises(errors.UnsupportedOperation, match="dynamo"):
            db.cas("k", 1, 2)
        with pytest.raises(errors.BadArgument, match="context"):
            db.put("k", 2, context=b"\xc1not msgpack")
        with pytest.raises(errors.BadArgument, match="context"):
            db.put("k", 2, context=b"\x91\x92\xa1x\x01")        # [["x", 1]]: not [uint, uint]
        assert db.get("k") == 1 and len(db.get_versions("k").siblings) == 1
        # A context claiming write 10000 of node 1's origin, which node 1 never made, is refused
        # (it would hide node 1's next writes); nothing changes, and the next write is no conflict.
        origin = db.get_versions("k").siblings[0].origin
        forged = bytes([0x91, 0x92, 0xcf]) + origin.to_bytes(8, "big") + bytes([0xcd, 0x27, 0x10])
        with pytest.raises(errors.BadArgument, match="never made|has made"):
            db.put("k", 2, context=forged)
        assert db.get("k") == 1 and len(db.get_versions("k").siblings) == 1
        db.put("k", 3)
        assert db.get("k", with_conflict=True) == (3, False)


@needs_iptables
def test_a_context_put_resolves_siblings_everywhere(cluster, cut):
    dbs = clients(cluster)
    try:
        cut.isolate(1)
        dbs[1].put("k", "left")
        dbs[2].put("k", "right")
        cut.heal()
        wait_until(lambda: converged(cluster), 10, message="convergence after heal")
        versions = dbs[3].get_versions("k")
        assert sorted(v.value for v in versions.siblings) == ["left", "right"] and versions.conflict
        dbs[3].put("k", "resolved", context=versions.context)
        wait_until(lambda: converged(cluster), 10, message="convergence after resolving")
        for db in dbs.values():
            assert db.get("k", with_conflict=True) == ("resolved", False)
    finally:
        for db in dbs.values():
            db.close()


@needs_iptables
def test_partition_then_heal_converges_with_siblings_and_no_lost_write(cluster, cut):
    """The issue's test: cut node 1 off from nodes 2 and 3; both sides write different keys and the
    same keys; heal. Every node then holds the same data; every different-key write survives; the
    same-key writes are siblings on every node and resolve to the same winner everywhere."""
    dbs = clients(cluster)
    try:
        for db in dbs.values():
            db.put("shared-0", "before")
        wait_until(lambda: converged(cluster), 10, message="convergence before the partition")
        cut.isolate(1)
        acked = {}
        for j in range(100):
            side = 1 if j % 2 else 2 + (j // 2) % 2      # node 1 alone; nodes 2 and 3 together
            dbs[side].put(f"own-{j}", j)
            acked[f"own-{j}"] = j
        for j in range(10):
            dbs[1].put(f"shared-{j}", f"left-{j}")
            dbs[2].put(f"shared-{j}", f"right-{j}")
        # while cut off, each side sees only its own writes
        assert dbs[1].get("own-2") is None and dbs[3].get("own-1") is None
        healed = time.monotonic()
        cut.heal()
        wait_until(lambda: converged(cluster), 10, message="convergence after heal")
        print(f"converged {time.monotonic() - healed:.2f} s after the heal")
        keys = list(acked) + [f"shared-{j}" for j in range(10)]
        views = {i: snapshot(db, keys) for i, db in dbs.items()}
        assert views[1] == views[2] == views[3]
        for k, v in acked.items():
            assert dbs[1].get(k) == v and dbs[3].get(k) == v
        for j in range(10):
            siblings, shown = views[1][f"shared-{j}"]
            assert sorted(s[0] for s in siblings) == [repr(f"left-{j}"), repr(f"right-{j}")]
            assert shown in (f"left-{j}", f"right-{j}")
            # "before" was seen by both writers: superseded, never a sibling
            assert all(s[0] != repr("before") for s in siblings)
    finally:
        for db in dbs.values():
            db.close()


@needs_iptables
def test_a_delete_that_followed_an_update_is_never_undone(cluster, cut):
    """Node 2 updates k and node 3 deletes it after seeing the update, while node 1, cut off,
    updates k too. After the heal the causally earlier update is gone everywhere; the concurrent
    update and the delete are siblings. A key updated then deleted on one side stays deleted."""
    dbs = clients(cluster)
    try:
        for key in ("k", "gone"):
            dbs[1].put(key, "v1")
        wait_until(lambda: converged(cluster), 10, message="convergence")
        cut.isolate(1)
        dbs[2].put("k", "v2")
        wait_until(lambda: dbs[3].get("k") == "v2", 5, message="v2 on node 3")
        assert dbs[3].delete("k") is True
        dbs[1].put("k", "v3")
        dbs[1].put("gone", "v4")
        assert dbs[1].delete("gone") is True
        cut.heal()
        wait_until(lambda: converged(cluster), 10, message="convergence after heal")
        for db in dbs.values():
            versions = db.get_versions("k")
            assert sorted((v.deleted, repr(v.value)) for v in versions.siblings) == [(False, "'v3'"), (True, "None")]
            assert db.get("gone") is None and all(v.deleted for v in db.get_versions("gone").siblings)
        # every node applied the tombstone of "gone": it is garbage-collected and stays absent
        wait_until(lambda: all(db.get_versions("gone").siblings == [] for db in dbs.values()), 10,
                   message="tombstone collected")
        wait_until(lambda: converged(cluster), 10, message="convergence after collection")
        assert all(db.get("gone") is None for db in dbs.values())
    finally:
        for db in dbs.values():
            db.close()


def test_a_node_killed_during_writes_catches_up(cluster):
    victim = cluster.nodes[3]
    acked = {}
    with cluster.nodes[1].client(retry=Retry(max_tries=1)) as db1, \
            cluster.nodes[2].client(retry=Retry(max_tries=1)) as db2:
        with victim.client(retry=Retry(max_tries=1)) as db3:
            db3.put("before-kill", 3)
        for j in range(300):
            (db1 if j % 2 else db2).put(f"w{j}", j)
            acked[f"w{j}"] = j
            if j == 100:
                victim.kill()
        cluster.start(3)
        with victim.client(retry=Retry(max_tries=1)) as db3:
            db3.put("after-restart", True)
            wait_until(lambda: converged(cluster), 15, message="convergence after restart")
            assert all(db3.get(k) == v for k, v in acked.items())
            assert db1.get("after-restart") is True
            # a new origin per start: the restarted node never reuses a seq of its earlier run
            assert len(db3.status()["applied"]) == 4


def test_the_seed_two_node_example(tmp_path):
    """The seed's 2-node dynamo cluster, started with its flags: --mode dynamo and each node listing
    the other as its peer."""
    hosts = ("127.0.0.2", "127.0.0.3")
    ports = [free_port(h) for h in hosts]
    pubs = [free_port(h) for h in hosts]
    peer_ports = [free_port(h) for h in hosts]
    nodes = []
    try:
        for i in (0, 1):
            other = 1 - i
            peers = json.dumps([{"node_id": other + 1, "host": hosts[other], "port": ports[other],
                                 "pub_port": pubs[other], "peer_port": peer_ports[other]}])
            node = NodeProcess(i + 1, tmp_path / f"d{i + 1}", tmp_path / f"d{i + 1}.log", host=hosts[i],
                               port=ports[i], pub_port=pubs[i], peer_port=peer_ports[i],
                               args=["--mode", "dynamo", "--peers", peers])
            nodes.append(node.start(wait=False))
        for node in nodes:
            node.wait_ready()
        with nodes[0].client() as a, nodes[1].client() as b:
            a.put("from-1", 1)
            b.put("from-2", 2)
            wait_until(lambda: a.get("from-2") == 2 and b.get("from-1") == 1, 10, message="replication")
    finally:
        for node in nodes:
            node.stop()


def test_a_node_restored_from_an_old_data_dir_resyncs_without_resurrecting(tmp_path):
    """Node 3 comes back on a copy of its data dir taken long ago. The others have trimmed the log
    entries it lacks (every node had applied them) and garbage-collected a tombstone for a key the
    old copy still holds. Anti-entropy must make it equal to the others, and the deleted key must
    stay deleted everywhere."""
    conf = tmp_path / "retention.ini"
    conf.write_text("[cluster]\nlog_retention = 5\n")
    c = Cluster(tmp_path / "c", size=3, mode="dynamo", args=["--config", str(conf)])
    try:
        c.start_all()
        with c.nodes[1].client(retry=Retry(max_tries=1)) as db1:
            for j in range(20):
                db1.put(f"early-{j}", j)
            db1.put("doomed", "old value")
            wait_until(lambda: converged(c), 10, message="convergence")
            node3 = c.nodes[3]
            copied = node3.status()["applied"]          # what the copy will have applied
            node3.stop()
            backup = tmp_path / "node3-backup"
            import shutil
            shutil.copytree(node3.data_dir, backup)
            c.start(3)
            assert db1.delete("doomed") is True
            for j in range(100):
                db1.put(f"late-{j}", j)
            wait_until(lambda: converged(c), 10, message="convergence")
            def collected_everywhere():
                for n in c.nodes.values():
                    with n.client(retry=Retry(max_tries=1)) as db:
                        if db.get_versions("doomed").siblings:
                            return False
                return True
            wait_until(collected_everywhere, 10, message="tombstone collected everywhere")
            # And every node's own collection trimmed its log past what the copy holds (a node may
            # lose the tombstone to anti-entropy before its own collection runs).
            def trimmed_everywhere():
                sts = [n.status() or {"log_first": {}} for n in c.nodes.values()]
                return all(st["log_first"].get(o, 0) > s + 1 for st in sts for o, s in copied.items()
                           if int(o.split(":")[0]) == 1)
            wait_until(trimmed_everywhere, 10, message="every log trimmed past the copy")
            node3.stop()
            shutil.rmtree(node3.data_dir)
            shutil.copytree(backup, node3.data_dir)
            c.start(3)
            with node3.client(retry=Retry(max_tries=1)) as db3:
                wait_until(lambda: converged(c), 20, message="convergence after the restore")
                assert all(db3.get(f"late-{j}") == j for j in range(100))
                assert db3.get("doomed") is None and db3.get_versions("doomed").siblings == []
                assert db1.get("doomed") is None
                assert any(r["resync"] for r in db3.status()["repairs"]), node3.log()[-3000:]
    finally:
        c.stop_all()


@needs_iptables
def test_quorum_writes_wait_for_copies_and_quorum_reads_repair(cluster, cut):
    """w = 3 is acknowledged only once all three nodes hold the write; with a node cut off it times
    out (the write stays, durable where it landed), and r = 3 is unavailable. r = 3 reads the
    cut-off node's write as soon as the links are back."""
    dbs = clients(cluster)
    try:
        dbs[1].put("q", "all three", w=3)
        assert all(db.get("q") == "all three" for db in dbs.values())   # every node had it before the ack
        cut.isolate(3)
        dbs[1].put("q2", "w=2 works", w=2)
        dbs[3].put("lonely", "on node 3")              # only node 3 has it
        with cluster.nodes[1].client(timeout=5.0, retry=Retry(max_tries=1)) as slow:
            with pytest.raises(errors.ReplicationTimeout, match="write_quorum 3"):
                slow.put("q", "two only", w=3)
            with pytest.raises(errors.Unavailable, match="read_quorum 3"):
                slow.get("q2", r=3)
        assert dbs[1].get("lonely", r=2) is None       # nodes 1 and 2 do not have it yet
        cut.heal()
        # r = 3 right after the heal: node 3's write is found, and nodes 1 and 2 repaired at once
        def read_all_three():
            try:
                return dbs[1].get("lonely", r=3) == "on node 3"
            except errors.ZmqstoreError:     # links come back within moments of the heal
                return False
        wait_until(read_all_three, 10, message="quorum read")
        assert dbs[1].get("lonely") == "on node 3"     # joined (or replicated) locally by now
        # (that the join is pushed to stale replicas, after the flush: test_dynamo_engine.py)
        wait_until(lambda: converged(cluster), 10, message="convergence")
        with pytest.raises(errors.BadArgument, match="exceeds"):
            dbs[1].put("q", 1, w=4)
    finally:
        for db in dbs.values():
            db.close()


def test_a_standalone_dynamo_node_serves_and_refuses_quorums_above_one(tmp_path):
    node = NodeProcess(1, tmp_path / "n", tmp_path / "n.log", args=["--mode", "dynamo"]).start()
    try:
        with node.client(retry=Retry(max_tries=1)) as db:
            dot = db.put("k", 1)
            assert dot.node_id == 1 and dot.seq == 1 and db.get("k", r=1) == 1
            with pytest.raises(errors.BadArgument, match="exceeds"):
                db.put("k", 2, w=2)
            with pytest.raises(errors.BadArgument, match="exceeds"):
                db.get("k", r=2)
            assert db.get("k") == 1
    finally:
        node.stop()
