"""`datastore-cli status [--watch]`: the cluster as the endpoints given see it, one row per node.
With --watch the table is redrawn in place (rich's Live) every --interval seconds until Ctrl-C; on a
terminal that is not one, a new table is printed each time. A node that does not answer is shown as
unreachable, with the error, and the others go on being shown."""
import json
import sys
import time

from . import errors

LEADER_COLUMNS = ("node_id", "address", "role", "term", "voted_for", "last_seq", "commit_seq", "applied_seq", "lag",
                  "lag_s", "heard_s")
DYNAMO_COLUMNS = ("node_id", "address", "alive", "behind", "conflicts", "tombstones", "digest")
# replicas set (docs/PARTITIONING.md): keys it holds as an owner, partitions it owns, hints it holds
PARTITIONED_COLUMNS = ("node_id", "address", "alive", "behind", "keys", "partitions", "hints", "conflicts",
                       "tombstones")


def gather(args, db):
    """(rows, single): STATUS of the one endpoint and its peer rows, or of every endpoint given."""
    from .client import Client, Retry
    endpoints = db.connection.named_endpoints()
    if len(endpoints) == 1:
        try:
            status = db.status()
        except errors.ZmqstoreError as exc:
            return [{"address": db.endpoint, "role": f"unreachable ({exc.code})"}], True
        return [status] + [dict(peer, term="-", commit_seq=peer.get("commit_seq", "-"))
                           for peer in status.get("peers", [])], True
    from .cli import _client_keys
    rows, keys = [], _client_keys(args)
    for named in endpoints:
        try:
            with Client(named, timeout=float(args["--timeout"]), retry=Retry(max_tries=1), **keys) as one:
                rows.append(one.status())
        except errors.ZmqstoreError as exc:
            rows.append({"address": named.rpartition("@")[2], "role": f"unreachable ({exc.code})"})
    return rows, False


def leader_table(rows, single):
    """(columns, rows of str, lines below). `lag`: entries behind the primary's log; `lag_s` and
    `heard_s`: as the primary sees each peer (seconds since it last held the whole log, since it
    last answered)."""
    primary = next((r for r in rows if r.get("role") == "primary" and "peers" in r), None)
    # Asked one secondary: its row for the primary says how long the primary's log is.
    known = primary or next((r for r in rows if r.get("role") == "primary" and "last_seq" in r), None)
    primary_last = known["last_seq"] if known else None
    seen = {p["node_id"]: p for p in primary.get("peers", [])} if primary else {}
    table = []
    for row in rows:
        view = seen.get(row.get("node_id"), {})
        cells = dict(row, lag=primary_last - row["last_seq"] if primary_last is not None and "last_seq" in row else "-",
                     lag_s=view.get("lag_seconds", 0.0 if row is primary else "-"),
                     heard_s=view.get("last_heard", 0.0 if row is primary else "-"))
        table.append([str(cells.get(c, "-")) for c in LEADER_COLUMNS])
    lines = []
    for row in rows:
        election = row.get("latest_election")
        if election:   # the latest election this node stood in
            took = f" in {election['duration_ms']} ms" if election["duration_ms"] is not None else ""
            lines.append(f"election of term {election['term']}: node {election['candidate']} ({election['outcome']}"
                         f"{took}), votes from {', '.join(map(str, election['votes']))}; started: {election['reason']}")
        alarm = (row.get("space") or {}).get("alarm")
        if alarm:
            lines.append(f"node {row['node_id']}: SPACE ALARM: {alarm}")
    if single and "mode" in rows[0]:
        lines.append("  ".join(f"{k}={rows[0][k]}" for k in ("mode", "first_seq", "keys_estimate", "fsync", "uptime",
                                                              "version") if k in rows[0]))
    return LEADER_COLUMNS, table, lines


