#!/usr/bin/env python3
"""zmqstore side by side with Redis and etcd: the same Python workloads, alternated round by round, in one run.

Usage: python bench/compare.py [--quick] [--seconds S] [--rounds R] [--records N] [--clients 1,16]
                               [--only NAME,...] [--workloads W,...] [--baseline REF] [--json FILE]
                               (make bench-compare)

Systems: zmqstore leader mode (3 nodes; also with reads spread over the nodes as ReadIndex reads),
dynamo mode (3 nodes, w = 1 and w = 2), a single zmqstore node (for sequential and pipelined puts
only; it holds the same records as the others), Redis with two replicas as people run it (AOF,
appendfsync everysec) and with appendfsync always plus WAIT 1, and etcd (3 members). Workloads:
bench/ycsb.py.
Every figure is also given as zmqstore leader mode's figure divided by that system's, with the CPU each
server process (zmqstore: node 1, 2, 3, node 1 the leader-mode primary; Redis: primary, replicas; etcd:
members) used per operation over the cell (all threads, /proc), and the targets
of issue 17 are printed as met or missed. The raw limits (pyzmq round trip, fdatasync, one synced
RocksDB write) are measured in the same run. Figures depend on the machine's load: compare ratios.

--baseline REF adds "zmqstore leader @REF": the same 3-node leader cluster run from git revision REF
of this repository (extracted with git archive, the nodes started with it first on PYTHONPATH), so
that a change's before and after are measured in one run, alternated like every other system.
"""
import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdrh.histogram import HdrHistogram  # noqa: E402

import servers  # noqa: E402  (bench/ is on sys.path as the script's directory)
import ycsb  # noqa: E402
from limits_raw import raw_limits  # noqa: E402
from stores import connect  # noqa: E402
from targets import report_targets  # noqa: E402

LEADER = "zmqstore leader"
PUT_ONLY = ("seq_put", "pipelined_put")     # one client: the anchors of issue 17


def client_task(spec, workload, seconds, start_at, worker, workers, records, seed, insert_base):
    """Runs in a client process: one client of `spec` doing `workload`."""
    store = connect(spec, worker)
    try:
        return ycsb.run_client(store, workload, seconds, start_at, worker, workers, records, seed, insert_base)
    finally:
        store.close()


