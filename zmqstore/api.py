"""The client command layer, as redis-py shapes it: every operation builds a `Call` (the command,
its encoded arguments, how to decode the reply) and hands it to `_execute`. The blocking Client
sends it and returns the result; a Pipeline queues it; an asyncio client would await it. Encoding
and decoding live here once (docs/PROTOCOL.md section 3)."""
from typing import Callable, NamedTuple

from .protocol import pack_value, unpack_value


class Version(NamedTuple):
    """One sibling of a dynamo-mode key."""
    value: object        # None for a delete
    deleted: bool        # a tombstone
    node_id: int         # the node that accepted the write
    origin: int          # that node's origin id for the run (node_id << 32 | incarnation)
    seq: int             # the write's seq in its origin's log
    hlc: int             # hybrid logical clock timestamp: (milliseconds << 16) | counter


class Dot(NamedTuple):
    """A dynamo-mode write's identity: the origin (node run) that accepted it and its seq there."""
    node_id: int
    origin: int
    seq: int


class Versions(NamedTuple):
    """A dynamo-mode key's siblings (empty: absent) and its causal context."""
    siblings: list
    context: bytes

    @property
    def conflict(self) -> bool:
        return len(self.siblings) > 1

    @property
    def winner(self):
        """The sibling get() shows: highest timestamp, then lowest node id (None: no siblings)."""
        return max(self.siblings, key=lambda v: (v.hlc, -v.node_id), default=None)


class Call(NamedTuple):
    """One request to make: its command, its arguments as sent, and reply fields -> result."""
    command: str
    args: tuple
    decode: Callable


class ScanPage(NamedTuple):
    """One SCAN reply, decoded: its items, and the cursor to go on from (None: the scan is done)."""
    items: list
    cursor: bytes


