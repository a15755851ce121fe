"""The dynamo-mode engine on real storage in tmp_path, without sockets: local writes and group
commit, entries of other origins applied in order, restart, garbage collection."""
import pytest

from zmqstore import config, errors, faults, protocol, sends
from zmqstore.dynamo import DynamoEngine, log_key
from zmqstore.dynamo.antientropy import range_items, tree_hashes
from zmqstore.limits import SCAN
from zmqstore.sends import Sends
from zmqstore.storage import Storage

from test_engine import Caller

V = protocol.pack_value


@pytest.fixture
def make_engine(tmp_path):
    opened = []

    def make(node_id=1, name="d"):
        cfg = config.resolve(None, {"node_id": node_id, "mode": "dynamo", "data_dir": str(tmp_path / name),
                                    "log_retention": 1})
        st = Storage.open(cfg.data_dir, cfg.node_id, cfg.mode, fsync=cfg.fsync)
        opened.append(st)
        return DynamoEngine(st, cfg, "test")
    yield make
    for st in opened:
        if st._db is not None:
            st.close()


def entries_of(eng, origin):
    return [raw for _k, raw in eng.storage.iter_cf("log", log_key(origin, 0), log_key(origin + 1, 0))]


def test_writes_wait_for_their_batch_and_reads_see_them(make_engine):
    eng = make_engine()
    call = Caller(eng)
    assert call("PUT", b"k", V(1)) == (True, 1, eng.origin)    # the reply names the version's dot
    # waits for the flush (batch 1); its entry is seq 1 of this run's origin
    assert call.wait_seq == (1, ((eng.origin, 1),)) and eng.durable_batches == 0
    assert call("GET", b"k", False) == (V(1), False) and call.wait_seq == (1, ())
    assert call("PUT", b"k", V(2), request_id=1) == (True, 1, eng.origin)  # a retry: first outcome
    eng.flush()
    assert eng.durable_batches == 1 and eng.durable_applied[eng.origin] == 1
    entries, moved, synced = eng.take_published()
    assert [o for o, _raw in entries] == [eng.origin] and moved == set() and synced == {eng.origin}
    assert eng.take_published() == ([], set(), set())
    assert call("GET", b"k", False) == (V(1), False) and call.wait_seq == (0, ())
    with pytest.raises(errors.UnsupportedOperation, match="dynamo"):
        call("CAS", b"k", None, V(3))
    assert call("DEL", b"nothing") == (False, 0, 0)


def test_entries_of_another_origin_apply_in_order_once(make_engine):
    a, b = make_engine(1, "a"), make_engine(2, "b")
    call = Caller(a)
    call("PUT", b"x", V("from a"))
    call("PUT", b"x", V("again"))
    a.flush()
    raws = entries_of(a, a.origin)
    assert b.apply_remote(a.origin, raws[1:]) == (0, True)      # a gap: nothing applied
    assert b.apply_remote(a.origin, raws) == (2, False)
    assert b.apply_remote(a.origin, raws) == (0, False)         # again: nothing
    b.flush()
    assert b.take_published() == ([], {a.origin}, {a.origin})  # acknowledged to a's node (DACK)
    assert Caller(b)("GET", b"x", False) == (V("again"), False)
    assert b.digest == a.digest                                  # same data, same digest
    served, first = b.read_entries(a.origin, 2)
    assert served == raws[1:] and first == 1


def test_concurrent_writes_are_siblings_with_a_deterministic_winner(make_engine):
    a, b = make_engine(1, "a"), make_engine(2, "b")
    call_a, call_b = Caller(a), Caller(b)
    call_a("PUT", b"k", V("a"))
    call_b("PUT", b"k", V("b"))
    a.flush()
    b.flush()
    a.apply_remote(b.origin, entries_of(b, b.origin))
    b.apply_remote(a.origin, entries_of(a, a.origin))
    a.flush()
    b.flush()
    va, vb = call_a("GET", b"k", False), call_b("GET", b"k", False)
    assert va == vb and va[1] is True and a.digest == b.digest and a.conflicts == 1
    siblings, ctx = call_a("GET_VERSIONS", b"k")
    assert sorted(s[0] for s in siblings) == [V("a"), V("b")]
    call_a("PUT_CTX", b"k", V("merged"), ctx)
    assert call_a("GET", b"k", False) == (V("merged"), False)


