"""DSYNC (docs/PARTITIONING.md, "Views of the peers"): in a partitioned cluster each node tells each
peer what its applied vector gained in the partitions both own, as deltas the peer confirms. A
node's applied vector there has an entry per origin, and an origin per run and partition (thousands
of them), too many to send whole every heartbeat as DSTATUS does with one origin per run.

Per peer, the changes not yet confirmed (`unacked`) go in every DSYNC until the peer's reply
confirms one that held them (`ack`: the highest number it heard). So a DSYNC holds every change the
peer has not confirmed, and a peer that receives one knows the sender's vector as it was when it
was sent (over the shared partitions): its view of the sender is complete from then on, which
garbage collection needs (Replication). Numbers and confirmations belong to runs: a peer that
restarts is a new run, knows nothing, and gets everything again. No I/O: messages go through the
iteration's Sends."""
from .. import protocol
from .layout import origin_partition

SYNC_PAIRS_MAX = 8_000           # pairs in one DSYNC (a vector holds at most PEER_ARRAY_MAX): more go
                                 # over several heartbeats
SENT_KEPT = 16                   # DSYNCs remembered per peer until confirmed (older ones are sent again)


class PeerSync:
    """What this node sent one peer and heard from it."""

    __slots__ = ("run", "unacked", "sent", "number", "heard")

    def __init__(self):
        self.run = 0            # the peer's run this node's DSYNCs address (0: not heard yet)
        self.unacked = {}       # origin -> seq the peer has not confirmed
        self.sent = []          # (number, {origin: seq}) sent and not confirmed, oldest first
        self.number = 0         # the last number sent
        self.heard = 0          # the highest number heard from the peer's run: what this node confirms


class VectorSync:
    def __init__(self, engine, shared):
        self.engine = engine
        self.shared = shared            # peer -> frozenset of the partitions both own
        self.peers = {}                 # peer -> PeerSync

    def follow(self, peers):
        """The members changed, or the partitions they own: every peer gets everything again."""
        self.peers = {node_id: self.peers.get(node_id, PeerSync()) for node_id in peers}
        for node_id in self.peers:
            self.reset(node_id)

    def reset(self, node_id):
        """The peer gets every pair of the partitions shared with it again."""
        st = self.peers[node_id]
        shared = self.shared(node_id)
        st.unacked = {o: s for o, s in self.engine.durable_applied.items() if s and origin_partition(o) in shared}
        st.sent = []

    def moved(self, origins, co_owners):
        """Origins whose durable applied seq moved: each peer owning their partition is told."""
        durable = self.engine.durable_applied
        for origin in origins:
            for node_id in co_owners(origin_partition(origin)):
                st = self.peers.get(node_id)
                if st is not None:
                    st.unacked[origin] = durable[origin]

    def message(self, node_id) -> bytes:
        st = self.peers[node_id]
        st.number += 1
        complete = len(st.unacked) <= SYNC_PAIRS_MAX
        pairs = st.unacked if complete else dict(list(st.unacked.items())[:SYNC_PAIRS_MAX])
        st.sent = (st.sent + [(st.number, dict(pairs))])[-SENT_KEPT:]
        e = self.engine
        return protocol.encode_peer("DSYNC", e.node_id, e.run, st.run, st.number, st.heard, e.replicas,
                                    protocol.vector_pairs(pairs), complete, sorted(e.not_whole), sorted(e.leaving))

    def on_sync(self, node_id, run, to_run, number, ack):
        """A peer's DSYNC: note what it confirmed and what this node confirms back. Returns whether
        its pairs make this node's view of it complete (it addressed this run and held every change)."""
        st = self.peers.get(node_id)
        if st is None:
            return False
        if run != st.run:      # a new run of the peer: it holds nothing we sent
            if st.run:          # (before the first heard, nothing was confirmed: unacked holds everything)
                self.reset(node_id)
            st.run, st.heard = run, 0
        st.heard = max(st.heard, number)
        if to_run != self.engine.run:
            return False
        kept = []
        for sent_number, pairs in st.sent:
            if sent_number > ack:
                kept.append((sent_number, pairs))
                continue
            for origin, seq in pairs.items():
                if st.unacked.get(origin, seq + 1) <= seq:
                    del st.unacked[origin]
        st.sent = kept
        return True
