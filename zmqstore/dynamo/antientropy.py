"""Anti-entropy (docs/DYNAMO.md, "Anti-entropy"): when two nodes have applied the same entries but
hold different data (a node restored from an old data dir, an entry lost with a disk), or a peer
trimmed entries this node lacks, they compare hash trees of their data and pull the differing
buckets. `AntiEntropy` runs one exchange at a time for `Replication`, which decides when one
starts; the pages it serves and reads are below it. What it sends goes into the iteration's Sends."""
import logging
import struct

from .. import limits, protocol
from .layout import BUCKETS, GROUPS, META_HASH

REPAIR_TIMEOUT = 2.0              # seconds without a reply before a repair is abandoned (retried later)
REPAIR_IN_FLIGHT = 4              # bucket pages asked for at once

log = logging.getLogger("zmqstore.dynamo")


def tree_hashes(buckets, group=None):
    """The GROUPS group hashes of a node's bucket hashes, or the hashes of the buckets of one group."""
    if group is None:
        out = []
        for g in range(GROUPS):
            h = 0
            for b in buckets[g * GROUPS:(g + 1) * GROUPS]:
                h ^= b
            out.append(h)
        return out
    return buckets[group * GROUPS:(group + 1) * GROUPS]


def bucket_keys(storage, bucket, cursor, end=None):
    """Durable keys of a bucket from `cursor` (inclusive) up to `end` (exclusive), in order."""
    prefix = META_HASH + struct.pack(">H", bucket)
    upper = prefix + end if end is not None else META_HASH + struct.pack(">H", bucket + 1)
    for index_key, _ in storage.iter_cf("meta", prefix + (cursor or b""), upper):
        yield index_key[len(prefix):]


def range_items(storage, bucket, cursor):
    """A page of a bucket's durable key states: ([[key, state], ...], next cursor or None)."""
    items, size = [], 0
    for key in bucket_keys(storage, bucket, cursor):
        if len(items) >= limits.RANGE.items or size >= limits.RANGE.bytes:
            return items, key
        raw = storage.get_cf("data", key)
        if raw is not None:
            items.append([key, raw])
            size += len(key) + len(raw)
    return items, None


class Repair:
    """One anti-entropy exchange with a peer: compare group hashes, then the buckets of differing
    groups, then pull the differing buckets page by page and join them into our data. Every
    message of the exchange carries its id: a late reply to an abandoned exchange is ignored. With
    `resync_origins` (our log cannot be completed from the peer's: it trimmed entries of those
    origins that we lack), our applied seq of those origins moves up to the peer's as its first
    reply stated, once every differing bucket is joined."""

    def __init__(self, repair_id, peer, now, resync_origins=None):
        self.id = repair_id
        self.peer = peer
        self.started = now
        self.deadline = now + REPAIR_TIMEOUT
        self.resync_origins = resync_origins or set()
        self.peer_applied = None       # the peer's durable applied vector with its group hashes
        self.groups = set()            # groups asked for, not answered
        self.queue = []                # buckets to pull
        self.pulling = {}              # bucket -> cursor asked for
        self.buckets_pulled = 0
        self.keys_changed = 0

    @property
    def done(self):
        return self.peer_applied is not None and not self.groups and not self.queue and not self.pulling


