"""The membership side of Replication (docs/MEMBERSHIP.md, "Dynamo mode"): DMEMBERS sent and merged,
the views and contacts that follow a new membership, removed nodes drained (departures.py), and
the check before a removal. A mixin of `Replication` (replication.py), which holds the state these
methods read: views, departures, the engine and the iteration's Sends."""
import logging

from .. import errors, protocol
from .layout import origin_node
from .sync import SYNC_PAIRS_MAX

log = logging.getLogger("zmqstore.dynamo")


class PeerReport:
    """What a peer last reported of itself (DSTATUS, DSTATUS_REPLY): applied vector, digest, counts.
    (Leader mode's counterpart, what a peer said in ROLE, is election.PeerView.)"""

    __slots__ = ("applied", "digest", "keys", "conflicts", "tombstones", "heard", "members", "synced", "sync_heard",
                 "moving", "leaving", "origins")

    def __init__(self):
        self.applied = {}
        self.synced = False     # partitioned: a DSYNC made `applied` complete over the shared partitions
        self.sync_heard = None  # partitioned: when a DSYNC (of this cluster's replicas) last came
        self.moving = self.leaving = frozenset()    # partitioned: what its DSYNC says it pulls, hands over
        self.origins = {}       # partitioned: partition -> the origins of it in `applied` (DSYNC's)
        self.digest = None
        self.members = None     # the digest of its membership
        self.keys = self.conflicts = self.tombstones = 0
        self.heard = None


class MembershipReplication:
    def _members_message(self):
        # engine.applied: staged writes included (they are durable by the time this leaves, after
        # the iteration's commit): for a node that knows it was removed, all it will ever hold.
        e = self.engine
        applied = e.applied
        if self.per_partition:
            # Its origins' seqs only, and only once removed: the entries it coordinated, which each
            # partition's holders drain from it (the other origins' are their own nodes' to give).
            # An origin per run and partition: too many for every membership message.
            own = [(o, s) for o, s in e.applied.items() if s and origin_node(o) == e.node_id]
            applied = dict(sorted(own, key=lambda pair: not e.is_own(pair[0]))[:SYNC_PAIRS_MAX]) \
                if e.membership.removed_by is not None else {}
        return protocol.encode_peer("DMEMBERS", e.node_id, e.membership.encoded, protocol.vector_pairs(applied))

    def _on_members(self, fields, envelope, now):
        """A member's or a removed node's records: merged into ours; when that changes ours, the
        engine adopts it. From a removed node whose records say so, also: it knows it was removed,
        and `applied` is all it holds (it is let go once this node holds that too)."""
        node_id, raw, applied = fields
        if node_id not in self.views and node_id not in self.departures:
            return
        try:
            records = protocol.decode_dynamo_members(raw)
        except errors.MalformedMessage as exc:
            log.warning("membership from node %d refused: %s", node_id, exc)
            return
        leaving = node_id not in self.views
        if leaving and any(r.node_id == node_id and r.removed for r in records) and \
                self.engine.membership.removed_by is None:
            # It knows, so it takes no more writes: what it holds now is all it will hold.
            applied = protocol.vector_from_pairs(applied)
            if self.per_partition:      # its own origins' seqs only (docs/PROTOCOL.md, DMEMBERS)
                applied = {o: s for o, s in applied.items() if origin_node(o) == node_id}
            self._on_departing(node_id, applied, now, knows=True)
        # A removed node's records are merged too (a merge never undoes its removal): it may have
        # added a node while it was cut off, which only it knows of.
        merged = self.engine.membership.merge(records)
        if merged is not None:
            self.engine.set_membership(merged)

    def _membership_changed(self, old, new):
        """The engine adopted a new membership (made here, or merged): tell every node of the old and
        the new one (after this iteration's commit), and follow it. A removed member is drained
        (departures.py); a node that was removed itself keeps its old peers as contacts the same
        way, answering their status queries with its records."""
        body = self._members_message()
        for node_id in sorted(set(old.peers) | set(new.peers)):
            self.out.send_to(node_id, body)
        gone = old.peers if new.removed_by is not None else {n: m for n, m in old.peers.items() if n not in new.peers}
        self.departures.add(gone, self._now, {n: self.views[n].applied for n in gone if n in self.views})
        if new.removed_by is None:      # a node added again is a member, not departing
            self.departures.forget(new.peers)
        self._follow(new)

    def _follow(self, membership):
        """Views for the members (a new member's applied vector is unknown until it reports, which
        holds tombstone collection back); nothing kept of those that left."""
        peers = membership.peers if membership.removed_by is None else {}
        for node_id in [n for n in self.views if n not in peers]:
            del self.views[node_id]
            for kept in (self._acked, self._mismatch, self._resync_from, self._members_sent, self.round_trips,
                         self._queried, self._shared):
                kept.pop(node_id, None)
            for origin in [o for o, (_d, peer) in self._fetching.items() if peer == node_id]:
                del self._fetching[origin]
            for tried in self._unanswered.values():
                tried.discard(node_id)
        for node_id in peers:
            self.views.setdefault(node_id, PeerReport())
        self.addresses = {node_id: m.address for node_id, m in peers.items()}
        if self.per_partition:
            self._place(peers)
        self._checkpoints = []      # collection starts its argument again over the new members
        self._set_contacts()

    def _set_contacts(self):
        peers = {} if self.engine.membership.removed_by is not None else dict(self.engine.membership.peers)
        for node_id, member in self.departures.members().items():
            peers.setdefault(node_id, member)
        contacts = tuple(peers[n] for n in sorted(peers))
        if contacts != self.contacts:
            self.contacts = contacts

    def _reported(self, node_id) -> dict:
        """The applied vector a member or a removed node being drained last reported ({}: none)."""
        view = self.views.get(node_id)
        return view.applied if view is not None else self.departures.applied_of(node_id)

    def _on_departing(self, node_id, applied, now, knows=False):
        """A removed node's report (departures.py); once it is let go, it is no longer a contact."""
        if self.departures.on_status(node_id, applied, now, knows):
            self._members_sent.pop(node_id, None)
            self._set_contacts()

    def check_removal(self, node_id, now):
        """Refuse (Unavailable, retryable) to remove a node while it may hold writes no other member
        holds: this node, unless a member that reported lately has applied all it has; another
        node that reported lately, while it has applied writes this node has not."""
        mine = self.engine.durable_applied
        fresh = {n: v for n, v in self.views.items()
                 if v.heard is not None and now - v.heard < self.config.election_interval}
        if self.per_partition:
            self._check_partitioned_removal(node_id, fresh)
            return
        if node_id == self.engine.node_id:
            if not any(all(v.applied.get(o, 0) >= s for o, s in mine.items() if s) for v in fresh.values()):
                raise errors.Unavailable(f"no member has applied every write node {node_id} holds yet; retry once "
                                         f"the cluster has converged (datastore-cli status)")
        elif node_id in fresh and any(s > mine.get(o, 0) for o, s in fresh[node_id].applied.items()):
            raise errors.Unavailable(f"node {node_id} holds writes this node has not applied yet; retry in a moment, "
                                     f"or ask a node that has caught up with it")
