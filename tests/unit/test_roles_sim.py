"""Elections in a simulated network: three nodes' real Roles, Engine and Storage (tmp_path), a fake
clock, and a message queue that reorders, drops and partitions. Seeded, so a failure replays.

Checked at every step: no two nodes lead the same term (election safety). At the end, after the
network heals: one primary, every write any primary acknowledged is in its log with its value, and
every node's applied data agrees with it.
"""
import random

import pytest

from zmqstore import config, faults, protocol
from zmqstore.modes import LeaderMode
from zmqstore.sends import Sends
from zmqstore.storage import Storage
from zmqstore.testing.simnet import SimNetwork, simulations

IDS = (1, 2, 3)
PEERS = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in IDS]
STEP = 0.01        # simulated seconds per step


class SimNode:
    def __init__(self, net, node_id, data_dir, role):
        self.net, self.node_id = net, node_id
        cfg = config.resolve(None, {"node_id": node_id, "host": f"127.0.0.{node_id + 1}", "port": 9000,
                                    "data_dir": data_dir, "role": role,
                                    "peers": [p for p in PEERS if p["node_id"] != node_id]})
        self.storage = Storage.open(data_dir, node_id, "leader", fsync=False)   # a crash here is a process exit, not a power loss
        self.mode = LeaderMode(Sends(), self.storage, cfg, faults.NONE, net.now)
        self.engine, self.roles, self.peering = self.mode.engine, self.mode.roles, self.mode.peering
        self.tick_phase = random.Random(node_id).uniform(0, 0.1)
        self.next_tick = net.now + self.tick_phase

    def end_iteration(self):
        """What node.py does after each batch of input (modes.Mode.end_iteration), minus the
        sockets and the client replies (_collect_acks reads the commit seq instead)."""
        self.mode.end_iteration(lambda items: self.net.send_all(self.node_id, items), lambda fail_all: None)


class SimNet(SimNetwork):
    def __init__(self, tmp_path, seed, bootstrap=(1,)):
        super().__init__(seed)
        self.nodes = {n: SimNode(self, n, str(tmp_path / f"n{n}"), "primary" if n in bootstrap else None)
                      for n in IDS}
        self.leaders = {}           # term -> node id that led it
        self.acked = {}             # key -> value, acknowledged by a primary
        self._writes = 0
        self._waiting = []          # (node id, term, seq, key, value)

    def run(self, seconds, write_every=0.05):
        end = self.now + seconds
        next_write = self.now
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            for node in self.nodes.values():
                node.roles.note_loop(self.now)
                if self.now >= node.next_tick:
                    node.next_tick += 0.1
                    node.roles.tick(self.now)
                    node.end_iteration()
            self.deliver()
            if self.now >= next_write:
                next_write = self.now + write_every
                self._write()
            self._collect_acks()
            self._check_one_leader_per_term()

    def _write(self):
        for node in self.nodes.values():
            if node.roles.primary is not None:
                self._writes += 1
                key = b"k%d" % self._writes
                req = protocol.decode_request(protocol.encode_request(
                    "PUT", b"sim", self._writes, self._writes, key, protocol.pack_value(self._writes)))
                _reply, seq = node.engine.handle(req)
                self._waiting.append((node.node_id, node.storage.term, seq, key, self._writes))
                node.end_iteration()

    def _collect_acks(self):
        still = []
        for node_id, term, seq, key, value in self._waiting:
            node = self.nodes[node_id]
            if node.roles.primary is None or node.storage.term != term:
                continue      # the primary stepped down: the client would get replication_timeout
            if node.engine.commit_seq >= seq:
                self.acked[key] = value
            else:
                still.append((node_id, term, seq, key, value))
        self._waiting = still

    def _check_one_leader_per_term(self):
        for node in self.nodes.values():
            if node.roles.primary is not None:
                term = node.storage.term
                assert self.leaders.setdefault(term, node.node_id) == node.node_id, \
                    f"two primaries in term {term}: {self.leaders[term]} and {node.node_id} at t={self.now}"

    def restart(self, node_id):
        """Crash and restart a node between steps (everything it acknowledged was synced): messages
        in flight to it are lost, and it comes back from its data dir."""
        old = self.crash(node_id)
        self.nodes[node_id] = SimNode(self, node_id, old.storage.path, "primary" if node_id == 1 else None)

    def primaries(self):
        return [n for n, node in self.nodes.items() if node.roles.primary is not None]

@pytest.fixture
def net(tmp_path):
    with simulations(tmp_path, SimNet) as start:
        yield start


def settle_and_check(sim):
    """Heal the network, let it settle, then check the end state."""
    sim.heal()
    sim.run(3.0)
    primaries = sim.primaries()
    assert len(primaries) == 1, f"after healing: primaries {primaries}"
    leader = sim.nodes[primaries[0]]
    sim.run(1.0, write_every=10.0)      # let the last writes commit and reach everyone
    for key, value in sim.acked.items():
        got, _ = leader.engine.lookup(key)
        assert got is not None and protocol.unpack_value(got) == value, f"acknowledged {key!r} lost"
    for node in sim.nodes.values():
        assert node.storage.applied_seq == leader.storage.applied_seq, f"node {node.node_id} did not converge"
    return leader


@pytest.mark.parametrize("seed", range(8))
def test_bootstrap_with_two_nodes_told_to_bootstrap(net, seed):
    sim = net(seed, bootstrap=(1, 2))
    sim.drop_rate = 0.2
    sim.run(2.0)
    settle_and_check(sim)
    assert len(sim.primaries()) == 1


@pytest.mark.parametrize("seed", range(8))
def test_primary_cut_off_lowest_available_takes_over(net, seed):
    sim = net(seed)
    sim.run(2.0)
    assert sim.primaries() == [1]
    sim.cut = {frozenset((1, 2)), frozenset((1, 3))}
    sim.run(2.0)
    assert 2 in sim.primaries() and max(sim.leaders) >= 2 and sim.leaders[max(sim.leaders)] == 2
    leader = settle_and_check(sim)
    assert leader.node_id == 2 and sim.nodes[1].roles.primary is None     # node 1 stepped down, follows


@pytest.mark.parametrize("seed", range(24))
def test_random_partitions_and_drops_keep_one_leader_per_term_and_every_acked_write(net, seed):
    sim = net(seed)
    rng = random.Random(1000 + seed)
    sim.run(1.0)
    sim.random_phases(rng, 8)       # crashes and restarts often hit the primary
    settle_and_check(sim)
    assert len(sim.acked) > 20
