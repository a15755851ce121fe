#!/usr/bin/env python3
"""The timeline of a sequential replicated put: where its latency goes, hop by hop, across the client
and the three nodes of a leader-mode cluster.

Usage: python bench/trace_puts.py [--seconds S] [--fill MIB]      (make bench-trace)

Before the timed puts the cluster takes --fill MiB (default 80) of 64 KiB values, as a node that has
run a while has: RocksDB has switched its write-ahead log and reuses an obsolete file, where synced
writes cost less (docs/STORAGE.md, "Write-ahead log files kept for reuse"). --fill 0: a fresh node.

The nodes run as bench/traced_node.py (the node, with timestamps around its steps; no change to
zmqstore itself); CLOCK_MONOTONIC is shared by every process on the machine, so one put's events
can be lined up across processes. For every put the client timed, the stages below are measured
from its events, and their means and medians printed beside the raw limits of the same run. A
secondary's stages are shown for the secondary whose ACK reached the primary first (the one that
committed the put, with the primary's own copy). Beside the stages within one node: the CPU time
its loop thread used in them (the rest of the stage it waited: for a CPU, or for the disk).

Stages: client -> primary (from the client's send to the primary taking the request), primary
before publish, primary -> secondary (from the publish to the secondary's poll returning), the
secondary's work before its batch write, its write (fsync included), after the write to the ACK
handed to ZeroMQ, secondary -> primary (to the primary taking the ACK), primary until the reply is
handed to ZeroMQ, primary -> client (to the client holding the reply). A "->" stage is a ZeroMQ
hop: the sender's I/O thread, TCP on loopback, the receiver's I/O thread, and waking the receiver,
each of which may wait for a CPU.
"""
import argparse
import bisect
import collections
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zmqstore import Client  # noqa: E402
from zmqstore.testing.process import Cluster  # noqa: E402

from limits_raw import raw_limits  # noqa: E402  (bench/ is on sys.path as the script's directory)

TRACED_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traced_node.py")
VALUE = os.urandom(1000)
FILL = os.urandom(64 << 10)


def run(seconds, base_dir, fill_mib=0):
    """Sequential puts against a traced cluster: (client (send, reply) times, node id -> events)."""
    trace_dir = os.path.join(base_dir, "traces")
    os.makedirs(trace_dir)
    cluster = Cluster(os.path.join(base_dir, "cluster"), size=3, args=["--log-level", "WARNING"],
                      env={"ZMQSTORE_TRACE_DIR": trace_dir}, new_session=False, keys=False)
    for n in cluster.nodes.values():
        command = n.command
        n.command = lambda command=command: [sys.executable, TRACED_NODE, *command()[3:]]   # after "-m zmqstore"
    timed = []
    cluster.start_all(timeout=60)
    try:
        pids = {node_id: n.proc.pid for node_id, n in cluster.nodes.items()}
        with Client([n.endpoint for n in cluster.nodes.values()], timeout=10.0) as client:
            pipe = client.pipeline()
            for i in range(fill_mib * 16):          # 64 KiB each
                pipe.put(f"fill{i}", FILL)
            pipe.execute()
            for i in range(300):                    # warm up: connections, the primary found
                client.put(f"warm{i}", VALUE)
            end, i = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                client.put(f"key{i}", VALUE)
                timed.append((t0, time.monotonic()))
                i += 1
    finally:
        cluster.stop_all()
    events, cpu_at = {}, collections.defaultdict(dict)
    for node_id, pid in pids.items():
        by_name = collections.defaultdict(list)
        with open(os.path.join(trace_dir, f"trace-{pid}.txt")) as f:
            for line in f:
                name, seq, t, cpu = line.split()
                by_name[name].append((float(t), int(seq)))
                cpu_at[node_id][float(t)] = float(cpu)
        events[node_id] = by_name
    return timed, events, cpu_at


def _after(events, name, t):
    """The time of the first `name` event at or after t (None: none)."""
    times = events[name]
    i = bisect.bisect_left(times, (t, -1))
    return times[i][0] if i < len(times) else None


def _before(events, name, t):
    times = events[name]
    i = bisect.bisect_left(times, (t, -1)) - 1
    return times[i][0] if i >= 0 else None


def _covering(events, name, t, seq):
    """The time of the first `name` event at or after t whose seq reaches `seq` (None: none)."""
    times = events[name]
    for i in range(bisect.bisect_left(times, (t, -1)), len(times)):
        if times[i][1] >= seq:
            return times[i][0]
    return None


