"""Client-side pipelining: queue operations, keep many in flight, results in order (like redis-py).
Every operation of the client is available (api.Commands); only the sending differs."""
import time

import zmq

from . import errors, protocol, transport
from .api import Commands, ScanPage
from .connection import RETRYABLE

# A batch refused whole, nothing in it served (docs/PROTOCOL.md section 2, "Batches"): by a node of an
# earlier release (malformed), or one whose max_request_size is below GROUP_BYTES (request_too_large).
BATCH_REFUSED = ("malformed", "request_too_large")


class Pipeline(Commands):
    """Operations are sent on `execute()`, up to `max_in_flight` at a time, each with its own request
    id. Not atomic: each operation is applied on its own, in order per key. Timed-out or redirected
    operations are resent with the same request id, so none is applied twice. Each queuing method
    returns the pipeline, so calls chain. A scan's result is the list of its items: its first page
    travels in the pipeline, any further pages are read after the pipeline, one at a time."""

    def __init__(self, client, max_in_flight=64):
        self._client = client
        self.decode_keys = client.decode_keys
        self.max_in_flight = max_in_flight
        self._calls = []
        self._scans = {}     # position in _calls -> (prefix, end, limit, stale) of a scan

    def __len__(self):
        return len(self._calls)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._calls.clear()
        self._scans.clear()

    def _execute(self, call):
        self._calls.append(call)
        return self

    def scan(self, prefix=None, start=None, end=None, limit=None, stale=False):
        prefix, cursor, end = self._scan_range(prefix, start, end)
        self._scans[len(self._calls)] = (prefix, end, limit, stale)
        return self._execute(self._scan_call(prefix, cursor, end, limit, stale))

    def execute(self, raise_on_error=True):
        """Run every queued operation; returns their results in queue order. With raise_on_error, the
        first failed operation's exception is raised after all have finished; otherwise failed
        operations have their exception in place of a result."""
        client = self._client
        calls, self._calls = self._calls, []
        scans, self._scans = self._scans, {}
        rids = [client.next_request_id() for _ in calls]
        open_from = rids[0] if rids else 0   # every earlier request of this client has finished
        bodies = [client.encode(call, rid, open_from) for call, rid in zip(calls, rids)]
        results = self._send(calls, rids, bodies)
        for i, (prefix, end, limit, stale) in scans.items():
            if isinstance(results[i], ScanPage):
                results[i] = self._finish_scan(results[i], prefix, end, limit, stale)
        if raise_on_error:
            for r in results:
                if isinstance(r, errors.ZmqstoreError):
                    raise r
        return results

    def _finish_scan(self, page, prefix, end, limit, stale):
        items = list(page.items)
        if page.cursor is not None and (limit is None or len(items) < limit):
            try:
                items.extend(self._client.scan(prefix, page.cursor, end, None if limit is None else limit - len(items),
                                               stale))
            except errors.ZmqstoreError as exc:
                return exc
        return items

    def _send(self, calls, rids, bodies):
        """Every request answered, in rounds: what timed out or was redirected goes again, with the
        client's retry policy between rounds. -> results (or exceptions) in queue order."""
        client, connection = self._client, self._client.connection
        index_of = {rid: i for i, rid in enumerate(rids)}
        results = [None] * len(calls)
        pending = list(range(len(calls)))
        sleeps = client.retry.sleeps()
        while pending:
            retry, hint = self._round(connection, pending, bodies, index_of, calls, results)
            if not retry:
                break
            pause = next(sleeps, None)
            if pause is None:
                for i in retry:
                    if not isinstance(results[i], errors.ZmqstoreError):
                        results[i] = errors.ConnectionTimeout(f"no reply from {connection.endpoint}")
                    results[i].request_id = rids[i]
                    if calls[i].command in protocol.WRITE_COMMANDS:
                        client.unresolve(rids[i])
                break
            time.sleep(pause)
            connection.next_endpoint(hint)
            pending = retry
        return results

    def _round(self, connection, pending, bodies, index_of, calls, results):
        """Send `pending` with a sliding window; returns (indices to retry, redirect hint)."""
        if not connection.ready():
            return list(pending), None
        sock = connection.sock
        send, send_frames, recv_frames = transport.send, transport.send_frames, transport.recv_frames
        window = self.max_in_flight
        in_flight = set()
        retry, hint = [], None
        next_pos = 0
        resend = []
        while next_pos < len(pending) or in_flight:
            try:
                while resend:
                    send(sock, bodies[resend.pop()])
                while next_pos < len(pending) and len(in_flight) < window:
                    if connection.batches:
                        # What the window has room for, as one message (docs/PROTOCOL.md section 2,
                        # "Batches"); its replies may come grouped, each frame one reply: recv reads
                        # frame by frame.
                        room = min(window - len(in_flight), len(pending) - next_pos, protocol.BATCH_MAX)
                        frames, size = [], 0
                        while len(frames) < room:
                            body = bodies[pending[next_pos]]
                            if frames and size + len(body) > protocol.GROUP_BYTES:
                                break
                            frames.append(body)
                            size += len(body)
                            in_flight.add(pending[next_pos])
                            next_pos += 1
                        send_frames(sock, frames)
                    else:
                        i = pending[next_pos]
                        send(sock, bodies[i])
                        in_flight.add(i)
                        next_pos += 1
                raws = recv_frames(sock)     # a grouped reply: all its frames, so the next batch fills the room
            except zmq.Again:
                # Nothing could be sent or arrived within the timeout: retry what is in flight or unsent.
                retry.extend(sorted(in_flight))
                retry.extend(pending[next_pos:])
                return retry, hint
            for raw in raws:
                reply = protocol.decode_reply(raw)
                i = index_of.get(reply.request_id)
                if i is None or i not in in_flight:
                    if reply.request_id == 0 and not reply.ok and connection.batches and \
                            reply.result[0] in BATCH_REFUSED:
                        # A batch refused whole, none of it served: by a node of an earlier release,
                        # or one whose max_request_size is below GROUP_BYTES. From now on one request
                        # per message, and what is in flight goes again (same ids).
                        connection.batches = False
                        resend = sorted(in_flight)
                    continue  # late reply to an earlier round
                in_flight.discard(i)
                if reply.ok:
                    results[i] = calls[i].decode(reply.result)
                    continue
                code, message, details = reply.result
                exc = errors.error_from_code(code, message, details)
                exc.request_id = reply.request_id
                if isinstance(exc, errors.ReplicationTimeout):
                    self._client.unresolve(reply.request_id)
                results[i] = exc
                if isinstance(exc, RETRYABLE):
                    retry.append(i)
                    hint = hint or connection.redirect(details)
        return sorted(retry), hint
