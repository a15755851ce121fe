"""The fault campaigns' clients (chaos.py): each runs in its own process, does random operations on
a few keys until its time is up, and writes the history the checkers judge (docs/TESTING.md).

- leader mode (`leader_worker`): put, get and cas over every node's endpoint, and ReadIndex gets
  (`read_index`) on one node, a secondary most of the time; linearizability.py.
- dynamo mode (`dynamo_worker`): reads, and writes and deletes with the context of a read, on one
  node; convergence.py, with what every node holds at the end (`dynamo_finals`).

The campaign's watchers and their checks are in watching.py.
"""
import random
import time

from .. import errors, protocol
from ..client import Client, Retry
from . import convergence
from .linearizability import Op, write_history

KEYS = ("a", "b", "c")


def leader_worker(endpoints, process, seconds, seed, out_path, client_keys):
    """One client process: random operations on KEYS until `seconds` pass; writes its history."""
    rng = random.Random(seed * 1000 + process)
    ops = []
    counter = 0
    end = time.monotonic() + seconds
    retry = Retry(max_tries=8, delay=0.05, max_delay=0.2, deadline=3.0)
    home = endpoints[process % len(endpoints)]      # where this client's ReadIndex reads go
    near = Client([home], timeout=0.5, retry=retry, **client_keys)
    try:
        with Client(endpoints, timeout=0.5, retry=retry, **client_keys) as db:
            while time.monotonic() < end:
                if near.endpoint != home:   # a redirect took it to the primary: back to its own node
                    near.close()
                    near = Client([home], timeout=0.5, retry=retry, **client_keys)
                key = rng.choice(KEYS)
                kind = rng.choices(("put", "get", "cas", "read_index"), (3, 2, 3, 2))[0]
                reader = near if kind == "read_index" else db
                kind = "get" if kind == "read_index" else kind      # the same operation for the checker
                counter += 1
                value = process * 1_000_000_000 + counter      # every written value is unique
                expected = None
                invoke = time.monotonic()
                try:
                    if kind == "put":
                        db.put(key, value)
                        op = Op(process, "put", key, value, invoke, time.monotonic(), "ok")
                    elif kind == "get":
                        result = reader.get(key, read_index=reader is near)
                        op = Op(process, "get", key, None, invoke, time.monotonic(), "ok", result)
                    else:
                        expected = rng.choice([None] + [o.value for o in ops[-5:] if o.kind == "put"]
                                              + [o.result for o in ops[-5:] if o.kind == "get"])
                        applied = db.cas(key, expected, value)
                        op = Op(process, "cas", key, (expected, value), invoke, time.monotonic(), "ok", applied)
                except errors.RequestError:
                    args = None if kind == "get" else (value if kind == "put" else (expected, value))
                    op = Op(process, kind, key, args, invoke, time.monotonic(), "fail")
                except errors.ZmqstoreError:
                    # A read that failed changed nothing; a write that failed may still have been
                    # applied by an earlier attempt (or may commit later): unknown.
                    args = None if kind == "get" else (value if kind == "put" else (expected, value))
                    op = Op(process, kind, key, args, invoke, float("inf"), "fail" if kind == "get" else "info")
                ops.append(op)
    finally:
        near.close()
    write_history(out_path, ops)


def dynamo_worker(endpoint, process, seconds, seed, out_path, client_keys):
    """One dynamo-mode client process, on one node (retries go to the same node, which applies a
    retried write once): writes and deletes made with the context just read, and reads."""
    rng = random.Random(seed * 1000 + process)
    ops, reads = [], 0
    counter = 0
    end = time.monotonic() + seconds
    with Client(endpoint, timeout=0.5, retry=Retry(max_tries=6, delay=0.05, max_delay=0.2, deadline=2.0),
                **client_keys) as db:
        while time.monotonic() < end:
            key = rng.choice(KEYS)
            kind = rng.choices(("put", "delete", "get"), (6, 1, 3))[0]
            if kind == "get":
                try:
                    db.get(key)
                    reads += 1
                except errors.ZmqstoreError:
                    pass
                continue
            counter += 1
            value = process * 1_000_000_000 + counter if kind == "put" else None
            invoke = time.monotonic()
            try:
                versions = db.get_versions(key)
            except errors.ZmqstoreError:
                continue          # nothing was written
            ctx = protocol.decode_context(versions.context)
            seen = tuple((v.origin, v.seq, v.value) for v in versions.siblings)
            try:
                if kind == "put":
                    dot = db.put(key, value, context=versions.context)
                else:
                    dot = db.delete(key, context=versions.context)
                ops.append(convergence.WriteOp(process, kind, key, value, ctx, invoke, time.monotonic(), "ok",
                                               (dot.origin, dot.seq), seen))
            except errors.RequestError:
                ops.append(convergence.WriteOp(process, kind, key, value, ctx, invoke, time.monotonic(), "fail",
                                               None, seen))
            except errors.ZmqstoreError:
                ops.append(convergence.WriteOp(process, kind, key, value, ctx, invoke, None, "info", None, seen))
    convergence.write_history(out_path, ops)
    with open(out_path + ".reads", "w") as f:
        f.write(str(reads))


def dynamo_finals(cluster, owners=None):
    """{node id: {key: (siblings, ctx)}} read from every node; with `owners` (key -> its owners' ids,
    a partitioned cluster) each node is read for the keys it owns only, which it answers itself."""
    finals = {}
    for node_id, node in cluster.nodes.items():
        with node.client(timeout=2.0, retry=Retry(max_tries=3)) as db:
            finals[node_id] = {}
            for key in KEYS:
                if owners is not None and node_id not in owners(key):
                    continue
                v = db.get_versions(key, r=1)       # this node's own data, whatever read_quorum says
                if v.siblings:
                    finals[node_id][key] = (sorted(((s.value, s.origin, s.seq, s.deleted) for s in v.siblings),
                                                   key=lambda t: (t[1], t[2])),
                                            protocol.decode_context(v.context))
    return finals
