"""The node process: one zmq.Poller loop owning every socket, the storage and all state; clean shutdown."""
import logging
import signal
import socket
import threading
import time

import zmq

from . import errors, faults, join, keys, metrics, modes, protocol, transport, trust
from .backup import RESTORING_FROM_FILE, restore_into
from .health import HealthServer, LoopProbe
from .space import SpaceGuard
from .outbox import Grouped, Outbox, send_hwm
from .replies import Replies
from .peers import PeerPlane
from .sends import Sends
from .storage import UNFLUSHED_MAX, Storage
from .watch import Watches

MAX_DRAIN = 4096              # messages taken per loop iteration (one group commit) ...
DRAIN_SECONDS = 0.01          # ... or for this long: then the iteration commits and replies. ZeroMQ takes
                              # the next message from each connection in turn, so a flood from one
                              # client delays another's request by at most about one iteration
BACKLOG_RETRY = 0.001         # seconds between attempts to send replies a full connection queue held back
HOUSEKEEPING_INTERVAL = 1.0   # seconds between periodic chores (session and snapshot expiry)
# While the space alarm is on (space.py), written to since: seconds between compactions of the log,
# and of the data (a rewrite of all of it).
COMPACT_EVERY = {"log": 5.0, "data": 10.0}
SHUTDOWN_LINGER_MS = 500      # how long the last replies may take to leave at shutdown
# What a read-only client key may not send: writes, membership changes, and OUTCOME (it may log a fence entry).
READ_ONLY_REFUSED = protocol.WRITE_COMMANDS | protocol.MEMBERSHIP_CHANGES | {"OUTCOME"}
LOGGED = protocol.WRITE_COMMANDS | protocol.MEMBERSHIP_CHANGES   # a held reply's outcome is unknown at its deadline
POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)   # int & IntFlag builds an enum: about 1 us each

log = logging.getLogger("zmqstore.node")


