"""Quorum reads: a dynamo-mode read with r > 1 (docs/DYNAMO.md, "Quorums"). It asks the members
for their state of the key (DREAD), joins the first r - 1 answers (DREAD_REPLY) with its own,
pushes the join to the stale ones (DPUSH, read repair) and answers from it once it is durable here.
Replication routes the messages here; it never reads the clock or a socket."""
from .. import protocol
from ..protocol import encode_key_state
from ..versions import EMPTY
from .commands import read_reply


class QuorumRead:
    """A read with r = need > 1. It is held in the node's one reply queue (replies.py) as its own
    `until`: ready once `need` nodes (this one included) have answered and their joined state is
    durable here (batch `batch`), `reply` being then the reply's body. The queue's deadline is its
    timeout (modes.DynamoMode.expired)."""

    __slots__ = ("id", "request", "need", "asked", "replies", "reply", "batch")

    def __init__(self, read_id, request, need, asked):
        self.id, self.request, self.need, self.asked = read_id, request, need, asked
        self.replies = []       # (peer, KeyState, applied vector)
        self.reply = None
        self.batch = 0


class QuorumReads:
    def __init__(self, out, engine, config, members):
        self.out, self.engine, self.config = out, engine, config
        self._members = members         # () -> the node ids to ask and to hear (Replication.views)
        self.holders = None             # partitioned: key -> the peers owning it (Replication), else every member
        self.readers = None             # partitioned: key -> those of them whose answer counts (not pulling it)
        self._reads = {}                # read id -> QuorumRead still gathering answers
        self._read_ids = 0
        self.reads_done = 0             # quorum reads whose answers are all in (modes.DynamoMode.progress)
        self.read_repairs = 0

    def start(self, request, need):
        """Read a key from `need` nodes (this one and the first need - 1 peers to answer), join
        their states, repair the stale ones, reply with the joined state. Returns the QuorumRead,
        which the reply queue holds until it is ready."""
        self._read_ids += 1
        key = request.args[0]
        asked = tuple(self._members()) if self.readers is None else self.readers(key)
        read = self._reads[self._read_ids] = QuorumRead(self._read_ids, request, need, frozenset(asked))
        message = protocol.encode_peer("DREAD", self.engine.node_id, read.id, key)
        for node_id in asked:
            self.out.send_to(node_id, message)
        return read

    def forget(self, read):
        """The reply queue timed the read out: answers that arrive later are ignored."""
        self._reads.pop(read.id, None)

    def on_read(self, fields, envelope, now):
        _node_id, read_id, key = fields
        self.out.reply_peer(envelope, protocol.encode_peer(
            "DREAD_REPLY", self.engine.node_id, read_id, self.engine.durable_state(key),
            protocol.vector_pairs(self.engine.partition_vector(key) if self.engine.holds_key(key) else {})))

    def on_read_reply(self, fields, now):
        sender, read_id, raw, applied = fields
        pending = self._reads.get(read_id)
        if pending is None or sender not in pending.asked or any(r[0] == sender for r in pending.replies):
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
                # sent after this iteration's commit (sends.py), like the reply: never a state this node could lose
                self.read_repairs += 1
                self.out.send_to(peer, protocol.encode_peer("DPUSH", self.engine.node_id, key, raw_merged))
        # the reply leaves once the join is durable here (the queue's next release after the commit)
        pending.reply, pending.batch = read_reply(pending.request, merged), self.engine.pending_batch
        self.reads_done += 1

    def on_push(self, fields, envelope, now):
        node_id, key, raw = fields
        if node_id in self._members() and (self.holders is None or node_id in self.holders(key)):
            self.engine.join_state(key, self.engine.remote_state(raw))
