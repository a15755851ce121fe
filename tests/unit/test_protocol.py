"""Protocol round trips, rejection of malformed input, and the spec covering every message."""
import pathlib
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from zmqstore import errors, protocol
from zmqstore.protocol import Limits

CID = b"c" * 16
V = protocol.pack_value

VALID = {
    "PING": (),
    "GET": (b"k", False),
    "PUT": (b"k", V({"a": [1, 2.5, "x", b"y", None, True]})),
    "DEL": (b"k",),
    "CAS": (b"k", None, V(1)),
    "PUT_MANY": ([[b"a", V(1)], [b"b", V("two")]],),
    "SCAN": (None, b"z", b"a", 10, False),
    "STATUS": (),
    "OUTCOME": (5,),
    "GET_VERSIONS": (b"k",),
    "PUT_CTX": (b"k", None, protocol.encode_context({(1 << 32) + 7: 3})),
    "MEMBERS": (),
    "ADD_MEMBER": (4, "127.0.0.5", 9003, None, None, None),
    "REMOVE_MEMBER": (4,),
    "WATCH": (b"user:", 17, False, 1 << 20, False),
    "WATCH_CREDIT": (42, 1 << 20),
}


@pytest.mark.parametrize("position", [None, 0, (1 << 64) - 1, [], [[(7 << 32) + 1, 5]]])
def test_watch_positions(position):
    req = protocol.decode_request(protocol.encode_request("WATCH", CID, 1, 1, b"", position, False, 1, True))
    assert req.args[1] == position


@pytest.mark.parametrize("position", [-1, 1.5, "7", b"7", [[1]], [[1, -2]], [1, 2], {"a": 1}])
def test_watch_refuses_bad_positions(position):
    with pytest.raises(errors.BadArgument):
        protocol.decode_request(protocol.encode_request("WATCH", CID, 1, 1, b"", position, False, 1, True))


def test_every_request_has_a_valid_example():
    assert set(VALID) == set(protocol.REQUESTS)


@pytest.mark.parametrize("command", sorted(protocol.REQUESTS))
def test_request_round_trip(command):
    body = protocol.encode_request(command, CID, 42, 40, *VALID[command])
    req = protocol.decode_request(body)
    assert req.command == command and req.client_id == CID and req.request_id == 42 and req.open_from == 40
    expected = VALID[command]
    if command == "PUT_MANY":
        expected = (tuple(tuple(i) for i in expected[0]),)
    assert req.args == tuple(expected)


def test_reply_round_trip():
    ok = protocol.decode_reply(protocol.encode_ok(7, True, 12))
    assert ok == protocol.Reply(7, True, (True, 12))
    err = protocol.decode_reply(protocol.encode_error(8, "key_too_large", "too big", {"limit": 1}))
    assert err == protocol.Reply(8, False, ("key_too_large", "too big", {"limit": 1}))


def test_log_entry_round_trip():
    entry = protocol.LogEntry(3, CID, 9, ((protocol.OP_PUT, b"k", V(1)), (protocol.OP_DEL, b"j")))
    assert protocol.decode_entry(protocol.encode_entry(entry)) == entry
    assert len(msgpack.unpackb(protocol.encode_entry(entry))) == 4      # a plain entry keeps four fields
    shared = entry._replace(ops=entry.ops + ((protocol.OP_PUT, b"m", V(2)),), more=((b"c2", 4), (CID, 10)))
    assert protocol.decode_peer_entry(protocol.encode_entry(shared)) == shared
    assert protocol.entry_writers(shared) == ((CID, 9), (b"c2", 4), (CID, 10))


def test_malformed_shared_entries_are_refused():
    """A shared entry from a peer (docs/PROTOCOL.md section 5): `more` of at least one
    [non-empty client_id, uint] pair, and ops; anything else is a malformed log entry."""
    put = [[protocol.OP_PUT, b"k", V(1)]]
    for fields in ([3, CID, 9, put, []], [3, CID, 9, put, None], [3, CID, 9, put, [[b"", 1]]],
                   [3, CID, 9, put, [[b"c", -1]]], [3, CID, 9, put, [[b"c", 1, 2]]], [3, CID, 9, put, [b"c"]],
                   [3, CID, 9, put, [["c", 1]]], [3, CID, 9, put, {"c": 1}], [3, CID, 9, None, [[b"c", 1]]],
                   [3, CID, 9, [], [[b"c", 1]]], [3, b"", 0, put, [[b"c", 1]]], [3, CID, 9, put, [[b"c", 1]], 0],
                   [3, CID, 9, {"members": []}, [[b"c", 1]]],
                   [3, CID, 9, put, [[b"c" * 65, 1]]],                  # a client id longer than a request's
                   [3, CID, 9, put + put, [[b"c", 1], [b"d", 2]]]):     # a writer without ops
        with pytest.raises(errors.MalformedMessage):
            protocol.decode_peer_entry(raw(*fields))


