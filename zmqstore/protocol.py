"""The zmqstore wire format: every message defined once, msgpack encoding with size limits.

docs/PROTOCOL.md is the specification; this module is its only implementation. No other module
imports msgpack. Values travel and are stored as msgpack-encoded bytes (`pack_value`), so a node
never re-encodes a value it stores.
"""
from typing import NamedTuple

import msgpack

from . import errors

PROTOCOL_VERSION = 1

# Field types of request messages; each has a checker in _CHECKERS.
KEY = "key"                # bin, 1..max_key_size bytes
OPT_KEY = "opt_key"        # bin (may be empty) or nil
VALUE = "value"            # bin holding exactly one msgpack object, <= max_value_size bytes
OPT_VALUE = "opt_value"    # VALUE or nil
BOOL = "bool"
OPT_UINT = "opt_uint"      # non-negative int or nil
ITEMS = "items"            # array of [KEY, VALUE], 1..max_batch_items entries
UINT = "uint"              # unsigned 64-bit int
TERM = "term"              # a leader-mode term: uint up to TERM_MAX, so one more always fits in 64 bits
STR = "str"                # str of at most STR_MAX characters (peer messages: roles, addresses)
CONTEXT = "context"        # bin: an opaque causal context from GET_VERSIONS (dynamo mode)

# Client requests: command -> ((field name, field type), ...). See docs/PROTOCOL.md section "Commands".
REQUESTS = {
    "PING": (),
    "GET": (("key", KEY), ("stale", BOOL)),
    "PUT": (("key", KEY), ("value", VALUE)),
    "DEL": (("key", KEY),),
    "CAS": (("key", KEY), ("expected", OPT_VALUE), ("new", VALUE)),
    "PUT_MANY": (("items", ITEMS),),
    "SCAN": (("start", OPT_KEY), ("end", OPT_KEY), ("prefix", OPT_KEY), ("limit", OPT_UINT), ("stale", BOOL)),
    "STATUS": (),
    "OUTCOME": (("request_id", UINT),),
    # dynamo mode (docs/DYNAMO.md): every sibling with the key's context; a write with a context
    # (value nil: a delete) replaces exactly the versions that context covers
    "GET_VERSIONS": (("key", KEY),),
    "PUT_CTX": (("key", KEY), ("value", OPT_VALUE), ("context", CONTEXT)),
}
WRITE_COMMANDS = frozenset({"PUT", "DEL", "CAS", "PUT_MANY", "PUT_CTX"})
# Commands that take a trailing map of per-request options (docs/PROTOCOL.md): dynamo-mode quorums,
# "w" (nodes holding a write before its reply) and "r" (nodes consulted by a read).
OPTION_COMMANDS = {"GET": ("r",), "GET_VERSIONS": ("r",), "PUT": ("w",), "PUT_CTX": ("w",), "DEL": ("w",),
                   "PUT_MANY": ("w",)}
QUORUM_MAX = 64

# Peer messages (leader mode, docs/REPLICATION.md). Layout: [version, command, field...].
BIN_LIST = "bin_list"      # array of bin (log entries as stored)
PAIR_LIST = "pair_list"    # array of [bin, bin] (snapshot items)
VECTOR = "vector"          # array of [uint, uint]: {node id: seq} (dynamo applied vectors)
UINT_LIST = "uint_list"    # array of uint (anti-entropy hashes)
BIN = "bin"                # bin of any length up to the frame limit
OPT_BIN = "opt_bin"        # BIN or nil
# sender_id: the node sending; for CHANGE and HEARTBEAT that is the primary of `term`.
_LOG_BATCH = (("term", TERM), ("sender_id", UINT), ("prev_seq", UINT), ("prev_term", TERM),
              ("entries", BIN_LIST), ("commit_seq", UINT), ("sender_last_seq", UINT))
