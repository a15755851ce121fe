"""Figures for the trust boundary (issue 11): what each kind of abuse costs a well-behaved client, and
what CurveZMQ keys cost. Part of bench/run.py (`--only security`); docs/BENCHMARKS.md has the table.

For each abusive client of the issue's table, a well-behaved client does sequential PUTs against a
3-node leader cluster while the abuse runs: its p50/p99 beside the quiet figures of the same run, the
primary's peak RSS, and the elections caused. Keys: sequential and pipelined puts on two 3-node
clusters, one with keys, measured in alternating rounds.
"""
import os
import socket
import statistics
import tempfile
import threading
import time

from zmqstore import ZmqstoreError, protocol
from zmqstore.client import Retry
from zmqstore.testing import abuse
from zmqstore.testing.process import Cluster

PIPELINE_DEPTH = 64


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class _Peak(threading.Thread):
    """Samples a process's RSS every 50 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self):
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, abuse.rss_mb(self.pid))
            except (OSError, RuntimeError):
                return
            self._done.wait(0.05)

    def stop(self):
        self._done.set()
        self.join(5)
        return self.peak


def _well_behaved(cluster, seconds, prefix):
    """Sequential PUTs for `seconds`: latencies (s) and failures."""
    lat, failed = [], 0
    with cluster.client(timeout=2.0, retry=Retry(max_tries=1)) as db:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                db.put(f"{prefix}-{i}", i)
                lat.append(time.perf_counter() - t)
            except ZmqstoreError:
                failed += 1
            i += 1
    return lat, failed


def _terms(cluster):
    return sorted((n.status() or {}).get("term", -1) for n in cluster.nodes.values())


# ---------------------------------------------------------------- the abuses: each starts, returns a stop()

def _ping_flood(c, seconds, d):
    p = c.nodes[1]
    proc = abuse.ping_flood(p.host, p.port, seconds + 2, os.path.join(d, "flood"))

    def stop():
        proc.kill()
        proc.wait(10)
    return stop


def _looping(target, *strangers):
    """Run target(stop_event) in a thread; the returned stop() ends it and closes `strangers`."""
    stop_event = threading.Event()
    thread = threading.Thread(target=target, args=(stop_event,), daemon=True)
    thread.start()

    def stop():
        stop_event.set()
        thread.join(10)
        for stranger in strangers:
            stranger.close()
    return stop


def _bombs(c, seconds, d):
    # the client port from the stranger; the peer port from a member's host, which the handshake admits,
    # so the bombs reach the decoder there too
    s = abuse.Stranger()
    member = abuse.Stranger(source=c.nodes[2].host)
    socks = [s.dealer(c.nodes[1].host, c.nodes[1].port), member.dealer(c.nodes[1].host, c.nodes[1].peer_port)]
    bomb = abuse.nested_bomb()

    def run(stop_event):
        while not stop_event.is_set():
            for _ in range(50):
                for sock in socks:
                    abuse.send(sock, bomb)
            abuse.received(socks[0], 0.05)      # read the malformed replies, so they do not pile up
    return _looping(run, s, member)


def _unread_gets(c, seconds, d):
    import zmq
    with c.client(timeout=5.0) as db:
        db.put("bench-big", os.urandom(1_000_000))
    s = abuse.Stranger()
    sock = s.dealer(c.nodes[1].host, c.nodes[1].port)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 1 << 16)
    for i in range(1, 1501):
        abuse.send(sock, protocol.encode_request("GET", abuse.CID, i, 1, b"bench-big", True))
    return s.close


def _subscriptions(c, seconds, d):
    p = c.nodes[1]
    procs = [abuse.subscription_bomb(p.host, p.pub_port, src) for src in (abuse.STRANGER, c.nodes[2].host)]

    def stop():
        for proc in procs:
            proc.kill()
            proc.wait(10)
    return stop


def _term_storm(c, seconds, d):
    # from the stranger to every port, and from node 3's host (admitted at the handshake) naming node 2,
    # so the forged messages reach the per-message check too
    s = abuse.Stranger()
    member = abuse.Stranger(source=c.nodes[3].host)
    socks = [s.dealer(n.host, port) for n in c.nodes.values() for port in (n.port, n.peer_port)]
    socks += [member.dealer(n.host, n.peer_port) for n in c.nodes.values()]

    def run(stop_event):
        term = 1000
        while not stop_event.is_set():
            term += 1
            for sock in socks:
                abuse.send(sock, protocol.encode_peer("ACK", 2, term, 10**6, 10**6, True))
                abuse.send(sock, abuse.forged_role(term, node_id=3))
                abuse.send(sock, protocol.encode_peer("VOTE_REQUEST", term, 2, 10**6, term))
            stop_event.wait(0.2)
    return _looping(run, s, member)


def _idle_connections(c, seconds, d):
    s = abuse.Stranger()
    p = c.nodes[1]
    for _ in range(250):                        # ZeroMQ connections that send nothing after the handshake
        s.dealer(p.host, p.port)
    raw = []
    for _ in range(2000):                       # TCP connections that never send a byte
        try:
            raw.append(socket.create_connection((p.host, p.port), source_address=(abuse.STRANGER, 0), timeout=1))
        except OSError:
            break

    def stop():
        for sock in raw:
            sock.close()
        s.close()
    return stop


ABUSES = [
    ("PING flood (~20-30k/s, one client)", _ping_flood),
    ("decoding bombs (3 KB declaring 10M items, nonstop)", _bombs),
    ("1,500 unread GETs of a 1 MiB value", _unread_gets),
    ("8 MiB subscriptions to the PUB (stranger and member host)", _subscriptions),
    ("forged term bumps every 200 ms, every node and port", _term_storm),
    ("up to 2,000 silent TCP + 250 idle ZeroMQ connections", _idle_connections),
]


def abuse_figures(seconds):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(os.path.join(d, "c"), size=3, args=["--log-level", "WARNING"], new_session=False, keys=False)
        try:
            c.start_all()
            pid = c.nodes[1].proc.pid
            rows = []
            for name, start in [("quiet", None), *ABUSES, ("quiet again", None)]:
                terms = _terms(c)
                peak = _Peak(pid)
                peak.start()
                stop = start(c, seconds, d) if start else None
                try:
                    lat, failed = _well_behaved(c, seconds, name.split()[0])
                finally:
                    if stop:
                        stop()
                rows.append({"abuse": name, "p50_ms": _percentile(lat, 0.5) * 1000,
                             "p99_ms": _percentile(lat, 0.99) * 1000, "puts": len(lat), "failed": failed,
                             "peak_rss_mb": peak.stop(), "elections": max(_terms(c)) - max(terms)})
            return rows
        finally:
            c.stop_all()


# ---------------------------------------------------------------- the cost of keys

def _seq(cluster, n):
    lat = []
    with cluster.client(timeout=5.0) as db:
        for i in range(n):
            t = time.perf_counter()
            db.put(f"seq{i}", i)
            lat.append(time.perf_counter() - t)
    return n / sum(lat), _percentile(lat, 0.5) * 1e6


def _pipelined(cluster, n):
    with cluster.client(timeout=10.0) as db:
        p = db.pipeline(max_in_flight=PIPELINE_DEPTH)
        for i in range(n):
            p.put(f"pipe{i}", i)
        t = time.perf_counter()
        p.execute()
        return n / (time.perf_counter() - t)


def curve_cost(rounds, n_seq, n_pipe):
    with tempfile.TemporaryDirectory() as d:
        clusters = {keys: Cluster(os.path.join(d, f"keys-{keys}"), size=3, args=["--log-level", "WARNING"],
                                  new_session=False, keys=keys) for keys in (False, True)}
        try:
            for c in clusters.values():
                c.start_all()
            figures = {keys: {"seq": [], "seq_p50_us": [], "pipelined": []} for keys in clusters}
            for _ in range(rounds):
                for keys, c in clusters.items():        # alternated, so both see the same load
                    ops, p50 = _seq(c, n_seq)
                    figures[keys]["seq"].append(ops)
                    figures[keys]["seq_p50_us"].append(p50)
                    figures[keys]["pipelined"].append(_pipelined(c, n_pipe))
            return {("with_keys" if keys else "without_keys"): {k: statistics.median(v) for k, v in f.items()}
                    for keys, f in figures.items()}
        finally:
            for c in clusters.values():
                c.stop_all()


def security(results, quick):
    results["curve"] = curve_cost(1 if quick else 3, 100 if quick else 1000, 500 if quick else 20_000)
    results["abuse"] = abuse_figures(1.0 if quick else 5.0)


def report_rows(r):
    rows = []
    if "curve" in r:
        off, on = r["curve"]["without_keys"], r["curve"]["with_keys"]
        rows += [
            ("keys: sequential put ops/s, 3-node leader, with / without",
             f"{on['seq']:,.0f}", f"/ {off['seq']:,.0f} = {on['seq'] / off['seq']:.0%}; p50 {on['seq_p50_us']:.0f} us "
             f"/ {off['seq_p50_us']:.0f} us (target: at most 15% slower)"),
            (f"keys: pipelined put ops/s ({PIPELINE_DEPTH} in flight), with / without", f"{on['pipelined']:,.0f}",
             f"/ {off['pipelined']:,.0f} = {on['pipelined'] / off['pipelined']:.0%}"),
        ]
    for row in r.get("abuse", []):
        rows.append((f"abuse: {row['abuse']}", f"{row['p50_ms']:.1f} ms",
                     f"p50; p99 {row['p99_ms']:.1f} ms, {row['puts']} puts, {row['failed']} failed, primary peak "
                     f"RSS {row['peak_rss_mb']:.0f} MB, elections {row['elections']}"))
    return rows
