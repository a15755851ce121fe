"""etcd's KV service over gRPC, for the comparison benchmark: Put, Range and Txn, with their protobuf
messages encoded by hand (only the fields used here, from etcd's api/etcdserverpb/rpc.proto and
api/mvccpb/kv.proto).

Why by hand: the Python etcd3 client is unmaintained since 2020 and does not work with current
protobuf releases; generating stubs needs protoc and etcd's .proto files at install time. grpcio is
etcd's own transport (its Go client speaks the same gRPC), so etcd sees what its own client sends.
"""
import collections

import grpc

# proto field numbers
PUT_KEY, PUT_VALUE = 1, 2
RANGE_KEY, RANGE_END, RANGE_LIMIT = 1, 2, 3
RANGE_REPLY_KVS = 2
KV_KEY, KV_MOD_REVISION, KV_VALUE = 1, 3, 5
COMPARE_TARGET, COMPARE_KEY, COMPARE_MOD_REVISION = 2, 3, 6
TARGET_MOD = 2          # Compare.CompareTarget.MOD; result EQUAL is 0, the default, so not sent
TXN_COMPARE, TXN_SUCCESS = 1, 2
TXN_REPLY_SUCCEEDED = 2
REQUEST_OP_PUT = 2
TIMEOUT = 10.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes(number, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int(number, n: int) -> bytes:
    return _varint(number << 3) + _varint(n)


def _read_varint(buf, i):
    n = shift = 0
    while True:
        byte = buf[i]
        i += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, i
        shift += 7


def fields(buf: bytes):
    """(field number, value) for each field: an int for a varint, bytes for a length-delimited field."""
    i = 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, i = _read_varint(buf, i)
        elif wire_type == 2:
            length, i = _read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value, i = buf[i:i + width], i + width
        else:
            raise ValueError(f"protobuf wire type {wire_type} not expected from etcd")
        yield number, value


def put_request(key, value):
    return _bytes(PUT_KEY, key) + _bytes(PUT_VALUE, value)


def range_request(key, range_end=None, limit=0):
    return _bytes(RANGE_KEY, key) + (_bytes(RANGE_END, range_end) if range_end else b"") + \
        (_int(RANGE_LIMIT, limit) if limit else b"")


def key_values(range_reply: bytes):
    """[(key, value, mod_revision)] of a RangeResponse."""
    out = []
    for number, kv in fields(range_reply):
        if number == RANGE_REPLY_KVS:
            got = dict(fields(kv))
            out.append((got.get(KV_KEY, b""), got.get(KV_VALUE, b""), got.get(KV_MOD_REVISION, 0)))
    return out


def cas_request(key, mod_revision, value):
    """A Txn: if key's mod_revision is still `mod_revision` (0: absent), put value."""
    compare = _int(COMPARE_TARGET, TARGET_MOD) + _bytes(COMPARE_KEY, key) + \
        _int(COMPARE_MOD_REVISION, mod_revision)
    return _bytes(TXN_COMPARE, compare) + _bytes(TXN_SUCCESS, _bytes(REQUEST_OP_PUT, put_request(key, value)))


class Etcd:
    """One gRPC channel to one etcd member. Reads are etcd's default, linearizable."""

    def __init__(self, endpoint):
        self.channel = grpc.insecure_channel(endpoint)
        raw = dict(request_serializer=None, response_deserializer=None)   # bytes in, bytes out
        self._put = self.channel.unary_unary("/etcdserverpb.KV/Put", **raw)
        self._range = self.channel.unary_unary("/etcdserverpb.KV/Range", **raw)
        self._txn = self.channel.unary_unary("/etcdserverpb.KV/Txn", **raw)

    def put(self, key, value):
        self._put(put_request(key, value), timeout=TIMEOUT)

    def get(self, key):
        """(value, mod_revision), or (None, 0) when absent."""
        kvs = key_values(self._range(range_request(key), timeout=TIMEOUT))
        return (kvs[0][1], kvs[0][2]) if kvs else (None, 0)

    def scan(self, start, limit):
        """Up to `limit` (key, value) from `start` on, in key order (range_end "\\0": to the end)."""
        return [(k, v) for k, v, _ in key_values(self._range(range_request(start, b"\0", limit), timeout=TIMEOUT))]

    def cas(self, key, mod_revision, value) -> bool:
        reply = self._txn(cas_request(key, mod_revision, value), timeout=TIMEOUT)
        return bool(dict(fields(reply)).get(TXN_REPLY_SUCCEEDED, 0))

    def put_pipelined(self, items, depth):
        """Puts with up to `depth` in flight on the channel (gRPC multiplexes them over HTTP/2)."""
        in_flight = collections.deque()
        for key, value in items:
            if len(in_flight) >= depth:
                in_flight.popleft().result()
            in_flight.append(self._put.future(put_request(key, value), timeout=TIMEOUT))
        for future in in_flight:
            future.result()

    def close(self):
        self.channel.close()
