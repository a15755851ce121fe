"""Encoding and decoding: frames, requests, peer messages, replies, log entries and dynamo
states, each decoded with bounded cost (values.py) and validated (checks.py)."""
from typing import NamedTuple

import msgpack

from .. import errors
from .checks import _validate_peer, _validate_request
from .schema import (BATCH_MAX, CLIENT_ID_MAX, DYNAMO_RECORDS_MAX, ERR, HEADER_FIELDS, KEY_Z85_LEN, MEMBERS_MAX, DynamoMember, OK, OP_DEL, OP_PUT, PEER_ARRAY_MAX, PEER_MESSAGES,
                     PEER_MESSAGE_VERSION, PEER_VERSIONS, PROTOCOL_VERSION, SHARED_ENTRY_VERSION, STR_MAX, UINT64_MAX, Limits, LogEntry, Member, PeerMessage, Reply, Request)
from .values import _fields, _is_uint, _pack, _unpackb, _vector_dict, vector_pairs


# ---------------------------------------------------------------- frames

def split_frames(frames):
    """ROUTER input -> (envelope, body). The envelope is echoed back unchanged with the reply.

    A DEALER client sends one body frame ([identity, body]); a REQ client adds an empty delimiter
    ([identity, b"", body]). Anything else is malformed.
    """
    if len(frames) == 2:
        return frames[:1], frames[1]
    if len(frames) == 3 and not frames[1]:
        return frames[:2], frames[2]
    raise errors.MalformedMessage(f"expected 1 body frame after the identity, got {len(frames) - 1} frames")


def split_batch(frames, max_bytes):
    """Client-port input -> (envelope, bodies, batched): split_frames, or a DEALER's batch of 2 to
    BATCH_MAX non-empty bodies of at most `max_bytes` together ([identity, body, ...];
    docs/PROTOCOL.md section 2, "Batches"). The byte bound keeps a batch within what one request
    may be, so what a loop iteration takes in still fits one CHANGE (node.py)."""
    n = len(frames) - 1
    if n < 2 or not frames[1] and n == 2:
        envelope, body = split_frames(frames)
        return envelope, (body,), False
    if n > BATCH_MAX:
        raise errors.MalformedMessage(f"a batch holds at most {BATCH_MAX} request bodies, got {n} frames")
    if not all(frames[1:]):
        raise errors.MalformedMessage("a batch's request bodies must not be empty (an empty delimiter "
                                      "frame is for one REQ request only)")
    size = sum(map(len, frames)) - len(frames[0])
    if size > max_bytes:
        raise errors.RequestTooLarge(f"a batch's bodies total {size} bytes, above max_request_size ({max_bytes})")
    return frames[:1], frames[1:], True

# ---------------------------------------------------------------- requests

def encode_request(command: str, client_id: bytes, request_id: int, open_from: int, *args) -> bytes:
    return _pack([PROTOCOL_VERSION, command, client_id, request_id, open_from, *args])


def _unpack_body(body: bytes, limits: Limits):
    try:
        # peer messages carry up to a few thousand entries or snapshot items
        return _unpackb(body, limits.max_request_size,
                        max(limits.max_batch_items, PEER_ARRAY_MAX) + HEADER_FIELDS + 8, 64)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise errors.MalformedMessage(f"body is not valid msgpack: {type(exc).__name__}") from None


# The peer version this process encodes in and the range it accepts: PEER_VERSION and PEER_VERSIONS,
# unless a test switch (faults.py, ZMQSTORE_TEST_PEER_VERSION) makes a node pose as another release.
# A node encodes in the highest version of its range that every peer's announced range holds
# (`speak`, peers.py), and a message no lower than the version that defines it (PEER_MESSAGE_VERSION);
# the test switch encodes every message in its own version.
_peer_version, _peer_versions = None, PEER_VERSIONS
_spoken = PEER_VERSIONS[1]


def speak_peer_version(lowest: int, highest: int = None):
    """Test switch: encode peer messages in `lowest` and accept lowest..highest (default: only
    lowest), posing as another release. Called once, before the node makes any message."""
    global _peer_version, _peer_versions
    _peer_version, _peer_versions = lowest, (lowest, lowest if highest is None else highest)


def speak(announced) -> int:
    """Choose the version to encode in from the ranges the peers announced ((lowest, highest) each):
    the highest of this node's range that all of them hold; with none, this node's highest (peers
    that cannot read it refuse it plainly). Returns the version chosen."""
    global _spoken
    lowest, highest = _peer_versions
    _spoken = next((v for v in range(highest, lowest - 1, -1) if all(a <= v <= b for a, b in announced)), highest)
    return _spoken


