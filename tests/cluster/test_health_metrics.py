"""Metrics and health over HTTP (issue 15, docs/OPERATIONS.md): /metrics scraped from running nodes
of both modes, parsed with prometheus-client's parser and checked against what the test did;
/healthz and /readyz; the metrics port under hostile input."""
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zmqstore import Retry, errors
from zmqstore.testing import partition
from zmqstore.testing.process import wait_until

FAILOVER_RETRY = Retry(max_tries=60, delay=0.05, max_delay=0.3, deadline=20)


def scrape(node):
    """{(sample name, frozenset of label items): value} from the node's /metrics."""
    status, text = node.http_get("/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_leader_metrics_count_what_the_clients_did_and_a_failover_moves_primary_changes(cluster):
    c = cluster(metrics=True)
    primary = c.nodes[1]
    before = scrape(primary)
    with c.client() as db:
        for i in range(40):
            db.put(f"k{i}", i)
        assert db.get("k3") == 3
        with pytest.raises(errors.BadArgument):
            db.put_many([])         # refused: an empty batch
    samples = scrape(primary)
    put_ok = value(samples, "zmqstore_requests_total", command="PUT", outcome="ok")
    assert put_ok - (value(before, "zmqstore_requests_total", command="PUT", outcome="ok") or 0) == 40
    assert value(samples, "zmqstore_request_duration_seconds_count", command="PUT") == put_ok
    assert value(samples, "zmqstore_request_duration_seconds_bucket", command="PUT", le="+Inf") == put_ok
    # refused while decoding (docs/PROTOCOL.md checks): counted as INVALID
    assert value(samples, "zmqstore_requests_total", command="INVALID", outcome="bad_argument") == 1
    st = primary.status()
    assert value(samples, "zmqstore_log_commit_seq") <= st["commit_seq"]
    assert value(samples, "zmqstore_log_commit_seq") >= 40
    assert value(samples, "zmqstore_leader_role", role="primary") == 1
    assert value(samples, "zmqstore_leader_has_primary") == 1 and value(samples, "zmqstore_node_ready") == 1
    # Every entry goes to both secondaries and each acknowledges it (the second one may still be
    # on its way: the quorum needs only one): no lag, and round trips measured.
    wait_until(lambda: all(value(scrape(primary), "zmqstore_replication_lag_entries", peer=p) == 0 for p in "23"),
               10, message="no lag")
    samples = scrape(primary)
    for peer in ("2", "3"):
        assert value(samples, "zmqstore_peer_up", peer=peer) == 1
        assert value(samples, "zmqstore_replication_lag_seconds", peer=peer) == 0
        assert value(samples, "zmqstore_replication_round_trip_seconds_count", peer=peer) >= 1
    assert value(samples, "zmqstore_storage_commit_duration_seconds_count", synced="true") >= 40
    assert value(samples, "zmqstore_storage_size_bytes") > 0
    assert not any("k3" in str(key) for key in samples)      # no key or value in any label

    secondary = scrape(c.nodes[2])
    changes = value(secondary, "zmqstore_leader_primary_changes_total")
    assert value(secondary, "zmqstore_leader_role", role="secondary") == 1 and changes >= 1
    primary.kill()
    assert c.wait_primary(10, among=(2, 3)) == 2
    with c.client(retry=FAILOVER_RETRY) as db:
        db.put("after", 1)
    for node_id in (2, 3):
        samples = scrape(c.nodes[node_id])
        assert value(samples, "zmqstore_leader_primary_changes_total") == changes + 1, node_id
    assert c.nodes[2].http_get("/readyz")[0] == 200 and c.nodes[2].http_get("/healthz") == (200, "ok\n")


def test_readyz_fails_on_a_node_cut_off_from_the_primary_and_recovers(cluster):
    if not partition.available():
        pytest.skip("needs iptables and root to cut links (.ci/run installs iptables)")
    c = cluster(metrics=True)
    node3 = c.nodes[3]
    wait_until(lambda: node3.http_get("/readyz")[0] == 200, 10, message="node 3 ready")
    cut = partition.Partitioner({i: n.host for i, n in c.nodes.items()})
    try:
        cut.isolate(3)
        wait_until(lambda: node3.http_get("/readyz")[0] == 503, 10, message="node 3 not ready")
        status, text = node3.http_get("/readyz")
        assert "not ready" in text
        assert node3.http_get("/healthz") == (200, "ok\n")        # its loop runs: alive, not ready
        assert c.nodes[1].http_get("/readyz")[0] == 200            # the primary keeps a majority
        cut.heal()
        wait_until(lambda: node3.http_get("/readyz")[0] == 200, 15, message="node 3 ready again")
    finally:
        cut.close()


def test_dynamo_metrics_show_siblings_tombstones_and_requests(cluster):
    c = cluster(mode="dynamo", metrics=True)
    one, two = (c.nodes[i].client(retry=Retry(max_tries=3)) for i in (1, 2))
    try:
        empty = one.get_versions("k").context
        one.put("k", 1, context=empty)
        two.put("k", 2, context=empty)  # neither saw the other: concurrent, two siblings
        one.put("gone", 1)
        one.delete("gone")
        wait_until(c.dynamo_converged, 15, message="convergence")
    finally:
        one.close()
        two.close()
    def round_trips_measured(node, node_id):
        """Status queries answered: each peer's round trips counted (a node's first queries may go
        before its connections are up, and are given up after election_interval)."""
        samples = scrape(node)
        return all(value(samples, "zmqstore_peer_round_trip_seconds_count", peer=str(p)) for p in c.nodes
                   if p != node_id)

    for node_id, node in c.nodes.items():
        wait_until(lambda: round_trips_measured(node, node_id), 10, interval=0.1, message="round trips measured")
        samples = scrape(node)
        assert value(samples, "zmqstore_dynamo_conflicts") == 1, node_id
        assert value(samples, "zmqstore_dynamo_tombstones") == 1, node_id
        assert value(samples, "zmqstore_node_info", node_id=str(node_id), mode="dynamo", version=node.status()[
            "version"]) == 1
        assert value(samples, "zmqstore_dynamo_converged") == 1
        assert all(value(samples, "zmqstore_peer_up", peer=str(p)) == 1 for p in c.nodes if p != node_id)
        for peer in (p for p in c.nodes if p != node_id):
            assert 0 < value(samples, "zmqstore_peer_round_trip_seconds_sum", peer=str(peer)) < \
                value(samples, "zmqstore_peer_round_trip_seconds_count", peer=str(peer))
    samples = scrape(c.nodes[1])
    assert value(samples, "zmqstore_requests_total", command="PUT_CTX", outcome="ok") == 1
    assert value(samples, "zmqstore_requests_total", command="PUT", outcome="ok") == 1
    assert value(samples, "zmqstore_requests_total", command="DEL", outcome="ok") == 1
    assert c.nodes[1].http_get("/readyz") == (200, "ready\n")


def test_the_metrics_port_refuses_what_it_does_not_serve_and_slow_clients_stall_nothing(node_factory):
    node = node_factory()
    assert node.http_get("/")[0] == 404 and node.http_get("/metrics?x")[0] == 200
    for path, status in (("/healthz", b"200"), ("/nothing", b"404"), ("/metrics", b"200")):
        with socket.create_connection((node.host, node.metrics_port), timeout=5) as head:
            head.sendall(b"HEAD %s HTTP/1.0\r\n\r\n" % path.encode())
            answer = b"".join(iter(lambda: head.recv(65536), b""))
        assert answer.split(b" ")[1] == status and answer.endswith(b"\r\n\r\n"), answer     # headers, no body
        assert int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
    assert node.http_get("/" + "a" * 70_000)[0] in (None, 400, 404, 414)      # too long a request line
    garbage = socket.create_connection((node.host, node.metrics_port), timeout=5)
    garbage.sendall(b"\x00\xff" * 5000 + b"\r\n\r\n")
    garbage.close()
    # Connections that send nothing, or trickle a request, hold a thread each, not the port.
    slow = [socket.create_connection((node.host, node.metrics_port), timeout=5) for _ in range(3)]
    try:
        slow[0].sendall(b"GET /hea")
        started = time.monotonic()
        assert node.http_get("/healthz", timeout=3.0) == (200, "ok\n")
        assert time.monotonic() - started < 2.5
        with node.client(timeout=2.0, retry=Retry(max_tries=1)) as db:
            db.put("k", 1)          # the client port does not wait for the metrics threads
            assert db.get("k") == 1
        samples = scrape(node)
        assert value(samples, "zmqstore_requests_total", command="PUT", outcome="ok") == 1
        # Stopping the node does not wait for them: it exits cleanly, in well under the stop timeout.
        started = time.monotonic()
        assert node.stop(timeout=8.0) == 0 and time.monotonic() - started < 5.0
    finally:
        for sock in slow:
            sock.close()
    assert "Traceback" not in node.log()


@pytest.fixture
def node_factory(nodes):
    """A standalone node with a metrics port."""
    from zmqstore.testing.process import free_ports

    def make():
        port = free_ports("127.0.0.1", 1)[0]
        n = nodes(args=["--metrics-port", str(port)])
        n.metrics_port = port
        return n
    return make


def test_json_logs_are_one_object_per_line_with_node_role_and_term(cluster):
    """--log-format json for log shippers: every line the nodes write parses, and names its node,
    role and term; the election shows at INFO."""
    import json
    c = cluster(args=["--log-format", "json"])
    c.wait_primary(10)
    with c.client() as db:
        db.put("k", 1)
    c.nodes[2].stop()
    lines = c.nodes[2].log().splitlines() + c.nodes[1].log().splitlines()
    records = [json.loads(line) for line in lines]          # every line is one JSON object
    assert records and all({"time", "level", "node_id", "role", "term", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    won = [r for r in records if "won the election" in r["message"]]
    assert won and won[0]["level"] == "INFO" and won[0]["node_id"] == 1 and won[0]["term"] >= 1
    assert any(r["node_id"] == 2 and r["role"] == "secondary" for r in records)


def test_status_watch_redraws_the_table_with_lag_seconds_and_shows_an_unreachable_node(cluster, tmp_path):
    """`datastore-cli status --watch` (issue 15): without a terminal it prints a new table every
    interval; each has the primary's view of every peer (lag in seconds, seconds since heard), and a
    node that stopped shows as unreachable while the others are still shown."""
    import subprocess
    import sys

    from zmqstore.testing.process import interrupt
    c = cluster()
    c.wait_primary(10)
    c.nodes[3].stop()
    out_path = tmp_path / "status.out"
    with open(out_path, "w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "zmqstore.cli_main", *c.cli_args(), "--timeout", "0.3",
                                 "status", "--watch", "--interval", "0.3"], stdout=out_file, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
    try:
        def tables():
            return [t for t in out_path.read_text().split("\n\n") if t.strip()]
        wait_until(lambda: len(tables()) >= 3 or proc.poll() is not None, 30, message="three tables")
    finally:
        _, err = interrupt(proc)
    assert proc.returncode == 0, err
    assert len(tables()) >= 3, out_path.read_text()
    header, *rows = tables()[-1].splitlines()
    assert header.split()[-2:] == ["lag_s", "heard_s"]
    by_node = {row.split()[0]: row for row in rows if row[:1].isdigit() or row.startswith("-")}
    assert "primary" in by_node["1"] and "secondary" in by_node["2"]
    assert any("unreachable" in row for row in rows), rows
