"""Bulk export and import (docs/OPERATIONS.md, "Export and import").

`export` writes the keys under a prefix as the node talked to holds them at one position (a WATCH
snapshot, as a backup: backup.snapshot_pages), as msgpack (the backup file format, kind "export",
values exactly as stored) or as JSON lines with a tagged encoding that round-trips every msgpack
value: bytes, floats (nan and infinities too), maps with keys that are not strings, nesting,
extension types and timestamps, and keys that are not UTF-8. Dynamo mode exports the value get() shows (its winning sibling).

`import_file` reads either format (told apart by the first byte), checks a msgpack file's count
and checksum first, and writes pipelined PUT_MANY batches (each applied once, whatever the retries:
docs/CLIENT.md). After each acknowledged group of batches it records how many items are in, in
FILE.progress, so an import cut short (Ctrl-C, a failure) resumes there when run again; at the
end it checks that it wrote as many items as the file holds, and removes the progress file.
"""
import base64
import json
import math
import os

from . import errors
from .api import Call, _nothing
from .backup import private_file, publish, snapshot_pages, take_backup_header
from .protocol import ExtType, Timestamp, files, pack_value, unpack_value

BATCH_ITEMS = 1000          # items per PUT_MANY ...
BATCH_BYTES = 1 << 20       # ... or bytes of keys and values, whichever comes first
IN_FLIGHT = 8               # PUT_MANY batches in flight
GROUP = 32                  # batches between two records of progress


# ---------------------------------------------------------------- JSON lines