def peers_take(command: str) -> bool:
    """Whether every peer takes `command` as far as this node knows: the version peer messages are
    encoded in now is at least the one that defines it (a peer of an earlier release lacks it). A
    peer that has not announced its versions yet counts as taking it (`speak`)."""
    spoken = _peer_version if _peer_version is not None else _spoken
    return spoken >= PEER_MESSAGE_VERSION.get(command, 0)


def peers_read_shared_entries() -> bool:
    """Whether every peer reads shared log entries (LogEntry.more) as far as this node knows, as
    `peers_take` judges a message."""
    spoken = _peer_version if _peer_version is not None else _spoken
    return spoken >= SHARED_ENTRY_VERSION


def peer_versions() -> list:
    """[lowest, highest]: the peer versions this node accepts, as ROLE and DSTATUS announce them."""
    return list(_peer_versions)


def encode_peer(command: str, *fields) -> bytes:
    version = _peer_version if _peer_version is not None else max(_spoken, PEER_MESSAGE_VERSION.get(command, 0))
    return _pack([version, command, *fields])


def decode_peer(body: bytes, limits: Limits = Limits()) -> PeerMessage:
    """Parse and validate one peer message; raises a RequestError subclass on bad input, and
    UnsupportedVersion (details: `version`) for a version outside the range this node accepts."""
    msg = _unpack_body(body, limits)
    if type(msg) is not list or len(msg) < 2 or type(msg[0]) is not int or type(msg[1]) is not str:
        raise errors.MalformedMessage("peer message must be [version, command, ...]")
    lowest, highest = _peer_versions
    if not lowest <= msg[0] <= highest:
        raise errors.UnsupportedVersion(f"peer protocol version {msg[0]}; this node accepts {lowest}..{highest}",
                                        details={"version": msg[0]})
    return _validate_peer(msg, limits)


def decode_request(body: bytes, limits: Limits = Limits()) -> Request:
    """Parse and fully validate one request body, as a client port receives it. Raises a RequestError
    subclass on any bad input; the exception carries `request_id` (0 when it could not be read) so
    the reply can name it. A peer message gets WrongPort: peers talk on the peer port."""
    msg = _unpack_body(body, limits)
    if type(msg) is list and len(msg) >= 2 and type(msg[1]) is str and msg[1] in PEER_MESSAGES:
        raise errors.WrongPort(f"{msg[1]} is a peer message; this is a client port (peers use the peer port)")
    return _validate_request(msg, limits)

# ---------------------------------------------------------------- replies

def encode_ok(request_id: int, *result) -> bytes:
    return _pack([PROTOCOL_VERSION, OK, request_id, *result])


def encode_error(request_id: int, code: str, message: str, details=None) -> bytes:
    return _pack([PROTOCOL_VERSION, ERR, request_id, code, message, details or {}])


def encode_exception(request_id: int, exc: errors.ZmqstoreError) -> bytes:
    return encode_error(request_id, exc.code, exc.message or str(exc), exc.details)


_OK_PACKED = _pack(OK)


def reply_outcome(body: bytes) -> str:
    """"ok", or the error code, of a reply this node encoded (metrics.py counts them): a byte
    comparison for the common small ok reply ([version, "OK", ...] in a fixarray), a decode else."""
    if body[2:2 + len(_OK_PACKED)] == _OK_PACKED:
        return "ok"
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        return msg[3] if msg[1] == ERR else "ok"
    except Exception:
        return "unreadable"