def test_restart_keeps_data_and_takes_a_new_origin(make_engine, tmp_path):
    eng = make_engine()
    call = Caller(eng)
    call("PUT", b"k", V(1))
    call("DEL", b"k")
    eng.flush()
    old_origin, digest, hlc = eng.origin, eng.digest, eng.hlc.last
    eng.storage.close()
    again = make_engine()
    assert again.origin != old_origin and again.applied[old_origin] == 2
    assert again.digest == digest and again.tombstones == 1 and again.hlc.last >= hlc
    assert Caller(again)("GET", b"k", False) == (None, False)


def test_tombstones_and_log_go_once_every_node_applied_them(make_engine):
    eng = make_engine()
    call = Caller(eng)
    call("PUT", b"k", V(1))
    call("DEL", b"k")
    call("PUT", b"other", V(2))
    eng.flush()
    assert eng.collect_garbage({eng.origin: 1}) == 0            # not every node has the delete
    assert eng.collect_garbage({eng.origin: 3}) == 1
    eng.flush()
    assert eng.tombstones == 0 and Caller(eng)("GET_VERSIONS", b"k")[0] == []
    # log_retention = 1: entries every node applied, but the last, are trimmed
    assert eng.first[eng.origin] == 3 and len(entries_of(eng, eng.origin)) == 1
    assert eng.read_entries(eng.origin, 1) == ([], 3)       # trimmed: nothing, never a range with a hole
    assert eng.read_entries(eng.origin, 3) == ([entries_of(eng, eng.origin)[0]], 3)


def repair(dst, src):
    """What Replication does over the wire: compare hashes, pull differing buckets page by page."""
    mine, theirs = tree_hashes(dst.buckets), tree_hashes(src.buckets)
    for g in (g for g in range(len(theirs)) if theirs[g] != mine[g]):
        ours, remote = tree_hashes(dst.buckets, g), tree_hashes(src.buckets, g)
        for i in (i for i in range(len(remote)) if remote[i] != ours[i]):
            bucket, cursor = g * len(remote) + i, None
            while True:
                items, nxt = range_items(src.storage, bucket, cursor)
                dst.merge_range(bucket, cursor, nxt, items, src.durable_applied)
                if nxt is None:
                    break
                cursor = nxt


def test_anti_entropy_repairs_what_the_logs_cannot_and_resurrects_nothing(make_engine, tmp_path):
    """b misses a's entries and a trimmed them (every node applied them: a lost-disk or restored b);
    a range repair plus the adopted applied vector make b equal to a, and a key a deleted (and
    garbage-collected) stays deleted even though b still holds its old value."""
    a, b = make_engine(1, "a"), make_engine(2, "b")
    call = Caller(a)
    call("PUT", b"doomed", V("old"))
    a.flush()
    b.apply_remote(a.origin, entries_of(a, a.origin))        # b saw "doomed"
    b.flush()
    for i in range(2500):                                     # more keys than one range page
        call("PUT", b"k%d" % i, V(i))
    call("DEL", b"doomed")
    a.flush()
    assert a.collect_garbage({a.origin: a.applied[a.origin]}) == 1   # as if every node had applied it
    a.flush()
    assert b.read_entries(a.origin, 2)[0] == [] and a.read_entries(a.origin, 2)[1] > 2   # a trimmed
    assert a.digest != b.digest
    vector = dict(a.durable_applied)
    repair(b, a)
    b.adopt_applied(vector)
    b.flush()
    assert b.digest == a.digest and b.applied[a.origin] == a.applied[a.origin]
    assert Caller(b)("GET_VERSIONS", b"doomed")[0] == [] and Caller(b)("GET", b"k2499", False) == (V(2499), False)
    # nothing pulled back the other way either
    repair(a, b)
    a.flush()
    assert a.digest == b.digest and Caller(a)("GET_VERSIONS", b"doomed")[0] == []


