"""One exception hierarchy for zmqstore, mirrored by the wire error codes in docs/PROTOCOL.md."""


class ZmqstoreError(Exception):
    """Base of every error zmqstore raises. `code` is the wire error code, when there is one."""

    code = "internal"

    def __init__(self, message="", details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(ZmqstoreError):
    """A setting is missing, malformed or inconsistent; the message says what to change."""

    code = "config"


class DataDirError(ZmqstoreError):
    """The data dir is missing, foreign (another node id or mode), or in use."""

    code = "data_dir"


class StorageError(ZmqstoreError):
    """RocksDB refused an operation."""

    code = "storage"


class BadBackup(ZmqstoreError):
    """A backup file is not whole, not intact, or not for this node (docs/OPERATIONS.md)."""

    code = "bad_backup"


# --- errors a node sends back to a client (the request changed nothing) ---

class RequestError(ZmqstoreError):
    """The request was refused; it changed nothing."""

    code = "bad_request"


class MalformedMessage(RequestError):
    """The frames are not a zmqstore message (bad msgpack, wrong frame count, not an array)."""

    code = "malformed"


class UnsupportedVersion(RequestError):
    code = "unsupported_version"


class UnknownCommand(RequestError):
    code = "unknown_command"


class BadArgument(RequestError):
    """Wrong number of fields or a field of the wrong type."""

    code = "bad_argument"


class WrongPort(RequestError):
    """A peer message sent to a client port: peer messages go to the peer port (docs/SECURITY.md)."""

    code = "wrong_port"


class Forbidden(RequestError):
    """The client's key may not do this: a write from a read-only key (docs/SECURITY.md)."""

    code = "forbidden"


class InvalidKey(RequestError):
    """The key is empty."""

    code = "invalid_key"


class KeyTooLarge(RequestError):
    code = "key_too_large"


class ValueTooLarge(RequestError):
    code = "value_too_large"


class RequestTooLarge(RequestError):
    """Too many items in one request (put_many) or a request over max_request_size."""

    code = "request_too_large"


class UnsupportedOperation(RequestError):
    """The operation exists but this node's mode does not offer it (cas in dynamo mode)."""

    code = "unsupported_operation"


class NoSpace(RequestError):
    """The node is short of disk space (over max_data_bytes, or its file system under
    min_free_bytes free): it refuses writes that add data; reads and deletes go on, and the alarm
    clears by itself once space is back (docs/OPERATIONS.md, "Disk space"). details: used, free."""

    code = "no_space"


class NotPrimary(ZmqstoreError):
    """This node does not accept writes; details carry primary_id and primary_address when known."""

    code = "not_primary"


class Unavailable(ZmqstoreError):
    """The node cannot serve the request now (no quorum, shutting down); retrying later may work."""

    code = "unavailable"


class ChangeInProgress(Unavailable):
    """A membership change waits for the previous one (or the new primary's first entry) to commit;
    retrying shortly works (docs/MEMBERSHIP.md)."""

    code = "change_in_progress"


class ReplicationTimeout(ZmqstoreError):
    """The write was not confirmed in time; its outcome is unknown (ask by request id)."""

    code = "replication_timeout"


class RequestFenced(ZmqstoreError):
    """This request id was declared not_found by an OUTCOME query: it was not applied and never will be."""

    code = "request_fenced"


class Compacted(ZmqstoreError):
    """A watch asked to resume from a seq whose successors the node's log no longer holds.
    `min_from` (also in details) is the lowest position it can resume from; or start again
    with snapshot=True (docs/WATCH.md)."""

    code = "compacted"

    def __init__(self, message="", details=None):
        super().__init__(message, details)
        self.min_from = self.details.get("min_from")


class InternalError(ZmqstoreError):
    """The node failed to serve a request: a bug, logged with its traceback on the node."""

    code = "internal"


# --- client side only ---

class ConnectionTimeout(ZmqstoreError):
    """No node answered within the client's deadline; the outcome of a write is unknown."""

    code = "timeout"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (
        ConfigError, DataDirError, StorageError, RequestError, MalformedMessage, UnsupportedVersion,
        UnknownCommand, WrongPort, Forbidden, BadArgument, InvalidKey, KeyTooLarge, ValueTooLarge, RequestTooLarge,
        UnsupportedOperation, NoSpace, NotPrimary, Unavailable, ChangeInProgress, ReplicationTimeout, RequestFenced, Compacted,
        InternalError,
        ConnectionTimeout,
    )
}


def error_from_code(code, message="", details=None):
    """The exception for a wire error code; unknown codes map to the base class, keeping the code."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        err = ZmqstoreError(message, details)
        err.code = code
        return err
    return cls(message, details)