def decode_reply(body: bytes) -> Reply:
    """A node's reply (client side). Values of any configured size are accepted: msgpack bounds what
    a frame may claim by the frame's own length."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise errors.MalformedMessage(f"reply is not valid msgpack: {type(exc).__name__}") from None
    if type(msg) is list and len(msg) >= 3 and msg[0] == PROTOCOL_VERSION:
        status = msg[1]
        if status == OK:
            return Reply(msg[2], True, tuple(msg[3:]))
        if status == ERR and len(msg) == 6:
            return Reply(msg[2], False, tuple(msg[3:]))
    raise errors.MalformedMessage("reply must be [version, OK, request_id, ...] or "
                                  "[version, ERR, request_id, code, message, details]")

# ---------------------------------------------------------------- log entries (stored and, later, streamed)

def encode_entry(entry: LogEntry) -> bytes:
    """[term, client_id, request_id, ops], and `more` as a fifth field for a shared entry."""
    return _pack(entry if entry.more else entry[:4])


def entry_term(data: bytes) -> int:
    """The term of a stored log entry (its first field)."""
    return decode_entry(data).term


def decode_entry(data: bytes) -> LogEntry:
    fields = _unpackb(data, UINT64_MAX, UINT64_MAX, 1, use_list=False)
    if type(fields) is tuple and len(fields) == 5 and fields[4] != ():   # a shared entry (an empty `more` is not)
        return LogEntry(*fields)
    term, client_id, request_id, ops = _fields(fields, 4)
    return LogEntry(term, client_id, request_id, ops)


def entry_writers(entry: LogEntry):
    """The (client_id, request_id) of each write an entry logs, in order (a shared entry logs several)."""
    return ((entry.client_id, entry.request_id), *entry.more) if entry.more else ((entry.client_id, entry.request_id),)


def members_ops(members) -> dict:
    """The `ops` of a membership entry: the complete new membership."""
    return {"members": [list(m) for m in members]}


def entry_members(entry: LogEntry):
    """The members a membership entry records (a tuple of Member), or None for any other entry."""
    if type(entry.ops) is not dict:
        return None
    return tuple(Member(*m) for m in entry.ops["members"])


def data_ops(entry: LogEntry) -> tuple:
    """What an entry applies to data: its ops; nothing for a fence or a membership change."""
    return entry.ops if type(entry.ops) is tuple else ()


def encode_members(seq: int, members) -> bytes:
    """A membership as a node stores it and a snapshot carries it: [seq of its entry, [member, ...]]."""
    return _pack([seq, [list(m) for m in members]])


def decode_members(data: bytes):
    """-> (seq, tuple of Member), checked like a peer's entry: MalformedMessage on anything else."""
    try:
        seq, members = _fields(_unpackb(data, STR_MAX, PEER_ARRAY_MAX, 0, use_list=False), 2)
        if not _is_uint(seq):
            raise ValueError
        return seq, check_members(members)
    except errors.MalformedMessage:
        raise
    except Exception:
        raise errors.MalformedMessage("malformed membership") from None


def _addresses_ok(m) -> bool:
    """A member record's node id, host, ports and key are well-formed."""
    return (_is_uint(m.node_id) and 0 < m.node_id < 1 << 32 and type(m.host) is str and 0 < len(m.host) <= STR_MAX
            and all(type(p) is int and 0 < p < 65536 for p in (m.port, m.pub_port, m.peer_port))
            and (m.key is None or (type(m.key) is str and len(m.key) == KEY_Z85_LEN)))


def check_members(members) -> tuple:
    """A membership from the network or the disk -> a tuple of Member; anything but distinct node ids
    with well-formed addresses, at least one voter, raises MalformedMessage."""
    try:
        if type(members) not in (list, tuple) or not 1 <= len(members) <= MEMBERS_MAX:
            raise ValueError
        out = tuple(Member(*_fields(tuple(m) if type(m) is list else m, 7)) for m in members)
        for m in out:
            if not (_addresses_ok(m) and type(m.voter) is bool):
                raise ValueError
        if len({m.node_id for m in out}) != len(out) or not any(m.voter for m in out):
            raise ValueError
    except Exception:
        raise errors.MalformedMessage("malformed membership (members must be distinct node ids with host, "
                                      "ports, voter and key, at least one voter)") from None
    return out


def encode_dynamo_members(records) -> bytes:
    """A dynamo membership as DMEMBERS carries it and a node stores it: [[DynamoMember fields], ...]."""
    return _pack([list(r) for r in records])


def decode_dynamo_members(data: bytes) -> tuple:
    """-> a tuple of DynamoMember: distinct node ids, well-formed addresses and stamps, at most
    DYNAMO_RECORDS_MAX records; MalformedMessage otherwise. (How many are members is not checked:
    concurrent additions on two nodes may take a cluster past MEMBERS_MAX, and a node must still
    take, store and restart from what it merged.)"""
    try:
        records = _unpackb(data, STR_MAX, DYNAMO_RECORDS_MAX, 0, use_list=False)
        if type(records) is not tuple or not 1 <= len(records) <= DYNAMO_RECORDS_MAX:
            raise ValueError
        out = tuple(DynamoMember(*_fields(r, 9)) for r in records)
        for r in out:
            if not (_addresses_ok(r) and _is_uint(r.counter) and type(r.removed) is bool and _is_uint(r.changer)):
                raise ValueError
        if len({r.node_id for r in out}) != len(out):
            raise ValueError
    except Exception:
        raise errors.MalformedMessage(f"malformed dynamo membership (at most {DYNAMO_RECORDS_MAX} records of "
                                      f"distinct node ids with host, ports, key and stamp)") from None
    return out


