"""Dynamo mode inside a node: every node accepts writes; replicas exchange their origin logs and
converge (docs/DYNAMO.md). No sockets: the node loop gives this module requests and peer messages
and sends what it returns or asks for.

- `DynamoEngine` keeps this node's data and logs: each local write gets the next seq of this node's
  origin, its versions are computed (versions.py), and entry, key states and bookkeeping go to
  RocksDB in the loop iteration's one batch (one fsync) before any reply leaves. Entries from other
  origins are applied in each origin's seq order, and every entry applied is kept in the log, so
  any node can serve any origin's entries.
- `Replication` talks to the peers: it sends DSTATUS (applied vector and data digest) to every peer
  each heartbeat, fetches what a peer has and this node lacks, serves such fetches, and garbage-
  collects tombstones and log entries once every configured node has applied them.

Origins: a node takes a new origin id at every start, (node id << 32) | 32 random bits, so a seq
is never reused, even by a node that lost or restored its data dir (docs/DYNAMO.md).
"""
import hashlib
import logging
import os
import struct
import time
from typing import NamedTuple

from . import errors, limits, protocol
from .faults import NONE
from .protocol import DynEntry, decode_dyn_entry, decode_key_state, encode_dyn_entry, encode_key_state
from .sessions import STALE, Sessions
from .versions import (EMPTY, HLC_LOGICAL_BITS, HybridClock, KeyState, Sibling, apply_write, is_tombstone_only,
                       merge, stable, winner)

FETCH_PAGE = limits.FETCH["dynamo"]
FETCH_TIMEOUT = 1.0               # seconds before a fetch without reply is asked again
REPAIR_AFTER = 5                  # equal applied vectors, different digests for this many reports: repair
REPAIR_TIMEOUT = 2.0              # seconds without a reply before a repair is abandoned (retried later)
REPAIR_IN_FLIGHT = 4              # bucket pages asked for at once
GC_MAX_KEYS = 10_000              # tombstones looked at per housekeeping pass
GC_CHECKPOINTS = 60               # housekeeping passes remembered for the collection vector
MAX_CLOCK_AHEAD = 600.0          # seconds a peer's clock (an entry's or sibling's HLC) may be ahead of ours

# meta keys of dynamo mode (docs/STORAGE.md)
META_APPLIED = b"d:applied:"      # + origin (u64): highest seq of that origin applied here
META_FIRST = b"d:first:"          # + origin (u64): lowest seq of that origin still in the log
META_HLC = b"d:hlc"               # the hybrid clock's last timestamp
META_TOMB = b"d:tomb:"            # + key: the key holds tombstones only (waits for garbage collection)
META_TOMB_END = b"d:tomb;"        # just above every META_TOMB key
META_HASH = b"d:h:"               # + bucket (u16) + key: the key's state hash (anti-entropy index)

# Anti-entropy (docs/DYNAMO.md): keys fall in BUCKETS buckets by hash, GROUPS groups of buckets.
GROUP_BITS = 6
BUCKETS = 1 << (2 * GROUP_BITS)   # 4096
GROUPS = 1 << GROUP_BITS          # 64, each of 64 buckets

_U64 = struct.Struct(">Q")
_LOG_KEY = struct.Struct(">QQ")
log = logging.getLogger(__name__)


def origin_node(origin) -> int:
    return origin >> 32


def origin_name(origin) -> str:
    """How status shows an origin: node id and incarnation."""
    return f"{origin >> 32}:{origin & 0xFFFFFFFF:08x}"


def log_key(origin, seq) -> bytes:
    return _LOG_KEY.pack(origin, seq)


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


