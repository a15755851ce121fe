#!/usr/bin/env python3
"""Elections in a quiet cluster: a 3-node leader cluster under a steady write and read load for a
while (10 minutes by default). A healthy cluster should hold no election after the bootstrap: GC
pauses and busy loops must not look like a dead primary. Prints the terms, elections started,
pauses detected and the load served.

Usage: python bench/quiet.py [--seconds N] [--json FILE]
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zmqstore import Retry, ZmqstoreError  # noqa: E402
from zmqstore.testing.process import Cluster  # noqa: E402


def load(c, stop, counts):
    """Steady load: pipelined batches of 64 puts, then a linearizable get, in a loop."""
    with c.client(timeout=2.0, retry=Retry(max_tries=20, deadline=30)) as db:
        i = 0
        while not stop.is_set():
            p = db.pipeline()
            for j in range(64):
                p.put(f"q{(i + j) % 100_000}", i + j)
            try:
                p.execute()
                db.get(f"q{i % 100_000}")
                counts["writes"] += 64
                counts["reads"] += 1
            except ZmqstoreError:
                counts["errors"] += 1
            i += 64


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--json")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=3, args=["--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            counts = {"writes": 0, "reads": 0, "errors": 0}
            stop = threading.Event()
            t = threading.Thread(target=load, args=(c, stop, counts), daemon=True)
            started = time.monotonic()
            load_before = os.getloadavg()[0]
            t.start()
            while time.monotonic() - started < opts.seconds:
                time.sleep(min(10.0, opts.seconds))
            stop.set()
            t.join(30)
            elapsed = time.monotonic() - started
            statuses = {}
            for node_id, node in c.nodes.items():
                with node.client(timeout=2.0) as db:
                    statuses[node_id] = db.status()
            result = {
                "seconds": round(elapsed, 1), "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
                "writes": counts["writes"], "reads": counts["reads"], "client_errors": counts["errors"],
                "terms": {n: s["term"] for n, s in statuses.items()},
                "roles": {n: s["role"] for n, s in statuses.items()},
                # The bootstrap of the cluster is an election for term 1 too; every later election
                # moves the term, so the highest term says how many happened since.
                "elections_started_incl_bootstrap": sum(s["elections_started"] for s in statuses.values()),
                "terms_after_bootstrap": max(s["term"] for s in statuses.values()) - 1,
                "pauses_detected": {n: s["pauses_detected"] for n, s in statuses.items()},
                "step_downs_logged": sum(c.nodes[n].log().count("stepping down") for n in c.nodes),
            }
        finally:
            c.stop_all()
    print(json.dumps(result, indent=2))
    print(f"\n{result['terms_after_bootstrap']} new terms (elections) after the bootstrap in {result['seconds']:.0f} s under "
          f"{result['writes'] / result['seconds']:,.0f} writes/s and {result['reads'] / result['seconds']:,.0f} "
          f"linearizable reads/s (target: none after the bootstrap)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
