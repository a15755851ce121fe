"""Bad input against a real node: each gets an error reply with a documented code, the node keeps
serving and the store is unchanged."""
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from zmqstore import errors, protocol, transport
from zmqstore.keys import load_node_keys, load_pair

CID = b"fuzzer-client-id"
V = protocol.pack_value


class RawClient:
    """A bare DEALER that sends arbitrary frames and reads one reply (bounded wait); with the node's
    read-write test key when the node has keys."""

    def __init__(self, node):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if node.keys is not None:
            own = load_pair(node.keys.client_kwargs()["secret_key"])
            transport.curve_client(self.sock, own, load_node_keys(node.keys.nodes)[node.node_id][0])
        self.sock.connect("tcp://" + node.endpoint)

    def ask(self, frames, timeout=5.0):
        self.sock.send_multipart(frames)
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout} s to {frames!r:.200}")
        return self.sock.recv_multipart()

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw(node):
    c = RawClient(node)
    yield c
    c.close()


def snapshot(node):
    with node.client() as db:
        return list(db.scan()), db.status()["commit_seq"]


def req(command, *fields, rid=5, version=1, cid=CID):
    open_from = rid if isinstance(rid, int) and rid >= 0 else 0
    return msgpack.packb([version, command, cid, rid, open_from, *fields], use_bin_type=True)


CASES = [
    ([b"\xc1\xc1"], "malformed", 0),
    ([b""], "malformed", 0),
    ([b"", b"x", b"y"], "malformed", 0),
    ([req("PUT", b"k", V(1)), b""], "malformed", 0),                 # a batch with an empty body
    ([req("PUT", b"k", V(i)) for i in range(65)], "malformed", 0),   # a batch of 65
    ([msgpack.packb({"op": "PUT"})], "malformed", 0),
    ([req("PING", version=9)], "unsupported_version", 5),
    ([req("EXPLODE")], "unknown_command", 5),
    ([req("PUT", b"k")], "bad_argument", 5),
    ([req("PUT", "k", V(1))], "bad_argument", 5),
    ([req("PUT", b"k", 12)], "bad_argument", 5),
    ([req("PUT", b"k", b"\xc1")], "bad_argument", 5),
    ([req("PUT", b"", V(1))], "invalid_key", 5),
    ([req("PUT", b"k" * 1025, V(1))], "key_too_large", 5),
    ([req("PUT", b"k", V(b"x" * (1 << 20)))], "value_too_large", 5),
    ([req("PUT_MANY", [[b"a", V(1)], [b"", V(2)]])], "invalid_key", 5),
    ([req("CAS", b"k", 1, V(2))], "bad_argument", 5),
    ([req("SCAN", None, None, None, "ten")], "bad_argument", 5),
    ([req("PUT", b"k", V(1), cid=b"")], "bad_argument", 5),
    ([req("PUT", b"k", V(1), rid=-3)], "bad_argument", 0),
]


def test_each_bad_request_gets_its_error_and_changes_nothing(node, raw):
    with node.client() as db:
        db.put("k", "original")
    before = snapshot(node)
    for frames, code, rid in CASES:
        reply = protocol.decode_reply(raw.ask(frames)[-1])
        assert not reply.ok and reply.result[0] == code, (frames, reply)
        assert reply.request_id == rid
    assert snapshot(node) == before


def test_req_style_envelope_is_echoed(node, raw):
    frames = raw.ask([b"", req("PING")])
    assert frames[0] == b"" and protocol.decode_reply(frames[1]) == protocol.Reply(5, True, (1,))


def test_oversized_frame_drops_only_that_connection(nodes, tmp_path):
    conf = tmp_path / "small.ini"
    conf.write_text("[cluster]\nmax_key_size = 100\nmax_value_size = 1000\nmax_request_size = 8192\n")
    n = nodes(args=["--config", str(conf)])
    big = RawClient(n)
    try:
        reply = protocol.decode_reply(big.ask([req("PUT", b"k", V(b"x" * 2000))])[-1])
        assert reply.result[0] == "value_too_large"
        # A batch may be no larger than one request: 9 bodies of about 1 KB (over 8192 bytes
        # together) are refused whole, 7 are served (docs/PROTOCOL.md section 2, "Batches").
        frames = [req("PUT", b"b%d" % i, V(b"x" * 990), rid=i + 1) for i in range(9)]
        reply = big.ask(frames)
        assert len(reply) == 1 and protocol.decode_reply(reply[0]) == protocol.Reply(
            0, False, ("request_too_large", protocol.decode_reply(reply[0]).result[1], {}))
        big.sock.send_multipart(frames[:7])
        got, _ = replies_to(big, range(1, 8))
        assert all(r.ok for r in got.values())
        big.sock.send(req("PUT", b"k", V(b"x" * 20000)))   # over ZMQ_MAXMSGSIZE: no reply, link dropped
        assert not big.sock.poll(500)
    finally:
        big.close()
    with n.client() as db:
        assert db.ping() == 1 and db.get("k") is None
        assert [db.get("b%d" % i) is not None for i in range(9)] == [True] * 7 + [False] * 2
        pipe = db.pipeline()    # its batches (up to 64 KiB) are too large here: it sends them one by one
        for i in range(20):
            pipe.put(f"p{i}", b"x" * 900)
        assert pipe.execute() == [None] * 20 and not db.connection.batches
        assert db.get("p19") == b"x" * 900
        with pytest.raises(errors.KeyTooLarge):
            db.put("k" * 101, 1)


