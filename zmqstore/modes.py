"""The two modes behind one interface, so that the loop (node.py) never asks which one it runs
(docs/ARCHITECTURE.md, "One shape for both modes").

What the loop asks of a mode:
- `handle(request, envelope, now)`: a client request -> (reply, until), `until` being what the
  reply waits for, never something already true (None: it leaves at once; replies.py relies on
  that). A dynamo read from several nodes is (None, its QuorumRead): the body comes with it.
- `end_iteration(send, release)`: the end of every loop iteration, the same for both modes and
  for the simulations: the iteration's single commit, what it decided to send (sends.py) after
  that commit, and the held replies released where they may go (see the method);
- `ready()`: the readiness rule for held replies at this moment, `progress()`: a value that changes
  whenever that rule may accept more (so an unchanged one saves the queue a pass), and
  `expired(held)`: a held reply's error body at its deadline;
- `engine` (the node's state and client commands) and `peering` (peer traffic; None standalone);
- `wake_at`: when the mode needs a loop iteration though nothing arrives (leader mode: a commit
  move no CHANGE carried, announced alone; inf when nothing waits), updated by each commit;
- `peer_list()`: the peers to connect to and admit, an unchanged tuple until the membership changes;
- `feed()`: what change feeds are served from (docs/WATCH.md), None when the mode serves none.
A mode is built with `out`, the Sends its peer traffic fills. It never sends a reply itself: every
reply it does not answer at once is held in the one queue (replies.py), a dynamo quorum read too.
"""
import random
import time
from math import inf

from . import __version__, errors, protocol
from .dynamo import DynamoEngine, QuorumRead, Replication
from .dynamo.forwarding import KEYED, Forward, partitions_of
from .replies import Replies
from .leader import Engine, Roles
from .dynamo.feed import DynamoFeed
from .leader.feed import LeaderFeed

LINEARIZABLE_READS = ("GET", "SCAN")


def not_confirmed(held, config):
    """The error a held reply gets at its deadline: a write's outcome is unknown, a read failed."""
    if held.is_write:
        return protocol.encode_error(
            held.request_id, "replication_timeout", f"not confirmed by write_quorum = {config.write_quorum} "
            f"nodes within {config.replication_timeout} s; the outcome is unknown")
    return protocol.encode_error(held.request_id, "unavailable", "leadership or commit not confirmed in time")


class Mode:
    """What both modes share: the end of a loop iteration, in one place."""

    out = None
    wake_at = inf       # when the mode needs an iteration though nothing arrives (set by its commit)

    def end_iteration(self, send, release):
        """Release the replies that this iteration's acknowledgements (ACK, DACK) made ready, or
        fail every held one when this node stopped leading; send what may leave before the commit
        (`prepare`: the primary's new entries); commit (one batch, one fsync: `commit`); send what
        the iteration decided, now persisted; release again; then what follows the replies
        (`after_replies`) and what it decided. `send(items)` takes Sends items, `release(fail_all)`
        releases held replies."""
        out = self.out
        release(self.take_failed())
        self.prepare()
        if out.early:
            send(out.take_early())
        self.commit()
        if out:
            send(out.take())
        release(False)
        self.after_replies()
        if out:
            send(out.take())

    def take_failed(self) -> bool:
        """Whether every held reply must fail now (leader mode: this node stopped leading)."""
        return False

    def feed(self):
        """What watches are served from (docs/WATCH.md); None: WATCH is refused."""
        return None

    def topics(self):
        """What the SUBs take of the peers' streams: None for everything (transport.set_topics)."""
        return None

    def round_trips(self) -> dict:
        """Peer id -> a copy of its round-trip Histogram (metrics.py): leader mode, on the primary,
        publish to ACK; dynamo mode, status query to reply."""
        return {}

    def prepare(self):
        """Before the commit: stage what may leave before it."""

    def commit(self):
        raise NotImplementedError

    def after_replies(self):
        """After the replies left."""


