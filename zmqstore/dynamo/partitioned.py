"""The partitioned side of Replication (docs/PARTITIONING.md): with `replicas` set, which peers
share which partitions, the DSYNC views of them, catch-up from co-owners, partitions handed over
once their owners hold them, and the per-partition vectors garbage collection goes by. A mixin of
`Replication` (replication.py), which holds the state these methods read: views, the engine, the
sync, moves and hints."""
import logging
import struct

from .. import errors, protocol
from .forwarding import partitions_of
from .layout import bucket_of, origin_name, origin_node, origin_partition
from .placement import PARTITIONS

HAND_OVER_BATCH = 64              # partitions dropped per housekeeping pass at most
VIEW_MAX = 64 * 4096              # origins past which a peer's view keeps only those of shared partitions
                                  # (an origin per run and partition: 64 runs with writes in every one)

log = logging.getLogger("zmqstore.dynamo")
_TOPIC = struct.Struct(">cH")


def topic(partition) -> bytes:
    """The PUB topic of a partition's entries (docs/PARTITIONING.md): only its owners subscribe."""
    return _TOPIC.pack(b"p", partition)


class PartitionedReplication:
    def _partition_vectors(self):
        """Partitioned: (stable, most) per origin over the nodes holding its partition (this node,
        its co-owners, nodes still handing it over) whose views are complete (DSYNC): the
        elementwise minimum and maximum of their applied seqs. An origin of a partition some
        holder's view is not complete for stays at 0 in `stable`."""
        mine = self.engine.durable_applied
        views, co_owners, sharers = self.views, self._co_owners, self._sharers
        stable, most = {}, {}
        for origin, seq in mine.items():
            if origin_partition(origin) not in co_owners:
                continue        # a partition this node does not own: nothing of it is collected here
            low = high = seq
            # its owners, and the nodes still handing it over: a pull from one of those must not
            # bring back a key whose tombstone was collected here
            for node_id in sharers.get(origin_partition(origin), ()):
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
        # Every pair is kept, shared or not: the sender sends a pair until this node confirms it, and
        # this node may learn only later (its membership behind, a `leaving` in a later DSYNC) that
        # it shares the partition. Where the views are read, they are read for shared partitions.
        gained = protocol.vector_from_pairs(pairs)
        records = self.engine.membership.records
        if any(origin_node(o) not in records for o in gained):
            raise errors.BadArgument("a DSYNC names origins of nodes that were never members")
        if len(view.applied) + len(gained) > VIEW_MAX:
            # bounded: past VIEW_MAX, new origins of partitions not shared (yet) are not kept (a real
            # node's view grows with runs that wrote; shared ones are always kept, they are needed)
            shared = self._shared.get(node_id, frozenset())
            gained = {o: s for o, s in gained.items() if o in view.applied or origin_partition(o) in shared}
        self.engine.check_remote(0, (gained,))
        moving, leaving = frozenset(moving), frozenset(leaving)
        view.moving = moving
        if leaving != view.leaving:
            dropped = view.leaving - leaving - self.engine.placement.owned_by(node_id)
            if dropped:     # handed over: its seqs of them are forgotten (it may pull one again later,
                            # from less than it held)
                view.applied = {o: s for o, s in view.applied.items() if origin_partition(o) not in dropped}
                for p in dropped:
                    view.origins.pop(p, None)
            view.leaving = leaving
            self._reshare()
        # The view is never cleared (but of partitions the sender handed over): a node's durable
        # seqs only grow (with fsync off, a crash may lose some: docs/PARTITIONING.md), and a DSYNC
        # claiming a new run of a node that did not restart
        # would otherwise leave the view empty, since the real one sends only what changes.
        addressed = self.sync.on_sync(node_id, run, to_run, number, ack)
        view.sync_heard = now
        applied, mine, engine = view.applied, self.engine.applied, self.engine
        for origin, seq in gained.items():
            if origin not in applied:
                view.origins.setdefault(origin_partition(origin), set()).add(origin)
            if seq > applied.get(origin, 0):
                applied[origin] = seq
            if engine.is_own(origin):
                self._note_acked(node_id, origin, seq)
            elif seq > mine.get(origin, 0) and engine.keeps(origin_partition(origin)) and \
                    origin_partition(origin) not in engine.moving_in:    # pulling: the snapshot brings it
                self._lacking[origin] = None
                self._fetch(origin, node_id, now)
        if addressed and complete:
            view.synced = True

    def _fetch_lacking(self, now):
        """Partitioned: a DSYNC names a change once, so what it showed ahead is asked for again each
        heartbeat (a fetch in flight is not repeated, _fetch), from a node sharing the partition
        that is alive and holds more, until this node holds everything they reported (a node
        handing a partition over keeps up too: it is still a pull source)."""
        mine = self.engine.applied
        for origin in list(self._lacking):
            have = mine.get(origin, 0)
            ahead = [n for n in self._sharers.get(origin_partition(origin), ())
                     if self.views[n].applied.get(origin, 0) > have]
            if not ahead:
                del self._lacking[origin]
                continue
            alive = [n for n in ahead if self.alive(n)]
            if alive:       # one that has not left a fetch of it unanswered, if any
                tried = self._unanswered.get(origin, ())
                self._fetch(origin, next((n for n in alive if n not in tried), alive[0]), now)

    def _holders(self, key) -> tuple:
        """The peers owning the key's partition (partitioned; empty unless this node owns it too)."""
        return self._co_owners.get(bucket_of(key), ())

    def take_as_fallback(self, request):
        """A write made here for partitions this node does not keep (no owner was heard: Forwards):
        it holds them as a fallback, a partial copy shared with their owners (DSYNC `leaving`), who
        fetch it once back; it is handed over like any (_hand_over). Called once the write is
        staged, so a refused write takes nothing."""
        taken = self.engine.take_as_fallback(partitions_of(request))
        if taken:
            log.warning("no owner of partition %s heard: this node takes its writes as a fallback and hands them "
                        "to the owners once they are back", ", ".join(map(str, taken)))
            self._reshare()

    def _readers(self, key) -> tuple:
        """The co-owners a quorum read asks and counts: those not pulling the key's partition (one
        still pulling it may lack a write made before it started, and claims nothing)."""
        p = bucket_of(key)
        return tuple(n for n in self._co_owners.get(p, ()) if p not in self.views[n].moving)

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
        pulling it, then the nodes handing it over whole (DSYNC `moving` names a partial copy too)."""
        owners = [n for n in self.engine.placement.owners(partition)
                  if n != self.engine.node_id and n in self.views and partition not in self.views[n].moving]
        return owners + [n for n, view in self.views.items()
                         if partition in view.leaving and partition not in view.moving and n not in owners]

    def _moved_in(self, partition):
        """A pulled partition: its streams from here on, from every node sharing it that is ahead
        (pairs it sent while the partition was pulled were confirmed, not fetched)."""
        mine = self.engine.applied
        for node_id in self._sharers.get(partition, ()):
            view = self.views[node_id]      # (its index of the partition's origins: a view holds thousands)
            for origin in view.origins.get(partition, ()):
                if view.applied.get(origin, 0) > mine.get(origin, 0):
                    self._lacking[origin] = None

    def _hand_over(self):
        """Drop the partitions this node no longer owns once every owner holds what it holds of them
        (a complete DSYNC view covering its seqs, and not pulling them any more)."""
        engine, me = self.engine, self.engine.node_id
        dropped = 0
        for p in sorted(engine.leaving):
            mine = engine.partition_origins(p, staged=True)     # a write staged this iteration too
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

    def _check_partitioned_removal(self, node_id, fresh):
        """Partitioned (Replication.check_removal): a removed node's partitions are pulled from the
        nodes that hold them whole. A node heard lately (or this one) is removed only while nothing
        moves and once this node holds what it reported; one not heard, also while partitions move
        (a move waiting for it would never end), unless it may be the last node holding one of its
        partitions whole, or was last seen handing over a partial copy (a fallback's writes) this
        node, an owner, does not hold: then it must come back first."""
        engine, mine = self.engine, self.engine.durable_applied
        if node_id in fresh or node_id == engine.node_id:
            if engine.moving_in or engine.leaving or any(v.moving or v.leaving for v in fresh.values()):
                raise errors.Unavailable("partitions are still moving between nodes; retry once `status` shows "
                                         "partitions_moving 0 everywhere")
            shared = self._shared.get(node_id, ())
            if node_id in fresh and any(s > mine.get(o, 0) for o, s in fresh[node_id].applied.items()
                                        if origin_partition(o) in shared):
                raise errors.Unavailable(f"node {node_id} holds writes this node has not applied yet; retry in a "
                                         f"moment")
            return
        view = self.views.get(node_id)
        held = engine.placement.owned_by(node_id) | (view.leaving if view is not None else frozenset())
        for p in sorted(held):
            if not (engine.holds(p) or any(n in fresh for n in self._whole_holders(p) if n != node_id)):
                raise errors.Unavailable(
                    f"node {node_id} is not heard, and no node heard lately holds its partition {p} whole (its other "
                    f"owners are still pulling it, or down): removing it could lose writes; bring it back, or retry "
                    f"once they are up")
        # Partial copies it hands over (a fallback's writes, a pull cut short) may hold writes their
        # owners lack: only an owner holding what its last DSYNC showed of them can tell they do not.
        for p in sorted(view.leaving & view.moving if view is not None else ()):
            theirs = {o: s for o, s in view.applied.items() if origin_partition(o) == p}
            if not engine.owns(p) or not view.synced or any(s > mine.get(o, 0) for o, s in theirs.items()):
                raise errors.Unavailable(
                    f"node {node_id} is not heard, and was last seen holding writes of partition {p} (a copy it hands "
                    f"over, its owners: nodes {', '.join(map(str, engine.placement.owners(p)))}) that this node cannot "
                    f"tell its owners hold: bring it back, or ask an owner of partition {p} once it holds them")