def test_values_round_trip():
    for value in (None, 0, -1, 2**63, 1.5, "é", b"\x00", [1, [2]], {"k": {"n": None}}, {1: 2}):
        assert protocol.unpack_value(protocol.pack_value(value)) == value
    with pytest.raises(errors.BadArgument):
        protocol.pack_value(object())


def raw(*fields):
    return msgpack.packb(list(fields), use_bin_type=True)


PV = protocol.PEER_VERSION


BAD = [
    (b"\xc1", errors.MalformedMessage),                          # never-used msgpack byte
    (b"", errors.MalformedMessage),
    (raw(1, "PING", CID, 1), errors.MalformedMessage),           # header too short
    (msgpack.packb({"op": "GET"}), errors.MalformedMessage),     # not an array
    (raw(2, "PING", CID, 1, 1), errors.UnsupportedVersion),
    (raw(True, "PING", CID, 1, 1), errors.UnsupportedVersion),
    (raw(1, "FLY", CID, 1, 1), errors.UnknownCommand),
    (raw(1, 7, CID, 1, 1), errors.MalformedMessage),
    (raw(1, "PING", "not-bytes", 1, 1), errors.BadArgument),
    (raw(1, "PING", CID, -1, 0), errors.BadArgument),
    (raw(1, "PING", CID, "1", 0), errors.BadArgument),
    (raw(1, "PING", CID, 0, 0), errors.BadArgument),             # request id 0 is reserved
    (raw(1, "PUT", CID, 0, 0, b"k", V(1)), errors.BadArgument),
    (raw(1, "GET", CID, 1, 1, b"k"), errors.BadArgument),           # missing stale flag
    (raw(1, "GET", CID, 1, 1, "k", False), errors.BadArgument),     # key must be bin
    (raw(1, "GET", CID, 1, 1, b"", False), errors.InvalidKey),
    (raw(1, "GET", CID, 1, 1, b"k" * 1025, False), errors.KeyTooLarge),
    (raw(1, "PUT", CID, 1, 1, b"k", 5), errors.BadArgument),        # value must be bin holding msgpack
    (raw(1, "PUT", CID, 1, 1, b"k", b"\xc1"), errors.BadArgument),  # ... that decodes
    (raw(1, "PUT", CID, 1, 1, b"k", b"\x01\x02"), errors.BadArgument),  # ... to exactly one object
    (raw(1, "PUT", CID, 1, 1, b"k", V("x" * (1 << 20))), errors.ValueTooLarge),
    (raw(1, "PUT", CID, 1, 1, b"k", V(1), b"extra"), errors.BadArgument),
    (raw(1, "CAS", CID, 1, 1, b"k", 3, V(1)), errors.BadArgument),
    (raw(1, "PUT_MANY", CID, 1, 1, []), errors.BadArgument),
    (raw(1, "PUT_MANY", CID, 1, 1, [[b"k"]]), errors.BadArgument),
    (raw(1, "PUT_MANY", CID, 1, 1, [[b"", V(1)]]), errors.InvalidKey),
    (raw(1, "SCAN", CID, 1, 1, None, None, None, -5, False), errors.BadArgument),
    (raw(1, "SCAN", CID, 1, 1, 1, None, None, None, False), errors.BadArgument),
    (raw(1, "SCAN", CID, 1, 1, None, None, None, None, "no"), errors.BadArgument),
    (raw(1, "GET", CID, 1, 1, b"k", 1), errors.BadArgument),        # stale must be a bool
    (raw(1, "PING", CID, 1, 2), errors.BadArgument),               # open_from above request_id
    (raw(1, "PING", CID, 1, "0"), errors.BadArgument),
]


@pytest.mark.parametrize("body,exc", BAD)
def test_bad_requests_are_classified(body, exc):
    with pytest.raises(exc) as info:
        protocol.decode_request(body)
    assert info.value.code in pathlib.Path(DOC).read_text()