class Bench:
    def __init__(self, opts, base_dir):
        self.opts, self.base_dir = opts, base_dir
        self.clusters, self.systems = {}, {}       # name -> cluster; label -> (cluster name, spec)
        self.results = {}                          # (label, workload, clients) -> [round result]
        self.pool = None

    # -------------------------------------------------------------- set-up

    def add(self, name, make):
        try:
            cluster = make(os.path.join(self.base_dir, name.replace(" ", "_")))
        except Exception as exc:
            print(f"{name}: cannot be set up ({exc}): left out", flush=True)
            return None
        if getattr(cluster, "binary", True) is None:
            return None
        self.clusters[name] = cluster
        return cluster

    def start(self):
        only = self.opts.only
        want = lambda label: not only or any(o in label for o in only)   # noqa: E731
        z = servers.ZmqstoreCluster
        plan = [
            ("zmqstore leader", lambda d: z(d, "leader", 3),
             {LEADER: {}, "zmqstore leader read_index": {"read_index": True}}),
            ("zmqstore dynamo", lambda d: z(d, "dynamo", 3),
             {"zmqstore dynamo w=1": {"w": 1}, "zmqstore dynamo w=2": {"w": 2}}),
            ("zmqstore single", lambda d: z(d, "leader", 1), {"zmqstore single": {}}),
            ("redis async", lambda d: servers.RedisCluster(d, "everysec"), {"redis async": {"wait": False}}),
            ("redis always+WAIT", lambda d: servers.RedisCluster(d, "always"), {"redis always+WAIT": {"wait": True}}),
            ("etcd", servers.EtcdCluster, {"etcd": {}}),
        ]
        if self.opts.baseline:
            try:
                code = baseline_source(self.opts.baseline, os.path.join(self.base_dir, "baseline-src"))
            except (OSError, subprocess.CalledProcessError) as exc:
                raise SystemExit(f"--baseline {self.opts.baseline}: cannot extract it with git archive ({exc})")
            baseline = f"{LEADER} @{self.opts.baseline}"
            plan.insert(1, (baseline, lambda d: z(d, "leader", 3, code_dir=code), {baseline: {}}))
        always = (LEADER, f"{LEADER} @{self.opts.baseline}")     # the reference, and what it is compared with
        for name, make, labels in plan:
            labels = {label: kw for label, kw in labels.items() if want(label) or label in always}
            if not labels or self.add(name, make) is None:
                continue
            cluster = self.clusters[name]
            print(f"starting {name} ({cluster.version})", flush=True)
            try:
                cluster.start()
            except Exception as exc:       # reported and left out, never stood in for
                print(f"{name} did not start ({type(exc).__name__}: {exc}): left out", flush=True)
                cluster.stop()
                del self.clusters[name]
                if name == "zmqstore leader":
                    raise
                continue
            for label, kw in labels.items():
                self.systems[label] = (name, cluster.spec(**kw))
        self.pool = multiprocessing.get_context("spawn").Pool(max(self.opts.clients))

    def load(self):
        rng = random.Random(1)
        items = [(ycsb.key_of(i), rng.randbytes(ycsb.VALUE_SIZE)) for i in range(self.opts.records)]
        loaded = set()
        for label, (name, spec) in self.systems.items():
            if name in loaded:
                continue
            t0 = time.perf_counter()
            store = connect(spec)
            try:
                store.load(items)
            finally:
                store.close()
            loaded.add(name)
            print(f"loaded {len(items):,} records of {ycsb.VALUE_SIZE} bytes into {name} in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)

    def stop(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        for cluster in self.clusters.values():
            try:
                cluster.stop()
            except Exception as exc:
                print(f"stopping {cluster.version}: {exc}", flush=True)

    # -------------------------------------------------------------- measuring

    def cells(self):
        for workload in self.opts.workloads or ycsb.WORKLOADS:
            for clients in ([1] if workload in PUT_ONLY else self.opts.clients):
                yield workload, clients

    def run_cell(self, label, workload, clients, rnd, cell_index):
        name, spec = self.systems[label]
        cluster = self.clusters[name]
        cpu_before = cluster.cpu()
        seconds = self.opts.seconds
        start_at = time.time() + 0.3
        base = (rnd * 64 + cell_index) * 1_000_000
        jobs = [self.pool.apply_async(client_task, (spec, workload, seconds, start_at, w, clients,
                                                    self.opts.records, zlib.crc32(f"{label}|{rnd}|{w}".encode()), base))
                for w in range(clients)]
        parts = [job.get(timeout=seconds + 120) for job in jobs]
        cpu = [after - before for before, after in zip(cpu_before, cluster.cpu())]
        hist = ycsb.histogram()
        for part in parts:
            hist.add(HdrHistogram.decode(part["histogram"]))
        ops = sum(p["ops"] for p in parts)
        wall = statistics.mean(p["seconds"] for p in parts)
        errors = sum(p["errors"] for p in parts)
        first = next((p["first_error"] for p in parts if p["first_error"]), None)
        self.results.setdefault((label, workload, clients), []).append(
            {"ops_s": ops / wall if wall else 0.0, "ops": ops, "errors": errors, "first_error": first,
             "histogram": hist.encode(), "cpu_us_per_op": [c / ops * 1e6 if ops else 0.0 for c in cpu]})

    def measure(self):
        labels = list(self.systems)
        cells = list(self.cells())
        for rnd in range(self.opts.rounds):
            order = labels[rnd % len(labels):] + labels[:rnd % len(labels)]   # who goes first changes
            print(f"round {rnd + 1} of {self.opts.rounds}, load average {os.getloadavg()[0]:.1f}", flush=True)
            for index, (workload, clients) in enumerate(cells):
                for label in order:
                    if (label == "zmqstore single" and workload not in PUT_ONLY) or \
                            (label.endswith("read_index") and workload in PUT_ONLY):    # no reads there
                        continue
                    self.run_cell(label, workload, clients, rnd, index)

    def summary(self):
        """(label, workload, clients) -> median ops/s over rounds, percentiles over every round's operations,
        errors."""
        out = {}
        for key, rounds in self.results.items():
            hist = ycsb.histogram()
            for r in rounds:
                hist.add(HdrHistogram.decode(r["histogram"]))
            out[key] = {"ops_s": statistics.median(r["ops_s"] for r in rounds),
                        "rounds_ops_s": [round(r["ops_s"], 1) for r in rounds],
                        "p50_us": hist.get_value_at_percentile(50), "p99_us": hist.get_value_at_percentile(99),
                        "p999_us": hist.get_value_at_percentile(99.9),
                        "errors": sum(r["errors"] for r in rounds),
                        # each server process's CPU per operation (median over rounds; whole cell)
                        "cpu_us_per_op": [statistics.median(r["cpu_us_per_op"][i] for r in rounds)
                                          for i in range(len(rounds[0]["cpu_us_per_op"]))],
                        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None)}
        return out


def baseline_source(ref, directory):
    """The tree of git revision `ref` of this repository, extracted into `directory` (named after the
    revision's short hash, which the table's versions line shows); returns it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    short = subprocess.run(["git", "-C", repo, "rev-parse", "--short", ref], capture_output=True, text=True,
                           check=True).stdout.strip()
    directory = os.path.join(directory, short)
    os.makedirs(directory)
    archive = subprocess.run(["git", "-C", repo, "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    return directory


def table(summary, labels, cells):
    """A markdown table per cell: each system's ops/s and latency, and zmqstore leader's figure over its."""
    lines = []
    for workload, clients in cells:
        desc = ycsb.WORKLOADS[workload][0]
        lines += ["", f"**{workload}** ({desc}), {clients} client{'s' if clients > 1 else ''}", "",
                  "| system | ops/s | p50 ms | p99 ms | p99.9 ms | zmqstore leader / this | server CPU us/op | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lead = summary.get((LEADER, workload, clients))
        for label in labels:
            s = summary.get((label, workload, clients))
            if s is None:
                continue
            ratio = f"{lead['ops_s'] / s['ops_s']:.2f}x" if lead and s["ops_s"] else "-"
            lat = ("-", "-", "-") if workload == "pipelined_put" else \
                tuple(f"{s[k] / 1000:.2f}" for k in ("p50_us", "p99_us", "p999_us"))
            cpu = " + ".join(f"{c:.0f}" for c in s["cpu_us_per_op"])
            lines.append(f"| {label} | {s['ops_s']:,.0f} | {lat[0]} | {lat[1]} | {lat[2]} | {ratio} | {cpu} | "
                         f"{s['errors']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny run that checks the scripts work")
    ap.add_argument("--seconds", type=float, default=3.0, help="per cell and round (default 3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--clients", default="1,16", help="client processes for workloads A-F (default 1,16)")
    ap.add_argument("--only", help="systems whose label contains one of these (comma-separated)")
    ap.add_argument("--workloads", help="only these workloads (comma-separated, e.g. C,seq_put)")
    ap.add_argument("--baseline", help="also run zmqstore leader mode from this git revision (before/after)")
    ap.add_argument("--json", help="also write every figure to this file")
    opts = ap.parse_args()
    if opts.quick:
        opts.seconds, opts.rounds, opts.records, opts.clients = 0.3, 1, 2_000, "1,4"
    opts.clients = [int(c) for c in opts.clients.split(",")]
    opts.only = opts.only.split(",") if opts.only else None
    opts.workloads = opts.workloads.split(",") if opts.workloads else None
    unknown = set(opts.workloads or ()) - set(ycsb.WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(ycsb.WORKLOADS)}")

    machine = {"cpus": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    print(f"machine: {machine}; {opts.records:,} records, {opts.seconds} s per cell, {opts.rounds} rounds",
          flush=True)
    raw = raw_limits(quick=opts.quick)
    with tempfile.TemporaryDirectory(prefix="zmqstore-compare-") as d:
        bench = Bench(opts, d)
        try:
            bench.start()
            bench.load()
            bench.measure()
        finally:
            bench.stop()
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    summary = bench.summary()
    labels = list(bench.systems)
    cells = list(bench.cells())
    versions = {name: c.version for name, c in bench.clusters.items()}
    print(f"\nversions: {versions}\nmachine: {machine}\nraw limits, same run: {raw}")
    print(table(summary, labels, cells))
    for label, workload, clients in summary:
        s = summary[(label, workload, clients)]
        if s["errors"]:
            print(f"errors: {label}, {workload}, {clients} clients: {s['errors']}, first: {s['first_error']}")
    print()
    report_targets(summary, raw)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": machine, "versions": versions, "raw": raw, "options": vars(opts),
                       "figures": {"|".join(map(str, k)): v for k, v in summary.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