# A node's state as ROLE and ROLE_REPLY carry it (election.py).
_ROLE = (("node_id", UINT), ("term", TERM), ("role", STR), ("leader_id", UINT), ("last_seq", UINT),
         ("last_term", TERM), ("commit_seq", UINT), ("leader_lost", BOOL), ("voter", BOOL),
         ("address", STR), ("pub_address", STR))
_DSTATUS = (("node_id", UINT), ("applied", VECTOR), ("digest", UINT), ("keys", UINT), ("conflicts", UINT),
            ("tombstones", UINT), ("address", STR))
PEER_MESSAGES = {
    # secondary -> primary, DEALER -> ROUTER
    "ACK": (("node_id", UINT), ("term", TERM), ("last_seq", UINT), ("round", UINT), ("voter", BOOL)),
    # any node -> any node (a secondary to its primary, a candidate to the voter whose log it adopts)
    "FETCH": (("node_id", UINT), ("term", TERM), ("from_seq", UINT)),
    "SNAPSHOT": (("node_id", UINT), ("term", TERM), ("snapshot_seq", UINT), ("cursor", OPT_KEY)),
    # primary -> secondaries: PUB
    "CHANGE": _LOG_BATCH,
    "HEARTBEAT": (("term", TERM), ("sender_id", UINT), ("round", UINT), ("commit_seq", UINT),
                  ("sender_last_seq", UINT)),
    # answers to FETCH and SNAPSHOT: ROUTER replies
    "ENTRIES": _LOG_BATCH,
    "NEED_SNAPSHOT": (("term", TERM), ("sender_id", UINT), ("first_seq", UINT)),
    "SNAPSHOT_CHUNK": (("term", TERM), ("sender_id", UINT), ("asked_seq", UINT), ("asked_cursor", OPT_KEY),
                       ("snapshot_seq", UINT), ("snapshot_term", TERM), ("items", PAIR_LIST),
                       ("next_cursor", OPT_KEY)),
    # every node <-> every node: role queries (DEALER -> ROUTER) and their replies are the heartbeats
    "ROLE": _ROLE,
    "ROLE_REPLY": _ROLE,
    # elections: a candidate asks (DEALER -> ROUTER), each node answers (ROUTER reply)
    "VOTE_REQUEST": (("term", TERM), ("candidate_id", UINT), ("last_seq", UINT), ("last_term", TERM)),
    "VOTE": (("term", TERM), ("node_id", UINT), ("granted", BOOL), ("last_seq", UINT), ("last_term", TERM),
             ("first_seq", UINT)),
    # dynamo mode (docs/DYNAMO.md). An origin publishes its own new entries (PUB):
    "DCHANGE": (("origin", UINT), ("entries", BIN_LIST)),
    # every node <-> every node, every election_interval / 5: what each has applied, and a digest
    # of its data (DEALER -> ROUTER, and the ROUTER reply)
    "DSTATUS": _DSTATUS,
    "DSTATUS_REPLY": _DSTATUS,
    # a node lacking an origin's entries asks a peer that has them, and gets them in order
    "DFETCH": (("node_id", UINT), ("origin", UINT), ("from_seq", UINT)),
    "DENTRIES": (("sender_id", UINT), ("origin", UINT), ("from_seq", UINT), ("entries", BIN_LIST),
                 ("first_seq", UINT)),
    # anti-entropy: hashes of key buckets (group nil: the group hashes), then a bucket's key states
    "DTREE": (("node_id", UINT), ("repair_id", UINT), ("group", OPT_UINT)),
    "DTREE_REPLY": (("sender_id", UINT), ("repair_id", UINT), ("group", OPT_UINT), ("hashes", UINT_LIST),
                    ("applied", VECTOR)),
    "DRANGE": (("node_id", UINT), ("repair_id", UINT), ("bucket", UINT), ("cursor", OPT_KEY)),
    "DRANGE_REPLY": (("sender_id", UINT), ("repair_id", UINT), ("bucket", UINT), ("cursor", OPT_KEY),
                     ("items", PAIR_LIST), ("next_cursor", OPT_KEY), ("applied", VECTOR)),
    # quorums: a node that applied an origin's entries durably tells that origin (write_quorum > 1)
    "DACK": (("node_id", UINT), ("origin", UINT), ("seq", UINT)),
    # a read with read_quorum > 1 asks peers for their state of a key; stale replicas get the merge
    "DREAD": (("node_id", UINT), ("read_id", UINT), ("key", KEY)),
    "DREAD_REPLY": (("sender_id", UINT), ("read_id", UINT), ("state", OPT_BIN), ("applied", VECTOR)),
    "DPUSH": (("node_id", UINT), ("key", KEY), ("state", BIN)),
}

