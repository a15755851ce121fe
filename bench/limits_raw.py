"""The physical limits of this machine, measured in the same run as the comparison (bench/compare.py):
a pyzmq DEALER-ROUTER round trip on loopback, an fdatasync of a 1 KB append, and one synced RocksDB
write of a 1 KB value. The floor of a replicated put is one client round trip, one more round trip
between primary and secondary, and the secondary's synced write (issue 17): 2 round trips + 1 synced
write. Each is the median of many samples.

A round trip is also measured with both ends idle for IDLE_GAP before each request. On this
machine (a virtual machine whose idle CPUs halt: cpuidle driver "none") a thread that slept is woken
through the hypervisor, and a ZeroMQ round trip wakes four threads (each end's I/O thread and its
caller): back to back it takes about 120 us, after 0.5 ms or more of idleness 500-800 us. The
nodes of a cluster serving one sequential client sleep between its requests, so the hops of a
put meet the second figure; the floor is also given with it.

On one machine the three nodes' disks are one disk: every node fsyncs each entry, and three
processes syncing at once each wait longer than one alone (here about 2.3x). So the floor is given
twice: with one synced writer (issue 17's definition) and with three writing at once, which is what
the nodes of a test cluster meet.
"""
import multiprocessing
import os
import statistics
import tempfile
import time

from run import EchoServer, open_raw_db   # bench/run.py: the raw limits it compares the node against

IDLE_GAP = 0.002    # seconds both ends sleep before each request of the idle round trip


def _median_us(samples):
    return statistics.median(samples) * 1e6


def pyzmq_round_trip_us(n, idle=0.0):
    """Median round trip, back to back, or with both ends idle for `idle` seconds before each (what
    a sequential client's requests meet: every process of a cluster sleeps between them)."""
    from zmqstore.transport import recv, send
    echo = EchoServer()
    try:
        sock, msg, samples = echo.sock, b"x" * 1100, []
        for _ in range(n):
            if idle:
                time.sleep(idle)
            t0 = time.perf_counter()
            send(sock, msg)
            recv(sock)
            samples.append(time.perf_counter() - t0)
        return _median_us(samples[n // 10:])
    finally:
        echo.close()


def fdatasync_us(n):
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        samples = []
        for _ in range(n):
            f.write(b"x" * 1000)
            f.flush()
            t0 = time.perf_counter()
            os.fdatasync(f.fileno())
            samples.append(time.perf_counter() - t0)
        return _median_us(samples)


def rocksdb_synced_put_us(n, writers=1, start_at=0.0):
    """Median synced single write; with `writers` > 1, that many processes write at once (each its
    own database, all starting at the same moment) and the median of their medians is returned."""
    if writers > 1:
        mp = multiprocessing.get_context("spawn")
        with mp.Pool(writers) as pool:
            start_at = time.time() + 1.5        # every process imported and waiting by then
            return statistics.median(pool.starmap(rocksdb_synced_put_us, [(n, 1, start_at)] * writers))
    with tempfile.TemporaryDirectory() as d:
        db, wo = open_raw_db(os.path.join(d, "db"), sync=True)
        value, samples = os.urandom(1000), []
        while time.time() < start_at:
            time.sleep(0.001)
        try:
            for i in range(n):
                t0 = time.perf_counter()
                db.put(b"key%09d" % i, value, wo)
                samples.append(time.perf_counter() - t0)
        finally:
            db.close()
        return _median_us(samples)


def raw_limits(quick=False):
    n = 200 if quick else 2000
    rt = pyzmq_round_trip_us(n * 5)
    idle_rt = pyzmq_round_trip_us(n // 4, idle=IDLE_GAP)
    put = rocksdb_synced_put_us(n)
    shared = rocksdb_synced_put_us(n, writers=3)
    return {"pyzmq_round_trip_us": round(rt, 1), "pyzmq_round_trip_after_idle_us": round(idle_rt, 1),
            "fdatasync_us": round(fdatasync_us(n), 1),
            "rocksdb_synced_put_us": round(put, 1), "rocksdb_synced_put_3_writers_us": round(shared, 1),
            "replicated_put_floor_us": round(2 * rt + put, 1),
            "replicated_put_floor_shared_disk_us": round(2 * rt + shared, 1),
            "replicated_put_floor_after_idle_us": round(2 * idle_rt + put, 1)}
