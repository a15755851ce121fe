"""Metrics (docs/OPERATIONS.md, "Metrics"): what the loop counts between scrapes, and the Prometheus
families a scrape makes of it and of the node's status.

The loop thread alone touches a `Recorder`: plain integers and bucket lists, a few hundred
nanoseconds per request, no lock. A scrape (http_status.py, on its own thread) asks the loop for a
`Sample` (a copy of the counts and the status map, taken between two loop iterations) and turns it
into metric families with prometheus-client, so the loop never formats text and never waits for an
HTTP client. No family carries a key or a value.
"""
import os
from bisect import bisect_left
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .protocol import reply_outcome

# Upper bounds, seconds: from a cached read (~50 us) to a write held for its full replication_timeout.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket (the last one: above every bound) and the sum. Loop thread only."""
    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds):
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def copy(self):
        h = Histogram()
        h.counts, h.total = list(self.counts), self.total
        return h

    def buckets(self):
        """[(bound as Prometheus writes it, cumulative count), ..., ("+Inf", count)]."""
        out, running = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class Recorder:
    """What the loop counts: requests by command and outcome with their latency, storage commits by
    whether they synced, and primary changes. Labels come from validated requests and the protocol's
    error codes only, so their number is bounded."""

    def __init__(self):
        self.requests = {}          # (command, outcome) -> count
        self.latency = {}           # command -> Histogram (receipt to reply)
        self.commits = {True: Histogram(), False: Histogram()}     # synced?

    def request(self, command, body, started, now):
        key = (command, reply_outcome(body))
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get(command)
        if latency is None:
            latency = self.latency[command] = Histogram()
        latency.observe(now - started)

    def commit(self, synced, seconds):
        self.commits[synced].observe(seconds)

    def copy(self):
        r = Recorder()
        r.requests = dict(self.requests)
        r.latency = {c: h.copy() for c, h in self.latency.items()}
        r.commits = {k: h.copy() for k, h in self.commits.items()}
        return r


class Sample(NamedTuple):
    """What a scrape reads, taken by the loop between two iterations."""
    recorder: Recorder
    status: dict            # the STATUS map (docs/PROTOCOL.md)
    held_writes: int        # write replies waiting for their quorum
    held: int               # replies held in all
    sessions: int
    ready: bool
    why_not_ready: str
    round_trips: dict       # peer id -> Histogram (copies): Mode.round_trips


