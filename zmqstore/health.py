"""The node's HTTP port for operators (docs/OPERATIONS.md, "Metrics and health"): GET /metrics (the
Prometheus text format, made by prometheus-client), /healthz and /readyz, served by threads of its
own (one per connection, MAX_CLIENTS at once, each cut at REQUEST_DEADLINE) so no HTTP client can
slow the loop or another client.

The thread never reads the node's state: it asks the loop (`LoopProbe.ask`), which answers between
two iterations with a metrics.Sample. A loop that does not answer within PROBE_TIMEOUT makes
/healthz fail, which is what a liveness check is for (a stuck or paused process).
"""
import logging
import queue
import socket
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import metrics
from .errors import ConfigError

PROBE_TIMEOUT = 2.0     # seconds the loop has to answer a scrape or a health check
REQUEST_TIMEOUT = 5.0   # seconds an HTTP client may be silent while sending its request
REQUEST_DEADLINE = 10.0  # seconds a connection may last in all (a client trickling bytes is cut)
MAX_CLIENTS = 8         # connections served at once; more are closed at once

log = logging.getLogger("zmqstore.health")


class LoopProbe:
    """Questions from the HTTP thread to the loop. `ask()` (HTTP thread) queues one and wakes the
    loop; `answer_all(sample)` (loop thread) answers every one waiting."""

    def __init__(self, wake):
        self._wake = wake           # () -> None: makes the loop's poll return
        self._waiting = queue.SimpleQueue()
        self.closed = False

    def ask(self):
        """The loop's Sample, or None when it did not answer within PROBE_TIMEOUT (or has ended)."""
        if self.closed:
            return None
        done, box = threading.Event(), []
        self._waiting.put((done, box))
        self._wake()
        return box[0] if done.wait(PROBE_TIMEOUT) and box else None

    def close(self):
        """The loop has ended: every question waiting, and every later one, gets None at once."""
        self.closed = True
        self.answer_all(lambda: None)

    def pending(self) -> bool:
        return not self._waiting.empty()

    def answer_all(self, make_sample):
        sample = None
        while True:
            try:
                done, box = self._waiting.get_nowait()
            except queue.Empty:
                return
            sample = sample or make_sample()
            if sample is not None:
                box.append(sample)
            done.set()


class _Collector:
    """prometheus-client's view of one sample (a registry per scrape: nothing is kept between)."""

    def __init__(self, sample, data_dir):
        self.sample, self.data_dir = sample, data_dir

    def collect(self):
        return metrics.families(self.sample, self.data_dir)


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT       # a client silent this long is dropped

    def setup(self):
        super().setup()
        # A client that trickles its request one byte at a time is cut at the deadline.
        self._deadline = threading.Timer(REQUEST_DEADLINE, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self):
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def handle(self):
        try:
            super().handle()
        except OSError:             # timed out or cut: nothing to answer
            self.close_connection = True

    def log_message(self, fmt, *args):
        log.debug("http %s %s", self.client_address[0], fmt % args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per connection, MAX_CLIENTS at once: a slow client delays no other, and closing
    the server waits for none of them."""
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)      # too many at once: closed unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        log.debug("http %s: %s", client_address[0], "error serving a request", exc_info=True)


class HealthServer:
    """GET /metrics, /healthz and /readyz on host:port, a thread per connection; close() stops it."""

    def __init__(self, host, port, probe, data_dir):
        self.probe, self.data_dir = probe, data_dir
        try:
            self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                              f"pick another metrics_port") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def close(self):
        """Stop accepting; connections under way end on their own (daemon threads, none waited for)."""
        if self._server is not None:
            self.probe.close()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(2)
            self._server = None

    def _app(self, environ, start_response):
        body = self._answer(environ, start_response)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else body     # HEAD: the headers alone

    def _answer(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "only GET\n")
        path = environ.get("PATH_INFO", "")
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _text(start_response, "404 Not Found", "GET /metrics, /healthz or /readyz\n")
        sample = self.probe.ask()
        if sample is None:
            return _text(start_response, "503 Service Unavailable",
                         f"the node's loop did not answer within {PROBE_TIMEOUT:g} s\n")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if sample.ready:
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", f"not ready: {sample.why_not_ready}\n")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(sample, self.data_dir))
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]


def _text(start_response, status, text):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