def test_a_tombstone_is_not_collected_while_a_concurrent_write_may_still_arrive(tmp_path):
    """Node 1 holds only a tombstone for k, and node 2 has applied it; but node 2 made a write to k
    before it saw the delete, which node 1 has not received yet. The stable vector alone covers the
    tombstone; collecting it now would leave node 1 with {W} and node 2 with {T, W} forever. The
    collection vector waits until node 1 holds everything node 2 had when the tombstone was stable."""
    from zmqstore.dynamo import Replication
    cfgs, engines = {}, {}
    for node_id, other in ((1, 2), (2, 1)):
        cfgs[node_id] = config.resolve(None, {
            "node_id": node_id, "mode": "dynamo", "data_dir": str(tmp_path / f"n{node_id}"),
            "peers": [{"node_id": other, "host": "127.0.0.1", "port": 9000 + other}]})
        st = Storage.open(cfgs[node_id].data_dir, node_id, "dynamo")
        engines[node_id] = DynamoEngine(st, cfgs[node_id], "test")
    a, b = engines[1], engines[2]
    try:
        ca, cb = Caller(a), Caller(b)
        ca("PUT", b"k", V("v"))
        a.flush()
        b.apply_remote(a.origin, entries_of(a, a.origin))
        b.flush()
        cb("PUT", b"k", V("concurrent"))        # node 2 overwrites k ...
        b.flush()
        ca("DEL", b"k")                         # ... while node 1, not having seen it, deletes
        a.flush()
        b.apply_remote(a.origin, entries_of(a, a.origin))
        b.flush()
        rep = Replication(Sends(), a, cfgs[1], 0.0)
        view = rep.views[2]
        view.applied, view.heard, view.members = dict(b.durable_applied), 0.0, a.membership.digest
        assert rep.stable_vector()[a.origin] == 2       # the tombstone is stable ...
        for _ in range(3):
            rep.housekeeping(0.0)
            a.flush()
        assert a.tombstones == 1                         # ... but not collected: node 2's write is missing
        a.apply_remote(b.origin, entries_of(b, b.origin))
        a.flush()
        rep.housekeeping(0.0)
        a.flush()
        versions = ca("GET_VERSIONS", b"k")[0]
        assert sorted(v[0] is None for v in versions) == [False, True]   # both siblings, as on node 2
        assert a.digest == b.digest
    finally:
        for e in engines.values():
            e.storage.close()


def test_a_forged_context_cannot_hide_other_writes_and_a_refused_write_changes_nothing(make_engine):
    a, b = make_engine(1, "a"), make_engine(2, "b")
    call_a, call_b = Caller(a), Caller(b)
    forged = protocol.encode_context({a.origin: 1000})
    call_b("PUT_CTX", b"k", V("from b"), forged)       # b has nothing of a's: the claim is capped away
    b.flush()
    call_a("PUT", b"k", V("from a"))
    a.flush()
    b.apply_remote(a.origin, entries_of(a, a.origin))
    a.apply_remote(b.origin, entries_of(b, b.origin))
    a.flush()
    b.flush()
    assert sorted(v[0] for v in call_b("GET_VERSIONS", b"k")[0]) == [V("from a"), V("from b")]
    assert a.digest == b.digest
    # a context naming a write of the receiving node's own origin that it never made is refused
    digest = b.digest
    with pytest.raises(errors.BadArgument, match="never|has made"):
        call_b("PUT_CTX", b"k", V("forged"), protocol.encode_context({b.origin: b.applied[b.origin] + 1}))
    assert b._batch is None and b.digest == digest
    # a put_many whose second key would hold too many bytes of versions stages nothing at all
    a.state_limit = 100
    with pytest.raises(errors.ValueTooLarge):
        call_a("PUT_MANY", [[b"small", V(1)], [b"k", V("x" * 200)]])
    assert a._batch is None and call_a("GET", b"small", False) == (None, False)
    assert a.applied[a.origin] == 1


