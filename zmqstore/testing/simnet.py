"""A simulated network for the state-machine simulations (tests/unit/test_roles_sim.py,
test_dynamo_sim.py, docs/TESTING.md): nodes in one process, a fake clock, and messages that queue,
arrive in random order, are dropped at `drop_rate` and never cross a cut link. Seeded by its
caller, so a failing run replays.

A node in `nodes` has `peering` (what takes peer messages: `on_request(message, sender, now)` and
`on_message(message, now)`), `end_iteration()` (what its loop does after each message: its
mode's end_iteration, with `send_all` carrying what the mode decided to send) and `mode`, whose
`peer_list()` says whom it takes messages from (node.py's gate and sockets follow it).
"""
import contextlib
import random

from .. import protocol, sends


@contextlib.contextmanager
def simulations(tmp_path, make):
    """A pytest fixture's body: yields `start(seed, ...)`, which seeds `random` (the code under test
    draws from it, so a failing seed replays exactly) and returns `make(directory, seed, ...)` in a
    directory of its own; every simulation started is closed at the end, even when the test fails."""
    made = []

    def start(seed, *args, **kwargs):
        random.seed(seed)
        base = tmp_path / f"seed{seed}"
        base.mkdir()
        made.append(make(base, seed, *args, **kwargs))
        return made[-1]
    try:
        yield start
    finally:
        for sim in made:
            sim.close()


class SimNetwork:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue = []             # (src, dst, kind, body); kind "req" (to a peer port) or "msg"
        self.cut = set()            # frozenset({a, b}) pairs that cannot talk
        self.drop_rate = 0.0
        self.nodes = {}

    def send(self, src, dst, kind, body):
        self.queue.append((src, dst, kind, body))

    def send_all(self, src, items):
        """A node's Sends items (sends.py) onto the network; a reply's envelope here is the node id
        the request came from."""
        for kind, target, body in items:
            if kind is sends.TO_PEER:
                self.send(src, target, "req", body)
            elif kind is sends.REPLY:
                self.send(src, target, "msg", body)
            else:       # PUBLISH: every other node subscribed to it (a topic, or the body's first bytes)
                first = body if target is None else target
                for dst, node in self.nodes.items():
                    topics = node.mode.topics()
                    if dst != src and (topics is None or any(first.startswith(t) for t in topics)):
                        self.send(src, dst, "msg", body)

    def deliver(self):
        """Every message queued so far, in random order (PUB and DEALER paths race)."""
        batch, self.queue = self.queue, []
        self.rng.shuffle(batch)
        for src, dst, kind, body in batch:
            if frozenset((src, dst)) in self.cut or self.rng.random() < self.drop_rate:
                continue
            node = self.nodes.get(dst)
            if node is None:
                continue    # a member that is not running (added, not started yet)
            if not any(peer.node_id == src for peer in node.mode.peer_list()):
                continue    # node.py connects to and admits only its mode's peer list (trust.py)
            message = protocol.decode_peer(body)
            if kind == "req":
                node.peering.on_request(message, src, self.now)
            else:
                node.peering.on_message(message, self.now)
            node.end_iteration()

    def heal(self):
        """Every link back, nothing dropped."""
        self.cut.clear()
        self.drop_rate = 0.0

    def close(self):
        for node in self.nodes.values():
            node.storage.close()

    def crash(self, node_id):
        """A crash between steps: the node's storage closes, messages in flight to it are lost.
        Returns the old node (its data dir restarts it)."""
        old = self.nodes[node_id]
        old.storage.close()
        self.queue = [m for m in self.queue if m[1] != node_id]
        return old

    def random_phases(self, rng, phases):
        """`phases` rounds of faults, each run for 0.3-1.5 simulated seconds: one link cut (60%) or one
        node cut off from the others, 0-30% of messages dropped, and often (40%) a crash and restart
        of a node. Needs the subclass's `run(seconds)` and `restart(node_id)`."""
        ids = sorted(self.nodes)
        for _ in range(phases):
            a, b = rng.sample(ids, 2)
            self.cut = {frozenset((a, b))} if rng.random() < 0.6 else {frozenset((a, x)) for x in ids if x != a}
            self.drop_rate = rng.choice((0.0, 0.1, 0.3))
            if rng.random() < 0.4:
                self.restart(rng.choice(ids))
            self.run(rng.uniform(0.3, 1.5))
