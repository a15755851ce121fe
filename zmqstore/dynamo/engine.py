"""DynamoEngine: this node's data and origin logs in dynamo mode (docs/DYNAMO.md). Each local write
gets the next seq of this node's origin, its versions are computed (versions.py), and entry, key
states and bookkeeping go to RocksDB in the loop iteration's one batch (one fsync) before any reply
leaves. Entries from other origins are applied in each origin's seq order, and every entry applied
is kept in the log, so any node can serve any origin's entries."""
import logging
import os
import time

from .. import errors, protocol
from ..faults import NONE
from ..protocol import DynEntry, decode_dyn_entry, encode_dyn_entry, encode_key_state
from ..sessions import Sessions
from ..storage import (META_APPLIED, META_DMEMBERS, META_FIRST, META_HLC, META_REPLICAS, META_RUN,
                       META_TOMB, META_TOMB_END, log_key)
from ..versions import EMPTY, HybridClock, KeyState, Sibling, apply_write, is_tombstone_only, stable, winner
from .commands import DynamoCommands
from .engine_partitions import PartitionedEngine
from .engine_peers import PeerInput
from .membership import DynamoMembership
from .layout import (BUCKETS, FETCH_PAGE, GC_MAX_KEYS, _U64, _decode_state, _hash_key, _state_hash,
                     bucket_of, origin_name, origin_node, origin_partition)
from .placement import ALL, Placement

log = logging.getLogger("zmqstore.dynamo")
_MASK64 = (1 << 64) - 1
RUN_PARTITION_BITS = 0xFFF       # with replicas set, an origin's low 12 bits are its partition