def data_size(path) -> int:
    """Bytes of the files under the data dir (scrape thread: a directory walk, no RocksDB call)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass        # RocksDB removed it meanwhile (compaction)
    return total


def families(sample: Sample, data_dir):
    """The metric families of one sample (docs/OPERATIONS.md lists every one)."""
    st, rec = sample.status, sample.recorder
    node = str(st["node_id"])
    yield _gauge("zmqstore_node_info", "This node: id, mode and version (always 1).", 1,
                 {"node_id": node, "mode": st["mode"], "version": st["version"]})
    yield _gauge("zmqstore_node_uptime_seconds", "Seconds since the node started.", st["uptime"])
    yield _gauge("zmqstore_node_ready", "1 when /readyz answers 200 (docs/OPERATIONS.md).", int(sample.ready))
    requests = CounterMetricFamily("zmqstore_requests", "Client requests answered, by command and outcome "
                                   "(ok or the error code).", labels=("command", "outcome"))
    for (command, outcome), count in sorted(rec.requests.items()):
        requests.add_metric((command, outcome), count)
    yield requests
    latency = HistogramMetricFamily("zmqstore_request_duration_seconds", "From a request's arrival to its "
                                    "reply (a write: once its quorum holds it).", labels=("command",))
    for command, h in sorted(rec.latency.items()):
        latency.add_metric((command,), h.buckets(), h.total)
    yield latency
    commits = HistogramMetricFamily("zmqstore_storage_commit_duration_seconds", "One RocksDB batch write, "
                                    "its fsync included when synced.", labels=("synced",))
    for synced, h in sorted(rec.commits.items()):
        commits.add_metric(("true" if synced else "false",), h.buckets(), h.total)
    yield commits
    yield _gauge("zmqstore_storage_size_bytes", "Bytes of the data dir's files.", data_size(data_dir))
    yield _gauge("zmqstore_storage_keys_estimate", "RocksDB's estimate of the keys stored.", st["keys_estimate"])
    space = st.get("space") or {}
    yield _gauge("zmqstore_storage_space_alarm", "1 while short of disk: writes that add data get no_space.",
                 int(space.get("alarm") is not None))
    yield _gauge("zmqstore_storage_free_bytes", "Bytes free on the data dir's file system.", space.get("free_bytes", 0))
    yield _counter("zmqstore_storage_space_alarms", "Times the space alarm went on.", space.get("alarms_raised", 0))
    yield _gauge("zmqstore_requests_waiting", "Replies held for a condition (a quorum, a read round).",
                 sample.held)
    yield _gauge("zmqstore_writes_waiting_quorum", "Write replies held until their quorum holds them.",
                 sample.held_writes)
    yield _gauge("zmqstore_sessions", "Client sessions whose write outcomes are kept for retries.", sample.sessions)
    watches = st.get("watches") or {}
    yield _gauge("zmqstore_watch_watches", "Watches open on this node.", watches.get("open", 0))
    for name, help_ in (("watches_opened", "Watches accepted."), ("watches_dropped", "Watches ended by the "
                        "node (a gone or stuck watcher)."), ("watches_compacted", "Watches ended with compacted.")):
        yield _counter(f"zmqstore_watch_{name.replace('watches_', '')}", help_, watches.get(name, 0))
    yield from (_dynamo if st["mode"] == "dynamo" else _leader)(st, sample)


def _leader(st, sample):
    yield _gauge("zmqstore_leader_term", "The current term.", st["term"])
    role = GaugeMetricFamily("zmqstore_leader_role", "1 for this node's role, 0 for the others.", labels=("role",))
    for name in sorted({"primary", "secondary", "learner", "candidate", "removed", st["role"]}):
        role.add_metric((name,), int(st["role"] == name))
    yield role
    yield _gauge("zmqstore_leader_has_primary", "1 when this node knows a primary of its term.",
                 int(bool(st["primary_id"])))
    yield _counter("zmqstore_leader_primary_changes", "Times this node saw another primary take over.",
                   st.get("primary_changes", 0))
    for name in ("last_seq", "commit_seq", "applied_seq", "first_seq"):
        yield _gauge(f"zmqstore_log_{name}", f"The log's {name.replace('_', ' ')}.", st[name])
    yield _counter("zmqstore_leader_elections_started", "Elections this node stood in.", st.get("elections_started", 0))
    yield _counter("zmqstore_leader_elections_won", "Elections this node won.", st.get("elections_won", 0))
    yield _counter("zmqstore_leader_read_rounds", "Read-confirmation rounds this node started as primary.",
                   st.get("read_rounds", 0))
    yield _counter("zmqstore_leader_read_rounds_widened", "Rounds asked of every secondary after the voters "
                   "asked first left them unconfirmed for 10 ms.", st.get("read_rounds_widened", 0))
    for name, help_ in (("fetches_served", "FETCH requests answered for peers."),
                        ("snapshots_served", "Snapshots sent to peers."),
                        ("fetches", "FETCH requests this node sent (catching up)."),
                        ("snapshots_installed", "Snapshots this node installed.")):
        yield _counter(f"zmqstore_replication_{name}", help_, st.get(name, 0))
    primary = st["role"] == "primary"
    yield from _peers(st, "The primary: entries a peer lacks; a secondary: entries it lacks of its primary's log.",
                      lambda row: max(0, st["last_seq"] - row["last_seq"] if primary
                                      else row.get("last_seq", 0) - st["last_seq"]))
    lag_seconds = GaugeMetricFamily("zmqstore_replication_lag_seconds", "The primary: seconds since the publish "
                                    "of the first entry a peer lacks (0: it holds the whole log).", labels=("peer",))
    for row in st.get("peers", []):
        if "lag_seconds" in row:
            lag_seconds.add_metric((str(row["node_id"]),), row["lag_seconds"])
    yield lag_seconds
    rtt = HistogramMetricFamily("zmqstore_replication_round_trip_seconds", "The primary: from publishing "
                                "entries to a peer's acknowledgement of them (its fsync included).",
                                labels=("peer",))
    for peer, h in sorted(sample.round_trips.items()):
        rtt.add_metric((str(peer),), h.buckets(), h.total)
    yield rtt


def _dynamo(st, sample):
    yield _gauge("zmqstore_dynamo_conflicts", "Keys holding concurrent versions (siblings).", st["conflicts"])
    yield _gauge("zmqstore_dynamo_tombstones", "Keys whose only versions are deletes, not yet collected.",
                 st["tombstones"])
    yield _gauge("zmqstore_dynamo_converged", "1 when every peer is alive and holds the same data.",
                 int(st.get("converged", True)))
    yield _gauge("zmqstore_dynamo_origin_seq", "The last seq of this node's own origin.", st["last_seq"])
    yield _gauge("zmqstore_dynamo_keys", "Keys holding a value in the partitions this node owns (exact).",
                 st.get("keys", 0))
    yield _gauge("zmqstore_dynamo_partitions_owned", "Partitions (of 4,096) this node owns.",
                 st.get("partitions_owned", 0))
    yield _gauge("zmqstore_dynamo_hints_pending", "Hint records held here for owners that were down "
                 "(replicas set): each goes once its owner holds its writes.", st.get("hints_pending", 0))
    for name, help_ in (("antientropy_runs", "Anti-entropy exchanges finished."),
                        ("keys_repaired", "Keys anti-entropy changed."),
                        ("read_repairs", "Keys a quorum read repaired."),
                        ("gaps_fetched", "Origin-log gaps fetched from peers."),
                        ("hints_sent", "Hinted writes sent to fallbacks for owners that were down."),
                        ("hints_delivered", "Hint records handed over to their owners and dropped.")):
        yield _counter(f"zmqstore_dynamo_{name}", help_, st.get(name, 0))
    yield from _peers(st, "Writes this node holds that the peer has not applied.", lambda row: row["behind"])
    rtt = HistogramMetricFamily("zmqstore_peer_round_trip_seconds", "From a status query (DSTATUS) to a peer "
                                "to its reply.", labels=("peer",))
    for peer, h in sorted(sample.round_trips.items()):
        rtt.add_metric((str(peer),), h.buckets(), h.total)
    yield rtt


def _peers(st, lag_help, lag_of):
    """Both modes' per-peer families: lag in entries (`lag_of(row)`), up, and seconds since heard."""
    lag = GaugeMetricFamily("zmqstore_replication_lag_entries", lag_help, labels=("peer",))
    up = GaugeMetricFamily("zmqstore_peer_up", "1 when the peer was heard within election_interval.",
                           labels=("peer",))
    heard = GaugeMetricFamily("zmqstore_peer_last_heard_seconds", "Seconds since the peer was last heard.",
                              labels=("peer",))
    for row in st.get("peers", []):
        peer = (str(row["node_id"]),)
        lag.add_metric(peer, lag_of(row))
        up.add_metric(peer, int(row["alive"]))
        if row.get("last_heard") is not None:
            heard.add_metric(peer, row["last_heard"])
    return lag, up, heard


