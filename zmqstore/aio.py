"""The asyncio client (docs/CLIENT.md): every operation of the blocking Client as a coroutine, on
zmq.asyncio. What is sent and how replies decode is the same code (api.Commands, client_base: request
ids, encoding, `open_from`, the retry rules of `Attempts`; watcher.WatchStream for watches); only the
waiting differs. Any number of requests may be in flight on one client: they share one DEALER, and
one reader task hands each reply to the request waiting for its id. The requests made in one pass of
the event loop leave together, as batches (docs/PROTOCOL.md section 2, "Batches").

    async with zmqstore.aio.Client("127.0.0.1:9000") as db:
        await db.put("k", 1)
        values = await asyncio.gather(*(db.get(f"k{i}") for i in range(1000)))
        async for key, value in db.scan(prefix="k"):
            ...
        async with db.watch("k") as watcher:
            async for event in watcher:
                ...
"""
import asyncio
import collections
import time

import zmq
import zmq.asyncio

from . import errors, protocol, transport
from .api import Call, encode_key
from .client_base import DEFAULT_TIMEOUT, Attempts, ClientBase
from .connection import Connection, Retry
from .pipeline import BATCH_REFUSED, Pipeline as _BlockingPipeline
from .watcher import RESUMABLE, WATCH_WINDOW, WatchEvent, WatchStream, check_watch_args

__all__ = ["Client", "Pipeline", "Watcher", "WatchEvent", "Retry"]


