"""Leader mode with real processes: the seed's 3-node cluster on 127.0.0.2-4."""
import signal
import time

import pytest

from zmqstore import Retry, errors
from zmqstore.testing.load import Writer, put_pipelined
from zmqstore.testing.process import wait_until


FAILOVER_RETRY = Retry(max_tries=40, delay=0.05, max_delay=0.3, deadline=15)


def stale_get(node, key):
    with node.client(timeout=1.0, retry=Retry(max_tries=1)) as c:
        return c.get(key, stale=True)


def test_writes_reach_every_secondary(cluster):
    c = cluster()
    with c.client() as db:
        for i in range(50):
            db.put(f"k{i}", i)
        put_pipelined(db, {f"k{i}": i for i in range(50, 500)})
        assert db.get("k499") == 499
        db.put("k500", 500)                     # a scan right after an acknowledged write sees it
        assert dict(db.scan(prefix="k50")) == {"k50": 50, "k500": 500}
        db.delete("k500")
        status = db.status()
        # the term's empty entry, 53 writes one at a time, 450 pipelined ones (which share entries)
        assert status["role"] == "primary" and status["commit_seq"] == status["last_seq"]
        assert 54 < status["commit_seq"] < 503
    # Secondaries apply what the commit seq they heard covers: the delete's commit reaches them in
    # the next CHANGE or, none coming, a HEARTBEAT 5 ms later (docs/REPLICATION.md), so poll.
    expected = {f"k{i}": i for i in range(500)}
    for node in c.nodes.values():
        def converged(node=node):
            with node.client(timeout=1.0, retry=Retry(max_tries=1)) as db:
                return dict(db.scan(prefix="k", stale=True)) == expected
        wait_until(converged, 10, message=f"node {node.node_id} holds exactly the 500 keys")


def test_secondary_redirects_writes_and_reads(cluster):
    c = cluster()
    with c.nodes[2].client() as db:               # talks to a secondary first
        db.put("x", 1)                              # followed not_primary to node 1
        assert db.endpoint == c.nodes[1].endpoint
        assert db.get("x") == 1
    with c.nodes[3].client(retry=Retry(max_tries=1)) as db:
        with pytest.raises(errors.NotPrimary) as info:
            db.put("y", 1)
        assert info.value.details["primary_id"] == 1
        assert info.value.details["primary_address"] == c.nodes[1].endpoint


def all_data(node):
    with node.client(timeout=2.0) as db:
        return dict(db.scan(stale=True))


def wait_converged(c, expected, timeout=20):
    for node in c.nodes.values():
        if node.alive():
            wait_until(lambda: all_data(node) == expected, timeout,
                       interval=0.1, message=f"node {node.node_id} converged")


def test_secondary_killed_during_writes_catches_up(cluster):
    c = cluster()
    acked = {}
    with c.client() as db:
        acked.update(put_pipelined(db, {f"a{i}": i for i in range(2000)}))
        c.nodes[3].kill()
        # still committed: the primary and node 2 are a majority
        acked.update(put_pipelined(db, {f"b{i}": i for i in range(3000)}))
        c.start(3)
        db.put("after", "restart")
        acked["after"] = "restart"
    wait_converged(c, acked)


def test_fresh_data_dir_catches_up_by_snapshot(cluster, tmp_path):
    conf = tmp_path / "small-log.ini"
    conf.write_text("[cluster]\nlog_retention = 20\n")
    c = cluster(args=["--config", str(conf)])
    with c.client() as db:
        # far beyond the log: at least 5000 / 64 entries (64 in flight), 1.6 MB in 64 KiB shared ones at most
        put_pipelined(db, {f"k{i:05d}": {"i": i, "pad": "x" * 300} for i in range(5000)})
        db.delete("k00007")
        status = db.status()
        assert status["first_seq"] > 20     # the primary trimmed its log
        expected = dict(db.scan())
    c.nodes[3].stop()
    node3 = c.start(3, data_dir=tmp_path / "node3-fresh")   # an empty data dir for node 3
    wait_until(lambda: all_data(node3) == expected, 30, interval=0.2, message="snapshot installed")
    assert "installing a snapshot" in node3.log() and "snapshot at seq" in node3.log()
    with node3.client() as db:
        st = db.status()
        assert st["applied_seq"] == status["commit_seq"] and not st["restoring"]
    with c.client() as db:                    # and it keeps following the stream after the snapshot
        db.put("later", 1)
    wait_until(lambda: stale_get(node3, "later") == 1, 10, message="node 3 follows after the snapshot")


