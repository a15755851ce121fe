"""Membership changes under a steady write load (issue 13, docs/MEMBERSHIP.md): a 3-node leader
cluster holding `keys` keys (loaded with put_many; log_retention 1,000, so a joiner installs a
snapshot rather than replaying the log), one client writing sequentially throughout. Measured: the
time from starting a node with --join to the primary counting it as a voter, and, for each kind of
change, the longest gap between two consecutive acknowledged writes while it happens (the write
pause a client sees), beside the longest gap in a quiet window of the same length. Used by
bench/run.py (--only membership)."""
import os
import tempfile
import time

from zmqstore import Client, Retry
from zmqstore.testing.process import Cluster, wait_until

from failover import Writer

LOAD_BATCH = 1000


def _voter(db, node_id):
    return any(m["node_id"] == node_id and m["voter"] for m in db.members())


def _longest_gap(acks, start, end):
    """The longest time without an acknowledgement between start and end (seconds)."""
    times = [start] + [a[0] for a in acks if start < a[0] < end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def membership(results, keys):
    with tempfile.TemporaryDirectory() as d:
        conf = os.path.join(d, "cluster.ini")
        with open(conf, "w") as f:
            f.write("[cluster]\nlog_retention = 1000\n")
        c = Cluster(d, size=3, args=["--config", conf, "--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            started = time.monotonic()
            with c.client(timeout=30, retry=Retry(max_tries=3)) as db:
                value = "v" * 16
                for base in range(0, keys, LOAD_BATCH):
                    db.put_many({f"key{i:08d}": value for i in range(base, min(keys, base + LOAD_BATCH))})
            results["membership_keys"] = keys
            results["membership_load_s"] = round(time.monotonic() - started, 1)
            print(f"  loaded {keys:,} keys in {results['membership_load_s']} s", flush=True)
            writer = Writer(c.endpoints)
            writer.start()
            admin = Client(c.endpoints, timeout=5.0, retry=Retry(max_tries=50, deadline=30))
            try:
                wait_until(lambda: len(writer.acks) > 300, 30, message="writes flowing")
                t0 = time.monotonic()
                time.sleep(3.0)
                results["membership_quiet_gap_ms"] = round(_longest_gap(writer.acks, t0, time.monotonic()) * 1000, 1)

                # Join: a new node with an empty data dir, until the primary counts it as a voter.
                c.add_node(4)
                t0 = time.monotonic()
                c.start(4, wait=False)
                wait_until(lambda: _voter(admin, 4), 120, interval=0.05, message="node 4 a voter")
                t1 = time.monotonic()
                time.sleep(0.5)
                results["membership_join_to_voter_s"] = round(t1 - t0, 2)
                results["membership_join_gap_ms"] = round(_longest_gap(writer.acks, t0, t1 + 0.5) * 1000, 1)

                # Remove a secondary.
                t0 = time.monotonic()
                admin.remove_member(3)
                t1 = time.monotonic()
                time.sleep(0.5)
                results["membership_remove_secondary_gap_ms"] = round(
                    _longest_gap(writer.acks, t0, t1 + 0.5) * 1000, 1)

                # Remove the primary: it commits the change, steps down, node 2 is elected.
                primary = c.wait_primary(10)
                t0 = time.monotonic()
                admin.remove_member(primary)
                c.wait_primary(10, among=[n for n in c.nodes if n not in (primary, 3)])
                n = len(writer.acks)
                wait_until(lambda: len(writer.acks) > n + 50, 10, message="writes again")
                t1 = time.monotonic()
                results["membership_remove_primary_gap_ms"] = round(_longest_gap(writer.acks, t0, t1) * 1000, 1)
            finally:
                writer.stop.set()
                writer.join(10)
                admin.close()
            results["membership_write_failures"] = writer.failures
        finally:
            c.stop_all()


def dynamo_join(results, keys):
    """Dynamo mode: a 3-node cluster holding `keys` keys, one client writing sequentially to node 1;
    node 4 starts with --join and an empty data dir. Measured: the time until every member lists it,
    the time until it has applied everything the cluster held when it started (the logs fetched, or
    anti-entropy where they were trimmed), and the longest gap between two acknowledged writes
    meanwhile. Then, the writer stopped, all four must converge."""
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=3, mode="dynamo", args=["--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            started = time.monotonic()
            with c.nodes[1].client(timeout=30, retry=Retry(max_tries=3)) as db:
                value = "v" * 16
                for base in range(0, keys, LOAD_BATCH):
                    db.put_many({f"key{i:08d}": value for i in range(base, min(keys, base + LOAD_BATCH))})
            results["dynamo_join_keys"] = keys
            wait_until(lambda: c.dynamo_converged(), 120, interval=0.1, message="loaded cluster converged")
            results["dynamo_join_load_s"] = round(time.monotonic() - started, 1)
            print(f"  dynamo: loaded {keys:,} keys in {results['dynamo_join_load_s']} s", flush=True)
            writer = Writer([c.nodes[1].endpoint])
            writer.start()
            try:
                wait_until(lambda: len(writer.acks) > 300, 30, message="writes flowing")
                c.add_node(4)
                target = c.nodes[1].status()["applied"]      # what the cluster held when node 4 started
                t0 = time.monotonic()
                c.start(4, wait=False)
                wait_until(lambda: all(4 in [m["node_id"] for m in (c.nodes[i].status() or {}).get("members", [])]
                                       for i in (1, 2, 3)), 60, interval=0.05, message="node 4 a member everywhere")
                t1 = time.monotonic()

                def holds_target():
                    applied = (c.nodes[4].status() or {}).get("applied", {})
                    return all(applied.get(origin, 0) >= seq for origin, seq in target.items())
                wait_until(holds_target, 600, interval=0.05, message="node 4 holding what the cluster held")
                t2 = time.monotonic()
                results["dynamo_join_gap_ms"] = round(_longest_gap(writer.acks, t0, t2) * 1000, 1)
            finally:
                writer.stop.set()
                writer.join(10)
            wait_until(lambda: c.dynamo_converged(), 600, interval=0.2, message="four nodes converged")
            results["dynamo_join_member_s"] = round(t1 - t0, 2)
            results["dynamo_join_caught_up_s"] = round(t2 - t0, 2)
            results["dynamo_join_write_failures"] = writer.failures
        finally:
            c.stop_all()


def report_rows(r) -> list:
    """(name, value, note) rows for bench/run.py's table."""
    if "membership_join_to_voter_s" not in r:
        return []      # the dynamo rows come with the leader ones (one --only membership run)
    keys = f"{r['membership_keys']:,} keys"
    rows = []
    if "dynamo_join_caught_up_s" in r:
        rows = [
            (f"dynamo 3 nodes, {r['dynamo_join_keys']:,} keys: --join to member everywhere / to holding them",
             f"{r['dynamo_join_member_s']:.2f} s",
             f"/ {r['dynamo_join_caught_up_s']:.1f} s (origin logs fetched under a sequential writer on node 1)"),
            ("dynamo: longest write gap on node 1 during the join", f"{r['dynamo_join_gap_ms']:.0f} ms",
             f"{r['dynamo_join_write_failures']} writes failed"),
        ]
    return rows + [
        (f"leader 3 nodes, {keys}: --join to voter", f"{r['membership_join_to_voter_s']:.2f} s",
         f"snapshot install under a sequential writer (target < 10 s); load took {r['membership_load_s']} s"),
        ("leader: longest write gap, quiet / join / remove secondary",
         f"{r['membership_quiet_gap_ms']:.0f} ms",
         f"/ {r['membership_join_gap_ms']:.0f} ms / {r['membership_remove_secondary_gap_ms']:.0f} ms (target < 1 s)"),
        ("leader: longest write gap, remove the primary (handover)",
         f"{r['membership_remove_primary_gap_ms']:.0f} ms",
         f"target < 1 s; {r['membership_write_failures']} writes failed (retried by the client: 0 expected)"),
    ]
