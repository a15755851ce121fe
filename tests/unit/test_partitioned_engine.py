"""A partitioned dynamo cluster's engine and vector exchange (docs/PARTITIONING.md), on real storage
in tmp_path, without sockets: an origin per run and partition, a put_many split per partition,
entries of the wrong partition refused, `replicas` fixed in the data dir, DSYNC's confirmations."""
import pytest

from zmqstore import config, errors, protocol
from zmqstore.dynamo import DynamoEngine
from zmqstore.dynamo.layout import bucket_of, origin_partition
from zmqstore.dynamo.sync import VectorSync
from zmqstore.storage import Storage

from test_engine import Caller

V = protocol.pack_value
PEERS = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in range(1, 7)]


@pytest.fixture
def make_engine(tmp_path):
    opened = []

    def make(node_id=1, replicas=3, name=None):
        cfg = config.resolve(None, {"node_id": node_id, "mode": "dynamo", "host": f"127.0.0.{node_id + 1}",
                                    "data_dir": str(tmp_path / (name or f"n{node_id}")), "replicas": replicas,
                                    "peers": [p for p in PEERS if p["node_id"] != node_id]})
        st = Storage.open(cfg.data_dir, cfg.node_id, cfg.mode, fsync=False)
        try:
            eng = DynamoEngine(st, cfg, "test")
        except errors.DataDirError:
            st.close()      # refused: as a node that does not start, it leaves the data dir free
            raise
        opened.append(st)
        return eng
    yield make
    for st in opened:
        if st._db is not None:
            st.close()


def keys_in_partitions(count):
    """`count` keys, each of another partition."""
    out, seen = [], set()
    i = 0
    while len(out) < count:
        key = b"key%d" % i
        i += 1
        if bucket_of(key) not in seen:
            seen.add(bucket_of(key))
            out.append(key)
    return out


def test_a_run_writes_each_partition_at_an_origin_of_its_own(make_engine):
    eng = make_engine()
    call = Caller(eng)
    a, b = keys_in_partitions(2)
    _ok, seq_a, origin_a = call("PUT", a, V(1))
    _ok, seq_b, origin_b = call("PUT", b, V(2))
    assert seq_a == seq_b == 1 and origin_a != origin_b         # each partition's stream starts at 1
    assert origin_partition(origin_a) == bucket_of(a) and origin_partition(origin_b) == bucket_of(b)
    assert eng.is_own(origin_a) and eng.is_own(origin_b) and origin_a >> 32 == 1
    _ok, seq, origin = call("PUT", a, V(3))
    assert (seq, origin) == (2, origin_a)
    eng.flush()
    assert eng.made == 3 and Caller(eng)("GET", a, False) == (V(3), False)


def test_a_put_many_over_partitions_is_one_entry_per_partition_and_all_are_waited_for(make_engine):
    eng = make_engine()
    call = Caller(eng)
    keys = keys_in_partitions(3)
    assert call("PUT_MANY", [[k, V(i)] for i, k in enumerate(keys)])[0] is True
    _batch, dots = call.wait_seq
    assert sorted(origin_partition(o) for o, _s in dots) == sorted(bucket_of(k) for k in keys)
    assert all(s == 1 for _o, s in dots)
    eng.flush()
    entries, _moved, synced = eng.take_published()
    assert sorted(o for o, _raw in entries) == sorted(o for o, _s in dots) and synced == {o for o, _s in dots}
    for origin, raw in entries:      # each entry holds its own partition's key only
        assert [op[0] for op in protocol.decode_dyn_entry(raw).ops] == \
            [k for k in keys if bucket_of(k) == origin_partition(origin)]


def test_an_entry_writing_a_key_of_another_partition_is_refused(make_engine):
    writer, reader = make_engine(2), make_engine(3)
    a, b = keys_in_partitions(2)
    Caller(writer)("PUT", a, V(1))
    writer.flush()
    (origin, raw), = writer.take_published()[0]
    entry = protocol.decode_dyn_entry(raw)
    forged = protocol.encode_dyn_entry(entry._replace(ops=((b, [], V("forged")),)))
    with pytest.raises(errors.MalformedMessage, match="another partition"):
        reader.apply_remote(origin, [forged])
    assert reader.applied.get(origin, 0) == 0 and reader.load(b).siblings == ()
    assert reader.apply_remote(origin, [raw]) == (1, False)


