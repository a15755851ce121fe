"""msgpack with bounded cost, and the small values every message is built from: user values,
unsigned ints, fixed-size arrays, version vectors and dynamo contexts (docs/SECURITY.md, "Bounded
cost"). It and codec.py (replies) are the only modules that import msgpack."""
import threading

import msgpack

from .. import errors
from .schema import PEER_ARRAY_MAX, UINT64_MAX, Limits

# One shared Packer: packb() builds a new Packer per call, which costs more than the packing itself
# for small messages. Sharing is safe under the GIL: pack() runs in C without calling back into
# Python (no `default` hook) and resets its buffer on error.
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# What a value may hold beside JSON's types (bulk.py's JSON lines name them): msgpack's extension
# types, and the timestamp extension (-1) that other languages' msgpack libraries write.
ExtType, Timestamp = msgpack.ExtType, msgpack.Timestamp

def pack_value(obj) -> bytes:
    """A user value as stored and sent: one msgpack object."""
    try:
        return _pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.BadArgument(f"value cannot be encoded as msgpack: {exc}") from None


def unpack_value(data: bytes, limits: Limits = None):
    """A stored or received value -> the Python object. Without `limits` (the client, reading what a
    node sends) msgpack's own bounds apply: nothing may claim more than the input's length."""
    try:
        if limits is None:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        return _unpackb(data, limits.max_value_size, limits.max_value_size, limits.max_value_size,
                        max_ext_len=limits.max_value_size)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise errors.MalformedMessage(f"value is not one msgpack object: {type(exc).__name__}") from None


# The length of a msgpack scalar that a type byte alone fixes: nil, false, true, floats, ints.
_FIXED = {0xc0: 1, 0xc2: 1, 0xc3: 1, 0xca: 5, 0xcb: 9, 0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9,
          0xd0: 2, 0xd1: 3, 0xd2: 5, 0xd3: 9}
# bin 8, 16, 32: the type byte, then the length in this many bytes (big-endian), then the bytes
_BIN_LENGTH = {0xc4: 1, 0xc5: 2, 0xc6: 4}


def is_one_scalar(data: bytes) -> bool:
    """Whether `data` is exactly one msgpack bin, int, float, nil or bool, judged from its header
    and length alone: what unpack_value would accept, without building the object. False means
    "not known": the caller unpacks to decide (str is left to it, whose UTF-8 msgpack checks)."""
    if not data:
        return False
    head = data[0]
    if head <= 0x7f or head >= 0xe0:            # positive or negative fixint
        return len(data) == 1
    fixed = _FIXED.get(head)
    if fixed is not None:
        return len(data) == fixed
    width = _BIN_LENGTH.get(head)
    return width is not None and len(data) == 1 + width + int.from_bytes(data[1:1 + width], "big")


# Below this many bytes a message is decoded directly: with every length capped by the input's size,
# the worst nesting costs little. Above it, decoding walks the structure first without building it.
_SMALL_INPUT = 256
# Up to this many bytes the walk and the decode use an Unpacker kept per thread and per set of caps
# (_Reused): making an Unpacker costs more than walking and decoding a 1 KB message with it (2.6 us of
# the 7.2 a 1 KB PUT took; 3.1 us in all with one kept). Larger inputs get a fresh one each, as before.
# A kept Unpacker holds a buffer of this size (about 100 KB with its state); a thread keeps one per set
# of caps its messages use (about 7 in a node).
_REUSE_MAX = 1 << 16
_kept = threading.local()       # caps -> _Reused, per thread: feed, skip and unpack are separate calls


