"""A data dir's own files, apart from the database in it (docs/STORAGE.md, "Data dir"): the lock a
node holds on it while running, the marker naming its node id and mode, the checks at start-up, and
the creation of a new one, which a kill or a power cut may cut short (CREATING)."""
import contextlib
import fcntl
import json
import logging
import os
import shutil

from .errors import DataDirError

FORMAT_VERSION = 1
MARKER = "zmqstore.json"
# Written (fsynced) before a new data dir's RocksDB is created and removed once its marker is: a dir
# holding it and no marker is one whose creation was cut short (a kill -9, a power cut), which nothing
# was ever served from, so it is created again instead of being refused as foreign.
CREATING = "zmqstore.creating"
DB_DIR = "db"

log = logging.getLogger(__name__)


def lock(data_dir) -> int:
    """Create the data dir if new; return an fd of it holding an exclusive flock, which Storage
    keeps until closed. Taken before anything in the dir is judged, so a second process can neither
    open the dir nor take a creation under way for an interrupted one (RocksDB's own LOCK is inside
    db/, which that judgement may remove)."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataDirError(f"data dir {data_dir} exists and is not a directory")
    try:
        if not os.path.exists(data_dir):
            parent = os.path.dirname(data_dir)
            if not os.path.isdir(parent):
                raise DataDirError(f"parent of data dir {data_dir} does not exist; create {parent} or fix --data-dir")
            os.mkdir(data_dir, 0o700)
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DataDirError(f"cannot create or open data dir {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirError(f"data dir {data_dir} is in use by another process (its lock is held); "
                           f"stop that node or choose another --data-dir") from None
    except OSError as exc:      # no flock here (some network file systems): say so, not "in use"
        os.close(fd)
        raise DataDirError(f"cannot lock data dir {data_dir}: {exc.strerror}; put it on a local file "
                           f"system") from None
    return fd


def check(data_dir, node_id, mode) -> bool:
    """Validate the (locked) data dir. Returns True when the dir is new (no marker): its creation
    has begun (CREATING written), to be finished by mark_created once RocksDB holds its first batch."""
    marker_path = os.path.join(data_dir, MARKER)
    creating = os.path.join(data_dir, CREATING)
    try:
        _make_private(data_dir)
        if not os.path.exists(marker_path):
            entries = set(os.listdir(data_dir))
            if CREATING in entries and entries <= {CREATING, DB_DIR, MARKER + ".tmp"}:
                log.warning("data dir %s: an earlier start was stopped while creating it (%s, no %s); nothing "
                            "was served from it: creating it again", data_dir, CREATING, MARKER)
                for name in entries - {CREATING}:
                    path = os.path.join(data_dir, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            elif entries:
                raise DataDirError(f"data dir {data_dir} is not empty and has no {MARKER}: it was not written by "
                                   f"zmqstore; choose an empty or new --data-dir")
            _write_durably(creating, b"")
            return True
        if os.path.exists(creating):    # the marker made it: the creation finished before the removal did
            os.remove(creating)
    except OSError as exc:
        raise DataDirError(f"cannot prepare data dir {data_dir}: {exc.strerror} ({exc.filename})") from None
    try:
        with open(marker_path, encoding="utf-8") as f:
            marker = json.load(f)
        owner, owner_mode, fmt = marker["node_id"], marker["mode"], marker["format"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataDirError(f"{marker_path} is unreadable ({exc}); this data dir is damaged") from None
    if fmt != FORMAT_VERSION:
        raise DataDirError(f"data dir {data_dir} has format {fmt}, this build reads format {FORMAT_VERSION}")
    if owner != node_id:
        raise DataDirError(f"data dir {data_dir} belongs to node {owner}, not node {node_id}; "
                           f"use --node-id {owner} or another --data-dir")
    if owner_mode != mode:
        raise DataDirError(f"data dir {data_dir} was written in {owner_mode} mode, not {mode}; "
                           f"use --mode {owner_mode} or another --data-dir")
    if not os.path.isdir(os.path.join(data_dir, DB_DIR)):
        raise DataDirError(f"data dir {data_dir} has {MARKER} but no {DB_DIR}/: its data was lost")
    return False


def _make_private(data_dir):
    """Data dirs are 0700 and their files 0600: only the node's user may read the data (docs/SECURITY.md).
    What exists is tightened here; what RocksDB creates later follows the node process's umask (077,
    set by datastore-node)."""
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def mark_created(data_dir, node_id, mode):
    """The creation is complete: write the marker (fsynced, renamed atomically), then drop CREATING."""
    marker_path = os.path.join(data_dir, MARKER)
    try:
        _write_marker(marker_path, node_id, mode)
    except OSError as exc:
        raise DataDirError(f"cannot write {marker_path}: {exc.strerror}") from None
    with contextlib.suppress(OSError):     # else the next start removes it (check)
        os.remove(os.path.join(data_dir, CREATING))


def _write_marker(marker_path, node_id, mode):
    tmp = marker_path + ".tmp"
    _write_durably(tmp, json.dumps({"format": FORMAT_VERSION, "node_id": node_id, "mode": mode}).encode())
    os.replace(tmp, marker_path)
    _sync_dir(os.path.dirname(marker_path))


def _write_durably(path, content: bytes):
    """Write a file and fsync it and its directory."""
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    _sync_dir(os.path.dirname(path))


def _sync_dir(path):
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