# Where each peer message names the node that sent it: the index of that field (DCHANGE names its
# origin, whose node id is origin >> 32). A node accepts a peer message only from the connection of
# the node it names (docs/SECURITY.md).
PEER_REQUESTS = frozenset({"ACK", "FETCH", "SNAPSHOT", "ROLE", "VOTE_REQUEST", "DSTATUS", "DFETCH", "DTREE",
                           "DRANGE", "DACK", "DREAD", "DPUSH"})       # sent to a peer port
PEER_STREAM = frozenset({"CHANGE", "HEARTBEAT", "DCHANGE"})          # published on a PUB
PEER_REPLIES = frozenset(PEER_MESSAGES) - PEER_REQUESTS - PEER_STREAM   # back on the DEALER that asked
PEER_SENDER_FIELD = {cmd: 0 for cmd in PEER_MESSAGES}
PEER_SENDER_FIELD.update({"VOTE_REQUEST": 1, "CHANGE": 1, "HEARTBEAT": 1, "ENTRIES": 1, "NEED_SNAPSHOT": 1,
                          "SNAPSHOT_CHUNK": 1, "VOTE": 1})


def peer_sender(message) -> int:
    """The node id a validated peer message says sent it."""
    if message.command == "DCHANGE":
        return message.fields[0] >> 32
    return message.fields[PEER_SENDER_FIELD[message.command]]


# Reply status words.
OK = "OK"
ERR = "ERR"

# Operations inside a log entry.
OP_PUT = 0
OP_DEL = 1

HEADER_FIELDS = 5  # version, command, client_id, request_id, open_from
PEER_ARRAY_MAX = 10_000  # entries or snapshot items in one peer message

# One shared Packer: packb() builds a new Packer per call, which costs more than the packing itself
# for small messages. Sharing is safe under the GIL: pack() runs in C without calling back into
# Python (no `default` hook) and resets its buffer on error.
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
CLIENT_ID_MAX = 64
TERM_MAX = (1 << 63) - 1
CONTEXT_MAX = 64 << 10
STR_MAX = 256
UINT64_MAX = (1 << 64) - 1


class Limits(NamedTuple):
    """Size limits a node enforces on requests (settings max_key_size, max_value_size, max_batch_items)."""

    max_key_size: int = 1024
    max_value_size: int = 1 << 20
    max_batch_items: int = 10_000
    max_request_size: int = 16 << 20


class Request(NamedTuple):
    command: str
    client_id: bytes
    request_id: int
    open_from: int       # the lowest request id this client still waits for (docs/PROTOCOL.md)
    args: tuple
    options: dict = {}   # per-request options (a trailing map): "w", "r" (dynamo quorums)


class Reply(NamedTuple):
    request_id: int
    ok: bool
    result: tuple        # the OK fields, or (code, message, details) for ERR


class PeerMessage(NamedTuple):
    command: str
    fields: tuple


class LogEntry(NamedTuple):
    term: int
    client_id: bytes
    request_id: int
    ops: tuple           # ((OP_PUT, key, value) | (OP_DEL, key), ...); None: a fence (see FENCE)


