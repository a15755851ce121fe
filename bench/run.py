#!/usr/bin/env python3
"""zmqstore benchmarks against real node processes, with the raw limits measured in the same run.

Usage: python bench/run.py [--quick] [--json FILE]

Prints one table. Figures depend on the machine's load: compare ratios within one run. Each figure
is the median of 3 rounds (5 for sequential gets); raw round trips and node requests alternate
so both see the same load.
"""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zmqstore import Client, Retry, ZmqstoreError  # noqa: E402
from zmqstore.testing.process import Cluster, NodeProcess, wait_until  # noqa: E402

from dynamo_bench import dynamo  # noqa: E402
from failover import failover  # noqa: E402  (bench/ is on sys.path as the script's directory)
from membership import dynamo_join, membership, report_rows as membership_rows  # noqa: E402
from security import report_rows as security_rows, security  # noqa: E402
from watch_bench import report_rows as watch_rows, watch  # noqa: E402
from ops_bench import backup_restore, bulk_import, metrics_cost, report_rows as ops_rows  # noqa: E402
from partition_bench import partitioned, report_rows as partition_rows  # noqa: E402

PIPELINE_DEPTH = 64


# ---------------------------------------------------------------- raw limits

def open_raw_db(path, sync):
    """A RocksDB with default options at `path` (created), and write options with `sync`: the raw
    limits compare the node against RocksDB as it comes."""
    import rocksdict
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    wo = rocksdict.WriteOptions()
    wo.sync = sync
    return rocksdict.Rdict(path, options=opts), wo


def raw_rocksdict(n, batch_size=1000, sync=True):
    import rocksdict
    with tempfile.TemporaryDirectory() as d:
        db, wo = open_raw_db(os.path.join(d, "db"), sync)
        value = b"v" * 100
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            wb = rocksdict.WriteBatch(raw_mode=True)
            for i in range(start, start + batch_size):
                wb.put(b"key%09d" % i, value)
            db.write(wb, wo)
        elapsed = time.perf_counter() - t0
        db.close()
        return n / elapsed


def _echo_server(endpoint_queue, stop_after):
    """A ROUTER that echoes every message: the least work a node could do per request. It uses the
    same fast send/recv calls as the node (zmqstore.transport), so the comparison is like for like."""
    import zmq
    from zmqstore.transport import recv_frames, send_frames
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    endpoint_queue.put(port)
    for _ in range(stop_after):
        send_frames(sock, recv_frames(sock))
    sock.close()
    ctx.term()


class EchoServer:
    """The raw pyzmq limit: a ROUTER echo process and a DEALER talking to it."""

    def __init__(self):
        import zmq
        mp = multiprocessing.get_context("spawn")
        q = mp.Queue()
        self.server = mp.Process(target=_echo_server, args=(q, 10**9), daemon=True)
        self.server.start()
        port = q.get(timeout=30)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def sequential(self, n):
        from zmqstore.transport import recv, send
        sock, msg = self.sock, b"x" * 40
        t0 = time.perf_counter()
        for _ in range(n):
            send(sock, msg)
            recv(sock)
        return n / (time.perf_counter() - t0)

    def pipelined(self, n):
        from zmqstore.transport import recv, send
        sock, msg = self.sock, b"x" * 40
        t0 = time.perf_counter()
        sent = received = 0
        while received < n:
            while sent < n and sent - received < PIPELINE_DEPTH:
                send(sock, msg)
                sent += 1
            recv(sock)
            received += 1
        return n / (time.perf_counter() - t0)

    def close(self):
        self.sock.close()
        self.ctx.term()
        self.server.kill()
        self.server.join(10)


# ---------------------------------------------------------------- node workloads

def percentile(samples, p):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * p / 100))]


VALUE = {"payload": "x" * 80}   # about 100 bytes encoded


def sequential(db, op, n):
    """One request at a time from one client: ops/s and latency percentiles."""
    latencies = []
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        if op == "put":
            db.put(f"seq{i}", VALUE)
        else:
            db.get(f"seq{i % 1000}")
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    return {"ops_s": n / elapsed, "p50_us": percentile(latencies, 50) * 1e6,
            "p99_us": percentile(latencies, 99) * 1e6}