def _gauge(name, help_, value, labels=None):
    g = GaugeMetricFamily(name, help_, labels=list(labels) if labels else None)
    if labels:
        g.add_metric(list(labels.values()), value)
    else:
        g.add_metric([], value)
    return g


def _counter(name, help_, value):
    c = CounterMetricFamily(name, help_)
    c.add_metric([], value)
    return c


READY_MAX_LAG = 1000    # entries a leader-mode secondary may lack of its primary's log and be ready


def readiness(st) -> tuple:
    """(ready, why not) from a STATUS map (docs/OPERATIONS.md, /readyz). Leader mode: it knows a
    primary it hears, and lacks at most READY_MAX_LAG of its entries; a primary: as many voting
    copies as its write quorum needs (itself included) answer. Dynamo mode: a majority of the
    members (itself included) is reachable. A removed node or one restoring a snapshot is not ready."""
    if st["role"] == "removed":
        return False, "removed from the cluster"
    if st.get("restoring"):
        return False, "installing a snapshot"
    peers = st.get("peers", [])
    if st["mode"] == "dynamo":
        members = len(st.get("members") or ()) or 1
        reached = 1 + sum(1 for row in peers if row["alive"])
        if reached < members // 2 + 1:
            return False, f"reaches {reached} of {members} members (itself included), fewer than a majority"
        return True, ""
    if st["role"] == "primary":
        voters = [row for row in peers if row["role"] == "secondary"]
        holding = int(st.get("voter", True)) + sum(1 for row in voters if row["alive"] and row.get("voter", True))
        quorum = st.get("write_quorum") or (len(voters) + 1) // 2 + 1
        if peers and holding < quorum:
            return False, (f"a primary that hears {holding} voting copies (itself included), fewer than the "
                           f"write quorum of {quorum}: writes cannot commit")
        return True, ""
    if not st["primary_id"] or not peers or not peers[0]["alive"]:
        return False, "no primary heard within election_interval"
    lag = peers[0]["last_seq"] - st["last_seq"]
    if lag > READY_MAX_LAG:
        return False, f"{lag} entries behind the primary (more than {READY_MAX_LAG})"
    return True, ""
