"""The command engine on real storage in tmp_path, without sockets: group commit, ordering within a
batch, retried request ids, log trimming."""
import dataclasses
import random
from types import SimpleNamespace

import pytest

from zmqstore import config, errors, protocol
from zmqstore.limits import SCAN
from zmqstore.peers import PeerPlane
from zmqstore.leader import Engine
from zmqstore.leader.shared_entry import SharedEntry, shared_size
from zmqstore.storage import Storage

V = protocol.pack_value


@pytest.fixture
def make_engine(tmp_path):
    opened = []

    def make(**settings):
        cfg = config.resolve(None, {"node_id": 1, "data_dir": str(tmp_path / "d"), **settings})
        st = Storage.open(cfg.data_dir, cfg.node_id, cfg.mode, fsync=cfg.fsync)
        opened.append(st)
        eng = Engine(st, cfg, "test")
        eng.become_primary(max(st.term, 1))   # what the node does for a standalone node
        return eng
    yield make
    for st in opened:
        st.close()


class Caller:
    """Builds requests for one client id and decodes the engine's replies."""

    def __init__(self, engine, client_id=b"client-1"):
        self.engine = engine
        self.client_id = client_id
        self.next_id = 0

    def __call__(self, command, *args, request_id=None, open_from=0):
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        body = protocol.encode_request(command, self.client_id, request_id, open_from, *args)
        body, self.wait_seq = self.engine.handle(protocol.decode_request(body))
        reply = protocol.decode_reply(body)
        assert reply.request_id == request_id
        return reply.result


def test_writes_are_staged_until_flush(make_engine):
    """The writes of one iteration share one entry (docs/PROTOCOL.md section 5), in the order they
    were judged, each judged against the ones before it."""
    eng = make_engine()
    call = Caller(eng)
    assert call("PUT", b"k", V(1)) == (True, 1)
    assert eng.storage.get(b"k") is None            # not durable yet
    assert call("GET", b"k", False) == (V(1),)      # but later requests in the batch see it ...
    assert call.wait_seq == 1                       # ... and their replies wait for its commit
    assert call("CAS", b"k", V(1), V(2)) == (True, 1)
    assert call("CAS", b"k", V(1), V(3)) == (False, 0)
    assert call.wait_seq == 1
    assert call("DEL", b"k") == (True, 1)
    assert call("DEL", b"k") == (False, 0)
    eng.flush()
    assert eng.storage.get(b"k") is None and eng.storage.last_seq == 1
    [(seq, raw)] = eng.storage.log_entries(1)
    entry = protocol.decode_entry(raw)
    assert entry.ops == ((0, b"k", V(1)), (0, b"k", V(2)), (1, b"k"))
    assert protocol.entry_writers(entry) == ((call.client_id, 1), (call.client_id, 3), (call.client_id, 5))
    assert protocol.decode_peer_entry(raw) == entry     # what a secondary takes
    assert call("PUT", b"k", V(4)) == (True, 2)     # the next iteration's entry
    eng.flush()
    assert protocol.decode_entry(next(eng.storage.log_entries(2))[1]).more == ()


def test_each_write_has_its_entry_while_a_peer_cannot_read_shared_ones(make_engine):
    """A peer of the release before (peer version 3) reads no shared entry: none is written."""
    eng = make_engine()
    call = Caller(eng)
    try:
        protocol.speak([(2, 3)])
        assert call("PUT", b"k", V(1)) == (True, 1)
        assert call("CAS", b"k", V(1), V(2)) == (True, 2)
        assert call("DEL", b"k") == (True, 3)
    finally:
        protocol.speak(())
    eng.flush()
    assert [protocol.decode_entry(e) for _, e in eng.storage.log_entries(1)] == [
        protocol.LogEntry(1, call.client_id, rid, ops) for rid, ops in
        ((1, ((0, b"k", V(1)),)), (2, ((0, b"k", V(2)),)), (3, ((1, b"k"),)))]
    eng.peers_read_shared = lambda: False   # a member not heard from yet (node.py asks the peer plane)
    assert [call("PUT", b"k%d" % i, V(i))[1] for i in range(3)] == [4, 5, 6]
    eng.peers_read_shared = lambda: True
    assert [call("PUT", b"k%d" % i, V(i))[1] for i in range(3)] == [7, 7, 7]


