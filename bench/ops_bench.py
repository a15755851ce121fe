"""Operations (issue 15, docs/OPERATIONS.md). Used by bench/run.py (--only ops).

- The cost of metrics: two 3-node leader clusters (fsync on) side by side, one with --metrics-port
  on every node and a scraper reading /metrics from each node every second (Prometheus' default is
  every 15 s), one without; pipelined puts (64 in flight) alternate between them round by round, so
  both see the same machine load (which goes first alternates too). The cost is the median of the
  rounds' ratios. Target: under 5% fewer puts/s with metrics.
- Backup and restore: a 3-node leader cluster loaded with small keys (put_many batches), a backup
  taken from a secondary (datastore-cli backup's code), then a new node seeded from it with
  --restore: seconds from its start to answering with every key.
"""
import statistics
import tempfile
import threading
import time

from zmqstore import Client, Retry
from zmqstore.backup import take_backup
from zmqstore.testing.process import Cluster, NodeProcess, wait_until

from watch_bench import _blocking_pipelined as _pipelined  # noqa: E402 (bench/ is on sys.path)

SCRAPE_EVERY = 1.0


class Scraper:
    """Reads /metrics from every node every SCRAPE_EVERY seconds until stopped."""

    def __init__(self, nodes):
        self.nodes, self.scrapes, self.failures, self.bytes = nodes, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(SCRAPE_EVERY):
            for node in self.nodes:
                status, text = node.http_get("/metrics")
                if status == 200:
                    self.scrapes += 1
                    self.bytes = len(text)
                else:
                    self.failures += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def metrics_cost(results, n, rounds):
    with tempfile.TemporaryDirectory() as d:
        args = ["--log-level", "WARNING"]
        with_metrics = Cluster(f"{d}/on", size=3, args=args, new_session=False, keys=False, metrics=True)
        without = Cluster(f"{d}/off", size=3, args=args, new_session=False, keys=False)
        scraper = None
        try:
            with_metrics.start_all()
            without.start_all()
            scraper = Scraper(list(with_metrics.nodes.values()))
            on, off = [], []
            for r in range(rounds):     # which goes first alternates too
                for cluster, figures in ((without, off), (with_metrics, on))[::1 if r % 2 else -1]:
                    figures.append(_pipelined(cluster.nodes[1].endpoint, f"r{r}-", n))
            scraper.stop()
            results["metrics_cost"] = {"puts": n, "on_s": [round(x) for x in on], "off_s": [round(x) for x in off],
                                       "scrapes": scraper.scrapes, "scrape_failures": scraper.failures,
                                       "scrape_bytes": scraper.bytes}
            print(f"  metrics on {results['metrics_cost']['on_s']} vs off {results['metrics_cost']['off_s']}",
                  flush=True)
        finally:
            if scraper is not None:
                scraper.stop()
            with_metrics.stop_all()
            without.stop_all()


def bulk_import(results, n):
    """Import of n small keys (an export file made here) into a 3-node leader cluster."""
    from zmqstore import bulk, protocol
    from zmqstore.protocol import files
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/keys.export"
        with open(path, "wb") as f:
            writer = files.BackupWriter(f, {"mode": "leader", "kind": "export", "seq": 0, "term": 0})
            for start in range(0, n, 10_000):
                writer.page([[b"key%09d" % i, protocol.pack_value(i)] for i in range(start, min(n, start + 10_000))])
            writer.finish()
        c = Cluster(f"{d}/c", size=3, args=["--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            c.wait_primary(10)
            with Client(c.endpoints, timeout=30.0) as db:
                started = time.monotonic()
                summary = bulk.import_file(db, path)
                seconds = time.monotonic() - started
                assert summary["count"] == n and db.get(b"key%09d" % (n - 1)) == n - 1
            results["bulk_import"] = {"keys": n, "seconds": round(seconds, 1), "keys_s": round(n / seconds),
                                      "batches": summary["batches"]}
            print(f"  import: {results['bulk_import']}", flush=True)
        finally:
            c.stop_all()


def backup_restore(results, n):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(f"{d}/old", size=3, args=["--log-level", "WARNING"], new_session=False, keys=False)
        node = None
        try:
            c.start_all()
            started = time.monotonic()
            with Client(c.nodes[1].endpoint, timeout=30.0) as db:
                p = db.pipeline(max_in_flight=8)
                for start in range(0, n, 1000):
                    p.put_many({f"key{i:09d}": i for i in range(start, min(n, start + 1000))})
                p.execute()
            load_seconds = time.monotonic() - started
            with Client(c.nodes[2].endpoint, timeout=30.0) as db:
                wait_until(lambda: db.status()["applied_seq"] >= c.nodes[1].status()["commit_seq"], 60,
                           message="node 2 current")
                summary = take_backup(db, f"{d}/backup")
            c.stop_all()
            node = NodeProcess(1, f"{d}/new", f"{d}/new.log", args=["--restore", f"{d}/backup", "--log-level",
                                                                    "WARNING"], new_session=False, keys=False)
            started = time.monotonic()
            node.start(timeout=600)
            with node.client(timeout=30.0, retry=Retry(max_tries=3)) as db:
                restored = db.status()["keys_estimate"]
                assert db.get(f"key{n - 1:09d}") == n - 1
            restore_seconds = time.monotonic() - started
            results["backup_restore"] = {"keys": n, "load_s": round(load_seconds, 1),
                                         "backup_s": summary["seconds"], "backup_bytes": summary["bytes"],
                                         "restore_s": round(restore_seconds, 1), "keys_estimate": restored}
            print(f"  backup/restore: {results['backup_restore']}", flush=True)
        finally:
            if node is not None:
                node.stop()
            c.stop_all()


def report_rows(r) -> list:
    rows = []
    if "bulk_import" in r:
        b = r["bulk_import"]
        rows.append((f"leader 3 nodes: datastore-cli import of {b['keys']:,} small keys", f"{b['keys_s']:,} keys/s",
                     f"{b['seconds']} s, {b['batches']:,} PUT_MANY batches of 1,000, 8 in flight (target >= "
                     f"100,000 keys/s: {'met' if b['keys_s'] >= 100_000 else 'missed'})"))
    if "backup_restore" in r:
        b = r["backup_restore"]
        rows += [(f"leader: backup of {b['keys']:,} keys from a secondary", f"{b['backup_s']:.1f} s",
                  f"{b['keys'] / b['backup_s']:,.0f} keys/s, {b['backup_bytes']:,} bytes (loading them with put_many "
                  f"took {b['load_s']} s)"),
                 ("leader: a new node restored from it (--restore), start to serving", f"{b['restore_s']:.1f} s",
                  f"{b['keys'] / b['restore_s']:,.0f} keys/s, verified then loaded")]
    if "metrics_cost" not in r:
        return rows
    m = r["metrics_cost"]
    on, off = statistics.median(m["on_s"]), statistics.median(m["off_s"])
    cost = 1 - statistics.median(a / b for a, b in zip(m["on_s"], m["off_s"]))     # round by round
    return rows + [("leader 3 nodes: pipelined puts/s with metrics, scraped every 1 s", f"{on:,.0f}",
             f"without {off:,.0f}: {cost:+.1%} cost, the median of the rounds' ratios (target < 5%: {'met' if cost < 0.05 else 'missed'}); "
             f"{m['scrapes']} scrapes of {m['scrape_bytes']:,} bytes, {m['scrape_failures']} failed; "
             f"rounds on {m['on_s']}, off {m['off_s']}")]