class Node:
    """A running datastore-node. `run()` serves until `stop()` or SIGTERM/SIGINT."""

    def __init__(self, config):
        self.config = config
        self._stopping = False
        self._ctx = zmq.Context()
        self.router = self.peers = self.storage = self.engine = self.mode = self.sends = None
        self.gate = self.outbox = self.watches = None
        self.recorder = self.probe = self.health = None     # with metrics_port (docs/OPERATIONS.md)
        self.space = None
        self._compactions = {name: (0.0, -1) for name in COMPACT_EVERY}    # name -> (next time, commits then)
        self._probed = False        # the HTTP thread may be waiting for a sample (health.py)
        self._storage_failed = False
        # Peer traffic: Roles in leader mode, Replication in dynamo mode (None without peers).
        self.peering = None
        self.replies = None
        self.faults = faults.NONE
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self.faults = faults.Faults.from_environment()     # test-only switches (faults.py)
            if self.faults.peer_version:
                protocol.speak_peer_version(*self.faults.peer_version)
            security = keys.load_node_security(config)      # None without keys
            own = security.own if security is not None else None
            self.gate = trust.Gatekeeper(self._ctx, config.peers, config.max_connections,
                                         config.max_connections_per_host, security)
            self.router = transport.bind_router(
                self._ctx, config.host, config.port, config.max_request_size, self.gate.guard_client,
                mandatory=True, send_hwm=send_hwm(config.client_output_limit // 2, config.max_value_size), curve=own)
            # half of client_output_limit in ZeroMQ's queue, half in the outbox's (outbox.py)
            self.outbox = Outbox(self.router, config.client_output_limit // 2)
            if config.metrics_port is not None:
                self.recorder = metrics.Recorder()
            self.replies = Replies(self.outbox.send, self.recorder.request if self.recorder else None)
            self.peers = PeerPlane(self._ctx, config, self.gate, security, self.faults)
            self.storage = Storage.open(config.data_dir, config.node_id, config.mode, fsync=config.fsync)
            if self.recorder is not None:
                self.storage.on_commit = self.recorder.commit
            if config.restore or self.storage.restoring == RESTORING_FROM_FILE:
                restore_into(self.storage, config)
            if config.join:
                join.join_cluster(config, self.storage, lambda: self._stopping)
            self.sends = Sends(self.peers.reachable)
            self.mode = modes.MODES[config.mode](self.sends, self.storage, config, self.faults, time.monotonic())
            self.engine, self.peering = self.mode.engine, self.mode.peering
            self.peers.attach(self.peering, self.engine.limits)
            self.watches = Watches(self.mode.feed(), self.outbox.send, config.session_timeout)
            self.outbox.on_drop = self.watches.connection_dropped
            self.space = SpaceGuard(self.storage.path, self.storage.stored_bytes, config.max_data_bytes,
                                    config.min_free_bytes, on_change=self._on_space_alarm,
                                    written=lambda: self.storage.written)
            self.engine.commands.space = self.space
            roles = getattr(self.mode, "roles", None)
            if roles is not None:       # a primary refuses writes while a member it hears is short of space
                self.space.peers_short = lambda: roles.election.short_of_space(time.monotonic())
                # and logs shared entries only once every member said it reads them (docs/PROTOCOL.md section 5)
                self.engine.peers_read_shared = lambda: self.peers.announced_by_all(
                    self.engine.membership.peers, protocol.SHARED_ENTRY_VERSION)
            if config.min_free_bytes < 2 * UNFLUSHED_MAX:
                log.warning("min_free_bytes = %d is under %d: short of disk, RocksDB may lack the room to flush "
                            "its memtables (up to %d bytes, with their write-ahead log) and stop every write",
                            config.min_free_bytes, 2 * UNFLUSHED_MAX, UNFLUSHED_MAX)
            self._on_space_alarm(self.space.alarm is not None)
            extra = self.engine.extra_status
            self.engine.extra_status = lambda: {**(extra() if extra else {}), "watches": self.watches.status(),
                                                "space": self.space.status(),
                                                "peer_messages": dict(sorted(self.peers.received.items()))}
            self._peer_list = None
            self._follow_membership()
            if self.recorder is not None:     # last: it may ask the loop from now on
                self.probe = LoopProbe(self._wake)
                self.health = HealthServer(config.metrics_host, config.metrics_port, self.probe, self.storage.path)
        except BaseException:
            self.engine = None
            self._close()
            raise

    # ------------------------------------------------------------ lifecycle

    def stop(self):
        """Ask the loop to finish its iteration and exit; safe from signal handlers and other threads."""
        self._stopping = True
        self._wake()

    def _wake(self):
        """Make the loop's poll return (any thread)."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self):
        restore = self._install_signal_handlers()
        cfg = self.config
        log.info("serving %s mode as %s on tcp://%s:%d (peer port %d, change stream %d), data dir %s, "
                 "last_seq %d, fsync %s, WAL files reused %s, %d peers", cfg.mode, self.engine.role, cfg.host,
                 cfg.port, cfg.peer_port, cfg.pub_port, self.storage.path, self.storage.last_seq,
                 "on" if cfg.fsync else "off", "yes" if self.storage.recycled_wal_files else "no (a small file system)",
                 len(self._peer_list))
        try:
            self._loop()
        except errors.StorageError as exc:
            log.critical("stopping: %s; the writes of the failed batch were not acknowledged", exc)
            self._storage_failed = True
            raise
        finally:
            restore()
            self._close()
        log.info("stopped cleanly")

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def on_signal(signum, _frame):
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self._stopping = True

        for sig in previous:
            signal.signal(sig, on_signal)

        def restore():
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore

    def _close(self):
        if self.health is not None:
            self.health.close()     # first: a scrape would wait for a loop that has ended
        if self.watches is not None:
            self.watches.close()    # before the storage: a watch's snapshot holds RocksDB open
        if self.router is not None:
            # A short linger lets the last replies (already durable) leave; term() waits at most this.
            self.router.close(linger=SHUTDOWN_LINGER_MS)
        if self.peers is not None:
            self.peers.close()
        if self.peering is not None:
            self.peering.close()
        if self.storage is not None:
            try:
                self.storage.close()
            except Exception as exc:    # after a failed write RocksDB refuses to close cleanly
                (log.debug if self._storage_failed else log.error)("closing RocksDB: %s", exc)
        if self.gate is not None:
            self.gate.close()
        self._ctx.destroy(linger=0)     # and any socket a failed start left open: never waits
        self._wake_r.close()
        self._wake_w.close()

    def _follow_membership(self):
        """Connect to and admit the mode's peers when they changed (docs/MEMBERSHIP.md)."""
        peer_list = self.mode.peer_list()
        if peer_list is not self._peer_list:
            self._peer_list = peer_list
            self.peers.set_peers(peer_list)
            self.gate.set_peers(peer_list)
        self.peers.set_topics(self.mode.topics())

    # ------------------------------------------------------------ the loop

    def _poll_lists(self):
        """What the loop polls: (items, items while replies drain, the peer sockets)."""
        router, peers, gate = self.router, self.peers, self.gate
        # Handshakes, then the peer plane: zmq_poll reports ready items in this order, so no client
        # load can delay heartbeats, votes or replication within an iteration.
        poll_items = [(gate.zap, zmq.POLLIN)]
        poll_items.extend((s, zmq.POLLIN) for s in peers.sockets)
        # The client port's monitor last: connections opened and closed (also read before each handshake).
        poll_items += [(router, zmq.POLLIN), (gate.monitor, zmq.POLLIN), (self._wake_r.fileno(), zmq.POLLIN)]
        # The same, also waking when the client port can send: while a backlog of replies drains.
        poll_draining = [(router, zmq.POLLIN | zmq.POLLOUT) if sock is router else (sock, ev)
                         for sock, ev in poll_items]
        return poll_items, poll_draining, frozenset(peers.sockets)

    def _loop(self):
        router, peers = self.router, self.peers
        gate = self.gate
        poll_items, poll_draining, peer_sockets = self._poll_lists()
        plane_version = peers.version
        outbox, replies = self.outbox, self.replies
        # zmq_poll directly: zmq.Poller.poll wraps the same call in per-iteration list and dict work.
        zmq_poll = zmq.backend.zmq_poll
        now = time.monotonic()
        next_chores = now + HOUSEKEEPING_INTERVAL
        peering = self.peering
        next_beat = now if peering is not None else float("inf")
        while not self._stopping:
            now = time.monotonic()
            deadline = min(next_chores, next_beat, replies.next_deadline or next_chores, self.mode.wake_at)
            if self.outbox.backlogs:
                deadline = min(deadline, max(now + BACKLOG_RETRY, self.outbox.next_retry()))
            if self.watches.busy:
                deadline = now      # a watcher with credit is behind: serve it, then look again
            # The poll timeout is the next timer deadline (milliseconds only here, at the poll).
            items = poll_draining if outbox.draining and outbox.backlogs else poll_items
            ready = zmq_poll(items, max(0, int((deadline - now) * 1000)) + 1)
            if peering is not None:
                # Before any message is judged: a pause of this process (SIGSTOP, an overloaded
                # machine) shows as a gap here, and every "last heard" must restart from now, not
                # make what arrived during the pause look like the peers' silence.
                peering.note_loop(time.monotonic())
            for item, events in ready:
                if item is router:
                    if events & POLLOUT:
                        outbox.flush(time.monotonic())
                    if events & POLLIN:
                        self._serve_router(router)
                elif item is gate.zap:
                    gate.serve()
                elif item is gate.monitor:
                    gate.count_connections()
                elif item in peer_sockets:
                    peers.serve(item)
                else:
                    self._drain_wakeups()
            # The timers due, then the end of the iteration: whatever the messages and the timers
            # decided is committed once, then sent (modes.Mode.end_iteration).
            now = time.monotonic()
            if peering is not None:
                # Again before the timers judge anyone: a pause that began after the poll returned
                # (SIGSTOP while this iteration drained its sockets) ends in the middle of the
                # iteration, and the backlog it left was handled without a poll in between.
                peering.note_loop(now)
            if now >= next_chores:
                self._housekeeping(now)
                next_chores = now + HOUSEKEEPING_INTERVAL
            if now >= next_beat:
                self.peering.tick(now)
                next_beat = now + self.config.heartbeat_interval
            self.mode.end_iteration(peers.send, self._release)
            self.space.check()          # a burst of writes (a secondary's come from its primary)
            self.watches.pump(now)      # after the iteration applied what committed
            if self._probed:
                self._answer_probes()   # between two iterations: nothing staged, everything durable
            self._follow_membership()
            if peers.version != plane_version:
                poll_items, poll_draining, peer_sockets = self._poll_lists()
                plane_version = peers.version
            if outbox.groups:
                outbox.send_groups()    # any grouped reply a pass above did not send (dynamo's forwarded ones)
            if outbox.backlogs:
                outbox.flush(time.monotonic())

    def _housekeeping(self, now):
        self._probed = True         # in case a wake-up byte was lost (a full socket buffer)
        self._watch_space(now)
        self.gate.housekeeping()    # connections that closed since the last handshake
        self.engine.housekeeping(now)
        if self.peering is not None:
            self.peering.housekeeping(now)

    def _on_space_alarm(self, alarm):
        self.engine.space_alarm = alarm

    def _watch_space(self, now):
        """Measure the disk; while short of it, the logs keep only what they must (trimmed now, not
        only when the next write comes) and RocksDB compacts what deletes and trims freed
        (space.py), each column family every COMPACT_EVERY seconds when written to since, and
        again until there is room to compact it."""
        space = self.space
        space.measure()
        if space.alarm is None:
            return
        self.engine.make_room()
        storage = self.storage
        due = {name for name, (when, commits) in self._compactions.items()
               if now >= when and storage.commits != commits}
        if due:
            for name in storage.compact_in_background(space.free, due):
                self._compactions[name] = (now + COMPACT_EVERY[name], storage.commits)

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._probed = True         # perhaps a scrape: answered at the end of this iteration

    def _answer_probes(self):
        """A scrape or health check waiting on the HTTP thread gets a sample of this moment."""
        self._probed = False
        if self.probe is not None and self.probe.pending():
            self.probe.answer_all(self._sample)

    def _sample(self) -> metrics.Sample:
        status = self.engine.commands.status()
        ready, why = metrics.readiness(status)
        return metrics.Sample(self.recorder.copy(), status, self.replies.held_writes(), len(self.replies),
                              len(self.engine.sessions), ready, why, self.mode.round_trips())

    # ------------------------------------------------------------ requests on the ROUTER

    def _serve_router(self, router):
        """Take what is ready. Replies that depend on nothing unconfirmed leave at once; the others
        are held (replies.py) until the mode's rule accepts them, at the end of this iteration or later."""
        recv_frames, noblock = transport.recv_routed, transport.NOBLOCK
        with_keys = self.config.keys
        user = None
        until = None
        # Bytes of requests per iteration: what one CHANGE of this iteration's entries may carry stays
        # under what the peers' SUBs accept (max_request_size, plus one request, plus framing).
        byte_budget = self.config.max_request_size
        outbox = self.outbox
        served, next_check = 0, 1
        for taken in range(MAX_DRAIN):
            # After one message, ask ZMQ_EVENTS whether another is waiting: for the common lone
            # request that is cheaper than the failing recv (zmq.Again) that ends a longer drain.
            if taken == 1 and not transport.has_input(router):
                break
            if served >= next_check:    # after the first message, then every 64 requests
                next_check = served + 64
                now = time.monotonic()
                if outbox.groups:
                    outbox.send_groups()
                if outbox.backlogs:
                    outbox.flush(now)  # a deep pipeline's replies leave as its client reads
                if until is None:
                    until = now + DRAIN_SECONDS
                elif now >= until:
                    break
            try:
                if with_keys:    # the connection's User-Id says whether its key may write
                    frames, user = transport.recv_with_meta(router, "User-Id", noblock)
                else:
                    frames = recv_frames(router, noblock)
            except zmq.Again:
                break
            served += self._answer(frames, user)
            byte_budget -= sum(map(len, frames)) - len(frames[0])
            if byte_budget <= 0:
                break
        if outbox.groups:
            outbox.send_groups()

    def _answer(self, frames, user=None) -> int:
        """One client message's frames: one request, or a batch of them (docs/PROTOCOL.md section 2),
        each answered in turn. -> how many requests it held."""
        outbox = self.outbox
        if outbox.backlogs and outbox.refuses(frames[0]):
            return 1    # this client leaves its replies unread: no more work for it until it reads
        now = time.monotonic()
        try:
            envelope, bodies, batched = protocol.split_batch(frames, self.config.max_request_size)
        except errors.RequestError as exc:
            body = protocol.encode_exception(0, exc)
            outbox.send(frames[:1] + [body])
            if self.recorder is not None:
                self.recorder.request("INVALID", body, now, now)
            return 1
        if batched:
            envelope = Grouped(envelope)    # its replies may share messages (outbox.py)
        for body in bodies:
            self._answer_one(envelope, body, user, now)
        return len(bodies)

    def _answer_one(self, envelope, body, user, now):
        """One request: it gets a reply (now or later). Bad input, a peer message included
        (wrong_port), gets an error reply; so does a write from a read-only key (forbidden) and a
        bug (logged). `user`: the connection's User-Id (with keys)."""
        outbox, recorder = self.outbox, self.recorder
        request = None
        try:
            request = protocol.decode_request(body, self.engine.limits)
            if user is not None and request.command in READ_ONLY_REFUSED and self.gate.read_only(user):
                raise errors.Forbidden(f"{request.command} needs a read-write client key; this one is read-only")
            if user and not self.gate.node_may(user, request):
                raise errors.Forbidden(f"{request.command} needs a client key; a node's key may only ask to join")
            if request.command in protocol.WATCH_COMMANDS:    # a stream of replies (watch.py), never grouped
                envelope = list(envelope)
                body = self.watches.handle(request, envelope, time.monotonic())
                if body is not None:
                    outbox.send(envelope + [body])
                return
            handled = self.mode.handle(request, envelope, now)
        except errors.StorageError:
            raise  # fail-stop: the disk refused a write, so nothing in this batch may be acknowledged
        except errors.ZmqstoreError as exc:  # refused: bad input, not_primary, unavailable, ...
            rid = request.request_id if request else getattr(exc, "request_id", 0)
            reply = protocol.encode_exception(rid, exc)
            outbox.send(envelope + [reply])
            if recorder is not None:
                recorder.request(request.command if request else "INVALID", reply, now, time.monotonic())
            return
        except Exception as exc:
            log.exception("internal error serving %s", request.command if request else "a message")
            rid = request.request_id if request else 0
            reply = protocol.encode_exception(rid, errors.InternalError(f"internal error: {type(exc).__name__}"))
            outbox.send(envelope + [reply])
            if recorder is not None:
                recorder.request(request.command if request else "INVALID", reply, now, time.monotonic())
            return
        reply, until = handled
        if until is None:
            outbox.send(envelope + [reply])
            if recorder is not None:
                recorder.request(request.command, reply, now, time.monotonic())
        else:   # held until the mode's rule accepts `until` (replies.py)
            self.replies.hold(envelope, reply, request.request_id, request.command in LOGGED, until,
                              now + self.config.replication_timeout, request.command, now)

    def _release(self, fail_all=False):
        """Send the held replies that are ready; time out the expired ones (replies.py). With
        fail_all (this node stopped leading), none may say its request succeeded: writes get
        replication_timeout (their entries may still commit under the next primary), reads unavailable."""
        if self.replies:
            mode = self.mode
            self.replies.release(mode.ready(), mode.expired, time.monotonic(), fail_all=fail_all,
                                 progress=mode.progress())
            if self.outbox.groups:
                self.outbox.send_groups()

