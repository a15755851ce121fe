"""The partitioned side of Replication (docs/PARTITIONING.md): with `replicas` set, which peers
share which partitions, the DSYNC views of them, catch-up from co-owners, partitions handed over
once their owners hold them, and the per-partition vectors garbage collection goes by. A mixin of
`Replication` (replication.py), which holds the state these methods read: views, the engine, the
sync, moves and hints."""
import logging
import struct

from .. import errors, protocol
from .layout import bucket_of, origin_name, origin_node, origin_partition
from .placement import PARTITIONS

HAND_OVER_BATCH = 64              # partitions dropped per housekeeping pass at most

log = logging.getLogger("zmqstore.dynamo")
_TOPIC = struct.Struct(">cH")


def topic(partition) -> bytes:
    """The PUB topic of a partition's entries (docs/PARTITIONING.md): only its owners subscribe."""
    return _TOPIC.pack(b"p", partition)


class PartitionedReplication:
    def _partition_vectors(self):
        """Partitioned: (stable, most) per origin over the owners of its partition, this node and
        the peers whose views are complete (DSYNC): the elementwise minimum and maximum of their
        applied seqs. An origin of a partition some co-owner's view is not complete for stays at 0
        in `stable`."""
        mine = self.engine.durable_applied
        views, co_owners = self.views, self._co_owners
        stable, most = {}, {}
        for origin, seq in mine.items():
            if origin_partition(origin) not in co_owners:
                continue        # a partition this node does not own: nothing of it is collected here
            low = high = seq
            for node_id in co_owners[origin_partition(origin)]:
                view = views[node_id]
                theirs = view.applied.get(origin, 0) if view.synced else 0
                low, high = min(low, theirs), max(high, theirs)
            stable[origin], most[origin] = low, high
        for node_id, view in views.items():
            shared = self._shared.get(node_id, ())
            for origin, seq in view.applied.items():
                if seq > most.get(origin, 0) and origin_partition(origin) in shared:
                    most[origin] = seq
                    stable.setdefault(origin, 0)
        return stable, most

    def _on_sync(self, fields, envelope, now):
        """A co-owner's DSYNC (sync.py): what its applied vector gained in the partitions both own.
        Entries it holds and this node lacks are fetched from it."""
        node_id, run, to_run, number, ack, replicas, pairs, complete, moving, leaving = fields
        if replicas != self.engine.replicas:
            raise errors.BadArgument(f"node {node_id} runs with replicas = {replicas}, but this node's cluster was "
                                     f"created with replicas = {self.engine.replicas}: the value is fixed at creation; "
                                     f"start node {node_id} with --replicas {self.engine.replicas} and an empty data dir")
        view = self.views.get(node_id)
        if view is None or not self.per_partition:
            return
        if origin_node(run) != node_id:
            raise errors.BadArgument(f"run {origin_name(run)} is not one of node {node_id}")
        if any(p >= PARTITIONS for p in moving) or any(p >= PARTITIONS for p in leaving):
            raise errors.BadArgument(f"a DSYNC names partitions beyond {PARTITIONS - 1}")
        shared = self._shared.get(node_id, frozenset())
        # A pair of a partition the two do not both hold (one of them just handed it over) is ignored.
        gained = {o: s for o, s in protocol.vector_from_pairs(pairs).items() if origin_partition(o) in shared}
        records = self.engine.membership.records
        if any(origin_node(o) not in records for o in gained):
            raise errors.BadArgument("a DSYNC names origins of nodes that were never members")
        self.engine.check_remote(0, (gained,))
        # The view is never cleared: a node's durable seqs only grow (with fsync off, a crash may lose
        # some: docs/PARTITIONING.md), and a DSYNC claiming a new run of a node that did not restart
        # would otherwise leave the view empty, since the real one sends only what changes.
        addressed = self.sync.on_sync(node_id, run, to_run, number, ack)
        view.sync_heard = now
        applied, mine, engine = view.applied, self.engine.applied, self.engine
        for origin, seq in gained.items():
            if seq > applied.get(origin, 0):
                applied[origin] = seq
            if engine.is_own(origin):
                self._note_acked(node_id, origin, seq)
            elif seq > mine.get(origin, 0) and engine.owns(origin_partition(origin)) and \
                    origin_partition(origin) not in engine.moving_in:    # pulling: the snapshot brings it
                self._lacking[origin] = None
                self._fetch(origin, node_id, now)
        if addressed and complete:
            view.synced = True
        moving, leaving = frozenset(moving), frozenset(leaving)
        if leaving != view.leaving:
            view.leaving = leaving
            self._reshare()
        view.moving = moving

    def _fetch_lacking(self, now):
        """Partitioned: a DSYNC names a change once, so what it showed ahead is asked for again each
        heartbeat (a fetch in flight is not repeated, _fetch), from a co-owner that is alive and
        holds more, until this node holds everything its co-owners reported."""
        mine = self.engine.applied
        for origin in list(self._lacking):
            have = mine.get(origin, 0)
            ahead = [n for n in self._co_owners.get(origin_partition(origin), ())
                     if self.views[n].applied.get(origin, 0) > have]
            if not ahead:
                del self._lacking[origin]
                continue
            alive = [n for n in ahead if self.alive(n)]
            if alive:
                self._fetch(origin, alive[0], now)

    def _holders(self, key) -> tuple:
        """The peers owning the key's partition (partitioned; empty unless this node owns it too)."""
        return self._co_owners.get(bucket_of(key), ())

    def _place(self, peers):
        """Partitioned: who owns what with this node, and every peer's DSYNC from the start (a
        partition may have moved)."""
        placement, me = self.engine.placement, self.engine.node_id
        owned = placement.owned_by(me)
        self._co_owners = {p: tuple(n for n in placement.owners(p) if n != me) for p in owned}
        self._shared = {}
        self.sync.follow(peers)
        for view in self.views.values():
            view.synced = False
        self._reshare()

    def _reshare(self):
        """The partitions this node shares with each peer: those both hold, owned (pulled or not) or
        still handed over (DSYNC `leaving`); the topics it takes. A peer whose share changed gets
        everything of the new share again (sync.py)."""
        engine, placement, me = self.engine, self.engine.placement, self.engine.node_id
        mine = placement.owned_by(me) | engine.leaving
        shared, sharers = {}, {}
        for node_id, view in self.views.items():
            theirs = mine & (placement.owned_by(node_id) | view.leaving)
            shared[node_id] = frozenset(theirs)
            for p in theirs:
                sharers.setdefault(p, []).append(node_id)
        changed = [n for n in shared if self._shared.get(n) != shared[n]]
        self._shared, self._sharers = shared, {p: tuple(ns) for p, ns in sharers.items()}
        for node_id in changed:     # after the assignment: a reset sends what is shared now
            if node_id in self.sync.peers:
                self.sync.reset(node_id)
            self.views[node_id].synced = False
        topics = frozenset(topic(p) for p in mine)
        if topics != self.topics:
            self.topics = topics

    def _whole_holders(self, partition) -> list:
        """The peers holding the partition whole, as their DSYNCs say, best first: its owners not
        pulling it, then the nodes handing it over."""
        owners = [n for n in self.engine.placement.owners(partition)
                  if n != self.engine.node_id and n in self.views and partition not in self.views[n].moving]
        return owners + [n for n, view in self.views.items() if partition in view.leaving and n not in owners]

    def _moved_in(self, partition):
        """A pulled partition: its streams from here on, from every co-owner ahead."""
        mine = self.engine.applied
        for node_id in self._co_owners.get(partition, ()):
            for origin, seq in self.views[node_id].applied.items():
                if origin_partition(origin) == partition and seq > mine.get(origin, 0):
                    self._lacking[origin] = None

    def _hand_over(self):
        """Drop the partitions this node no longer owns once every owner holds what it holds of them
        (a complete DSYNC view covering its seqs, and not pulling them any more)."""
        engine, me = self.engine, self.engine.node_id
        dropped = 0
        for p in sorted(engine.leaving):
            mine = engine.partition_origins(p)
            owners = [n for n in engine.placement.owners(p) if n != me]
            if all(self.alive(n) and self.views[n].synced and p not in self.views[n].moving
                   and all(self.views[n].applied.get(o, 0) >= s for o, s in mine.items()) for n in owners):
                keys = engine.drop_partition(p)
                log.debug("partition %d handed over to nodes %s: %d keys dropped here", p, owners, keys)
                dropped += 1
                if dropped >= HAND_OVER_BATCH:
                    break
        if dropped:
            self._reshare()
