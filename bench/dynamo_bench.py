"""Dynamo-mode benchmarks (called by bench/run.py): puts/s on 3 nodes with each client process
writing to a different node, replication lag at half that load, and the time to converge after a
partition during which writes landed on both sides (needs iptables and root)."""
import multiprocessing
import tempfile
import threading
import time

from zmqstore import Client, Retry
from zmqstore.testing import partition
from zmqstore.testing.process import Cluster, wait_until

VALUE = {"payload": "x" * 80}   # about 100 bytes encoded, as in run.py
DEPTH = 64


def _writer(args):
    """Pipelined puts to one node: n of them, or at `rate` per second until `until` (wall clock)."""
    endpoint, worker, n, start_at, rate, until = args
    with Client(endpoint) as db:
        while time.time() < start_at:
            time.sleep(0.001)
        t0 = time.time()
        if rate is None:
            p = db.pipeline(max_in_flight=DEPTH)
            for i in range(n):
                p.put(f"w{worker}:{i}", VALUE)
            p.execute()
            return n, t0, time.time()
        done, batch = 0, 32
        while time.time() < until:
            p = db.pipeline(max_in_flight=DEPTH)
            for i in range(batch):
                p.put(f"l{worker}:{done + i}", VALUE)
            p.execute()
            done += batch
            ahead = t0 + done / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        return done, t0, time.time()


def throughput(cluster, n_each):
    mp = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5
    eps = cluster.endpoints
    with mp.Pool(len(eps)) as pool:
        spans = pool.map(_writer, [(ep, w, n_each, start_at, None, None) for w, ep in enumerate(eps)])
    elapsed = max(end for _, _, end in spans) - min(start for _, start, _ in spans)
    total = sum(n for n, _, _ in spans)
    t0 = time.monotonic()
    wait_until(lambda: cluster.dynamo_converged(), 120, interval=0.05, message="replicas converged")
    return total / elapsed, time.monotonic() - t0


def lag(cluster, rate_total, probes):
    """Background load at rate_total puts/s spread over the nodes; meanwhile probes written to one
    node in turn, each timed from its acknowledgement until every other node returns it."""
    mp = multiprocessing.get_context("spawn")
    eps = cluster.endpoints
    seconds = 4 + probes * 0.02
    start_at = time.time() + 1.5
    pool = mp.Pool(len(eps))
    load = pool.map_async(_writer, [(ep, w, 0, start_at, rate_total / len(eps), start_at + seconds)
                                    for w, ep in enumerate(eps)])
    dbs = [Client(ep, retry=Retry(max_tries=1)) for ep in eps]
    samples = []
    try:
        while time.time() < start_at + 1.0:
            time.sleep(0.01)
        for i in range(probes):
            origin = i % len(dbs)
            dbs[origin].put(f"probe{i}", i)
            acked = time.perf_counter()
            for j, db in enumerate(dbs):
                if j != origin:
                    deadline = acked + 10
                    while db.get(f"probe{i}", stale=True) != i:
                        if time.perf_counter() > deadline:
                            raise TimeoutError(f"probe {i} not on node {j + 1} within 10 s")
            samples.append(time.perf_counter() - acked)
            time.sleep(0.01)
        done = load.get(seconds + 60)
    finally:
        pool.close()
        pool.join()
        for db in dbs:
            db.close()
    achieved = sum(n for n, _, _ in done) / max(end - start for _, start, end in done)
    samples.sort()
    return {"p50_ms": samples[len(samples) // 2] * 1000, "p99_ms": samples[int(len(samples) * 0.99)] * 1000,
            "probes": len(samples), "load_puts_s": achieved}


def partition_convergence(cluster, writes_each):
    """Cut node 1 off, write `writes_each` on node 1 and on node 2, heal; seconds until converged."""
    p = partition.Partitioner({i: n.host for i, n in cluster.nodes.items()})
    try:
        p.isolate(1)
        def write(node_id, prefix):
            with cluster.nodes[node_id].client() as db:
                pipe = db.pipeline(max_in_flight=DEPTH)
                for i in range(writes_each):
                    pipe.put(f"{prefix}{i}", i)
                pipe.execute()
        threads = [threading.Thread(target=write, args=(1, "left")), threading.Thread(target=write, args=(2, "right"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        healed = time.monotonic()
        p.heal()
        wait_until(lambda: cluster.dynamo_converged(), 120, interval=0.01, message="convergence after heal")
        return time.monotonic() - healed
    finally:
        p.close()


def dynamo(results, n_each, probes, partition_writes):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=3, mode="dynamo", args=["--log-level", "WARNING"], keys=False)
        try:
            c.start_all()
            rate, settle = throughput(c, n_each)
            results["dynamo_puts_3_nodes_s"] = rate
            results["dynamo_settle_after_load_s"] = settle
            results["dynamo_lag"] = lag(c, rate / 2, probes)
            if partition.available():
                results["dynamo_partition_converge_s"] = partition_convergence(c, partition_writes)
                results["dynamo_partition_writes_each"] = partition_writes
        finally:
            c.stop_all()