def dynamo_table(rows, single):
    """Dynamo mode: per node its writes, how far it is behind, siblings, tombstones and digest."""
    if single:   # one node's STATUS: itself, then its view of each peer
        me = rows[0]
        table = [[str(me["node_id"]), me["address"], "yes", "0", str(me["conflicts"]), str(me["tombstones"]),
                  me["digest"]]]
        for p in rows[1:]:
            table.append([str(p["node_id"]), p["address"], "yes" if p.get("alive") else "no", str(p.get("behind", "-")),
                          str(p.get("conflicts", "-")), str(p.get("tombstones", "-")), str(p.get("digest", "-"))])
        converged = me.get("converged")
    else:        # one row per endpoint; "behind": entries the node lacks that another node has
        newest = {}
        for r in rows:
            for origin, seq in r.get("applied", {}).items():
                newest[origin] = max(newest.get(origin, 0), seq)
        table = []
        for r in rows:
            up = "digest" in r
            behind = sum(s - r["applied"].get(o, 0) for o, s in newest.items()) if up else "-"
            table.append([str(r.get("node_id", "-")), r["address"], "yes" if up else r["role"], str(behind),
                          str(r.get("conflicts", "-")), str(r.get("tombstones", "-")), r.get("digest", "-")])
        converged = all("digest" in r for r in rows) and len({r["digest"] for r in rows}) == 1 and \
            all(row[3] == "0" for row in table)
    lines = [f"node {r['node_id']} applied: " + ", ".join(f"{o}={s}" for o, s in r["applied"].items())
             for r in (rows if not single else rows[:1]) if "applied" in r]
    lines.append(f"converged: {'yes (every node equal, digests equal)' if converged else 'no'}")
    return DYNAMO_COLUMNS, table, lines


def partitioned_table(rows, single):
    """Dynamo mode with replicas set: digests and applied seqs differ by design (each node holds
    its partitions), so `behind` is what the node's own status says it lacks of its co-owners'
    entries (`-` for a peer seen from another node) and converged is every node's own verdict."""
    table = []
    for r in rows:
        full = "peers" in r
        if full:
            behind = str(sum(p.get("ahead", 0) for p in r["peers"]))
            alive = "yes"
        else:
            behind, alive = "-", ("yes" if r.get("alive") else "no") if "alive" in r else r.get("role", "-")
        table.append([str(r.get("node_id", "-")), r["address"], alive, behind,
                      *(str(r.get(k, "-")) for k in ("keys", "partitions_owned", "hints_pending", "conflicts",
                                                     "tombstones"))])
    full_rows = [r for r in rows if "peers" in r]        # asked one node: itself; else every node that answered
    converged = bool(full_rows) and all(r.get("converged") for r in full_rows) and (single or len(full_rows) == len(rows))
    replicas = next((r["replicas"] for r in full_rows), "?")
    lines = [f"replicas: {replicas} (each key on {replicas} nodes; keys: held as an owner, exact)",
             f"converged: {'yes (every node holds what its co-owners hold)' if converged else 'no'}"]
    return PARTITIONED_COLUMNS, table, lines


def tables(rows, single):
    if any(r.get("replicas") for r in rows):
        return partitioned_table(rows, single)
    return (dynamo_table if any(r.get("mode") == "dynamo" for r in rows) else leader_table)(rows, single)


def plain(columns, table, lines) -> str:
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(out + lines)


def _rich(columns, table, lines):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    t = Table(*columns, title=f"zmqstore at {time.strftime('%H:%M:%S')}", title_justify="left")
    for row in table:
        unreachable = any(cell.startswith("unreachable") for cell in row)
        t.add_row(*row, style="red" if unreachable else None)
    return Group(t, *(Text(line) for line in lines))


def show_status(args, db):
    if not args["--watch"]:
        rows, single = gather(args, db)
        if args["--json"]:
            print(json.dumps(rows[0] if single else rows, sort_keys=True, default=str))
        else:
            print(plain(*tables(rows, single)))
        return
    if args["--json"]:
        raise ValueError("status --watch draws a table; for JSON, run status --json in a loop")
    interval = float(args["--interval"])
    if not 0.1 <= interval <= 3600:
        raise ValueError("--interval must be 0.1 to 3600 seconds")
    if not sys.stdout.isatty():          # a log or a pipe: a new table each time
        while True:
            print(plain(*tables(*gather(args, db))), flush=True)
            print(flush=True)
            time.sleep(interval)
    from rich.live import Live
    with Live(_rich(*tables(*gather(args, db))), auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(_rich(*tables(*gather(args, db))), refresh=True)