def test_a_quorum_read_joins_the_peers_state_and_repairs_after_the_flush(tmp_path):
    """r = 2 on node 1: the read is held in the reply queue; node 2's newer version arrives in
    DREAD_REPLY; the reply shows the join, node 1 stores it, and node 2 (whose state lacked node 1's
    version) gets a DPUSH, both only once the join is durable: the mode's end of iteration sends
    and releases them after its commit."""
    from zmqstore.modes import DynamoMode
    from zmqstore.replies import Replies
    cfgs, modes = {}, {}
    for node_id, other in ((1, 2), (2, 1)):
        cfgs[node_id] = config.resolve(None, {
            "node_id": node_id, "mode": "dynamo", "data_dir": str(tmp_path / f"n{node_id}"),
            "peers": [{"node_id": other, "host": "127.0.0.1", "port": 9000 + other}]})
        modes[node_id] = DynamoMode(Sends(), Storage.open(cfgs[node_id].data_dir, node_id, "dynamo"),
                                    cfgs[node_id], faults.NONE, 0.0)
    a, b = modes[1].engine, modes[2].engine
    try:
        Caller(a)("PUT", b"k", V("a"))
        Caller(b)("PUT", b"k", V("b"))
        a.flush()
        b.flush()
        mode, out = modes[1], modes[1].out
        out.take()
        answered = []       # (frames, whether the join was durable when they were sent)
        queue = Replies(lambda frames: answered.append((frames, a.durable_batches >= read.batch)))
        request = protocol.decode_request(protocol.encode_request("GET", b"c", 7, 7, b"k", False, {"r": 2}))
        body, read = mode.handle(request, [b"env"], 0.0)
        queue.hold([b"env"], body, 7, False, read, deadline=10.0)
        # to each member by name (a removed node may still be connected, docs/MEMBERSHIP.md)
        assert [(kind, to) for kind, to, sent in out.take() if b"DREAD" in sent] == [(sends.TO_PEER, 2)]
        mode.replication.on_message(protocol.PeerMessage("DREAD_REPLY", (2, 1, b.durable_state(b"k"),
                                                                          protocol.vector_pairs(b.durable_applied))), 0.0)
        value, conflict = protocol.decode_reply(read.reply).result
        assert conflict is True and value in (V("a"), V("b"))          # both versions, joined
        assert read.batch == a.pending_batch and read.batch > a.durable_batches   # waits for the stored join
        assert len(a.load(b"k").siblings) == 2
        sent = []

        def send(items):
            sent.extend((to, body, a.durable_batches >= read.batch) for _kind, to, body in items)

        mode.end_iteration(send, lambda fail_all: queue.release(mode.ready(), mode.expired, 0.0, fail_all,
                                                                 mode.progress()))
        assert answered == [([b"env", read.reply], True)]             # released once, after the commit
        pushes = [(to, flushed) for to, body, flushed in sent if b"DPUSH" in body]
        assert pushes == [(2, True)] and mode.replication.reads.read_repairs == 1      # once, after the join was durable
    finally:
        for m in modes.values():
            m.engine.storage.close()


def test_forged_remote_states_and_entries_are_refused_and_change_nothing(make_engine):
    """The trust issue's DPUSH (claiming node 2, context and clock UINT64_MAX) overwrote a key and
    made it unwritable. A peer's state, entry or applied vector is refused when it claims writes of
    this node's own origin that it never made, or a clock more than MAX_CLOCK_AHEAD ahead."""
    import time
    from zmqstore.dynamo import MAX_CLOCK_AHEAD
    from zmqstore.versions import HLC_LOGICAL_BITS
    a, b = make_engine(1, "a"), make_engine(2, "b")
    call = Caller(a)
    call("PUT", b"victim", V("original"))
    a.flush()
    u64 = (1 << 64) - 1
    now_hlc = int(time.time() * 1000) << HLC_LOGICAL_BITS
    far = (int((time.time() + 2 * MAX_CLOCK_AHEAD) * 1000)) << HLC_LOGICAL_BITS
    forged = [
        protocol.encode_key_state({a.origin: u64}, [(b.origin, 1, now_hlc, V("forged"))]),   # own origin, future
        protocol.encode_key_state({b.origin: 1}, [(b.origin, 1, u64, V("forged"))]),         # clock UINT64_MAX
        protocol.encode_key_state({b.origin: 1}, [(b.origin, 1, far, V("forged"))]),         # clock 20 min ahead
        protocol.encode_key_state({}, [(a.origin, 5, now_hlc, V("forged"))]),                # our dot, never made
    ]
    for raw in forged:
        with pytest.raises(errors.MalformedMessage):
            a.join_state(b"victim", a.remote_state(raw))
    with pytest.raises(errors.MalformedMessage):
        a.merge_range(0, None, None, [], {a.origin: u64})
    entry = protocol.encode_dyn_entry(protocol.DynEntry(b.origin, 1, u64, b"c" * 16, 1, ((b"victim", [], V("x")),)))
    with pytest.raises(errors.MalformedMessage):
        a.apply_remote(b.origin, [entry])
    assert a.applied.get(b.origin, 0) == 0
    assert call("GET", b"victim", False)[0] == V("original")
    assert call("PUT", b"victim", V("rewritten"), request_id=2)[0] is True          # still writable
    ok = protocol.encode_key_state({b.origin: 1}, [(b.origin, 1, now_hlc, V("fine"))])
    a.join_state(b"other", a.remote_state(ok))                                       # a fair state joins
    assert call("GET", b"other", False)[0] == V("fine")