def test_request_id_zero_is_refused_like_other_header_errors():
    """0 is what an error reply names when a request's id could not be read: a request may not use
    it (its reply could not be told from such an error). The refusal itself carries request id 0."""
    with pytest.raises(errors.BadArgument, match="request_id") as info:
        protocol.decode_request(raw(1, "GET", CID, 0, 0, b"k", False))
    assert info.value.request_id == 0
    assert protocol.decode_request(raw(1, "GET", CID, 1, 0, b"k", False)).request_id == 1
    top = (1 << 64) - 1
    assert protocol.decode_request(raw(1, "PING", CID, top, top)).request_id == top


def test_put_many_item_cap():
    limits = Limits(max_batch_items=2)
    with pytest.raises(errors.RequestTooLarge):
        protocol.decode_request(raw(1, "PUT_MANY", CID, 1, 1, [[b"a", V(1)]] * 3), limits)


def test_error_carries_request_id():
    with pytest.raises(errors.RequestError) as info:
        protocol.decode_request(raw(1, "GET", CID, 99, 99, b"", False))
    assert info.value.request_id == 99


def test_a_leader_stream_subscription_takes_every_untagged_message_and_only_its_own_topic():
    """docs/PROTOCOL.md, HEARTBEAT: a one-frame stream message starts with an untagged prefix (a
    msgpack array header, whatever its values), and a node's topic is no prefix of another's."""
    big = (1 << 63) - 1
    for command, fields in (("CHANGE", (big, big, big, big, [b"x" * 70_000] * 3, big, big)),
                            ("HEARTBEAT", (0, 0, 0, 0, 0)), ("HEARTBEAT", (big, big, big, big, big))):
        body = protocol.encode_peer(command, *fields)
        assert any(body.startswith(prefix) for prefix in protocol.STREAM_UNTAGGED), command
    n1, n12 = protocol.leader_topics(1), protocol.leader_topics(12)
    assert not any(protocol.stream_topic(12).startswith(t) for t in n1)
    assert not any(protocol.stream_topic(1).startswith(t) for t in n12)
    assert any(protocol.stream_topic(12).startswith(t) for t in n12)


def test_split_frames():
    assert protocol.split_frames([b"id", b"body"]) == ([b"id"], b"body")
    assert protocol.split_frames([b"id", b"", b"body"]) == ([b"id", b""], b"body")
    for frames in ([b"id"], [b"id", b"a", b"b"], [b"id", b"", b"a", b"b"]):
        with pytest.raises(errors.MalformedMessage):
            protocol.split_frames(frames)


def test_split_batch():
    """docs/PROTOCOL.md section 2, "Batches": 2 to 64 non-empty bodies of at most max_request_size
    together; one body, or a REQ envelope, as split_frames; anything else refused whole."""
    assert protocol.split_batch([b"id", b"body"], 100) == ([b"id"], (b"body",), False)
    assert protocol.split_batch([b"id", b"", b"body"], 100) == ([b"id", b""], (b"body",), False)
    assert protocol.split_batch([b"id", b"a", b"b"], 100) == ([b"id"], [b"a", b"b"], True)
    assert protocol.split_batch([b"id"] + [b"x"] * protocol.BATCH_MAX, 100)[1] == [b"x"] * protocol.BATCH_MAX
    assert protocol.split_batch([b"id", b"x" * 50, b"y" * 50], 100)[2]
    for frames in ([b"id"], [b"id", b"", b"a", b"b"], [b"id", b"a", b""], [b"id"] + [b"x"] * (protocol.BATCH_MAX + 1)):
        with pytest.raises(errors.MalformedMessage):
            protocol.split_batch(frames, 100)
    with pytest.raises(errors.RequestTooLarge):
        protocol.split_batch([b"id", b"x" * 50, b"y" * 51], 100)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_never_escape_as_other_exceptions(body):
    try:
        protocol.decode_request(body)
    except errors.RequestError:
        pass


DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def test_every_message_and_error_code_is_in_the_spec():
    text = DOC.read_text()
    for command in [*protocol.REQUESTS, *protocol.PEER_MESSAGES]:
        assert f"### {command}" in text, f"{command} has no section in docs/PROTOCOL.md"
    for code in errors.ERRORS_BY_CODE:
        assert f"`{code}`" in text, f"error code {code} is not listed in docs/PROTOCOL.md"