# The secondary's "poll to its batch write", split at the events traced_node.py marks between them.
SPLIT = ("poll returned -> peer socket taken", "recv, decode and check the CHANGE", "dispatch (term, sender, role)",
         "CHANGE handler (match, stage, queue the ACK)", "handler -> iteration's end", "iteration's end -> batch write")


STAGES = ("client -> primary", "primary: request to publish", "primary -> secondary",
          "secondary: poll to its batch write", "secondary: batch write (fsync)", "secondary: write to ACK sent",
          "secondary -> primary", "primary: ACK to reply sent", "primary -> client", "total")


def stages(timed, events, cpu_at, primary_id=1):
    """Stage -> [wall seconds], and stage -> [CPU seconds of the node's loop thread] for the stages
    within one node, over every put whose events were all found."""
    p = events[primary_id]
    published = p["pub"]
    out, cpu = collections.defaultdict(list), collections.defaultdict(list)
    for t0, t1 in timed:
        req = _after(p, "req", t0)
        if req is None or req > t1:
            continue
        i = bisect.bisect_left(published, (req, -1))
        if i >= len(published) or published[i][0] > t1:
            continue
        pub, seq = published[i]
        # the first of the secondaries' ACKs that covers the put: (when the primary took it, secondary id)
        acks = [(_covering(p, f"ack{node_id}", pub, seq), node_id) for node_id in events if node_id != primary_id]
        acks = [a for a in acks if a[0] is not None]
        if not acks:
            continue
        ack, sid = min(acks)
        s = events[sid]
        recv = _covering(s, "recv", pub, seq)
        if recv is None:
            continue
        poll, c0, c1 = _before(s, "poll", recv), _after(s, "c0", recv), _after(s, "c1", recv)
        sent, reply = _after(s, "sent", c1 or recv), _after(p, "reply", ack)
        if None in (poll, c0, c1, sent, reply) or not (c1 < ack and reply <= t1):
            continue
        for name, seconds in zip(STAGES, (req - t0, pub - req, poll - pub, c0 - poll, c1 - c0, sent - c1,
                                          ack - sent, reply - ack, t1 - reply, t1 - t0)):
            out[name].append(seconds)
        on = {primary_id: cpu_at[primary_id], sid: cpu_at[sid]}
        marks = (poll, _before(s, "serve", recv), _before(s, "decoded", recv), recv, _after(s, "handled", recv),
                 _after(s, "end", recv), c0)
        if None not in marks:
            for name, a, b in zip(SPLIT, marks, marks[1:]):
                out[name].append(b - a)
                cpu[name].append(on[sid][b] - on[sid][a])
        for name, node_id, a, b in ((STAGES[1], primary_id, req, pub), (STAGES[3], sid, poll, c0),
                                    (STAGES[4], sid, c0, c1), (STAGES[5], sid, c1, sent),
                                    (STAGES[7], primary_id, ack, reply)):
            cpu[name].append(on[node_id][b] - on[node_id][a])
    return out, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fill", type=int, default=80, help="MiB written before the timed puts (default 80)")
    opts = ap.parse_args()
    load = os.getloadavg()[0]
    raw = raw_limits()
    with tempfile.TemporaryDirectory(prefix="zmqstore-trace-") as d:
        timed, events, cpu_at = run(opts.seconds, d, opts.fill)
    found, cpu = stages(timed, events, cpu_at)
    n = len(found["total"])
    print(f"{opts.fill} MiB written first; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {len(timed)} puts "
          f"({len(timed) / opts.seconds:.0f}/s), {n} with every event found")
    print(f"raw limits, same run: {raw}")
    print("\n| stage | mean us | p50 us | the loop thread's CPU, mean us |\n|---|---:|---:|---:|")
    for label in STAGES[:4] + tuple(f"- {name}" for name in SPLIT) + STAGES[4:]:
        name = label.removeprefix("- ")
        values = found[name]
        if values:
            used = f"{statistics.mean(cpu[name]) * 1e6:,.0f}" if cpu[name] else "-"
            print(f"| {label} | {statistics.mean(values) * 1e6:,.0f} | {statistics.median(values) * 1e6:,.0f} | "
                  f"{used} |")


if __name__ == "__main__":
    main()
