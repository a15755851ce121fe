"""Backup and restore (issue 15, docs/OPERATIONS.md): `datastore-cli backup` from a secondary of a
running cluster under write load, restored into a new 3-node cluster started with `--restore` on
every node; the new cluster holds exactly the data at the backup's seq (leader mode) or applied
vector (dynamo mode), elects a primary or agrees at once, takes writes, and a damaged or foreign file
is refused before anything is written."""
import os
import shutil
import subprocess
import sys

from zmqstore import Retry
from zmqstore.testing.load import Writer
from zmqstore.testing.process import Cluster, run_node_command, wait_until

RETRY = Retry(max_tries=40, delay=0.05, max_delay=0.3, deadline=20)


def cli(cluster, node_ids, *args):
    proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *cluster.cli_args(node_ids), *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def state_at(cluster, seq):
    """The cluster's data as of log seq `seq`: every change up to it, replayed from seq 0."""
    data = {}
    with cluster.client(retry=RETRY) as db, db.watch("", from_seq=0) as watcher:
        while watcher.through is None or watcher.through < seq:
            for event in watcher.poll(1.0):
                if event.seq <= seq:
                    if event.deleted:
                        data.pop(event.key, None)
                    else:
                        data[event.key] = event.value
    return data


def test_a_backup_under_write_load_seeds_a_new_cluster_with_the_data_at_its_seq(cluster, tmp_path):
    import json
    old = cluster()
    path = str(tmp_path / "cluster.backup")
    with old.client(retry=RETRY) as db:
        for i in range(300):
            db.put(f"before-{i}", {"i": i, "bytes": bytes([i % 256]) * 3, "float": i / 7, "text": "é€"})
        db.delete("before-7")
    with Writer(old, "during-", RETRY) as writer:
        wait_until(lambda: len(writer.acked) > 200, 20, message="writes under way")
        summary = json.loads(cli(old, [2], "--json", "backup", path))     # from a secondary
        at_backup = len(writer.acked)
        wait_until(lambda: len(writer.acked) > at_backup + 200, 20, message="more writes after the backup")
    assert summary["source"] == 2 and summary["mode"] == "leader" and os.stat(path).st_mode & 0o777 == 0o600
    expected = state_at(old, summary["seq"])
    assert summary["count"] == len(expected) and "before-7" not in expected and len(expected) >= 300
    assert any(k.startswith("during-") for k in expected)       # taken while the writer ran
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    new = Cluster(tmp_path / "new", size=3, args=["--restore", path])
    try:
        new.start_all()
        primary = new.wait_primary(20)
        assert new.nodes[primary].status()["term"] == summary["term"] + 1    # the genesis election
        for node in new.nodes.values():
            wait_until(lambda: (node.status() or {}).get("voter"), 15, message=f"node {node.node_id} a voter")
            with node.client(retry=RETRY) as db:
                assert dict(db.scan(stale=True)) == expected
            assert "restored %d keys at seq %d" % (summary["count"], summary["seq"]) in node.log()
        with new.client(retry=RETRY) as db:
            db.put("after-restore", 1)
            assert db.get("before-3") == {"i": 3, "bytes": b"\x03" * 3, "float": 3 / 7, "text": "é€"}
        # Restarted with the same command line, a node keeps its state: the flag is ignored.
        node3 = new.nodes[next(i for i in (3, 2, 1) if i != primary)]
        node3.stop()
        before = node3.log()
        new.start(node3.node_id)
        with node3.client(retry=RETRY) as db:
            wait_until(lambda: db.get("after-restore", stale=True) == 1, 15, message="the restarted node current")
        assert "--restore %s ignored" % path in node3.log()[len(before):]
        # Its disk lost and restored again from the old file, with the cluster gone on: it must not
        # take part in the restore's election (it could vote twice in a term), but catch up as a learner.
        node3.stop()
        shutil.rmtree(node3.data_dir)
        before = node3.log()
        new.start(node3.node_id)
        with node3.client(retry=RETRY) as db:
            wait_until(lambda: db.get("after-restore", stale=True) == 1, 15, message="the re-restored node current")
        log = node3.log()[len(before):]
        assert "voted for" not in log and "starting an election" not in log
        assert "past its restore point" in log or "following primary %d" % primary in log
        assert new.wait_primary(5) == primary
    finally:
        new.stop_all()