# A log entry whose ops are FENCE (nil) applies nothing: it records that the client's request id
# was declared not_found by OUTCOME and must never be applied (docs/REPLICATION.md).
FENCE = None


# ---------------------------------------------------------------- values

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


# Below this many bytes a message is decoded directly: with every length capped by the input's size,
# the worst nesting costs little. Above it, decoding walks the structure first without building it.
_SMALL_INPUT = 256


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
    caps = {"max_bin_len": min(max_bin_len, n), "max_str_len": min(max_bin_len, n),
            "max_array_len": min(max_array_len, n), "max_map_len": min(max_map_len, n),
            "max_ext_len": min(max_ext_len, n)}
    walker = msgpack.Unpacker(max_buffer_size=n, **caps)
    walker.feed(data)
    walker.skip()
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=use_list, **caps)


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


def encode_peer(command: str, *fields) -> bytes:
    return _pack([PROTOCOL_VERSION, command, *fields])


def decode_peer(body: bytes, limits: Limits = Limits()) -> PeerMessage:
    """Parse and validate one peer message; raises a RequestError subclass on bad input."""
    msg = _unpack_body(body, limits)
    if type(msg) is not list or len(msg) < 2 or msg[0] != PROTOCOL_VERSION or type(msg[1]) is not str:
        raise errors.MalformedMessage("peer message must be [version, command, ...]")
    return _validate_peer(msg, limits)


def _validate_peer(msg, limits):
    validators = _PEER_VALIDATORS.get(msg[1])
    if validators is None:
        raise errors.UnknownCommand(f"unknown peer command {msg[1][:40]!r}")
    fields = msg[2:]
    if len(fields) != len(validators):
        raise errors.BadArgument(f"{msg[1]} takes {len(validators)} fields, got {len(fields)}")
    for (check, name), value in zip(validators, fields):
        check(msg[1], name, value, limits)
    return PeerMessage(msg[1], tuple(fields))


def decode_request(body: bytes, limits: Limits = Limits()) -> Request:
    """Parse and fully validate one request body, as a client port receives it. Raises a RequestError
    subclass on any bad input; the exception carries `request_id` (0 when it could not be read) so
    the reply can name it. A peer message gets WrongPort: peers talk on the peer port."""
    msg = _unpack_body(body, limits)
    if type(msg) is list and len(msg) >= 2 and type(msg[1]) is str and msg[1] in PEER_MESSAGES:
        raise errors.WrongPort(f"{msg[1]} is a peer message; this is a client port (peers use the peer port)")
    return _validate_request(msg, limits)


def _validate_request(msg, limits) -> Request:
    if type(msg) is not list or len(msg) < HEADER_FIELDS:
        raise errors.MalformedMessage(
            "body must be an array [version, command, client_id, request_id, open_from, ...]")
    version, command, client_id, request_id, open_from = msg[0], msg[1], msg[2], msg[3], msg[4]
    # request id 0 is reserved: it names, in an error reply, a request whose own id could not be read
    rid_ok = type(request_id) is int and 0 < request_id <= UINT64_MAX
    try:
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise errors.UnsupportedVersion(f"protocol version {version!r} not supported; this node speaks {PROTOCOL_VERSION}")
        if type(command) is not str:
            raise errors.MalformedMessage("command must be a string")
        if type(client_id) is not bytes or not 0 < len(client_id) <= CLIENT_ID_MAX:
            raise errors.BadArgument(f"client_id must be 1..{CLIENT_ID_MAX} bytes")
        if not rid_ok:
            raise errors.BadArgument("request_id must be an integer from 1 to 2**64 - 1 (0 is reserved)")
        if type(open_from) is not int or not 0 <= open_from <= request_id:
            raise errors.BadArgument("open_from must be an integer from 0 to request_id")
        validators = _VALIDATORS.get(command)
        if validators is None:
            raise errors.UnknownCommand(f"unknown command {command[:40]!r}")
        args = msg[HEADER_FIELDS:]
        options = {}
        if len(args) == len(validators) + 1 and type(args[-1]) is dict and command in OPTION_COMMANDS:
            options = _check_options(command, args.pop())
        if len(args) != len(validators):
            raise errors.BadArgument(f"{command} takes {len(validators)} fields after the header, got {len(args)}")
        for (check, name), value in zip(validators, args):
            check(command, name, value, limits)
    except errors.RequestError as exc:
        exc.request_id = request_id if rid_ok else 0
        raise
    if command == "PUT_MANY":
        args[0] = tuple(tuple(item) for item in args[0])
    return Request(command, client_id, request_id, open_from, tuple(args), options)


