"""Elections in a simulated network: three nodes' real Roles, Engine and Storage (tmp_path), a fake
clock, and a message queue that reorders, drops and partitions. Seeded, so a failure replays.

Checked at every step: no two nodes lead the same term (election safety). At the end, after the
network heals: one primary, every write any primary acknowledged is in its log with its value, and
every node's applied data agrees with it.
"""
import contextlib
import random
import shutil

import pytest

from zmqstore import config, errors, faults, protocol
from zmqstore.modes import LeaderMode
from zmqstore.sends import Sends
from zmqstore.storage import Storage
from zmqstore.testing.simnet import SimNetwork, simulations

IDS = (1, 2, 3)
PEERS = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in IDS]
SPARES = (4, 5)    # started only when a membership change adds them (as --join would)
STEP = 0.01        # simulated seconds per step


class SimNode:
    def __init__(self, net, node_id, data_dir, role):
        self.net, self.node_id = net, node_id
        peers = [] if node_id in SPARES else [p for p in PEERS if p["node_id"] != node_id]
        cfg = config.resolve(None, {"node_id": node_id, "host": f"127.0.0.{node_id + 1}", "port": 9000,
                                    "data_dir": data_dir, "role": role, "peers": peers})
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
                try:
                    _reply, seq = node.engine.handle(req)
                except errors.NotPrimary:
                    continue        # leaving the cluster: a client would go to another node
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


class MembershipSim(SimNet):
    """SimNet with membership changes (docs/MEMBERSHIP.md): the primary adds a spare (started once
    the change commits, its data dir given the committed membership, as --join does) or removes a
    member (which stays running, removed, until a later change adds it back)."""

    def __init__(self, tmp_path, seed):
        super().__init__(tmp_path, seed)
        self.tmp_path = tmp_path
        self.changes = []           # (kind, node id, seq) of every change a primary accepted
        self._joins = []            # (node id, primary id, term, seq, membership): start it once seq commits there
        self._rejoin = set()        # nodes whose join's outcome is unknown: --join asks again
        self._runs = 0

    def change_membership(self, rng):
        primaries = self.primaries()
        if not primaries:
            return
        leader = self.nodes[primaries[0]]
        members = leader.engine.membership.members
        absent = [n for n in (*IDS, *SPARES) if n not in members]
        rejoining = bool(self._rejoin)
        if rejoining:
            node_id = self._rejoin.pop()
            args = ("ADD_MEMBER", node_id, f"127.0.0.{node_id + 1}", 9000, None, None, None)
        elif absent and (rng.random() < 0.5 or len(members) <= 2):
            node_id = rng.choice(absent)
            args = ("ADD_MEMBER", node_id, f"127.0.0.{node_id + 1}", 9000, None, None, None)
        else:
            node_id = rng.choice(sorted(members))
            args = ("REMOVE_MEMBER", node_id)
        self._writes += 1
        req = protocol.decode_request(protocol.encode_request(args[0], b"admin", self._writes, self._writes, *args[1:]))
        try:
            _reply, seq = leader.engine.handle(req)
        except (errors.ChangeInProgress, errors.BadArgument, errors.NotPrimary):
            if rejoining:
                self._rejoin.add(node_id)       # a join asks until it is answered
            return
        leader.end_iteration()
        self.changes.append((args[0], node_id, seq))
        if args[0] == "ADD_MEMBER":
            # the membership the change made, as the reply to --join carries it
            self._joins.append((node_id, leader.node_id, leader.storage.term, seq, leader.engine.membership))

    def _collect_acks(self):
        super()._collect_acks()
        waiting = []
        for join in self._joins:
            node_id, leader_id, term, seq, membership = join
            leader = self.nodes.get(leader_id)
            if leader is None or leader.roles.primary is None or leader.storage.term != term:
                self._rejoin.add(node_id)       # its outcome is unknown: --join asks again
                continue
            if leader.engine.commit_seq < seq:
                waiting.append(join)
                continue
            self._start_joined(node_id, membership)
        self._joins = waiting

    def finish_joins(self, rng):
        """What --join keeps doing until it has an answer: ask again for every join left unknown."""
        for _ in range(20):
            if not self._rejoin and not self._joins:
                return
            if self._rejoin:
                self.change_membership(rng)
            self.run(0.3)
        raise AssertionError(f"joins never answered: {sorted(self._rejoin)}, {self._joins}")

    def _start_joined(self, node_id, membership):
        """What --join does once the cluster committed the change: record that membership in a data
        dir (a new one; a removed node that is still running is stopped first), then start."""
        if node_id in self.nodes:
            self.crash(node_id)
        self._runs += 1
        data_dir = str(self.tmp_path / f"n{node_id}-joined{self._runs}")
        storage = Storage.open(data_dir, node_id, "leader", fsync=False)
        batch = storage.batch()
        batch.set_members(protocol.encode_members(membership.seq, membership.member_list))
        storage.commit(batch)
        storage.close()
        self.nodes[node_id] = SimNode(self, node_id, data_dir, None)

    def restart(self, node_id):
        old = self.crash(node_id)
        self.nodes[node_id] = SimNode(self, node_id, old.storage.path, None)


@pytest.fixture
def membership_net(tmp_path):
    with simulations(tmp_path, MembershipSim) as start:
        yield start