def pipelined(endpoint, n, worker=0, op="put"):
    with Client(endpoint) as db:
        p = db.pipeline(max_in_flight=PIPELINE_DEPTH)
        for i in range(n):
            if op == "put":
                p.put(f"w{worker}:{i}", VALUE)
            else:
                p.get(f"seq{i % 1000}")
        t0 = time.perf_counter()
        p.execute()
        return n / (time.perf_counter() - t0)


def _worker(args):
    endpoint, n, worker, start_at = args
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.time()
    pipelined(endpoint, n, worker)
    return t0, time.time()


def multi_client_puts(endpoint, clients, n_each):
    mp = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5  # let every process import and connect first
    with mp.Pool(clients) as pool:
        spans = pool.map(_worker, [(endpoint, n_each, w, start_at) for w in range(clients)])
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return clients * n_each / elapsed


# ---------------------------------------------------------------- main

def machine():
    load = os.getloadavg()
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_1m": round(load[0], 2)}


def median_of(rounds, key=None):
    values = [r if key is None else r[key] for r in rounds]
    return statistics.median(values)


def single_node(results, N, rounds):
    echo = EchoServer()
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(1, os.path.join(d, "data"), os.path.join(d, "node.log"), args=["--log-level", "WARNING"],
                           new_session=False, keys=False)
        try:
            node.start()
            ep = node.endpoint
            with Client(ep) as db:
                db.put_many({f"seq{i}": VALUE for i in range(1000)})
                echo.sequential(N(2000))          # warm both paths up
                sequential(db, "get", N(2000))
                # Raw and node round trips alternate, so both see the same machine state.
                raw_seq, gets, raw_pipe, pipe_gets = [], [], [], []
                for _ in range(rounds):
                    raw_pipe.append(echo.pipelined(N(100_000)))
                    pipe_gets.append(pipelined(ep, N(100_000), op="get"))
                for _ in range(2 * rounds - 1):
                    raw_seq.append(echo.sequential(N(10_000)))
                    gets.append(sequential(db, "get", N(10_000)))
                results["raw_pyzmq_seq_rt_s"] = median_of(raw_seq)
                results["raw_pyzmq_pipelined_rt_s"] = median_of(raw_pipe)
                results["seq_get"] = {k: median_of(gets, k) for k in gets[0]}
                results["seq_get_to_raw_ratios"] = [g["ops_s"] / r for g, r in zip(gets, raw_seq)]
                results["pipelined_get_1_client_s"] = median_of(pipe_gets)
                puts = [sequential(db, "put", N(5_000)) for _ in range(rounds)]
                results["seq_put"] = {k: median_of(puts, k) for k in puts[0]}
                results["pipelined_put_1_client_s"] = median_of(
                    [pipelined(ep, N(100_000), worker=r) for r in range(rounds)])
                results["pipelined_put_4_clients_s"] = multi_client_puts(ep, 4, N(100_000))
                results["node_status"] = {k: db.status()[k] for k in ("commit_seq", "fsync")}
        finally:
            node.stop()
            echo.close()


