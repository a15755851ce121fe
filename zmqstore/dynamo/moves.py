"""Rebalancing (docs/PARTITIONING.md, "Rebalancing"): a node that gained partitions when the
membership changed pulls each from a node that holds it whole, a snapshot of its key states page by
page (DRANGE / DRANGE_REPLY restricted to the partition's bucket), joined into its data, then the
holder's applied seqs of the partition's origins as they were at the first page adopted. From then
on the partition's streams keep it current (DSYNC, DFETCH) and the node serves it. A few partitions
move at once; a holder that does not answer is left for a while and another is asked.

The serving side answers only for a partition it holds whole (owned and pulled, or owned before and
not yet handed over): a node that is itself still pulling it must not hand out a partial copy as a
snapshot. No I/O beyond RocksDB reads; messages go through the iteration's Sends."""
import logging

from .. import errors, protocol
from .antientropy import range_items
from .layout import BUCKETS, origin_node, origin_partition

PULLS_IN_FLIGHT = 16             # partitions pulled at once (a page each in flight)
PULL_TIMEOUT = 2.0               # seconds without a page before the holder is given up (for a while)
SOURCE_REST = 5.0                # seconds before a holder that did not answer is asked again

log = logging.getLogger("zmqstore.dynamo")


class Pull:
    __slots__ = ("id", "source", "cursor", "vector", "deadline", "keys", "move")

    def __init__(self, pull_id, source, deadline, move=0):
        self.id, self.source, self.deadline, self.move = pull_id, source, deadline, move
        self.cursor = None
        self.vector = None          # the holder's seqs of the partition's origins at the first page
        self.keys = 0


class Moves:
    def __init__(self, out, engine, alive, holders, on_moved_in):
        self.out, self.engine = out, engine
        self._alive = alive                 # node id -> heard lately
        self._holders = holders             # partition -> node ids that hold it whole, best first
        self._on_moved_in = on_moved_in     # partition -> None (Replication: catch up its streams)
        self.pulls = {}                     # partition -> Pull
        self._rest = {}                     # (partition, node id) -> until when it is not asked
        self._ids = 0
        self.moved_in = self.keys_pulled = 0

    def tick(self, now):
        for p, pull in list(self.pulls.items()):
            if not self._current(p, pull):      # lost meanwhile (maybe gained again): what it pulled stays partial
                del self.pulls[p]
            elif pull.deadline <= now:
                log.info("pulling partition %d: node %d did not answer within %.0f s; asking another", p,
                         pull.source, PULL_TIMEOUT)
                self._rest[(p, pull.source)] = now + SOURCE_REST
                del self.pulls[p]
        self._start(now)

    def _start(self, now):
        """Start pulls up to PULLS_IN_FLIGHT, each from a holder heard lately that has not just failed."""
        if len(self.pulls) >= PULLS_IN_FLIGHT or not self.engine.moving_in:
            return
        for p in sorted(self.engine.moving_in):
            if p in self.pulls:
                continue
            source = next((n for n in self._holders(p) if self._alive(n) and self._rest.get((p, n), 0) <= now), None)
            if source is None:
                continue
            self._ids += 1
            pull = Pull(self._ids, source, now + PULL_TIMEOUT, self.engine.move_of.get(p, 0))
            if self.out.request(source, protocol.encode_peer("DRANGE", self.engine.node_id, pull.id, p, None)):
                self.pulls[p] = pull
            if len(self.pulls) >= PULLS_IN_FLIGHT:
                return

    def _current(self, partition, pull) -> bool:
        """Whether the pull is of the partition's move under way (not of one lost since, even if
        the partition was gained again: that move starts from the first page)."""
        return partition in self.engine.moving_in and self.engine.move_of.get(partition, 0) == pull.move

    def on_range(self, fields, envelope, now):
        """A page of a partition this node holds whole, with its seqs of the partition's origins."""
        _node_id, pull_id, partition, cursor = fields
        engine = self.engine
        if partition >= BUCKETS or not engine.holds(partition):
            return      # not whole here: the puller asks another holder
        items, next_cursor = range_items(engine.storage, partition, cursor)
        self.out.reply_peer(envelope, protocol.encode_peer(
            "DRANGE_REPLY", engine.node_id, pull_id, partition, cursor, items, next_cursor,
            protocol.vector_pairs(engine.partition_origins(partition))))

    def on_range_reply(self, fields, now):
        sender, pull_id, partition, cursor, items, next_cursor, applied = fields
        pull = self.pulls.get(partition)
        if pull is None or pull.id != pull_id or pull.source != sender or pull.cursor != cursor:
            return
        if not self._current(partition, pull):
            del self.pulls[partition]   # lost meanwhile (a second change): no more pages, no seqs adopted
            return
        remote = protocol.vector_from_pairs(applied)
        if any(origin_partition(o) != partition for o in remote):
            raise errors.BadArgument(f"a page of partition {partition} with seqs of other partitions' origins")
        records = self.engine.membership.records
        if any(origin_node(o) not in records for o in remote):
            raise errors.BadArgument(f"a page of partition {partition} with seqs of nodes that were never members")
        engine = self.engine
        engine.merge_range(partition, cursor, next_cursor, items, remote, pulling=True)   # checks every item first
        if pull.vector is None:
            pull.vector = remote
        pull.keys += len(items)
        self.keys_pulled += len(items)
        if next_cursor is not None:
            pull.cursor, pull.deadline = next_cursor, now + PULL_TIMEOUT
            self.out.send_to(sender, protocol.encode_peer("DRANGE", engine.node_id, pull.id, partition, next_cursor))
            return
        engine.adopt_applied(pull.vector)
        engine.moved_in(partition)
        del self.pulls[partition]
        self.moved_in += 1
        log.debug("partition %d pulled from node %d: %d keys", partition, sender, pull.keys)
        if not engine.moving_in:
            log.info("every partition this node owns is pulled (%d so far this run, %d keys)", self.moved_in,
                     self.keys_pulled)
        self._on_moved_in(partition)
        self._start(now)       # the next at once, not at the next heartbeat
