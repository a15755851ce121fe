"""Page sizes: how much one reply may carry, for both modes, in one place (docs/PROTOCOL.md).

A page ends at whichever limit comes first; the asker then asks for the next one. Pages keep one
handler's work, and one message, bounded: the loop is never held by one large read.
"""
from typing import NamedTuple


class Page(NamedTuple):
    items: int       # at most this many items (entries, keys) ...
    bytes: int       # ... or about this many bytes


# SCAN replies to clients, both modes.
SCAN = Page(1000, 1 << 20)
# Log entries a peer may fetch in one reply (ENTRIES, DENTRIES): larger in leader mode, where a
# secondary appends them to its log as they are (catch-up runs at about 200,000 entries/s), than in
# dynamo mode, where each entry is merged into a key's state on arrival (about 20 us each), so a
# page of 1,000 holds the receiving loop for tens of milliseconds, not hundreds.
FETCH = {"leader": Page(5000, 8 << 20), "dynamo": Page(1000, 1 << 20)}
# A snapshot's chunks (SNAPSHOT_CHUNK) in leader mode, and anti-entropy's bucket pages
# (DRANGE_REPLY) in dynamo mode: key-value pairs, like a scan.
SNAPSHOT = Page(1000, 1 << 20)
# What one watcher is sent at a time (docs/WATCH.md): log entries read per pump, and snapshot pages.
WATCH = Page(1000, 1 << 20)
RANGE = Page(1000, 1 << 20)
