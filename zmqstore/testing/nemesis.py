"""The fault campaigns' nemesis (chaos.py): one fault at a time from a seeded schedule, each healed
before the next (docs/TESTING.md)."""
import random
import signal
import time

from ..errors import ZmqstoreError

PROCESS_FAULTS = ("kill-primary", "kill-random", "pause-primary", "pause-random")
# Remove a node (the primary or another) from the membership, then stop it and start it again with
# --join: in leader mode it comes back as a learner that the primary promotes once caught up; in
# dynamo mode (no primary: remove-random only) from an empty data dir, as a removed node must.
MEMBERSHIP_FAULTS = ("remove-primary", "remove-random")
# Need iptables (root): partition.py. isolate cuts one node off from all others; split cuts the
# cluster into a random majority and minority (in 3 nodes, like isolate-random); bridge splits the
# others into two sides that only one node, the bridge, still sees both of; a flapping link is cut
# and restored every 0.1-0.3 s.
NETWORK_FAULTS = ("isolate-primary", "isolate-random", "split", "bridge", "flap")


class Nemesis:
    """Injects one fault at a time from a seeded schedule: kill -9 (then restart) or SIGSTOP (then
    SIGCONT) of the primary or of a random node and, with a Partitioner, network partitions."""

    def __init__(self, cluster, seed, partitioner=None, client_keys=None):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.partitioner = partitioner
        self.faults = PROCESS_FAULTS + (NETWORK_FAULTS if partitioner is not None else ())
        self.client_keys = client_keys or {}
        self.log = []            # (time, fault, node)
        self._fresh = 0          # data dirs made for dynamo rejoins

    def run(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(0.5, 1.5))
            if time.monotonic() >= end:
                break
            fault = self.rng.choice(self.faults)
            nodes = sorted(self.cluster.nodes)
            # Every draw happens whatever the cluster looks like, so a seed replays its schedule.
            target = self.rng.choice(nodes)
            duration = self.rng.uniform(0.5, 2.0)
            sub = random.Random(self.rng.random())     # draws whose count depends on timing
            if fault.endswith("primary"):
                found = self.cluster.primaries()
                target = min(found) if found else target
            self.log.append((round(time.monotonic(), 3), fault, target))
            node = self.cluster.nodes[target]
            if fault.startswith("kill"):
                node.kill()
                time.sleep(duration)
                self.cluster.start(target, wait=False)
            elif fault.startswith("pause"):
                node.signal(signal.SIGSTOP)
                time.sleep(duration)
                node.signal(signal.SIGCONT)
            elif fault.startswith("isolate"):
                self.partitioner.isolate(target)
                time.sleep(duration)
            elif fault == "split":
                shuffled = sub.sample(nodes, len(nodes))
                minority = sub.randint(1, (len(nodes) - 1) // 2)
                self.partitioner.split(shuffled[:minority], shuffled[minority:])
                time.sleep(duration)
            elif fault == "bridge":
                others = sub.sample([n for n in nodes if n != target], len(nodes) - 1)
                half = len(others) // 2
                self.partitioner.split(others[:half], others[half:])
                time.sleep(duration)
            elif fault.startswith("remove"):
                self._remove_and_rejoin(target, duration)
            elif fault == "flap":
                other = sub.choice([n for n in nodes if n != target])
                until = time.monotonic() + duration
                while time.monotonic() < until:
                    self.partitioner.cut(target, other)
                    time.sleep(sub.uniform(0.1, 0.3))
                    self.partitioner.heal()
                    time.sleep(sub.uniform(0.1, 0.3))
            else:
                raise ValueError(f"unknown fault {fault!r}")
            if self.partitioner is not None:
                self.partitioner.heal()

    def _remove_and_rejoin(self, target, duration):
        """remove_member(target) through any node (its outcome may stay unknown: a fault may be under
        way), then after `duration` restart the node with --join, which asks to be added again (or
        finds itself still a member)."""
        from ..client import Client, Retry     # the nemesis of process faults needs no client
        try:
            with Client(self.cluster.endpoints, timeout=1.0, retry=Retry(max_tries=20, deadline=5.0),
                        **self.client_keys) as db:
                db.remove_member(target)
        except ZmqstoreError:
            pass
        time.sleep(duration)
        self._rejoin(target)

    def _rejoin(self, node_id):
        """Kill the node and start it again with --join naming the others' client ports. A dynamo
        node that was removed starts from an empty data dir (its old one is refused); one whose
        removal did not happen keeps its data dir, which may hold writes no other node has."""
        nodes = self.cluster.nodes
        node = nodes[node_id]
        data_dir = None
        if self.cluster.mode == "dynamo" and self._removed_by_the_others(node_id):
            # As an operator would: its old data dir is dropped only once no member still fetches
            # from it (it may hold writes it took before it heard of its removal).
            self._wait_let_go(node_id)
            self._fresh += 1
            data_dir = f"{node.data_dir.rstrip('/').split('-again')[0]}-again{self._fresh}"
        node.kill()
        node.join = ",".join(n.endpoint for i, n in sorted(nodes.items()) if i != node_id)
        self.cluster.start(node_id, wait=False, data_dir=data_dir)

    def _wait_let_go(self, node_id, timeout=30.0):
        """Dynamo mode: until no other node lists node_id under `leaving` in its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [n.status() for i, n in self.cluster.nodes.items() if i != node_id]
            if all(node_id not in st.get("leaving", ()) for st in statuses if st is not None):
                return
            time.sleep(0.1)
        self.log.append((round(time.monotonic(), 3), "not-let-go", node_id))

    def _removed_by_the_others(self, node_id, timeout=10.0):
        """Dynamo mode: whether the other nodes that answer agree that node_id is no member (they
        exchange their records within a heartbeat or two; asked until they agree, up to `timeout`).
        When they never agree it counts as a member: its data dir is kept."""
        deadline = time.monotonic() + timeout
        while True:
            views = set()
            for i, other in self.cluster.nodes.items():
                st = other.status() if i != node_id else None
                if st is not None and st.get("role") != "removed":
                    views.add(node_id in {m["node_id"] for m in st.get("members", [])})
            if len(views) == 1 or time.monotonic() >= deadline:
                return views == {False}
            time.sleep(0.1)

    def heal(self):
        if self.partitioner is not None:
            self.partitioner.heal()
        for node_id, node in self.cluster.nodes.items():
            if node.alive():
                node.signal(signal.SIGCONT)
            else:
                self.cluster.start(node_id, wait=False)
        # A removal whose request timed out may still have committed later (under another fault), after
        # its node had rejoined: that node is removed now, as an operator would see in its status. It is
        # brought back as they would bring it back: restarted with --join.
        if any(kind.startswith("remove") for kind in self.faults):
            deadline, quiet = time.monotonic() + 10.0, 0
            while time.monotonic() < deadline and quiet < 2:
                roles = [(i, (n.status() or {}).get("role")) for i, n in self.cluster.nodes.items()]
                removed = [i for i, role in roles if role == "removed"]
                for node_id in removed:
                    self.log.append((round(time.monotonic(), 3), "rejoin-removed", node_id))
                    self._rejoin(node_id)
                led = self.cluster.mode == "dynamo" or any(role == "primary" for _i, role in roles)
                quiet = quiet + 1 if not removed and led else 0
                time.sleep(0.5)


# ---------------------------------------------------------------- campaign
