#!/usr/bin/env python3
"""zmqstore benchmarks against real node processes, with the raw limits measured in the same run.

Usage: python bench/run.py [--quick] [--json FILE]

Prints one table. Figures depend on the machine's load: compare ratios within one run.
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

from zmqstore import Client  # noqa: E402
from zmqstore.testing.process import NodeProcess  # noqa: E402

PIPELINE_DEPTH = 64


# ---------------------------------------------------------------- raw limits

def raw_rocksdict(n, batch_size=1000, sync=True):
    import rocksdict
    with tempfile.TemporaryDirectory() as d:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        db = rocksdict.Rdict(os.path.join(d, "db"), options=opts)
        wo = rocksdict.WriteOptions()
        wo.sync = sync
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


def raw_pyzmq(n_seq, n_pipe):
    """DEALER -> ROUTER echo round trips/s, sequential and with PIPELINE_DEPTH in flight."""
    import zmq
    from zmqstore.transport import recv, send
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue()
    server = mp.Process(target=_echo_server, args=(q, n_seq + n_pipe))
    server.start()
    port = q.get(timeout=30)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    msg = b"x" * 40
    t0 = time.perf_counter()
    for _ in range(n_seq):
        send(sock, msg)
        recv(sock)
    seq_rate = n_seq / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    sent = received = 0
    while received < n_pipe:
        while sent < n_pipe and sent - received < PIPELINE_DEPTH:
            send(sock, msg)
            sent += 1
        recv(sock)
        received += 1
    pipe_rate = n_pipe / (time.perf_counter() - t0)
    sock.close()
    ctx.term()
    server.join(10)
    return seq_rate, pipe_rate


# ---------------------------------------------------------------- node workloads

def percentile(samples, p):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * p / 100))]


def sequential(endpoint, op, n):
    latencies = []
    with Client(endpoint) as db:
        value = {"payload": "x" * 80}
        if op == "get":
            db.put_many({f"seq{i}": value for i in range(min(n, 1000))})
        t_start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            if op == "put":
                db.put(f"seq{i}", value)
            else:
                db.get(f"seq{i % 1000}")
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_start
    return {"ops_s": n / elapsed, "p50_us": percentile(latencies, 50) * 1e6,
            "p99_us": percentile(latencies, 99) * 1e6}


def pipelined_puts(endpoint, n, worker=0, op="put"):
    with Client(endpoint) as db:
        p = db.pipeline(max_in_flight=PIPELINE_DEPTH)
        value = {"payload": "x" * 80}
        for i in range(n):
            if op == "put":
                p.put(f"w{worker}:{i}", value)
            else:
                p.get(f"w{worker}:{i % 1000}")
        t0 = time.perf_counter()
        p.execute()
        return n / (time.perf_counter() - t0)


def _worker(args):
    endpoint, n, worker, start_at = args
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.time()
    pipelined_puts(endpoint, n, worker)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the scripts work")
    ap.add_argument("--json", help="also write the figures to this file")
    opts = ap.parse_args()
    scale = 0.02 if opts.quick else 1.0
    N = lambda n: max(200, int(n * scale))  # noqa: E731

    results = {"machine": machine()}
    print(f"machine: {results['machine']}", flush=True)
    results["raw_rocksdict_batched_puts_s"] = raw_rocksdict(N(500_000), sync=True)
    seq_rt, pipe_rt = raw_pyzmq(N(20_000), N(200_000))
    results["raw_pyzmq_seq_rt_s"] = seq_rt
    results["raw_pyzmq_pipelined_rt_s"] = pipe_rt

    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(1, os.path.join(d, "data"), os.path.join(d, "node.log"), args=["--log-level", "WARNING"])
        node.start()
        try:
            ep = node.endpoint
            results["seq_put"] = sequential(ep, "put", N(10_000))
            results["seq_get"] = sequential(ep, "get", N(20_000))
            results["pipelined_put_1_client_s"] = pipelined_puts(ep, N(200_000))
            results["pipelined_get_1_client_s"] = pipelined_puts(ep, N(200_000), op="get")
            results["pipelined_put_4_clients_s"] = multi_client_puts(ep, 4, N(100_000))
            with Client(ep) as db:
                results["node_status"] = {k: db.status()[k] for k in ("commit_seq", "fsync")}
        finally:
            node.stop()
    report(results)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


def report(r):
    rows = [
        ("raw rocksdict batched puts/s (1000/batch, sync)", f"{r['raw_rocksdict_batched_puts_s']:,.0f}", ""),
        ("raw pyzmq DEALER-ROUTER round trips/s, sequential", f"{r['raw_pyzmq_seq_rt_s']:,.0f}", ""),
        (f"raw pyzmq round trips/s, {PIPELINE_DEPTH} in flight", f"{r['raw_pyzmq_pipelined_rt_s']:,.0f}", ""),
        ("sequential put ops/s (fsync on)", f"{r['seq_put']['ops_s']:,.0f}",
         f"p50 {r['seq_put']['p50_us']:.0f} us, p99 {r['seq_put']['p99_us']:.0f} us (target p50 < 500 us)"),
        ("sequential get ops/s", f"{r['seq_get']['ops_s']:,.0f}",
         f"p50 {r['seq_get']['p50_us']:.0f} us, p99 {r['seq_get']['p99_us']:.0f} us; "
         f"{r['seq_get']['ops_s'] / r['raw_pyzmq_seq_rt_s']:.0%} of raw sequential round trips (target >= 70%)"),
        (f"pipelined put ops/s, 1 client, {PIPELINE_DEPTH} in flight", f"{r['pipelined_put_1_client_s']:,.0f}",
         "target >= 40,000 (fsync on)"),
        (f"pipelined get ops/s, 1 client, {PIPELINE_DEPTH} in flight", f"{r['pipelined_get_1_client_s']:,.0f}",
         f"{r['pipelined_get_1_client_s'] / r['raw_pyzmq_pipelined_rt_s']:.0%} of raw pipelined round trips"),
        (f"pipelined put ops/s, 4 client processes", f"{r['pipelined_put_4_clients_s']:,.0f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