frames_strategy = st.lists(st.binary(max_size=64), min_size=1, max_size=4)
msgpack_objects = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
structured_strategy = st.builds(
    lambda version, cmd, rid, fields: [msgpack.packb([version, cmd, CID, rid, rid, *fields], use_bin_type=True)],
    st.sampled_from([1, 1, 1, 2, 0, "1"]),
    st.sampled_from(sorted(protocol.REQUESTS) + sorted(protocol.PEER_MESSAGES) + ["NOPE", ""]),
    st.integers(0, 2**64 - 1),
    st.lists(msgpack_objects, max_size=5),
)
# Well-shaped writes with hostile keys and values: empty, oversized, not msgpack.
keyed_strategy = st.builds(
    lambda cmd, key, value: [msgpack.packb([1, cmd, CID, 1, 1, key, value], use_bin_type=True)],
    st.sampled_from(["PUT", "CAS"]),
    st.one_of(st.just(b""), st.binary(min_size=1025, max_size=1100), st.binary(max_size=8)),
    st.binary(max_size=8),
)


def is_valid(frames):
    """Whether any body of the message would be served (the fuzzer wants only refusals)."""
    try:
        _, bodies, _ = protocol.split_batch([b"id", *frames], 16 << 20)
    except errors.RequestError:
        return False
    for body in bodies:
        try:
            protocol.decode_request(body)
            return True
        except errors.RequestError:
            pass
    return False


def test_fuzzed_frames_get_errors_and_change_nothing(node, raw):
    with node.client() as db:
        db.put_many({f"k{i}": {"i": i} for i in range(50)})
    before = snapshot(node)
    seen = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(st.one_of(frames_strategy, structured_strategy, keyed_strategy))
    def fuzz(frames):
        assume(not is_valid(frames))
        for body in raw.ask(frames):    # a REQ envelope's delimiter, or a batch's grouped replies
            if not body:
                continue
            reply = protocol.decode_reply(body)
            assert not reply.ok
            assert reply.result[0] in errors.ERRORS_BY_CODE and reply.result[0] not in ("internal", "storage")
            seen.append(reply.result[0])

    fuzz()
    assert node.alive()
    assert snapshot(node) == before
    assert len(set(seen)) >= 4, f"fuzzing reached too few error paths: {sorted(set(seen))}"


def replies_to(raw, rids, timeout=5.0):
    """Read reply messages until every request id in `rids` is answered -> ({id: Reply}, frames per message)."""
    got, shapes = {}, []
    deadline = time.monotonic() + timeout
    while set(rids) - set(got):
        assert raw.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"unanswered: {set(rids) - set(got)}"
        frames = raw.sock.recv_multipart()
        shapes.append(len(frames))
        for body in frames:
            reply = protocol.decode_reply(body)
            assert reply.request_id not in got, f"two replies to request {reply.request_id}"
            got[reply.request_id] = reply
    return got, shapes


def test_a_batch_is_served_request_by_request_and_its_replies_come_grouped(node, raw):
    """docs/PROTOCOL.md section 2, "Batches": each body of a batch is served as if it came alone (a bad
    one gets its own error, id 0 when its id cannot be read), and replies ready together share a
    message. Requests sent one per message on the same connection get one reply per message."""
    batch = [req("PUT", b"a", V(1), rid=1), req("PUT", b"b", V(2), rid=2), req("GET", b"nope", False, rid=3),
             b"\xc1", req("PUT", b"", V(3), rid=4), req("DEL", b"a", rid=5), req("GET", b"b", False, rid=6)]
    raw.sock.send_multipart(batch)
    got, shapes = replies_to(raw, [0, 1, 2, 3, 4, 5, 6])
    assert got[1].ok and got[2].ok and got[5].ok and got[3] == protocol.Reply(3, True, (None,))
    assert got[0].result[0] == "malformed" and got[4].result[0] == "invalid_key"
    assert protocol.unpack_value(got[6].result[0]) == 2
    assert max(shapes) > 1 and sum(shapes) == 7, shapes     # grouped: fewer messages than replies
    with node.client() as db:
        assert db.get("a") is None and db.get("b") == 2     # in frame order: the DEL came after the PUT
    for rid in range(7, 12):
        raw.sock.send(req("PING", rid=rid))
    assert replies_to(raw, range(7, 12))[1] == [1] * 5


@pytest.mark.parametrize("frames", [
    [req("PUT", b"x", V(i), rid=i + 1) for i in range(65)],
    [req("PUT", b"x", V(1), rid=1), b""],
    [b"", req("PUT", b"x", V(1), rid=1), req("PUT", b"y", V(1), rid=2)],
], ids=["65 bodies", "an empty body", "a delimiter then two bodies"])
def test_a_malformed_batch_is_refused_whole(node, raw, frames):
    before = snapshot(node)
    reply = raw.ask(frames)
    assert len(reply) == 1 and protocol.decode_reply(reply[0]).result[0] == "malformed"
    assert protocol.decode_reply(reply[0]).request_id == 0
    assert snapshot(node) == before


def test_peer_message_on_the_client_port_is_refused_with_wrong_port(node, raw):
    reply = protocol.decode_reply(raw.ask([protocol.encode_peer("FETCH", 2, 1, 1)])[-1])
    assert not reply.ok and reply.result[0] == "wrong_port"
    with node.client() as db:
        assert db.ping() == 1