def test_a_scan_pages_over_winners_and_skips_deleted_keys(make_engine):
    """Dynamo SCAN pages like leader mode's (limits.SCAN): each key's winning value, deleted keys
    (tombstones) left out and not counted, a cursor when the page is full, none at the end or when
    the limit is reached."""
    eng = make_engine()
    call = Caller(eng)
    call("PUT_MANY", [[b"k%05d" % i, V(i)] for i in range(SCAN.items + 20)])
    for i in range(0, 20, 2):
        call("DEL", b"k%05d" % i)
    eng.flush()
    items, cursor = call("SCAN", None, None, b"k", None, False)
    live = [i for i in range(SCAN.items + 20) if i >= 20 or i % 2]
    assert [k for k, _ in items] == [b"k%05d" % i for i in live[:SCAN.items]] and cursor is not None
    assert items[0][1] == V(1)
    rest, end = call("SCAN", cursor, None, b"k", None, False)
    assert [k for k, _ in rest] == [b"k%05d" % i for i in live[SCAN.items:]] and end is None
    limited, after = call("SCAN", None, None, b"k", 3, False)
    assert [k for k, _ in limited] == [b"k00001", b"k00003", b"k00005"] and after is None


def test_the_feed_reads_each_origin_in_order_and_says_when_a_log_no_longer_reaches(make_engine):
    """dynamo/feed.py over a real engine: items with dots and the key's siblings, a page bounded
    by bytes but never empty, `compacted` naming a vector it can serve, tombstone-only keys left
    out of a snapshot (docs/WATCH.md, "Dynamo mode")."""
    from zmqstore.dynamo.feed import DynamoFeed
    eng = make_engine()
    call = Caller(eng)
    for i in range(4):
        call("PUT", b"k%d" % i, V(i))
    call("DEL", b"k0")
    eng.flush()
    feed = DynamoFeed(eng)
    assert feed.snapshot_page(feed.snapshot()[0], b"k0", None, 1 << 20) == ([], None)   # deleted: absent
    o = eng.origin
    assert feed.start(None) == {o: 5} and not feed.behind({o: 5}, feed.position())
    new, changes = feed.read({o: 0}, feed.position(), 1)       # one entry: the budget is 1 byte
    assert new == {o: 1} and [item[:5] for _, item in changes] == [[o, 1, changes[0][1][2], b"k0", V(0)]]
    assert changes[0][1][5] == [[None, o, 5, changes[0][1][5][0][3]]]     # k0's versions now: its tombstone
    new, changes = feed.read(new, feed.position(), 1 << 20)
    assert new == {o: 5} and [item[1] for _, item in changes] == [2, 3, 4, 5]
    snapshot, at = feed.snapshot()
    items, cursor = feed.snapshot_page(snapshot, b"k", None, 1 << 20)
    assert at == {o: 5} and cursor is None and [k for k, _ in items] == [b"k1", b"k2", b"k3"]   # k0 deleted
    with pytest.raises(errors.BadArgument):
        feed.start(3)                                           # a seq: leader mode's position
    assert feed.start([[o, 2], *([[x << 32 | 1, 9] for x in range(50, 5000)])]) == {o: 2}   # only known origins
    # Each item counts the key's versions it carries against the page: small entries on a key
    # whose versions are large fill a page at once.
    _, before = call("GET_VERSIONS", b"c")
    call("PUT", b"c", V("x" * 10_000))                          # entry 6
    for i in range(3):
        call("PUT_CTX", b"c", V(i), before)                     # entries 7-9: siblings of the large one
    eng.flush()
    new, changes = feed.read({o: 6}, feed.position(), 5_000)
    assert new == {o: 7} and len(changes[0][1][5]) == 4       # one small entry, carrying 4 versions
    eng.collect_garbage({o: 5})                                 # log_retention 1: entries 1-3 trimmed
    eng.flush()
    with pytest.raises(errors.Compacted) as caught:
        feed.start([[o, 1]])
    assert caught.value.min_from == [[o, eng.first[o] - 1]]
    assert feed.start(caught.value.min_from) == {o: eng.first[o] - 1}
