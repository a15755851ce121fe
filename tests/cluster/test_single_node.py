"""A real standalone node process: every client operation, restart, kill -9 and clean shutdown."""
import hashlib
import os
import signal
import subprocess
import sys

import pytest

from zmqstore import Client, errors
from zmqstore.datadir import DB_DIR
from zmqstore.storage import recycled_wal_files
from zmqstore.testing.load import put_pipelined
from zmqstore.testing.process import wait_until


def test_every_operation(node):
    with node.client() as db:
        assert db.ping() == 1
        assert db.get("missing") is None and db.get("missing", default=0) == 0
        value = {"name": "ada", "tags": ["x", 1, 2.5, None, True], "raw": b"\x00\xff", "n": {"deep": {}}}
        db.put("user:1", value)
        assert db.get("user:1") == value
        db.put(b"\xffbin", 7)
        assert db.get(b"\xffbin") == 7
        assert db.delete("user:1") is True and db.delete("user:1") is False
        assert db.get("user:1") is None
        assert db.cas("n", None, 1) is True and db.cas("n", None, 5) is False
        assert db.cas("n", 1, 2) is True and db.cas("n", 1, 3) is False and db.get("n") == 2
        db.put_many({"a": 1, "b": [2], "c": "three"})
        assert [db.get(k) for k in "abc"] == [1, [2], "three"]
        assert list(db.scan(start="a", end="c")) == [("a", 1), ("b", [2])]
        assert list(db.scan(prefix="user:")) == []
        status = db.status()
        assert status["node_id"] == 1 and status["role"] == "primary" and status["mode"] == "leader"
        assert status["last_seq"] == status["commit_seq"] == 6  # put, put, del, cas, cas, put_many


def test_pipeline_results_in_order(node):
    with node.client() as db:
        p = db.pipeline(max_in_flight=64)
        for i in range(500):
            p.put(f"k{i:04d}", i)
        p.get("k0007").delete("k0008").cas("k0009", 9, "nine").get("k0009").get("nope", default="d")
        results = p.execute()
        assert results[:500] == [None] * 500
        assert results[500:] == [7, True, True, "nine", "d"]
        assert db.get("k0499") == 499 and db.get("k0008") is None
        p = db.pipeline()
        p.put("ok", 1).put_many({}).get("ok")  # put_many of nothing is a bad request
        results = p.execute(raise_on_error=False)
        assert results[0] is None and isinstance(results[1], errors.BadArgument) and results[2] == 1
        p.put("x", 1).put_many({})
        with pytest.raises(errors.BadArgument):
            p.execute()


def test_scan_pages_through_large_ranges(node):
    with node.client() as db:
        big = "v" * 50_000
        db.put_many({f"big{i:03d}": big for i in range(60)})            # about 3 MB: several byte-capped pages
        db.put_many({f"small{i:05d}": i for i in range(2500)})         # several item-capped pages
        assert [k for k, _ in db.scan(prefix="big")] == [f"big{i:03d}" for i in range(60)]
        smalls = list(db.scan(prefix="small"))
        assert smalls == [(f"small{i:05d}", i) for i in range(2500)]
        # In a pipeline a scan's first page travels with the rest and later pages follow: the
        # result is every item, in order, within its limit; other results keep their places.
        p = db.pipeline()
        p.scan(prefix="small").get("big000").scan(prefix="small", limit=1500).scan(prefix="none").ping()
        every, first_big, limited, empty, node_id = p.execute()
        assert every == smalls and first_big == big and limited == smalls[:1500]
        assert empty == [] and node_id == 1
        assert len(list(db.scan(prefix="small", limit=1234))) == 1234
        assert len(list(db.scan(limit=0))) == 0


def test_restart_keeps_all_data(nodes):
    n = nodes(args=["--log-level", "DEBUG"])
    with n.client() as db:
        db.put_many({f"k{i}": i for i in range(1000)})
        db.delete("k5")
        before = list(db.scan())
        seq = db.status()["commit_seq"]
    assert n.stop() == 0
    n.start()
    with n.client() as db:
        assert list(db.scan()) == before and db.get("k5") is None
        assert db.status()["commit_seq"] == seq


def test_kill_9_keeps_every_acknowledged_write(node):
    acked = {}
    with node.client() as db:
        acked.update(put_pipelined(db, {f"k{i}": i for i in range(3000)}))
        for i in range(200):  # sequential writes, each acknowledged on its own
            db.put(f"s{i}", i)
            acked[f"s{i}"] = i
    node.kill()
    assert node.proc.returncode == -signal.SIGKILL
    node.start()
    with node.client() as db:
        assert dict(db.scan()) == acked


