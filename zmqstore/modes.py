"""The two modes behind one interface, so that the loop (node.py) never asks which one it runs
(docs/ARCHITECTURE.md, "The shape both modes are moving to").

What the loop asks of a mode:
- `handle(request, envelope, now)`: a client request -> (reply, until), `until` being what the
  reply waits for, never something already true (None: it leaves at once; replies.py relies on
  that); or None when the mode answers it later itself (a dynamo read from several nodes).
- `end_iteration(release)`: the iteration's commit (stream, one batch and fsync, commit counting),
  calling `release()` where held replies may go;
- `ready()`: the readiness rule for held replies at this moment, `progress()`: a value that changes
  whenever that rule may accept more (so an unchanged one saves the queue a pass), and
  `expired(held)`: a held reply's error body at its deadline;
- `after_replies()`: what follows the replies (leader: apply what committed; dynamo: send what the
  flush made durable);
- `engine` (the node's state and client commands) and `peering` (peer traffic; None standalone).
Dynamo mode also has `until_durable(batch)`, for the replies its Replication builds (node.reply_after).
"""
import time

from . import __version__, errors, protocol
from .dynamo import DynamoEngine, Replication
from .engine import Engine
from .roles import Roles

LINEARIZABLE_READS = ("GET", "SCAN")


def not_confirmed(held, config):
    """The error a held reply gets at its deadline: a write's outcome is unknown, a read failed."""
    if held.is_write:
        return protocol.encode_error(
            held.request_id, "replication_timeout", f"not confirmed by write_quorum = {config.write_quorum} "
            f"nodes within {config.replication_timeout} s; the outcome is unknown")
    return protocol.encode_error(held.request_id, "unavailable", "leadership or commit not confirmed in time")


class LeaderMode:
    """One primary orders every write (docs/REPLICATION.md): `Engine`, and `Roles` when replicated.
    A reply waits for (commit seq, read round): its write's entry committed, and for a linearizable
    read on a replicated primary, a heartbeat round started after it arrived confirmed."""

    def __init__(self, node, storage, config, faults, now):
        self.config, self.faults = config, faults
        self.engine = Engine(storage, config, __version__)
        self.roles = self.peering = None
        self._round_wanted = False
        if config.peers:
            self.roles = self.peering = Roles(node, self.engine, config, now, faults)
            self.engine.extra_status = lambda: self.roles.status(time.monotonic())
        else:
            self.engine.become_primary(max(storage.term, 1))

    @property
    def primary(self):
        """The Primary side while this node leads a replicated cluster, else None."""
        return self.roles.primary if self.roles is not None else None

    def handle(self, request, envelope, now):
        reply, wait_seq = self.engine.handle(request)
        primary = self.primary
        wait_round = 0
        if (primary is not None and request.command in LINEARIZABLE_READS and not request.args[-1]
                and not self.faults.deposed_reads):
            wait_round = primary.round + 1   # linearizable: a round started after this read arrived
            self._round_wanted = True
        if wait_seq <= self.engine.commit_seq and not wait_round:
            return reply, None
        return reply, (wait_seq, wait_round)

    def ready(self):
        commit = self.engine.commit_seq
        primary = self.primary
        confirmed = primary.confirmed_round() if primary is not None else 0
        return lambda until: until[0] <= commit and until[1] <= confirmed

    def progress(self):
        primary = self.primary
        return self.engine.commit_seq, primary.confirmed_round() if primary is not None else 0

    def expired(self, held):
        return not_confirmed(held, self.config)

    def end_iteration(self, release):
        """Stream and commit what was staged: a replicated primary publishes the staged entries,
        writes the batch with one fsync, then counts what a quorum holds."""
        engine, primary = self.engine, self.primary
        if primary is not None:
            # ACKs taken in this iteration may have committed earlier writes: their replies leave
            # now, not after the fsync of what this iteration staged.
            release()
            staged = engine.take_staged()
            if staged is not None:
                primary.publish_entries(*staged)
                engine.apply_to_commit()   # joins the staged batch
            engine.flush()
            primary.advance_commit()
            if self._round_wanted:
                self._round_wanted = False
                primary.heartbeat(start_round=True)
            primary.publish_commit_if_moved()
        else:
            engine.flush()
        release()

    def after_replies(self):
        """Apply what committed (after the replies: data is read only by later requests)."""
        if self.primary is not None:
            self.engine.apply_to_commit()


class DynamoMode:
    """Every node accepts writes (docs/DYNAMO.md): `DynamoEngine`, and `Replication` with peers. A
    reply waits for (batch, seq, need): the batch that makes it durable here and, for a write with
    w = need > 1, need nodes holding entry seq of this run's origin."""

    def __init__(self, node, storage, config, faults, now):
        self.config = config
        self.engine = DynamoEngine(storage, config, __version__, faults)
        self.replication = self.peering = None
        if config.peers:
            self.replication = self.peering = Replication(node, self.engine, config, now)
            self.engine.extra_status = lambda: self.replication.status(time.monotonic())

    def handle(self, request, envelope, now):
        """A read with r > 1 goes to the peers (None: Replication answers it); a write with w > 1
        waits until w nodes hold it. A standalone node refuses quorums above 1."""
        cfg, command = self.config, request.command
        if command in ("GET", "GET_VERSIONS"):
            need = request.options.get("r", cfg.read_quorum)
            if need > 1:
                if need > cfg.cluster_size:
                    raise errors.BadArgument(f"r = {need} exceeds the cluster's {cfg.cluster_size} nodes")
                self.replication.quorum_read(request, envelope, need, now)
                return None
        need = 1
        if command in protocol.WRITE_COMMANDS:
            need = request.options.get("w", cfg.write_quorum)
            if need > cfg.cluster_size:
                raise errors.BadArgument(f"w = {need} exceeds the cluster's {cfg.cluster_size} nodes")
        reply, batch = self.engine.handle(request)
        seq = self.engine.last_write if need > 1 else None
        if seq is None:
            return reply, (None if batch <= self.engine.commit_seq else (batch, 0, 1))
        if batch <= self.engine.commit_seq and self.replication.copies(seq) >= need:
            return reply, None      # a retry whose write is durable and held by enough nodes already
        return reply, (batch, seq, need)

    def until_durable(self, batch):
        """What a reply built later (a quorum read's) waits for: its batch."""
        return None if batch <= self.engine.commit_seq else (batch, 0, 1)

    def ready(self):
        durable = self.engine.commit_seq
        copies = self.replication.copies if self.replication is not None else (lambda seq: 1)
        return lambda until: until[0] <= durable and (until[2] <= 1 or copies(until[1]) >= until[2])

    def progress(self):
        return self.engine.commit_seq, self.replication.acked if self.replication is not None else ()

    def expired(self, held):
        batch, seq, need = held.until
        if held.is_write and need > 1:
            copies = self.replication.copies(seq)
            return protocol.encode_error(
                held.request_id, "replication_timeout", f"write_quorum {need} not reached within "
                f"{self.config.replication_timeout} s ({copies} nodes hold it): the write is applied and "
                f"durable on this node and reaches the others when they can talk")
        return not_confirmed(held, self.config)

    def end_iteration(self, release):
        # DACKs taken in this iteration may have completed earlier writes' quorums: their replies
        # leave now, not after the fsync of what this iteration staged (the rule reads what is durable).
        release()
        self.engine.flush()
        release()

    def after_replies(self):
        """Publish this origin's new durable entries, tell each origin what this node holds, send
        read repairs (Replication.publish_new)."""
        if self.replication is not None:
            self.replication.publish_new()


MODES = {"leader": LeaderMode, "dynamo": DynamoMode}
