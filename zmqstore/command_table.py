"""What both modes' client command tables share (commands.py for leader mode, dynamo/commands.py):
dispatch through one table, PING and STATUS, the exactly-once check of a retried write, and one
scan page. Each handler returns (reply body, what the reply waits for); `no_wait` is the mode's
"nothing" (modes.py reads the rest)."""
import time

from . import errors, keys, limits, protocol
from .sessions import STALE
from .space import adds_data, request_bytes


class CommandTable:
    no_wait = 0
    space = None        # space.SpaceGuard, set by the node: refuses writes that add data while short of disk

    def __init__(self, engine, handlers):
        self.engine = engine
        self.storage = engine.storage
        self.config = engine.config
        self.sessions = engine.sessions
        self._handlers = {"PING": self._ping, "STATUS": self._status, **handlers}

    def handle(self, request):
        """One decoded request -> (reply body, what it waits for)."""
        return self._handlers[request.command](request)

    def _ping(self, req):
        return protocol.encode_ok(req.request_id, self.config.node_id), self.no_wait

    def _status(self, req):
        return protocol.encode_ok(req.request_id, self.status()), self.no_wait

    def status(self) -> dict:
        """The STATUS reply's map (docs/PROTOCOL.md), each mode's own."""
        raise NotImplementedError

    def _member_to_add(self, req):
        """ADD_MEMBER's arguments, checked, as the protocol.Member to add (a learner: leader mode
        promotes it; dynamo mode has only voters). Unset ports are port + 1000 and port + 2000."""
        node_id, host, port, pub_port, peer_port, key = req.args
        if not 0 < node_id < 1 << 32 or not host or not 0 < port < 65536:
            raise errors.BadArgument("ADD_MEMBER needs a node id from 1 to 2^32 - 1, a host and a port (1-65535)")
        pub_port = port + 1000 if pub_port is None else pub_port
        peer_port = port + 2000 if peer_port is None else peer_port
        if not (0 < pub_port < 65536 and 0 < peer_port < 65536) or len({port, pub_port, peer_port}) < 3:
            raise errors.BadArgument(f"ports {port}, {pub_port} and {peer_port} must be three distinct TCP ports")
        if self.config.keys and key is None:
            raise errors.BadArgument("this cluster uses keys: add the member with its public key (add-member --key)")
        if key is not None:
            keys.check_public(key)
        return protocol.Member(node_id, host, port, pub_port, peer_port, False, key)

    def _admit(self, req):
        """A write not applied before, as far as the sessions know (after the retry check): the
        space alarm may refuse it. Until the sessions are whole (a restart rebuilds them from the
        log, which a node short of disk trims), a refusal could be a lie to the retry of a write
        applied before the restart, which no_space ("changed nothing") must never be: those get
        unavailable, which the client retries."""
        if self.space is None or not adds_data(req):
            return
        try:
            self.space.admit(request_bytes(req))
        except errors.NoSpace:
            now = time.monotonic()
            if now - self.engine.sessions_complete_since < self.config.session_timeout:
                raise errors.Unavailable("short of disk space, and this node restarted too recently to know "
                                         "whether this request was applied before; retry later") from None
            raise

    def _retried(self, req):
        """The record of this client's request when it was applied already (a retry: it gets the
        first outcome, not a second apply), else None. A request below an open_from the client sent
        since is a late copy: refused."""
        record = self.sessions.lookup(req.client_id, req.request_id, req.open_from, time.monotonic())
        if record is STALE:
            raise errors.RequestFenced(f"request {req.request_id} is below an open_from this client already "
                                       f"sent: a late copy, not applied")
        return record

    def _scan_page(self, req, value_of=None):
        """One page of a scan from RocksDB (limits.SCAN), with the cursor of the next page (None: done)."""
        start, end, prefix, limit, _stale = req.args
        page = limits.SCAN.items if limit is None else min(limit, limits.SCAN.items)
        items, next_key = self.storage.scan(start, end, prefix, page, limits.SCAN.bytes, value_of)
        if limit is not None and len(items) >= limit:
            next_key = None
        return protocol.encode_ok(req.request_id, [list(item) for item in items], next_key), self.no_wait