def _check_options(command, options) -> dict:
    allowed = OPTION_COMMANDS[command]
    for name, value in options.items():
        if name not in allowed:
            raise errors.BadArgument(f"{command} takes the options {', '.join(allowed)}, not {str(name)[:20]!r}")
        if type(value) is not int or not 1 <= value <= QUORUM_MAX:
            raise errors.BadArgument(f"{command} option {name} must be an integer from 1 to {QUORUM_MAX}")
    return options


def _is_uint(x) -> bool:
    return type(x) is int and 0 <= x <= UINT64_MAX


def _check_key(command, name, value, limits, allow_empty=False):
    if not isinstance(value, bytes):
        raise errors.BadArgument(f"{command}.{name} must be bin, got {type(value).__name__}")
    if not value and not allow_empty:
        raise errors.InvalidKey(f"{command}.{name}: empty key")
    if len(value) > limits.max_key_size:
        raise errors.KeyTooLarge(f"{command}.{name}: key of {len(value)} bytes exceeds max_key_size {limits.max_key_size}")


def _check_value(command, name, value, limits):
    if not isinstance(value, bytes):
        raise errors.BadArgument(f"{command}.{name} must be bin holding a msgpack value, got {type(value).__name__}")
    if len(value) > limits.max_value_size:
        raise errors.ValueTooLarge(
            f"{command}.{name}: value of {len(value)} bytes exceeds max_value_size {limits.max_value_size}")
    try:
        unpack_value(value, limits)
    except Exception:
        raise errors.BadArgument(f"{command}.{name} is not exactly one msgpack object") from None


def _check_opt_value(command, name, value, limits):
    if value is not None:
        _check_value(command, name, value, limits)


def _check_opt_key(command, name, value, limits):
    """A key bound or cursor: nil, or bin that may be empty (the start of the key space)."""
    if value is not None:
        _check_key(command, name, value, limits, allow_empty=True)


def _check_bool(command, name, value, limits):
    if not isinstance(value, bool):
        raise errors.BadArgument(f"{command}.{name} must be a boolean")


def _check_opt_uint(command, name, value, limits):
    if value is not None and not _is_uint(value):
        raise errors.BadArgument(f"{command}.{name} must be a non-negative integer or nil")


def _check_items(command, name, value, limits):
    if not isinstance(value, list) or not value:
        raise errors.BadArgument(f"{command}.{name} must be a non-empty array of [key, value]")
    if len(value) > limits.max_batch_items:
        raise errors.RequestTooLarge(f"{command}: {len(value)} items exceed max_batch_items {limits.max_batch_items}")
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise errors.BadArgument(f"{command}.{name}: each item must be [key, value]")
        _check_key(command, name, item[0], limits)
        _check_value(command, name, item[1], limits)


def _check_uint(command, name, value, limits):
    if not _is_uint(value):
        raise errors.BadArgument(f"{command}.{name} must be an unsigned 64-bit integer")


def _check_term(command, name, value, limits):
    if type(value) is not int or not 0 <= value <= TERM_MAX:
        raise errors.BadArgument(f"{command}.{name} must be a term from 0 to {TERM_MAX}")


def _check_str(command, name, value, limits):
    if type(value) is not str or len(value) > STR_MAX:
        raise errors.BadArgument(f"{command}.{name} must be a string of at most {STR_MAX} characters")