def test_primary_without_a_majority_steps_down_and_acknowledges_nothing(cluster):
    c = cluster()
    with c.client() as db:
        db.put("before", 1)
    c.nodes[2].stop()
    c.nodes[3].stop()
    with c.nodes[1].client(timeout=5.0, retry=Retry(max_tries=1)) as db:
        # Answered within 5 s, never acknowledged: the primary steps down after election_interval
        # without a majority and fails what it holds (or, if that came first, refuses the write).
        with pytest.raises((errors.ReplicationTimeout, errors.NotPrimary)):
            db.put("lonely", 1)
        wait_until(lambda: db.status()["role"] == "secondary", 5, message="node 1 stepped down")
        with pytest.raises(errors.NotPrimary):
            db.put("later", 1)
        with pytest.raises(errors.NotPrimary):                # no linearizable reads either
            db.get("before")
        assert db.get("lonely", stale=True) is None           # not applied, not visible
        assert db.get("before", stale=True) == 1
        assert db.status()["commit_seq"] < db.status()["last_seq"] or db.status()["last_seq"] == 2
    assert "heard from no majority" in c.nodes[1].log()


def test_dropped_change_messages_are_repaired(cluster):
    c = cluster(env={"ZMQSTORE_TEST_DROP_CHANGES": "0.5"})
    expected = {}
    with c.client() as db:
        for round_ in range(5):
            expected.update(put_pipelined(db, {f"r{round_}:{i}": i for i in range(400)}))
            db.put(f"single{round_}", round_)
            expected[f"single{round_}"] = round_
    wait_converged(c, expected)
    fetches = 0
    for node_id in (2, 3):
        with c.nodes[node_id].client() as db:
            fetches += db.status()["fetches"]
    assert fetches > 0, "half the change messages were dropped, so the secondaries must have fetched"


def test_restarting_all_nodes_keeps_every_acknowledged_write(cluster):
    c = cluster()
    acked = {}
    with c.client() as db:
        acked.update(put_pipelined(db, {f"k{i}": i for i in range(3000)}))
        for i in range(3000, 3100):
            db.put(f"k{i}", i)
            acked[f"k{i}"] = i
        assert db.delete("k0")
        del acked["k0"]
    for node in c.nodes.values():
        node.kill()                       # kill -9 all three
    c.start_all()
    with c.client() as db:
        assert db.status()["role"] == "primary"
        db.put("after", 1)
        acked["after"] = 1
        assert dict(db.scan()) == acked
    wait_converged(c, acked)


def test_cli_status_table_shows_every_node(cluster):
    import subprocess
    import sys
    c = cluster()
    with c.client() as db:
        db.put("k", 1)
    wait_until(lambda: stale_get(c.nodes[3], "k") == 1, 10, message="node 3 caught up")
    proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *c.cli_args(), "status"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["node_id", "address", "role", "term", "voted_for", "last_seq", "commit_seq",
                                "applied_seq", "lag", "lag_s", "heard_s"]
    rows = {int(line.split()[0]): line.split() for line in lines[1:] if line[:1].isdigit()}
    assert rows[1][2] == "primary" and rows[2][2] == rows[3][2] == "secondary"
    assert "election of term 1: node 1 (won" in proc.stdout     # the bootstrap is an election too
    assert all(row[3] == "1" and row[5] == "2" and row[8] == "0" and row[9] == "0.0" for row in rows.values())
    assert all(0 <= float(row[10]) < 5.0 for row in rows.values())    # heard lately (a loaded machine is slow)


def test_primary_killed_mid_stream_loses_no_acknowledged_write(cluster):
    """kill -9 whichever node is primary while pipelined writes flow (entries are streamed before
    the primary's own fsync), three times, restarting it each time: every acknowledged write
    survives the failovers and all nodes end identical."""
    c = cluster()
    acked = {}
    for round_ in range(3):
        with Writer(c, f"r{round_}:", FAILOVER_RETRY, batch=64) as w:
            w.wait_for(500)
            victim = c.wait_primary(10)
            c.nodes[victim].kill()
            c.wait_primary(10, among=set(c.nodes) - {victim})
            w.wait_for(100)                     # writes flow again, to the new primary
        acked.update(w.acked)
        c.start(victim)
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("final", 1)
        acked["final"] = 1
        data = dict(db.scan())
    missing = [k for k in acked if k not in data]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    wait_converged(c, data)