class Client(ClientBase):
    """A zmqstore client for asyncio, with the blocking Client's arguments. Every operation is a
    coroutine; `scan` is an async iterator; `watch` gives an async iterator of WatchEvent. Use it
    from one event loop."""

    def __init__(self, endpoints, timeout=DEFAULT_TIMEOUT, retry=None, decode_keys=True,
                 max_request_size=16 << 20, secret_key=None, node_keys=None):
        super().__init__(retry, decode_keys, max_request_size)
        self.connection = Connection(endpoints, timeout, secret_key, node_keys, context=zmq.asyncio.Context)
        self._open = collections.OrderedDict()  # request ids not finished yet, oldest first: open_from
        self._waiting = {}          # request id -> Future of its reply (an attempt in flight)
        self._reader = None         # the task reading replies from `_reader_sock`
        self._reader_sock = None
        self._epoch = 0             # moves each time the client goes to another endpoint
        # (deadline, future, connection) of each attempt, in deadline order (one timeout for all):
        # one task fails the late ones, cheaper than a timer per request.
        self._deadlines = collections.deque()
        self._sweeper = None
        self._queued = []           # (socket, request id, reply future, body): sent at the end of this pass
        self._bodies = {}           # request id -> body, while an attempt waits (resent if a batch is refused)

    def close(self):
        """Close the connection; requests still waiting raise ConnectionTimeout."""
        for task in (self._reader, self._sweeper):
            if task is not None:
                task.cancel()
        self._reader = self._sweeper = None
        self._queued.clear()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(errors.ConnectionTimeout("the client was closed"))
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ requests

    async def _execute(self, call):
        """Send one request and return its decoded result, retrying as `Attempts` says (the same
        request id every time, so a write is applied at most once)."""
        request_id = self.last_request_id = self.next_request_id()
        self._open[request_id] = None
        try:
            body = self.encode(call, request_id, next(iter(self._open)))
            attempts = Attempts(self, call, request_id)
            while True:
                if self.connection is None:
                    raise errors.ConnectionTimeout("the client was closed")
                epoch = self._epoch
                try:
                    return call.decode(await self._attempt(body, request_id))
                except errors.ZmqstoreError as exc:
                    pause, hint = attempts.failed(exc, self.connection)
                await asyncio.sleep(pause)
                self._switch(epoch, hint)
        finally:
            del self._open[request_id]

    async def _attempt(self, body, request_id):
        connection = self.connection
        if connection.sock is None:
            connection._connect()                   # raises ConnectionTimeout when it cannot
        if not connection.handshake():
            raise errors.ConnectionTimeout(f"no handshake with {connection.endpoint} within {connection.timeout} s")
        sock = connection.sock
        self._ensure_reader(sock)
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        self._waiting[request_id] = reply
        self._bodies[request_id] = body
        self._deadlines.append((time.monotonic() + connection.timeout, reply, connection))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        try:
            if connection.batches:
                # Sent when this pass of the event loop ends, with whatever else was asked in it
                # (_send_queued); a full queue to the node shows as no reply within the timeout.
                if not self._queued:
                    loop.call_soon(self._send_queued)
                self._queued.append((sock, request_id, reply, body))
            else:
                sending = sock.send(body)
                if not sending.done():      # the queue to that node is full: wait, within the timeout
                    await asyncio.wait_for(sending, connection.timeout)
                else:
                    sending.result()        # raises what made it fail
            result = await reply
        except asyncio.TimeoutError:
            raise errors.ConnectionTimeout(f"could not send to {connection.endpoint} within "
                                           f"{connection.timeout} s") from None
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise                   # the caller's task is being cancelled
            # the socket was closed under the send (the client moved to another node, or closed)
            raise errors.ConnectionTimeout(f"the connection to {connection.endpoint} was closed") from None
        except zmq.ZMQError as exc:
            raise errors.ConnectionTimeout(f"could not send to {connection.endpoint}: {exc}") from None
        finally:
            if self._waiting.get(request_id) is reply:
                del self._waiting[request_id]
                del self._bodies[request_id]
        if result.ok:
            return result.result
        code, message, details = result.result
        raise errors.error_from_code(code, message, details)

    def _send_queued(self):
        """Send the requests queued in this pass of the event loop, consecutive ones to one socket as
        batches of up to BATCH_MAX bodies and GROUP_BYTES (one larger body goes alone), or one per
        message once the node has refused a batch."""
        queued, self._queued = self._queued, []
        most = protocol.BATCH_MAX if self.connection is not None and self.connection.batches else 1
        target, frames, replies, size = None, [], [], 0
        for sock, _rid, reply, body in queued:
            if reply.done():
                continue        # failed meanwhile: the client moved to another node, or closed
            if frames and (sock is not target or len(frames) == most or size + len(body) > protocol.GROUP_BYTES):
                self._send_batch(target, frames, replies)
                frames, replies, size = [], [], 0
            target = sock
            frames.append(body)
            replies.append(reply)
            size += len(body)
        if frames:
            self._send_batch(target, frames, replies)

    @staticmethod
    def _send_batch(sock, frames, replies):
        def failed(exc):
            for reply in replies:
                if not reply.done():
                    reply.set_exception(errors.ConnectionTimeout(f"could not send the request: {exc}"))
        try:
            sending = sock.send(frames[0]) if len(frames) == 1 else sock.send_multipart(frames)
        except zmq.ZMQError as exc:
            failed(exc)
            return
        def done(f):    # sent now, or once the queue to the node had room (the sweeper times out the wait)
            if f.cancelled():
                failed("the socket was closed")
            elif f.exception() is not None:
                failed(f.exception())
        sending.add_done_callback(done)

    def _batch_refused(self, sock):
        """The node refused a batch whole (a node of an earlier release, or one whose max_request_size
        is below GROUP_BYTES): from now on one request per message on this connection, and every
        request sent and still waiting goes again, alone (same request ids: a write applies once)."""
        self.connection.batches = False
        queued = {rid for _sock, rid, _reply, _body in self._queued}
        for rid, reply in self._waiting.items():
            if rid not in queued and not reply.done():
                # a failed send leaves the request to the sweeper's timeout; read its outcome so
                # that asyncio does not report an exception nobody retrieved
                sock.send(self._bodies[rid]).add_done_callback(lambda f: f.cancelled() or f.exception())

    def _ensure_reader(self, sock):
        if self._reader_sock is sock and self._reader is not None and not self._reader.done():
            return
        if self._reader is not None:
            self._reader.cancel()
        self._reader_sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(sock))

    async def _read_replies(self, sock):
        waiting, decode = self._waiting, protocol.decode_reply
        try:
            while True:
                raw = await sock.recv()
                while True:
                    try:
                        reply = decode(raw)
                    except errors.ZmqstoreError:
                        reply = None
                    future = waiting.get(reply.request_id) if reply is not None else None
                    if future is not None and not future.done():
                        future.set_result(reply)
                    elif reply is not None and reply.request_id == 0 and not reply.ok and \
                            reply.result[0] in BATCH_REFUSED and self.connection is not None and \
                            self.connection.batches and self._reader_sock is sock:
                        self._batch_refused(sock)
                    try:    # what else has arrived, without a trip through the event loop each
                        raw = sock.recv(zmq.NOBLOCK).result()
                    except zmq.Again:
                        break
        except (asyncio.CancelledError, zmq.ZMQError):
            return      # the socket was closed: the client went to another endpoint, or closed
        finally:
            if self._reader_sock is sock:   # a request whose reply this task would have read
                for future in waiting.values():
                    if not future.done():
                        future.set_exception(errors.ConnectionTimeout("the connection was closed"))

    async def _sweep(self):
        """Fail every attempt whose reply did not come within the timeout (ConnectionTimeout)."""
        deadlines = self._deadlines
        while deadlines:
            deadline, future, connection = deadlines[0]
            wait = deadline - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            deadlines.popleft()
            if not future.done():
                future.set_exception(errors.ConnectionTimeout(
                    f"no reply from {connection.endpoint} within {connection.timeout} s"))

    def _switch(self, epoch, hint):
        """Go to the primary a not_primary named, else to the next endpoint, unless another
        request already moved the client since `epoch`. Attempts in flight on the old socket fail
        at once and are sent again (same request ids) on the new one."""
        if self._epoch != epoch or self.connection is None:
            return
        self._epoch += 1
        if self._reader is not None:
            self._reader.cancel()
            self._reader = self._reader_sock = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(errors.ConnectionTimeout("the client moved to another node"))
        self.connection.next_endpoint(hint)

    # ------------------------------------------------------------ operations beyond api.Commands

    async def outcome(self, request_id) -> str:
        """As the blocking Client.outcome."""
        state, _seq = await self._execute(Call("OUTCOME", (request_id,), tuple))
        self.resolved(request_id, state)
        return state

    async def scan(self, prefix=None, start=None, end=None, limit=None, stale=False):
        """As the blocking Client.scan, an async iterator of (key, value)."""
        prefix, cursor, end = self._scan_range(prefix, start, end)
        remaining = limit
        while remaining is None or remaining > 0:
            page = await self._execute(self._scan_call(prefix, cursor, end, remaining, stale))
            for item in page.items:
                yield item
            if remaining is not None:
                remaining -= len(page.items)
            cursor = page.cursor
            if cursor is None:
                return

    def pipeline(self, max_in_flight=64) -> "Pipeline":
        """Queue operations, then `await execute()` them with up to max_in_flight in flight."""
        if not 1 <= max_in_flight <= transport.MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be 1..{transport.MAX_IN_FLIGHT}")
        return Pipeline(self, max_in_flight)

    def watch(self, prefix=b"", from_seq=None, snapshot=False, stale=False, window=WATCH_WINDOW,
              from_vector=None) -> "Watcher":
        """As the blocking Client.watch; the Watcher starts when awaited or entered (`async with`)."""
        check_watch_args(from_seq, snapshot, window, from_vector)
        position = dict(from_vector) if from_vector is not None else from_seq
        return Watcher(self, encode_key(prefix) if prefix else b"", position, snapshot, stale, window)


