"""Partitioned dynamo clusters (issue 16, docs/PARTITIONING.md), real nodes on 127.0.0.2...:

- peer messages per write with replicas = 3 on 3, 6 and 9 nodes, beside replicas = 0 (every node
  holds every key) on the same sizes: `keys` puts written through every node in turn (so about
  1 - 3/n of them are forwarded), counted from the nodes' own tallies of the peer messages they took
  (STATUS `peer_messages`). Only messages that writes cause are counted (DCHANGE, DACK, DFORWARD
  and its reply, fetches, hints); the periodic ones (DSTATUS, DSYNC: a message per heartbeat per
  pair of nodes, whatever the load) are reported apart, per second;
- rebalancing: on 6 nodes holding 20 x `keys` keys, a 7th node joins (--join): the time until no
  partition moves anywhere, and the keys it pulled per second;
- hint delivery: on 6 nodes, one node killed, `keys` puts made while it is down (those of the
  partitions it owns are hinted to fallbacks), then the node started again: the time from its
  start to no hint pending anywhere.
Used by bench/run.py (--only partitions); `python bench/partition_bench.py --keys N` runs it alone."""
import argparse
import tempfile
import time

from zmqstore import Retry
from zmqstore.dynamo.placement import Placement
from zmqstore.testing.process import Cluster, wait_until

PERIODIC = ("DSTATUS", "DSTATUS_REPLY", "DSYNC")
RETRY = Retry(max_tries=20, deadline=20.0)


def _tallies(c):
    total = {}
    for node in c.nodes.values():
        for command, count in (node.status(timeout=3.0) or {}).get("peer_messages", {}).items():
            total[command] = total.get(command, 0) + count
    return total


def _converged(c):
    return all((n.status(timeout=3.0) or {}).get("converged") for n in c.nodes.values())


def _write(nodes, keys, prefix):
    """keys sequential puts, through each of `nodes` in turn (a client each)."""
    clients = [node.client(retry=RETRY, timeout=10.0) for node in nodes]
    try:
        for i in range(keys):
            clients[i % len(clients)].put(f"{prefix}{i}", i)
    finally:
        for db in clients:
            db.close()


def messages_per_write(size, replicas, keys):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=size, mode="dynamo", args=["--replicas", str(replicas), "--log-level", "WARNING"],
                    new_session=False, keys=False)
        try:
            c.start_all()
            _write(c.nodes.values(), 50, "warm")
            wait_until(lambda: _converged(c), 60, interval=0.2, message="converged")
            before, started = _tallies(c), time.monotonic()
            _write(c.nodes.values(), keys, "k")
            wait_until(lambda: _converged(c), 60, interval=0.2, message="converged")
            after, seconds = _tallies(c), time.monotonic() - started
        finally:
            c.stop_all()
    delta = {cmd: after.get(cmd, 0) - before.get(cmd, 0) for cmd in after}
    caused = {cmd: n for cmd, n in delta.items() if cmd not in PERIODIC and n}
    periodic = sum(delta.get(cmd, 0) for cmd in PERIODIC)
    return {"nodes": size, "replicas": replicas, "keys": keys, "per_write": round(sum(caused.values()) / keys, 2),
            "by_command": {cmd: round(n / keys, 2) for cmd, n in sorted(caused.items())},
            "periodic_per_s": round(periodic / seconds), "seconds": round(seconds, 1)}


def hint_delivery(keys):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=6, mode="dynamo", args=["--replicas", "3", "--log-level", "WARNING"],
                    new_session=False, keys=False)
        try:
            c.start_all()
            _write(c.nodes.values(), 50, "warm")
            c.nodes[6].kill()
            wait_until(lambda: not any(p["alive"] for p in c.nodes[1].status()["peers"] if p["node_id"] == 6), 10,
                       interval=0.05, message="node 6 seen down")
            up = [c.nodes[n] for n in range(1, 6)]
            _write(up, keys, "h")
            statuses = [n.status(timeout=3.0) for n in up]
            records, sent = sum(st["hints_pending"] for st in statuses), sum(st["hints_sent"] for st in statuses)
            started = time.monotonic()
            c.start(6)
            ready = time.monotonic() - started
            wait_until(lambda: all((n.status(timeout=3.0) or {"hints_pending": 1})["hints_pending"] == 0
                                   for n in c.nodes.values()), 120, interval=0.05, message="hints delivered")
            seconds = time.monotonic() - started
            wait_until(lambda: _converged(c), 60, interval=0.2, message="converged")
            held = c.nodes[6].status(timeout=3.0)["keys"]
            placement = Placement(list(c.nodes), 3)
            owned = sum(6 in placement.preference(f"{prefix}{i}".encode())
                        for prefix, count in (("warm", 50), ("h", keys)) for i in range(count))
        finally:
            c.stop_all()
    return {"keys": keys, "hint_records": records, "hinted_messages": sent, "node_ready_s": round(ready, 2),
            "delivered_s": round(seconds, 2), "node6_keys": held, "node6_owns": owned}


