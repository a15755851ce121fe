"""Backup and restore (docs/OPERATIONS.md, "Backup and restore").

`take_backup` (datastore-cli backup) asks one node for a snapshot of all its data at one position
with a WATCH (snapshot=True, stale=True: any member serves its own applied state, docs/WATCH.md),
and streams the pages into a file, created 0600 under a temporary name beside it and renamed once
whole and synced. `restore_into` (datastore-node --restore) checks a file through once (format,
mode, count, SHA-256) and then loads it into a new data dir, which holds the backup's data at its
position. Leader mode: every node of a new cluster may be started from the same file, and they
elect their first primary among themselves in the backup's term + 1 (their genesis election,
leader/standing.py), the only election a restored learner takes part in. Dynamo mode: every node
started from the same file holds the same data at the backup's applied vector, and they agree at
once (dynamo/restore.py). The file format is in protocol/files.py and docs/PROTOCOL.md section 8.
"""
import datetime
import logging
import os
import tempfile
import time

import zmq

from . import errors, transport
from .api import Call
from .dynamo.restore import DynamoRestore
from .protocol import decode_reply, files
from .storage import (META_APPLIED_SEQ, META_GENESIS, META_LAST_SEQ, META_LAST_TERM, META_LEADER, META_LEARNER,
                      META_RESTORING, META_TERM, META_VOTED_FOR)

WINDOW = 8 << 20            # bytes of snapshot pages the node may send ahead of the backup's writing
RESTORING_FROM_FILE = 2     # META_RESTORING while a restore from a file is under way (1: a peer's snapshot)

log = logging.getLogger("zmqstore.backup")


# ---------------------------------------------------------------- taking one (client side)

def snapshot_pages(client, prefix=b""):
    """Yield (position, items) per snapshot page of the keys under `prefix` on the node the client
    talks to, all pages of one snapshot, until the last; on a connection of its own, returning
    credit as pages are read."""
    connection = client.connection.sibling()
    try:
        watch_id = client.next_request_id()
        if not connection.ready():
            raise errors.ConnectionTimeout(f"cannot reach {connection.endpoint}")
        transport.send_nowait(connection.sock, client.encode(Call("WATCH", (prefix, None, True, WINDOW, True), None),
                                                             watch_id))
        consumed = 0
        while True:
            if not connection.sock.poll(connection.timeout * 1000, zmq.POLLIN):
                raise errors.ConnectionTimeout(f"no snapshot page from {connection.endpoint} within "
                                               f"{connection.timeout:g} s")
            raw = transport.recv(connection.sock)
            reply = decode_reply(raw)
            if reply.request_id != watch_id:
                continue
            if not reply.ok:
                raise errors.error_from_code(*reply.result)
            kind, position, items, *rest = reply.result
            if kind != "snapshot":
                continue        # progress, or changes after the snapshot: not part of it
            yield position, items
            if rest and rest[0]:
                return
            consumed += len(raw)
            if consumed >= WINDOW // 2:
                transport.send_nowait(connection.sock, client.encode(
                    Call("WATCH_CREDIT", (watch_id, consumed), None), client.next_request_id()))
                consumed = 0
    finally:
        connection.close()


