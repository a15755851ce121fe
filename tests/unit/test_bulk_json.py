"""bulk.py's JSON lines encoding: every msgpack value round-trips exactly, keys that are not UTF-8
too, and a line that is not an exported item is refused with its number."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from zmqstore import bulk, protocol

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.text(), st.binary(),
                    st.builds(protocol.ExtType, st.integers(0, 127), st.binary(max_size=8)))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(), st.integers(-5, 5), st.binary(max_size=3)), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=1, max_size=40), value=values)
def test_every_value_and_key_round_trips_through_json_lines(key, value):
    raw = protocol.pack_value(value)
    line = bulk.json_line(key, raw)
    assert line.endswith("\n") and "\n" not in line[:-1]
    back_key, back_raw = bulk.parse_json_line(line, 1)
    assert back_key == key and back_raw == raw


def test_special_floats_dollar_keys_and_non_utf8_keys():
    value = {"$bytes": "not a tag: a user's key", "x": [math.inf, -math.inf, -0.0, 1e-300], 3: b"\xff"}
    line = bulk.json_line(b"\xff\xfe", protocol.pack_value(value))
    assert '"key_b64"' in line
    key, raw = bulk.parse_json_line(line, 1)
    back = protocol.unpack_value(raw)
    assert key == b"\xff\xfe" and back == value and math.copysign(1, back["x"][2]) == -1
    nan_key, nan_raw = bulk.parse_json_line(bulk.json_line(b"k", protocol.pack_value(math.nan)), 1)
    assert math.isnan(protocol.unpack_value(nan_raw))
    assert '"key": "é€"' in bulk.json_line("é€".encode(), protocol.pack_value(1))


def test_extension_types_timestamps_and_user_maps_that_look_like_tags_round_trip():
    value = {"ext": protocol.ExtType(5, b"ab"), "ts": protocol.Timestamp(1_700_000_000, 123),
             "user": {"$bytes": "x"}, "user2": {"$map": [[1, 2]]}, "f": {1.5: "float key"}}
    key, raw = bulk.parse_json_line(bulk.json_line(b"k", protocol.pack_value(value)), 1)
    assert raw == protocol.pack_value(value) and protocol.unpack_value(raw) == value


@pytest.mark.parametrize("line", ["not json", "{}", '{"key": "k"}', '{"key_b64": "%%%", "value": 1}', "[1, 2]"])
def test_a_line_that_is_not_an_item_is_refused_with_its_number(line):
    with pytest.raises(ValueError, match="line 7"):
        bulk.parse_json_line(line, 7)