def test_kill_9_keeps_every_write_acknowledged_into_a_reused_write_ahead_log(node):
    """On a file system of 1 GiB or more RocksDB reuses an obsolete WAL file (docs/STORAGE.md): a
    synced write overwrites the file's old records instead of growing it. Writes acknowledged
    while a reused file is the log's tail survive kill -9, and so does everything before them."""
    if not recycled_wal_files(node.data_dir):
        pytest.skip("the test's file system is under 1 GiB: no WAL file is reused there (docs/STORAGE.md)")
    def reused():
        with open(os.path.join(node.data_dir, DB_DIR, "LOG")) as f:     # RocksDB's own log says so
            return "reusing log" in f.read()

    big = os.urandom(64 << 10)
    acked, chunk = {}, 0
    with node.client(timeout=10.0) as db:
        # 32 MiB of memtables switch the WAL: the first switch starts a new file, a later one
        # reuses the file the first made obsolete
        while not reused():
            assert chunk < 30, "RocksDB reused no WAL file after 300 MiB of writes"
            acked.update(put_pipelined(db, {f"b{chunk}-{i}": big for i in range(160)}))
            chunk += 1
        for i in range(300):    # sequential writes, each synced into the reused file
            db.put(f"s{i}", i)
            acked[f"s{i}"] = i
    node.kill()
    assert node.proc.returncode == -signal.SIGKILL
    node.start()
    digest = hashlib.sha256(big).digest()
    with node.client(timeout=10.0) as db:
        for key, value in acked.items():
            got = db.get(key)
            assert (hashlib.sha256(got).digest() == digest) if value is big else got == value, key


def test_sigterm_shuts_down_cleanly(node):
    with node.client() as db:
        db.put("k", 1)
    node.signal(signal.SIGTERM)
    wait_until(lambda: not node.alive(), 10, message="node exit after SIGTERM")
    assert node.proc.returncode == 0
    assert "stopped cleanly" in node.log()
    node.start()  # the RocksDB lock was released
    with node.client() as db:
        assert db.get("k") == 1


def test_sigint_shuts_down_cleanly(node):
    node.signal(signal.SIGINT)
    wait_until(lambda: not node.alive(), 10, message="node exit after SIGINT")
    assert node.proc.returncode == 0


def test_retry_after_lost_reply_is_applied_once(node):
    """A client that times out resends with the same request id; the node answers from its outcome table."""
    with node.client() as db:
        db.put("n", 1)
        body_rid = db.next_request_id()
        from zmqstore import protocol
        body = protocol.encode_request("CAS", db.client_id, body_rid, body_rid, b"n", protocol.pack_value(1),
                                       protocol.pack_value(2))
        first = db.connection.attempt(body, body_rid)
        again = db.connection.attempt(body, body_rid)
        assert first == again == (True, first[1])
        assert db.get("n") == 2 and db.status()["commit_seq"] == first[1]


def test_client_times_out_on_a_dead_endpoint(tmp_path):
    from zmqstore.testing.process import free_port
    from zmqstore import Retry
    with Client(f"127.0.0.1:{free_port()}", timeout=0.2, retry=Retry(max_tries=2, deadline=2)) as db:
        with pytest.raises(errors.ConnectionTimeout):
            db.put("k", 1)


def test_datastore_cli(node):
    def cli(*args):
        proc = subprocess.run([sys.executable, "-c", "from zmqstore.cli import cli_entry; cli_entry()",
                               *node.cli_args(), *args], capture_output=True, text=True, timeout=30)
        return proc.returncode, proc.stdout.strip()

    assert cli("put", "greeting", "hello") == (0, "OK")
    assert cli("put", "--json-value", "doc", '{"a": [1, 2]}') == (0, "OK")
    assert cli("get", "greeting") == (0, "hello")
    assert cli("--json", "get", "doc") == (0, '{"a": [1, 2]}')
    assert cli("get", "nope")[0] == 1
    assert cli("scan", "--prefix", "g") == (0, 'greeting\t"hello"')
    assert cli("delete", "greeting") == (0, "deleted")
    assert cli("delete", "greeting") == (1, "(absent)")
    code, out = cli("status")
    assert code == 0 and "primary" in out and "commit_seq" in out
    code, out = cli("--json", "status")
    assert code == 0 and '"node_id": 1' in out
    assert cli("put", "--json-value", "bad", "{nope")[0] == 2


def test_cas_refused_in_dynamo_mode_with_its_request_id(nodes):
    n = nodes(args=["--mode", "dynamo"])
    with n.client(timeout=2.0) as db:
        with pytest.raises(errors.UnsupportedOperation):
            db.cas("k", None, 1)
        db.put("k", 1)
        assert db.get("k") == 1


def test_retry_across_a_pause_is_applied_once(node):
    """SIGSTOP the node, let the client time out and resend the same request id on a new connection,
    then SIGCONT: whichever copies reach the node, the CAS applies once and reports success."""
    import threading
    from zmqstore import Retry
    with node.client() as db:
        db.put("n", 1)
        before = db.status()["commit_seq"]
    with node.client(timeout=0.3, retry=Retry(max_tries=30, delay=0.05, max_delay=0.2, deadline=20)) as db:
        node.signal(signal.SIGSTOP)
        resume = threading.Timer(1.0, node.signal, args=(signal.SIGCONT,))
        resume.start()
        try:
            assert db.cas("n", 1, 2) is True
        finally:
            resume.join()
            node.signal(signal.SIGCONT)
        assert db.get("n") == 2
        assert db.status()["commit_seq"] == before + 1
