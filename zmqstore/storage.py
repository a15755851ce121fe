"""Durable state in RocksDB (via rocksdict): column families data, log and meta, atomic write batches.

Key layouts are documented in docs/STORAGE.md. Every change is one WriteBatch holding the data, its
log entry and the bookkeeping, so a crash leaves all of a change or none of it.
"""
import logging
import os
import struct
import threading
import time

import rocksdict

from . import datadir
from .errors import DataDirError, StorageError
from .protocol import entry_term  # entries are stored as the protocol encodes them; only the term is read

COLUMN_FAMILIES = ("data", "log", "meta")

META_LAST_SEQ = b"last_seq"      # highest seq in the log
META_APPLIED_SEQ = b"applied_seq"  # highest seq applied to data
META_FIRST_SEQ = b"first_seq"    # lowest seq still in the log (older entries were trimmed)
META_TERM = b"term"
META_LAST_TERM = b"last_term"    # term of the entry at last_seq (or of the snapshot, when the log is empty)
META_TRIM_TERM = b"trim_term"    # term of the entry at first_seq - 1 (trimmed, or the snapshot's)
META_LEADER = b"leader_id"      # the primary this node knows for `term` (0: unknown)
META_RESTORING = b"restoring"   # 1 while a snapshot is being installed: data is incomplete
META_VOTED_FOR = b"voted_for"   # the node this node voted for in `term` (0: none)
META_LEARNER = b"learner"       # 1: a new data dir that has not caught up yet; it must not vote
META_GENESIS = b"genesis_term"  # a data dir restored from a backup (--restore): the term of the election its
                                # learner may vote and stand in, with the other restored nodes (0: none)
META_MEMBERS = b"members"       # the membership applied (committed) here, protocol.encode_members (not a u64)

# meta key -> Storage attribute holding its value in memory
_META_ATTRS = {
    META_LAST_SEQ: "last_seq", META_APPLIED_SEQ: "applied_seq", META_FIRST_SEQ: "first_seq",
    META_TERM: "term", META_LAST_TERM: "last_term", META_TRIM_TERM: "trim_term",
    META_LEADER: "leader_id", META_RESTORING: "restoring", META_VOTED_FOR: "voted_for",
    META_LEARNER: "learner", META_GENESIS: "genesis_term",
}
# Dynamo mode's keys (docs/STORAGE.md, "Dynamo mode"): its bookkeeping in meta, and its log keyed
# by origin and seq. Dynamo mode writes them through Batch.put_cf and reads them through iter_cf;
# dynamo/layout.py adds what is computed from them (buckets, hashes, origins).
META_APPLIED = b"d:applied:"      # + origin (u64): highest seq of that origin applied here
META_FIRST = b"d:first:"          # + origin (u64): lowest seq of that origin still in the log
META_HLC = b"d:hlc"               # the hybrid clock's last timestamp
META_TOMB = b"d:tomb:"            # + key: the key holds tombstones only (waits for garbage collection)
META_TOMB_END = b"d:tomb;"        # just above every META_TOMB key
META_HASH = b"d:h:"               # + bucket (u16) + key: the key's state hash (anti-entropy index)
META_DMEMBERS = b"d:members"      # the membership, protocol.encode_dynamo_members (docs/MEMBERSHIP.md)
META_REPLICAS = b"d:replicas"     # copies of each key (u64, 0: every member), fixed when the cluster was created
META_HINT = b"d:hint:"            # + owner (u64) + origin (u64): low and high seq (u64 each) held for that owner
META_MOVING = b"d:moving:"        # + partition (u16): a partition this node owns but has not pulled yet
META_LEAVING = b"d:leaving:"      # + partition (u16): a partition held but no longer owned, b"w" whole, b"p" partial
META_PLACED = b"d:placed"         # this node's partitions were marked to pull when it was added (--join, add-member)
META_RUN = b"d:run:"              # + run (u64): a run of this node started here (its origins are never reused)
_LOG_KEY = struct.Struct(">QQ")