def to_json(value):
    """A msgpack value as JSON, tagged where JSON has no equivalent (from_json inverts it)."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, Timestamp):
        return {"$timestamp": [value.seconds, value.nanoseconds]}
    if isinstance(value, ExtType):      # a tuple: before the arrays
        return {"$ext": [value.code, base64.b64encode(value.data).decode()]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value):
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "$bytes":
                return base64.b64decode(inner, validate=True)
            if tag == "$float":
                return float(inner)
            if tag == "$map":
                return {_hashable(from_json(k)): from_json(v) for k, v in inner}
            if tag == "$timestamp":
                return Timestamp(*inner)
            if tag == "$ext":
                return ExtType(inner[0], base64.b64decode(inner[1], validate=True))
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def json_line(key: bytes, raw_value: bytes) -> str:
    try:
        head = {"key": key.decode("utf-8")}
    except UnicodeDecodeError:
        head = {"key_b64": base64.b64encode(key).decode()}
    return json.dumps({**head, "value": to_json(unpack_value(raw_value))}, ensure_ascii=False,
                      allow_nan=False) + "\n"


def parse_json_line(line: str, number: int):
    """(key bytes, value as msgpack bytes) of one line; ValueError says what is wrong."""
    try:
        item = json.loads(line)
        key = item["key"].encode("utf-8") if "key" in item else base64.b64decode(item["key_b64"], validate=True)
        return key, pack_value(from_json(item["value"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"line {number}: not an exported item ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- export

def export(client, path, prefix=b"", as_json=False, progress=None) -> dict:
    """Write the keys under `prefix` to `path` (0600, renamed once whole). Returns a summary."""
    status = client.status()
    fd, tmp = private_file(path)
    count, seq = 0, None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = None
            for position, items in snapshot_pages(client, prefix):
                seq = position
                if status["mode"] == "dynamo":      # [key, siblings] -> [key, the value get() shows]
                    items = [[key, _winner_value(siblings)] for key, siblings in items]
                    items = [item for item in items if item[1] is not None]
                if as_json:
                    f.write("".join(json_line(k, v) for k, v in items).encode())
                else:
                    if writer is None:
                        writer = files.BackupWriter(f, {**take_backup_header(status, None, position),
                                                        "kind": "export", "prefix": prefix})
                    writer.page(items)
                count += len(items)
                if progress is not None:
                    progress(count, f.tell())
            if writer is not None:
                writer.finish()
            size = f.tell()
        publish(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return {"count": count, "seq": seq, "bytes": size, "format": "jsonl" if as_json else "msgpack",
            "source": status["node_id"]}


def _winner_value(siblings):
    """The value get() shows of [value or nil, origin, seq, hlc] siblings: the highest clock, then
    the lowest node id (api.Versions.winner); None when that is a delete."""
    return max(siblings, key=lambda s: (s[3], -(s[1] >> 32)))[0] if siblings else None


# ---------------------------------------------------------------- import

def _items(path):
    """(count the file holds or None, an iterator of (key, raw value)) of an export or backup."""
    with open(path, "rb") as f:
        first = f.read(1)
    if first in (b"{", b""):       # JSON lines (an empty export is an empty file)
        return None, _json_items(path)
    with open(path, "rb") as f:         # a first pass: count and checksum before anything is written
        header, pages = files.read_backup(f)
        if header.get("mode") == "dynamo" and header.get("kind") != "export":
            raise errors.BadBackup("a dynamo-mode backup holds siblings; import an export (datastore-cli export)")
        count = sum(len(page) for page in pages)
    return count, _msgpack_items(path)


def _msgpack_items(path):
    with open(path, "rb") as f:
        _header, pages = files.read_backup(f)
        for page in pages:
            for item in page:
                if type(item) is not list or len(item) != 2 or type(item[0]) is not bytes or type(item[1]) is not bytes:
                    raise errors.BadBackup("an item of the file is not a key and a value")
                yield item[0], item[1]


def _json_items(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield parse_json_line(line, number)


def import_file(client, path, progress=None) -> dict:
    """Write every item of `path` with pipelined PUT_MANY batches, resuming after the items a
    previous run recorded in FILE.progress (for this very file: its size and modification time,
    and the endpoints written to). Returns {"count", "skipped", "batches"}."""
    expected, items = _items(path)
    marker = f"{path}.progress"
    stat = os.stat(path)
    identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "endpoints": sorted(client.connection.endpoints)}
    done = _read_progress(marker, identity)
    _write_progress(marker, done, identity)     # the directory is writable, before anything is written
    written, size, batches = done, 0, 0
    pending, batch, batch_bytes, in_group = [], [], 0, 0
    pipeline = client.pipeline(max_in_flight=IN_FLIGHT)

    def flush_group():
        nonlocal written, pending, in_group
        if not pending:
            return
        for result in pipeline.execute(raise_on_error=False):
            if isinstance(result, errors.ZmqstoreError):
                raise result
        written += sum(pending)
        pending, in_group = [], 0
        _write_progress(marker, written, identity)
        if progress is not None:
            progress(written, size)

    for index, (key, raw) in enumerate(items):
        if index < done:
            continue
        cost = len(key) + len(raw)
        if batch and (len(batch) >= BATCH_ITEMS or batch_bytes + cost > BATCH_BYTES):
            pipeline._execute(Call("PUT_MANY", (batch,), _nothing))     # a batch never grows past either
            pending.append(len(batch))
            batches += 1
            batch, batch_bytes, in_group = [], 0, in_group + 1
            if in_group >= GROUP:
                flush_group()
        batch.append([key, raw])
        batch_bytes += cost
        size += cost
    if batch:
        pipeline._execute(Call("PUT_MANY", (batch,), _nothing))
        pending.append(len(batch))
        batches += 1
    flush_group()
    if expected is not None and written != expected:
        raise errors.BadBackup(f"imported {written} items; the file holds {expected}")
    _unlink(marker)
    return {"count": written, "skipped": done, "batches": batches}


def _read_progress(marker, identity) -> int:
    try:
        with open(marker, encoding="utf-8") as f:
            record = json.load(f)
        items = int(record["items"])
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError):
        raise errors.BadBackup(f"{marker} is not an import's progress; remove it to start over") from None
    if record.get("of") != identity:
        raise errors.BadBackup(f"{marker} records an import of another file (or the same file changed since, or "
                               f"into other endpoints): remove it to start over")
    return items


def _write_progress(marker, items, identity):
    tmp = f"{marker}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"items": items, "of": identity}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
