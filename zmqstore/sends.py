"""The peer messages a loop iteration decides to send, kept as values until the loop sends them
(docs/ARCHITECTURE.md, "One shape for both modes").

The modes' logic (leader/, dynamo/) never touches a socket: it appends
what must leave here, and the loop sends it after the iteration's commit, so what a message says
(an ACK's durable seq, a vote, a DACK) is persisted before it leaves by construction, not by the
order of two calls in a handler. The one exception is `publish_early`: the primary's stream of the
entries it staged in this iteration leaves before its own fsync, so that the secondaries' fsyncs
overlap it; that is safe because the primary counts its own copy toward a commit only once it is
durable (Raft thesis, section 10.2.1). Simulations (tests/unit/test_*_sim.py) hand the same lists
to a simulated network.
"""

PUBLISH = "publish"     # to every subscriber of this node's change stream (PUB)
TO_PEER = "to_peer"     # target: a peer's node id (DEALER to its peer port)
REPLY = "reply"         # target: the envelope of a request that came on the peer port (ROUTER)


class Sends:
    """One iteration's outgoing peer messages, as (kind, target, body) in the order decided.

    `reachable(node_id)`: whether a message to that peer would be taken now (a completed
    connection with room in its queue), which `request` returns so that a request sent to a peer
    that is down is retried on the next timer instead of after a reply timeout."""

    __slots__ = ("early", "queue", "reachable")

    def __init__(self, reachable=None):
        self.early = []
        self.queue = []
        self.reachable = reachable if reachable is not None else (lambda node_id: True)

    def __bool__(self):
        return bool(self.queue or self.early)

    def publish(self, body, topic=None):
        """To the subscribers of this node's stream; with a topic, those subscribed to it only."""
        self.queue.append((PUBLISH, topic, body))

    def publish_early(self, body):
        """The primary's new entries: may leave before this iteration's commit (see above)."""
        self.early.append((PUBLISH, None, body))

    def send_to(self, node_id, body):
        self.queue.append((TO_PEER, node_id, body))

    def request(self, node_id, body) -> bool:
        """send_to for a request that waits for its answer: False when the peer cannot take it now."""
        self.queue.append((TO_PEER, node_id, body))
        return self.reachable(node_id)

    def reply_peer(self, envelope, body):
        self.queue.append((REPLY, envelope, body))

    def take_early(self) -> list:
        early, self.early = self.early, []
        return early

    def take(self) -> list:
        """Everything decided so far (early messages first), emptying the lists."""
        items = self.early + self.queue if self.early else self.queue
        self.early, self.queue = [], []
        return items