class DynamoEngine:
    """This node's dynamo-mode data, logs and client commands."""

    role = "peer"

    def __init__(self, storage, config, version, faults=NONE):
        self.storage = storage
        self.config = config
        self.version = version
        self.node_id = config.node_id
        self.started = time.monotonic()
        self.limits = protocol.Limits(config.max_key_size, config.max_value_size,
                                      config.max_batch_items, config.max_request_size)
        self.replicated = bool(config.peers)
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
        while True:   # a new origin for this run, never one an earlier run used
            self.origin = (self.node_id << 32) | int.from_bytes(os.urandom(4), "big")
            if self.origin not in self.applied and self.origin & 0xFFFFFFFF:
                break
        self.applied[self.origin] = 0
        self.durable_applied = dict(self.applied)   # what the last flush made durable (reported to peers)
        raw_hlc = storage.get_cf("meta", META_HLC)
        self.hlc = HybridClock(_U64.unpack(raw_hlc)[0] if raw_hlc else 0)
        # commit_seq counts flushed batches: a reply that depends on the open batch waits for its
        # number (replies.py, modes.DynamoMode), so nothing is acknowledged before it is durable.
        self.commit_seq = 0
        self._batch = None
        self._dirty = {}           # key -> KeyState written in the open batch (EMPTY: removed)
        self._raw = {}             # key -> the encoding of its current state, as loaded or staged
        self._moved = set()        # origins whose applied seq this batch moves
        self._announce = set()     # other origins whose durable applied seq moved, not yet acknowledged
        self._published = []       # this origin's entries flushed but not yet published
        self._staged_own = []
        self.digest = 0            # XOR of every key's state hash = XOR of the bucket hashes
        self.buckets = [0] * BUCKETS
        self.conflicts = 0         # keys with more than one sibling
        self.tombstones = 0        # keys holding tombstones only
        for key, raw in storage.iter_cf("data"):
            h = _state_hash(key, raw)
            self.digest ^= h
            self.buckets[bucket_of(key)] ^= h
            state = _decode_state(raw)
            self.conflicts += len(state.siblings) > 1
            self.tombstones += is_tombstone_only(state)
        self.durable_digest = self.digest
        self._gc_cursor = b""
        self._recover_sessions()
        self._lww = faults.dynamo_lww      # test-only: a deliberately broken build (faults.py)
        self.leader_address = None
        self.last_write = None
        self._handlers = {
            "PING": self._ping, "GET": self._get, "GET_VERSIONS": self._get_versions, "PUT": self._put,
            "PUT_CTX": self._put_ctx, "DEL": self._delete, "PUT_MANY": self._put_many, "CAS": self._cas,
            "SCAN": self._scan, "STATUS": self._status, "OUTCOME": self._outcome,
        }
        log.info("dynamo mode: origin %s for this run; %d origins known, %d keys with siblings, %d tombstones",
                 origin_name(self.origin), len(self.applied) - 1, self.conflicts, self.tombstones)

    def _recover_sessions(self):
        """A client that retries a write after this node restarted must get the first outcome, not
        a second version: the (client, request id) of this node's earlier runs' retained entries
        are recorded again (as leader mode does from its log)."""
        now = time.monotonic()
        for origin in self.applied:
            if origin_node(origin) != self.node_id or origin == self.origin:
                continue
            for _key, raw in self.storage.iter_cf("log", log_key(origin, 0), log_key(origin + 1, 0)):
                entry = decode_dyn_entry(raw)
                if entry.client_id:
                    self.sessions.record(entry.client_id, entry.request_id, (entry.origin, entry.seq), now)

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

    def _set_applied(self, origin, seq):
        """The flush writes the applied seq once per origin per batch (not once per entry)."""
        self._staging()
        self.applied[origin] = seq
        self._moved.add(origin)
        if origin not in self.first:
            self.first[origin] = seq
            self._batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(seq))

    @property
    def pending_batch(self) -> int:
        """What a reply that depends on this iteration's writes waits for: the number the open batch
        will have once flushed; 0 (nothing) when no batch is open."""
        return 0 if self._batch is None else self.commit_seq + 1

    # ------------------------------------------------------------ writes

    def write(self, request, ops):
        """Apply a client's write at this origin: ops are (key, value or None, context or None: the
        key's state here). Every new state is computed and checked before any is staged, so a
        refused write changes nothing. Returns the new entry's seq."""
        seq = self.applied[self.origin] + 1
        hlc = self.hlc.peek(int(time.time() * 1000))
        logged, staged = [], []
        for key, value, ctx in ops:
            state = self.load(key)
            write_ctx = state.ctx if ctx is None else self._cap(ctx)
            new = apply_write(state, Sibling(self.origin, seq, hlc, value), write_ctx)
            if new is None:   # only a context naming this run's future writes could do this; _cap prevents it
                raise errors.BadArgument("the context names a write of this node that it has not made")
            encoded = encode_key_state(new.ctx, new.siblings)
            if len(encoded) > self.state_limit:
                raise errors.ValueTooLarge(
                    f"key {key[:40]!r} would hold {len(encoded)} bytes of versions (limit {self.state_limit}): "
                    f"resolve its siblings first (get_versions, then put with that context)")
            staged.append((key, state, new, encoded))
            logged.append((key, protocol.vector_pairs(write_ctx), value))
        raw = encode_dyn_entry(DynEntry(self.origin, seq, hlc, request.client_id, request.request_id,
                                        tuple(logged)))
        if len(raw) > self.entry_limit:
            raise errors.RequestTooLarge(f"the write's log entry of {len(raw)} bytes would exceed what peers "
                                         f"accept ({self.entry_limit}); write fewer items at once")
        self.hlc.observe(hlc)
        for key, state, new, encoded in staged:
            self._store(key, state, new, encoded)
        self._staging().put_cf("log", log_key(self.origin, seq), raw)
        self._set_applied(self.origin, seq)
        self._staged_own.append(raw)
        self.sessions.record(request.client_id, request.request_id, (self.origin, seq), time.monotonic())
        self.last_write = seq
        return seq

    def _cap(self, ctx):
        """A client's context, each pair capped at what this node has applied of that origin: it
        may only supersede writes that exist here (a larger claim, from a bad or forged context,
        would hide other nodes' writes, or this node's own future ones). Capping only keeps more
        siblings, never fewer."""
        return {o: min(s, self.applied.get(o, 0)) for o, s in ctx.items() if self.applied.get(o, 0)}

    def apply_remote(self, origin, raws):
        """Apply another origin's entries, in seq order from the first one not applied yet. Returns
        (entries applied, True when one was missing: a gap to fetch)."""
        if origin == self.origin:
            return 0, False
        entries = [decode_dyn_entry(raw) for raw in raws]
        for entry in entries:     # all checked before any is applied: a refused batch changes nothing
            if entry.origin != origin:
                raise errors.MalformedMessage(f"entry of origin {entry.origin} in a batch of origin {origin}")
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
            done += 1
        return done, False

    def take_published(self):
        """What flushes since the last call made durable: this origin's new entries (to publish)
        and the other origins whose applied seq moved (to acknowledge)."""
        out, self._published = self._published, []
        moved, self._announce = self._announce, set()
        return out, moved

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
        self._announce |= self._moved
        self._announce.discard(self.origin)
        self._moved.clear()
        self.commit_seq += 1
        self.durable_applied = dict(self.applied)
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
        retention = self.config.log_retention
        for origin, first in list(self.first.items()):
            keep_from = min(vector.get(origin, 0), self.applied.get(origin, 0) - retention) + 1
            if keep_from > first:
                batch = self._staging()
                batch.delete_range_cf("log", log_key(origin, first), log_key(origin, keep_from))
                batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(keep_from))
                self.first[origin] = keep_from
        return dropped

    # ------------------------------------------------------------ anti-entropy (docs/DYNAMO.md)

    def tree_hashes(self, group=None):
        """The GROUPS group hashes, or the hashes of the buckets of one group."""
        if group is None:
            out = []
            for g in range(GROUPS):
                h = 0
                for b in self.buckets[g * GROUPS:(g + 1) * GROUPS]:
                    h ^= b
                out.append(h)
            return out
        return self.buckets[group * GROUPS:(group + 1) * GROUPS]

    def _bucket_keys(self, bucket, cursor, end=None):
        """Durable keys of a bucket from `cursor` (inclusive) up to `end` (exclusive), in order."""
        prefix = META_HASH + struct.pack(">H", bucket)
        upper = prefix + end if end is not None else META_HASH + struct.pack(">H", bucket + 1)
        for index_key, _ in self.storage.iter_cf("meta", prefix + (cursor or b""), upper):
            yield index_key[len(prefix):]

    def range_items(self, bucket, cursor):
        """A page of a bucket's durable key states: ([[key, state], ...], next cursor or None)."""
        items, size = [], 0
        for key in self._bucket_keys(bucket, cursor):
            if len(items) >= limits.RANGE.items or size >= limits.RANGE.bytes:
                return items, key
            raw = self.storage.get_cf("data", key)
            if raw is not None:
                items.append([key, raw])
                size += len(key) + len(raw)
        return items, None

    def merge_range(self, bucket, cursor, next_cursor, items, remote_applied):
        """Join a peer's page of a bucket into our data: each of its key states, and for our keys in
        the same span that it lacks, what its applied vector says it has seen. Returns keys changed."""
        self.check_remote(0, (remote_applied,))
        states = []
        for key, raw in items:   # all checked before any is joined
            if bucket_of(key) != bucket:
                raise errors.MalformedMessage(f"key outside bucket {bucket} in a range reply")
            states.append((key, self.remote_state(raw)))
        changed = 0
        remote_keys = set()
        for key, state in states:
            remote_keys.add(key)
            local = self.load(key)
            merged = merge(local, state, self.applied, remote_applied)
            if merged != local:
                self._store(key, local, merged)
                changed += 1
        for key in list(self._bucket_keys(bucket, cursor, next_cursor)):
            if key in remote_keys:
                continue
            local = self.load(key)
            merged = merge(local, EMPTY, self.applied, remote_applied)
            if merged != local:
                self._store(key, local, merged)
                changed += 1
        return changed

    def adopt_applied(self, vector):
        """After a full resync from a peer whose applied vector was `vector` when it began: our data
        now holds every entry up to it, so our applied vector moves up; the log entries we hold
        below the new seq are dropped (a fetch must never be served a range with a hole)."""
        for origin, seq in vector.items():
            if origin == self.origin or seq <= self.applied.get(origin, 0):
                continue
            batch = self._staging()
            batch.delete_range_cf("log", log_key(origin, 0), log_key(origin, seq + 1))
            self.applied[origin] = seq
            self._moved.add(origin)
            self.first[origin] = seq + 1
            batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(seq + 1))

    def housekeeping(self, now):
        self.sessions.expire(now)

    # ------------------------------------------------------------ client commands (docs/PROTOCOL.md)

    def handle(self, request):
        """One decoded request -> (reply body, batch number it waits for; 0: none). After a write
        that made a new version, `last_write` is its seq (else None)."""
        self.last_write = None
        return self._handlers[request.command](request)

    def read_reply(self, req, state):
        """The reply to GET or GET_VERSIONS from a key state (a quorum read's merge)."""
        if req.command == "GET":
            best = winner(state)
            return protocol.encode_ok(req.request_id, None if best is None else best.value, len(state.siblings) > 1)
        siblings = [[s.value, s.node, s.seq, s.hlc] for s in state.siblings]
        return protocol.encode_ok(req.request_id, siblings, protocol.encode_context(state.ctx))

    def durable_state(self, key):
        """The key's state as stored (bytes or None), for a peer's quorum read."""
        return self.storage.get_cf("data", key)

    def check_remote(self, hlc, vectors=()):
        """Refuse what came from a peer that this node cannot justify (docs/SECURITY.md): a clock more
        than MAX_CLOCK_AHEAD ahead of ours (adopted, it would win every key and overflow our clock),
        or a context or applied vector claiming writes of this node's own origin beyond those it made
        (it would make this node's next writes look superseded)."""
        if hlc > (int((time.time() + MAX_CLOCK_AHEAD) * 1000) << HLC_LOGICAL_BITS):
            raise errors.MalformedMessage(f"a clock of {hlc >> HLC_LOGICAL_BITS} ms is more than "
                                          f"{MAX_CLOCK_AHEAD:.0f} s ahead of this node's")
        own = self.applied[self.origin]
        for vector in vectors:
            if vector.get(self.origin, 0) > own:
                raise errors.MalformedMessage(f"a context claims write {vector[self.origin]} of this node's "
                                              f"origin, which has made {own}")

    def remote_state(self, raw) -> KeyState:
        """A key state from a peer, decoded and checked (check_remote) for each sibling."""
        state = _decode_state(raw)
        own = self.applied[self.origin]
        for sib in state.siblings:
            self.check_remote(sib.hlc)
            if sib.node == self.origin and sib.seq > own:
                raise errors.MalformedMessage(f"a sibling claims write {sib.seq} of this node's origin, "
                                              f"which has made {own}")
        self.check_remote(0, (state.ctx,))
        return state

    def join_state(self, key, remote, remote_applied=None):
        """Join a key state from a peer into ours (read repair). Returns our new state."""
        local = self.load(key)
        merged = merge(local, remote, self.applied, remote_applied)
        if merged != local:
            self._store(key, local, merged)
        return merged

    def _wait_for(self, key):
        return self.pending_batch if key in self._dirty else 0

    def _ping(self, req):
        return protocol.encode_ok(req.request_id, self.node_id), 0

    def _get(self, req):
        key = req.args[0]
        return self.read_reply(req, self.load(key)), self._wait_for(key)

    _get_versions = _get

    def _check_write(self, req):
        """A retried write already applied here: its reply. None: apply it."""
        dot = self.sessions.lookup(req.client_id, req.request_id, req.open_from, time.monotonic())
        if dot is None:
            return None
        if dot is STALE:
            raise errors.RequestFenced(f"request {req.request_id} is below an open_from this client already "
                                       f"sent: a late copy, not applied")
        origin, seq = dot
        if origin == self.origin:
            self.last_write = seq      # a quorum write's retry waits for the quorum too
        return protocol.encode_ok(req.request_id, True, seq, origin), self.pending_batch

    def _written(self, req, ops, result=True):
        """A write's reply: [applied, seq, origin]: (origin, seq) is the new version's dot."""
        seq = self.write(req, ops)
        return protocol.encode_ok(req.request_id, result, seq, self.origin), self.pending_batch

    def _put(self, req):
        done = self._check_write(req)
        if done:
            return done
        key, value = req.args
        return self._written(req, ((key, value, None),))

    def _put_ctx(self, req):
        done = self._check_write(req)
        if done:
            return done
        key, value, raw_ctx = req.args
        ctx = protocol.decode_context(raw_ctx)
        if ctx.get(self.origin, 0) > self.applied[self.origin]:
            # No read could have returned it: this origin is this run's, and has made fewer writes.
            raise errors.BadArgument(f"the context names write {ctx[self.origin]} of this node's origin, which "
                                     f"has made {self.applied[self.origin]}: it is not one get_versions returned")
        return self._written(req, ((key, value, ctx),))

    def _delete(self, req):
        done = self._check_write(req)
        if done:
            return done
        key = req.args[0]
        state = self.load(key)
        existed = any(s.value is not None for s in state.siblings)
        if not existed:
            return protocol.encode_ok(req.request_id, False, 0, 0), self._wait_for(key)
        return self._written(req, ((key, None, None),), result=True)

    def _put_many(self, req):
        done = self._check_write(req)
        if done:
            return done
        items = dict(req.args[0])     # a key given twice: the last value, as a sequence of puts would leave
        return self._written(req, tuple((k, v, None) for k, v in items.items()))

    def _cas(self, req):
        raise errors.UnsupportedOperation("cas is not offered in dynamo mode: another node may accept a write to "
                                          "the same key at the same moment; use get_versions and put with "
                                          "its context instead")

    def _scan(self, req):
        start, end, prefix, limit, _stale = req.args
        self.flush()    # a scan reads RocksDB: this iteration's writes first
        page = limits.SCAN.items if limit is None else min(limit, limits.SCAN.items)
        items, next_key = self.storage.scan(start, end, prefix, page, limits.SCAN.bytes, _winning_value)
        if limit is not None and len(items) >= limit:
            next_key = None
        return protocol.encode_ok(req.request_id, [list(item) for item in items], next_key), 0

    def _outcome(self, req):
        dot, _certain = self.sessions.peek(req.client_id, req.args[0], time.monotonic())
        if dot is None:
            return protocol.encode_ok(req.request_id, "unknown", 0), 0
        return protocol.encode_ok(req.request_id, "committed", dot[1]), self.pending_batch

    def _status(self, req):
        return protocol.encode_ok(req.request_id, self.status()), 0

    def status(self) -> dict:
        cfg = self.config
        return {
            "node_id": cfg.node_id, "mode": "dynamo", "role": "peer", "term": 0, "primary_id": 0,
            "last_seq": self.applied[self.origin], "commit_seq": self.applied[self.origin],
            "origin": origin_name(self.origin),
            "applied": {origin_name(o): s for o, s in sorted(self.durable_applied.items()) if s},
            "keys_estimate": self.storage.approximate_keys(), "conflicts": self.conflicts,
            "tombstones": self.tombstones, "digest": f"{self.durable_digest:016x}",
            "address": cfg.address, "pub_address": f"{cfg.host}:{cfg.pub_port}", "peer_port": cfg.peer_port,
            "fsync": cfg.fsync,
            "uptime": round(time.monotonic() - self.started, 3), "version": self.version, "peers": [],
            **(self.extra_status() if self.extra_status else {}),
        }


