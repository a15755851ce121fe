"""Change feeds with real processes (issue 14, docs/WATCH.md): a watcher across a kill -9 of the
primary, resuming from a seq, `compacted` and the snapshot join, a watcher that stops reading, and
watches checked like any request."""
import json
import subprocess
import sys
import time

import pytest

from zmqstore import Client, errors, protocol
from zmqstore.leader.shared_entry import SHARED_ENTRY_BYTES
from zmqstore.testing.load import Writer, put_pipelined
from zmqstore.testing.process import wait_until

from test_bad_input import RawClient
from test_failover import FAILOVER_RETRY, status_of


def drain(watcher, until, timeout=20):
    """Events from `watcher` until `until(events)` holds (bounded by `timeout`), starting with those
    it holds already."""
    events = watcher.poll(0)
    end = time.monotonic() + timeout
    while not until(events):
        if time.monotonic() > end:
            raise TimeoutError(f"watch: condition not reached within {timeout} s ({len(events)} events)")
        events.extend(watcher.poll(0.5))
    return events


def assert_in_order_once(events):
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs), "events out of seq order"
    keys = [e.key for e in events]
    assert len(keys) == len(set(keys)), "a change delivered twice"


def test_a_watcher_across_a_kill_9_of_the_primary_sees_every_acknowledged_write_once_in_order(cluster):
    c = cluster()
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("other", 0)                      # not under the prefix: never delivered
        with db.watch("w") as watcher:
            with Writer(c, "w", FAILOVER_RETRY) as w:
                w.wait_for(300)
                c.nodes[1].kill()
                w.wait_for(300, timeout=30)     # after the failover
            final = status_of(c.nodes[c.wait_primary(10, among=(2, 3))])["commit_seq"]
            events = drain(watcher, lambda ev: watcher.through is not None and watcher.through >= final)
            assert watcher.reconnections >= 1
    assert_in_order_once(events)
    seen = {e.key: e.value for e in events}
    missing = [k for k in w.acked if k not in seen]
    assert not missing, f"{len(missing)} acknowledged writes never delivered, e.g. {missing[:3]}"
    assert all(seen[k] == v for k, v in w.acked.items())
    # Nothing delivered that was not written: every key is the writer's, with the value it wrote
    # (writes whose reply was lost in the failover may be there too: they committed).
    assert all(k.startswith("w") and v == int(k[1:]) // 16 * 16 for k, v in seen.items())


def test_a_watcher_that_resumes_from_its_last_seq_misses_nothing(cluster):
    c = cluster()
    with c.client() as db:
        with db.watch("r") as first:
            put_pipelined(db, {f"r{i}": i for i in range(100)})
            got = drain(first, lambda ev: len(ev) >= 100)
            through = first.through
        db.delete("r5")
        db.put_many({"r200": 200, "r201": 201, "x": 0})
        put_pipelined(db, {f"r{i}": -i for i in range(10)})
        with db.watch("r", from_seq=through) as second:
            rest = drain(second, lambda ev: len(ev) >= 13)
            assert not second.poll(1.5)         # and nothing else: progress only
    assert [e.value for e in got] == list(range(100))
    assert (rest[0].key, rest[0].deleted, rest[0].value) == ("r5", True, None)
    assert rest[1].seq == rest[2].seq and {rest[1].key, rest[2].key} == {"r200", "r201"}   # one entry
    assert [e.value for e in rest[3:]] == [-i for i in range(10)]
    assert rest[0].seq > through


def test_compacted_then_the_snapshot_joins_the_changes_at_one_seq(cluster, tmp_path):
    conf = tmp_path / "small-log.ini"
    conf.write_text("[cluster]\nlog_retention = 10\n")
    c = cluster(args=["--config", str(conf)])
    with c.client() as db:
        put_pipelined(db, {f"s{i:04d}": i for i in range(2000)})
        first = db.status()["first_seq"]
        # Trimmed past seq 6: 2,000 pipelined puts take at least 2000 / 64 entries (64 in flight; the
        # writes of an iteration share one), of which 10 are kept (a snapshot the primary served a
        # secondary that followed late holds its log for 10 s from the snapshot's seq).
        assert first > 6
        with pytest.raises(errors.Compacted) as caught:
            db.watch("s", from_seq=5)
        assert caught.value.min_from == first - 1
        last = db.status()["commit_seq"]
        with db.watch("s", from_seq=caught.value.min_from) as ok:   # the position it named is served
            got = drain(ok, lambda ev: ok.through >= last)
        seqs = [e.seq for e in got]     # every entry's changes, in seq order (one entry's share its seq)
        assert seqs == sorted(seqs) and sorted(set(seqs)) == list(range(first, last + 1))
        with db.watch("s", snapshot=True) as snap:
            state = drain(snap, lambda ev: snap.snapshot_seq is not None)
            base = snap.snapshot_seq
            assert {e.seq for e in state} == {base} and len(state) == 2000
            db.put("s0000", "changed")
            db.delete("s0001")
            db.put("s9999", "new")
            after = drain(snap, lambda ev: len(ev) >= 3)
        assert all(e.seq > base for e in after)
        joined = {e.key: e.value for e in state}
        for e in after:
            if e.deleted:
                joined.pop(e.key)
            else:
                joined[e.key] = e.value
        assert joined == dict(db.scan(prefix="s"))


def test_a_watcher_that_stops_reading_stays_within_its_budget_and_resumes(cluster):
    c = cluster()
    window = 64 << 10
    value = "v" * 20_000
    with c.client() as db:
        with db.watch("big", window=window) as watcher:
            watcher.poll(0.5)                   # started
            put_pipelined(db, {f"big{i:04d}": value for i in range(400)})    # 8 MB of changes
            # The watcher reads nothing: the node sent it its window and then paused it.
            wait_until(lambda: status_of(c.nodes[1]).get("watches", {}).get("paused") == 1, 10,
                       message="watcher paused")
            watches = status_of(c.nodes[1])["watches"]
            # + one entry: the writes of an iteration share one, of 64 KiB and one write at most
            assert watches["open"] == 1 and watches["in_flight_max"] <= window + SHARED_ENTRY_BYTES + (32 << 10)
            for _ in range(10):                 # writers are not slowed: a put still commits at once
                started = time.monotonic()
                db.put("other", 1)
                assert time.monotonic() - started < 1.0
            events = drain(watcher, lambda ev: len(ev) >= 400, timeout=30)
    assert [e.key for e in events] == [f"big{i:04d}" for i in range(400)]
    assert all(e.value == value for e in events)


def test_watches_are_checked_like_any_request(cluster):
    c = cluster()
    with c.client() as db:
        db.put("a", 1)
    # A secondary refuses a watch unless stale: not_primary, followed by the client.
    with Client(c.nodes[2].named_endpoint if c.keys else c.nodes[2].endpoint,
                **c.keys.client_kwargs() if c.keys else {}) as db2:
        with db2.watch("a") as w:
            w.poll(1)
            assert w.connection.endpoint == c.nodes[1].endpoint
        with db2.watch("", stale=True) as w:
            w.poll(1)
            assert w.connection.endpoint == c.nodes[2].endpoint and w.through >= 1
    # Raw frames: bad positions and credit are refused; WATCH_CREDIT for no watch says so.
    raw = RawClient(c.nodes[1])
    try:
        for rid, args in ((1, (b"", [[1, 2]], False, 100, False)),     # a vector in leader mode
                          (2, (b"", None, False, 0, False)),           # no credit
                          (3, (b"", 5, True, 100, False)),             # a position and a snapshot
                          (4, (b"", 1 << 40, False, 100, False))):     # beyond the primary's log
            reply = protocol.decode_reply(raw.ask([protocol.encode_request("WATCH", b"raw", rid, rid, *args)])[-1])
            assert reply.request_id == rid and not reply.ok and reply.result[0] == "bad_argument", reply
        reply = protocol.decode_reply(raw.ask([protocol.encode_request("WATCH_CREDIT", b"raw", 9, 9, 77, 1000)])[-1])
        assert reply.request_id == 77 and reply.result[0] == "unavailable"
    finally:
        raw.close()


def test_datastore_cli_watch(nodes):
    node = nodes()
    with node.client() as db:
        db.put("c1", {"a": 1})
        db.put("other", 1)
        db.delete("c1")
        db.put("c2", "two")
    base = [sys.executable, "-c", "from zmqstore.cli import cli_entry; cli_entry()", *node.cli_args()]
    out = subprocess.run([*base, "watch", "c", "--from", "0", "--count", "3"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines() == ['1\tc1\t{"a": 1}', "3\tc1\t(deleted)", '4\tc2\t"two"']
    out = subprocess.run([*base, "--json", "watch", "c", "--snapshot", "--count", "1"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout) == {"seq": 4, "key": "c2", "value": "two", "deleted": False}
    # From now: a change made while it runs is printed as it happens.
    proc = subprocess.Popen([*base, "watch", "live", "--count", "1"], stdout=subprocess.PIPE, text=True)
    try:
        with node.client() as db:
            wait_until(lambda: db.status()["watches"]["open"] == 1, 10, message="the CLI's watch is open")
            db.put("live", 7)
        assert proc.communicate(timeout=20)[0] == "5\tlive\t7\n" and proc.returncode == 0
    finally:
        proc.kill()
        proc.wait()


def test_dynamo_a_watch_sees_every_change_its_node_applies_with_dots_and_siblings(cluster):
    c = cluster(mode="dynamo")
    kw = c.keys.client_kwargs() if c.keys else {}
    ep = {i: (n.named_endpoint if c.keys else n.endpoint) for i, n in c.nodes.items()}
    with Client(ep[1], **kw) as db1, Client(ep[2], **kw) as db2, Client(ep[3], **kw) as db3:
        db1.put("d0", "before")
        with db2.watch("d") as watcher:
            dots = {db1.put("d1", 1), db3.put("d3", 3), db2.put("d2", 2)}
            assert db1.delete("d0")                     # on the node that took the put: it has it
            # A conflict: a put with an old context does not supersede the one made meanwhile.
            old = db1.get_versions("dc")
            db1.put("dc", "first")
            db1.put("dc", "second", context=old.context)
            def all_there(ev):      # every write above (node 2 may also show d0's put, if it came late)
                seen = {(e.key, e.value) for e in ev}
                return {("d1", 1), ("d2", 2), ("d3", 3), ("d0", None), ("dc", "first"), ("dc", "second")} <= seen
            events = drain(watcher, all_there)
            with pytest.raises(errors.BadArgument):
                db2.watch("d", from_seq=3)              # leader mode's position
            resume = watcher.resume_seq
        by_key = {}
        for e in events:
            by_key.setdefault(e.key, []).append(e)
        assert {e.dot for k in ("d1", "d2", "d3") for e in by_key[k]} == dots     # every origin, its dot
        assert by_key["d0"][-1].deleted and by_key["d0"][-1].value is None
        second = [e for e in by_key["dc"] if e.value == "second"][0]
        assert sorted(v.value for v in second.siblings) == ["first", "second"]    # the watcher sees the conflict
        # Resumed from its position, a new watcher gets only what came after, once.
        db3.put("d4", 4)
        with db2.watch("d", from_vector=resume) as again:
            later = drain(again, lambda ev: len(ev) >= 1)
            assert again.poll(1.5) == []
        assert [(e.key, e.value) for e in later] == [("d4", 4)]
        # The snapshot join: every live key under the prefix, then the changes after it.
        with db2.watch("d", snapshot=True) as snap:
            state = drain(snap, lambda ev: snap.snapshot_seq is not None)
            assert {e.key for e in state} == {"d1", "d2", "d3", "d4", "dc"}
            db1.put("d5", 5)
            assert [(e.key, e.value) for e in drain(snap, lambda ev: len(ev) >= 1)] == [("d5", 5)]