PEER_VALID = {
    "ACK": (2, 1, 10, 3, True),
    "FETCH": (2, 1, 11),
    "SNAPSHOT": (2, 1, 0, None),
    "CHANGE": (1, 1, 4, 1, [b"e1", b"e2"], 5, 6),
    "HEARTBEAT": (1, 1, 7, 5, 6),
    "ENTRIES": (1, 1, 4, 1, [], 5, 6),
    "NEED_SNAPSHOT": (1, 1, 100),
    "SNAPSHOT_CHUNK": (1, 1, 0, None, 50, 1, [[b"k", b"v"]], b"next", None),
    "ROLE": (2, 3, "secondary", 1, 40, 3, 39, False, True, "127.0.0.3:9001", "127.0.0.3:10001", False, [1, 2]),
    "ROLE_REPLY": (1, 3, "primary", 1, 41, 3, 40, False, True, "127.0.0.2:9000", "127.0.0.2:10000", True, [2, 2]),
    "VOTE_REQUEST": (4, 2, 41, 3),
    "VOTE": (4, 3, True, 40, 3, 1),
    "READ_INDEX": (2, 3, 7),
    "READ_INDEX_REPLY": (3, 1, 7, 120),
    "DCHANGE": ((1 << 32) + 5, [b"e1"]),
    "DSTATUS": (2, [[(1 << 32) + 5, 10], [(2 << 32) + 9, 3]], (1 << 64) - 1, 100, 2, 1, "127.0.0.3:9001",
                (1 << 64) - 1, [2, 2]),
    "DSTATUS_REPLY": (1, [], 0, 0, 0, 0, "127.0.0.2:9000", 0, [2, 3]),
    "DFETCH": (2, (1 << 32) + 5, 11),
    "DENTRIES": (1, (1 << 32) + 5, 11, [b"e11"], 1),
    "DTREE": (2, 1, None),
    "DTREE_REPLY": (1, 1, 7, [0, (1 << 64) - 1, 5], [[(1 << 32) + 5, 10]]),
    "DRANGE": (2, 1, 4095, b"cursor"),
    "DRANGE_REPLY": (1, 1, 4095, None, [[b"k", b"state"]], b"next", [[(1 << 32) + 5, 10]]),
    "DACK": (2, (1 << 32) + 5, 12),
    "DREAD": (2, 99, b"k"),
    "DREAD_REPLY": (1, 99, None, []),
    "DPUSH": (2, b"k", b"state"),
    "DMEMBERS": (2, b"records", [[(2 << 32) + 9, 3]]),
    "DSYNC": (2, (2 << 32) + (7 << 12), (1 << 32) + (9 << 12), 5, 4, 3, [[(2 << 32) + (7 << 12) + 4095, 8]], True,
              [4095], [0, 17]),
    "DFORWARD": (2, 17, 0, b"request"),
    "DFORWARD_REPLY": (1, 17, b"reply"),
    "DHINT": (2, 3, (2 << 32) + (7 << 12) + 5, [b"e1", b"e2"]),
    "DHINT_ACK": (1, (2 << 32) + (7 << 12) + 5, 1, 2),
    "DHANDOFF": (2, (4 << 32) + (7 << 12) + 5, [b"e1"]),
    "DHANDOFF_ACK": (1, (4 << 32) + (7 << 12) + 5, 1),
}


def test_dynamo_memberships_round_trip_and_bad_ones_are_refused():
    record = protocol.DynamoMember(3, "127.0.0.3", 9000, 10000, 11000, None, 2, True, 1)
    keyed = protocol.DynamoMember(4, "h", 1, 2, 3, "k" * protocol.KEY_Z85_LEN, 0, False, 0)
    assert protocol.decode_dynamo_members(protocol.encode_dynamo_members([record, keyed])) == (record, keyed)
    bad = [
        b"\xc1", msgpack.packb([]), msgpack.packb({"a": 1}), msgpack.packb([list(record)[:8]]),
        msgpack.packb([list(record), list(record)]),                       # the same node id twice
        msgpack.packb([list(record._replace(node_id=0))]), msgpack.packb([list(record._replace(node_id=1 << 32))]),
        msgpack.packb([list(record._replace(port=65536))]), msgpack.packb([list(record._replace(host=""))]),
        msgpack.packb([list(record._replace(host="h" * 257))]), msgpack.packb([list(record._replace(key="short"))]),
        msgpack.packb([list(record._replace(counter=-1))]), msgpack.packb([list(record._replace(removed=1))]),
        msgpack.packb([list(record._replace(node_id=n)) for n in range(1, protocol.DYNAMO_RECORDS_MAX + 2)]),
    ]
    for raw in bad:
        with pytest.raises(errors.MalformedMessage):
            protocol.decode_dynamo_members(raw)
    # 65 members (two nodes each added a 64th at once) is still taken, stored and read back.
    many = [record._replace(node_id=n, removed=False, port=n, pub_port=n + 1000, peer_port=n + 2000)
            for n in range(1, protocol.MEMBERS_MAX + 2)]
    assert protocol.decode_dynamo_members(protocol.encode_dynamo_members(many)) == tuple(many)