def take_backup(client, path, progress=None) -> dict:
    """Write a backup of the node the client talks to into `path` (0600). `progress(keys, bytes)`
    is called after each page. Returns the header with `count`, `sha256`, `bytes` and `seconds`."""
    started = time.monotonic()
    status = client.status()
    members = client.members()
    fd, tmp = private_file(path)
    header = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = None
            for position, items in snapshot_pages(client):
                if writer is None:
                    header = {**take_backup_header(status, members, position), "kind": "backup"}
                    writer = files.BackupWriter(f, header)
                writer.page(items)
                if progress is not None:
                    progress(writer.count, f.tell())
            digest = writer.finish()
            size = f.tell()
        publish(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {**header, "count": writer.count, "sha256": digest, "bytes": size,
            "seconds": round(time.monotonic() - started, 3)}


def private_file(path):
    """(fd, name) of a new file beside `path` that only this user may read (mode 0600, created
    exclusively: never an existing file or a symbolic link), to be renamed to `path` once whole."""
    directory, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")


def publish(tmp, path):
    """Make the whole file `tmp` durable as `path`: fsync it, rename it, fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def take_backup_header(status, members, position) -> dict:
    """A backup or export file's header fields (docs/PROTOCOL.md section 8)."""
    return {"mode": status["mode"], "seq": position, "term": status["term"], "members": members,
            "source": status["node_id"], "node_version": status["version"],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- restoring (node side)

def restore_into(storage, config):
    """Load config.restore into the storage of a new data dir (or finish one a crash interrupted).
    A data dir with state of its own is left as it is: the flag is ignored, with a line saying so,
    so a node can be restarted with the command line that seeded it. A restore that did not finish
    (a crash, a bad file) is done again at the next start: without --restore the node refuses to
    start, as its data is incomplete."""
    path = config.restore
    if path is None:
        raise errors.ConfigError(f"the data dir {config.data_dir} holds a restore from a backup that did not "
                                 f"finish: start the node with --restore FILE again, or with an empty data dir")
    if not (storage.created or storage.restoring == RESTORING_FROM_FILE):
        log.info("--restore %s ignored: the data dir already holds this node's state", path)
        return
    started = time.monotonic()
    restore = LeaderRestore(config) if config.mode == "leader" else DynamoRestore(config)
    # Marked first: a restore that fails (a bad file, a crash) is tried again at the next start.
    batch = storage.batch()
    batch.clear_all()           # what an interrupted restore left
    restore.start(batch)
    batch.set_meta(META_RESTORING, RESTORING_FROM_FILE)
    storage.commit(batch)
    count = _verify(path, config, restore)
    with _open(path) as f:
        header, pages = files.read_backup(f, config.mode)
        for page in pages:
            batch = storage.batch()
            for item in page:
                restore.put(batch, item)
            storage.commit(batch, sync=False)
    batch = storage.batch()
    restore.finish(batch)
    batch.set_meta(META_RESTORING, 0)
    storage.commit(batch)
    log.info("restored %d keys at %s from %s (taken %s from node %s) in %.1f s", count, restore.position(), path,
             header.get("created"), header.get("source"), time.monotonic() - started)


class LeaderRestore:
    """A leader-mode backup: keys and values at one log seq of one term."""

    def __init__(self, config):
        self.config = config
        self.seq = self.term = 0

    def check_header(self, header):
        seq, term = header.get("seq"), header.get("term")
        if type(seq) is not int or type(term) is not int or seq < 0 or term < 0:
            raise errors.BadBackup("the backup's header has no seq and term")
        self.seq, self.term = seq, term

    def check_item(self, item, number):
        cfg = self.config
        if (type(item) is not list or len(item) != 2 or type(item[0]) is not bytes or type(item[1]) is not bytes
                or not 0 < len(item[0]) <= cfg.max_key_size or len(item[1]) > cfg.max_value_size):
            raise errors.BadBackup(f"item {number} of the backup is not a key and value this node accepts")

    def start(self, batch):
        pass

    def put(self, batch, item):
        batch.put(item[0], item[1])

    def finish(self, batch):
        seq, term = self.seq, self.term
        batch.trim_log(seq + 1, seq + 1, term)      # an empty log whose base is the backup's seq
        # Still a learner: it votes and stands only in the election of term + 1, among nodes at the
        # same restore point (leader/standing.py, "genesis"); a data dir lost later and restored
        # again into a cluster that went on can then never vote twice in a term or elect a log that
        # lacks entries.
        for name, value in ((META_LAST_SEQ, seq), (META_LAST_TERM, term), (META_APPLIED_SEQ, seq), (META_TERM, term),
                            (META_LEADER, 0), (META_VOTED_FOR, 0), (META_LEARNER, 1), (META_GENESIS, term + 1)):
            batch.set_meta(name, value)

    def position(self) -> str:
        return f"seq {self.seq} (term {self.term})"


def _open(path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise errors.ConfigError(f"cannot read the backup {path}: {exc.strerror}") from None


def _verify(path, config, restore) -> int:
    """Read the whole file once: format, mode, its position, every item's shape and size, count and
    checksum."""
    with _open(path) as f:
        header, pages = files.read_backup(f, config.mode)
        if header.get("kind", "backup") != "backup":
            raise errors.BadBackup(f"{path} is an export (datastore-cli export), not a backup: import it into a "
                                   f"running cluster with datastore-cli import")
        restore.check_header(header)
        count = 0
        for page in pages:
            for item in page:
                restore.check_item(item, count)
                count += 1
    return count
