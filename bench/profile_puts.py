#!/usr/bin/env python3
"""Where a replicated put's time goes: a 3-node leader cluster whose primary and one secondary run under
py-spy (`py-spy record -- python -m zmqstore ...`, the node's own command), one client doing sequential
puts, then (on a fresh cluster) 100-deep pipelined puts. Prints a per-put budget (client CPU, each
node's CPU, network round trips, the synced write) beside the physical floor measured in the same run,
and what each node's CPU goes to, from py-spy's samples.

Usage: python bench/profile_puts.py [--seconds S] [--keep DIR]      (make bench-profile)

CPU per put is measured, not sampled: /proc/<pid>/stat user + system time of each node over the
measured phase, divided by the puts. py-spy's samples only split it into parts (leaf Python frame:
a call into RocksDB, ZeroMQ or msgpack shows as the Python function that made it).
"""
import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zmqstore import Client  # noqa: E402
from zmqstore.testing.process import Cluster, wait_until  # noqa: E402

from limits_raw import raw_limits  # noqa: E402  (bench/ is on sys.path as the script's directory)
from servers import proc_stat  # noqa: E402

VALUE = os.urandom(1000)
DEPTH = 100
# leaf frame -> part of a node's CPU, by the file (and function) the sample's innermost Python frame is in
PARTS = (
    ("storage.py", None, "RocksDB (storage.py: batches, commits with fsync, reads)"),
    ("transport.py", None, "ZeroMQ send/recv (transport.py)"),
    ("outbox.py", None, "ZeroMQ send/recv (transport.py)"),
    ("protocol", None, "msgpack encode/decode (protocol/)"),
    ("node.py", "poll", "poll"),
)


class SpiedNode:
    """Runs a NodeProcess's command under py-spy; `pid` is the node's own process."""

    def __init__(self, node, out_path):
        self.node, self.out_path = node, out_path
        spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
        if spy is None:
            raise SystemExit("py-spy is missing: pip install -e '.[bench]' (make bench-profile does)")
        command = node.command
        node.command = lambda: [spy, "record", "--nonblocking", "--gil", "--rate", "500", "--format", "raw",
                                "-o", out_path, "--", *command()]

    @property
    def pid(self):
        spy = self.node.proc.pid
        for task in os.listdir(f"/proc/{spy}/task"):
            with open(f"/proc/{spy}/task/{task}/children") as f:
                children = f.read().split()
            if children:
                return int(children[0])
        raise RuntimeError("py-spy has not started the node")

    def cpu_seconds(self):
        """{thread kind: user + system CPU seconds so far}: the Python loop ("main"), ZeroMQ's I/O
        thread, RocksDB's background threads, the rest (metrics HTTP server, ...)."""
        out = collections.Counter()
        for task in os.listdir(f"/proc/{self.pid}/task"):
            stat = proc_stat(f"/proc/{self.pid}/task/{task}/stat")
            if stat is None:         # a thread that ended meanwhile
                continue
            name, seconds = stat
            kind = ("main" if task == str(self.pid) else "ZeroMQ I/O" if name.startswith("ZMQbg")
                    else "RocksDB" if name.startswith("rocksdb") else "other threads")
            out[kind] += seconds
        return out

    def stop(self):
        """SIGTERM the node itself; py-spy then writes its samples and exits."""
        try:
            os.kill(self.pid, 15)
        except (OSError, RuntimeError):
            pass
        wait_until(lambda: self.node.proc.poll() is not None, 30, message="py-spy finished")


def parts_of(raw_path, top=6):
    """{part: share of samples} and the top other functions, from py-spy's raw (collapsed) output."""
    parts, others, total = collections.Counter(), collections.Counter(), 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or "importlib._bootstrap" in stack:     # start-up imports are not the loop
                continue
            n = int(count)
            total += n
            leaf = stack.split(";")[-1]
            for file_part, function, name in PARTS:
                if file_part in leaf and (function is None or leaf.startswith(function)):
                    parts[name] += n
                    break
            else:
                parts["other Python"] += n
                others[leaf.split(" (")[0] + " (" + os.path.basename(leaf.split(" (")[-1])] += n
    share = {k: v / total for k, v in parts.most_common()} if total else {}
    return share, [(f, n / total) for f, n in others.most_common(top)] if total else []