class DynamoEngine(PartitionedEngine, PeerInput):
    """This node's dynamo-mode data, logs and client commands (what peers send: engine_peers.py;
    the partitioned side: engine_partitions.py)."""

    def __init__(self, storage, config, version, faults=NONE):
        self.storage = storage
        self.config = config
        self.version = version
        self.node_id = config.node_id
        self.started = time.monotonic()
        self.space_alarm = False      # short of disk (space.py): logs keep only what some node lacks
        self.limits = protocol.Limits(config.max_key_size, config.max_value_size,
                                      config.max_batch_items, config.max_request_size)
        self.membership = load_membership(storage, config)
        # replicas (docs/PARTITIONING.md): fixed when the cluster was created. With a number, each
        # run writes one origin per partition (run | partition), so an origin's entries are one
        # partition's and its owners hold its whole stream; with ALL, one origin per run.
        self.replicas = load_replicas(storage, config)
        self.per_partition = self.replicas != ALL
        self._run_mask = ~RUN_PARTITION_BITS & _MASK64 if self.per_partition else _MASK64
        self.placement = Placement(self.membership.members or (self.node_id,), self.replicas)
        self.on_membership = None      # called with each new membership (Replication)
        self.extra_status = None
        self.sessions = Sessions(config.session_timeout)
        # An entry must fit in one DCHANGE or DENTRIES a peer accepts; a key's versions (written
        # here) in one DRANGE_REPLY or DREAD_REPLY (peers take up to 2 * max_request_size + 1 MiB
        # from their DEALER and SUB sockets: node.py).
        self.entry_limit = config.max_request_size - 4096
        self.state_limit = 2 * config.max_request_size
        self.applied = {}          # origin -> highest seq applied here (staged included)
        self.first = {}            # origin -> lowest seq still in the log
        for key, raw in storage.iter_cf("meta", META_APPLIED, META_APPLIED + b"\xff" * 9):
            self.applied[_U64.unpack(key[len(META_APPLIED):])[0]] = _U64.unpack(raw)[0]
        for key, raw in storage.iter_cf("meta", META_FIRST, META_FIRST + b"\xff" * 9):
            self.first[_U64.unpack(key[len(META_FIRST):])[0]] = _U64.unpack(raw)[0]
        # Sessions are rebuilt from the logs at start: whole only if no log was ever trimmed.
        self.sessions_complete_since = self.started if any(f > 1 for f in self.first.values()) else float("-inf")
        runs = {o & self._run_mask for o in self.applied}
        runs.update(_U64.unpack(k[len(META_RUN):])[0] & self._run_mask
                    for k, _ in storage.iter_cf("meta", META_RUN, META_RUN + b"\xff" * 9))
        while True:   # a new run, never one an earlier run used: its origins' seqs are never reused
            self.run = ((self.node_id << 32) | int.from_bytes(os.urandom(4), "big")) & self._run_mask
            if self.run not in runs and self.run & 0xFFFFFFFF & self._run_mask:
                break
        batch = storage.batch()       # recorded before it writes anything: a run is never used twice
        batch.put_cf("meta", META_RUN + _U64.pack(self.run), b"")
        storage.commit(batch)
        self.origin = self.run       # ALL: this run's one origin (per partition: partition 0's)
        if not self.per_partition:
            self.applied[self.origin] = 0
        self.made = 0                # writes this run made (every origin of the run)
        self._by_partition = {}      # per partition: the origins applied here (replicas set only)
        if self.per_partition:
            for origin in self.applied:
                self._by_partition.setdefault(origin_partition(origin), set()).add(origin)
        self.durable_applied = dict(self.applied)   # what the last flush made durable (reported to peers)
        raw_hlc = storage.get_cf("meta", META_HLC)
        self.hlc = HybridClock(_U64.unpack(raw_hlc)[0] if raw_hlc else 0)
        # Batches flushed so far: a reply that depends on the open batch waits for its number
        # (replies.py, modes.DynamoMode), so nothing is acknowledged before it is durable. (Not a
        # log position: this node's log position is applied[origin], which STATUS reports.)
        self.durable_batches = 0
        self._batch = None
        self._dirty = {}           # key -> KeyState written in the open batch (EMPTY: removed)
        self._raw = {}             # key -> the encoding of its current state, as loaded or staged
        self._moved = set()        # origins whose applied seq this batch moves
        self._announce = set()     # other origins whose durable applied seq moved, not yet acknowledged
        self._published = []       # (origin, entry) of this run flushed but not yet published
        self._synced = set()       # origins whose durable applied seq moved, not yet taken by Replication
        self._staged_own = []
        self.digest = 0            # XOR of every key's state hash = XOR of the bucket hashes
        self.buckets = [0] * BUCKETS
        self.conflicts = 0         # keys with more than one sibling
        self.tombstones = 0        # keys holding tombstones only
        self.live = [0] * BUCKETS  # per bucket (partition): keys holding a value (not tombstones only)
        for key, raw in storage.iter_cf("data"):
            h = _state_hash(key, raw)
            bucket = bucket_of(key)
            self.digest ^= h
            self.buckets[bucket] ^= h
            state = _decode_state(raw)
            self.conflicts += len(state.siblings) > 1
            tomb = is_tombstone_only(state)
            self.tombstones += tomb
            self.live[bucket] += not tomb
        self.durable_digest = self.digest
        self._recover_moves()
        if self.per_partition:
            self._placed_by_change(self.membership)
        self._gc_cursor = b""
        self._recover_sessions()
        self._lww = faults.dynamo_lww      # test-only: a deliberately broken build (faults.py)
        self.leader_address = None
        self.commands = DynamoCommands(self)
        self.handle = self.commands.handle   # request -> (reply body, Wait), dynamo/commands.py
        log.info("dynamo mode: origin %s for this run%s; %d origins known, %d keys with siblings, %d tombstones",
                 origin_name(self.origin), f" (one per partition, replicas = {self.replicas})"
                 if self.per_partition else "", len(self.applied) - (not self.per_partition), self.conflicts,
                 self.tombstones)

    @property
    def role(self) -> str:
        return "peer" if self.membership.removed_by is None else "removed"

    def own_origin(self, partition) -> int:
        """The origin this run writes a key of `partition` at."""
        return self.run | partition if self.per_partition else self.origin

    def is_own(self, origin) -> bool:
        """Whether `origin` is one of this run's (earlier runs' origins are like any peer's)."""
        return origin & self._run_mask == self.run

    def owns(self, partition) -> bool:
        """Whether this node is an owner of the partition (with ALL: of every partition)."""
        return partition in self.placement.owned_by(self.node_id)

    @property
    def holds_everything(self) -> bool:
        """Whether this node owns every partition: scans, watches and backups need it."""
        return not self.placement.partitioned

    @property
    def replicated(self) -> bool:
        """Whether this node has (or had) peers: a node started alone stays alone."""
        return len(self.membership.records) > 1

    def set_membership(self, membership):
        """Adopt a new membership (a change made here, or one merged from a peer): it is written
        with this iteration's batch, so before anything that follows from it is sent."""
        self._staging().put_cf("meta", META_DMEMBERS, membership.encoded)
        old, self.membership = self.membership, membership
        if set(old.members) != set(membership.members) and membership.members:
            before = self.placement
            self.placement = Placement(membership.members, self.replicas)
            if self.per_partition:
                self._moved_partitions(before.owned_by(self.node_id), self.placement.owned_by(self.node_id))
        if self.per_partition:
            self._placed_by_change(membership)
        gone = sorted(set(old.members) - set(membership.members))
        came = sorted(set(membership.members) - set(old.members))
        if came or gone:
            log.info("membership: added %s, removed %s; members %s", came, gone, sorted(membership.members))
        if membership.removed_by is not None and old.removed_by is None:
            log.warning("node %d was removed from the cluster by node %d: it serves no requests and sends nothing; "
                        "to join again, start it with an empty data dir and --join", self.node_id,
                        membership.removed_by)
        if self.on_membership is not None:
            self.on_membership(old, membership)

    def _recover_sessions(self):
        """A client that retries a write after this node restarted must get the first outcome, not
        a second version: the (client, request id) of this node's earlier runs' retained entries
        are recorded again (as leader mode does from its log)."""
        now = time.monotonic()
        for origin in self.applied:
            if origin_node(origin) != self.node_id or self.is_own(origin):
                continue
            for _key, raw in self.storage.iter_cf("log", log_key(origin, 0), log_key(origin + 1, 0)):
                entry = decode_dyn_entry(raw)
                if entry.client_id:
                    self.sessions.record(entry.client_id, entry.request_id, ((entry.origin, entry.seq),), now)

    # ------------------------------------------------------------ state of keys

    def load(self, key) -> KeyState:
        state = self._dirty.get(key)
        if state is not None:
            return state
        raw = self.storage.get_cf("data", key)
        if raw is None:
            return EMPTY
        self._raw[key] = raw          # _store needs the old bytes for the digest: not encoded again
        return _decode_state(raw)

    def _store(self, key, old, new, raw=None):
        """Stage `new` as key's state (EMPTY: remove the key), keeping digest and counters. `raw`:
        new's encoding, when the caller has it already."""
        batch = self._staging()
        if self._lww and len(new.siblings) > 1:
            new, raw = KeyState(new.ctx, (winner(new),)), None
        old_raw = None
        if old.siblings:
            old_raw = self._raw.get(key) or encode_key_state(old.ctx, old.siblings)
        bucket = bucket_of(key)
        if new.siblings:
            raw = raw or encode_key_state(new.ctx, new.siblings)
            self._raw[key] = raw
            batch.put_cf("data", key, raw)
            new_hash = _state_hash(key, raw)
            batch.put_cf("meta", _hash_key(bucket, key), _U64.pack(new_hash))
        else:
            new_hash = 0
            self._raw.pop(key, None)
            batch.delete_cf("data", key)
            batch.delete_cf("meta", _hash_key(bucket, key))
        change = _state_hash(key, old_raw) ^ new_hash
        self.digest ^= change
        self.buckets[bucket] ^= change
        self.conflicts += (len(new.siblings) > 1) - (len(old.siblings) > 1)
        was_tomb = bool(old.siblings) and is_tombstone_only(old)
        is_tomb = bool(new.siblings) and is_tombstone_only(new)
        self.live[bucket] += (bool(new.siblings) and not is_tomb) - (bool(old.siblings) and not was_tomb)
        if is_tomb != was_tomb:
            self.tombstones += is_tomb - was_tomb
            if is_tomb:
                batch.put_cf("meta", META_TOMB + key, b"")
            else:
                batch.delete_cf("meta", META_TOMB + key)
        self._dirty[key] = new

    def _staging(self):
        if self._batch is None:
            self._batch = self.storage.batch()
        return self._batch

    def staging(self):
        """This iteration's batch, for what the node's other parts stage with its writes (hints.py)."""
        return self._staging()

    def _set_applied(self, origin, seq):
        """The flush writes the applied seq once per origin per batch (not once per entry)."""
        self._staging()
        self.applied[origin] = seq
        self._moved.add(origin)
        if origin not in self.first:
            if self.per_partition:
                self._by_partition.setdefault(origin_partition(origin), set()).add(origin)
            self.first[origin] = seq
            self._batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(seq))

    @property
    def pending_batch(self) -> int:
        """What a reply that depends on this iteration's writes waits for: the number the open batch
        will have once flushed; 0 (nothing) when no batch is open."""
        return 0 if self._batch is None else self.durable_batches + 1

    # ------------------------------------------------------------ writes

    def write(self, request, ops):
        """Apply a client's write at this run's origins: ops are (key, value or None, context or
        None: the key's state here). One entry per origin: with replicas set, one per partition the
        keys fall in (docs/PARTITIONING.md), so a put_many is atomic on this node but reaches each
        partition's owners as its own entry. Every new state is computed and checked before any is
        staged, so a refused write changes nothing. Returns the new entries' dots, (origin, seq)."""
        hlc = self.hlc.peek(int(time.time() * 1000))
        groups = {}
        for op in ops:
            groups.setdefault(self.own_origin(bucket_of(op[0]) if self.per_partition else 0), []).append(op)
        staged, entries = [], []
        for origin, group in groups.items():
            seq = self.applied.get(origin, 0) + 1
            logged = []
            for key, value, ctx in group:
                state = self.load(key)
                write_ctx = state.ctx if ctx is None else self._cap(ctx)
                new = apply_write(state, Sibling(origin, seq, hlc, value), write_ctx)
                if new is None:   # only a context naming this run's future writes could do this; _cap prevents it
                    raise errors.BadArgument("the context names a write of this node that it has not made")
                encoded = encode_key_state(new.ctx, new.siblings)
                if len(encoded) > self.state_limit:
                    raise errors.ValueTooLarge(
                        f"key {key[:40]!r} would hold {len(encoded)} bytes of versions (limit {self.state_limit}): "
                        f"resolve its siblings first (get_versions, then put with that context)")
                staged.append((key, state, new, encoded))
                logged.append((key, protocol.vector_pairs(write_ctx), value))
            raw = encode_dyn_entry(DynEntry(origin, seq, hlc, request.client_id, request.request_id, tuple(logged)))
            if len(raw) > self.entry_limit:
                raise errors.RequestTooLarge(f"the write's log entry of {len(raw)} bytes would exceed what peers "
                                             f"accept ({self.entry_limit}); write fewer items at once")
            entries.append((origin, seq, raw))
        self.hlc.observe(hlc)
        for key, state, new, encoded in staged:
            self._store(key, state, new, encoded)
        for origin, seq, raw in entries:
            self._staging().put_cf("log", log_key(origin, seq), raw)
            self._set_applied(origin, seq)
            self._staged_own.append((origin, raw))
        self.made += len(entries)
        dots = tuple((origin, seq) for origin, seq, _raw in entries)
        self.sessions.record(request.client_id, request.request_id, dots, time.monotonic())
        return dots

    def _cap(self, ctx):
        """A client's context, each pair capped at what this node has applied of that origin: it
        may only supersede writes that exist here (a larger claim, from a bad or forged context,
        would hide other nodes' writes, or this node's own future ones). Capping only keeps more
        siblings, never fewer."""
        return {o: min(s, self.applied.get(o, 0)) for o, s in ctx.items() if self.applied.get(o, 0)}

    def apply_remote(self, origin, raws):
        """Apply another origin's entries, in seq order from the first one not applied yet. Returns
        (entries applied, True when one was missing: a gap to fetch)."""
        if self.is_own(origin):
            return 0, False
        entries = [decode_dyn_entry(raw) for raw in raws]
        for entry in entries:     # all checked before any is applied: a refused batch changes nothing
            if entry.origin != origin:
                raise errors.MalformedMessage(f"entry of origin {entry.origin} in a batch of origin {origin}")
            if self.per_partition and any(bucket_of(key) != origin_partition(origin) for key, _c, _v in entry.ops):
                raise errors.MalformedMessage(f"an entry of origin {origin_name(origin)} (partition "
                                              f"{origin_partition(origin)}) writes a key of another partition")
            self.check_remote(entry.hlc, (protocol.vector_from_pairs(ctx) for _k, ctx, _v in entry.ops))
        done = 0
        for raw, entry in zip(raws, entries):
            have = self.applied.get(origin, 0)
            if entry.seq <= have:
                continue
            if entry.seq != have + 1:
                return done, True
            for key, ctx_pairs, value in entry.ops:
                state = self.load(key)
                new = apply_write(state, Sibling(origin, entry.seq, entry.hlc, value),
                                  protocol.vector_from_pairs(ctx_pairs))
                if new is not None:
                    self._store(key, state, new)
            self._staging().put_cf("log", log_key(origin, entry.seq), raw)
            self._set_applied(origin, entry.seq)
            self.hlc.observe(entry.hlc)
            if self.per_partition and entry.client_id:
                # A write's retry may reach another owner than the first try (forwarding picks the
                # first owner heard): the owners that hold the first try answer with its outcome.
                self.sessions.record(entry.client_id, entry.request_id, ((origin, entry.seq),), time.monotonic())
            done += 1
        return done, False

    def take_published(self):
        """What flushes since the last call made durable: this run's new entries, (origin, entry)
        (to publish), the other origins whose applied seq moved (to acknowledge), and every origin
        whose applied seq moved (for the peers' views, Replication)."""
        out, self._published = self._published, []
        moved, self._announce = self._announce, set()
        synced, self._synced = self._synced, set()
        return out, moved, synced

    def flush(self):
        """Write the open batch (fsync per setting). Raises StorageError on failure: the node stops."""
        batch = self._batch
        if batch is None:
            return
        try:
            batch.put_cf("meta", META_HLC, _U64.pack(self.hlc.last))
            for origin in self._moved:
                batch.put_cf("meta", META_APPLIED + _U64.pack(origin), _U64.pack(self.applied[origin]))
            self.storage.commit(batch)
        except errors.StorageError:
            raise
        except Exception as exc:
            raise errors.StorageError(f"commit failed: {type(exc).__name__}: {exc}") from exc
        self._batch = None
        self._dirty.clear()
        self._raw.clear()
        durable = self.durable_applied
        for origin in self._moved:
            durable[origin] = self.applied[origin]
            if not self.is_own(origin):
                self._announce.add(origin)
        self._synced |= self._moved
        self._moved.clear()
        self.durable_batches += 1
        self.durable_digest = self.digest
        self._published.extend(self._staged_own)
        self._staged_own = []

    # ------------------------------------------------------------ serving peers

    def read_entries(self, origin, from_seq):
        """Durable entries of `origin` from from_seq on (at most a page), and the lowest seq kept."""
        first = self.first.get(origin, 1)
        if from_seq < first:
            return [], first     # trimmed: a range starting later would leave the asker a hole
        out, size = [], 0
        end = log_key(origin, self.durable_applied.get(origin, 0) + 1)
        for _key, raw in self.storage.iter_cf("log", log_key(origin, max(from_seq, first)), end):
            if len(out) >= FETCH_PAGE.items or (out and size + len(raw) > FETCH_PAGE.bytes):
                break
            out.append(raw)
            size += len(raw)
        return out, first

    def make_room(self):
        """Short of disk (space.py): nothing to do now; the next collect_garbage keeps only the
        log entries some member has not applied (space_alarm)."""

    def collect_garbage(self, vector):
        """Drop tombstone-only keys whose writes `vector` covers, and log entries every node has
        applied. `vector` (Replication.gc_vector) is covered by every node's applied vector, and
        every node had applied every write made before it became so: no write concurrent with a
        collected tombstone can arrive afterwards. Looks at up to GC_MAX_KEYS tombstones per call,
        resuming where the last call stopped. Returns keys dropped."""
        dropped = 0
        looked = 0
        start = META_TOMB + self._gc_cursor
        self._gc_cursor = b""
        for tomb_key, _ in self.storage.iter_cf("meta", start, META_TOMB_END):
            key = tomb_key[len(META_TOMB):]
            looked += 1
            if looked > GC_MAX_KEYS:
                self._gc_cursor = key      # the next call resumes here
                break
            state = self.load(key)
            if state.siblings and is_tombstone_only(state) and stable(state, vector):
                self._store(key, state, EMPTY)
                dropped += 1
        retention = 0 if self.space_alarm else self.config.log_retention
        for origin, first in list(self.first.items()):
            keep_from = min(vector.get(origin, 0), self.applied.get(origin, 0) - retention) + 1
            if keep_from > first:
                batch = self._staging()
                batch.delete_range_cf("log", log_key(origin, first), log_key(origin, keep_from))
                batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(keep_from))
                self.first[origin] = keep_from
        return dropped

    def housekeeping(self, now):
        self.sessions.expire(now)

    def batch_of(self, key) -> int:
        """The batch a read of `key` waits for: the open one when this iteration wrote the key, else 0."""
        return self.pending_batch if key in self._dirty else 0