class LeaderMode(Mode):
    """One primary orders every write (docs/REPLICATION.md): `Engine`, and `Roles` when replicated.
    A reply waits for (commit seq, read round): its write's entry committed, and for a linearizable
    read on a replicated primary, a heartbeat round started after it arrived confirmed."""

    def __init__(self, out, storage, config, faults, now):
        self.out, self.config, self.faults = out, config, faults
        self.engine = Engine(storage, config, __version__)
        self.roles = self.peering = None
        self._round_wanted = False
        self._topics = protocol.leader_topics(config.node_id)
        if self.engine.replicated:     # peers by its flags, or by the membership its data records
            self.roles = self.peering = Roles(out, self.engine, config, now, random.random, faults)
            self.engine.extra_status = lambda: self.roles.status(time.monotonic())
        else:
            self.engine.become_primary(max(storage.term, 1))

    def peer_list(self) -> tuple:
        """The peers to connect to and admit (the same tuple until the membership changes)."""
        return self.roles.contacts if self.roles is not None else ()

    def feed(self):
        return LeaderFeed(self.engine)

    def topics(self):
        """Untagged stream messages, and a read round's HEARTBEATs meant for this node (docs/PROTOCOL.md)."""
        return self._topics

    def round_trips(self) -> dict:
        primary = self.primary
        return {pid: h.copy() for pid, h in primary.round_trips.items()} if primary is not None else {}

    @property
    def primary(self):
        """The Primary side while this node leads a replicated cluster, else None."""
        return self.roles.primary if self.roles is not None else None

    def handle(self, request, envelope, now):
        if request.options and request.options.get("read_index"):
            held = self._read_index(request)
            if held is not None:
                return held
            request = request._replace(options={k: v for k, v in request.options.items() if k != "read_index"})
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

    def _read_index(self, request):
        """A GET with `read_index` (read_index.py): on a secondary, held until its ask to the
        primary is answered and applied; None on the primary or a standalone node, where it is a
        linearizable read like any other."""
        if request.args[1]:
            raise errors.BadArgument("GET: read_index asks for a linearizable read; stale must be false")
        if len(request.options) > 1:
            raise errors.UnsupportedOperation("read_index is leader mode's only option")
        roles = self.roles
        if roles is None or roles.primary is not None:
            return None
        sec = roles.secondary
        if sec is None or not sec.serves_reads or self.engine.removed_by is not None \
                or not protocol.peers_take("READ_INDEX"):   # a peer of an earlier release: no asks
            raise self.engine.commands.not_primary()    # the client may ask the primary instead
        return None, sec.read_index.wait(request.args[0], request.request_id)

    def ready(self):
        commit = self.engine.commit_seq
        primary = self.primary
        confirmed = primary.confirmed_round() if primary is not None else 0

        def ready(until):
            if until.__class__ is tuple:
                return until[0] <= commit and until[1] <= confirmed
            return until.ready()        # a ReadIndex read on a secondary
        return ready

    def progress(self):
        primary, roles = self.primary, self.roles
        return (self.engine.commit_seq, primary.confirmed_round() if primary is not None else 0,
                roles.read_asks.progress if roles is not None else None)

    def expired(self, held):
        return not_confirmed(held, self.config)

    def take_failed(self):
        return self.roles is not None and self.roles.take_deposed()

    def prepare(self):
        """A replicated primary streams the entries staged in this iteration before its own fsync
        (Sends.publish_early), so the secondaries' fsyncs overlap it."""
        primary = self.primary
        if primary is not None:
            staged = self.engine.take_staged()
            if staged is not None:
                primary.publish_entries(*staged, time.monotonic())
                self.engine.apply_to_commit()   # joins the staged batch

    def commit(self):
        """Write what was staged with one fsync; a replicated primary then counts what a quorum
        holds, starts the read round a linearizable read asked for, and says where the commit is."""
        engine, primary = self.engine, self.primary
        engine.flush()
        if primary is not None:
            now = time.monotonic()
            asks = self.roles.read_asks
            own = asks.take_local(now, engine.storage.term)   # ReadIndex reads held before it led
            if own is not None:
                primary.on_read_index(self.config.node_id, None, own)
            primary.advance_commit()
            if self._round_wanted or primary.round_asked:
                self._round_wanted = primary.round_asked = False
                primary.start_round(now)
            self.wake_at = min(primary.announce_commit(now), primary.widen_round(now))
            primary.answer_read_indexes(asks)
            return
        self.wake_at = inf
        if self.roles is not None and self.roles.secondary is not None:
            self.roles.secondary.send_read_index(time.monotonic())

    def after_replies(self):
        """Apply what committed (after the replies: data is read only by later requests)."""
        if self.primary is not None:
            self.engine.apply_to_commit()