def versions_of(node, keys):
    """{key: sorted [(value, deleted, origin, seq)]} of each key's versions on `node` (absent keys left out)."""
    out = {}
    with node.client(retry=RETRY) as db:
        for key in keys:
            versions = [(v.value, v.deleted, v.origin, v.seq) for v in db.get_versions(key).siblings]
            if versions:
                out[key] = sorted(versions, key=repr)
    return out


def test_a_dynamo_backup_under_write_load_seeds_a_new_cluster_at_its_applied_vector(cluster, tmp_path):
    """Every key is written once (or all its writes precede the backup), so the state at the backup's
    applied vector is the converged state's versions whose dots the vector covers."""
    import json
    old = cluster(mode="dynamo")
    path = str(tmp_path / "dynamo.backup")
    for node_id in (1, 2, 3):          # three origins in the applied vector
        with old.nodes[node_id].client(retry=RETRY) as db:
            for i in range(node_id - 1, 200, 3):
                db.put(f"before-{i}", {"i": i, "bytes": bytes([i % 256]) * 3, "float": i / 7, "text": "é€"})
    wait_until(old.dynamo_converged, 30, message="the old cluster converged")
    with old.nodes[1].client(retry=RETRY) as db:
        db.delete("before-7")
        unseen = db.get_versions("siblings").context
        db.put("siblings", "a", context=unseen)
        db.put("siblings", "b", context=unseen)       # neither saw the other: both kept
        db.put("conflicted", "written", context=unseen)
        db.delete("conflicted", context=unseen)       # a delete that wins over a concurrent write
        assert db.get("conflicted") is None and db.get_versions("conflicted").conflict
    with Writer(old, "during-", RETRY) as writer:
        wait_until(lambda: len(writer.acked) > 200, 20, message="writes under way")
        summary = json.loads(cli(old, [2], "--json", "backup", path))     # from node 2, writes on all
        at_backup = len(writer.acked)
        wait_until(lambda: len(writer.acked) > at_backup + 200, 20, message="more writes after the backup")
    assert summary["source"] == 2 and summary["mode"] == "dynamo" and os.stat(path).st_mode & 0o777 == 0o600
    wait_until(old.dynamo_converged, 30, message="the old cluster converged")
    vector = {origin: seq for origin, seq in summary["seq"]}
    assert len([seq for seq in vector.values() if seq]) >= 3
    with old.nodes[1].client(retry=RETRY) as db:
        keys = [key for key, _value in db.scan(stale=True)] + ["before-7", "conflicted"]
    expected = {}
    for key, versions in versions_of(old.nodes[1], keys).items():
        at = [v for v in versions if v[3] <= vector.get(v[2], 0)]
        if any(not deleted for _value, deleted, _origin, _seq in at):
            expected[key] = at
    assert summary["count"] == len(expected) and "before-7" not in expected and len(expected) >= 200
    assert len(expected["siblings"]) == 2 and len(expected["conflicted"]) == 2
    during = [k for k in expected if k.startswith("during-")]
    assert during and len(during) < len(writer.acked)         # taken while the writer ran

    new = Cluster(tmp_path / "new", size=3, mode="dynamo", args=["--restore", path])
    try:
        new.start_all()
        wait_until(new.dynamo_converged, 10, message="the restored nodes agreeing")
        for node in new.nodes.values():
            with node.client(retry=RETRY) as db:
                assert sorted(key for key, _value in db.scan(stale=True)) == sorted(set(expected) - {"conflicted"})
                assert db.get("conflicted") is None         # the delete still wins
            assert versions_of(node, list(expected) + ["before-7"]) == expected
            assert "restored %d keys at applied vector" % summary["count"] in node.log()
        with new.nodes[3].client(retry=RETRY) as db:
            resolved = db.get_versions("siblings")
            db.put("siblings", "resolved", context=resolved.context)
            db.put("after-restore", 1)
            assert db.get("before-3") == {"i": 3, "bytes": b"\x03" * 3, "float": 3 / 7, "text": "é€"}
        with new.nodes[1].client(retry=RETRY) as db:
            wait_until(lambda: db.get("after-restore") == 1 and not db.get_versions("siblings").conflict, 10,
                       message="node 3's writes on node 1")
        # A node that joins later finds the old origins' entries trimmed and takes their data by
        # anti-entropy, as after any garbage collection.
        new.args = []                 # node 4 joins: no --restore
        new.add_node(4)
        new.start(4, wait=False)
        new.nodes[4].wait_ready(20)
        wait_until(new.dynamo_converged, 30, message="the joined node converged")
        with new.nodes[4].client(retry=RETRY) as db:
            assert db.get("after-restore") == 1 and db.get("siblings") == "resolved"
            assert dict(db.scan(stale=True)).keys() == (set(expected) - {"conflicted"}) | {"after-restore"}
    finally:
        new.stop_all()


