"""Replication: dynamo mode's peer traffic (docs/DYNAMO.md, "Replication"). DSTATUS (applied vector,
data digest, membership digest) to every member each heartbeat, fetches of what a peer has and this
node lacks, quorum reads and read repair, starting anti-entropy exchanges (antientropy.py), the
exchange of membership records (DMEMBERS, docs/MEMBERSHIP.md), and tombstone collection once every
member has applied them. The membership side is a mixin (replication_members.py), and so is the
partitioned side (partitioned.py)."""
import logging

from .. import protocol
from ..metrics import Histogram
from .antientropy import AntiEntropy
from .departures import Departures
from .forwarding import Forwards
from .hints import Hints
from .moves import Moves
from .quorum_reads import QuorumReads
from .layout import origin_name, origin_node, origin_partition
from .partitioned import PartitionedReplication, topic
from .replication_members import MembershipReplication
from .sync import VectorSync

FETCH_TIMEOUT = 1.0               # seconds before a fetch without reply is asked again
REPAIR_AFTER = 5                  # equal applied vectors, different digests for this many reports: repair
GC_CHECKPOINTS = 60               # housekeeping passes remembered for the collection vector

log = logging.getLogger("zmqstore.dynamo")


class Replication(PartitionedReplication, MembershipReplication):
    """Dynamo-mode peer traffic (docs/DYNAMO.md, "Replication")."""

    def __init__(self, out, engine, config, now):
        self.out = out                  # the iteration's Sends (sends.py): sent after its commit
        self.engine = engine
        self.config = config
        self.views = {}                 # member id -> PeerReport, every member but this node
        self.addresses = {}             # member id -> its client address
        self.contacts = ()              # the peers to connect to and admit: members, and the leaving
        self._members_sent = {}         # node id -> when it was last sent DMEMBERS for a digest mismatch
        self._now = now
        self._fetching = {}             # origin -> (deadline, peer) of the fetch in flight
        self._unanswered = {}           # origin -> peers that left a fetch of it unanswered
        self._gaps = 0
        self._mismatch = {}             # peer -> consecutive reports with equal applied, other digest
        self._resync_from = {}          # peer -> {origin: its first seq}: it trimmed entries we lack
        self._checkpoints = []          # (stable vector, max vector, membership digest) at recent housekeeping passes
        self.anti_entropy = ae = AntiEntropy(out, engine)     # antientropy.py
        # Partitioned (replicas set, docs/PARTITIONING.md): per partition this node owns, the peers
        # owning it too; per peer, the partitions both own; the topics this node's SUBs take.
        self.per_partition = engine.per_partition
        self._co_owners = {}
        self._shared = {}               # peer -> partitions both hold (owned, pulling or handing over)
        self._sharers = {}              # partition -> peers it is shared with (their DSYNCs carry its seqs)
        self.topics = None
        self.sync = VectorSync(engine, lambda node_id: self._shared.get(node_id, frozenset()))    # sync.py
        self.forwards = Forwards(out, engine, self.alive, self._whole_holders)      # forwarding.py
        self._started = now
        self.forwards.may_fall_back = lambda: self._now - self._started >= config.election_interval
        self.hints = hints = Hints(out, engine, self.alive)     # hints.py
        self.moves = Moves(out, engine, self.alive, self._whole_holders, self._moved_in)   # moves.py
        hints.run_of = lambda node_id: self.sync.peers[node_id].run or None if node_id in self.sync.peers else None
        self.on_forward = None          # (fields, envelope, now): a forwarded request (modes.DynamoMode)
        self._lacking = {}              # partitioned: origin -> a co-owner whose DSYNC showed it ahead
        self.reads = reads = QuorumReads(out, engine, config, lambda: self.views)   # quorum_reads.py
        if self.per_partition:
            reads.holders, reads.readers = self._holders, self._readers
        self._handlers = {"DSTATUS": self._on_status_query, "DFETCH": self._on_fetch, "DTREE": ae.on_tree,
                          "DRANGE": ae.on_range, "DACK": self._on_ack, "DREAD": reads.on_read,
                          "DPUSH": reads.on_push, "DMEMBERS": self._on_members, "DSYNC": self._on_sync,
                          "DFORWARD": self._on_forward, "DHINT": hints.on_hint, "DHANDOFF": hints.on_handoff}
        self._message_handlers = {"DCHANGE": self._on_change, "DSTATUS_REPLY": self._on_status_reply,
                                  "DENTRIES": self._on_entries, "DTREE_REPLY": ae.on_tree_reply,
                                  "DRANGE_REPLY": ae.on_range_reply, "DREAD_REPLY": reads.on_read_reply,
                                  "DFORWARD_REPLY": self.forwards.on_reply, "DHINT_ACK": hints.on_hint_ack,
                                  "DHANDOFF_ACK": hints.on_handoff_ack}
        self._acked = {}                # peer -> {origin of this run: highest seq it applied durably}
        self.ack_events = 0             # DACKs and reports that moved _acked (modes.DynamoMode.progress)
        self.round_trips = {}           # peer -> metrics.Histogram: status query to reply
        self._queried = {}              # peer -> when the oldest unanswered status query to it was sent
        self.departures = Departures(engine, self._fetch, (lambda o: engine.keeps(origin_partition(o)))
                                     if self.per_partition else None)   # removed nodes still drained (departures.py)
        if engine.membership.removed_by is not None:     # removed: its old peers may ask whether it knows
            self.departures.add(engine.membership.peers, now)
        else:       # every removed node is asked again after a restart (what was let go is not kept)
            self.departures.add({r.node_id: r.member for r in engine.membership.records.values() if r.removed}, now)
        self._follow(engine.membership)
        engine.on_membership = self._membership_changed

    def close(self):
        pass

    def note_loop(self, now):
        self._now = now

    # ------------------------------------------------------------ timers

    def tick(self, now):
        if self.departures.expire(now):
            self._set_contacts()
        if self.engine.membership.removed_by is not None:
            return      # removed: it only answers status queries, with its membership
        status = self._status_message("DSTATUS")
        for node_id in (*self.views, *self.departures):    # the removed: until let go (departures.py)
            self.out.send_to(node_id, status)
        if self.per_partition:
            for node_id in self.views:
                self.out.send_to(node_id, self.sync.message(node_id))
            self._fetch_lacking(now)
            self.hints.tick(now)
            self.moves.tick(now)
        for node_id in self.views:
            # Timed from the oldest query still unanswered, so a slow reply is not measured from a
            # later query; one unanswered for election_interval is given up (the reply is not counted).
            if now - self._queried.setdefault(node_id, now) >= self.config.election_interval:
                self._queried[node_id] = now
        self.anti_entropy.tick(now)

    def housekeeping(self, now):
        if self.engine.membership.removed_by is not None:
            return      # removed: its log may hold writes its old peers still fetch
        if self.per_partition and self.engine.leaving:
            self._hand_over()
        vector = self.gc_vector()
        if vector is not None:
            dropped = self.engine.collect_garbage(vector)
            if dropped:
                log.debug("garbage-collected %d tombstones every node has applied", dropped)

    def alive(self, node_id) -> bool:
        """Heard within election_interval; in a partitioned cluster, by DSYNC, which only a node of
        the cluster's `replicas` has accepted."""
        view = self.views.get(node_id)
        heard = None if view is None else view.sync_heard if self.per_partition else view.heard
        return heard is not None and self._now - heard < self.config.election_interval

    def gc_vector(self):
        """What garbage collection may go by: the stable vector S of an earlier housekeeping pass c
        (every node had applied every write it covers), chosen as the latest pass whose *maximum*
        vector M (elementwise maximum of every node's applied vector then) the current stable
        vector covers. A write concurrent with a tombstone that was stable at c was made by its
        origin before that origin applied the tombstone, so before c, so M_c covers it; now that
        every node has applied M_c, every node holds that write, and a key collected from here on
        cannot receive a write it did not see (on one node collected, on another a sibling).
        That needs "every node" to be every node that can write: so nothing is collected while a
        member reports another membership than this node's (a node added elsewhere, not heard of
        here yet, may be writing), and only checkpoints taken under the current one count."""
        digest = self.engine.membership.digest
        if self.per_partition:
            # and while a member is not heard: cut off, it may take writes as a fallback (sloppy
            # quorum) that its partitions' owners do not know of yet
            if any(view.members != digest for view in self.views.values()) or \
                    not all(self.alive(n) for n in self.views):
                return None
            stable_now, most = self._partition_vectors()
        else:
            stable_now = self.stable_vector()
            if stable_now is None or any(view.members != digest for view in self.views.values()):
                return None
            most = dict(self.engine.durable_applied)
            for view in self.views.values():
                for o, seq in view.applied.items():
                    if seq > most.get(o, 0):
                        most[o] = seq
        self._checkpoints = (self._checkpoints + [(stable_now, most, digest)])[-GC_CHECKPOINTS:]
        for stable_c, most_c, digest_c in reversed(self._checkpoints[:-1]):
            if digest_c == digest and all(stable_now.get(o, 0) >= seq for o, seq in most_c.items()):
                return stable_c
        return None

    def publish_new(self):
        """After a flush: publish this run's new durable entries (PUB; fetches repair losses): with
        replicas set, each origin's under its partition's topic, which only its owners take; tell
        each origin what this node now holds of its entries (DACK); note for each peer what this
        node's vector gained (DSYNC)."""
        entries, moved, synced = self.engine.take_published()
        if entries and not self.per_partition:
            self.out.publish(protocol.encode_peer("DCHANGE", self.engine.origin, [raw for _o, raw in entries]))
        elif entries:
            by_origin = {}
            for origin, raw in entries:
                by_origin.setdefault(origin, []).append(raw)
            placement, me = self.engine.placement, self.engine.node_id
            for origin, raws in by_origin.items():
                self.out.publish(protocol.encode_peer("DCHANGE", origin, raws), topic(origin_partition(origin)))
                down = [n for n in placement.owners(origin_partition(origin)) if n != me and not self.alive(n)]
                if down:        # their entries go to fallbacks meanwhile (hints.py)
                    self.hints.send(origin, raws, down)
        if self.per_partition and synced:
            self.sync.moved(synced, lambda p: self._sharers.get(p, ()))
        for origin in moved:      # a lost DACK is made up for by the next DSTATUS (DSYNC)
            node_id = origin_node(origin)
            if node_id in self.views:
                self.out.send_to(node_id, protocol.encode_peer(
                    "DACK", self.engine.node_id, origin, self.engine.durable_applied[origin]))

    # ------------------------------------------------------------ quorums

    def copies(self, dots) -> int:
        """How many nodes (this one included) hold every one of `dots` (entries of this run's
        origins) durably, as the peers' DACKs and status reports said: what a write with w > 1
        waits for (modes.DynamoMode)."""
        return min(self._copies(origin, seq) for origin, seq in dots)

    def _copies(self, origin, seq) -> int:
        """Nodes holding the entry: this one, each peer that acknowledged it (DACK), and each owner
        that did not, for which a fallback holds it (DHINT_ACK; one fallback per owner). An entry of
        another node's origin (a retry whose first try that node made, partitioned): this one and
        the co-owners whose DSYNC shows it. Partitioned, only the partition's owners count: a node
        handing it over drops its copy."""
        counted = self.views
        if self.per_partition:
            counted = [n for n in self.engine.placement.owners(origin_partition(origin)) if n in self.views]
        if not self.engine.is_own(origin):
            return 1 + sum(1 for n in counted if self.views[n].applied.get(origin, 0) >= seq)
        acked, stands_for = self._acked, self.hints.stands_for
        held = {n for n in counted if acked.get(n, {}).get(origin, 0) >= seq}
        stood = {stands_for(n, origin, seq) for n in self.views if n not in held} & set(counted) - held
        return 1 + len(held) + len(stood)

    def _on_ack(self, fields, envelope, now):
        node_id, origin, seq = fields
        if self.engine.is_own(origin) and node_id in self.views:
            self.engine.check_remote(0, ({origin: seq},))    # no peer holds writes this run never made
            self._note_acked(node_id, origin, seq)

    def _note_acked(self, node_id, origin, seq):
        held = self._acked.setdefault(node_id, {})
        if seq > held.get(origin, 0):
            held[origin] = seq
            self.ack_events += 1

    def stable_vector(self):
        """Elementwise minimum of every member's applied vector, or None while a member has not
        reported since this node started or since it became a member (its applied vector is unknown)."""
        vector = dict(self.engine.durable_applied)
        for view in self.views.values():
            if view.heard is None:
                return None
            vector = {o: min(s, view.applied.get(o, 0)) for o, s in vector.items()}
        return vector

    # ------------------------------------------------------------ messages

    def _status_message(self, command):
        e = self.engine
        applied = {} if self.per_partition else e.durable_applied     # partitioned: DSYNC carries it
        return protocol.encode_peer(command, e.node_id, protocol.vector_pairs(applied), e.durable_digest,
                                    e.storage.approximate_keys(), e.conflicts, e.tombstones, e.config.address,
                                    e.membership.digest, protocol.peer_versions())

    def on_request(self, message, envelope, now):
        command = message.command
        if self.engine.membership.removed_by is not None:
            if command not in ("DSTATUS", "DFETCH"):
                return      # removed: it answers status queries and serves its writes, nothing else
        elif command not in ("DSTATUS", "DMEMBERS") and message.fields[0] not in self.views:
            return          # from a removed node: memberships and status only
        if self.per_partition and command in ("DTREE", "DRANGE"):
            if command == "DRANGE":     # a partition's snapshot for a node pulling it (moves.py)
                self.moves.on_range(message.fields, envelope, now)
            return          # no anti-entropy in a partitioned cluster yet (docs/PARTITIONING.md)
        handler = self._handlers.get(command)
        if handler is None:
            log.debug("ignoring %s in dynamo mode", message.command)
            return
        handler(message.fields, envelope, now)

    def on_message(self, message, now):
        """A message from the SUB socket or a reply on a DEALER (none taken while removed)."""
        if self.engine.membership.removed_by is not None:
            return
        handler = self._message_handlers.get(message.command)
        if self.per_partition and message.command == "DRANGE_REPLY":
            handler = self.moves.on_range_reply
        if handler is not None:
            handler(message.fields, now)

    def _on_status_query(self, fields, envelope, now):
        self._on_status(fields, now)
        self.out.reply_peer(envelope, self._status_message("DSTATUS_REPLY"))

    def _on_status_reply(self, fields, now):
        """A status reply: its round trip is measured from the oldest unanswered query to that peer
        (tick); none is counted for a peer that left a query unanswered for election_interval."""
        sent = self._queried.pop(fields[0], None)
        if sent is not None and now - sent < self.config.election_interval and fields[0] in self.views:
            self.round_trips.setdefault(fields[0], Histogram()).observe(now - sent)
        self._on_status(fields, now)

    def _on_status(self, fields, now):
        node_id, applied, digest, keys, conflicts, tombstones, _address, members_digest, _versions = fields
        # Different records: send ours (it merges them, and sends its own when ours lack some), at
        # most once a heartbeat. A removed node learns so here; a node that knows it was removed
        # answers every status query with its records, which tells the asker that it knows.
        if members_digest != self.engine.membership.digest or self.engine.membership.removed_by is not None:
            if node_id in self.views or node_id in self.departures:
                if now - self._members_sent.get(node_id, -1e9) >= self.config.heartbeat_interval:
                    self._members_sent[node_id] = now
                    self.out.send_to(node_id, self._members_message())
        view = self.views.get(node_id)
        if view is None:
            if node_id in self.departures and self.engine.membership.removed_by is None:
                self._on_departing(node_id, protocol.vector_from_pairs(applied), now)
            return
        view.digest, view.keys, view.conflicts, view.tombstones = digest, keys, conflicts, tombstones
        view.heard, view.members = now, members_digest
        if self.per_partition:
            return      # its applied vector comes by DSYNC; anti-entropy is not run (docs/PARTITIONING.md)
        applied = protocol.vector_from_pairs(applied)
        self.engine.check_remote(0, (applied,))
        view.applied = applied
        self._note_acked(node_id, self.engine.origin, view.applied.get(self.engine.origin, 0))
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
            if self._mismatch[node_id] >= REPAIR_AFTER and self.anti_entropy.repair is None:
                self._mismatch[node_id] = 0
                self.anti_entropy.start(node_id, now)
        else:
            self._mismatch[node_id] = 0
        trimmed = self._resync_from.get(node_id)
        if trimmed:
            # still lacking entries the peer holds only as data: resync those origins from it
            needed = {o for o, first in trimmed.items() if mine.get(o, 0) < first - 1}
            if not needed:
                del self._resync_from[node_id]
            elif self.anti_entropy.repair is None:
                del self._resync_from[node_id]
                self.anti_entropy.start(node_id, now, resync_origins=needed)

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
            peers = self._sharers.get(origin_partition(origin), ()) if self.per_partition else self.views
            if any(peer not in tried and self.alive(peer) and self.views[peer].applied.get(origin, 0) > mine
                   for peer in peers):
                return
            tried.clear()
        frm = self.engine.applied.get(origin, 0) + 1
        if self.out.request(node_id, protocol.encode_peer("DFETCH", self.engine.node_id, origin, frm)):
            self._fetching[origin] = (now + FETCH_TIMEOUT, node_id)

    def _on_fetch(self, fields, envelope, now):
        _node_id, origin, from_seq = fields
        entries, first = self.engine.read_entries(origin, from_seq)
        self.out.reply_peer(envelope, protocol.encode_peer("DENTRIES", self.engine.node_id, origin, from_seq,
                                                          entries, first))

    def _on_entries(self, fields, now):
        sender, origin, from_seq, entries, first = fields
        asked = self._fetching.get(origin, (0, None))[1] == sender
        if asked:
            del self._fetching[origin]
        if self.per_partition and not self.engine.keeps(origin_partition(origin)):
            return      # a partition this node no longer holds: what it fetched is not kept
        self._unanswered.pop(origin, None)
        if not entries:
            if from_seq < first and self.engine.applied.get(origin, 0) < first - 1 and self.per_partition:
                if asked:       # (an answer to a fetch this node made: else any member could force pulls)
                    self.engine.repull(origin_partition(origin), sender, origin, first)
            elif from_seq < first and self.engine.applied.get(origin, 0) < first - 1 and \
                    origin not in self._resync_from.get(sender, {}):
                self._resync_from.setdefault(sender, {})[origin] = first
                log.warning("node %d no longer holds entries %d.. of origin %s (trimmed below %d, applied by "
                            "every node): resyncing from it by anti-entropy", sender, from_seq,
                            origin_name(origin), first)
            return
        self.engine.apply_remote(origin, entries)
        reported = self._reported(sender)
        if reported.get(origin, 0) > self.engine.applied.get(origin, 0):
            self._fetch(origin, sender, now)   # more to catch up: the next page at once

    def _on_forward(self, fields, envelope, now):
        if self.per_partition and self.on_forward is not None:     # only partitioned clusters forward
            self.on_forward(fields, envelope, now)

    def _on_change(self, fields, now):
        origin, entries = fields
        partition = origin_partition(origin)
        if self.per_partition and not self.engine.keeps(partition):
            return      # a partition this node does not hold (no longer, or not yet by its membership)
        _done, gap = self.engine.apply_remote(origin, entries)
        if gap and not (self.per_partition and partition in self.engine.moving_in):   # pulling: the snapshot
            self._gaps += 1
            node_id = origin_node(origin)
            if node_id in self.views or node_id in self.departures:
                self._fetch(origin, node_id, now)

    # ------------------------------------------------------------ status

    def status(self, now):
        mine = self.engine.durable_applied
        peers = []
        converged = True
        for node_id, view in sorted(self.views.items()):
            alive = view.heard is not None and now - view.heard < self.config.election_interval
            if self.per_partition:      # over the partitions both own; data digests differ by design
                shared = self._shared.get(node_id, ())
                behind = sum(max(0, s - view.applied.get(o, 0)) for o, s in mine.items()
                             if origin_partition(o) in shared)
                ahead = sum(max(0, s - mine.get(o, 0)) for o, s in view.applied.items()
                            if origin_partition(o) in shared)
                converged &= view.synced and alive and not behind and not ahead
            else:
                behind = sum(max(0, s - view.applied.get(o, 0)) for o, s in mine.items())
                ahead = sum(max(0, s - mine.get(o, 0)) for o, s in view.applied.items())
                converged &= view.digest == self.engine.durable_digest and alive and not behind and not ahead
            peers.append({"node_id": node_id, "address": self.addresses[node_id], "alive": alive,
                          "behind": behind, "ahead": ahead, "digest": None if view.digest is None else
                          f"{view.digest:016x}", "conflicts": view.conflicts, "tombstones": view.tombstones,
                          "last_heard": None if view.heard is None else round(now - view.heard, 3)})
        repair = self.anti_entropy.repair
        engine = self.engine
        converged &= not (engine.moving_in or engine.leaving)
        return {"peers": peers, "converged": converged, "gaps_fetched": self._gaps,
                "partitions_moving": len(engine.moving_in) + len(engine.leaving),
                "partitions_pulling": len(engine.moving_in), "partitions_handing_over": len(engine.leaving),
                "partitions_pulled": self.moves.moved_in, "keys_pulled": self.moves.keys_pulled,
                "hints_pending": self.hints.pending, "hints_sent": self.hints.sent,
                "hints_delivered": self.hints.delivered,
                "repairs": self.anti_entropy.repairs, "read_repairs": self.reads.read_repairs,
                "antientropy_runs": self.anti_entropy.runs, "keys_repaired": self.anti_entropy.keys_repaired,
                "repairing": None if repair is None else repair.peer,
                # removed nodes not yet let go (docs/MEMBERSHIP.md): wipe one only once no member lists it
                "leaving": [] if self.engine.membership.removed_by is not None else sorted(self.departures)}