def _unpackb(data: bytes, max_bin_len, max_array_len, max_map_len, max_ext_len=0, use_list=True):
    """msgpack.unpackb whose cost is bounded by what was received (docs/SECURITY.md).

    msgpack allocates a container as soon as its header is read, at the declared length: 3 KB of
    nested headers each declaring 10,000 items would allocate 80 MB before failing. So every length is
    capped by the input's size, and an input above _SMALL_INPUT bytes is first walked with
    Unpacker.skip, which builds nothing and fails on a container whose items are not all there. Once
    it passes, every declared item is present, so what unpackb allocates is proportional to len(data).
    """
    n = len(data)
    if n <= _SMALL_INPUT:
        # msgpack's own default caps every length at len(data): what matters at this size (the
        # tighter caps below are checked again by the validators), and faster than passing them
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=use_list)
    if n <= _REUSE_MAX:
        caps = (min(max_bin_len, _REUSE_MAX), min(max_array_len, _REUSE_MAX), min(max_map_len, _REUSE_MAX),
                min(max_ext_len, _REUSE_MAX), use_list)
        kept = _kept.__dict__
        reused = kept.pop(caps, None)   # put back only after a success: a failure may leave bytes in its buffer
        if reused is None:
            reused = _Reused(caps)
        obj = reused.unpack(data, n)
        if obj is not _TRAILING:
            kept[caps] = reused
            return obj
        # Bytes after the object: the fresh path below refuses it as msgpack does (with the error of
        # the first object when that is bad too), and the kept Unpacker, holding them, is dropped.
    caps = {"max_bin_len": min(max_bin_len, n), "max_str_len": min(max_bin_len, n),
            "max_array_len": min(max_array_len, n), "max_map_len": min(max_map_len, n),
            "max_ext_len": min(max_ext_len, n)}
    walker = msgpack.Unpacker(max_buffer_size=n, **caps)
    walker.feed(data)
    walker.skip()
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=use_list, **caps)


_TRAILING = object()    # _Reused.unpack: the input holds more than one object


class _Reused:
    """One Unpacker, kept, for inputs of at most _REUSE_MAX bytes: each is fed, walked with skip()
    (which builds nothing and fails on a declared item that is not there), then fed again and
    unpacked under the caps. The caps are the callers' capped at _REUSE_MAX, not at each input's
    length as _unpackb's fresh path does: once the walk has found every declared item present, no
    declared length exceeds the input's, so both refuse exactly the same inputs."""

    __slots__ = ("unpacker", "consumed")

    def __init__(self, caps):
        bin_len, array_len, map_len, ext_len, use_list = caps
        self.unpacker = msgpack.Unpacker(
            max_buffer_size=_REUSE_MAX, raw=False, strict_map_key=False, use_list=use_list,
            max_bin_len=bin_len, max_str_len=bin_len, max_array_len=array_len, max_map_len=map_len,
            max_ext_len=ext_len)
        self.consumed = 0       # bytes of the stream unpacked so far (its tell())
        # Each input is fed once its predecessor was wholly consumed, so at most len(input) bytes are
        # ever buffered: _REUSE_MAX is room enough (checked by a test at exactly that size).

    def unpack(self, data, n):
        unpacker = self.unpacker
        unpacker.feed(data)
        unpacker.skip()
        if unpacker.tell() != self.consumed + n:
            return _TRAILING
        unpacker.feed(data)
        obj = unpacker.unpack()
        self.consumed += 2 * n
        return obj


def _is_uint(x) -> bool:
    return type(x) is int and 0 <= x <= UINT64_MAX

def _fields(obj, n):
    """`obj` as n fields: it must be an array of exactly n items (a map would unpack as its keys)."""
    if type(obj) is not tuple or len(obj) != n:
        raise ValueError(f"expected an array of {n}")
    return obj

def _vector_dict(pairs) -> dict:
    if type(pairs) not in (list, tuple):
        raise ValueError
    out = {}
    for pair in pairs:
        node, seq = _fields(tuple(pair) if type(pair) is list else pair, 2)
        if not (_is_uint(node) and _is_uint(seq)):
            raise ValueError
        out[node] = seq
    return out

def vector_pairs(vector: dict) -> list:
    """{node: seq} -> sorted [[node, seq], ...] (one canonical form)."""
    return [[n, vector[n]] for n in sorted(vector)]

def vector_from_pairs(pairs) -> dict:
    return {n: s for n, s in pairs}

def encode_context(ctx: dict) -> bytes:
    return _pack(vector_pairs(ctx))

def decode_context(data: bytes) -> dict:
    try:
        return _vector_dict(_unpackb(data, 0, PEER_ARRAY_MAX, 0, use_list=False))
    except Exception:
        raise errors.BadArgument("context is not one returned by get_versions") from None
