"""The blocking Python client: one request at a time with retries under the same request id, and
pipelines (docs/CLIENT.md). The operations themselves are api.Commands, shared with the Pipeline."""
import time

from . import errors, transport
from .api import Call, Dot, Version, Versions, encode_key
from .client_base import DEFAULT_TIMEOUT, Attempts, ClientBase
from .connection import RETRYABLE, Connection, Retry
from .pipeline import Pipeline
from .watcher import WATCH_WINDOW, DynamoWatchEvent, WatchEvent, Watcher, check_watch_args

__all__ = ["Client", "Pipeline", "Retry", "RETRYABLE", "Version", "Versions", "Dot", "encode_key", "Watcher",
           "WatchEvent", "DynamoWatchEvent"]


class Client(ClientBase):
    """A connection to a zmqstore cluster. Not thread-safe: use one per thread (like a socket).

    `endpoints`: "host:port", a comma-separated string or a list. `decode_keys`: scan yields str
    keys (bytes for keys that are not UTF-8); False yields bytes always.

    With keys (CurveZMQ, docs/SECURITY.md): `secret_key` is this client's NAME.key_secret and
    `node_keys` the directory of the nodes' public keys (node<ID>.key); each endpoint then names its
    node, "ID@host:port", so the client knows which key that node must prove it holds. A redirect
    names the primary's id, so it can be followed to any node.
    """

    def __init__(self, endpoints, timeout=DEFAULT_TIMEOUT, retry=None, decode_keys=True,
                 max_request_size=16 << 20, secret_key=None, node_keys=None):
        super().__init__(retry, decode_keys, max_request_size)
        self.connection = Connection(endpoints, timeout, secret_key, node_keys)

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _execute(self, call):
        """Send one request and return its decoded result, retrying as `Attempts` says."""
        request_id = self.last_request_id = self.next_request_id()
        body = self.encode(call, request_id)
        connection = self.connection
        attempts = Attempts(self, call, request_id)
        while True:
            try:
                return call.decode(connection.attempt(body, request_id))
            except errors.ZmqstoreError as exc:
                pause, hint = attempts.failed(exc, connection)
            time.sleep(pause)
            connection.next_endpoint(hint)

    # ------------------------------------------------------------ operations beyond api.Commands

    def outcome(self, request_id) -> str:
        """What became of a write that raised ReplicationTimeout, ConnectionTimeout or another
        error after it may have been sent (its `exc.request_id`), asked of the current primary:
        "committed": it was applied, once. "not_found": it was not applied, and the primary has
        fenced its request id (logged and committed a marker), so it never will be, even if a copy
        is still on its way. "unknown": the node cannot tell (more than 30 s passed, so this client
        no longer asks nodes to keep the record, or the primary has not been recording writes for
        long enough, e.g. it restarted on a trimmed log). The answer waits for the commit of the
        write or fence; while no majority answers, the call retries like any other and finally
        raises the last error."""
        state, _seq = self._execute(Call("OUTCOME", (request_id,), tuple))
        self.resolved(request_id, state)
        return state

    def scan(self, prefix=None, start=None, end=None, limit=None, stale=False):
        """Iterate (key, value) in key order over [start, end) and/or a prefix, at most `limit` items.
        Pages are fetched as the iterator advances; the scan is not a snapshot across pages.
        `stale`: read the node talked to, without redirect (a committed prefix)."""
        prefix, cursor, end = self._scan_range(prefix, start, end)
        remaining = limit
        while remaining is None or remaining > 0:
            page = self._execute(self._scan_call(prefix, cursor, end, remaining, stale))
            yield from page.items
            if remaining is not None:
                remaining -= len(page.items)
            cursor = page.cursor
            if cursor is None:
                return

    def watch(self, prefix=b"", from_seq=None, snapshot=False, stale=False, window=WATCH_WINDOW,
              from_vector=None) -> Watcher:
        """Follow every committed change under `prefix` in seq order (docs/WATCH.md): a Watcher,
        iterating WatchEvent(seq, key, value, deleted), on a connection of its own. `from_seq`: yield
        the changes after that seq (None: from when the node accepts the watch); a seq the log no
        longer holds raises Compacted (its `min_from` says from where it can resume). `snapshot`:
        first every key under the prefix as it is at one seq (events with that seq), then the
        changes after it. `stale`: any node may serve it (default: the primary). `window`: bytes the
        node may send ahead. Reconnects and resumes on its own across failovers; close() it.
        Dynamo mode: the node talked to serves every change it applies, from any origin, as
        DynamoWatchEvent (the write's dot, the key's siblings after it); resume with
        `from_vector={origin: seq}` (a watcher's `through` or `resume_seq`) instead of from_seq."""
        check_watch_args(from_seq, snapshot, window, from_vector)
        position = dict(from_vector) if from_vector is not None else from_seq
        return Watcher(self, encode_key(prefix) if prefix else b"", position, snapshot, stale, window)

    def pipeline(self, max_in_flight=64) -> Pipeline:
        """Queue operations, then execute() them with up to max_in_flight requests in flight."""
        if not 1 <= max_in_flight <= transport.MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be 1..{transport.MAX_IN_FLIGHT}")
        return Pipeline(self, max_in_flight)