def load_replicas(storage, config) -> int:
    """The copies of each key the data dir's cluster keeps (docs/PARTITIONING.md), recorded at the
    first start: a node started with another value refuses to start and names the recorded one. A
    data dir from before the setting holds every key (ALL)."""
    raw = storage.get_cf("meta", META_REPLICAS)
    if raw is None:
        fresh = storage.get_cf("meta", META_HLC) is None    # no dynamo write or entry was ever applied here
        recorded = config.replicas if fresh else ALL
        batch = storage.batch()
        batch.put_cf("meta", META_REPLICAS, _U64.pack(recorded))
        storage.commit(batch)
    else:
        recorded = _U64.unpack(raw)[0]
    if recorded != config.replicas:
        raise errors.DataDirError(
            f"this data dir belongs to a cluster created with replicas = {_replicas_name(recorded)}; the value is "
            f"fixed when the cluster is created, so start the node with --replicas {recorded} (this start asked "
            f"for {_replicas_name(config.replicas)})")
    return recorded


def _replicas_name(replicas) -> str:
    return "0 (every member holds every key)" if replicas == ALL else str(replicas)


def load_membership(storage, config) -> DynamoMembership:
    """The membership the data dir records, else the flags' (docs/MEMBERSHIP.md, "Dynamo mode"). A
    node whose flags differ from the record says so once and follows the record."""
    flags = DynamoMembership.from_config(config)
    raw = storage.get_cf("meta", META_DMEMBERS)
    if raw is None:
        return flags
    recorded = DynamoMembership.decode(config.node_id, raw)
    for line in recorded.differs_from(flags) if flags.peers else ():     # no --peers (--join): nothing to compare
        log.warning("membership: %s (the record wins; it changes by add-member and remove-member)", line)
    if recorded.removed_by is not None:
        log.warning("node %d was removed from the cluster by node %d (its data dir records it): it serves no "
                    "requests and sends nothing; to join again, start it with an empty data dir and --join",
                    config.node_id, recorded.removed_by)
    return recorded
