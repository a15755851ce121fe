"""Validation of decoded messages against the tables in schema.py: every field of every request
and peer message is checked before anything acts on it; bad input raises a RequestError subclass."""
from .. import errors
from .schema import (BIN, BIN_LIST, BOOL, BOOL_OPTIONS, CLIENT_ID_MAX, CONTEXT, CONTEXT_MAX, HEADER_FIELDS, ITEMS, KEY, OPT_BIN,
                     OPT_KEY, OPT_STR, OPT_UINT, OPT_VALUE, OPTION_COMMANDS, PAIR_LIST, PEER_ARRAY_MAX, PEER_MESSAGES,
                     POSITION,
                     PROTOCOL_VERSION, QUORUM_MAX, REQUESTS, STR, STR_MAX, TERM, TERM_MAX, UINT, UINT64_MAX, UINT_LIST,
                     VALUE, VECTOR, VERSIONS, PeerMessage, Request)
from .values import _is_uint, decode_context, is_one_scalar, unpack_value


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
        if name in BOOL_OPTIONS:
            if type(value) is not bool:
                raise errors.BadArgument(f"{command} option {name} must be true or false")
        elif type(value) is not int or not 1 <= value <= QUORUM_MAX:
            raise errors.BadArgument(f"{command} option {name} must be an integer from 1 to {QUORUM_MAX}")
    return {name: value for name, value in options.items() if value is not False}   # false: as if absent

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
    if is_one_scalar(value):        # bytes, a number, nil, a bool: judged from the header alone
        return
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


def _check_opt_str(command, name, value, limits):
    if value is not None:
        _check_str(command, name, value, limits)


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


def _check_versions(command, name, value, limits):
    if type(value) is not list or len(value) != 2 or not all(_is_uint(v) for v in value) or value[0] > value[1]:
        raise errors.BadArgument(f"{command}.{name} must be [lowest, highest]: two uints, lowest <= highest")


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


def _check_position(command, name, value, limits):
    if value is None or _is_uint(value):
        return
    try:
        _check_vector(command, name, value, limits)
    except errors.BadArgument:
        raise errors.BadArgument(f"{command}.{name} must be nil, a seq (uint) or an applied vector "
                                 f"(array of [uint, uint])") from None


_CHECKERS = {
    KEY: _check_key, OPT_KEY: _check_opt_key, VALUE: _check_value, OPT_VALUE: _check_opt_value,
    BOOL: _check_bool, OPT_UINT: _check_opt_uint, ITEMS: _check_items,
    UINT: _check_uint, TERM: _check_term, STR: _check_str, BIN_LIST: _check_bin_list, PAIR_LIST: _check_pair_list,
    VECTOR: _check_vector, CONTEXT: _check_context, UINT_LIST: _check_uint_list, BIN: _check_bin,
    OPT_BIN: _check_opt_bin, OPT_STR: _check_opt_str, POSITION: _check_position, VERSIONS: _check_versions,
}
# command -> ((checker, field name), ...), derived once from REQUESTS
_VALIDATORS = {cmd: tuple((_CHECKERS[ftype], name) for name, ftype in spec) for cmd, spec in REQUESTS.items()}
_PEER_VALIDATORS = {cmd: tuple((_CHECKERS[ftype], name) for name, ftype in spec)
                    for cmd, spec in PEER_MESSAGES.items()}
