"""YCSB's core workloads for the comparison benchmark (bench/compare.py): key choice, operation mixes and
the loop one client process runs against any store's adapter (bench/stores.py).

As YCSB defines them (core workloads A-F, github.com/brianfrankcooper/YCSB/wiki/Core-Workloads): records
of 1 KB under keys "user" + FNV-64 hash of the record number, chosen by a scrambled zipfian (theta 0.99)
or, for D, by "latest" (the newest inserts most often); E scans 1 to 100 records; F reads a record and
writes it back with a compare-and-set on what it read. Two more: sequential puts and 100-deep pipelined
puts of fresh keys. Latencies go into an HdrHistogram (microseconds, 3 significant digits), which the
parent merges across client processes and rounds.
"""
import random
import time

from hdrh.histogram import HdrHistogram

VALUE_SIZE = 1000
SCAN_MAX = 100
PIPELINE_DEPTH = 100
PIPELINE_BATCH = 1000
ZIPF_THETA = 0.99

# name: (description, {operation: share})
WORKLOADS = {
    "seq_put": ("sequential puts, fresh keys", {"put": 1.0}),
    "pipelined_put": (f"{PIPELINE_DEPTH}-deep pipelined puts, fresh keys", {"pipelined": 1.0}),
    "A": ("50% read, 50% update, zipfian", {"read": 0.5, "update": 0.5}),
    "B": ("95% read, 5% update, zipfian", {"read": 0.95, "update": 0.05}),
    "C": ("100% read, zipfian", {"read": 1.0}),
    "D": ("95% read latest, 5% insert", {"read": 0.95, "insert": 0.05}),
    "E": ("95% scan of 1-100 records, 5% insert", {"scan": 0.95, "insert": 0.05}),
    "F": ("50% read, 50% read-modify-write (cas)", {"read": 0.5, "rmw": 0.5}),
}


def histogram():
    return HdrHistogram(1, 60_000_000, 3)


def fnv64(n: int) -> int:
    """FNV-1a over the 8 bytes of n, as YCSB's Utils.fnvhash64 scrambles record numbers."""
    h = 0xCBF29CE484222325
    for _ in range(8):
        h ^= n & 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        n >>= 8
    return h


def key_of(record: int) -> bytes:
    return b"user%020d" % fnv64(record)


class Zipfian:
    """Ranks 0..n-1, rank 0 the most popular (Gray et al., "Quickly generating billion-record synthetic
    databases", as in YCSB's ZipfianGenerator)."""

    def __init__(self, n, rng, theta=ZIPF_THETA):
        self.n, self.rng, self.theta = n, rng, theta
        self.zetan = sum(1.0 / (i ** theta) for i in range(1, n + 1))
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1 - (2.0 / n) ** (1 - theta)) / (1 - (1 + 0.5 ** theta) / self.zetan)
        self.half = 1 + 0.5 ** theta

    def rank(self) -> int:
        uz = self.rng.random() * self.zetan
        if uz < 1.0:
            return 0
        if uz < self.half:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * self.rng.random() - self.eta + 1) ** self.alpha))


class Keys:
    """What one client process reads and writes: existing records (scrambled zipfian, or latest for D) and
    inserts of its own, interleaved with the other processes' so no two write the same new record.
    Insert j of a round (all processes counted) is record records + (base + j // workers) * workers
    + j % workers: `base` keeps rounds and workloads apart, and "latest" can name every insert made."""

    def __init__(self, records, worker, workers, latest, seed, base):
        self.rng = random.Random(seed)
        self.records, self.worker, self.workers, self.latest = records, worker, workers, latest
        self.base = base
        self.zipf = Zipfian(records, self.rng)
        self.inserted = 0

    def _insert(self, j) -> bytes:
        return key_of(self.records + (self.base + j // self.workers) * self.workers + j % self.workers)

    def existing(self) -> bytes:
        rank = self.zipf.rank()
        if self.latest:      # the newest record is rank 0; every process's inserts count
            i = self.inserted * self.workers - 1 - rank
            return self._insert(i) if i >= 0 else key_of(max(0, self.records + i))
        return key_of(fnv64(rank) % self.records)

    def fresh(self) -> bytes:
        key = self._insert(self.inserted * self.workers + self.worker)
        self.inserted += 1
        return key


def value(rng) -> bytes:
    return rng.randbytes(VALUE_SIZE)


def run_client(store, workload, seconds, start_at, worker, workers, records, seed, insert_base):
    """Run `workload` against `store` (an adapter's client) for `seconds` from wall time `start_at`.
    Returns {"ops", "errors", "seconds", "histogram" (encoded), "first_error"}. `insert_base`: where this
    round's fresh keys start (Keys), so rounds and workloads never collide on them."""
    _name, mix = WORKLOADS[workload]
    keys = Keys(records, worker, workers, workload == "D", seed, insert_base)
    rng = keys.rng
    ops = [op for op in mix]
    cumulative, total = [], 0.0
    for op in ops:
        total += mix[op]
        cumulative.append(total)
    hist = histogram()
    payload = value(rng)
    n = errors = 0
    first_error = None
    while time.time() < start_at:
        time.sleep(0.0005)
    t_start = time.perf_counter()
    deadline = t_start + seconds
    now = t_start
    while now < deadline:
        u = rng.random() * total
        op = ops[0] if len(ops) == 1 else next(o for o, c in zip(ops, cumulative) if u < c)
        t0 = time.perf_counter()
        try:
            done = _one(store, op, keys, rng, payload)
        except Exception as exc:   # a failed operation is counted and reported, never hidden
            errors += 1
            first_error = first_error or f"{op}: {type(exc).__name__}: {exc}"[:300]
            done = 0
        now = time.perf_counter()
        if done:
            n += done
            hist.record_value(max(1, int((now - t0) * 1e6 / done)))
    return {"ops": n, "errors": errors, "seconds": now - t_start, "histogram": hist.encode(),
            "first_error": first_error}


def _one(store, op, keys, rng, payload) -> int:
    """One operation (or one pipelined batch); returns how many operations it did."""
    if op == "read":
        store.read(keys.existing())
    elif op == "update":
        store.update(keys.existing(), payload)
    elif op == "insert":       # YCSB's insert: a new record (Redis also adds it to its scan index)
        store.insert(keys.fresh(), payload)
    elif op == "put":
        store.update(keys.fresh(), payload)
    elif op == "scan":
        store.scan(keys.existing(), rng.randint(1, SCAN_MAX))
    elif op == "rmw":
        store.read_modify_write(keys.existing(), payload)
    elif op == "pipelined":
        store.put_pipelined([keys.fresh() for _ in range(PIPELINE_BATCH)], payload, PIPELINE_DEPTH)
        return PIPELINE_BATCH
    return 1