def test_shared_entries_wait_until_every_member_has_said_it_reads_them():
    """What node.py asks the peer plane before a shared entry: every member announced a range
    holding version 4; one not heard from yet has not."""
    plane = SimpleNamespace(announced={2: (2, 4), 3: (2, 3), 4: (4, 5)})
    said = lambda ids: PeerPlane.announced_by_all(plane, ids, protocol.SHARED_ENTRY_VERSION)   # noqa: E731
    assert said([2, 4]) and said([])
    assert not said([2, 3]) and not said([2, 5])


def test_a_shared_entry_stops_growing_at_its_size_and_ops_limits(make_engine):
    """A write that would take the shared entry past 64 KiB or max_batch_items ops starts the next
    entry; a write larger than 64 KiB gets one of its own; a fence is never shared."""
    eng = make_engine()
    call = Caller(eng)
    big = V("x" * 30_000)
    assert [call("PUT", b"a%d" % i, big)[1] for i in range(3)] == [1, 1, 2]    # 3 x 30 KB > 64 KiB
    assert call("PUT", b"huge", V("y" * 70_000)) == (True, 3)
    assert call("PUT", b"b", V(1)) == (True, 4)
    assert call("PUT_MANY", [[b"m%d" % i, V(i)] for i in range(eng.limits.max_batch_items)]) == (True, 5)
    assert call("OUTCOME", 2)[0] == "committed"
    eng.flush()
    entries = [protocol.decode_entry(e) for _, e in eng.storage.log_entries(1)]
    assert [len(e.ops) for e in entries] == [2, 1, 1, 1, eng.limits.max_batch_items]
    assert [e.more for e in entries] == [((call.client_id, 2),), (), (), (), ()]
    assert len(next(eng.storage.log_entries(1))[1]) <= 1 << 16


def test_a_shared_entry_is_never_encoded_above_64_kib(make_engine):
    """The size rule is a bound, framing included: writes of every size up to the limit, keys up to
    1 KiB, client ids up to 64 bytes, large request ids; each shared entry's bytes stay within it,
    and some come close."""
    eng = make_engine()
    callers = [Caller(eng, client_id=bytes([65 + i]) * (1 + 21 * i)) for i in range(4)]
    sizes = []
    for i in range(400):
        call = callers[i % 4]
        key = b"k%d-" % i + b"x" * (i * 37 % 1000)
        value = V(b"v" * (i * 7919 % 9000))
        if i % 9 == 0:
            call("PUT_MANY", [[key, value], [key + b"2", V(i)]], request_id=(1 << 62) + i)
        else:
            call("PUT", key, value, request_id=(1 << 62) + i)
    eng.flush()
    for _, raw in eng.storage.log_entries(1):
        if protocol.decode_entry(raw).more:
            sizes.append(len(raw))
    assert sizes and max(sizes) <= 1 << 16 and max(sizes) > 60_000
    # The estimate bounds the encoding itself: worst-case ids, terms, headers of every width.
    rng = random.Random(17)
    for _ in range(300):
        writes = [(b"c" * 64, (1 << 64) - 1,
                   tuple((protocol.OP_PUT, b"k" * rng.choice([256, 1024]), b"v" * rng.choice([256, 20_000]))
                         if rng.random() < 0.9 else (protocol.OP_DEL, b"k" * 1024)
                         for _ in range(rng.choice([1, 2, 17]))))
                  for _ in range(rng.randint(2, 5))]
        shared = SharedEntry(1, rng.choice([1, (1 << 63) - 1]), writes[0][0], writes[0][1], writes[0][2],
                             shared_size(writes[0][0], writes[0][2]))
        for client_id, request_id, ops in writes[1:]:
            shared.add(client_id, request_id, ops, shared_size(client_id, ops))
        assert len(protocol.encode_entry(shared.entry())) <= shared.size


