"""Client-side pipelining: queue operations, keep many in flight, results in order (like redis-py)."""
import time

import zmq

from . import errors, protocol, transport
from .client import RETRYABLE, encode_key
from .protocol import pack_value, unpack_value


def _unpack_or(default):
    return lambda result: default if result[0] is None else unpack_value(result[0])


def _nothing(result):
    return None


def _first(result):
    return result[0]


class Pipeline:
    """Operations are sent on `execute()`, up to `max_in_flight` at a time, each with its own request
    id. Not atomic: each operation is applied on its own, in order per key. Timed-out or redirected
    operations are resent with the same request id, so none is applied twice."""

    def __init__(self, client, max_in_flight=64):
        self._client = client
        self.max_in_flight = max_in_flight
        self._ops = []   # (command, args, decode)

    def __len__(self):
        return len(self._ops)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._ops.clear()

    def get(self, key, default=None, stale=False):
        self._ops.append(("GET", (encode_key(key), bool(stale)), _unpack_or(default)))
        return self

    def put(self, key, value):
        self._ops.append(("PUT", (encode_key(key), pack_value(value)), _nothing))
        return self

    def delete(self, key):
        self._ops.append(("DEL", (encode_key(key),), _first))
        return self

    def cas(self, key, expected, new):
        exp = None if expected is None else pack_value(expected)
        self._ops.append(("CAS", (encode_key(key), exp, pack_value(new)), _first))
        return self

    def put_many(self, items):
        pairs = items.items() if hasattr(items, "items") else items
        self._ops.append(("PUT_MANY", ([[encode_key(k), pack_value(v)] for k, v in pairs],), _nothing))
        return self

    def ping(self):
        self._ops.append(("PING", (), _first))
        return self

    def execute(self, raise_on_error=True):
        """Run every queued operation; returns their results in queue order. With raise_on_error, the
        first failed operation's exception is raised after all have finished; otherwise failed
        operations have their exception in place of a result."""
        client = self._client
        ops, self._ops = self._ops, []
        rids = [next(client._ids) for _ in ops]
        open_from = rids[0] if rids else 0   # every earlier request of this client has finished
        bodies = [client._encode(cmd, rid, args, open_from) for (cmd, args, _), rid in zip(ops, rids)]
        index_of = {rid: i for i, rid in enumerate(rids)}
        results = [None] * len(ops)
        pending = list(range(len(ops)))
        sleeps = client.retry.sleeps()
        while pending:
            retry, hint = self._round(client, pending, bodies, index_of, ops, results)
            if not retry:
                break
            pause = next(sleeps, None)
            if pause is None:
                for i in retry:
                    if not isinstance(results[i], errors.ZmqstoreError):
                        results[i] = errors.ConnectionTimeout(f"no reply from {client.endpoint}")
                    results[i].request_id = rids[i]
                    if ops[i][0] in protocol.WRITE_COMMANDS:
                        client._unresolve(rids[i])
                break
            time.sleep(pause)
            client._next_endpoint(hint)
            pending = retry
        if raise_on_error:
            for r in results:
                if isinstance(r, errors.ZmqstoreError):
                    raise r
        return results

    def _round(self, client, pending, bodies, index_of, ops, results):
        """Send `pending` with a sliding window; returns (indices to retry, redirect hint)."""
        if not client._handshake():
            return list(pending), None
        sock = client._sock
        send, recv = transport.send, transport.recv
        window = self.max_in_flight
        in_flight = set()
        retry, hint = [], None
        next_pos = 0
        while next_pos < len(pending) or in_flight:
            try:
                while next_pos < len(pending) and len(in_flight) < window:
                    i = pending[next_pos]
                    send(sock, bodies[i])
                    in_flight.add(i)
                    next_pos += 1
                raw = recv(sock)
            except zmq.Again:
                # Nothing could be sent or arrived within the timeout: retry what is in flight or unsent.
                retry.extend(sorted(in_flight))
                retry.extend(pending[next_pos:])
                return retry, hint
            reply = protocol.decode_reply(raw)
            i = index_of.get(reply.request_id)
            if i is None or i not in in_flight:
                continue  # late reply to an earlier round
            in_flight.discard(i)
            if reply.ok:
                results[i] = ops[i][2](reply.result)
                continue
            code, message, details = reply.result
            exc = errors.error_from_code(code, message, details)
            exc.request_id = reply.request_id
            if isinstance(exc, errors.ReplicationTimeout):
                client._unresolve(reply.request_id)
            results[i] = exc
            if isinstance(exc, RETRYABLE):
                retry.append(i)
                hint = hint or client._redirect(details)
        return sorted(retry), hint
