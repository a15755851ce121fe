"""What the blocking and the asyncio clients share beyond the command layer (api.Commands): request
ids, request encoding with `open_from`, the writes of unknown outcome kept for outcome(), and one
request's retry rules (`Attempts`). Only the waiting differs between the two clients (docs/CLIENT.md)."""
import itertools
import os
import time

from . import errors, protocol
from .api import Commands
from .connection import Retry

DEFAULT_TIMEOUT = 3.0   # per attempt; above the default 2.0 s replication_timeout so a slow commit still answers
MAX_UNRESOLVED = 100    # writes of unknown outcome the client keeps asking the node to remember ...
UNRESOLVED_TTL = 30.0   # ... for this long (nodes forget a silent client after session_timeout, 60 s)


class ClientBase(Commands):
    def __init__(self, retry=None, decode_keys=True, max_request_size=16 << 20):
        self.retry = retry or Retry()
        self.decode_keys = decode_keys
        self.max_request_size = max_request_size
        self.client_id = os.urandom(16)
        self._ids = itertools.count(1)
        self.last_request_id = 0      # the id of the latest request sent (for outcome())
        # Writes whose outcome is unknown (timeouts): open_from stays at or below them, so the node
        # keeps their outcomes for outcome() until asked (or its session_timeout passes).
        self._unresolved = []

    connection = None               # the subclass's connection.Connection

    @property
    def timeout(self) -> float:
        """Seconds per attempt (a change applies from the next connection)."""
        return self.connection.timeout

    @timeout.setter
    def timeout(self, seconds):
        self.connection.timeout = seconds

    @property
    def endpoint(self) -> str:
        """The node this client talks to now, host:port."""
        return self.connection.endpoint

    def next_request_id(self) -> int:
        return next(self._ids)

    def encode(self, call, request_id, open_from=None) -> bytes:
        """One request body. `open_from`: the lowest request id still awaited (default: this one);
        the node may forget the outcomes of this client's earlier writes."""
        open_from = request_id if open_from is None else open_from
        if self._unresolved:
            if time.monotonic() - self._unresolved[0][1] > UNRESOLVED_TTL:
                self._unresolved = [u for u in self._unresolved if time.monotonic() - u[1] <= UNRESOLVED_TTL]
            if self._unresolved:
                open_from = min(open_from, *(rid for rid, _ in self._unresolved))
        body = protocol.encode_request(call.command, self.client_id, request_id, open_from, *call.args)
        if len(body) > self.max_request_size:
            raise errors.RequestTooLarge(f"{call.command} request of {len(body)} bytes exceeds max_request_size "
                                         f"{self.max_request_size}")
        return body

    def unresolve(self, request_id):
        """Keep asking nodes to remember this write's outcome (for outcome())."""
        self._unresolved.append((request_id, time.monotonic()))
        del self._unresolved[:-MAX_UNRESOLVED]

    def resolved(self, request_id, state):
        """outcome() settled this write (committed or fenced): stop asking nodes to keep it."""
        if state in ("committed", "not_found"):
            self._unresolved = [u for u in self._unresolved if u[0] != request_id]


class Attempts:
    """One request's retries, the same in both clients: timeouts, `unavailable` and redirects are
    retried with the same request id (so a write is applied at most once) while the retry policy
    allows; `replication_timeout` and refusals are not."""

    def __init__(self, client, call, request_id):
        self.client, self.call, self.request_id = client, call, request_id
        self.started = time.monotonic()
        self._sleeps = None

    def failed(self, exc, connection):
        """After attempt failure `exc`: (pause before the next attempt, endpoint hint or None); raises
        `exc` (with its request_id) when it is final."""
        hint = None
        if isinstance(exc, errors.NotPrimary):
            hint = connection.redirect(exc.details)
        elif isinstance(exc, errors.ReplicationTimeout):
            self.client.unresolve(self.request_id)
            exc.request_id = self.request_id
            raise exc
        elif not isinstance(exc, (errors.Unavailable, errors.ConnectionTimeout)):
            raise exc
        if self._sleeps is None:
            self._sleeps = self.client.retry.sleeps(self.started)
        pause = next(self._sleeps, None)
        if pause is None:
            command = self.call.command
            if command in protocol.WRITE_COMMANDS or command in protocol.MEMBERSHIP_CHANGES:
                self.client.unresolve(self.request_id)
            exc.request_id = self.request_id
            raise exc
        return pause, hint
