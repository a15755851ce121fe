"""The fault campaigns' watchers (chaos.py, docs/TESTING.md): one process per campaign follows every
change through the faults, writes what it received, and a check judges that stream against the
clients' history (every written value is unique).

- leader mode (`watch_worker`, `check_watch`): from seq 0, across failovers, until current with
  the primary's commit seq; changes in seq order, none twice, no gap, nothing uncommitted.
- dynamo mode (`dynamo_watch_worker`, `check_dynamo_watch`): from the empty applied vector on one
  node, moving to another when that one cannot serve the position (removed, compacted), until it
  has every write the converged nodes applied; every acknowledged write's dot once, with its key
  and value, each origin's changes in seq order, nothing from a failed write.
"""
import json
import time

from .. import errors
from ..client import Client, Retry

WATCH_RETRY = Retry(max_tries=400, delay=0.05, max_delay=0.3, deadline=120)
CATCH_UP = 120.0        # seconds the watcher may take, once the clients are done, to become current


def _reader(path):
    """(the change lines, the last line's dict) of a watcher's output."""
    events, tail = [], {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if isinstance(item, dict):
                tail = item
            else:
                events.append(item)
    return events, tail


# ---------------------------------------------------------------- leader mode

def watch_worker(endpoints, seconds, out_path, client_keys, clients_done):
    """A leader-mode watcher through the whole campaign (docs/WATCH.md): every change from seq 0,
    across whatever the nemesis does, then, once every client has finished (`clients_done`, a
    multiprocessing Event) and the cluster has healed, until it is current with the primary's commit
    seq. Writes one JSON line per change, [seq, key, value or null], and a last line
    {"reconnections": n, ...}; `check_watch` judges them against the history."""
    with Client(endpoints, timeout=0.5, retry=WATCH_RETRY, **client_keys) as db:
        with db.watch("", from_seq=0) as watcher, open(out_path, "w", encoding="utf-8") as out:
            def record(events):
                for e in events:
                    out.write(json.dumps([e.seq, e.key, None if e.deleted else e.value]) + "\n")
            end = time.monotonic() + seconds + CATCH_UP
            while time.monotonic() < end and not clients_done.is_set():
                record(watcher.poll(0.5))
            target, deadline = None, time.monotonic() + CATCH_UP
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


def _written(history):
    """(values that must be in the stream, values that must not) from a leader-mode history."""
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
    return must, must_not


def check_watch(path, history) -> dict:
    """A leader-mode campaign watcher's stream against the clients' history: in seq order (the
    changes of one entry share its seq), no change twice, every acknowledged write there (no gap),
    and nothing from a write known not to have happened (a failed request, a cas that did not apply)."""
    events, tail = _reader(path)
    seqs = [e[0] for e in events]
    values = [e[2] for e in events if e[2] is not None]
    seen = set(values)
    must, must_not = _written(history)
    result = {"events": len(events), "reconnections": tail.get("reconnections"),
              "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b < a),
              "duplicates": len(values) - len(seen), "missing": len(must - seen),
              "uncommitted": len(seen & must_not), "current": tail.get("target") is not None
              and (tail.get("through") or 0) >= tail["target"]}
    result["ok"] = result["current"] and not (result["out_of_order"] or result["duplicates"] or result["missing"]
                                              or result["uncommitted"])
    return result


# ---------------------------------------------------------------- dynamo mode

def _origin(name) -> int:
    """An origin as STATUS names it ("node:incarnation in hex") as the number the feed uses."""
    node, incarnation = name.split(":")
    return (int(node) << 32) | int(incarnation, 16)


def _cluster_applied(clients):
    """The elementwise maximum of the members' applied vectors, and whether every node answered
    with the same vector (converged); (None, False) when no member answered."""
    vectors = []
    for db in clients:
        try:
            status = db.status()
        except errors.ZmqstoreError:
            return None, False
        if status.get("role") != "removed":
            vectors.append({_origin(o): s for o, s in status["applied"].items()})
    if not vectors:
        return None, False
    target = {}
    for vector in vectors:
        for origin, seq in vector.items():
            target[origin] = max(seq, target.get(origin, 0))
    return target, all(v == vectors[0] for v in vectors)


def dynamo_watch_worker(endpoints, seconds, out_path, client_keys, clients_done):
    """A dynamo-mode watcher through the whole campaign: every change the node it watches applies,
    from the empty vector. It resumes from its `through` vector on the next node when a watch ends
    with an error its retries do not cover (the node was removed and came back empty: `compacted`).
    Once the clients are done, it goes on until its position covers what every member has applied
    and the members agree. One JSON line per change, [origin, seq, key, value or null], then
    {"reconnections": n, "reopened": n, "through": [[origin, seq]...], "target": [...] or null}."""
    status_clients = [Client(e, timeout=0.5, retry=Retry(max_tries=1), **client_keys) for e in endpoints]
    through, target, reconnections, reopened = {}, None, 0, 0
    end = time.monotonic() + seconds + CATCH_UP
    catching_up = False
    try:
        with Client(endpoints, timeout=0.5, retry=WATCH_RETRY, **client_keys) as db, \
                open(out_path, "w", encoding="utf-8") as out:
            while time.monotonic() < end and target is None:
                watcher = None
                try:
                    watcher = db.watch("", from_vector=through)
                    while time.monotonic() < end:
                        for e in watcher.poll(0.5):
                            out.write(json.dumps([e.dot.origin, e.dot.seq, e.key,
                                                  None if e.deleted else e.value]) + "\n")
                        through = dict(watcher.through)
                        if clients_done.is_set():
                            end = min(end, time.monotonic() + CATCH_UP) if not catching_up else end
                            catching_up = True
                            applied, agreed = _cluster_applied(status_clients)
                            if agreed and all(through.get(o, 0) >= s for o, s in applied.items()):
                                target = applied
                                break
                except errors.ZmqstoreError:
                    reopened += 1
                    db.connection.next_endpoint()
                    time.sleep(0.1)
                finally:
                    if watcher is not None:
                        reconnections += watcher.reconnections
                        watcher.close()
            out.write(json.dumps({"reconnections": reconnections, "reopened": reopened,
                                  "through": sorted(through.items()),
                                  "target": None if target is None else sorted(target.items())}) + "\n")
    finally:
        for db in status_clients:
            db.close()


def check_dynamo_watch(path, history) -> dict:
    """A dynamo-mode campaign watcher's stream against the clients' history (convergence.WriteOp):
    every acknowledged write's dot there once, with its key and value (null for a delete); each
    origin's changes in seq order; no value from a write that failed, and no change that no write
    (acknowledged, or of unknown outcome) could have made; and, at the end, a position covering
    every acknowledged write."""
    events, tail = _reader(path)
    got, duplicates, out_of_order, last = {}, 0, 0, {}
    for origin, seq, key, value in events:
        if (origin, seq) in got:
            duplicates += 1
        got[(origin, seq)] = (key, value)
        if seq <= last.get(origin, 0):
            out_of_order += 1
        last[origin] = seq
    through = dict((o, s) for o, s in tail.get("through", []))
    acknowledged = [op for op in history if op.outcome == "ok"]
    failed = {op.value for op in history if op.outcome == "fail" and op.kind == "put"}
    # What a change may be: a put or a delete that was acknowledged or whose outcome is unknown.
    maybe_puts = {(op.key, op.value) for op in history if op.kind == "put" and op.outcome in ("ok", "info")}
    maybe_deleted = {op.key for op in history if op.kind == "delete" and op.outcome in ("ok", "info")}
    unexplained = sum(1 for _o, _s, key, value in events if value not in failed and (
        (key, value) not in maybe_puts if value is not None else key not in maybe_deleted))
    missing = sum(1 for op in acknowledged if tuple(op.dot) not in got)
    wrong = sum(1 for op in acknowledged if tuple(op.dot) in got and got[tuple(op.dot)] != (op.key, op.value))
    result = {"events": len(events), "reconnections": (tail.get("reconnections") or 0) + (tail.get("reopened") or 0),
              "out_of_order": out_of_order, "duplicates": duplicates, "missing": missing, "wrong": wrong,
              "unexplained": unexplained,
              "uncommitted": sum(1 for _o, _s, _k, value in events if value in failed),
              "current": tail.get("target") is not None
              and all(through.get(op.dot[0], 0) >= op.dot[1] for op in acknowledged)}
    result["ok"] = result["current"] and not (out_of_order or duplicates or missing or wrong or unexplained
                                              or result["uncommitted"])
    return result