def join_rate(keys):
    """6 nodes, replicas 3, `keys` keys loaded (pipelined); a 7th node started with --join: the time
    until no partition moves anywhere, and the keys it pulled."""
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, size=6, mode="dynamo", args=["--replicas", "3", "--log-level", "WARNING"],
                    new_session=False, keys=False)
        try:
            c.start_all()
            for node_id, node in c.nodes.items():
                with node.client(retry=RETRY, timeout=10.0) as db:
                    with db.pipeline(64) as p:
                        for i in range(node_id - 1, keys, 6):
                            p.put(f"j{i}", i)
                        p.execute()
            wait_until(lambda: _converged(c), 120, interval=0.2, message="loaded")
            c.add_node(7)
            started = time.monotonic()
            c.start(7, wait=False)
            wait_until(lambda: all((n.status(timeout=3.0) or {"partitions_moving": 1})["partitions_moving"] == 0
                                   for n in c.nodes.values()), 600, interval=0.1, message="moved")
            seconds = time.monotonic() - started
            st = c.nodes[7].status(timeout=3.0)
        finally:
            c.stop_all()
    return {"keys": keys, "seconds": round(seconds, 1), "partitions": st["partitions_pulled"],
            "keys_pulled": st["keys_pulled"], "keys_s": round(st["keys_pulled"] / seconds)}


def partitioned(results, keys, quick=False):
    """quick: 3 nodes only, and no hint delivery (bench/run.py --quick, a smoke run)."""
    rows = results["partitions"] = []
    for size in (3,) if quick else (3, 6, 9):
        for replicas in (3, 0):
            row = messages_per_write(size, replicas, keys)
            rows.append(row)
            print(f"  {size} nodes, replicas {replicas or 'all'}: {row['per_write']} peer messages per write "
                  f"{row['by_command']}; periodic {row['periodic_per_s']}/s", flush=True)
    if not quick:
        results["hint_delivery"] = hint_delivery(keys)
        print(f"  hints: {results['hint_delivery']}", flush=True)
        results["join_rate"] = join_rate(20 * keys)
        print(f"  join: {results['join_rate']}", flush=True)


def report_rows(r) -> list:
    rows = []
    for row in r.get("partitions", ()):
        rows.append((f"dynamo {row['nodes']} nodes, replicas = {row['replicas'] or 'all'}: peer messages per write",
                     f"{row['per_write']}", f"{row['keys']:,} puts through every node in turn; "
                     + ", ".join(f"{c} {n}" for c, n in row["by_command"].items())
                     + f"; besides, DSTATUS and DSYNC {row['periodic_per_s']:,}/s for the whole cluster"))
    h = r.get("hint_delivery")
    if h:
        rows.append(("dynamo 6 nodes, replicas = 3: hints delivered after the owner is started",
                     f"{h['delivered_s']} s", f"{h['keys']:,} puts while node 6 was down: {h['hinted_messages']:,} "
                     f"DHINTs, {h['hint_records']} hint records; node 6 ready {h['node_ready_s']} s after its start; "
                     f"converged, it holds {h['node6_keys']:,} keys, of the {h['node6_owns']:,} it owns"))
    j = r.get("join_rate")
    if j:
        rows.append(("dynamo 6 nodes, replicas = 3: a 7th node joins (--join), start to no partition moving",
                     f"{j['seconds']} s", f"{j['keys']:,} keys loaded; it pulled {j['partitions']:,} partitions and "
                     f"{j['keys_pulled']:,} keys: {j['keys_s']:,} keys/s"))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keys", type=int, default=3000)
    opts = ap.parse_args()
    results = {}
    partitioned(results, opts.keys)
    for row in report_rows(results):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
