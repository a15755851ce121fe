"""Disk space (issue 15, docs/OPERATIONS.md "Disk space"): past the quota or the free-space floor,
writes that add data get `no_space` while reads and deletes go on; deletes give the space back
and the alarm clears by itself; nothing acknowledged is lost. On real small file systems (tmpfs,
mounted by the test as root) and with a quota on an ordinary disk."""
import contextlib
import os
import subprocess
import time

import pytest

from zmqstore import Retry, errors
from zmqstore.testing.process import Cluster, wait_until

VALUE = os.urandom(200_000)         # as the report: 200 KB puts
MAX_PUTS = 1000                     # far more than any limit here allows


def alarms(*nodes):
    """() -> whether any of the nodes has its space alarm on (a node that does not answer: no)."""
    return lambda: any((n.status() or {"space": {"alarm": None}})["space"]["alarm"] is not None for n in nodes)


def accepted(db, key, value):
    try:
        db.put(key, value)
        return True
    except errors.NoSpace:
        return False


def fill(db, alarmed):
    """Put 200 KB values until no_space, and again while the alarm clears without deletes (the
    log's trimmed entries and memtables flushed give some space back), until it stays on for 3 s:
    only deletes can help then. `alarmed()`: whether an alarm that can refuse these writes is on
    (leader mode: any member's). Returns ({key: True} acknowledged, the last NoSpace)."""
    acked, i = {}, 0
    while i < MAX_PUTS:
        try:
            db.put(f"k{i:04d}", VALUE)
            acked[f"k{i:04d}"] = True
            i += 1
            continue
        except errors.NoSpace as exc:
            refusal = exc
        stays = time.monotonic() + 3.0
        while time.monotonic() < stays and alarmed():
            time.sleep(0.2)
        if time.monotonic() >= stays:
            return acked, refusal
    raise AssertionError(f"{MAX_PUTS} puts of 200 KB and the space alarm never stayed on")


def check_refusal_then_recovery(db, alarmed, acked, refusal, kept=3):
    """The alarm refuses writes that add data, serves reads and deletes, and clears once the deletes
    freed space; the `kept` first keys stay, acknowledged, through it all."""
    assert len(acked) >= kept + 2 and refusal.code == "no_space" and "reads and deletes still work" in str(refusal)
    assert {"used", "free"} <= set(refusal.details)
    assert alarmed()
    with pytest.raises(errors.NoSpace):
        db.put_many({"a": 1, "b": VALUE})
    keys = sorted(acked)
    assert db.get(keys[0]) == VALUE                 # reads go on
    assert db.get("never-written") is None
    for key in keys[kept:]:
        db.delete(key)                              # and deletes
    wait_until(lambda: not alarmed(), 60, interval=0.2, message="the space alarm cleared")
    # Writes are accepted again (a primary learns that a member's alarm cleared from its next ROLE).
    wait_until(lambda: accepted(db, "after", 1), 10, interval=0.1, message="writes accepted again")
    for key in keys[:kept]:
        assert db.get(key) == VALUE
    assert all(db.get(key) is None for key in keys[kept:])
    return keys[:kept]


@pytest.mark.parametrize("mode", ["leader", "dynamo"])
def test_a_quota_refuses_writes_serves_reads_and_deletes_and_clears_after_deletes(cluster, mode):
    c = cluster(mode=mode, args=["--max-data-bytes", str(8 << 20)])
    node = c.nodes[1]
    # Leader mode: every member's alarm refuses the primary's writes; dynamo mode: only node 1's own.
    alarmed = alarms(*c.nodes.values()) if mode == "leader" else alarms(node)
    with node.client(timeout=5.0, retry=Retry(max_tries=20, deadline=10)) as db:
        acked, refusal = fill(db, alarmed)
        assert refusal.details["used"] > 8 << 20 or refusal.details.get("nodes")    # its own, or a member's
        kept = check_refusal_then_recovery(db, alarmed, acked, refusal)
    # Nothing acknowledged was lost, on any node, also after a restart.
    node.stop()
    c.start(1)
    for n in c.nodes.values():
        with n.client(retry=Retry(max_tries=20, deadline=10)) as db:
            wait_until(lambda: db.get("after", stale=True) == 1 and all(db.get(k, stale=True) == VALUE for k in kept),
                       15, message="kept writes and the one after")
    assert "space alarm cleared" in node.log()


def every_node_whole(cluster, kept):
    """Every node alive, current (it has "after") and holding every kept write, without a traceback."""
    for n in cluster.nodes.values():
        assert n.alive(), f"node {n.node_id} died:\n{n.log()[-3000:]}"
        with n.client(retry=Retry(max_tries=20, deadline=10)) as db:
            wait_until(lambda: db.get("after", stale=True) == 1, 15, message=f"node {n.node_id} current")
            assert all(db.get(k, stale=True) == VALUE for k in kept)
        assert "Traceback" not in n.log()