class PeerReport:
    """What a peer last reported of itself (DSTATUS, DSTATUS_REPLY): applied vector, digest, counts.
    (Leader mode's counterpart, what a peer said in ROLE, is election.PeerView.)"""

    __slots__ = ("applied", "digest", "keys", "conflicts", "tombstones", "heard")

    def __init__(self):
        self.applied = {}
        self.digest = None
        self.keys = self.conflicts = self.tombstones = 0
        self.heard = None


class QuorumRead(NamedTuple):
    request: object
    envelope: list
    need: int
    replies: list      # (peer, KeyState, applied vector)
    deadline: float


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


class Replication:
    """Dynamo-mode peer traffic (docs/DYNAMO.md, "Replication")."""

    def __init__(self, node, engine, config, now):
        self.node = node                # io: publish, send_to, reply
        self.engine = engine
        self.config = config
        self.views = {p.node_id: PeerReport() for p in config.peers}
        self.addresses = {p.node_id: p.address for p in config.peers}
        self._fetching = {}             # origin -> (deadline, peer) of the fetch in flight
        self._unanswered = {}           # origin -> peers that left a fetch of it unanswered
        self._gaps = 0
        self._mismatch = {}             # peer -> consecutive reports with equal applied, other digest
        self._resync_from = {}          # peer -> {origin: its first seq}: it trimmed entries we lack
        self._repair_ids = 0
        self._checkpoints = []          # (stable vector, max vector) at recent housekeeping passes
        self.repair = None              # the Repair under way (one at a time)
        self.repairs = []               # summaries of the latest repairs, for status
        self._handlers = {"DSTATUS": self._on_status_query, "DFETCH": self._on_fetch, "DTREE": self._on_tree,
                          "DRANGE": self._on_range, "DACK": self._on_ack, "DREAD": self._on_read,
                          "DPUSH": self._on_push}
        self._message_handlers = {"DCHANGE": self._on_change, "DSTATUS_REPLY": self._on_status,
                                  "DENTRIES": self._on_entries, "DTREE_REPLY": self._on_tree_reply,
                                  "DRANGE_REPLY": self._on_range_reply, "DREAD_REPLY": self._on_read_reply}
        self._acked = {}                # peer -> highest seq of this run's origin it applied durably
        self._reads = {}                # read id -> QuorumRead
        self._read_ids = 0
        self.read_repairs = 0
        self._pushes = []               # read repairs, sent after the flush

    def close(self):
        pass

    def note_loop(self, now):
        pass

    # ------------------------------------------------------------ timers

    def tick(self, now):
        self.node.send_to_all(self._status_message("DSTATUS"))
        if self._reads:
            for read_id, pending in list(self._reads.items()):
                if now > pending.deadline:
                    del self._reads[read_id]
                    self.node.reply(pending.envelope, protocol.encode_error(
                        pending.request.request_id, "unavailable", f"read_quorum {pending.need} not reached: "
                        f"{1 + len(pending.replies)} nodes answered within {self.config.replication_timeout} s"))
        if self.repair is not None and now > self.repair.deadline:
            log.warning("anti-entropy with node %d abandoned: no reply for %.1f s", self.repair.peer, REPAIR_TIMEOUT)
            self.repair = None

    def housekeeping(self, now):
        vector = self.gc_vector()
        if vector is not None:
            dropped = self.engine.collect_garbage(vector)
            if dropped:
                log.debug("garbage-collected %d tombstones every node has applied", dropped)

    def gc_vector(self):
        """What garbage collection may go by: the stable vector S of an earlier housekeeping pass c
        (every node had applied every write it covers), chosen as the latest pass whose *maximum*
        vector M (elementwise maximum of every node's applied vector then) the current stable
        vector covers. A write concurrent with a tombstone that was stable at c was made by its
        origin before that origin applied the tombstone, so before c, so M_c covers it; now that
        every node has applied M_c, every node holds that write, and a key collected from here on
        cannot receive a write it did not see (on one node collected, on another a sibling)."""
        stable_now = self.stable_vector()
        if stable_now is None:
            return None
        most = dict(self.engine.durable_applied)
        for view in self.views.values():
            for o, seq in view.applied.items():
                if seq > most.get(o, 0):
                    most[o] = seq
        self._checkpoints = (self._checkpoints + [(stable_now, most)])[-GC_CHECKPOINTS:]
        for stable_c, most_c in reversed(self._checkpoints[:-1]):
            if all(stable_now.get(o, 0) >= seq for o, seq in most_c.items()):
                return stable_c
        return None

    def publish_new(self):
        """After a flush: publish this origin's new durable entries (PUB; fetches repair losses),
        tell each origin what this node now holds of its entries (DACK), send read repairs."""
        entries, moved = self.engine.take_published()
        if entries:
            self.node.publish(protocol.encode_peer("DCHANGE", self.engine.origin, entries))
        if self._pushes:
            for peer, body in self._pushes:
                self.node.send_to(peer, body)
            self._pushes = []
        for origin in moved:      # a lost DACK is made up for by the next DSTATUS
            node_id = origin_node(origin)
            if node_id in self.views:
                self.node.send_to(node_id, protocol.encode_peer(
                    "DACK", self.engine.node_id, origin, self.engine.durable_applied[origin]))

    # ------------------------------------------------------------ quorums

    def copies(self, seq) -> int:
        """How many nodes (this one included) hold entry `seq` of this run's origin durably, as the
        peers' DACKs and status reports said: what a write with w > 1 waits for (modes.DynamoMode)."""
        return 1 + sum(1 for s in self._acked.values() if s >= seq)

    @property
    def acked(self) -> tuple:
        """What the peers hold of this run's origin, as they said: it only grows."""
        return tuple(self._acked.values())

    def _on_ack(self, fields, envelope, now):
        node_id, origin, seq = fields
        if origin == self.engine.origin and node_id in self.views:
            self.engine.check_remote(0, ({origin: seq},))    # no peer holds writes this run never made
            self._note_acked(node_id, seq)

    def _note_acked(self, node_id, seq):
        if seq > self._acked.get(node_id, 0):
            self._acked[node_id] = seq

    def quorum_read(self, request, envelope, need, now):
        """Read a key from `need` nodes (this one and the first need - 1 peers to answer), join
        their states, repair the stale ones, reply with the joined state."""
        self._read_ids += 1
        self._reads[self._read_ids] = QuorumRead(request, envelope, need, [],
                                                  now + self.config.replication_timeout)
        self.node.send_to_all(protocol.encode_peer("DREAD", self.engine.node_id, self._read_ids, request.args[0]))

    def _on_read(self, fields, envelope, now):
        _node_id, read_id, key = fields
        self.node.reply_peer(envelope, protocol.encode_peer(
            "DREAD_REPLY", self.engine.node_id, read_id, self.engine.durable_state(key),
            protocol.vector_pairs(self.engine.durable_applied)))

    def _on_read_reply(self, fields, now):
        sender, read_id, raw, applied = fields
        pending = self._reads.get(read_id)
        if pending is None or sender not in self.views or any(r[0] == sender for r in pending.replies):
            return
        state = EMPTY if raw is None else self.engine.remote_state(raw)
        remote_applied = protocol.vector_from_pairs(applied)
        self.engine.check_remote(0, (remote_applied,))
        pending.replies.append((sender, state, remote_applied))
        if 1 + len(pending.replies) < pending.need:
            return
        del self._reads[read_id]
        key = pending.request.args[0]
        merged = self.engine.load(key)
        for _peer, remote, remote_applied in pending.replies:
            merged = self.engine.join_state(key, remote, remote_applied)
        raw_merged = encode_key_state(merged.ctx, merged.siblings) if merged.siblings else None
        for peer, remote, _applied in pending.replies:
            if remote != merged and raw_merged is not None and len(raw_merged) <= self.config.max_request_size - 4096:
                # sent after this iteration's flush, like the reply: never a state this node could lose
                self.read_repairs += 1
                self._pushes.append((peer, protocol.encode_peer("DPUSH", self.engine.node_id, key, raw_merged)))
        self.node.reply_after(pending.envelope, self.engine.read_reply(pending.request, merged),
                              self.engine.pending_batch, pending.request.request_id)

    def _on_push(self, fields, envelope, now):
        node_id, key, raw = fields
        if node_id in self.views:
            self.engine.join_state(key, self.engine.remote_state(raw))

    def stable_vector(self):
        """Elementwise minimum of every configured node's applied vector, or None while a peer has
        not reported since this node started (its applied vector is unknown)."""
        vector = dict(self.engine.durable_applied)
        for view in self.views.values():
            if view.heard is None:
                return None
            vector = {o: min(s, view.applied.get(o, 0)) for o, s in vector.items()}
        return vector

    # ------------------------------------------------------------ messages

    def _status_message(self, command):
        e = self.engine
        return protocol.encode_peer(command, e.node_id, protocol.vector_pairs(e.durable_applied), e.durable_digest,
                                    e.storage.approximate_keys(), e.conflicts, e.tombstones, e.config.address)

    def on_request(self, message, envelope, now):
        handler = self._handlers.get(message.command)
        if handler is None:
            log.debug("ignoring %s in dynamo mode", message.command)
            return
        handler(message.fields, envelope, now)

    def on_message(self, message, now):
        """A message from the SUB socket or a reply on a DEALER."""
        handler = self._message_handlers.get(message.command)
        if handler is not None:
            handler(message.fields, now)

    def _on_status_query(self, fields, envelope, now):
        self._on_status(fields, now)
        self.node.reply_peer(envelope, self._status_message("DSTATUS_REPLY"))

    def _on_status(self, fields, now):
        node_id, applied, digest, keys, conflicts, tombstones, _address = fields
        view = self.views.get(node_id)
        if view is None:
            return
        applied = protocol.vector_from_pairs(applied)
        self.engine.check_remote(0, (applied,))
        view.applied = applied
        view.digest, view.keys, view.conflicts, view.tombstones = digest, keys, conflicts, tombstones
        view.heard = now
        self._note_acked(node_id, view.applied.get(self.engine.origin, 0))
        mine = self.engine.applied
        behind = False
        for origin, seq in view.applied.items():
            if seq > mine.get(origin, 0) and origin != self.engine.origin:
                behind = True
                self._fetch(origin, node_id, now)
        # Divergence the logs cannot explain: same entries applied, different data (a node restored
        # from an old data dir, or an entry lost with a disk): repair, once it has lasted a while.
        same = not behind and all(view.applied.get(o, 0) >= s for o, s in self.engine.durable_applied.items() if s)
        if same and digest != self.engine.durable_digest:
            self._mismatch[node_id] = self._mismatch.get(node_id, 0) + 1
            if self._mismatch[node_id] >= REPAIR_AFTER and self.repair is None:
                self._mismatch[node_id] = 0
                self._start_repair(node_id, now)
        else:
            self._mismatch[node_id] = 0
        trimmed = self._resync_from.get(node_id)
        if trimmed:
            # still lacking entries the peer holds only as data: resync those origins from it
            needed = {o for o, first in trimmed.items() if mine.get(o, 0) < first - 1}
            if not needed:
                del self._resync_from[node_id]
            elif self.repair is None:
                del self._resync_from[node_id]
                self._start_repair(node_id, now, resync_origins=needed)

    def _fetch(self, origin, node_id, now):
        """Ask node_id for origin's entries we lack, unless a fetch is in flight. A peer that left a
        fetch unanswered is skipped while other peers have not been tried: the next status report
        to arrive would otherwise often come from the same peer (heartbeats keep their phase)."""
        pending = self._fetching.get(origin)
        if pending is not None:
            deadline, peer = pending
            if deadline > now:
                return
            del self._fetching[origin]
            self._unanswered.setdefault(origin, set()).add(peer)
            log.debug("fetch of %s from node %d unanswered for %.1f s", origin_name(origin), peer, FETCH_TIMEOUT)
        tried = self._unanswered.get(origin)
        if tried and node_id in tried:
            # Skip it only while another peer that holds more of the origin has not been tried: the
            # next report from that one fetches there. With none (often: only the origin's own node
            # holds the entries) ask this one again; skipping it would wait forever.
            mine = self.engine.applied.get(origin, 0)
            if any(peer not in tried and view.applied.get(origin, 0) > mine for peer, view in self.views.items()):
                return
            tried.clear()
        frm = self.engine.applied.get(origin, 0) + 1
        if self.node.send_to(node_id, protocol.encode_peer("DFETCH", self.engine.node_id, origin, frm)):
            self._fetching[origin] = (now + FETCH_TIMEOUT, node_id)

    def _on_fetch(self, fields, envelope, now):
        _node_id, origin, from_seq = fields
        entries, first = self.engine.read_entries(origin, from_seq)
        self.node.reply_peer(envelope, protocol.encode_peer("DENTRIES", self.engine.node_id, origin, from_seq,
                                                       entries, first))

    def _on_entries(self, fields, now):
        sender, origin, from_seq, entries, first = fields
        self._fetching.pop(origin, None)
        self._unanswered.pop(origin, None)
        if not entries:
            if from_seq < first and self.engine.applied.get(origin, 0) < first - 1 and \
                    origin not in self._resync_from.get(sender, {}):
                self._resync_from.setdefault(sender, {})[origin] = first
                log.warning("node %d no longer holds entries %d.. of origin %s (trimmed below %d, applied by "
                            "every node): resyncing from it by anti-entropy", sender, from_seq,
                            origin_name(origin), first)
            return
        self.engine.apply_remote(origin, entries)
        view = self.views.get(sender)
        if view is not None and view.applied.get(origin, 0) > self.engine.applied.get(origin, 0):
            self._fetch(origin, sender, now)   # more to catch up: the next page at once

    def _on_change(self, fields, now):
        origin, entries = fields
        _done, gap = self.engine.apply_remote(origin, entries)
        if gap:
            self._gaps += 1
            node_id = origin_node(origin)
            if node_id in self.views:
                self._fetch(origin, node_id, now)

    # ------------------------------------------------------------ anti-entropy

    def _start_repair(self, peer, now, resync_origins=None):
        self._repair_ids += 1
        self.repair = Repair(self._repair_ids, peer, now, resync_origins)
        log.info("anti-entropy with node %d: %s", peer, "full resync (it trimmed entries we lack)" if resync_origins
                 else "same entries applied, different data digests")
        if not self.node.send_to(peer, protocol.encode_peer("DTREE", self.engine.node_id, self.repair.id, None)):
            self.repair = None

    def _on_tree(self, fields, envelope, now):
        _node_id, repair_id, group = fields
        if group is not None and group >= GROUPS:
            return
        self.node.reply_peer(envelope, protocol.encode_peer(
            "DTREE_REPLY", self.engine.node_id, repair_id, group, self.engine.tree_hashes(group),
            protocol.vector_pairs(self.engine.durable_applied)))

    def _on_range(self, fields, envelope, now):
        _node_id, repair_id, bucket, cursor = fields
        if bucket >= BUCKETS:
            return
        items, next_cursor = self.engine.range_items(bucket, cursor)
        self.node.reply_peer(envelope, protocol.encode_peer(
            "DRANGE_REPLY", self.engine.node_id, repair_id, bucket, cursor, items, next_cursor,
            protocol.vector_pairs(self.engine.durable_applied)))

    def _on_tree_reply(self, fields, now):
        sender, repair_id, group, hashes, applied = fields
        r = self.repair
        if r is None or sender != r.peer or repair_id != r.id or len(hashes) != GROUPS:
            return
        r.deadline = now + REPAIR_TIMEOUT
        mine = self.engine.tree_hashes(group)
        if group is None:
            if r.peer_applied is not None:
                return
            # The hashes and this vector were taken together: every differing bucket, pulled from
            # now on, reflects at least every entry this vector counts.
            r.peer_applied = protocol.vector_from_pairs(applied)
            for g in range(GROUPS):
                if hashes[g] != mine[g]:
                    r.groups.add(g)
                    self.node.send_to(r.peer, protocol.encode_peer("DTREE", self.engine.node_id, r.id, g))
        elif group in r.groups:
            r.groups.discard(group)
            r.queue.extend(group * GROUPS + i for i in range(GROUPS) if hashes[i] != mine[i])
        self._pump(now)

    def _pump(self, now):
        r = self.repair
        while r.queue and len(r.pulling) < REPAIR_IN_FLIGHT:
            bucket = r.queue.pop()
            r.pulling[bucket] = None
            self.node.send_to(r.peer, protocol.encode_peer("DRANGE", self.engine.node_id, r.id, bucket, None))
        if r.done:
            self._finish_repair(now)

    def _on_range_reply(self, fields, now):
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
            self.node.send_to(r.peer, protocol.encode_peer("DRANGE", self.engine.node_id, r.id, bucket,
                                                           next_cursor))
        else:
            del r.pulling[bucket]
            r.buckets_pulled += 1
        self._pump(now)

    def _finish_repair(self, now):
        r, self.repair = self.repair, None
        if r.resync_origins:
            self.engine.adopt_applied({o: s for o, s in r.peer_applied.items() if o in r.resync_origins})
        took = now - r.started
        log.info("anti-entropy with node %d done in %.3f s: %d buckets pulled, %d keys changed%s", r.peer, took,
                 r.buckets_pulled, r.keys_changed, "; applied seqs of the trimmed origins adopted"
                 if r.resync_origins else "")
        self.repairs = (self.repairs + [{"peer": r.peer, "seconds": round(took, 3), "buckets": r.buckets_pulled,
                                         "keys_changed": r.keys_changed, "resync": bool(r.resync_origins)}])[-5:]

    # ------------------------------------------------------------ status

    def status(self, now):
        mine = self.engine.durable_applied
        peers = []
        converged = True
        for node_id, view in sorted(self.views.items()):
            alive = view.heard is not None and now - view.heard < self.config.election_interval
            behind = sum(max(0, s - view.applied.get(o, 0)) for o, s in mine.items())
            ahead = sum(max(0, s - mine.get(o, 0)) for o, s in view.applied.items())
            converged &= view.digest == self.engine.durable_digest and alive and not behind and not ahead
            peers.append({"node_id": node_id, "address": self.addresses[node_id], "alive": alive,
                          "behind": behind, "ahead": ahead, "digest": None if view.digest is None else
                          f"{view.digest:016x}", "conflicts": view.conflicts, "tombstones": view.tombstones,
                          "last_heard": None if view.heard is None else round(now - view.heard, 3)})
        return {"peers": peers, "converged": converged, "gaps_fetched": self._gaps, "repairs": self.repairs,
                "read_repairs": self.read_repairs,
                "repairing": None if self.repair is None else self.repair.peer}