def test_a_dynamo_backup_may_hold_versions_ahead_of_its_applied_vector(nodes, tmp_path):
    """A node may hold a version it took by anti-entropy or read repair before applying its
    origin's entry: the restored applied vector covers it (a file written as a node would)."""
    import datetime
    from zmqstore.protocol import files, pack_value
    origin = (7 << 32) | 0x1234
    hlc = int(datetime.datetime.now().timestamp() * 1000) << 16
    path = tmp_path / "crafted.backup"
    with open(path, "wb") as f:
        writer = files.BackupWriter(f, {"kind": "backup", "mode": "dynamo", "seq": [[origin, 5]], "term": 0,
                                        "members": [], "source": 7, "node_version": "0", "created": "now"})
        writer.page([[b"ahead", [[pack_value("v9"), origin, 9, hlc]]],
                     [b"within", [[pack_value("v4"), origin, 4, hlc - 1]]]])
        writer.finish()
    node = nodes(args=["--mode", "dynamo", "--restore", str(path)])
    with node.client(retry=RETRY) as db:
        assert [(v.value, v.seq) for v in db.get_versions("ahead").siblings] == [("v9", 9)]
        assert db.get("within") == "v4"
        db.put("ahead", "new")          # supersedes the restored version: one sibling, this node's
        assert [v.value for v in db.get_versions("ahead").siblings] == ["new"]
        assert db.status()["applied"][f"7:{0x1234:08x}"] == 9


def test_a_restore_that_did_not_finish_is_done_again_and_a_start_without_the_file_refused(nodes, tmp_path):
    """The data dir is marked before anything is loaded: started without --restore it refuses
    (its data is incomplete); started with it, the restore is done again from the start."""
    import datetime
    from zmqstore.protocol import files, pack_value
    origin, hlc = (1 << 32) | 1, int(datetime.datetime.now().timestamp() * 1000) << 16
    good, bad = tmp_path / "good.backup", tmp_path / "bad.backup"
    for path, last in ((good, [b"k2", [[pack_value(2), origin, 2, hlc]]]), (bad, [b"k2", "not versions"])):
        with open(path, "wb") as f:
            writer = files.BackupWriter(f, {"kind": "backup", "mode": "dynamo", "seq": [[origin, 2]], "term": 0,
                                            "members": [], "source": 1, "node_version": "0", "created": "now"})
            writer.page([[b"k1", [[pack_value(1), origin, 1, hlc]]], last])
            writer.finish()
    data_dir = tmp_path / "restored"
    args = ["--node-id", "9", "--port", "19990", "--mode", "dynamo", "--data-dir", str(data_dir)]
    code, output = run_node_command([*args, "--restore", str(bad)])
    assert code == 2 and "item 1 of the backup" in output, output
    code, output = run_node_command(args)
    assert code == 2 and "restore from a backup that did not finish" in output, output
    node = nodes(node_id=9, args=["--mode", "dynamo", "--restore", str(good)], data_dir=data_dir)
    with node.client(retry=RETRY) as db:
        assert (db.get("k1"), db.get("k2")) == (1, 2)


def test_a_damaged_or_foreign_backup_is_refused_before_anything_is_written(cluster, tmp_path):
    old = cluster()
    path = str(tmp_path / "b")
    with old.client(retry=RETRY) as db:
        for i in range(50):
            db.put(f"k{i}", i)
    cli(old, [1], "backup", path)
    raw = open(path, "rb").read()
    cases = {"cut": raw[:len(raw) // 2], "flipped": raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1])
             + raw[len(raw) // 2 + 1:], "foreign": b"\x93\x01\x02\x03" + raw}
    for name, content in cases.items():
        bad = tmp_path / f"bad-{name}"
        bad.write_bytes(content)
        data_dir = tmp_path / f"dir-{name}"
        code, output = run_node_command(["--node-id", "9", "--port", "19990", "--data-dir", str(data_dir),
                                         "--restore", str(bad)])
        assert code == 2 and "backup" in output and "Traceback" not in output, (name, output)
    code, output = run_node_command(["--node-id", "9", "--port", "19990", "--mode", "dynamo", "--data-dir",
                                     str(tmp_path / "dir-dynamo"), "--restore", path])
    assert code == 2 and "a leader-mode backup cannot seed a dynamo-mode node" in output, output
