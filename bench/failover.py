"""Failover timing: kill -9 the primary of a 3-node leader cluster under a steady write load and
measure, from the kill to the first write acknowledged by the new primary, as the client sees it.
Also checks that no acknowledged write was lost across all runs. Used by bench/run.py."""
import statistics
import tempfile
import threading
import time

from zmqstore import Client, Retry, ZmqstoreError
from zmqstore.testing.process import Cluster, wait_until

# The writer gives up on a node after 0.1 s and tries the next one at once: the figure measures the
# cluster, not the client's back-off.
WRITER_TIMEOUT = 0.1
WRITER_RETRY = Retry(max_tries=100_000, delay=0.005, backoff=1.0, max_delay=0.005, max_jitter=0.0, deadline=60)


class Writer(threading.Thread):
    """Sequential puts, each recorded with the time it was acknowledged and the node that did."""

    def __init__(self, endpoints):
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.acks = []               # (monotonic time, endpoint, key, value)
        self.stop = threading.Event()
        self.failures = 0

    def run(self):
        with Client(self.endpoints, timeout=WRITER_TIMEOUT, retry=WRITER_RETRY) as db:
            i = 0
            while not self.stop.is_set():
                key = f"f{i}"
                try:
                    db.put(key, i)
                    self.acks.append((time.monotonic(), db.endpoint, key, i))
                except ZmqstoreError:
                    self.failures += 1
                i += 1


def failover(results, runs, election_interval=0.5):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=3, args=["--election-interval", str(election_interval), "--log-level", "WARNING"],
                    new_session=False, keys=False)
        try:
            c.start_all()
            writer = Writer(c.endpoints)
            writer.start()
            times, elections, winners = [], [], []
            try:
                for _ in range(runs):
                    n = len(writer.acks)
                    wait_until(lambda: len(writer.acks) > n + 300, 30, message="writes flowing")
                    victim = c.wait_primary(10)
                    victim_ep = c.nodes[victim].endpoint
                    killed_at = time.monotonic()
                    c.nodes[victim].kill()
                    first = wait_until(lambda: next((a for a in writer.acks[n:] if a[0] > killed_at
                                                     and a[1] != victim_ep), None), 30,
                                       interval=0.005, message="a write acknowledged by a new primary")
                    times.append(first[0] - killed_at)
                    winner = next(i for i, node in c.nodes.items() if node.endpoint == first[1])
                    winners.append(winner)
                    st = c.nodes[winner].status()
                    if st and st.get("latest_election"):
                        elections.append(st["latest_election"]["duration_ms"])
                    c.start(victim)
                    target = st["commit_seq"] if st else 0
                    wait_until(lambda: (c.nodes[victim].status() or {}).get("applied_seq", 0) >= target, 30,
                               interval=0.05, message="the old primary caught up")
            finally:
                writer.stop.set()
                writer.join(30)
            primary = c.wait_primary(10)
            with Client(c.nodes[primary].endpoint, timeout=5.0) as db:
                data = dict(db.scan(prefix="f"))
            lost = [a for a in writer.acks if data.get(a[2]) != a[3]]
            results["failover"] = {
                "runs": runs, "election_interval": election_interval,
                "seconds": times, "median_s": statistics.median(times), "max_s": max(times),
                "election_ms": elections, "winners": winners, "acknowledged": len(writer.acks),
                "lost": len(lost), "writer_failures": writer.failures,
            }
        finally:
            c.stop_all()
