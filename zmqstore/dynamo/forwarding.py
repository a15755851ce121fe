"""Forwarding (docs/PARTITIONING.md, "Coordination"): in a partitioned cluster a request for a key
this node does not own goes to an owner of the key's partition (DFORWARD), which serves it as if a
client had asked it, and its reply comes back (DFORWARD_REPLY) to be relayed unchanged. So any node
serves any request and a client never needs to know where keys live.

`Forwards` is the asking side: each forwarded request is held in the node's one reply queue
(replies.py) as its `until`, ready once the owner's reply is in (its body is the reply). The owner
serves a forwarded request through the mode like any other (modes.DynamoMode) and never forwards
it again, so two nodes whose memberships differ for a moment cannot pass a request back and forth."""
from .. import errors, protocol
from .layout import bucket_of

KEYED = frozenset({"GET", "GET_VERSIONS", "PUT", "PUT_CTX", "DEL", "PUT_MANY"})
# What a fallback coordinator takes: writes of values. A delete there would find nothing to delete
# (it holds none of the partition's versions) and be lost, so it is refused like a read.
FALLBACK = frozenset({"PUT", "PUT_CTX", "PUT_MANY"})


class Forward:
    """A request forwarded to `target`. The reply queue's deadline is its timeout (modes.DynamoMode)."""

    __slots__ = ("id", "target", "request_id", "reply")

    def __init__(self, forward_id, target, request_id):
        self.id, self.target, self.request_id = forward_id, target, request_id
        self.reply = None


def partitions_of(request) -> set:
    if request.command == "PUT_MANY":
        return {bucket_of(key) for key, _value in request.args[0]}
    return {bucket_of(request.args[0])}


class Forwards:
    def __init__(self, out, engine, alive, holders):
        self.out, self.engine = out, engine
        self._alive = alive             # node id -> whether it was heard lately (Replication)
        self._holders = holders         # partition -> peers holding it whole, best first (Replication)
        self._pending = {}              # forward id -> Forward awaiting its reply
        self._ids = 0
        self.may_fall_back = lambda: False  # () -> whether "not heard" means down yet (Replication)
        self.done = 0                   # replies received (modes.DynamoMode.progress)
        self.forwarded = 0

    def target(self, request, avoid=(), fallback=True):
        """The node to forward `request` to, or None when this node owns every partition it names
        and holds them whole. The candidates: the owners not pulling the partition, then the nodes
        still handing it over whole (a move, docs/PARTITIONING.md); the first heard lately that
        holds every partition the request names. A node handing the partitions over whole serves
        the request itself only when no owner is reachable (as it serves one forwarded to it). With
        `fallback`, a write for partitions none of whose owners is heard is taken here (a fallback
        coordinator: docs/PARTITIONING.md; the caller records it once the write is made). Raises
        Unavailable when none is heard, UnsupportedOperation for a put_many no one node holds every
        key of."""
        engine = self.engine
        partitions = partitions_of(request)
        if all(engine.owns(p) and engine.holds(p) for p in partitions):
            return None
        held = all(engine.holds(p) for p in partitions)
        candidates = None
        for p in partitions:
            these = self._holders(p)
            candidates = list(these) if candidates is None else [n for n in candidates if n in these]
        # heard lately, and connected now: a DFORWARD to a peer whose connection is not up yet would
        # be dropped, and the client would wait out its timeout instead of retrying at once
        alive = [n for n in candidates if n not in avoid and self._alive(n) and self.out.reachable(n)]
        if alive:
            return alive[0]
        if held:
            return None
        if fallback and request.command in FALLBACK and self.may_fall_back() and not any(
                self._alive(n) for p in partitions for n in engine.placement.owners(p) if n != engine.node_id):
            return None     # no owner heard: this node takes the write (sloppy quorum; Replication.take_as_fallback)
        owners = sorted({n for p in partitions for n in engine.placement.owners(p)})
        if len(partitions) > 1 and not candidates:
            raise errors.UnsupportedOperation(
                f"this put_many spans {len(partitions)} partitions that no one node owns all of (each key is kept "
                f"by {engine.placement.replicas} of the {len(engine.placement.members)} nodes): write them in "
                f"smaller batches, or one put each")
        raise errors.Unavailable(f"no node holding this key is reachable (its owners: nodes "
                                 f"{', '.join(map(str, owners))}); retry once one is back")

    def start(self, request, target, hops=0) -> Forward:
        """hops: 1 for a forwarded request sent on once more (this node was pulling its partition)."""
        self._ids += 1
        forward = self._pending[self._ids] = Forward(self._ids, target, request.request_id)
        options = (request.options,) if request.options else ()
        body = protocol.encode_request(request.command, request.client_id, request.request_id, request.open_from,
                                       *request.args, *options)
        self.out.send_to(target, protocol.encode_peer("DFORWARD", self.engine.node_id, forward.id, hops, body))
        self.forwarded += 1
        return forward

    def forget(self, forward):
        """The reply queue timed it out: a reply that arrives later is dropped."""
        self._pending.pop(forward.id, None)

    def on_reply(self, fields, now):
        sender, forward_id, reply = fields
        forward = self._pending.get(forward_id)
        if forward is None or forward.target != sender:
            return
        if protocol.decode_reply(reply).request_id != forward.request_id:    # MalformedMessage if not a reply
            raise errors.MalformedMessage(f"a forwarded reply names another request than {forward.request_id}")
        del self._pending[forward_id]
        forward.reply = reply
        self.done += 1
