"""The partitioned side of DynamoEngine (docs/PARTITIONING.md): which partitions this node holds
whole, pulls or hands over, their origins' seqs, dropping a partition handed over, and the exact
count of keys it holds as an owner. A mixin of `DynamoEngine` (engine.py), which holds the state
these methods read: placement, applied seqs, per-bucket counts; it keeps moving_in, leaving and
partial."""
import logging
import struct

from ..storage import META_APPLIED, META_FIRST, META_LEAVING, META_MOVING, META_PLACED, log_key
from ..versions import EMPTY
from .antientropy import bucket_keys
from .layout import _U64, BUCKETS, bucket_of, origin_name

_PART = struct.Struct(">H")
_WHOLE = b"w"           # a META_LEAVING record's value for a partition held whole (else b"p": partial)
log = logging.getLogger("zmqstore.dynamo")


class PartitionedEngine:
    def _recover_moves(self):
        """At start (after the data scan): the partitions owned but not pulled yet, and those held but
        no longer owned, each whole or a partial copy (lost while it was being pulled), as recorded.
        Keys of a partition neither owned nor recorded are a partial copy too (they are handed over)."""
        storage = self.storage
        self.moving_in = {_PART.unpack(k[len(META_MOVING):])[0]
                          for k, _ in storage.iter_cf("meta", META_MOVING, META_MOVING + b"\xff" * 3)}
        self._moves_started, self.move_of = 0, {}      # moves started this run; partition -> its latest
        self.leaving, self.partial = set(), set()
        for k, raw in storage.iter_cf("meta", META_LEAVING, META_LEAVING + b"\xff" * 3):
            p = _PART.unpack(k[len(META_LEAVING):])[0]
            self.leaving.add(p)
            if raw != _WHOLE:
                self.partial.add(p)
        self.placed = storage.get_cf("meta", META_PLACED) is not None
        if self.per_partition:
            owned = self.placement.owned_by(self.node_id)
            stray = {p for p in range(BUCKETS) if self.buckets[p] and p not in owned and p not in self.leaving}
            self.leaving |= stray
            self.partial |= stray

    def _moved_partitions(self, before, after):
        """The placement changed: partitions gained are pulled from their holders (moving in, recorded
        with this iteration's batch), unless held whole here still; those lost are held until their
        new owners hold them (leaving), as partial copies if they were still being pulled."""
        batch = self._staging()
        for p in after - before:
            if p in self.leaving:
                self.leaving.discard(p)
                batch.delete_cf("meta", META_LEAVING + _PART.pack(p))
                if p not in self.partial:
                    continue    # owned again before it was dropped, and whole: nothing to pull
                self.partial.discard(p)
            if p not in self.moving_in:
                self._mark_moving(p)
        for p in before - after:
            if p in self.moving_in:
                self.moving_in.discard(p)
                batch.delete_cf("meta", META_MOVING + _PART.pack(p))
                self.partial.add(p)
            self.leaving.add(p)
            batch.put_cf("meta", META_LEAVING + _PART.pack(p), b"p" if p in self.partial else _WHOLE)
        if after - before or before - after:
            log.info("placement: %d partitions to pull, %d to hand over (owning %d)", len(after - before),
                     len(before - after), len(after))

    def _placed_by_change(self, membership):
        """A node added by a change (its own record's counter above 0: add-member, not the
        membership the cluster was created with) holds none of its partitions yet. One that joined
        with --join marked them to pull (join.py); one started with --peers and added by
        `add-member` learns it here, from its peers' records, and marks them now. Once only."""
        record = membership.records.get(self.node_id)
        if self.placed or record is None or record.counter == 0 or record.removed:
            return
        self.placed = True
        batch = self._staging()
        batch.put_cf("meta", META_PLACED, b"")
        owned = self.placement.owned_by(self.node_id) - self.moving_in
        for p in owned:
            self._mark_moving(p)
        log.warning("this node was added by add-member (record counter %d) and started without --join: pulling the "
                    "%d partitions it owns from their holders", record.counter, len(owned))

    def _mark_moving(self, partition):
        """The partition is to be pulled (recorded with this iteration's batch). Each time is a new
        move (`move_of`): a pull started for an earlier one, lost meanwhile, must not finish it."""
        self.moving_in.add(partition)
        self._moves_started += 1
        self.move_of[partition] = self._moves_started
        self._staging().put_cf("meta", META_MOVING + _PART.pack(partition), b"")

    def moved_in(self, partition):
        """The partition's snapshot is in: this node serves it like any owner."""
        self.moving_in.discard(partition)
        self._staging().delete_cf("meta", META_MOVING + _PART.pack(partition))

    def repull(self, partition, sender, origin, first):
        """Node `sender` trimmed entries of the partition's `origin` this node lacks (below `first`:
        every holder had applied them; this data dir is older, restored from a copy): its streams
        cannot complete it any more, so it is pulled again like a gained partition (moves.py; the
        pull adopts the holder's seqs). A copy being handed over becomes partial instead."""
        if partition in self.moving_in or partition in self.partial:
            return
        log.warning("node %d no longer holds entries of origin %s below %d that this node lacks (trimmed once every "
                    "holder had them: this data dir is older than that): pulling partition %d again", sender,
                    origin_name(origin), first, partition)
        if partition in self.leaving:
            self.partial.add(partition)
            self._staging().put_cf("meta", META_LEAVING + _PART.pack(partition), b"p")
        elif self.owns(partition):
            self._mark_moving(partition)

    def take_as_fallback(self, partitions) -> list:
        """No owner of these partitions is heard: this node takes a write of them (sloppy quorum)
        and keeps what it writes as a partial copy it hands over to the owners (recorded, like a
        partition lost while pulled). Returns the partitions newly taken."""
        taken = [p for p in partitions if not self.keeps(p)]
        for p in taken:
            self.leaving.add(p)
            self.partial.add(p)
            self._staging().put_cf("meta", META_LEAVING + _PART.pack(p), b"p")
        return taken

    @property
    def not_whole(self) -> set:
        """Partitions held but not whole: being pulled, or a partial copy handed over (DSYNC `moving`)."""
        return self.moving_in | self.partial

    def holds(self, partition) -> bool:
        """Whether this node holds the partition whole: owned and pulled, or owned before and not
        yet handed over."""
        return (partition in self.leaving or partition in self.placement.owned_by(self.node_id)) \
            and partition not in self.moving_in and partition not in self.partial

    def keeps(self, partition) -> bool:
        """Whether this node takes the partition's entries: owned (pulled or not), or handed over."""
        return partition in self.leaving or partition in self.placement.owned_by(self.node_id)

    def holds_key(self, key) -> bool:
        """Whether this node holds the key's partition whole (always, with every key everywhere): a
        node still pulling it answers a quorum read without a vector, which claims nothing."""
        return not self.per_partition or self.holds(bucket_of(key))

    def partition_origins(self, partition, staged=False) -> dict:
        """The durable (or with `staged`, the staged) applied seqs of the partition's origins here."""
        durable = self.applied if staged else self.durable_applied
        return {o: durable[o] for o in self._by_partition.get(partition, ()) if o in durable}

    def partition_vector(self, key) -> dict:
        """What a peer needs of the durable applied vector to join a state of `key` with ours: with
        replicas set, its partition's origins only (a whole vector has thousands); else all of it."""
        if not self.per_partition:
            return self.durable_applied
        durable = self.durable_applied
        return {o: durable[o] for o in self._by_partition.get(bucket_of(key), ()) if o in durable}

    def drop_partition(self, partition) -> int:
        """Hand-over done: drop the partition's keys, log and applied seqs (this run's own origins
        keep their seqs, which are never reused). Returns the keys dropped."""
        dropped = 0
        for key in list(bucket_keys(self.storage, partition, b"")):
            state = self.load(key)
            if state.siblings:
                self._store(key, state, EMPTY)
                dropped += 1
        batch = self._staging()
        for origin in self._by_partition.pop(partition, set()):
            batch.delete_range_cf("log", log_key(origin, 0), log_key(origin + 1, 0))
            if self.is_own(origin):
                self.first[origin] = self.applied[origin] + 1
                batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(self.first[origin]))
                self._by_partition.setdefault(partition, set()).add(origin)
                continue
            for table in (self.applied, self.first, self.durable_applied):
                table.pop(origin, None)
            self._moved.discard(origin)
            batch.delete_cf("meta", META_APPLIED + _U64.pack(origin))
            batch.delete_cf("meta", META_FIRST + _U64.pack(origin))
        self.leaving.discard(partition)
        self.partial.discard(partition)
        batch.delete_cf("meta", META_LEAVING + _PART.pack(partition))
        return dropped

    def owned_keys(self) -> int:
        """Keys holding a value in the partitions this node owns: exact (status `keys`)."""
        live = self.live
        return sum(live[p] for p in self.placement.owned_by(self.node_id))
