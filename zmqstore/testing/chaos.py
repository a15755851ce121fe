"""A fault campaign against a real cluster: workload processes record a history on a few keys while
a seeded nemesis kills, pauses and cuts off nodes; then a checker judges it (docs/TESTING.md).

- leader mode: put, get and cas; the linearizability checker (linearizability.py).
- dynamo mode: writes and deletes with contexts, and reads, each client on its own node; after the
  heal, every node must hold identical data within a bound, and no acknowledged write may be lost
  (convergence.py).

    python -m zmqstore.testing.chaos [--mode leader|dynamo] [--seconds 300] [--seed N] [--clients 3]
                                     [--nodes 3|5] [--dir DIR]

The seed is printed; the same seed replays the same fault schedule (the workload's timing, and so
the history, still depends on the machine). Every process the campaign starts is stopped at the
end, also when it fails or is interrupted.
"""
import argparse
import fcntl
import json
import multiprocessing
import os
import random
import signal
import shutil
import sys
import tempfile
import threading
import time

from .. import errors, protocol
from ..client import Client, Retry
from . import convergence, partition
from .linearizability import Op, check, read_history, write_history
from .process import Cluster, wait_until

KEYS = ("a", "b", "c")
PROCESS_FAULTS = ("kill-primary", "kill-random", "pause-primary", "pause-random")
# Need iptables (root): partition.py. isolate cuts one node off from all others; split cuts the
# cluster into a random majority and minority (in 3 nodes, like isolate-random); bridge splits the
# others into two sides that only one node, the bridge, still sees both of; a flapping link is cut
# and restored every 0.1-0.3 s.
NETWORK_FAULTS = ("isolate-primary", "isolate-random", "split", "bridge", "flap")


# ---------------------------------------------------------------- workload

def _worker(endpoints, process, seconds, seed, out_path, client_keys):
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


def _dynamo_worker(endpoint, process, seconds, seed, out_path, client_keys):
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


def _dynamo_finals(cluster):
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


# ---------------------------------------------------------------- nemesis