def encode_key(key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys are str or bytes, not {type(key).__name__}")


def _option(name, value):
    """The trailing options map of a request (docs/PROTOCOL.md), or nothing when the option is unset.
    (One option per call site: a pipeline queues tens of thousands of calls, each microsecond counts.)"""
    return () if value is None else ({name: value},)


def _dot(result):
    """A write reply -> its Dot in dynamo mode ([applied, seq, origin]); None in leader mode."""
    if len(result) < 3 or not result[2]:
        return None
    return Dot(result[2] >> 32, result[2], result[1])


def _first(result):
    return result[0]


def _second(result):
    return result[1]


def _nothing(result):
    return None


def versions_list(siblings) -> list:
    """Siblings as GET_VERSIONS and dynamo watches send them -> [Version, ...]."""
    return [Version(None if value is None else unpack_value(value), value is None, origin >> 32, origin, seq, hlc)
            for value, origin, seq, hlc in siblings]


def _versions(result):
    siblings, context = result
    return Versions(versions_list(siblings), context)


class Commands:
    """Every operation of a client. A subclass provides `_execute(call)` and `decode_keys`."""

    decode_keys = True

    def _execute(self, call: Call):
        raise NotImplementedError

    def ping(self):
        """The id of the node this client talks to."""
        return self._execute(Call("PING", (), _first))

    def get(self, key, default=None, stale=False, with_conflict=False, r=None, read_index=False):
        """The key's value, or `default` when absent. In dynamo mode the value is the winner among
        the key's siblings (highest timestamp, then lowest node id); with_conflict=True returns
        (value, conflict), conflict being True when the key has siblings (see get_versions).
        Dynamo mode: `r` nodes are read and their versions joined (stale ones are repaired);
        default: the cluster's read_quorum. Leader mode, `read_index=True`: a linearizable read
        that the secondary talked to serves from its own data, once its primary has confirmed the
        commit seq to wait for (ReadIndex, docs/REPLICATION.md "Reads"); a node that follows no
        primary redirects to the primary like a default read."""
        def decode(result):
            value = default if result[0] is None else unpack_value(result[0])
            if with_conflict:
                return value, bool(result[1]) if len(result) > 1 else False
            return value
        options = _option("r", r) if not read_index else ({"read_index": True, **({} if r is None else {"r": r})},)
        return self._execute(Call("GET", (encode_key(key), bool(stale), *options), decode))

    def get_versions(self, key, r=None):
        """Dynamo mode: every sibling of the key (Versions) and the context to resolve them with
        put(key, value, context=versions.context) (or delete(key, context=...))."""
        return self._execute(Call("GET_VERSIONS", (encode_key(key), *_option("r", r)), _versions))

    def put(self, key, value, context=None, w=None):
        """Write key = value. Returns None in leader mode; in dynamo mode the new version's
        `Dot(node_id, origin, seq)`. Dynamo mode: with `context` (from get_versions) the write
        replaces exactly the versions that context covers; others written meanwhile stay as
        siblings. `w`: the reply waits until w nodes hold the write (default: write_quorum)."""
        if context is None:
            return self._execute(Call("PUT", (encode_key(key), pack_value(value), *_option("w", w)), _dot))
        return self._execute(Call("PUT_CTX", (encode_key(key), pack_value(value), bytes(context), *_option("w", w)),
                                  _dot))

    def delete(self, key, context=None, w=None):
        """Delete key; True if it existed. Dynamo mode: a tombstone; with `context`, it replaces
        exactly the versions that context covers (and returns the tombstone's Dot)."""
        if context is None:
            return self._execute(Call("DEL", (encode_key(key), *_option("w", w)), _first))
        return self._execute(Call("PUT_CTX", (encode_key(key), None, bytes(context), *_option("w", w)), _dot))

    def cas(self, key, expected, new):
        """Set key to `new` if its value is `expected` (None: only if absent). Values compare by
        their msgpack encoding. Leader mode only."""
        exp = None if expected is None else pack_value(expected)
        return self._execute(Call("CAS", (encode_key(key), exp, pack_value(new)), _first))

    def put_many(self, items, w=None):
        """Write all items atomically: a dict or an iterable of (key, value). `w` as for put."""
        pairs = items.items() if hasattr(items, "items") else items
        return self._execute(Call("PUT_MANY", ([[encode_key(k), pack_value(v)] for k, v in pairs], *_option("w", w)),
                                  _nothing))

    # ------------------------------------------------------------ membership (docs/MEMBERSHIP.md)

    def members(self):
        """The cluster's members as the node talked to sees them: [{"node_id", "host", "port",
        "pub_port", "peer_port", "voter"(, "key")}, ...] by node id."""
        return self._execute(Call("MEMBERS", (), _first))

    def add_member(self, node_id, host, port, pub_port=None, peer_port=None, key=None):
        """Add a node. Leader mode: as a learner, which the primary makes a voter once it has caught
        up; returns the seq of the membership entry that holds it. Dynamo mode: on the node talked
        to, spreading from there; returns the counter of the node's record (docs/MEMBERSHIP.md).
        Ports default to port + 1000 (change stream) and port + 2000 (peer port); `key`: its public
        key (Z85 text), required with keys. Adding a member already there with the same addresses
        changes nothing."""
        return self._execute(Call("ADD_MEMBER", (node_id, host, port, pub_port, peer_port, key), _second))

    def remove_member(self, node_id):
        """Remove a node. Leader mode: removing the primary makes it hand over to the lowest remaining
        voter once the change is committed; returns the seq of the membership entry without it.
        Dynamo mode: returns the counter of the node's (removed) record."""
        return self._execute(Call("REMOVE_MEMBER", (node_id,), _second))

    def status(self):
        """The node talked to: node_id, mode, role, term, seqs, peers (docs/PROTOCOL.md, STATUS)."""
        return self._execute(Call("STATUS", (), _first))

    def _scan_call(self, prefix, cursor, end, limit, stale) -> Call:
        """One page of a scan: the first from `cursor` (None: the start of the range)."""
        def decode(result):
            items, next_cursor = result
            return ScanPage([(self._decode_key(k), unpack_value(v)) for k, v in items], next_cursor)
        return Call("SCAN", (cursor, end, prefix, limit, bool(stale)), decode)

    @staticmethod
    def _scan_range(prefix, start, end):
        return tuple(None if part is None else encode_key(part) for part in (prefix, start, end))

    def _decode_key(self, key):
        if not self.decode_keys:
            return key
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key