class DynamoMode(Mode):
    """Every node accepts writes (docs/DYNAMO.md): `DynamoEngine`, and `Replication` with peers. A
    reply waits for (batch, dots, need): the batch that makes it durable here and, for a write with
    w = need > 1, need nodes holding each of its entries (dots of this run's origins)."""

    def __init__(self, out, storage, config, faults, now):
        self.out, self.config = out, config
        self.engine = DynamoEngine(storage, config, __version__, faults)
        self.replication = self.peering = None
        # Requests other nodes forwarded here (partitioned clusters, dynamo/forwarding.py): their
        # replies wait in a queue of their own, released with the same rule as the node's, and go
        # back to the node that forwarded them.
        self.forwarded = Replies(self._send_forwarded)
        if self.engine.replicated:     # peers by its flags, or by the membership its data records
            self.replication = self.peering = Replication(out, self.engine, config, now)
            self.replication.on_forward = self._on_forward
            self.engine.extra_status = lambda: self.replication.status(time.monotonic())

    def peer_list(self) -> tuple:
        return self.replication.contacts if self.replication is not None else ()

    def round_trips(self) -> dict:
        replication = self.replication
        return {pid: h.copy() for pid, h in replication.round_trips.items()} if replication is not None else {}

    def feed(self):
        return DynamoFeed(self.engine)

    def topics(self):
        return self.replication.topics if self.replication is not None else None

    def _copies_bound(self, what, need):
        """w and r count the nodes holding a key: every member, or its `replicas` owners."""
        placement = self.engine.placement
        size = self.engine.membership.size
        if need > min(size, placement.replicas):
            held = f"the cluster's {size} nodes" if not self.engine.per_partition or placement.replicas >= size \
                else f"the {placement.replicas} nodes that hold each key (replicas)"
            raise errors.BadArgument(f"{what} = {need} exceeds {held}")

    def handle(self, request, envelope, now, forwarded=False):
        """A request for a key this node does not own (partitioned) goes to an owner and is held as
        a Forward until its reply is in, unless it was forwarded here. A read with r > 1 goes to
        the peers (the key's owners) and is held, body and all, as a QuorumRead until its answers
        are in and joined; a write with w > 1 waits until w nodes hold it. A standalone node
        refuses quorums above 1."""
        cfg, command = self.config, request.command
        engine = self.engine
        if request.options and "read_index" in request.options:
            raise errors.UnsupportedOperation("read_index is a leader-mode option; in dynamo mode every node "
                                              "answers from its own data, or from r nodes (option r)")
        if (engine.per_partition and not forwarded and command in KEYED and engine.membership.removed_by is None
                and self.replication is not None):
            target = self.replication.forwards.target(request)
            if target is not None:
                return None, self.replication.forwards.start(request, target)
        if command in ("GET", "GET_VERSIONS"):
            need = request.options.get("r", cfg.read_quorum)
            if need > 1:
                self._copies_bound("r", need)
                if self.engine.membership.removed_by is None:    # else the engine refuses it
                    return None, self.replication.reads.start(request, need)
        need = 1
        if command in protocol.WRITE_COMMANDS:
            need = request.options.get("w", cfg.write_quorum)
            self._copies_bound("w", need)
        elif command == "REMOVE_MEMBER" and self.replication is not None and self.engine.membership.removed_by is None:
            self.replication.check_removal(request.args[0], now)
        made = engine.made
        reply, (batch, dots) = self.engine.handle(request)
        if engine.made > made and engine.per_partition and self.replication is not None:
            self.replication.take_as_fallback(request)      # made for partitions no owner was heard for
        durable = self.engine.durable_batches
        if need <= 1 or not dots:
            return reply, (None if batch <= durable else (batch, (), 1))
        if batch <= durable and self.replication.copies(dots) >= need:
            return reply, None      # a retry whose write is durable and held by enough nodes already
        return reply, (batch, dots, need)

    def ready(self):
        durable = self.engine.durable_batches
        copies = self.replication.copies if self.replication is not None else (lambda dots: 1)

        def rule(until):
            if until.__class__ is Forward:
                return until.reply is not None
            if until.__class__ is QuorumRead:
                return until.reply is not None and until.batch <= durable
            return until[0] <= durable and (until[2] <= 1 or copies(until[1]) >= until[2])
        return rule

    def progress(self):
        rep = self.replication
        return self.engine.durable_batches, (rep.ack_events, rep.reads.reads_done, rep.forwards.done,
                                             rep.hints.events) if rep is not None else ()

    def expired(self, held):
        if held.until.__class__ is Forward:
            forward = held.until
            self.replication.forwards.forget(forward)
            if forward.reply is not None:
                return forward.reply
            return protocol.encode_error(
                held.request_id, "unavailable" if not held.is_write else "replication_timeout",
                f"forwarded to node {forward.target}, an owner of the key, which did not answer within "
                f"{self.config.replication_timeout} s" + ("; the write's outcome is unknown" if held.is_write else ""))
        if held.until.__class__ is QuorumRead:
            read = held.until
            self.replication.reads.forget(read)
            if read.reply is None:
                return protocol.encode_error(
                    held.request_id, "unavailable", f"read_quorum {read.need} not reached: {1 + len(read.replies)} "
                    f"nodes answered within {self.config.replication_timeout} s")
            return not_confirmed(held, self.config)
        batch, dots, need = held.until
        if held.is_write and need > 1:
            copies = self.replication.copies(dots)
            return protocol.encode_error(
                held.request_id, "replication_timeout", f"write_quorum {need} not reached within "
                f"{self.config.replication_timeout} s ({copies} nodes hold it): the write is applied and "
                f"durable on this node and reaches the others when they can talk")
        return not_confirmed(held, self.config)

    def commit(self):
        self.engine.flush()

    def after_replies(self):
        """Publish this origin's new durable entries, tell each origin what this node holds, send
        read repairs (Replication.publish_new); send the forwarded requests' replies that are ready."""
        if self.replication is not None:
            self.replication.publish_new()
        else:
            self.engine.take_published()    # standalone: nobody to publish to
        if self.forwarded:
            self.forwarded.release(self.ready(), self.expired, time.monotonic(), progress=self.progress())

    def _on_forward(self, fields, envelope, now):
        """A request a peer forwarded here (dynamo/forwarding.py): served as a client's would be;
        its reply goes back to that peer once ready, or its error at once. It is sent on once more
        only when this node is still pulling a partition it names (hops 0), to a node holding it whole."""
        node_id, forward_id, hops, body = fields
        request = None
        engine = self.engine
        try:
            request = protocol.decode_request(body, engine.limits)
            if request.command not in KEYED:
                raise errors.BadArgument(f"{request.command} is not forwarded between nodes")
            placement = engine.placement
            partitions = partitions_of(request)
            foreign = [p for p in partitions if not engine.keeps(p)]
            if foreign:     # the memberships differ for a moment: the forwarder retries, as a client would
                raise errors.Unavailable(f"node {engine.node_id} does not own partition {foreign[0]} "
                                         f"(its owners: nodes {', '.join(map(str, placement.owners(foreign[0])))})")
            if all(engine.holds(p) for p in partitions):
                reply, until = self.handle(request, None, now, forwarded=True)
            elif hops == 0:     # pulling it: on to a node that holds it whole
                reply, until = None, self.replication.forwards.start(
                    request, self.replication.forwards.target(request, avoid=(node_id,), fallback=False), hops=1)
            else:
                raise errors.Unavailable(f"node {engine.node_id} is still pulling partition "
                                         f"{next(p for p in partitions if not engine.holds(p))}; retry in a moment")
        except errors.StorageError:
            raise
        except errors.ZmqstoreError as exc:
            reply, until = protocol.encode_exception(request.request_id if request else 0, exc), None
        target = ((envelope, forward_id),)
        if until is None:
            self._send_forwarded([target[0], reply])
        else:
            # held a little less long than the forwarder holds its request, so that this node's own
            # error (which says what happened) is what the client gets
            self.forwarded.hold(list(target), reply, request.request_id, request.command in protocol.WRITE_COMMANDS,
                                until, now + 0.8 * self.config.replication_timeout, request.command, now)

    def _send_forwarded(self, frames):
        (envelope, forward_id), body = frames
        self.out.reply_peer(envelope, protocol.encode_peer("DFORWARD_REPLY", self.engine.node_id, forward_id, body))


MODES = {"leader": LeaderMode, "dynamo": DynamoMode}