def test_dynamo_entries_and_contexts_round_trip_and_bad_ones_are_refused():
    entry = protocol.DynEntry((1 << 32) + 5, 3, 99 << 16, CID, 7, ((b"k", [[(1 << 32) + 5, 2]], V(1)), (b"j", [], None)))
    assert protocol.decode_dyn_entry(protocol.encode_dyn_entry(entry)) == entry._replace(
        ops=((b"k", (((1 << 32) + 5, 2),), V(1)), (b"j", (), None)))
    for bad in (b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb([1, 2, 3, b"c", 4, [["k", [], None]]])):
        with pytest.raises(errors.MalformedMessage):
            protocol.decode_dyn_entry(bad)
    assert protocol.decode_context(protocol.encode_context({5: 1, 2: 9})) == {2: 9, 5: 1}
    for bad in (b"", msgpack.packb([[1]]), msgpack.packb([["a", 1]]), msgpack.packb({"a": 1})):
        with pytest.raises(errors.BadArgument):
            protocol.decode_context(bad)


def test_request_options_are_checked():
    req = protocol.decode_request(protocol.encode_request("PUT", CID, 1, 1, b"k", V(1), {"w": 2}))
    assert req.options == {"w": 2} and req.args == (b"k", V(1))
    assert protocol.decode_request(protocol.encode_request("GET", CID, 1, 1, b"k", False)).options == {}
    get = lambda options: protocol.decode_request(protocol.encode_request("GET", CID, 1, 1, b"k", False, options))  # noqa: E731
    assert get({"read_index": True}).options == {"read_index": True}
    assert get({"read_index": False, "r": 2}).options == {"r": 2}     # false: as if absent
    for command, args in (("GET", (b"k", False, {"w": 2})), ("PUT", (b"k", V(1), {"w": 0})),
                          ("PUT", (b"k", V(1), {"w": True})), ("STATUS", ({"r": 1},)),
                          ("GET", (b"k", False, {"read_index": 1})), ("GET", (b"k", False, {"r": True})),
                          ("PUT", (b"k", V(1), {"read_index": True}))):
        with pytest.raises(errors.BadArgument):
            protocol.decode_request(protocol.encode_request(command, CID, 1, 1, *args))


def test_every_peer_message_has_an_example():
    assert set(PEER_VALID) == set(protocol.PEER_MESSAGES)


@pytest.mark.parametrize("command", sorted(protocol.PEER_MESSAGES))
def test_peer_round_trip(command):
    body = protocol.encode_peer(command, *PEER_VALID[command])
    msg = protocol.decode_peer(body)
    assert msg == protocol.PeerMessage(command, tuple(PEER_VALID[command]))


@pytest.mark.parametrize("command", sorted(protocol.PEER_MESSAGES))
def test_a_peer_message_on_a_client_port_is_refused_with_wrong_port(command):
    with pytest.raises(errors.WrongPort):
        protocol.decode_request(protocol.encode_peer(command, *PEER_VALID[command]))


def test_every_peer_message_names_its_sender():
    """The sender field is the node id the peer plane checks against the connection (examples: the
    sender is node 1 or 2, as each example's first node-id-like field says)."""
    senders = {cmd: protocol.peer_sender(protocol.decode_peer(protocol.encode_peer(cmd, *fields)))
               for cmd, fields in PEER_VALID.items()}
    assert senders["VOTE_REQUEST"] == 2 and senders["VOTE"] == 3 and senders["CHANGE"] == 1
    assert senders["DCHANGE"] == 1 and senders["ACK"] == 2 and senders["DPUSH"] == 2
    assert senders["DSYNC"] == 2 and senders["DFORWARD"] == 2 and senders["DFORWARD_REPLY"] == 1
    assert protocol.PEER_REQUESTS | protocol.PEER_STREAM < set(protocol.PEER_MESSAGES)