STAGES = {      # what the budget reads off each node's /metrics: (metric, label) -> name; mean per event
    ("zmqstore_request_duration_seconds", 'command="PUT"'): "request (arrival to reply, primary)",
    ("zmqstore_storage_commit_duration_seconds", 'synced="true"'): "synced commit",
    ("zmqstore_replication_round_trip_seconds", 'peer="2"'): "publish to ACK, node 2",
    ("zmqstore_replication_round_trip_seconds", 'peer="3"'): "publish to ACK, node 3",
}


def metric_sums(node):
    """{stage name: (sum, count)} from the node's /metrics."""
    status, body = node.http_get("/metrics")
    out = {}
    if status != 200:
        return out
    for line in body.splitlines():
        for (metric, label), name in STAGES.items():
            if line.startswith(metric) and label in line:
                kind = "sum" if line.startswith(metric + "_sum") else "count" if line.startswith(metric + "_count") \
                    else None
                if kind:
                    total, count = out.get(name, (0.0, 0.0))
                    value = float(line.rsplit(" ", 1)[1])
                    out[name] = (total + value, count) if kind == "sum" else (total, count + value)
    return out


def stage_means(before, after):
    """{stage name: mean microseconds over the phase}"""
    out = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            out[name] = (total - total0) / (count - count0) * 1e6
    return out


def phase(base_dir, kind, seconds):
    """One cluster, one load: {"puts", "p50_us", cpu per put of client/primary/secondary, profiles}."""
    c = Cluster(base_dir, size=3, args=["--log-level", "WARNING"], new_session=False, keys=False, metrics=True)
    spied = {n: SpiedNode(c.nodes[n], os.path.join(base_dir, f"node{n}.pyspy.txt")) for n in (1, 2)}
    try:
        c.start_all(timeout=60)
        with Client(c.endpoints, timeout=10) as db:
            for i in range(300):
                db.put(f"warm{i}", VALUE)
            cpu0 = {n: s.cpu_seconds() for n, s in spied.items()}
            stages0 = {n: metric_sums(c.nodes[n]) for n in (1, 2)}
            client0, t0 = time.process_time(), time.perf_counter()
            latencies, puts = [], 0
            while time.perf_counter() - t0 < seconds:
                if kind == "sequential":
                    t = time.perf_counter()
                    db.put(f"k{puts}", VALUE)
                    latencies.append(time.perf_counter() - t)
                    puts += 1
                else:
                    pipe = db.pipeline(max_in_flight=DEPTH)
                    for i in range(1000):
                        pipe.put(f"k{puts + i}", VALUE)
                    pipe.execute()
                    puts += 1000
            elapsed = time.perf_counter() - t0
            client_cpu = time.process_time() - client0
            stages = {n: stage_means(stages0[n], metric_sums(c.nodes[n])) for n in (1, 2)}
            cpu = {n: s.cpu_seconds() for n, s in spied.items()}
            cpu = {n: {kind: seconds - cpu0[n][kind] for kind, seconds in cpu[n].items()} for n in cpu}
    finally:
        for s in spied.values():
            s.stop()
        c.stop_all()
    result = {"puts": puts, "puts_s": puts / elapsed, "client_cpu_us": client_cpu / puts * 1e6,
              "primary_cpu_us": sum(cpu[1].values()) / puts * 1e6, "secondary_cpu_us": sum(cpu[2].values()) / puts * 1e6,
              "primary_threads_us": {k: v / puts * 1e6 for k, v in cpu[1].items()},
              "secondary_threads_us": {k: v / puts * 1e6 for k, v in cpu[2].items()},
              "stages": stages, "primary_parts": parts_of(spied[1].out_path), "secondary_parts": parts_of(spied[2].out_path)}
    if latencies:
        result["p50_us"] = statistics.median(latencies) * 1e6
        result["mean_us"] = statistics.mean(latencies) * 1e6
    return result