def log_key(origin, seq) -> bytes:
    """A dynamo log entry's key: origin and seq, big-endian, so each origin's entries are in order."""
    return _LOG_KEY.pack(origin, seq)


# An upper bound for every key (keys are at most 65,536 bytes), for range deletes of all data.
_ALL_KEYS_END = b"\xff" * 65537
_U64 = struct.Struct(">Q")
log = logging.getLogger(__name__)

UNFLUSHED_MAX = 32 << 20      # bytes of memtables (all column families) before RocksDB flushes them
# A WAL file is kept for reuse on a file system of at least this size (recycled_wal_files;
# docs/STORAGE.md, "Write-ahead log files kept for reuse").
RECYCLE_WAL_MIN_FS = 32 * UNFLUSHED_MAX     # 1 GiB


class DataView:
    """A point-in-time view of the data column family: one RocksDB iterator, made when the view
    is, which every page seeks again. A RocksDB iterator reads the database as of its creation,
    whatever is written after. (Not rocksdict's Snapshot: the iterators it makes from a
    column-family view read the live data, later writes included; seen with rocksdict 0.3.29.)"""
    __slots__ = ("_it",)

    def __init__(self, cf):
        self._it = cf.iter()

    def iter(self):
        return self._it


def seq_key(seq: int) -> bytes:
    return _U64.pack(seq)


def _u64(raw) -> int:
    return _U64.unpack(raw)[0] if raw is not None else 0


class Batch:
    """The changes of one atomic write: data, log entries and bookkeeping (`meta`, applied to the
    Storage's in-memory copy once written)."""

    __slots__ = ("wb", "meta", "members", "_cf")

    def __init__(self, cfs):
        self.wb = rocksdict.WriteBatch(raw_mode=True)
        self.meta = {}
        self.members = None
        self._cf = cfs

    def put(self, key: bytes, value: bytes):
        self.wb.put(key, value, self._cf["data"])

    def delete(self, key: bytes):
        self.wb.delete(key, self._cf["data"])

    def append(self, seq: int, entry: bytes):
        self.wb.put(seq_key(seq), entry, self._cf["log"])

    def trim_log(self, first_seq: int, new_first_seq: int, trim_term: int):
        """Drop entries first_seq .. new_first_seq - 1; trim_term is the term of the last one dropped."""
        self.wb.delete_range(seq_key(first_seq), seq_key(new_first_seq), self._cf["log"])
        self.set_meta(META_FIRST_SEQ, new_first_seq)
        self.set_meta(META_TRIM_TERM, trim_term)

    def truncate_log(self, from_seq: int, last_seq: int, new_last_term: int):
        """Drop entries from_seq .. last_seq (an uncommitted suffix that conflicts with the primary)."""
        self.wb.delete_range(seq_key(from_seq), seq_key(last_seq + 1), self._cf["log"])
        self.set_meta(META_LAST_SEQ, from_seq - 1)
        self.set_meta(META_LAST_TERM, new_last_term)

    def clear_all(self):
        """Empty data and the log (a snapshot is about to be installed)."""
        self.wb.delete_range(b"", _ALL_KEYS_END, self._cf["data"])
        self.wb.delete_range(seq_key(0), seq_key((1 << 64) - 1), self._cf["log"])

    # Raw access by column family, for dynamo mode's own layouts (docs/STORAGE.md).
    def put_cf(self, cf: str, key: bytes, value: bytes):
        self.wb.put(key, value, self._cf[cf])

    def delete_cf(self, cf: str, key: bytes):
        self.wb.delete(key, self._cf[cf])

    def delete_range_cf(self, cf: str, start: bytes, end: bytes):
        self.wb.delete_range(start, end, self._cf[cf])

    def set_meta(self, name: bytes, value: int):
        self.wb.put(name, _U64.pack(value), self._cf["meta"])
        self.meta[name] = value

    def set_members(self, encoded: bytes):
        """The membership applied with this batch (leader mode, docs/MEMBERSHIP.md)."""
        self.wb.put(META_MEMBERS, encoded, self._cf["meta"])
        self.members = encoded


