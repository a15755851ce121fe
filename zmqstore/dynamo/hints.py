"""Hinted handoff (docs/PARTITIONING.md, "Hints"): in a partitioned cluster, when an owner of a
partition is down as its coordinator makes entries, the coordinator sends them to the next live
node of the partition's ranking (a fallback, DHINT). The fallback keeps them in its log, with a
durable record naming the owner, and says so once they are durable (DHINT_ACK), which counts toward
`w` (sloppy quorum). Once the owner is heard again the fallback hands the entries over (DHANDOFF);
the owner applies them like any fetched entries and answers with what it then holds of the origin
(DHANDOFF_ACK). A hint is dropped only when the owner holds every entry of it; hints never expire.

The fallback never applies hinted entries to its data: they wait in its log under their origin
and seq, where garbage collection does not look (it trims only the origins this node applied). No
I/O beyond the engine's staging batch; messages go through the iteration's Sends."""
import logging
import struct

from .. import errors, protocol
from ..storage import META_HINT, log_key
from .layout import FETCH_PAGE, bucket_of, origin_name, origin_node, origin_partition

HANDOFF_TIMEOUT = 1.0            # seconds before an unanswered handoff is sent again
HANDOFF_PAGE = FETCH_PAGE        # entries and bytes per DHANDOFF, as a fetch's
HINTS_MAX = 100_000              # hint records a node holds at most: more are refused (the write then
                                 # counts one copy fewer toward w)
SEQ_MAX = (1 << 63) - 1          # a hinted entry's seq: a larger one is refused
ACKED_KEPT = 64                  # ranges remembered per (fallback, origin) for the coordinator's w
_RECORD = struct.Struct(">QQ")   # hint record key: owner, origin; value: low, high

log = logging.getLogger("zmqstore.dynamo")


