"""Load for tests on real clusters (process.py starts them): a pipelined batch of puts, and
background threads that write (Writer) or read (Reader) through a cluster while a test does
something else to it, counting what was acknowledged, failed or read wrong."""
import random
import threading

from ..errors import ZmqstoreError
from .process import wait_until


def put_pipelined(db, items):
    """Write `items` (a dict) through one pipeline, raising on any failure; returns them, now all
    acknowledged, so a test can add them to what it expects to survive."""
    p = db.pipeline()
    for key, value in items.items():
        p.put(key, value)
    p.execute()
    return items


class _Background:
    """A thread running `_run` from the start of a `with` block until its end (bounded join)."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"{type(self).__name__} did not stop"

    def _run(self):
        raise NotImplementedError


class Writer(_Background):
    """A thread writing pipelined batches of `batch` puts to the cluster until the `with` block
    ends; `acked` holds what was acknowledged. `retry` should ride out a failover."""

    def __init__(self, cluster, prefix, retry, batch=16):
        super().__init__()
        self.cluster, self.prefix, self.retry, self.batch = cluster, prefix, retry, batch
        self.acked = {}
        self.errors = 0

    def _run(self):
        with self.cluster.client(timeout=0.5, retry=self.retry) as db:
            i = 0
            while not self._stop.is_set():
                p = db.pipeline(max_in_flight=self.batch)
                keys = [f"{self.prefix}{i + j}" for j in range(self.batch)]
                for k in keys:
                    p.put(k, i)
                for k, r in zip(keys, p.execute(raise_on_error=False)):
                    if not isinstance(r, ZmqstoreError):     # None; in dynamo mode the version
                        self.acked[k] = i
                    else:
                        self.errors += 1
                i += self.batch

    def wait_for(self, count, timeout=20):
        """Wait until `count` more writes than now are acknowledged."""
        target = len(self.acked) + count
        wait_until(lambda: len(self.acked) >= target, timeout, message=f"{count} more writes acknowledged")



class Reader(_Background):
    """A thread reading `key<i>` (loaded as i, for i below `count`) through every node in turn until
    the `with` block ends; counts reads, failures and wrong values."""

    def __init__(self, cluster, count, retry):
        super().__init__()
        self.cluster, self.count, self.retry = cluster, count, retry
        self.reads = self.errors = self.wrong = 0

    def _run(self):
        rng = random.Random(7)
        clients = [n.client(retry=self.retry, timeout=2.0) for n in self.cluster.nodes.values()]
        try:
            while not self._stop.is_set():
                i = rng.randrange(self.count)
                try:
                    if clients[i % len(clients)].get(f"key{i}") != i:
                        self.wrong += 1
                except ZmqstoreError:
                    self.errors += 1
                self.reads += 1
        finally:
            for db in clients:
                db.close()