def leader_cluster(results, N, rounds, catch_up_writes):
    """The seed's 3-node leader cluster (fsync on, majority commit) on 127.0.0.2-4."""
    with tempfile.TemporaryDirectory() as d:
        conf = os.path.join(d, "bench.ini")
        with open(conf, "w") as f:   # keep the whole catch-up in the log, so it is a log catch-up
            f.write(f"[cluster]\nlog_retention = {catch_up_writes * 2}\n")
        c = Cluster(d, size=3, args=["--config", conf, "--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            ep = c.nodes[1].endpoint
            with Client(ep) as db:
                db.put("warm", 1)
                puts = [sequential(db, "put", N(3_000)) for _ in range(rounds)]
                results["leader_seq_put"] = {k: median_of(puts, k) for k in puts[0]}
                gets = [sequential(db, "get", N(3_000)) for _ in range(rounds)]
                results["leader_seq_get"] = {k: median_of(gets, k) for k in gets[0]}
            results["leader_pipelined_put_1_client_s"] = median_of(
                [pipelined(ep, N(100_000), worker=r) for r in range(rounds)])
            results["leader_pipelined_put_4_clients_s"] = multi_client_puts(ep, 4, N(50_000))
            # Catch-up: node 3 misses catch_up_writes writes, then comes back.
            c.nodes[3].stop()
            with Client(ep) as db:
                missed_from = db.status()["last_seq"]
            pipelined(ep, catch_up_writes, worker=99)
            with Client(ep) as db:
                target = db.status()["last_seq"]
            t0 = time.perf_counter()
            c.start(3, wait=False)
            n3 = Client(c.nodes[3].endpoint, timeout=0.5, retry=Retry(max_tries=1))
            try:
                seen = {}

                def progress():
                    try:
                        last = n3.status()["last_seq"]
                    except ZmqstoreError:
                        return False
                    seen.setdefault("ready", (time.perf_counter(), last))
                    return last >= target
                wait_until(progress, 120, interval=0.005, message="node 3 caught up")
            finally:
                n3.close()
            done = time.perf_counter()
            ready_at, last_at_ready = seen["ready"]
            # The writes of one loop iteration share an entry (docs/PROTOCOL.md section 5): the rate is
            # given in writes, the entries taken once answering scaled by the writes per missed entry.
            per_entry = catch_up_writes / max(1, target - missed_from)
            results["leader_catch_up"] = {
                "entries": catch_up_writes, "seconds_from_start": done - t0, "start_seconds": ready_at - t0,
                "log_entries": target - missed_from,
                "entries_s": (target - last_at_ready) * per_entry / (done - ready_at)}
        finally:
            c.stop_all()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the scripts work")
    ap.add_argument("--only", choices=("single", "leader", "failover", "membership", "dynamo", "security", "watch",
                                                "ops", "partitions"),
                    help="run one part only")
    ap.add_argument("--json", help="also write the figures to this file")
    opts = ap.parse_args()
    scale = 0.02 if opts.quick else 1.0
    N = lambda n: max(200, int(n * scale))  # noqa: E731
    rounds = 1 if opts.quick else 3

    results = {"machine": machine(), "rounds": rounds}
    print(f"machine: {results['machine']}", flush=True)
    if opts.only in (None, "single"):
        results["raw_rocksdict_batched_puts_s"] = raw_rocksdict(N(500_000), sync=True)
        single_node(results, N, rounds)
    if opts.only in (None, "leader"):
        leader_cluster(results, N, rounds, N(100_000))
    if opts.only in (None, "failover"):
        failover(results, 2 if opts.quick else 7)
    if opts.only in (None, "membership"):
        membership(results, N(1_000_000))
        dynamo_join(results, N(1_000_000))
    if opts.only in (None, "dynamo"):
        dynamo(results, N(40_000), 30 if opts.quick else 300, N(10_000))
    if opts.only in (None, "security"):
        security(results, opts.quick)
    if opts.only in (None, "watch"):
        watch(results, N(20_000), rounds)
    if opts.only in (None, "ops"):
        metrics_cost(results, N(20_000), 2 * rounds - 1)
        bulk_import(results, N(1_000_000))
        backup_restore(results, N(1_000_000))
    if opts.only in (None, "partitions"):
        partitioned(results, N(5_000), opts.quick)
    report(results)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


def report(r):
    rows = []
    if "seq_put" in r:
        rows += [
            ("raw rocksdict batched puts/s (1000/batch, sync)", f"{r['raw_rocksdict_batched_puts_s']:,.0f}", ""),
            ("raw pyzmq DEALER-ROUTER round trips/s, sequential", f"{r['raw_pyzmq_seq_rt_s']:,.0f}", ""),
            (f"raw pyzmq round trips/s, {PIPELINE_DEPTH} in flight", f"{r['raw_pyzmq_pipelined_rt_s']:,.0f}", ""),
            ("single: sequential put ops/s (fsync on)", f"{r['seq_put']['ops_s']:,.0f}",
             f"p50 {r['seq_put']['p50_us']:.0f} us, p99 {r['seq_put']['p99_us']:.0f} us (target p50 < 500 us)"),
            ("single: sequential get ops/s", f"{r['seq_get']['ops_s']:,.0f}",
             f"p50 {r['seq_get']['p50_us']:.0f} us, p99 {r['seq_get']['p99_us']:.0f} us; "
             f"{statistics.median(r['seq_get_to_raw_ratios']):.0%} of raw sequential round trips (median of "
             "rounds " + ", ".join(f"{x:.0%}" for x in r['seq_get_to_raw_ratios']) + "; target >= 70%)"),
            (f"single: pipelined put ops/s, 1 client, {PIPELINE_DEPTH} in flight",
             f"{r['pipelined_put_1_client_s']:,.0f}", "target >= 40,000 (fsync on)"),
            (f"single: pipelined get ops/s, 1 client, {PIPELINE_DEPTH} in flight",
             f"{r['pipelined_get_1_client_s']:,.0f}",
             f"{r['pipelined_get_1_client_s'] / r['raw_pyzmq_pipelined_rt_s']:.0%} of raw pipelined round trips"),
            ("single: pipelined put ops/s, 4 client processes", f"{r['pipelined_put_4_clients_s']:,.0f}", ""),
        ]
    if "leader_seq_put" in r:
        base = r.get("pipelined_put_1_client_s")
        vs = f", {r['leader_pipelined_put_1_client_s'] / base:.0%} of the single node" if base else ""
        rows += [
            ("leader 3 nodes: sequential put ops/s (majority, fsync)", f"{r['leader_seq_put']['ops_s']:,.0f}",
             f"p50 {r['leader_seq_put']['p50_us']:.0f} us, p99 {r['leader_seq_put']['p99_us']:.0f} us "
             "(target p50 < 1 ms)"),
            ("leader 3 nodes: sequential linearizable get ops/s", f"{r['leader_seq_get']['ops_s']:,.0f}",
             f"p50 {r['leader_seq_get']['p50_us']:.0f} us, p99 {r['leader_seq_get']['p99_us']:.0f} us"),
            (f"leader 3 nodes: pipelined put ops/s, 1 client, {PIPELINE_DEPTH} in flight",
             f"{r['leader_pipelined_put_1_client_s']:,.0f}", f"target >= 25,000{vs}"),
            ("leader 3 nodes: pipelined put ops/s, 4 client processes",
             f"{r['leader_pipelined_put_4_clients_s']:,.0f}", ""),
            ("leader 3 nodes: secondary catch-up writes/s",
             f"{r['leader_catch_up']['entries_s']:,.0f}" if r['leader_catch_up']['entries_s'] else "during start",
             f"once answering (target >= 200,000/s); {r['leader_catch_up']['entries']:,} missed writes "
             f"in {r['leader_catch_up']['log_entries']:,} log entries: "
             f"{r['leader_catch_up']['seconds_from_start']:.2f} s from process start, of which "
             f"{r['leader_catch_up']['start_seconds']:.2f} s start-up"),
        ]
    if "failover" in r:
        f = r["failover"]
        rows += [
            ("failover: kill -9 primary -> first write acknowledged by the new one",
             f"{f['median_s'] * 1000:,.0f} ms",
             f"median of {f['runs']}, max {f['max_s'] * 1000:.0f} ms (targets: < 1.0 s, < 1.5 s; election interval "
             f"{f['election_interval']} s); runs: " + ", ".join(f"{t * 1000:.0f}" for t in f["seconds"]) + " ms"),
            ("failover: acknowledged writes lost", f"{f['lost']}",
             f"of {f['acknowledged']:,} acknowledged across all runs; elections took "
             + ", ".join(f"{e:.0f}" for e in f["election_ms"] if e is not None) + " ms; new primaries "
             + ", ".join(map(str, f["winners"]))),
        ]
    if "dynamo_puts_3_nodes_s" in r:
        lag = r["dynamo_lag"]
        rows += [
            ("dynamo 3 nodes: pipelined puts/s, a client process per node", f"{r['dynamo_puts_3_nodes_s']:,.0f}",
             f"fsync on (target >= 20,000); replicas equal {r['dynamo_settle_after_load_s']:.2f} s after the load"),
            ("dynamo 3 nodes: replication lag, ack to applied on all", f"{lag['p50_ms']:.1f} ms",
             f"p50; p99 {lag['p99_ms']:.1f} ms (target < 50 ms) over {lag['probes']} probes under "
             f"{lag['load_puts_s']:,.0f} puts/s of load"),
        ]
        if "dynamo_partition_converge_s" in r:
            rows.append(("dynamo 3 nodes: converge after a partition heals",
                         f"{r['dynamo_partition_converge_s']:.2f} s",
                         f"{r['dynamo_partition_writes_each']:,} writes on each side (target < 3 s)"))
    rows += security_rows(r) + membership_rows(r) + watch_rows(r) + ops_rows(r) + partition_rows(r)
    if not rows:
        return
    width = max(len(row[0]) for row in rows)
    print()
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