def recycled_wal_files(path) -> int:
    """How many obsolete WAL files RocksDB keeps for reuse in the data dir at `path`: one on a file
    system of at least RECYCLE_WAL_MIN_FS bytes, none on a smaller one.

    A synced write to a reused file overwrites blocks the file already holds, so its fdatasync
    writes the data alone; a write that grows a file also commits the file system's journal for
    the new size (ext4, xfs). A kept file holds its blocks, though: up to one more WAL's worth
    (about UNFLUSHED_MAX) that deletes can never give back, which on a small file system (a 30 MB
    one in the disk-space tests) was enough that the space alarm never cleared."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return 0
    return 1 if fs.f_blocks * fs.f_frsize >= RECYCLE_WAL_MIN_FS else 0


class Storage:
    """One node's RocksDB. Open with `Storage.open`; single-threaded use by the node loop."""

    def __init__(self, path, db, fsync, recycled_wal_files=0):
        self.path = path
        self._dir_lock = None       # the data dir's fd, flocked while open (datadir.lock)
        self._db = db
        self._handles = {name: db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._data = db.get_column_family("data")
        self._log = db.get_column_family("log")
        self._meta = db.get_column_family("meta")
        self._cfs = {"data": self._data, "log": self._log, "meta": self._meta}
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = fsync
        # Applying committed entries to data needs no fsync of its own: the entries are already
        # durable in the log, and RocksDB's WAL keeps write order, so a crash loses at most an apply
        # that is redone from the log at start-up.
        self._nosync_opts = rocksdict.WriteOptions()
        self.on_commit = None       # (synced, seconds) after each batch write: the node's metrics
        self.commits = 0            # batches written (the node compacts after writes, space.py)
        self.written = 0            # bytes of the batches written (the space guard measures after each MiB)
        self._compacting = None     # the compaction thread, while one runs
        self._nosync_opts.sync = False
        for name, attr in _META_ATTRS.items():
            setattr(self, attr, _u64(self._meta.get(name)))
        self.first_seq = self.first_seq or 1
        self.members = self._meta.get(META_MEMBERS)     # encoded; None: never recorded
        self.created = False          # True when open() made this data dir just now
        self.recycled_wal_files = recycled_wal_files    # WAL files RocksDB keeps for reuse (recycled_wal_files)
        self._closed = False

    # ------------------------------------------------------------ open / close

    @classmethod
    def open(cls, data_dir, node_id, mode, fsync=True):
        """Open (creating if new) the data dir of node `node_id` in `mode`. Refuses a dir that another
        node id or mode wrote, a non-empty dir that zmqstore did not create, and a dir in use."""
        data_dir = os.path.abspath(data_dir)
        dir_lock = datadir.lock(data_dir)
        try:
            storage = cls._open_locked(data_dir, node_id, mode, fsync)
        except BaseException:
            os.close(dir_lock)
            raise
        storage._dir_lock = dir_lock
        return storage

    @classmethod
    def _open_locked(cls, data_dir, node_id, mode, fsync):
        db_path = os.path.join(data_dir, datadir.DB_DIR)
        fresh = datadir.check(data_dir, node_id, mode)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(fresh)
        opts.create_missing_column_families(fresh)
        opts.set_max_background_jobs(2)
        # Unflushed data (memtables, and the WAL that holds it) stays under UNFLUSHED_MAX, so the
        # free-space floor (space.py, min_free_bytes 64 MiB) leaves room to flush it.
        opts.set_db_write_buffer_size(UNFLUSHED_MAX)
        opts.set_max_total_wal_size(UNFLUSHED_MAX)     # a WAL file goes once every CF in it flushed
        recycled = recycled_wal_files(data_dir)
        opts.set_recycle_log_file_num(recycled)
        cf_opts = {name: rocksdict.Options(raw_mode=True) for name in COLUMN_FAMILIES}
        try:
            db = rocksdict.Rdict(db_path, options=opts, column_families=cf_opts)
        except Exception as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise DataDirError(f"data dir {data_dir} is in use by another process (RocksDB lock held); "
                                   f"stop that node or choose another --data-dir") from None
            raise DataDirError(f"cannot open RocksDB in {db_path}: {text}") from None
        storage = cls(data_dir, db, fsync, recycled)
        if fresh:
            # A new data dir may belong to a node that voted before and lost its disk: it is a
            # learner until it has caught up (docs/REPLICATION.md); bootstrapping clears this.
            # Written before the marker, so no marked data dir lacks it.
            storage.created = True
            batch = storage.batch()
            batch.set_meta(META_LEARNER, 1)
            storage.commit(batch)
            try:
                datadir.mark_created(data_dir, node_id, mode)
            except DataDirError:
                storage.close()
                raise
        return storage

    def compact_in_background(self, free_bytes, which) -> set:
        """Compact on a thread of its own (RocksDB works without the GIL and beside the loop's
        writes), giving back the space that deletes and trimmed logs freed: of `which` ("log",
        "data"), each column family whose rewrite `free_bytes` could hold (a compaction writes its
        output, at most its input, before it drops its input; one that ran out of space would stop
        every write). Not exclusive: RocksDB's own compactions go on meanwhile, so writes do not
        stall. One at a time. Returns the names of those it compacts (none while one runs)."""
        if self._compacting is not None and self._compacting.is_alive():
            return set()
        views, names = [], set()
        for name in ("log", "data"):
            if name not in which:
                continue
            cf = self._cfs[name]
            try:
                if (cf.property_int_value("rocksdb.live-sst-files-size") or 0) < free_bytes:
                    views.append(cf)
                    names.add(name)
            except Exception:
                pass
        if not views:
            return names
        options = rocksdict.CompactOptions()
        options.set_exclusive_manual_compaction(False)

        def run():
            for cf in views:
                try:
                    cf.compact_range(None, None, options)
                except Exception as exc:    # short of space, say: the next attempt may do better
                    log.warning("compaction failed: %s", exc)
                    return
        self._compacting = threading.Thread(target=run, name="compaction", daemon=True)
        self._compacting.start()
        return names

    def close(self):
        """Release RocksDB (and its LOCK), after a compaction under way. Every column-family view
        holds the DB open, so all are closed and dropped, not just the main handle."""
        if not self._closed:
            self._closed = True
            try:
                if self._compacting is not None:
                    self._compacting.join()
                for cf in (self._data, self._log, self._meta):
                    cf.close()
                self._db.close()
                self._data = self._log = self._meta = self._db = None
                self._handles = {}
                self._cfs = {}
            finally:
                if self._dir_lock is not None:      # released even when RocksDB refused to close
                    os.close(self._dir_lock)
                    self._dir_lock = None

    # ------------------------------------------------------------ reads

    def get(self, key: bytes):
        return self._data.get(key)

    def scan(self, start, end, prefix, limit, max_bytes, value_of=None, snapshot=None):
        """Keys in [start, end) with `prefix`, in order: at most `limit` items and about `max_bytes`.
        Returns (items, next_key); next_key is where to continue when the page filled up, else None.
        `value_of(stored)`: the value to return for a stored one, or None to skip the key (both modes
        page the same way: dynamo mode stores key states and returns their winners). `snapshot`: read
        that data snapshot (`data_snapshot`) instead of the data as it is now."""
        lower = start or b""
        if prefix and prefix > lower:
            lower = prefix
        it = (self._data if snapshot is None else snapshot).iter()
        it.seek(lower)
        items, size = [], 0
        while it.valid():
            key = it.key()
            if (end is not None and key >= end) or (prefix and not key.startswith(prefix)):
                return items, None
            if len(items) >= limit or size >= max_bytes:
                return items, key
            value = it.value() if value_of is None else value_of(it.value())
            if value is not None:
                items.append((key, value))
                size += len(key) + len(value)
            it.next()
        return items, None

    def get_cf(self, cf: str, key: bytes):
        return self._cfs[cf].get(key)

    def iter_cf(self, cf: str, start=b"", end=None):
        """(key, value) in key order from `start` up to `end` (exclusive)."""
        it = self._cfs[cf].iter()
        it.seek(start)
        while it.valid():
            key = it.key()
            if end is not None and key >= end:
                return
            yield key, it.value()
            it.next()

    def term_at(self, seq):
        """The term of the entry at seq; None when seq is beyond the log or trimmed away."""
        if seq == self.last_seq:
            return self.last_term
        if seq == self.first_seq - 1:
            return self.trim_term
        if seq == 0:
            return 0
        if not self.first_seq <= seq < self.last_seq:
            return None
        raw = self._log.get(seq_key(seq))
        return None if raw is None else entry_term(raw)

    def read_entries(self, from_seq, max_entries, max_bytes):
        """Up to max_entries stored entries (bytes) from from_seq on, about max_bytes at most."""
        out, size = [], 0
        it = self._log.iter()
        it.seek(seq_key(from_seq))
        expected = from_seq
        while it.valid() and len(out) < max_entries:
            if _U64.unpack(it.key())[0] != expected:
                break
            value = it.value()
            if out and size + len(value) > max_bytes:
                break   # always at least one entry, however large
            out.append(value)
            size += len(value)
            expected += 1
            it.next()
        return out

    def data_snapshot(self):
        """The data as it is now (between batches: exactly at applied_seq), for reading in pages
        over many loop iterations while writes go on: a DataView."""
        return DataView(self._data)

    @staticmethod
    def snapshot_page(snapshot, cursor, max_items, max_bytes):
        """(items, next_cursor) from a data snapshot, starting at cursor (None: the beginning)."""
        it = snapshot.iter()
        if cursor is None:
            it.seek_to_first()
        else:
            it.seek(cursor)
        items, size = [], 0
        while it.valid():
            if len(items) >= max_items or size >= max_bytes:
                return items, it.key()
            key, value = it.key(), it.value()
            items.append([key, value])
            size += len(key) + len(value)
            it.next()
        return items, None

    def log_entries(self, from_seq, to_seq=None):
        """(seq, entry bytes) for retained log entries from `from_seq` up to `to_seq` inclusive."""
        it = self._log.iter()
        it.seek(seq_key(max(from_seq, self.first_seq)))
        while it.valid():
            seq = _U64.unpack(it.key())[0]
            if to_seq is not None and seq > to_seq:
                return
            yield seq, it.value()
            it.next()

    # ------------------------------------------------------------ writes

    def batch(self) -> Batch:
        return Batch(self._handles)

    def commit(self, batch: Batch, sync=True):
        """Write the batch atomically (and fsync it when configured and `sync`) before anything that
        depends on it is acknowledged."""
        opts = self._write_opts if sync else self._nosync_opts
        self.written += batch.wb.size_in_bytes()
        started = time.monotonic() if self.on_commit is not None else 0.0
        try:
            self._db.write(batch.wb, opts)
        except Exception as exc:
            raise StorageError(f"RocksDB write failed: {exc}") from None
        if self.on_commit is not None:
            self.on_commit(opts.sync, time.monotonic() - started)
        self.commits += 1
        batch.wb = batch._cf = None  # consumed; a live handle would keep RocksDB open after close()
        for name, value in batch.meta.items():
            setattr(self, _META_ATTRS[name], value)
        if batch.members is not None:
            self.members = batch.members

    def stored_bytes(self) -> int:
        """What the data takes in RocksDB: live table files and memtables of every column family
        (the space quota's measure, space.py; write-ahead log files come and go with the memtables)."""
        total = 0
        for cf in (self._data, self._log, self._meta):
            for prop in ("rocksdb.live-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
                try:
                    total += cf.property_int_value(prop) or 0
                except Exception:
                    pass
        return total

    def approximate_keys(self) -> int:
        try:
            return self._data.property_int_value("rocksdb.estimate-num-keys") or 0
        except Exception:
            return 0
