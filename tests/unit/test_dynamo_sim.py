"""Dynamo mode in a simulated network: three nodes' real DynamoEngine, Replication and Storage
(tmp_path), a fake clock for the replication timers, and a message queue that reorders, drops and
partitions. Seeded, so a failure replays. Clients write with contexts (get_versions, then a put or
delete with that context) on whichever node they pick, as the fault campaigns' workload does.

At the end, after the network heals: every node holds the same data (digest and applied vector), and
the convergence checker (zmqstore/testing/convergence.py) finds no acknowledged write lost, no value
nobody wrote, and nothing a write superseded come back. No sockets, no fsync: a simulated second
takes a fraction of a real one (docs/TESTING.md gives the figure).
"""
import random

import pytest

from zmqstore import config, errors, faults, join, protocol
from zmqstore.modes import DynamoMode
from zmqstore.sends import Sends
from zmqstore.storage import Storage
from zmqstore.testing.convergence import WriteOp, check
from zmqstore.testing.simnet import SimNetwork, simulations

IDS = (1, 2, 3)
PEERS = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in IDS]
STEP = 0.01            # simulated seconds per step
KEYS = [b"k%d" % i for i in range(6)]     # few keys: concurrent writes to one key are common


class SimNode:
    """A node without its loop: its real DynamoMode, and what node.py does around it."""

    def __init__(self, net, node_id, data_dir, joined=None):
        """joined: (counter, members) of the ADD_MEMBER reply that added this node (--join)."""
        self.net, self.node_id = net, node_id
        flags = {"join": "127.0.0.2:9000"} if joined else {"peers": [p for p in PEERS if p["node_id"] != node_id]}
        self.cfg = config.resolve(None, {"node_id": node_id, "mode": "dynamo", "host": f"127.0.0.{node_id + 1}",
                                         "port": 9000, "data_dir": data_dir, "fsync": False, **flags})
        self.storage = Storage.open(data_dir, node_id, "dynamo", fsync=False)
        if joined:
            join._record(self.cfg, self.storage, *joined)     # what join_cluster records
        self.mode = DynamoMode(Sends(), self.storage, self.cfg, faults.NONE, net.now)
        self.engine, self.rep, self.peering = self.mode.engine, self.mode.replication, self.mode.peering
        self.next_tick = net.now + random.Random(node_id).uniform(0, 0.1)
        self.next_chores = net.now + 1.0

    def end_iteration(self):
        """node.py's end of an iteration (modes.Mode.end_iteration): one flush, then what it made
        durable goes out."""
        self.mode.end_iteration(lambda items: self.net.send_all(self.node_id, items), lambda fail_all: None)


class SimNet(SimNetwork):
    def __init__(self, tmp_path, seed):
        super().__init__(seed)
        self.nodes = {n: SimNode(self, n, str(tmp_path / f"n{n}")) for n in IDS}
        self.history = []           # WriteOp of every acknowledged write
        self.values = 0

    def run(self, seconds, writes_per_step=0.5):
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            for node in self.nodes.values():
                if self.now >= node.next_tick:
                    node.next_tick += node.cfg.election_interval / 5
                    node.rep.tick(self.now)
                if self.now >= node.next_chores:
                    node.next_chores += 1.0
                    node.engine.housekeeping(self.now)
                    node.rep.housekeeping(self.now)
                node.end_iteration()
            self.deliver()
            if self.rng.random() < writes_per_step:
                self._write()

    def _call(self, node, command, *args):
        self.values += 1
        body = protocol.encode_request(command, b"sim-client", self.values, self.values, *args)
        reply, _batch = node.engine.handle(protocol.decode_request(body))
        return protocol.decode_reply(reply).result

    def _write(self):
        """Read a key's versions on one node, then put (or delete) with that context there. The
        write is acknowledged once its batch is flushed: at once, here. A removed node refuses."""
        node = self.nodes[self.rng.choice(sorted(self.nodes))]
        if node.engine.membership.removed_by is not None:
            return
        key = self.rng.choice(KEYS)
        siblings, raw_ctx = self._call(node, "GET_VERSIONS", key)
        seen = tuple((origin, seq, None if value is None else protocol.unpack_value(value))
                     for value, origin, seq, _hlc in siblings)
        delete = seen and self.rng.random() < 0.2
        value = None if delete else self.values + 1
        _applied, seq, origin = self._call(node, "PUT_CTX", key, None if delete else protocol.pack_value(value),
                                           raw_ctx)
        node.end_iteration()
        self.history.append(WriteOp(node.node_id, "delete" if delete else "put", key.decode(), value,
                                    protocol.decode_context(raw_ctx), self.now, self.now, "ok", (origin, seq), seen))

    def restart(self, node_id):
        """Crash and restart a node between steps (what it acknowledged was flushed): messages in
        flight to it are lost, and it comes back from its data dir with a new origin."""
        self.nodes[node_id] = SimNode(self, node_id, self.crash(node_id).storage.path)

    def change(self, via, command, *args):
        """ADD_MEMBER or REMOVE_MEMBER on node `via`, as a client sends it (modes.DynamoMode.handle,
        its removal check included); the reply's result, or the error raised."""
        node = self.nodes[via]
        self.values += 1
        body = protocol.encode_request(command, b"sim-admin", self.values, self.values, *args)
        try:
            reply, _until = node.mode.handle(protocol.decode_request(body), [b"admin"], self.now)
        except errors.ZmqstoreError as exc:
            return exc
        node.end_iteration()
        return protocol.decode_reply(reply).result

    def join(self, node_id, via, tmp_path):
        """A new node started with --join through `via`."""
        result = self.change(via, "ADD_MEMBER", node_id, f"127.0.0.{node_id + 1}", 9000, None, None, None)
        counter, records = result[1], result[2]
        members = [protocol.Member(r["node_id"], r["host"], r["port"], r["pub_port"], r["peer_port"], True, None)
                   for r in records]
        self.nodes[node_id] = SimNode(self, node_id, str(tmp_path / f"n{node_id}"), joined=(counter, members))

    def finals(self):
        out = {}
        for node_id, node in self.nodes.items():
            states = {}
            for key in KEYS:
                state = node.engine.load(key)
                if state.siblings:
                    states[key.decode()] = (
                        [(None if s.value is None else protocol.unpack_value(s.value), s.node, s.seq, s.value is None)
                         for s in state.siblings], dict(state.ctx))
            out[node_id] = states
        return out

    def converged(self):
        engines = [n.engine for n in self.nodes.values()]
        if len({e.membership.encoded for e in engines}) != 1:
            return False
        return (len({e.durable_digest for e in engines}) == 1
                and all(e.durable_applied == engines[0].durable_applied for e in engines))

