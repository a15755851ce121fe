#!/usr/bin/env python3
"""Pipelined leader puts, this working tree against a git revision, nodes *and* client from each
(bench/compare.py --baseline runs only the baseline's nodes, with this tree's client).

Usage: python bench/ab_puts.py REF [--rounds N] [--seconds S] [--mode leader|dynamo]   (make bench-ab BASELINE=REF)

Each round starts a fresh 3-node cluster per tree (fsync on, 127.0.0.2-4), the two trees in
alternating order; a client process of the same tree warms up with 2,000 puts, then runs 1 KB puts
through `pipeline(max_in_flight=100)` in lots of 1,000 for S seconds against node 1. Prints puts/s
and CPU per put (user + system, every thread) of the client and of each node, per round and the
medians, with the load average: on a shared machine only the two trees' figures of one run compare.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from zmqstore.testing.process import Cluster  # noqa: E402

from compare import baseline_source  # noqa: E402  (bench/ is on sys.path as the script's directory)
from servers import cpu_seconds  # noqa: E402

CLIENT = """
import json, sys, time
from zmqstore import Client
endpoint, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
value = b"x" * 1000
with Client(endpoint, timeout=10) as db:
    pipe = db.pipeline(max_in_flight=100)
    for i in range(2000):
        pipe.put(f"warm{i}", value)
    pipe.execute()
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0, t0, n = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        pipe = db.pipeline(max_in_flight=100)
        for i in range(1000):
            pipe.put(f"k{n + i}", value)
        pipe.execute()
        n += 1000
    elapsed = time.perf_counter() - t0
    print(json.dumps({"puts": n, "puts_s": n / elapsed, "client_us": (time.process_time() - cpu0) / n * 1e6}))
"""


def one_round(tree, mode, seconds):
    env = {"PYTHONPATH": tree, "PYTHONSAFEPATH": "1"}
    with tempfile.TemporaryDirectory() as d:
        cluster = Cluster(d, size=3, args=["--log-level", "WARNING"], env=env, new_session=False, keys=False,
                          mode=mode)
        client = None
        try:
            cluster.start_all(timeout=60)
            client = subprocess.Popen([sys.executable, "-c", CLIENT, cluster.nodes[1].endpoint, str(seconds), mode],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=dict(os.environ, **env))
            if client.stdout.readline().strip() != "ready":
                raise SystemExit(f"the client of {tree} did not start")
            pids = {n: node.proc.pid for n, node in cluster.nodes.items()}
            cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
            client.stdin.write("\n")
            client.stdin.flush()
            out = json.loads(client.stdout.readline())
            out.update({f"node{n}_us": (cpu_seconds(pid) - cpu0[n]) / out["puts"] * 1e6 for n, pid in pids.items()})
            out["load"] = os.getloadavg()[0]
            return out
        finally:
            if client is not None:
                client.kill()
                client.wait(10)
            cluster.stop_all()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mode", choices=("leader", "dynamo"), default="leader")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        trees = {opts.ref: baseline_source(opts.ref, d), "this tree": os.path.dirname(HERE)}
        names = list(trees)
        rows = {name: [] for name in names}
        print(f"{opts.mode} mode, 3 nodes, 1 KB puts 100 deep; {opts.rounds} rounds of {opts.seconds:g} s; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        for r in range(opts.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                row = one_round(trees[name], opts.mode, opts.seconds)
                rows[name].append(row)
                print(f"  {name:>10}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)
    print("medians:")
    for name in names:
        keys = rows[name][0].keys()
        print(f"  {name:>10}: " + ", ".join(f"{k} {statistics.median(row[k] for row in rows[name]):,.1f}"
                                           for k in keys if k != "puts"))
    base, new = (statistics.median(row["puts_s"] for row in rows[name]) for name in names)
    print(f"this tree / {opts.ref}: {new / base:.3f}x puts/s")


if __name__ == "__main__":
    main()
