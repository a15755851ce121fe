"""Serves client commands against local storage with group commit; no sockets.

The node loop feeds requests in arrival order and calls `flush()` once per loop iteration: every
write staged since the last flush goes to RocksDB in one batch (one fsync), and only then may the
replies leave. Writes are judged against storage plus the staged batch, so outcomes follow arrival
order. A write's outcome is remembered per client (sessions.py), so a client that retries after a
lost reply gets the first outcome, not a second apply.
"""
import logging
import time

from . import errors, protocol
from .protocol import OP_DEL, OP_PUT, LogEntry
from .sessions import Sessions
from .storage import META_APPLIED_SEQ, META_LAST_SEQ, META_TERM

SCAN_PAGE_ITEMS = 1000          # a SCAN reply holds at most this many items ...
SCAN_PAGE_BYTES = 1 << 20       # ... or about this many bytes; the client asks for the next page
TRIM_SLACK = 0.1                # trim the log once it exceeds log_retention by 10% (amortises the delete)

_MISSING = object()
log = logging.getLogger(__name__)


class Engine:
    def __init__(self, storage, config, version):
        self.storage = storage
        self.config = config
        self.version = version
        self.started = time.monotonic()
        self.limits = protocol.Limits(config.max_key_size, config.max_value_size,
                                      config.max_batch_items, config.max_request_size)
        self.role = "primary"
        self._batch = None
        self._next_seq = storage.last_seq + 1
        self.sessions = Sessions(config.session_timeout)
        self._rebuild_sessions()
        if storage.term == 0:
            # A fresh standalone node bootstraps term 1 (DESIGN.md 4.2: an empty dir starts as primary of term 1).
            batch = storage.batch()
            batch.set_meta(META_TERM, 1)
            storage.commit(batch)
        self._handlers = {
            "PING": self._ping, "GET": self._get, "PUT": self._put, "DEL": self._delete, "CAS": self._cas,
            "PUT_MANY": self._put_many, "SCAN": self._scan, "STATUS": self._status,
        }

    def _rebuild_sessions(self):
        """Outcomes of writes still in the retained log; pruned as their clients come back."""
        now = time.monotonic()
        for seq, raw in self.storage.log_entries(self.storage.first_seq):
            entry = protocol.decode_entry(raw)
            if entry.client_id:
                self.sessions.record(entry.client_id, entry.request_id, seq, now)
        if self.sessions.clients:
            log.info("recovered %d write outcomes of %d clients from the retained log",
                     len(self.sessions), self.sessions.clients)

    def housekeeping(self, now):
        """Periodic work: forget clients that went silent."""
        expired = self.sessions.expire(now)
        if expired:
            log.debug("forgot %d idle client sessions", expired)

    # ------------------------------------------------------------ entry points for the loop

    def handle(self, request) -> bytes:
        """One decoded request -> its reply body. The reply may leave only after the next flush()."""
        return self._handlers[request.command](request)

    @property
    def staging(self) -> bool:
        """True while writes wait for flush(): a reply given now may depend on them."""
        return self._batch is not None

    def flush(self):
        """Commit everything staged since the last flush in one write batch (fsync per setting).
        Any failure raises StorageError: the node must stop, since replies may wait on this batch."""
        batch = self._batch
        if batch is None:
            return
        try:
            last_seq = self._next_seq - 1
            batch.set_meta(META_LAST_SEQ, last_seq)
            batch.set_meta(META_APPLIED_SEQ, last_seq)
            self._maybe_trim(batch, last_seq)
            self.storage.commit(batch)
        except errors.StorageError:
            raise
        except Exception as exc:
            raise errors.StorageError(f"commit failed: {type(exc).__name__}: {exc}") from exc
        self._batch = None

    def _maybe_trim(self, batch, last_seq):
        retention = self.config.log_retention
        first_seq = self.storage.first_seq
        if last_seq - first_seq + 1 <= retention * (1 + TRIM_SLACK):
            return
        batch.trim_log(first_seq, last_seq - retention + 1)

    # ------------------------------------------------------------ helpers

    def _staging(self):
        if self._batch is None:
            self._batch = self.storage.batch()
        return self._batch

    def _lookup(self, key):
        if self._batch is not None:
            value = self._batch.overlay.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return self.storage.get(key)

    def _append(self, request, ops):
        """Stage one log entry and its effect on data; returns its seq."""
        batch = self._staging()
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = LogEntry(self.storage.term, request.client_id, request.request_id, ops)
        batch.append(seq, protocol.encode_entry(entry))
        for op in ops:
            if op[0] == OP_PUT:
                batch.put(op[1], op[2])
            else:
                batch.delete(op[1])
        self.sessions.record(request.client_id, request.request_id, seq, time.monotonic())
        return seq

    def _already_applied(self, request):
        seq = self.sessions.lookup(request.client_id, request.request_id, request.open_from, time.monotonic())
        return None if seq is None else protocol.encode_ok(request.request_id, True, seq)

    # ------------------------------------------------------------ commands (reply layouts: docs/PROTOCOL.md)

    def _ping(self, req):
        return protocol.encode_ok(req.request_id, self.config.node_id)

    def _get(self, req):
        return protocol.encode_ok(req.request_id, self._lookup(req.args[0]))

    def _put(self, req):
        done = self._already_applied(req)
        if done:
            return done
        key, value = req.args
        return protocol.encode_ok(req.request_id, True, self._append(req, ((OP_PUT, key, value),)))

    def _delete(self, req):
        done = self._already_applied(req)
        if done:
            return done
        key = req.args[0]
        if self._lookup(key) is None:
            return protocol.encode_ok(req.request_id, False, 0)
        return protocol.encode_ok(req.request_id, True, self._append(req, ((OP_DEL, key),)))

    def _cas(self, req):
        if self.config.mode == "dynamo":
            raise errors.UnsupportedOperation("cas is not offered in dynamo mode: concurrent writers "
                                              "on other nodes cannot be compared against")
        done = self._already_applied(req)
        if done:
            return done
        key, expected, new = req.args
        if self._lookup(key) != expected:
            return protocol.encode_ok(req.request_id, False, 0)
        return protocol.encode_ok(req.request_id, True, self._append(req, ((OP_PUT, key, new),)))

    def _put_many(self, req):
        done = self._already_applied(req)
        if done:
            return done
        ops = tuple((OP_PUT, key, value) for key, value in req.args[0])
        return protocol.encode_ok(req.request_id, True, self._append(req, ops))

    def _scan(self, req):
        start, end, prefix, limit = req.args
        # Scans read RocksDB directly, so staged writes that arrived before this scan go first.
        self.flush()
        page = SCAN_PAGE_ITEMS if limit is None else min(limit, SCAN_PAGE_ITEMS)
        items, next_key = self.storage.scan(start, end, prefix, page, SCAN_PAGE_BYTES)
        if limit is not None and len(items) >= limit:
            next_key = None
        return protocol.encode_ok(req.request_id, [list(item) for item in items], next_key)

    def _status(self, req):
        return protocol.encode_ok(req.request_id, self.status())

    def status(self) -> dict:
        s = self.storage
        cfg = self.config
        return {
            "node_id": cfg.node_id, "mode": cfg.mode, "role": self.role, "term": s.term,
            "last_seq": self._next_seq - 1, "commit_seq": s.last_seq, "applied_seq": s.applied_seq,
            "first_seq": s.first_seq, "keys_estimate": s.approximate_keys(),
            "address": cfg.address, "pub_address": f"{cfg.host}:{cfg.pub_port}",
            "fsync": cfg.fsync, "uptime": round(time.monotonic() - self.started, 3),
            "version": self.version, "peers": [],
        }
