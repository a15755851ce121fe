"""The node process: one zmq.Poller loop owning every socket, the storage and all state; clean shutdown."""
import logging
import signal
import socket
import threading
import time

import zmq

from . import __version__, errors, protocol, transport
from .engine import Engine
from .storage import Storage

MAX_DRAIN = 4096   # requests taken per loop iteration (one group commit) before replies go out
HOUSEKEEPING_INTERVAL = 1.0   # seconds between periodic chores (session expiry)
SHUTDOWN_LINGER_MS = 500      # how long the last replies may take to leave at shutdown

log = logging.getLogger("zmqstore.node")


class Node:
    """A running datastore-node. `run()` serves until `stop()` or SIGTERM/SIGINT."""

    def __init__(self, config):
        if config.peers:
            # Replication (issue 3) is not in this build; serving alone with peers configured would
            # create independent primaries that silently diverge.
            raise errors.ConfigError("peers are configured, but this build serves standalone nodes only; "
                                     "remove --peers / [peers] to run a single node")
        self.config = config
        self._stopping = False
        self._ctx = zmq.Context()
        self.router = self.pub = self.storage = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self.router = transport.bind_router(self._ctx, config.host, config.port, config.max_request_size)
            self.pub = transport.bind_pub(self._ctx, config.host, config.pub_port)
            self.storage = Storage.open(config.data_dir, config.node_id, config.mode, fsync=config.fsync)
            self.engine = Engine(self.storage, config, __version__)
        except BaseException:
            self._close()
            raise
        if config.role is not None and self.storage.last_seq > 0:
            log.info("data dir has state (last_seq %d): --role %s is ignored", self.storage.last_seq, config.role)

    # ------------------------------------------------------------ lifecycle

    def stop(self):
        """Ask the loop to finish its iteration and exit; safe from signal handlers and other threads."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self):
        restore = self._install_signal_handlers()
        cfg = self.config
        log.info("serving %s mode on tcp://%s:%d (change stream tcp://%s:%d), data dir %s, last_seq %d, fsync %s",
                 cfg.mode, cfg.host, cfg.port, cfg.host, cfg.pub_port, self.storage.path,
                 self.storage.last_seq, "on" if cfg.fsync else "off")
        try:
            self._loop()
        except errors.StorageError as exc:
            log.critical("stopping: %s; the writes of the failed batch were not acknowledged", exc)
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
        if self.router is not None:
            # A short linger lets the last replies (already durable) leave; term() waits at most this.
            self.router.close(linger=SHUTDOWN_LINGER_MS)
        if self.pub is not None:
            self.pub.close(linger=0)
        if self.storage is not None:
            self.storage.close()
        self._ctx.term()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ the loop

    def _loop(self):
        router = self.router
        wake_fd = self._wake_r.fileno()
        # zmq_poll directly: zmq.Poller.poll wraps the same call in per-iteration list and dict work.
        poll_items = [(router, zmq.POLLIN), (wake_fd, zmq.POLLIN)]
        zmq_poll = zmq.backend.zmq_poll
        next_chores = time.monotonic() + HOUSEKEEPING_INTERVAL
        while not self._stopping:
            now = time.monotonic()
            if now >= next_chores:
                self.engine.housekeeping(now)
                next_chores = now + HOUSEKEEPING_INTERVAL
            # The poll timeout is the next timer deadline (milliseconds only here, at the poll).
            for item, _ in zmq_poll(poll_items, max(0, int((next_chores - now) * 1000)) + 1):
                if item is router:
                    self._serve_requests(router)
                else:
                    self._drain_wakeups()

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _serve_requests(self, router):
        """One group commit: take what is ready and stage it, commit once, then release the replies
        that waited for it. A reply that depends on durable state only leaves at once."""
        engine = self.engine
        outbox = []
        recv_frames, noblock = transport.recv_routed, transport.NOBLOCK
        send_frames = transport.send_frames
        for taken in range(MAX_DRAIN):
            # After one request, ask ZMQ_EVENTS whether another is waiting: for the common lone
            # request that is cheaper than the failing recv (zmq.Again) that ends a longer drain.
            if taken == 1 and not transport.has_input(router):
                break
            try:
                frames = recv_frames(router, noblock)
            except zmq.Again:
                break
            envelope, reply = self._answer(frames)
            if engine.staging:
                outbox.append(envelope + [reply])  # it may have seen a staged write: wait for the commit
            else:
                send_frames(router, envelope + [reply])
        # Nothing is acknowledged before it is durable: commit (and fsync) first, then reply.
        engine.flush()
        for frames in outbox:
            send_frames(router, frames)

    def _answer(self, frames):
        """One request's frames -> (envelope, reply body). Bad input gets an error reply; so does a
        bug (logged), so that no client can take the node down."""
        try:
            envelope, body = protocol.split_frames(frames)
        except errors.RequestError as exc:
            return frames[:1], protocol.encode_exception(0, exc)
        request = None
        try:
            request = protocol.decode_request(body, self.engine.limits)
            return envelope, self.engine.handle(request)
        except errors.RequestError as exc:
            rid = request.request_id if request else getattr(exc, "request_id", 0)
            return envelope, protocol.encode_exception(rid, exc)
        except errors.StorageError:
            raise  # fail-stop: the disk refused a write, so nothing in this batch may be acknowledged
        except Exception as exc:
            log.exception("internal error serving %s", request.command if request else "a request")
            return envelope, protocol.encode_error(request.request_id if request else 0, "internal",
                                                   f"internal error: {type(exc).__name__}")