@pytest.mark.parametrize("term", [protocol.TERM_MAX + 1, (1 << 64) - 1])
def test_a_term_beyond_term_max_is_refused(term):
    """A forged term of 2**64 - 1 once bricked a cluster: a node adopted it, and standing for the
    next term overflowed the 64-bit field it is stored in."""
    for command in ("ACK", "ROLE", "VOTE_REQUEST", "HEARTBEAT"):
        fields = list(PEER_VALID[command])
        fields[0 if command in ("VOTE_REQUEST", "HEARTBEAT") else 1] = term
        with pytest.raises(errors.BadArgument):
            protocol.decode_peer(protocol.encode_peer(command, *fields))
    ok = list(PEER_VALID["ACK"])
    ok[1] = protocol.TERM_MAX
    assert protocol.decode_peer(protocol.encode_peer("ACK", *ok)).fields[1] == protocol.TERM_MAX


def _nested_bomb(levels, declared):
    """`levels` nested array headers each declaring `declared` items, and nothing else: 3 bytes a
    level, and msgpack would allocate `declared` slots for each before noticing the items are missing."""
    return (b"\xdc" + declared.to_bytes(2, "big")) * levels


@pytest.mark.parametrize("decode", [
    lambda b: protocol.decode_request(b), lambda b: protocol.decode_peer(b),
    lambda b: protocol.unpack_value(b, protocol.Limits()), protocol.decode_dyn_entry, protocol.decode_key_state,
    lambda b: protocol.decode_context(b)])
def test_a_decoding_bomb_is_refused_at_a_cost_bounded_by_its_size(decode):
    """The hostile input of the trust issue: 3 KB declaring 1,000 nested arrays of 10,013 items took
    56 ms and 80 MB to refuse; 400 of them stalled a primary for 50 s. Now it is walked without
    allocating. tracemalloc counts what decoding allocates at its peak."""
    bomb = _nested_bomb(1000, 10_013)
    tracemalloc.start()
    try:
        with pytest.raises(errors.RequestError):
            decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * len(bomb), f"decoding {len(bomb)} bytes allocated {peak} bytes"


def test_a_small_bomb_below_the_walk_threshold_is_capped_by_its_size():
    bomb = _nested_bomb(80, 10_013)          # 240 bytes: decoded directly, lengths capped at 240
    tracemalloc.start()
    try:
        with pytest.raises(errors.RequestError):
            protocol.decode_request(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


MSGPACK_OBJECTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=600),
              st.text(max_size=300), st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=40)),
              st.builds(msgpack.Timestamp, st.integers(0, 2**34), st.integers(0, 999_999_999))),
    lambda inner: st.one_of(st.lists(inner, max_size=12), st.dictionaries(st.binary(max_size=8), inner, max_size=6)),
    max_leaves=40)


def _outcome(decode, data):
    try:
        return "ok", decode(data)
    except Exception as exc:     # both paths must refuse the same inputs, with the same exception
        return "refused", type(exc).__name__


def _both_paths(data, *caps, use_list=True):
    """(the kept Unpacker's outcome, a fresh one's) for the same input and caps."""
    from zmqstore.protocol import values
    kept = _outcome(lambda d: values._unpackb(d, *caps, use_list=use_list), data)
    limit, values._REUSE_MAX = values._REUSE_MAX, 0
    try:
        return kept, _outcome(lambda d: values._unpackb(d, *caps, use_list=use_list), data)
    finally:
        values._REUSE_MAX = limit


@given(MSGPACK_OBJECTS, st.binary(min_size=257, max_size=400), st.integers(0, 2000), st.binary(max_size=3),
       st.sampled_from([(1 << 20, 1 << 20, 64, 0), (300, 5, 2, 0), (64, 1 << 20, 0, 16)]), st.booleans(),
       st.sampled_from([b"", b"\xa3\xff\xfe\xfd"]))
@settings(max_examples=300, deadline=None)
def test_the_kept_unpacker_refuses_and_accepts_exactly_what_a_fresh_one_does(obj, pad, cut, tail, caps, use_list,
                                                                             bad_utf8):
    """protocol/values.py keeps one Unpacker per thread and caps for inputs of 257 B to 64 KiB. Fed
    whole, cut short, extended, over a cap or with bad UTF-8, as lists or tuples (log entries), it
    must decide as the fresh Unpacker of larger inputs does, and a refusal must not spoil the next
    input (each example feeds several inputs to the same kept Unpacker)."""
    whole = msgpack.packb([obj, pad], use_bin_type=True)
    if bad_utf8:
        whole = b"\x93" + whole[1:] + bad_utf8      # a third item: a str that is not UTF-8
    for data in (whole, whole[:max(257, len(whole) - cut)], whole + tail, whole[:300] + whole[:300], whole):
        kept, fresh = _both_paths(data, *caps, use_list=use_list)
        assert kept == fresh, data[:40]


