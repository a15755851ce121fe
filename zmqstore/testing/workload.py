"""The fault campaigns' clients (chaos.py): each runs in its own process, does random operations on
a few keys until its time is up, and writes the history the checkers judge (docs/TESTING.md).

- leader mode (`leader_worker`): put, get and cas over every node's endpoint; linearizability.py.
- dynamo mode (`dynamo_worker`): reads, and writes and deletes with the context of a read, on one
  node; convergence.py, with what every node holds at the end (`dynamo_finals`).
- leader mode, also a watcher (`watch_worker`) following every change from seq 0 through the
  campaign; `check_watch` judges its stream against the history.
"""
import json
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
    with Client(endpoints, timeout=0.5, retry=Retry(max_tries=8, delay=0.05, max_delay=0.2, deadline=3.0),
                **client_keys) as db:
        while time.monotonic() < end:
            key = rng.choice(KEYS)
            kind = rng.choices(("put", "get", "cas"), (3, 4, 3))[0]
            counter += 1
            value = process * 1_000_000_000 + counter      # every written value is unique
            expected = None
            invoke = time.monotonic()
            try:
                if kind == "put":
                    db.put(key, value)
                    op = Op(process, "put", key, value, invoke, time.monotonic(), "ok")
                elif kind == "get":
                    result = db.get(key)
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


def dynamo_finals(cluster):
    """{node id: {key: (siblings, ctx)}} read from every node."""
    finals = {}
    for node_id, node in cluster.nodes.items():
        with node.client(timeout=2.0, retry=Retry(max_tries=3)) as db:
            finals[node_id] = {}
            for key in KEYS:
                v = db.get_versions(key, r=1)       # this node's own data, whatever read_quorum says
                if v.siblings:
                    finals[node_id][key] = (sorted(((s.value, s.origin, s.seq, s.deleted) for s in v.siblings),
                                                   key=lambda t: (t[1], t[2])),
                                            protocol.decode_context(v.context))
    return finals


def watch_worker(endpoints, seconds, out_path, client_keys, clients_done):
    """A leader-mode watcher through the whole campaign (docs/WATCH.md): every change from seq 0,
    across whatever the nemesis does, then, once every client has finished (`clients_done`, a
    multiprocessing Event) and the cluster has healed, until it is current with the primary's commit
    seq. Writes one JSON line per change, [seq, key, value or null], and a last line
    {"reconnections": n, ...}; `check_watch` judges them against the history."""
    retry = Retry(max_tries=400, delay=0.05, max_delay=0.3, deadline=120)
    with Client(endpoints, timeout=0.5, retry=retry, **client_keys) as db:
        with db.watch("", from_seq=0) as watcher, open(out_path, "w", encoding="utf-8") as out:
            def record(events):
                for e in events:
                    out.write(json.dumps([e.seq, e.key, None if e.deleted else e.value]) + "\n")
            end = time.monotonic() + seconds + 120
            while time.monotonic() < end and not clients_done.is_set():
                record(watcher.poll(0.5))
            target, deadline = None, time.monotonic() + 120
            while time.monotonic() < deadline:
                if target is None:
                    try:
                        status = db.status()
                        if status["role"] == "primary":
                            target = status["commit_seq"]
                        else:
                            db.connection.next_endpoint()
                    except errors.ZmqstoreError:
                        pass
                record(watcher.poll(0.5))
                if target is not None and watcher.through is not None and watcher.through >= target:
                    break
            out.write(json.dumps({"reconnections": watcher.reconnections, "through": watcher.through,
                                  "target": target}) + "\n")


def check_watch(path, history) -> dict:
    """A campaign watcher's stream against the clients' history (every written value is unique):
    in seq order, no change twice, every acknowledged write there (no gap), and nothing from a
    write known not to have happened (a failed request, a cas that did not apply)."""
    events, tail = [], {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if isinstance(item, dict):
                tail = item
            else:
                events.append(item)
    seqs = [e[0] for e in events]
    values = [e[2] for e in events if e[2] is not None]
    seen = set(values)
    must, must_not = set(), set()
    for op in history:
        if op.kind == "put":
            (must if op.outcome == "ok" else must_not if op.outcome == "fail" else set()).add(op.value)
        elif op.kind == "cas":
            new = op.value[1]
            if op.outcome == "ok":
                (must if op.result else must_not).add(new)
            elif op.outcome == "fail":
                must_not.add(new)
    missing = must - seen
    result = {"events": len(events), "reconnections": tail.get("reconnections"),
              "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a),
              "duplicates": len(values) - len(seen), "missing": len(missing),
              "uncommitted": len(seen & must_not), "current": tail.get("target") is not None
              and (tail.get("through") or 0) >= tail["target"]}
    result["ok"] = result["current"] and not (result["out_of_order"] or result["duplicates"] or result["missing"]
                                              or result["uncommitted"])
    return result