def decode_peer_entry(data: bytes) -> LogEntry:
    """A log entry from a peer (CHANGE, ENTRIES), decoded and checked field by field: anything but a
    well-formed entry raises MalformedMessage."""
    try:
        entry = decode_entry(data)
        if not (_is_uint(entry.term) and type(entry.client_id) is bytes and _is_uint(entry.request_id)):
            raise ValueError
        if entry.more != () and not _shared_entry_ok(entry):
            raise ValueError
        if type(entry.ops) is dict:
            if set(entry.ops) != {"members"}:
                raise ValueError
            check_members(entry.ops["members"])
        elif entry.ops is not None:
            if type(entry.ops) is not tuple:
                raise ValueError
            for op in entry.ops:
                if not (type(op) is tuple and type(op[1]) is bytes and (
                        (len(op) == 3 and op[0] == OP_PUT and type(op[2]) is bytes)
                        or (len(op) == 2 and op[0] == OP_DEL))):
                    raise ValueError
    except Exception:
        raise errors.MalformedMessage("malformed log entry") from None
    return entry


def _shared_entry_ok(entry: LogEntry) -> bool:
    """A shared entry's `more`: at least one [client_id, request_id] pair, each client_id a bin of 1
    to CLIENT_ID_MAX bytes like a request's, and ops, at least one per writer (no fence, membership
    change or empty entry is shared)."""
    more, ops = entry.more, entry.ops
    if (type(more) is not tuple or not more or not entry.client_id or type(ops) is not tuple
            or len(ops) <= len(more)):
        return False
    return all(type(w) is tuple and len(w) == 2 and type(w[0]) is bytes and 0 < len(w[0]) <= CLIENT_ID_MAX
               and _is_uint(w[1]) for w in more)

# ---------------------------------------------------------------- dynamo mode (docs/DYNAMO.md)

class DynEntry(NamedTuple):
    """One write in an origin's log: ops are ((key, context pairs, value or None), ...)."""
    origin: int
    seq: int
    hlc: int
    client_id: bytes
    request_id: int
    ops: tuple


def encode_dyn_entry(entry: DynEntry) -> bytes:
    return _pack(entry)


def decode_dyn_entry(data: bytes) -> DynEntry:
    """An entry from a peer or the log. Raises MalformedMessage on anything but a well-formed entry."""
    try:
        origin, seq, hlc, client_id, request_id, ops = _fields(
            _unpackb(data, UINT64_MAX, UINT64_MAX, 0, use_list=False), 6)
        if not (_is_uint(origin) and _is_uint(seq) and _is_uint(hlc) and type(client_id) is bytes
                and _is_uint(request_id) and type(ops) is tuple):
            raise ValueError
        for op in ops:
            key, ctx, value = _fields(op, 3)
            if type(key) is not bytes or (value is not None and type(value) is not bytes):
                raise ValueError
            _vector_dict(ctx)
    except Exception:
        raise errors.MalformedMessage("malformed dynamo log entry") from None
    return DynEntry(origin, seq, hlc, client_id, request_id, ops)


def encode_key_state(ctx: dict, siblings) -> bytes:
    """A dynamo key's stored state: [context pairs, [[node, seq, hlc, value or nil], ...]]."""
    return _pack([vector_pairs(ctx), [list(s) for s in siblings]])


def decode_key_state(data: bytes):
    """-> (ctx dict, [(node, seq, hlc, value or None), ...]). A state from a peer is checked like
    an entry: anything malformed raises MalformedMessage."""
    try:
        pairs, siblings = _fields(_unpackb(data, UINT64_MAX, UINT64_MAX, 0, use_list=False), 2)
        ctx = _vector_dict(pairs)
        if type(siblings) is not tuple:
            raise ValueError
        for sibling in siblings:
            origin, seq, hlc, value = _fields(sibling, 4)
            if not (_is_uint(origin) and _is_uint(seq) and _is_uint(hlc)) or (
                    value is not None and type(value) is not bytes):
                raise ValueError
    except Exception:
        raise errors.MalformedMessage("malformed dynamo key state") from None
    return ctx, siblings