def test_retried_write_is_applied_once_even_after_restart(make_engine):
    eng = make_engine()
    call = Caller(eng)
    assert call("DEL", b"x") == (False, 0)
    assert call("PUT", b"x", V(1), request_id=10) == (True, 1)
    assert call("CAS", b"c", None, V(1), request_id=11) == (True, 1)   # both in one shared entry
    assert call("PUT", b"x", V(1), request_id=10) == (True, 1)      # retry: same outcome, no new seq
    eng.flush()
    assert call("PUT", b"x", V(1), request_id=10) == (True, 1)
    assert call("CAS", b"c", None, V(1), request_id=11) == (True, 1)  # a re-evaluation would say False
    eng.flush()
    assert eng.storage.last_seq == 1
    eng.storage.close()
    eng2 = make_engine()            # every write of the shared entry is found again in the log
    assert Caller(eng2)("CAS", b"c", None, V(1), request_id=11) == (True, 1)
    assert Caller(eng2)("PUT", b"x", V(1), request_id=10) == (True, 1)
    other = Caller(eng2, client_id=b"client-2")
    assert other("CAS", b"c", None, V(1), request_id=11) == (False, 0)  # another client's id is another request


def test_put_many_is_one_entry(make_engine):
    eng = make_engine()
    call = Caller(eng)
    assert call("PUT_MANY", [[b"a", V(1)], [b"b", V(2)], [b"a", V(3)]]) == (True, 1)
    eng.flush()
    assert eng.storage.get(b"a") == V(3) and eng.storage.get(b"b") == V(2)
    assert eng.storage.last_seq == 1


def test_scan_sees_staged_writes_and_pages(make_engine):
    eng = make_engine()
    call = Caller(eng)
    call("PUT_MANY", [[b"k%05d" % i, V(i)] for i in range(SCAN.items + 5)])
    items, nxt = call("SCAN", None, None, b"k", None, False)
    assert len(items) == SCAN.items and nxt == b"k%05d" % SCAN.items
    items, nxt = call("SCAN", nxt, None, b"k", None, False)
    assert len(items) == 5 and nxt is None
    items, nxt = call("SCAN", None, None, b"k", 3, False)
    assert [k for k, _ in items] == [b"k00000", b"k00001", b"k00002"] and nxt is None


def test_log_is_trimmed_and_outcomes_follow(make_engine):
    eng = make_engine(log_retention=10)
    call = Caller(eng)
    for i in range(30):
        call("PUT", b"k", V(i))
        eng.flush()
    st = eng.storage
    assert st.last_seq == 30
    assert st.last_seq - st.first_seq + 1 <= 11
    assert [s for s, _ in st.log_entries(1)][0] == st.first_seq


def test_dynamo_commands_refused_in_leader_mode(make_engine):
    eng = make_engine()
    with pytest.raises(errors.UnsupportedOperation, match="dynamo"):
        Caller(eng)("GET_VERSIONS", b"k")


def test_status_fields(make_engine):
    eng = make_engine()
    call = Caller(eng)
    call("PUT", b"k", V(1))
    (status,) = call("STATUS")
    assert status["last_seq"] == 1 and status["commit_seq"] == 0 and status["term"] == 1
    eng.flush()
    (status,) = call("STATUS")
    assert status["commit_seq"] == 1 and status["role"] == "primary" and status["peers"] == []
    assert dataclasses.is_dataclass(eng.config)


def test_outcome_survives_log_trimming_while_the_client_waits(make_engine):
    """A client waiting on request 1 keeps its outcome however many writes others make meanwhile."""
    eng = make_engine(log_retention=10)
    slow, busy = Caller(eng, b"slow"), Caller(eng, b"busy")
    assert slow("CAS", b"k", None, V(1), request_id=1, open_from=1) == (True, 1)
    eng.flush()
    for i in range(100):
        busy("PUT", b"other", V(i), request_id=i + 1, open_from=i + 1)
        eng.flush()
    assert eng.storage.first_seq > 1                   # the CAS entry was trimmed from the log
    assert slow("CAS", b"k", None, V(1), request_id=1, open_from=1) == (True, 1)
    assert slow("PUT", b"k", V(2), request_id=2, open_from=2) == (True, 102)
    with pytest.raises(errors.RequestFenced):            # below an open_from it sent: a late copy, refused
        slow("CAS", b"k", None, V(1), request_id=1, open_from=1)