def _check_bin_list(command, name, value, limits):
    if type(value) is not list or any(type(v) is not bytes for v in value):
        raise errors.BadArgument(f"{command}.{name} must be an array of bin")


def _check_pair_list(command, name, value, limits):
    if type(value) is not list:
        raise errors.BadArgument(f"{command}.{name} must be an array of [bin, bin]")
    for item in value:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not bytes or type(item[1]) is not bytes:
            raise errors.BadArgument(f"{command}.{name} must be an array of [bin, bin]")


def _check_vector(command, name, value, limits):
    if type(value) is not list or len(value) > PEER_ARRAY_MAX or any(
            type(p) is not list or len(p) != 2 or not _is_uint(p[0]) or not _is_uint(p[1]) for p in value):
        raise errors.BadArgument(f"{command}.{name} must be an array of [uint, uint]")


def _check_uint_list(command, name, value, limits):
    if type(value) is not list or len(value) > PEER_ARRAY_MAX or not all(_is_uint(v) for v in value):
        raise errors.BadArgument(f"{command}.{name} must be an array of uint")


def _check_bin(command, name, value, limits):
    if type(value) is not bytes:
        raise errors.BadArgument(f"{command}.{name} must be bin")


def _check_opt_bin(command, name, value, limits):
    if value is not None:
        _check_bin(command, name, value, limits)


def _check_context(command, name, value, limits):
    if type(value) is not bytes or len(value) > CONTEXT_MAX:
        raise errors.BadArgument(f"{command}.{name} must be bin of at most {CONTEXT_MAX} bytes, as "
                                 f"get_versions returned it")
    decode_context(value)


_CHECKERS = {
    KEY: _check_key, OPT_KEY: _check_opt_key, VALUE: _check_value, OPT_VALUE: _check_opt_value,
    BOOL: _check_bool, OPT_UINT: _check_opt_uint, ITEMS: _check_items,
    UINT: _check_uint, TERM: _check_term, STR: _check_str, BIN_LIST: _check_bin_list, PAIR_LIST: _check_pair_list,
    VECTOR: _check_vector, CONTEXT: _check_context, UINT_LIST: _check_uint_list, BIN: _check_bin,
    OPT_BIN: _check_opt_bin,
}
# command -> ((checker, field name), ...), derived once from REQUESTS
_VALIDATORS = {cmd: tuple((_CHECKERS[ftype], name) for name, ftype in spec) for cmd, spec in REQUESTS.items()}
_PEER_VALIDATORS = {cmd: tuple((_CHECKERS[ftype], name) for name, ftype in spec)
                    for cmd, spec in PEER_MESSAGES.items()}


# ---------------------------------------------------------------- replies

def encode_ok(request_id: int, *result) -> bytes:
    return _pack([PROTOCOL_VERSION, OK, request_id, *result])


def encode_error(request_id: int, code: str, message: str, details=None) -> bytes:
    return _pack([PROTOCOL_VERSION, ERR, request_id, code, message, details or {}])


def encode_exception(request_id: int, exc: errors.ZmqstoreError) -> bytes:
    return encode_error(request_id, exc.code, exc.message or str(exc), exc.details)


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
    return _pack(entry)


def entry_term(data: bytes) -> int:
    """The term of a stored log entry (its first field)."""
    return decode_entry(data).term


def _fields(obj, n):
    """`obj` as n fields: it must be an array of exactly n items (a map would unpack as its keys)."""
    if type(obj) is not tuple or len(obj) != n:
        raise ValueError(f"expected an array of {n}")
    return obj


def decode_entry(data: bytes) -> LogEntry:
    term, client_id, request_id, ops = _fields(_unpackb(data, UINT64_MAX, UINT64_MAX, 0, use_list=False), 4)
    return LogEntry(term, client_id, request_id, ops)


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