def test_read_rounds_ask_one_secondary_each_and_the_other_when_one_is_stopped(cluster):
    """Targeted read rounds (docs/REPLICATION.md "Reads") over real sockets: ZeroMQ delivers a
    round's HEARTBEAT only to the secondary subscribed to its topic, so the two secondaries take
    about one HEARTBEAT per round between them, not two. With one secondary stopped (SIGSTOP)
    every read is still answered: the rounds asked of it alone are asked of both after 10 ms."""
    c = cluster()
    for node_id in (2, 3):
        wait_until(lambda: (c.nodes[node_id].status() or {}).get("primary_id") == 1, 10,
                   message=f"node {node_id} following node 1")

    def heartbeats_taken():
        return sum(c.nodes[n].status(timeout=5.0)["peer_messages"].get("HEARTBEAT", 0) for n in (2, 3))

    primary = c.nodes[1]
    with primary.client(timeout=5.0, retry=Retry(max_tries=1)) as db:
        db.put("k", 1)
        before, rounds_before, started = heartbeats_taken(), db.status()["read_rounds"], time.monotonic()
        for _ in range(300):
            assert db.get("k") == 1
        rounds = db.status()["read_rounds"] - rounds_before
        taken = heartbeats_taken() - before
        # the periodic HEARTBEAT of each heartbeat interval (0.1 s: election_interval 0.5 s / 5) goes
        # to both, as does a widened round
        periodic = 2 * ((time.monotonic() - started) / 0.1 + 2)
        widened = db.status()["read_rounds_widened"]
        assert rounds >= 300 and taken <= rounds + periodic + 2 * widened, (rounds, taken, periodic, widened)
        c.nodes[3].signal(signal.SIGSTOP)
        try:
            for i in range(100):
                assert db.get("k") == 1
            assert db.status()["read_rounds_widened"] > widened     # node 3's rounds, until it counted as silent
        finally:
            c.nodes[3].signal(signal.SIGCONT)
        db.put("k", 2)
        assert db.get("k") == 2


def test_timed_out_write_commits_once_a_majority_returns(cluster):
    c = cluster()
    with c.nodes[1].client(timeout=5.0, retry=Retry(max_tries=1)) as db:
        db.ping()
        for node_id in (2, 3):
            c.nodes[node_id].signal(signal.SIGSTOP)    # at once: the write below reaches the primary first
        with pytest.raises(errors.ReplicationTimeout) as info:
            db.put("maybe", 1)                        # failed when the primary steps down
        rid = info.value.request_id
        for node_id in (2, 3):
            c.nodes[node_id].kill()
        assert "stepping down" in c.nodes[1].log()
        c.start(2)        # node 1 (lowest id, longest log) is elected again and commits the entry
        assert c.wait_primary(10) == 1
        db.retry = Retry(max_tries=20, deadline=10)
        assert db.outcome(rid) == "committed"
        assert db.get("maybe") == 1


def test_outcome_after_failover_committed_or_fenced(cluster):
    """A write acknowledged only by a primary that then dies is not_found on the new primary, and
    is fenced: it never appears, even when the old primary comes back with it in its log."""
    c = cluster()
    db = c.client(timeout=2.0, retry=Retry(max_tries=1))
    try:
        db.put("kept", 1)
        for node_id in (2, 3):
            c.nodes[node_id].signal(signal.SIGSTOP)
        with pytest.raises(errors.ReplicationTimeout) as info:
            db.put("lost", 1)
        lost_rid = info.value.request_id
        c.nodes[1].kill()                     # its log holds "lost"; no other node does
        for node_id in (2, 3):
            c.nodes[node_id].kill()
        c.start(2)
        c.start(3)
        assert c.wait_primary(10, among=(2, 3)) == 2
        db.retry = Retry(max_tries=20, deadline=10)
        assert db.outcome(lost_rid) == "not_found"
        c.start(1)                            # rejoins as secondary; its "lost" entry is truncated
        wait_until(lambda: "dropping our entries" in c.nodes[1].log(), 10, message="node 1 truncated 'lost'")
        assert db.outcome(lost_rid) == "not_found"
        assert db.get("lost") is None and stale_get(c.nodes[1], "lost") is None
    finally:
        db.close()


def test_interrupted_snapshot_install_starts_over(cluster, tmp_path):
    conf = tmp_path / "small-log.ini"
    conf.write_text("[cluster]\nlog_retention = 200\n")
    c = cluster(args=["--config", str(conf)])
    with c.client() as db:
        for chunk in range(30):
            db.put_many({f"k{chunk}:{i:04d}": "v" * 200 for i in range(1000)})   # ~30 snapshot chunks
        for i in range(300):
            db.put(f"tail{i}", i)                                                 # push the log past them
        expected = dict(db.scan())
    c.nodes[3].stop()
    # Node 3, on an empty data dir, dies like kill -9 after the third of about 30 chunks.
    node3 = c.start(3, data_dir=tmp_path / "node3-fresh", wait=False,
                    env={"ZMQSTORE_TEST_CRASH_IN_SNAPSHOT": "3"})
    wait_until(lambda: node3.proc.poll() is not None, 20, message="node 3 died during the install")
    assert node3.proc.returncode == 70 and "exiting in the middle of a snapshot install" in node3.log()
    c.start(3, env={})
    wait_until(lambda: all_data(node3) == expected, 30, interval=0.2, message="snapshot installed after restart")
    assert "interrupted" in node3.log()
