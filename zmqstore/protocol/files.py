"""Backup files (docs/OPERATIONS.md, "Backup and restore"; the format in docs/PROTOCOL.md section
8): a header, pages of items, and a trailer with the item count and a SHA-256 of the pages, each a
msgpack object, one after the other. Writing streams page by page; reading checks the header, the
size of every object, and the trailer, so a truncated, corrupted or foreign file is refused with
what is wrong before anything is restored.
"""
import hashlib

import msgpack

from .. import errors
from .values import _pack

FORMAT = "zmqstore-backup"
FORMAT_VERSION = 1
# Bytes one header, page or trailer may take: a snapshot page is about 1 MiB of items, plus one item
# that may be a key of 64 KiB and a value of up to 64 MiB (max_value_size's upper bound).
MAX_OBJECT = (1 << 20) + (64 << 10) + (64 << 20) + (1 << 20)
MAX_ITEMS = 100_000         # items one page may hold (a node's pages hold at most 1,000)


class BackupWriter:
    """Writes a backup to an open binary file: `page(items)` as they come, then `finish()`."""

    def __init__(self, f, header: dict):
        self.f, self.count = f, 0
        self._hash = hashlib.sha256()
        raw = _pack({"format": FORMAT, "version": FORMAT_VERSION, **header})
        self._hash.update(raw)      # the checksum covers the header too: a flipped seq must not pass
        f.write(raw)

    def page(self, items):
        raw = _pack(["items", items])
        self._hash.update(raw)
        self.f.write(raw)
        self.count += len(items)

    def finish(self) -> str:
        digest = self._hash.hexdigest()
        self.f.write(_pack({"count": self.count, "sha256": digest}))
        return digest


def read_backup(f, mode=None):
    """(header, pages): the header (checked: format, version, `mode` when given), and an iterator
    of pages (lists of items) that checks the trailer at the end and raises BadBackup when the file
    is not whole and intact. Read it through once to verify before acting on any page."""
    unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=MAX_OBJECT, use_list=True,
                                max_array_len=MAX_ITEMS, max_map_len=4096)
    try:
        header = next(unpacker)
    except Exception as exc:    # msgpack raises several unrelated types on bad input
        raise errors.BadBackup(f"not a zmqstore backup: {type(exc).__name__}") from None
    if type(header) is not dict or header.get("format") != FORMAT:
        raise errors.BadBackup("not a zmqstore backup (no zmqstore-backup header)")
    if header.get("version") != FORMAT_VERSION:
        raise errors.BadBackup(f"backup format version {header.get('version')!r}; this build reads version "
                               f"{FORMAT_VERSION}")
    if mode is not None and header.get("mode") != mode:
        raise errors.BadBackup(f"a {header.get('mode')}-mode backup cannot seed a {mode}-mode node")
    digest = hashlib.sha256(_pack(header))
    return header, _pages(unpacker, digest)


def _pages(unpacker, digest):
    count = 0
    while True:
        try:
            obj = next(unpacker)
        except StopIteration:
            raise errors.BadBackup("the backup is cut short: no trailer (count and checksum)") from None
        except Exception as exc:
            raise errors.BadBackup(f"the backup is corrupt after {count} items: {type(exc).__name__}") from None
        if type(obj) is dict:
            if obj.get("count") != count or obj.get("sha256") != digest.hexdigest():
                raise errors.BadBackup(f"the backup's checksum or count does not match its contents ({count} "
                                       f"items read, {obj.get('count')} recorded)")
            try:
                next(unpacker)
            except StopIteration:
                return
            except Exception:
                pass
            raise errors.BadBackup("the backup has data after its trailer")
        if type(obj) is not list or len(obj) != 2 or obj[0] != "items" or type(obj[1]) is not list:
            raise errors.BadBackup(f"the backup is corrupt after {count} items (not a page)")
        digest.update(_pack(obj))
        count += len(obj[1])
        yield obj[1]