class Hints:
    def __init__(self, out, engine, alive):
        self.out, self.engine = out, engine
        self._alive = alive                 # node id -> heard lately (Replication.alive)
        self.held = {}                      # (owner, origin) -> [low, high]: entries held for the owner
        self._handing = {}                  # (owner, origin) -> when the handoff in flight is given up
        self._acked = {}                    # coordinator: (fallback, origin) -> [(low, high), ...] it holds
        self._standing = {}                 # coordinator: (fallback, origin) -> the owner it holds them for
        self.run_of = lambda node_id: None  # node id -> its current run (Replication: from its DSYNC)
        self.events = 0                     # DHINT_ACKs received (modes.DynamoMode.progress)
        self.sent = self.delivered = 0
        storage = engine.storage
        for key, raw in storage.iter_cf("meta", META_HINT, META_HINT + b"\xff" * 17):
            self.held[_RECORD.unpack(key[len(META_HINT):])] = list(_RECORD.unpack(raw))

    @property
    def pending(self) -> int:
        return len(self.held)

    # ------------------------------------------------------------ the coordinator

    def send(self, origin, raws, owners_down):
        """New durable entries of this run's `origin`: for each owner that is down, the next live
        fallback of the partition's ranking gets them (DHINT)."""
        placement = self.engine.placement
        ranking = placement.ranking(origin_partition(origin))
        fallbacks = [n for n in ranking[placement.replicas:] if n != self.engine.node_id and self._alive(n)]
        for owner, fallback in zip(owners_down, fallbacks):
            self.out.send_to(fallback, protocol.encode_peer("DHINT", self.engine.node_id, owner, origin, raws))
            self._standing[(fallback, origin)] = owner
            self.sent += 1

    def on_hint_ack(self, fields, now):
        sender, origin, low, high = fields
        if not self.engine.is_own(origin) or low > high:
            return
        self.engine.check_remote(0, ({origin: high},))
        ranges = self._acked.setdefault((sender, origin), [])
        if ranges and ranges[-1][0] <= low <= ranges[-1][1] + 1:    # consecutive hints: one range
            ranges[-1] = (ranges[-1][0], max(high, ranges[-1][1]))
        else:
            ranges.append((low, high))
            del ranges[:-ACKED_KEPT]
        self.events += 1

    def stands_for(self, node_id, origin, seq):
        """The owner fallback node_id holds entry seq of this run's origin for, as it said; None."""
        if any(low <= seq <= high for low, high in self._acked.get((node_id, origin), ())):
            return self._standing.get((node_id, origin))
        return None

    # ------------------------------------------------------------ the fallback

    def on_hint(self, fields, envelope, now):
        """Entries a coordinator could not give an owner: kept in the log and recorded, then
        acknowledged (after this iteration's commit). Checked first: only the coordinator's own
        origin, for an owner of that partition other than this node, consecutive seqs of it."""
        sender, owner, origin, raws = fields
        engine = self.engine
        partition = origin_partition(origin)
        if origin_node(origin) != sender or (self.run_of(sender) is not None
                                             and origin - origin_partition(origin) != self.run_of(sender)):
            raise errors.BadArgument(f"node {sender} sent hints of origin {origin_name(origin)}, not its run's")
        if (owner, origin) not in self.held and len(self.held) >= HINTS_MAX:
            raise errors.BadArgument(f"holding {HINTS_MAX} hint records already: a hint for node {owner} refused")
        if owner not in engine.placement.owners(partition) or owner == engine.node_id or engine.owns(partition):
            raise errors.BadArgument(f"a hint for node {owner}, which is not an owner of partition {partition} "
                                     f"(or this node is one)")
        entries = [protocol.decode_dyn_entry(raw) for raw in raws]
        if not entries:
            return
        for before, entry in zip([None, *entries], entries):
            if entry.origin != origin or (before is not None and entry.seq != before.seq + 1) or \
                    not 1 <= entry.seq <= SEQ_MAX:
                raise errors.BadArgument(f"hinted entries of origin {origin_name(origin)} are not consecutive")
            if any(bucket_of(key) != partition for key, _c, _v in entry.ops):
                raise errors.BadArgument(f"a hinted entry writes a key outside partition {partition}")
        low, high = entries[0].seq, entries[-1].seq
        batch = engine.staging()
        for entry, raw in zip(entries, raws):
            batch.put_cf("log", log_key(origin, entry.seq), raw)
        record = self.held.get((owner, origin))
        record = [low, high] if record is None else [min(record[0], low), max(record[1], high)]
        self.held[(owner, origin)] = record
        batch.put_cf("meta", META_HINT + _RECORD.pack(owner, origin), _RECORD.pack(*record))
        self.out.reply_peer(envelope, protocol.encode_peer("DHINT_ACK", engine.node_id, origin, low, high))

    def tick(self, now):
        """Hand each hint whose owner is heard again over, a page at a time."""
        for (owner, origin), (low, high) in list(self.held.items()):
            if not self._alive(owner) or self._handing.get((owner, origin), 0) > now:
                continue
            raws, size = [], 0
            for _k, raw in self.engine.storage.iter_cf("log", log_key(origin, low), log_key(origin, high + 1)):
                if len(raws) >= HANDOFF_PAGE.items or (raws and size + len(raw) > HANDOFF_PAGE.bytes):
                    break
                raws.append(raw)
                size += len(raw)
            if self.out.request(owner, protocol.encode_peer("DHANDOFF", self.engine.node_id, origin, raws)):
                self._handing[(owner, origin)] = now + HANDOFF_TIMEOUT

    def on_handoff_ack(self, fields, now):
        """The owner holds origin up to `seq`: the hint shrinks, or goes once it holds all of it."""
        owner, origin, seq = fields
        record = self.held.get((owner, origin))
        if record is None:
            return
        batch = self.engine.staging()
        key = META_HINT + _RECORD.pack(owner, origin)
        if seq < record[1]:
            if seq >= record[0]:        # progress: the next page at once
                self._handing.pop((owner, origin), None)
                record[0] = seq + 1
                batch.put_cf("meta", key, _RECORD.pack(*record))
            return      # none (a gap below it, filled from its co-owners): asked again after the timeout
        self._handing.pop((owner, origin), None)
        del self.held[(owner, origin)]
        batch.delete_cf("meta", key)
        self.delivered += 1
        if not any(o == origin for _owner, o in self.held) and origin not in self.engine.first:
            # no other owner waits for these entries, and this node does not apply the origin itself
            # (it may hold the partition as a copy it hands over: its log serves fetches)
            batch.delete_range_cf("log", log_key(origin, 0), log_key(origin + 1, 0))
        log.debug("hint of origin %s delivered to node %d", origin_name(origin), owner)

    # ------------------------------------------------------------ the owner

    def on_handoff(self, fields, envelope, now):
        """Entries a fallback held for this node: applied as fetched ones are (in order, checked),
        answered with what this node then holds of the origin."""
        sender, origin, raws = fields
        engine = self.engine
        if not engine.owns(origin_partition(origin)):
            raise errors.BadArgument(f"a handoff of origin {origin_name(origin)}, whose partition this node "
                                     f"does not own")
        if raws:
            engine.apply_remote(origin, raws)
        self.out.reply_peer(envelope, protocol.encode_peer("DHANDOFF_ACK", engine.node_id, origin,
                                                           engine.applied.get(origin, 0)))