@contextlib.contextmanager
def stopped_after(cluster):
    """The cluster, stopped at the end of the block; its nodes' logs printed when the block failed
    (the test's report shows them)."""
    try:
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


@contextlib.contextmanager
def small_file_systems(base, count, megabytes):
    """`count` tmpfs of `megabytes` each under base (root only); unmounted at the end."""
    mounted = []
    try:
        for i in range(count):
            path = os.path.join(base, f"fs{i + 1}")
            os.makedirs(path)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
            mounted.append(path)
        yield mounted
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)


def test_a_cluster_whose_disks_fill_together_refuses_writes_and_recovers_losing_nothing(tmp_path):
    """A 3-node leader cluster, each node's data dir on its own 160 MB file system (the default
    free-space floor, 64 MiB, leaves RocksDB room to flush 32 MiB of memtables): the primary gets
    short of space with the others, refuses writes with no_space instead of dying, and every node
    comes through it with every acknowledged write."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (.ci/run runs as root)")
    with small_file_systems(str(tmp_path), 3, 160) as dirs:
        with stopped_after(Cluster(tmp_path / "cluster", size=3)) as c:
            for node_id, fs in zip(c.nodes, dirs):
                c.nodes[node_id].data_dir = os.path.join(fs, "data")
            c.start_all()
            c.wait_primary(10)
            # A file system this small keeps no WAL file for reuse (storage.recycled_wal_files).
            assert all("WAL files reused no" in n.log() for n in c.nodes.values())
            alarmed = alarms(*c.nodes.values())
            with c.client(timeout=5.0, retry=Retry(max_tries=30, deadline=15)) as db:
                acked, refusal = fill(db, alarmed)
                assert refusal.details["free"] < 64 << 20 or refusal.details.get("nodes")
                kept = check_refusal_then_recovery(db, alarmed, acked, refusal)
            every_node_whole(c, kept)


def test_a_secondary_short_of_space_stops_the_primarys_writes_until_deletes_free_it(tmp_path):
    """Only node 2's data dir is on a small file system (160 MB). The primary hears its space alarm
    (ROLE carries it) and refuses writes with no_space naming node 2, before node 2's disk fills;
    deletes free node 2's space (it trims its log and compacts like the primary), and writes go on."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (.ci/run runs as root)")
    with small_file_systems(str(tmp_path), 1, 160) as (fs,):
        with stopped_after(Cluster(tmp_path / "cluster", size=3)) as c:
            c.nodes[2].data_dir = os.path.join(fs, "data")
            c.start_all()
            primary = c.wait_primary(10)
            assert primary == 1         # node 1 bootstraps the cluster; node 2 stays a secondary
            with c.client(timeout=5.0, retry=Retry(max_tries=30, deadline=15)) as db:
                acked, refusal = fill(db, alarms(c.nodes[2]))
                assert refusal.details["nodes"] == [2] and "no space on node 2" in str(refusal)
                assert c.nodes[primary].status()["space"]["alarm"] is None       # its own disk has room
                trimmed_from = c.nodes[2].status()["first_seq"]
                kept = check_refusal_then_recovery(db, alarms(c.nodes[2]), acked, refusal)
            # Node 2 trimmed its log while short (its peers all held what it dropped).
            assert c.nodes[2].status()["first_seq"] > trimmed_from
            every_node_whole(c, kept)


def test_a_write_error_that_still_happens_ends_the_node_with_one_line_and_loses_nothing(nodes, tmp_path):
    """Without the floor (min_free_bytes = 0) the disk fills under RocksDB: the node stops with one
    CRITICAL line and exit status 1, no traceback; with more space, every acknowledged write is back."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (.ci/run runs as root)")
    with small_file_systems(str(tmp_path), 1, 30) as (fs,):
        node = nodes(data_dir=os.path.join(fs, "data"), args=["--min-free-bytes", "0"])
        acked = {}
        with node.client(timeout=3.0, retry=Retry(max_tries=1)) as db:
            for i in range(MAX_PUTS):
                try:
                    db.put(f"k{i:04d}", VALUE)
                except errors.ZmqstoreError:
                    break
                acked[f"k{i:04d}"] = True
        wait_until(lambda: not node.alive(), 30, message="the node stopped")
        assert node.proc.returncode == 1 and len(acked) > 10
        log = node.log()
        assert "Traceback" not in log
        critical = [line for line in log.splitlines() if " CRITICAL " in line]
        assert len(critical) == 1 and "No space left on device" in critical[0], log[-3000:]
        subprocess.run(["mount", "-o", "remount,size=200m", fs], check=True)
        node.start()
        with node.client(retry=Retry(max_tries=5)) as db:
            assert all(db.get(k) == VALUE for k in acked)
