"""Change feeds and the asyncio client (issue 14, docs/WATCH.md, docs/CLIENT.md), on a 3-node leader
cluster (fsync on). Used by bench/run.py (--only watch).

- Delivery latency: an asyncio writer keeps 64 puts in flight, each recording when its reply
  arrived; a watcher in another process records when each change reached it (CLOCK_MONOTONIC is
  the same clock in both). The figure is the watcher's time minus the acknowledgement's: p50 and
  p99 under that pipelined load (target p99 < 20 ms).
- Following: the watcher's changes/s while the writer runs flat out, beside the writer's puts/s,
  and how long after the last acknowledgement the watcher has it; then a backlog read from seq 0
  (changes/s a watcher catches up at).
- aio.Client pipelined puts (64 in flight through asyncio.gather) beside the blocking client's
  pipeline (64 in flight), alternated round by round.
"""
import asyncio
import multiprocessing
import statistics
import tempfile
import time

from zmqstore import Client, Retry, aio
from zmqstore.testing.process import Cluster

DEPTH = 64


def _watcher_process(endpoints, prefix, count, from_seq, out):
    """Watch until `count` changes arrived; put [(key, monotonic time)] and the seconds from the
    watch being placed to the last of them."""
    with Client(endpoints, retry=Retry(max_tries=50, deadline=30)) as db:
        with db.watch(prefix, from_seq=from_seq) as watcher:
            placed = time.monotonic()
            out.put("ready")
            got = []
            while len(got) < count:
                events = watcher.poll(5.0)
                now = time.monotonic()
                got.extend((e.key, now) for e in events)
            out.put((got, got[-1][1] - placed))


class WatcherProcess:
    def __init__(self, endpoints, prefix, count, from_seq=None):
        mp = multiprocessing.get_context("spawn")
        self.queue = mp.Queue()
        self.proc = mp.Process(target=_watcher_process, args=(endpoints, prefix, count, from_seq, self.queue),
                               daemon=True)
        self.proc.start()
        assert self.queue.get(timeout=60) == "ready"

    def result(self, timeout=300):
        got = self.queue.get(timeout=timeout)
        self.proc.join(10)
        return got


async def _aio_puts(endpoints, prefix, n, depth, acks=None):
    """n puts, `depth` in flight; with `acks`, record each key's (send, acknowledgement) times."""
    async with aio.Client(endpoints, retry=Retry(max_tries=10)) as db:
        keys = iter(range(n))

        async def worker():
            for i in keys:
                key = f"{prefix}{i:08d}"
                sent = time.monotonic()
                await db.put(key, i)
                if acks is not None:
                    acks[key] = (sent, time.monotonic())
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(depth)))
        return n / (time.monotonic() - started)


def _blocking_pipelined(endpoints, prefix, n):
    with Client(endpoints) as db:
        p = db.pipeline(max_in_flight=DEPTH)
        for i in range(n):
            p.put(f"{prefix}{i:08d}", i)
        started = time.monotonic()
        p.execute()
        return n / (time.monotonic() - started)


def _pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def watch(results, n, rounds):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=3, args=["--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            endpoints = c.endpoints
            # Delivery latency under pipelined load.
            acks = {}
            watcher = WatcherProcess(endpoints, "lat", n)
            write_rate = asyncio.run(_aio_puts(endpoints, "lat", n, DEPTH, acks))
            got, _ = watcher.result()
            after_ack = [(t - acks[k][1]) * 1000 for k, t in got if k in acks]
            after_send = [(t - acks[k][0]) * 1000 for k, t in got if k in acks]
            ack = [(a - s) * 1000 for s, a in acks.values()]
            results["watch_latency"] = {
                "writes": n, "writes_s": round(write_rate),
                "p50_ms": round(_pct(after_ack, 50), 2), "p99_ms": round(_pct(after_ack, 99), 2),
                "max_ms": round(max(after_ack), 1), "before_ack": sum(1 for x in after_ack if x < 0),
                "send_to_watcher_p50_ms": round(_pct(after_send, 50), 2),
                "send_to_watcher_p99_ms": round(_pct(after_send, 99), 2),
                "send_to_ack_p50_ms": round(_pct(ack, 50), 2), "send_to_ack_p99_ms": round(_pct(ack, 99), 2)}
            print(f"  watch latency: {results['watch_latency']}", flush=True)
            # Following a flat-out pipelined writer, then reading a backlog.
            watcher = WatcherProcess(endpoints, "fol", n)
            started = time.monotonic()
            write_rate = _blocking_pipelined(endpoints, "fol", n)
            acked_at = time.monotonic()
            got, watch_seconds = watcher.result()
            last_seen = max(t for _, t in got)
            results["watch_follow"] = {"writes_s": round(write_rate), "watcher_changes_s": round(n / (last_seen - started)),
                                       "behind_at_end_ms": round((last_seen - acked_at) * 1000, 1)}
            backlog = WatcherProcess(endpoints, "", 2 * n, from_seq=0)      # every put so far
            _, seconds = backlog.result()
            results["watch_backlog_changes_s"] = round(2 * n / seconds) if seconds else None
            print(f"  following: {results['watch_follow']}, backlog {results['watch_backlog_changes_s']}/s",
                  flush=True)
            # aio pipelined vs blocking pipelined, alternated.
            blocking, asyncio_ = [], []
            for r in range(rounds):
                blocking.append(_blocking_pipelined(endpoints, f"b{r}-", n))
                asyncio_.append(asyncio.run(_aio_puts(endpoints, f"a{r}-", n, DEPTH)))
            results["aio_pipelined_put_s"] = [round(x) for x in asyncio_]
            results["blocking_pipelined_put_s"] = [round(x) for x in blocking]
            print(f"  aio {results['aio_pipelined_put_s']} vs blocking {results['blocking_pipelined_put_s']}",
                  flush=True)
        finally:
            c.stop_all()


def report_rows(r) -> list:
    if "watch_latency" not in r:
        return []
    lat, fol = r["watch_latency"], r["watch_follow"]
    aio_m, blk_m = statistics.median(r["aio_pipelined_put_s"]), statistics.median(r["blocking_pipelined_put_s"])
    return [
        ("leader 3 nodes: watch delivery after the ack, p50 / p99",
         f"{lat['p50_ms']:.1f} ms / {lat['p99_ms']:.1f} ms",
         f"{lat['writes']:,} puts, {DEPTH} in flight ({lat['writes_s']:,}/s, aio); max {lat['max_ms']} ms; "
         f"{lat['before_ack']} seen before the writer saw their ack (target p99 < 20 ms)"),
        ("leader: put sent -> watcher has it, p50 / p99",
         f"{lat['send_to_watcher_p50_ms']:.1f} ms / {lat['send_to_watcher_p99_ms']:.1f} ms",
         f"put sent -> ack: {lat['send_to_ack_p50_ms']:.1f} ms / {lat['send_to_ack_p99_ms']:.1f} ms"),
        ("leader: one watcher following a pipelined writer", f"{fol['watcher_changes_s']:,} changes/s",
         f"writer {fol['writes_s']:,} puts/s; the watcher had the last {fol['behind_at_end_ms']} ms after its ack"),
        ("leader: one watcher reading a backlog from seq 0", f"{r['watch_backlog_changes_s']:,} changes/s", ""),
        (f"leader: aio.Client puts/s, {DEPTH} in flight (asyncio.gather)", f"{aio_m:,.0f}",
         f"blocking pipeline {blk_m:,.0f} ({aio_m / blk_m:.0%}); rounds aio {r['aio_pipelined_put_s']}, "
         f"blocking {r['blocking_pipelined_put_s']}"),
    ]
