"""A fault campaign against a real cluster: workload processes (workload.py) record a history on a
few keys while a seeded nemesis (nemesis.py) kills, pauses and cuts off nodes; then a checker
judges it (docs/TESTING.md).

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

from . import convergence, partition
from .linearizability import check, read_history
from .nemesis import MEMBERSHIP_FAULTS, NETWORK_FAULTS, PROCESS_FAULTS, Nemesis
from .process import Cluster, keys_by_default, wait_until
from .watching import check_dynamo_watch, check_watch, dynamo_watch_worker, watch_worker
from ..dynamo.placement import Placement
from .workload import dynamo_finals, dynamo_worker, leader_worker
from ..errors import ZmqstoreError


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
        where = "each key identical on its owners" if summary.get("replicas") else "every node identical"
        verdict = (f"{summary['acknowledged']} acknowledged writes: none lost, {where}"
                   if summary["ok_verdict"] else "FAILED (report below)")
    else:
        ops = f"{summary['operations']} = ok {summary['ok']} + fail {summary['fail']} + info {summary['info']}"
        verdict = "linearizable" if summary["ok_verdict"] else "NOT linearizable (report below)"
    rows = [
        ("campaign", f"{summary['mode']} mode, seed {summary['seed']}, {summary['seconds']:g} s, {summary['nodes']} "
                     f"nodes{', replicas ' + str(summary['replicas']) if summary.get('replicas') else ''}, network faults {'on' if summary['network_faults'] else 'off (needs iptables and root)'}, "
                     f"keys {'on' if summary.get('keys') else 'off'}"),
        ("operations", ops),
        ("faults", f"{summary['faults']}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("checker", verdict),
    ]
    if not dynamo:
        rows.append(("recovery", f"a primary {summary['primary_after_heal_s']:.2f} s after the last fault healed"))
    watch = summary.get("watch")
    if watch is not None:
        rows.append(("watcher", f"{watch['events']} changes, {watch['reconnections']} reconnections: "
                     + ("every acknowledged write once, in order, nothing uncommitted" if watch["ok"] else
                        f"FAILED: missing {watch['missing']}, duplicates {watch['duplicates']}, out of order "
                        f"{watch['out_of_order']}, uncommitted {watch['uncommitted']}, "
                        + (f"wrong value {watch['wrong']}, unexplained {watch['unexplained']}, "
                           if "wrong" in watch else "")
                        + f"current {watch['current']}")))
    rows.append(("convergence", "NOT reached in time (the nodes' states follow below)"
                 if summary["converged_after_last_op_s"] is None else
                 ("the owners of each partition hold the same data " if summary.get("replicas") else
                  f"every node holds the same {'data' if dynamo else 'log'} ")
                 + f"{summary['converged_after_last_op_s']:.2f} s after the last operation"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def campaign(base_dir, seconds, seed, clients=3, network=None, faults=None, broken=None, nodes=3,
             mode="leader", log_level="WARNING", keys=None, replicas=0):
    """Run one campaign on `nodes` nodes; returns a summary dict (verdict included). network: use
    iptables partitions (None: when available, i.e. iptables present and root). faults: only these
    kinds. broken: run a deliberately broken build (faults.py) to show the checker
    catches it. replicas: dynamo mode's copies of each key (docs/PARTITIONING.md); with fewer than
    `nodes`, each key is checked on its owners, and there is no watcher (a partitioned cluster
    serves no watch) and no membership fault (it cannot change members yet)."""
    args, env = ["--log-level", log_level], None
    if replicas:
        args += ["--replicas", str(replicas)]
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
    known = PROCESS_FAULTS + NETWORK_FAULTS + MEMBERSHIP_FAULTS
    if faults and set(faults) - set(known):
        raise ValueError(f"unknown fault kinds {sorted(set(faults) - set(known))}; known: {', '.join(known)}")
    with_keys = keys if keys is not None else keys_by_default()
    if faults and set(faults) & set(MEMBERSHIP_FAULTS) and with_keys:
        raise ValueError("membership faults run without keys (the nemesis rejoins nodes with --join)")
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
                target, worker_args = dynamo_worker, (c.endpoints[p % nodes], p, seconds, seed, path, client_keys)
            else:
                target, worker_args = leader_worker, (c.endpoints, p, seconds, seed, path, client_keys)
            procs.append(ctx.Process(target=target, args=worker_args, daemon=True))
        # A watcher through it all, judged against the history (docs/WATCH.md).
        watch_path = os.path.join(base_dir, "watch.jsonl")
        clients_done = ctx.Event()
        if not replicas:
            procs.append(ctx.Process(target=dynamo_watch_worker if mode == "dynamo" else watch_worker,
                                     args=(c.endpoints, seconds, watch_path, client_keys, clients_done), daemon=True))
        for proc in procs:
            proc.start()
        nemesis = Nemesis(c, seed, partitioner, client_keys)
        if c.keys is None and not replicas:
            nemesis.faults += MEMBERSHIP_FAULTS     # --join needs no keys (docs/MEMBERSHIP.md)
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
                    try:
                        primary = c.wait_primary(30)
                    except TimeoutError as exc:     # say which node exited or hangs, and what it logged
                        raise TimeoutError(f"{exc} after the faults were healed; node processes and log tails: "
                                           f"{json.dumps(_node_report(c), indent=1)}") from None
                    to_primary = time.monotonic() - healed
            finally:
                # One deadline for all of them (the watcher's catch-up included), so that a hung
                # worker is killed and reported within the campaign's bound, not one bound per worker.
                joined_by = time.monotonic() + seconds + 180
                for i, proc in enumerate(procs):
                    if i == len(histories):
                        clients_done.set()      # the watcher may now catch up with the last write
                    proc.join(max(1.0, joined_by - time.monotonic()))
                    if proc.is_alive():
                        proc.kill()
                        proc.join(10)
        # A client that crashed or hung took its history with it: its writes would go unchecked.
        broken_workers = [i for i, proc in enumerate(procs) if proc.exitcode != 0
                          or not os.path.exists(histories[i] if i < len(histories) else watch_path)]
        if replicas and not procs[len(histories):]:
            clients_done.set()
        last_op = time.monotonic()
        done = Cluster.dynamo_converged if mode == "dynamo" else _converged
        try:
            # A broken build may never converge (two primaries): do not wait long for it.
            wait_until(lambda: done(c), 5 if broken else 30, interval=0.05, message="convergence")
            to_converge = round(time.monotonic() - last_op, 3)
            extra = {}
        except TimeoutError:
            to_converge = None
            extra = {"not_converged": _trace_convergence(c, done, 5 if broken else 90),
                     "processes": _node_report(c)}
        summary = {"mode": mode, "keys": c.keys is not None, "seed": seed, "seconds": seconds, "nodes": nodes,
                   "replicas": replicas,
                   "faults": len(nemesis.log),
                   "fault_log": nemesis.log, "network_faults": bool(network), "converged_after_last_op_s": to_converge,
                   **extra}
        if mode == "dynamo":
            history = [op for path in histories if os.path.exists(path) for op in convergence.read_history(path)]
            reads = sum(int(open(path + ".reads").read()) for path in histories if os.path.exists(path + ".reads"))
            try:
                verdict = _judge_dynamo(c, history)
            except ZmqstoreError as exc:     # a node that does not answer cannot be judged: say which, and why
                verdict = _Unjudged(f"the final reads failed: {exc}", c)
                summary.setdefault("processes", verdict.processes)
            summary.update(operations=len(history) + reads, reads=reads, ok_verdict=verdict.ok,
                           acknowledged=verdict.acknowledged, lost=len(verdict.lost))
            if os.path.exists(watch_path):
                summary["watch"] = check_dynamo_watch(watch_path, history)
        else:
            history = [op for path in histories if os.path.exists(path) for op in read_history(path)]
            verdict = check(history)
            summary.update(operations=len(history), final_primary=primary, ok_verdict=verdict.ok,
                           primary_after_heal_s=round(to_primary, 3))
            summary["linearizable"] = verdict.ok
            if os.path.exists(watch_path):
                summary["watch"] = check_watch(watch_path, history)
        summary.update({k: sum(1 for op in history if op.outcome == k) for k in ("ok", "fail", "info")})
        summary["passed"] = (verdict.ok and to_converge is not None and not broken_workers
                             and summary.get("watch", {"ok": True})["ok"])
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


class _Unjudged:
    """A dynamo verdict that could not be reached (a node did not answer the final reads)."""

    ok = identical = False
    acknowledged = 0
    lost = ()

    def __init__(self, why, cluster):
        self.why, self.processes = why, _node_report(cluster)

    def report(self):
        return self.why + "\n" + json.dumps(self.processes, indent=1)


def _node_report(cluster, lines=12):
    """Each node's process state and the end of its log: what a campaign that failed to converge or
    to read its nodes shows, so that a node that exited or hangs can be told from a slow one."""
    report = {}
    for node_id, node in cluster.nodes.items():
        proc = node.proc
        report[node_id] = {"alive": node.alive(), "exit_code": proc.poll() if proc is not None else None,
                           "data_dir": node.data_dir, "join": getattr(node, "join", None),
                           "log_tail": node.log().splitlines()[-lines:]}
    return report


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
        replicas = (cluster.nodes[next(iter(cluster.nodes))].status() or {}).get("replicas", 0)
        owners = None
        if replicas and replicas < len(cluster.nodes):
            placement = Placement(list(cluster.nodes), replicas)
            owners = lambda key: placement.preference(key.encode() if isinstance(key, str) else key)  # noqa: E731
        verdict = convergence.check(history, dynamo_finals(cluster, owners), owners)
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
                    + ", ".join(PROCESS_FAULTS + NETWORK_FAULTS + MEMBERSHIP_FAULTS))
    ap.add_argument("--replicas", type=int, default=0, help="dynamo mode: copies of each key (0: every node)")
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
                           nodes=opts.nodes, mode=opts.mode, log_level=opts.log_level, keys=opts.keys or None,
                           replicas=opts.replicas)
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
    if "processes" in summary:
        print("node processes and log tails: " + json.dumps(summary["processes"], indent=1))
    if "broken_workers" in summary:
        print(f"workload processes {summary['broken_workers']} crashed or hung: their histories are missing")
    if "report" in summary:
        print(summary["report"])
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