@pytest.fixture
def net(tmp_path):
    with simulations(tmp_path, SimNet) as start:
        yield start


def settle_and_check(sim):
    """Heal, let anti-entropy and the logs bring every node level, then check the end state."""
    sim.heal()
    for _ in range(40):
        sim.run(0.5, writes_per_step=0)
        if sim.converged():
            break
    assert sim.converged(), {n: (node.engine.durable_digest, node.engine.durable_applied)
                             for n, node in sim.nodes.items()}
    verdict = check(sim.history, sim.finals())
    assert verdict.ok, verdict.report()
    return verdict


@pytest.mark.parametrize("seed", range(12))
def test_random_partitions_drops_and_restarts_converge_without_losing_a_write(net, seed):
    sim = net(seed)
    rng = random.Random(2000 + seed)
    sim.run(0.5)
    sim.random_phases(rng, 6)
    verdict = settle_and_check(sim)
    assert verdict.acknowledged > 50


@pytest.mark.parametrize("seed", range(8))
def test_membership_changes_under_faults_converge_without_losing_a_write(net, seed, tmp_path):
    """Node 4 joins through a random member and a random node is removed through another while
    links are cut, messages dropped and nodes restarted. The removal is asked until the asked node
    takes it (it refuses while the target holds writes it lacks, and a node that has not heard of
    node 4 yet answers that it is no member); the removed node learns it and
    stops taking writes. At the end every node holds the same membership, the removed node out, and
    the remaining nodes the same data, with no acknowledged write lost."""
    sim = net(seed)
    rng = random.Random(3000 + seed)
    sim.run(0.5)
    sim.random_phases(rng, 2)
    sim.join(4, rng.choice(IDS), tmp_path / f"seed{seed}")
    sim.random_phases(rng, 2)
    target = rng.choice((1, 2, 3, 4))
    via = rng.choice([n for n in (1, 2, 3, 4) if n != target])
    for _ in range(200):
        # Unavailable while the target holds writes `via` lacks; "not a member" while `via` has not
        # heard of node 4 yet: asked again once the records have spread.
        result = sim.change(via, "REMOVE_MEMBER", target)
        if not isinstance(result, errors.ZmqstoreError) and result[0]:
            break
        assert isinstance(result, errors.Unavailable) or target not in sim.nodes[via].engine.membership.members
        sim.heal()
        sim.run(0.1)
    assert result[0] is True, result
    sim.random_phases(rng, 2)
    sim.heal()
    for _ in range(40):
        sim.run(0.5, writes_per_step=0)
        if sim.nodes[target].engine.role == "removed":
            break
    assert sim.nodes[target].engine.role == "removed"
    removed = sim.nodes.pop(target)
    try:
        verdict = settle_and_check(sim)
    finally:
        removed.storage.close()
    assert sorted(sim.nodes[via].engine.membership.members) == sorted((set(IDS) | {4}) - {target})
    assert verdict.acknowledged > 30