@pytest.mark.parametrize("seed", range(24))
def test_membership_changes_under_faults_keep_one_leader_per_term_and_every_acked_write(membership_net, seed):
    sim = membership_net(seed)
    rng = random.Random(2000 + seed)
    sim.run(1.0)
    for _ in range(10):
        ids = sorted(sim.nodes)
        a, b = rng.sample(ids, 2)
        sim.cut = {frozenset((a, b))} if rng.random() < 0.5 else set()
        sim.drop_rate = rng.choice((0.0, 0.1))
        if rng.random() < 0.3:
            sim.restart(rng.choice(ids))
        sim.change_membership(rng)
        if rng.random() < 0.4:
            sim.change_membership(rng)      # at once: refused while the first is not committed
        sim.run(rng.uniform(0.3, 1.2))
    sim.heal()
    sim.run(3.0)
    sim.finish_joins(rng)
    primaries = sim.primaries()
    assert len(primaries) == 1, f"after healing: primaries {primaries}"
    leader = sim.nodes[primaries[0]]
    sim.run(1.5, write_every=10.0)
    for key, value in sim.acked.items():
        got, _ = leader.engine.lookup(key)
        assert got is not None and protocol.unpack_value(got) == value, f"acknowledged {key!r} lost"
    membership = leader.engine.membership
    for node_id, node in sim.nodes.items():
        if node_id in membership.members:
            assert node.engine.membership.seq == membership.seq, f"node {node_id} uses another membership"
            assert node.storage.applied_seq == leader.storage.applied_seq, f"node {node_id} did not converge"
        else:
            assert node.roles.removed or node.engine.membership.seq < membership.seq
    assert len(sim.changes) >= 3 and len(sim.acked) > 20


def _restore(base, n):
    """Node n's data dir seeded from base/sim.backup, as --restore does (backup.restore_into)."""
    from zmqstore.backup import restore_into
    cfg = config.resolve(None, {"node_id": n, "data_dir": str(base / f"n{n}"), "restore": str(base / "sim.backup")})
    storage = Storage.open(cfg.data_dir, n, "leader", fsync=False)
    restore_into(storage, cfg)
    storage.close()


@contextlib.contextmanager
def restored_sim(tmp_path, seed, items=20, seq=50, term=3):
    """A simulation whose three data dirs were restored from one backup (term 3, seq 50)."""
    from zmqstore.protocol import files
    random.seed(seed)
    base = tmp_path / "restored"
    base.mkdir()
    with open(base / "sim.backup", "wb") as f:
        writer = files.BackupWriter(f, {"mode": "leader", "kind": "backup", "seq": seq, "term": term})
        writer.page([[b"r%d" % i, protocol.pack_value(i)] for i in range(items)])
        writer.finish()
    for n in IDS:
        _restore(base, n)
    sim = SimNet(base, seed, bootstrap=())
    try:
        yield sim
    finally:
        sim.close()


@pytest.mark.parametrize("seed", range(6))
def test_restored_nodes_elect_their_first_primary_in_the_genesis_term(tmp_path, seed):
    """Three data dirs restored from one backup (term 3): they elect one primary in term 4, their
    genesis election, over a lossy network, even with the lowest id down; then it takes writes."""
    with restored_sim(tmp_path, seed) as sim:
        sim.drop_rate = 0.2
        if seed % 2:
            sim.crash(1)
            del sim.nodes[1]                    # down for the whole test
        sim.run(3.0)
        primaries = sim.primaries()
        assert len(primaries) == 1 and sim.leaders.get(4) == primaries[0], (primaries, sim.leaders)
        assert primaries[0] == (2 if seed % 2 else 1)
        leader = sim.nodes[primaries[0]]
        assert protocol.unpack_value(leader.engine.lookup(b"r7")[0]) == 7
        assert sim.acked        # writes committed on top of the restore point


def test_a_restored_node_whose_cluster_went_on_does_not_vote_in_its_genesis_term(tmp_path):
    """A member's data dir lost and restored again from the old file while the cluster is in later
    terms: it must not vote or stand in the restore's election (it may have voted in those terms
    before), only catch up as a learner."""
    with restored_sim(tmp_path, 1) as sim:
        sim.run(2.0)
        first = sim.primaries()[0]
        path = sim.crash(first).storage.path    # a new primary, in a later term
        del sim.nodes[first]
        sim.run(2.0)
        second = sim.primaries()
        assert second and sim.nodes[second[0]].storage.term > 4
        sim.nodes[first] = SimNode(sim, first, path, None)
        sim.run(1.0)
        other = next(n for n in IDS if n not in sim.primaries())
        node = sim.crash(other)
        shutil.rmtree(node.storage.path)
        _restore(tmp_path / "restored", other)
        sim.nodes[other] = SimNode(sim, other, node.storage.path, None)
        assert sim.nodes[other].roles.genesis == 4 and sim.nodes[other].storage.learner
        sim.run(3.0)
        st = sim.nodes[other].storage
        assert st.term > 4 and not (st.voted_for and st.term == 4), "it took part in the genesis term again"
        settle_and_check(sim)


@pytest.mark.parametrize("seed", range(8))
def test_the_genesis_election_never_has_two_primaries_when_the_lowest_id_comes_late(tmp_path, seed):
    """Node 1 (the lowest id) starts while node 2 already stands, and messages are lost: a node that
    gave its genesis vote to another must not stand in that term too (two primaries in term 4 would
    write different entries at the same seqs). Checked at every step by the simulation."""
    with restored_sim(tmp_path, seed) as sim:
        path = sim.crash(1).storage.path
        del sim.nodes[1]
        sim.drop_rate = 0.3
        sim.run(0.1 + 0.05 * seed)
        sim.nodes[1] = SimNode(sim, 1, path, None)
        sim.run(3.0)
        assert len(set(sim.leaders.values())) >= 1 and 4 in sim.leaders
        settle_and_check(sim)