def report(raw, seq, pipe):
    rt = raw["pyzmq_round_trip_us"]
    print(f"\nraw limits, same run: {raw}")
    floor, shared = raw["replicated_put_floor_us"], raw["replicated_put_floor_shared_disk_us"]
    print(f"\nsequential puts: {seq['puts_s']:,.0f}/s, p50 {seq['p50_us']:.0f} us, mean {seq['mean_us']:.0f} us; "
          f"p50 = {seq['p50_us'] / floor:.2f}x the floor ({floor:.0f} us: 2 round trips + 1 synced write), "
          f"{seq['p50_us'] / shared:.2f}x the floor with 3 nodes syncing on this disk ({shared:.0f} us)")
    primary, secondary = seq["stages"][1], seq["stages"][2]
    request = primary.get("request (arrival to reply, primary)", 0.0)
    print("  measured, means per put (node metrics over the phase):")
    rows = [("client: send to reply read, outside the primary (1 round trip + client Python)", seq["mean_us"] - request),
            ("primary: request arrival to reply sent", request),
            ("  of which the primary's synced commit (GIL held: the loop waits)",
             primary.get("synced commit", 0.0)),
            ("  publish to ACK read, node 2 (overlaps the primary's commit)", primary.get("publish to ACK, node 2", 0.0)),
            ("    of which node 2's synced commit", secondary.get("synced commit", 0.0)),
            ("  publish to ACK read, node 3", primary.get("publish to ACK, node 3", 0.0)),
            ("raw: one pyzmq round trip", rt),
            ("raw: one synced RocksDB write alone / with 3 writers",
             f"{raw['rocksdb_synced_put_us']:.0f} / {raw['rocksdb_synced_put_3_writers_us']:.0f}")]
    for name, us in rows:
        print(f"    {name:<84} {us if isinstance(us, str) else f'{us:.0f}':>10} us")
    print(f"  CPU per put: client {seq['client_cpu_us']:.0f} us, primary {seq['primary_cpu_us']:.0f} us, "
          f"secondary {seq['secondary_cpu_us']:.0f} us")
    print(f"\npipelined puts ({DEPTH} in flight): {pipe['puts_s']:,.0f}/s; CPU per put: client "
          f"{pipe['client_cpu_us']:.1f} us, primary {pipe['primary_cpu_us']:.1f} us, secondary "
          f"{pipe['secondary_cpu_us']:.1f} us; the primary's synced commit "
          f"{pipe['stages'][1].get('synced commit', 0.0):.0f} us per batch")
    for label, r in (("sequential", seq), ("pipelined", pipe)):
        for node in ("primary", "secondary"):
            share, top = r[f"{node}_parts"]
            threads = r[f"{node}_threads_us"]
            print(f"\n{label}, {node}: {r[f'{node}_cpu_us']:.1f} us CPU per put: "
                  + ", ".join(f"{k} {v:.1f} us" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])))
            print("  py-spy --gil, where the Python loop holds the GIL (a RocksDB write holds it while it syncs):")
            for name, s in share.items():
                print(f"  {s:6.1%}  {name}")
            print("  other Python, top functions: " + "; ".join(f"{f} {s:.1%}" for f, s in top))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--keep", help="keep the py-spy output (raw collapsed stacks) in this directory")
    opts = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    raw = raw_limits()
    with tempfile.TemporaryDirectory(prefix="zmqstore-profile-") as d:
        seq = phase(os.path.join(d, "seq"), "sequential", opts.seconds)
        pipe = phase(os.path.join(d, "pipe"), "pipelined", opts.seconds)
        if opts.keep:
            os.makedirs(opts.keep, exist_ok=True)
            for p in ("seq", "pipe"):
                for n in (1, 2):
                    shutil.copy(os.path.join(d, p, f"node{n}.pyspy.txt"), os.path.join(opts.keep, f"{p}-node{n}.txt"))
    report(raw, seq, pipe)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