class AntiEntropy:
    """The exchanges of one node: `start` one with a peer, answer a peer's (`on_tree`, `on_range`),
    follow ours (`on_tree_reply`, `on_range_reply`), abandon a silent one (`tick`)."""

    def __init__(self, out, engine):
        self.out = out
        self.engine = engine
        self.repair = None              # the Repair under way (one at a time)
        self.repairs = []               # summaries of the latest repairs, for status
        self.runs = self.keys_repaired = 0      # repairs finished, and the keys they changed (metrics)
        self._ids = 0

    def tick(self, now):
        if self.repair is not None and now > self.repair.deadline:
            log.warning("anti-entropy with node %d abandoned: no reply for %.1f s", self.repair.peer, REPAIR_TIMEOUT)
            self.repair = None

    def start(self, peer, now, resync_origins=None):
        self._ids += 1
        self.repair = Repair(self._ids, peer, now, resync_origins)
        log.info("anti-entropy with node %d: %s", peer, "full resync (it trimmed entries we lack)" if resync_origins
                 else "same entries applied, different data digests")
        if not self.out.request(peer, protocol.encode_peer("DTREE", self.engine.node_id, self.repair.id, None)):
            self.repair = None

    def on_tree(self, fields, envelope, now):
        _node_id, repair_id, group = fields
        if group is not None and group >= GROUPS:
            return
        self.out.reply_peer(envelope, protocol.encode_peer(
            "DTREE_REPLY", self.engine.node_id, repair_id, group, tree_hashes(self.engine.buckets, group),
            protocol.vector_pairs(self.engine.durable_applied)))

    def on_range(self, fields, envelope, now):
        _node_id, repair_id, bucket, cursor = fields
        if bucket >= BUCKETS:
            return
        items, next_cursor = range_items(self.engine.storage, bucket, cursor)
        self.out.reply_peer(envelope, protocol.encode_peer(
            "DRANGE_REPLY", self.engine.node_id, repair_id, bucket, cursor, items, next_cursor,
            protocol.vector_pairs(self.engine.durable_applied)))

    def on_tree_reply(self, fields, now):
        sender, repair_id, group, hashes, applied = fields
        r = self.repair
        if r is None or sender != r.peer or repair_id != r.id or len(hashes) != GROUPS:
            return
        r.deadline = now + REPAIR_TIMEOUT
        mine = tree_hashes(self.engine.buckets, group)
        if group is None:
            if r.peer_applied is not None:
                return
            # The hashes and this vector were taken together: every differing bucket, pulled from
            # now on, reflects at least every entry this vector counts.
            r.peer_applied = protocol.vector_from_pairs(applied)
            for g in range(GROUPS):
                if hashes[g] != mine[g]:
                    r.groups.add(g)
                    self.out.send_to(r.peer, protocol.encode_peer("DTREE", self.engine.node_id, r.id, g))
        elif group in r.groups:
            r.groups.discard(group)
            r.queue.extend(group * GROUPS + i for i in range(GROUPS) if hashes[i] != mine[i])
        self._pump(now)

    def _pump(self, now):
        r = self.repair
        while r.queue and len(r.pulling) < REPAIR_IN_FLIGHT:
            bucket = r.queue.pop()
            r.pulling[bucket] = None
            self.out.send_to(r.peer, protocol.encode_peer("DRANGE", self.engine.node_id, r.id, bucket, None))
        if r.done:
            self._finish(now)

    def on_range_reply(self, fields, now):
        sender, repair_id, bucket, cursor, items, next_cursor, applied = fields
        r = self.repair
        if (r is None or sender != r.peer or repair_id != r.id or bucket not in r.pulling
                or r.pulling[bucket] != cursor):
            return
        r.deadline = now + REPAIR_TIMEOUT
        r.keys_changed += self.engine.merge_range(bucket, cursor, next_cursor, items,
                                                  protocol.vector_from_pairs(applied))
        if next_cursor is not None:
            r.pulling[bucket] = next_cursor
            self.out.send_to(r.peer, protocol.encode_peer("DRANGE", self.engine.node_id, r.id, bucket,
                                                           next_cursor))
        else:
            del r.pulling[bucket]
            r.buckets_pulled += 1
        self._pump(now)

    def _finish(self, now):
        r, self.repair = self.repair, None
        if r.resync_origins:
            self.engine.adopt_applied({o: s for o, s in r.peer_applied.items() if o in r.resync_origins})
        took = now - r.started
        self.runs += 1
        self.keys_repaired += r.keys_changed
        log.info("anti-entropy with node %d done in %.3f s: %d buckets pulled, %d keys changed%s", r.peer, took,
                 r.buckets_pulled, r.keys_changed, "; applied seqs of the trimmed origins adopted"
                 if r.resync_origins else "")
        self.repairs = (self.repairs + [{"peer": r.peer, "seconds": round(took, 3), "buckets": r.buckets_pulled,
                                         "keys_changed": r.keys_changed, "resync": bool(r.resync_origins)}])[-5:]
