"""Dynamo mode's shared rules: anti-entropy buckets and hashes, origins, page and clock limits
(docs/DYNAMO.md). Its RocksDB keys are storage.py's (docs/STORAGE.md), re-exported here."""
import hashlib
import struct

from .. import limits
from ..protocol import decode_key_state
from ..storage import META_HASH
from ..versions import KeyState, Sibling, winner

FETCH_PAGE = limits.FETCH["dynamo"]
GC_MAX_KEYS = 10_000              # tombstones looked at per housekeeping pass
MAX_CLOCK_AHEAD = 600.0          # seconds a peer's clock (an entry's or sibling's HLC) may be ahead of ours

# Anti-entropy (docs/DYNAMO.md): keys fall in BUCKETS buckets by hash, GROUPS groups of buckets.
GROUP_BITS = 6
BUCKETS = 1 << (2 * GROUP_BITS)   # 4096
GROUPS = 1 << GROUP_BITS          # 64, each of 64 buckets

_U64 = struct.Struct(">Q")


def origin_node(origin) -> int:
    return origin >> 32


def origin_partition(origin) -> int:
    """The partition whose keys an origin writes, in a cluster with replicas set (its low 12 bits)."""
    return origin & (BUCKETS - 1)


def origin_name(origin) -> str:
    """How status shows an origin: node id and incarnation."""
    return f"{origin >> 32}:{origin & 0xFFFFFFFF:08x}"


def _state_hash(key, raw) -> int:
    """A key's contribution to the data digest (0 for an absent key): XOR-ed over all keys, so one
    write updates the digest in O(1) and equal data gives equal digests on every node."""
    if raw is None:
        return 0
    h = hashlib.blake2b(struct.pack(">I", len(key)) + key + raw, digest_size=8)
    return int.from_bytes(h.digest(), "big")


def bucket_of(key) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=2).digest(), "big") & (BUCKETS - 1)


def _hash_key(bucket, key) -> bytes:
    return META_HASH + struct.pack(">H", bucket) + key


def _winning_value(raw):
    """A stored key state -> the value its winner shows (None: absent, its winner a tombstone)."""
    best = winner(_decode_state(raw))
    return None if best is None else best.value


def _decode_state(raw) -> KeyState:
    ctx, siblings = decode_key_state(raw)
    return KeyState(ctx, tuple(Sibling(*s) for s in siblings))