class Nemesis:
    """Injects one fault at a time from a seeded schedule: kill -9 (then restart) or SIGSTOP (then
    SIGCONT) of the primary or of a random node and, with a Partitioner, network partitions."""

    def __init__(self, cluster, seed, partitioner=None):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.partitioner = partitioner
        self.faults = PROCESS_FAULTS + (NETWORK_FAULTS if partitioner is not None else ())
        self.log = []            # (time, fault, node)

    def run(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(0.5, 1.5))
            if time.monotonic() >= end:
                break
            fault = self.rng.choice(self.faults)
            nodes = sorted(self.cluster.nodes)
            # Every draw happens whatever the cluster looks like, so a seed replays its schedule.
            target = self.rng.choice(nodes)
            duration = self.rng.uniform(0.5, 2.0)
            sub = random.Random(self.rng.random())     # draws whose count depends on timing
            if fault.endswith("primary"):
                found = self.cluster.primaries()
                target = min(found) if found else target
            self.log.append((round(time.monotonic(), 3), fault, target))
            node = self.cluster.nodes[target]
            if fault.startswith("kill"):
                node.kill()
                time.sleep(duration)
                self.cluster.start(target, wait=False)
            elif fault.startswith("pause"):
                node.signal(signal.SIGSTOP)
                time.sleep(duration)
                node.signal(signal.SIGCONT)
            elif fault.startswith("isolate"):
                self.partitioner.isolate(target)
                time.sleep(duration)
            elif fault == "split":
                shuffled = sub.sample(nodes, len(nodes))
                minority = sub.randint(1, (len(nodes) - 1) // 2)
                self.partitioner.split(shuffled[:minority], shuffled[minority:])
                time.sleep(duration)
            elif fault == "bridge":
                others = sub.sample([n for n in nodes if n != target], len(nodes) - 1)
                half = len(others) // 2
                self.partitioner.split(others[:half], others[half:])
                time.sleep(duration)
            elif fault == "flap":
                other = sub.choice([n for n in nodes if n != target])
                until = time.monotonic() + duration
                while time.monotonic() < until:
                    self.partitioner.cut(target, other)
                    time.sleep(sub.uniform(0.1, 0.3))
                    self.partitioner.heal()
                    time.sleep(sub.uniform(0.1, 0.3))
            else:
                raise ValueError(f"unknown fault {fault!r}")
            if self.partitioner is not None:
                self.partitioner.heal()

    def heal(self):
        if self.partitioner is not None:
            self.partitioner.heal()
        for node_id, node in self.cluster.nodes.items():
            if node.alive():
                node.signal(signal.SIGCONT)
            else:
                self.cluster.start(node_id, wait=False)


# ---------------------------------------------------------------- campaign

def _converged(cluster):
    """One primary, and every node holding and having committed the same log."""
    statuses = [n.status() for n in cluster.nodes.values()]
    if any(st is None for st in statuses):
        return False
    if sum(st["role"] == "primary" for st in statuses) != 1:
        return False
    return len({(st["term"], st["last_seq"], st["commit_seq"]) for st in statuses}) == 1


def format_summary(summary):
    """The campaign summary as a table for a person."""
    kinds = {}
    for _t, fault, _node in summary["fault_log"]:
        kinds[fault] = kinds.get(fault, 0) + 1
    dynamo = summary["mode"] == "dynamo"
    if dynamo:
        ops = (f"{summary['operations']}: {summary['reads']} reads, writes ok {summary['ok']} + fail "
               f"{summary['fail']} + info {summary['info']}")
        verdict = (f"{summary['acknowledged']} acknowledged writes: none lost, every node identical"
                   if summary["ok_verdict"] else "FAILED (report below)")
    else:
        ops = f"{summary['operations']} = ok {summary['ok']} + fail {summary['fail']} + info {summary['info']}"
        verdict = "linearizable" if summary["ok_verdict"] else "NOT linearizable (report below)"
    rows = [
        ("campaign", f"{summary['mode']} mode, seed {summary['seed']}, {summary['seconds']:g} s, {summary['nodes']} "
                     f"nodes, network faults {'on' if summary['network_faults'] else 'off (needs iptables and root)'}, "
                     f"keys {'on' if summary.get('keys') else 'off'}"),
        ("operations", ops),
        ("faults", f"{summary['faults']}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("checker", verdict),
    ]
    if not dynamo:
        rows.append(("recovery", f"a primary {summary['primary_after_heal_s']:.2f} s after the last fault healed"))
    rows.append(("convergence", "NOT reached in time (the nodes' states follow below)"
                 if summary["converged_after_last_op_s"] is None else
                 f"every node holds the same {'data' if dynamo else 'log'} "
                 f"{summary['converged_after_last_op_s']:.2f} s after the last operation"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def campaign(base_dir, seconds, seed, clients=3, network=None, faults=None, broken=None, nodes=3,
             mode="leader", log_level="WARNING", keys=None):
    """Run one campaign on `nodes` nodes; returns a summary dict (verdict included). network: use
    iptables partitions (None: when available, i.e. iptables present and root). faults: only these
    kinds. broken: run a deliberately broken build (faults.py) to show the checker
    catches it."""
    args, env = ["--log-level", log_level], None
    if broken:
        # deposed-reads: primaries read without confirming leadership and never step down.
        # early-acks: that, and writes acknowledged once on the primary alone (write_quorum = 1).
        # dynamo-lww: concurrent writes are not kept as siblings; the latest timestamp wins.
        env = {"ZMQSTORE_TEST_BROKEN": "deposed-reads" if broken == "early-acks" else broken}
        if broken == "early-acks":
            conf = os.path.join(base_dir, "broken.ini")
            with open(conf, "w") as f:
                f.write("[cluster]\nwrite_quorum = 1\n")
            args += ["--config", conf]
    known = PROCESS_FAULTS + NETWORK_FAULTS
    if faults and set(faults) - set(known):
        raise ValueError(f"unknown fault kinds {sorted(set(faults) - set(known))}; known: {', '.join(known)}")
    if network is None:
        network = partition.available()
    if faults and not network and set(faults) & set(NETWORK_FAULTS):
        raise ValueError("network faults need iptables and root (partition.available() is False)")
    lock = _campaign_lock()
    c = Cluster(base_dir, size=nodes, args=args, env=env, mode=mode, keys=keys)
    client_keys = c.keys.client_kwargs() if c.keys is not None else {}
    histories = []
    partitioner = None
    try:
        if network:
            partitioner = partition.Partitioner({i: n.host for i, n in c.nodes.items()})
        c.start_all()
        ctx = multiprocessing.get_context("spawn")
        procs = []
        for p in range(clients):
            path = os.path.join(base_dir, f"history-{p}.jsonl")
            histories.append(path)
            if mode == "dynamo":
                target, worker_args = _dynamo_worker, (c.endpoints[p % nodes], p, seconds, seed, path, client_keys)
            else:
                target, worker_args = _worker, (c.endpoints, p, seconds, seed, path, client_keys)
            procs.append(ctx.Process(target=target, args=worker_args, daemon=True))
        for proc in procs:
            proc.start()
        nemesis = Nemesis(c, seed, partitioner)
        if faults:
            nemesis.faults = tuple(faults)
        elif mode == "dynamo":     # no primary: its faults would hit a random node anyway
            nemesis.faults = tuple(f for f in nemesis.faults if not f.endswith("primary"))
        try:
            nemesis.run(max(0.0, seconds - 1.0))
        finally:
            nemesis.heal()
            healed = time.monotonic()
            try:
                if mode == "leader":
                    primary = c.wait_primary(30)
                    to_primary = time.monotonic() - healed
            finally:
                for proc in procs:
                    proc.join(seconds + 60)
                    if proc.is_alive():
                        proc.kill()
                        proc.join(10)
        # A client that crashed or hung took its history with it: its writes would go unchecked.
        broken_workers = [i for i, proc in enumerate(procs) if proc.exitcode != 0 or not os.path.exists(histories[i])]
        last_op = time.monotonic()
        done = Cluster.dynamo_converged if mode == "dynamo" else _converged
        try:
            # A broken build may never converge (two primaries): do not wait long for it.
            wait_until(lambda: done(c), 5 if broken else 30, interval=0.05, message="convergence")
            to_converge = round(time.monotonic() - last_op, 3)
            extra = {}
        except TimeoutError:
            to_converge = None
            extra = {"not_converged": _trace_convergence(c, done, 5 if broken else 90)}
        summary = {"mode": mode, "keys": c.keys is not None, "seed": seed, "seconds": seconds, "nodes": nodes,
                   "faults": len(nemesis.log),
                   "fault_log": nemesis.log, "network_faults": bool(network), "converged_after_last_op_s": to_converge,
                   **extra}
        if mode == "dynamo":
            history = [op for path in histories if os.path.exists(path) for op in convergence.read_history(path)]
            reads = sum(int(open(path + ".reads").read()) for path in histories if os.path.exists(path + ".reads"))
            verdict = _judge_dynamo(c, history)
            summary.update(operations=len(history) + reads, reads=reads, ok_verdict=verdict.ok,
                           acknowledged=verdict.acknowledged, lost=len(verdict.lost))
        else:
            history = [op for path in histories if os.path.exists(path) for op in read_history(path)]
            verdict = check(history)
            summary.update(operations=len(history), final_primary=primary, ok_verdict=verdict.ok,
                           primary_after_heal_s=round(to_primary, 3))
            summary["linearizable"] = verdict.ok
        summary.update({k: sum(1 for op in history if op.outcome == k) for k in ("ok", "fail", "info")})
        summary["passed"] = verdict.ok and to_converge is not None and not broken_workers
        if broken_workers:
            summary["broken_workers"] = broken_workers
        if not verdict.ok:
            summary["report"] = verdict.report()
        return summary
    finally:
        # Cleanup must finish even if a second SIGTERM arrives meanwhile.
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            try:
                if network:
                    partition.clean()
            finally:
                c.stop_all()
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            lock.close()


def _campaign_lock():
    """One campaign at a time per machine: they share the loopback addresses and the iptables chain."""
    f = open(os.path.join(tempfile.gettempdir(), "zmqstore-chaos.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RuntimeError("another fault campaign is running on this machine (it holds "
                           f"{f.name}); campaigns share node addresses and the iptables chain") from None
    return f


def _trace_convergence(cluster, done, seconds):
    """The nodes did not converge in time: keep watching (up to `seconds`), recording what they
    report every few seconds, so a failure shows whether they were slow or stuck."""
    trace = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        states = {i: n.status() for i, n in cluster.nodes.items()}
        trace.append({"t": round(time.monotonic(), 1), "nodes": {i: st and {k: st.get(k) for k in (
            "role", "term", "primary_id", "last_seq", "commit_seq", "applied_seq", "voter", "restoring",
            "digest", "applied", "converged")} for i, st in states.items()}})
        if done(cluster):
            trace.append({"t": round(time.monotonic(), 1), "converged_late": True})
            break
        time.sleep(5)
    return trace


def _judge_dynamo(cluster, history):
    """Read every node's final state and check it; reads again if a tombstone was collected on one
    node between the reads (the data is equal once collection has run everywhere)."""
    deadline = time.monotonic() + 10
    while True:
        verdict = convergence.check(history, _dynamo_finals(cluster))
        if verdict.identical or time.monotonic() > deadline:
            if not verdict.identical:
                log_states = {i: n.status() for i, n in cluster.nodes.items()}
                print("node states when data differed: " + json.dumps(log_states), flush=True)
            return verdict
        time.sleep(0.2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    ap.add_argument("--mode", default="leader", choices=("leader", "dynamo"))
    ap.add_argument("--keys", action="store_true", help="CurveZMQ keys on every socket (docs/SECURITY.md)")
    ap.add_argument("--json", action="store_true", help="also print the summary, fault log included, as JSON")
    ap.add_argument("--log-level", default="WARNING", help="the nodes' log level (their logs go to the campaign dir)")
    ap.add_argument("--dir", help="keep data, logs and histories here (default: a temporary dir)")
    ap.add_argument("--faults", help="comma-separated fault kinds to use (default: all available): "
                    + ", ".join(PROCESS_FAULTS + NETWORK_FAULTS))
    ap.add_argument("--broken", choices=("deposed-reads", "early-acks", "dynamo-lww"),
                    help="run a deliberately broken build")
    opts = ap.parse_args(argv)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so every node and iptables rule is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    faults = opts.faults.split(",") if opts.faults else None
    if opts.dir:
        os.makedirs(opts.dir, exist_ok=True)
    d = opts.dir or tempfile.mkdtemp(prefix="zmqstore-chaos-")
    summary = None
    try:
        summary = campaign(d, opts.seconds, seed, opts.clients, faults=faults, broken=opts.broken,
                           nodes=opts.nodes, mode=opts.mode, log_level=opts.log_level, keys=opts.keys or None)
    finally:
        if opts.dir is None and summary is not None and summary["passed"]:
            shutil.rmtree(d, ignore_errors=True)
        elif opts.dir is None:
            print(f"node logs and histories kept in {d}", flush=True)
    print(format_summary(summary))
    if opts.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "report"}))
    if "not_converged" in summary:
        print("nodes after the last operation: " + json.dumps(summary["not_converged"]))
    if "broken_workers" in summary:
        print(f"workload processes {summary['broken_workers']} crashed or hung: their histories are missing")
    if "report" in summary:
        print(summary["report"])
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