def test_replicas_is_recorded_and_a_start_with_another_value_is_refused(make_engine):
    eng = make_engine(1, replicas=2, name="d")
    eng.storage.close()
    with pytest.raises(errors.DataDirError, match="replicas = 2.*--replicas 2"):
        make_engine(1, replicas=3, name="d")
    with pytest.raises(errors.DataDirError, match="replicas = 2"):
        make_engine(1, replicas=0, name="d")


def test_settings_bound_replicas(tmp_path):
    base = {"node_id": 1, "data_dir": str(tmp_path)}
    with pytest.raises(errors.ConfigError, match="dynamo-mode setting"):
        config.resolve(None, {**base, "replicas": 3})
    with pytest.raises(errors.ConfigError, match="write_quorum = 3 exceeds replicas = 2"):
        config.resolve(None, {**base, "mode": "dynamo", "replicas": 2, "write_quorum": 3,
                              "peers": PEERS[1:]})
    assert config.resolve(None, {**base, "mode": "dynamo"}).replicas == 0


def test_peer_messages_are_encoded_in_the_highest_version_every_peer_accepts():
    try:
        assert protocol.speak(()) == 4 and protocol.encode_peer("DACK", 2, 5, 1)[1] == 4
        assert protocol.peers_read_shared_entries()
        assert protocol.speak([(2, 4), (2, 3)]) == 3            # a peer of the release before
        assert protocol.encode_peer("DACK", 2, 5, 1)[1] == 3 and not protocol.peers_read_shared_entries()
        assert protocol.speak([(2, 3), (2, 2)]) == 2            # and of the one before that
        assert protocol.encode_peer("DACK", 2, 5, 1)[1] == 2
        assert protocol.encode_peer("DFORWARD", 2, 5, b"r")[1] == 3    # defined in 3: never lower
        assert protocol.speak([(5, 6)]) == 4 and protocol.speak([(1, 1)]) == 4    # none in common: ours
    finally:
        protocol.speak(())


class Peerless:
    """What VectorSync needs of an engine: node id, run, replicas and a durable vector."""

    def __init__(self, node_id, run):
        self.node_id, self.run, self.replicas = node_id, run, 3
        self.not_whole, self.leaving = {7}, set()
        self.durable_applied = {}


def decode(body):
    return protocol.decode_peer(body).fields


def test_dsync_sends_what_the_peer_has_not_confirmed_and_starts_again_for_a_new_run():
    me = Peerless(1, 1 << 32)
    origin_shared, origin_other = (1 << 32) | 5, (1 << 32) | 6
    me.durable_applied = {origin_shared: 4, origin_other: 9}
    sync = VectorSync(me, lambda node_id: frozenset({5}))
    sync.follow([2])
    _n, _run, to_run, number, ack, _r, pairs, complete, moving, leaving = decode(sync.message(2))
    assert pairs == [[origin_shared, 4]] and complete and (to_run, number, ack) == (0, 1, 0)
    assert moving == [7] and leaving == []
    peer_run = 2 << 32
    assert sync.on_sync(2, peer_run, me.run, 7, 1)          # it heard number 1: confirmed
    *_, pairs, complete, _moving, _leaving = decode(sync.message(2))
    assert pairs == [] and complete
    me.durable_applied[origin_shared] = 5
    sync.moved([origin_shared, origin_other], lambda p: (2,) if p == 5 else ())
    fields = decode(sync.message(2))
    assert fields[6] == [[origin_shared, 5]] and fields[2:5] == (peer_run, 3, 7)
    assert not sync.on_sync(2, peer_run, 77 << 32, 8, 3)    # addressed to another run of ours: no confirmation
    assert decode(sync.message(2))[6] == [[origin_shared, 5]]
    assert sync.on_sync(2, (2 << 32) | (1 << 12), me.run, 1, 0)   # the peer restarted: everything again
    assert decode(sync.message(2))[6] == [[origin_shared, 5]]