class Pipeline(_BlockingPipeline):
    """The blocking Pipeline's queue (every operation, scans included), executed as coroutines: up to
    max_in_flight at once, results in queue order, each with its own request id and retries."""

    async def execute(self, raise_on_error=True):
        client = self._client
        calls, self._calls = self._calls, []
        scans, self._scans = self._scans, {}
        window = asyncio.Semaphore(self.max_in_flight)

        async def one(call):
            async with window:
                try:
                    return await client._execute(call)
                except errors.ZmqstoreError as exc:
                    return exc
        results = await asyncio.gather(*(one(call) for call in calls))
        for i, (prefix, end, limit, stale) in scans.items():
            page = results[i]
            if isinstance(page, errors.ZmqstoreError):
                continue
            items = list(page.items)
            if page.cursor is not None and (limit is None or len(items) < limit):
                try:
                    async for item in client.scan(prefix, page.cursor, end,
                                                  None if limit is None else limit - len(items), stale):
                        items.append(item)
                except errors.ZmqstoreError as exc:
                    items = exc
            results[i] = items
        if raise_on_error:
            for r in results:
                if isinstance(r, errors.ZmqstoreError):
                    raise r
        return results


class Watcher:
    """The asyncio driver of a WatchStream (see the blocking watcher.Watcher): `await` it or enter it
    with `async with` to start it (then a watch "from now" has started), iterate it with `async for`,
    close() it."""

    def __init__(self, client, prefix, from_seq, snapshot, stale, window):
        self.stream = WatchStream(client, prefix, from_seq, snapshot, stale, window)
        self.connection = client.connection.sibling()
        self._started = False

    through = property(lambda self: self.stream.through)
    snapshot_seq = property(lambda self: self.stream.snapshot_seq)
    resume_seq = property(lambda self: self.stream.resume_seq)
    reconnections = property(lambda self: self.stream.reconnections)

    async def start(self) -> "Watcher":
        if not self._started:
            self._started = True
            try:
                while not self.stream.replies:
                    await self._receive(None)
            except BaseException:
                self.close()
                raise
        return self

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        self.close()

    def __aiter__(self):
        return self

    async def __anext__(self) -> WatchEvent:
        await self.start()
        while not self.stream.events:
            await self._receive(None)
        return self.stream.take()

    async def poll(self, timeout) -> list:
        """As the blocking Watcher.poll."""
        await self.start()
        events = self.stream.events
        end = time.monotonic() + timeout
        while not events:
            left = end - time.monotonic()
            if left <= 0:
                break
            await self._receive(left)
        while self.stream.watch_id is not None and await self._receive(0):
            pass                    # what else has arrived already
        return self.stream.take_all()

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    async def _receive(self, timeout) -> bool:
        """Read one reply, waiting up to `timeout` (0: only one already here; None: as long as a
        live stream may be silent); reconnect after a failure the retry policy allows. Returns
        whether a reply was read."""
        stream, connection = self.stream, self.connection
        try:
            if stream.watch_id is None:
                body = stream.start()
                if not connection.ready():
                    raise errors.ConnectionTimeout(f"cannot reach {connection.endpoint}")
                await self._send(body)
            silence = stream.silence + connection.timeout
            try:
                if timeout == 0:
                    raw = await connection.sock.recv(zmq.NOBLOCK)
                else:
                    raw = await asyncio.wait_for(connection.sock.recv(), silence if timeout is None
                                                 else min(timeout, silence))
            except (asyncio.TimeoutError, zmq.Again):
                if time.monotonic() - stream.heard < silence:
                    return False        # the caller's timeout, not the stream's
                raise errors.ConnectionTimeout(f"no reply from {connection.endpoint} within {silence:.1f} s") \
                    from None
            credit = stream.read(raw)
            if credit is not None:
                await self._send(credit)
            return True
        except RESUMABLE as exc:
            await asyncio.sleep(stream.pause_after(exc))
            stream.reconnect(connection, exc)
            return False

    async def _send(self, body):
        try:
            await asyncio.wait_for(self.connection.sock.send(body), self.connection.timeout)
        except asyncio.TimeoutError:
            raise errors.ConnectionTimeout(f"could not send to {self.connection.endpoint}") from None