@pytest.mark.parametrize("size", [257, (1 << 16) - 1, 1 << 16, (1 << 16) + 1])
def test_the_kept_unpacker_at_its_size_bounds(size):
    """Inputs at and around the bounds of the kept path decode as msgpack does, one after another
    (a kept Unpacker's buffer holds exactly one input of _REUSE_MAX bytes), and one byte more is
    refused as msgpack refuses it (on the kept path below 65,536 bytes, on the fresh one above)."""
    data = next(d for d in (msgpack.packb([1, b"x" * pad]) for pad in range(size, 0, -1)) if len(d) == size)
    for _ in range(3):
        for caps in ((1 << 20, 10, 0), (size, 2, 0)):
            kept, fresh = _both_paths(data, *caps)
            assert kept == fresh == ("ok", msgpack.unpackb(data))
    kept, fresh = _both_paths(data + b"\x00", 1 << 20, 10, 0)
    assert kept == fresh == ("refused", "ExtraData")
    assert _both_paths(data, 1 << 20, 10, 0)[0] == ("ok", msgpack.unpackb(data))     # not spoilt


def test_kept_unpackers_are_per_thread():
    import threading
    from zmqstore.protocol import values
    messages = [msgpack.packb([i, b"x" * (300 + i)]) for i in range(8)]
    wrong = []

    def decode_many(i):
        for _ in range(2000):
            if values._unpackb(messages[i], 1 << 20, 100, 0) != [i, b"x" * (300 + i)]:
                wrong.append(i)

    threads = [threading.Thread(target=decode_many, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong and not any(t.is_alive() for t in threads)


def test_a_value_is_one_complete_msgpack_object():
    good = msgpack.packb({"a": [1, 2, {"b": "x" * 400}]})
    assert protocol.unpack_value(good, protocol.Limits()) == {"a": [1, 2, {"b": "x" * 400}]}
    for bad in (good[:-1], good + b"\x01", _nested_bomb(200, 500)):
        with pytest.raises(errors.MalformedMessage):
            protocol.unpack_value(bad, protocol.Limits())


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.binary(max_size=70_000))


@given(SCALARS)
@settings(max_examples=300)
def test_a_packed_scalar_is_judged_from_its_header_alone(obj):
    """The fast path of the value check (checks._check_value): every packed bin, int, float, nil
    and bool is known to be one object without unpacking it."""
    packed = protocol.pack_value(obj)
    assert protocol.is_one_scalar(packed) and protocol.unpack_value(packed, protocol.Limits()) == obj


@given(st.binary(max_size=40))
@settings(max_examples=2000)
def test_the_fast_path_accepts_nothing_the_full_check_refuses(data):
    """Whatever the header check accepts, unpacking accepts too, as exactly one object: truncated
    or trailing bytes, a str, a container or an ext are left to the full check."""
    if protocol.is_one_scalar(data):
        protocol.unpack_value(data, protocol.Limits())
    for cut in (data[:-1], data + b"\x00"):
        if protocol.is_one_scalar(cut):
            protocol.unpack_value(cut, protocol.Limits())


def test_every_type_byte_and_length_the_fast_path_accepts_unpacks_as_one_object():
    """Each of the 256 type bytes, followed by 0..300 bytes of zeros or of 0xff, and bin headers
    whose length field matches what follows (up to 70,000 bytes: bin 16 and bin 32 too)."""
    candidates = [bytes([head]) + bytes([fill]) * n for head in range(256) for fill in (0, 0xff) for n in range(301)]
    for n in (0, 1, 255, 256, 300, 65535, 65536, 70000):
        for head, width in ((0xc4, 1), (0xc5, 2), (0xc6, 4)):
            if n < 256 ** width:
                candidates.append(bytes([head]) + n.to_bytes(width, "big") + b"\x07" * n)
    accepted = [c for c in candidates if protocol.is_one_scalar(c)]
    assert len(accepted) > 300            # the fixints alone are 160 type bytes, twice
    for data in accepted:
        protocol.unpack_value(data, protocol.Limits())         # raises on anything but one object
    assert protocol.is_one_scalar(b"\xca" + b"\x00" * 4)     # float 32, which pack_value never writes


def test_the_fast_path_leaves_what_it_cannot_judge_to_the_full_check():
    for packed in (msgpack.packb("text"), msgpack.packb([1]), msgpack.packb({}), msgpack.packb(msgpack.ExtType(1, b"x")),
                   msgpack.packb(b"ab")[:-1], msgpack.packb(7) + b"\x01", b""):
        assert not protocol.is_one_scalar(packed)
    bad = protocol.encode_request("PUT", b"c", 1, 1, b"k", msgpack.packb(b"ab") + b"\x01")
    with pytest.raises(errors.BadArgument, match="not exactly one msgpack object"):
        protocol.decode_request(bad)


@pytest.mark.parametrize("body", [
    raw(PV, "ACK", 2, 1, 10, 3),                    # a field missing
    raw(PV, "ACK", 2, 1, -10, 0, True),             # negative seq
    raw(PV, "CHANGE", 1, 1, 4, 1, ["str"], 5, 6),   # entries must be bin
    raw(PV, "SNAPSHOT_CHUNK", 1, 1, 0, None, 50, 1, [[b"k"]], None, None),
    raw(PV, "SNAPSHOT_CHUNK", 1, 1, 0, None, 50, 1, [], None, "members"),   # members must be bin
    raw(PV, "HEARTBEAT", 1, 1, 7, 5, "6"),
    raw(PV, "ROLE", 2, 3, "secondary", 1, 40, 3, 39, "no", True, "a", "b", False, [2, 2]),   # leader_lost must be bool
    raw(PV, "ROLE", 2, 3, "x" * 300, 1, 40, 3, 39, False, True, "a", "b", False, [2, 2]),    # over 256 characters
    raw(PV, "ROLE", 2, 3, "secondary", 1, 40, 3, 39, False, True, "a", "b", False),   # no versions
    raw(PV, "ROLE", 2, 3, "secondary", 1, 40, 3, 39, False, True, "a", "b", False, [3, 2]),  # lowest > highest
    raw(PV, "ROLE", 2, 3, "secondary", 1, 40, 3, 39, False, True, "a", "b", False, [2]),     # not a pair
    raw(PV, "ROLE", 2, 3, "secondary", 1, 40, 3, 39, False, True, "a", "b", 0, [2, 2]),   # space_alarm must be bool
    raw(PV, "VOTE", 4, 3, 1, 40, 3, 1),                                        # granted must be bool
    raw(PV, "DSTATUS", 2, [[1, -1]], 0, 0, 0, 0, "a", 0, [2, 2]),             # negative seq in a vector
    raw(PV, "DSTATUS", 2, [[1, 2, 3]], 0, 0, 0, 0, "a", 0, [2, 2]),           # not a pair
    raw(PV, "DSTATUS", 2, [], 0, 0, 0, 0, "a", 0, [2, -2]),                   # negative version
    raw(PV, "DCHANGE", 1, "entries"),
    raw(PV, "DTREE_REPLY", 1, 1, None, [1, -2], []),
])
def test_bad_peer_messages_are_refused(body):
    with pytest.raises(errors.RequestError) as refused:
        protocol.decode_peer(body)
    assert not isinstance(refused.value, errors.UnsupportedVersion)


@pytest.mark.parametrize("version", [0, 1, PV + 1, 1 << 40])
def test_a_peer_message_of_a_version_outside_the_accepted_range_is_refused_naming_both(version):
    """Version 1 (no range in ROLE and DSTATUS) is the release before this one's peer protocol."""
    lowest, highest = protocol.PEER_VERSIONS
    with pytest.raises(errors.UnsupportedVersion,
                       match=rf"peer protocol version {version}; this node accepts {lowest}\.\.{highest}") as refused:
        protocol.decode_peer(raw(version, "FETCH", 2, 1, 11))
    assert refused.value.details == {"version": version}


@pytest.mark.parametrize("version", ["2", 2.0, True, None])
def test_a_peer_version_that_is_not_an_int_is_malformed(version):
    with pytest.raises(errors.MalformedMessage):
        protocol.decode_peer(raw(version, "FETCH", 2, 1, 11))


def test_a_node_posing_as_another_release_speaks_and_accepts_only_that_version(monkeypatch):
    from zmqstore.protocol import codec
    monkeypatch.setattr(codec, "_peer_version", codec._peer_version)
    monkeypatch.setattr(codec, "_peer_versions", codec._peer_versions)
    ours = protocol.encode_peer("FETCH", 2, 1, 11)
    protocol.speak_peer_version(PV + 1)
    assert protocol.peer_versions() == [PV + 1, PV + 1]
    assert protocol.decode_peer(protocol.encode_peer("FETCH", 2, 1, 11)).fields == (2, 1, 11)
    with pytest.raises(errors.UnsupportedVersion):
        protocol.decode_peer(ours)
