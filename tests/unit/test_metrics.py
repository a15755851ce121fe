"""metrics.py without sockets: the loop's counters, histogram buckets, the families a sample makes
(parsed back with prometheus-client), and the readiness rule of each mode."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from zmqstore import errors, metrics, protocol
from zmqstore.health import _Collector
from zmqstore.watch import Watches


def test_requests_are_counted_by_command_and_outcome_with_their_latency():
    rec = metrics.Recorder()
    rec.request("PUT", protocol.encode_ok(1, None), 10.0, 10.0004)
    rec.request("PUT", protocol.encode_ok(2, None), 10.0, 10.003)
    rec.request("PUT", protocol.encode_exception(3, errors.NotPrimary("go to node 2")), 10.0, 10.00001)
    rec.commit(True, 0.002)
    copy = rec.copy()
    rec.request("GET", protocol.encode_ok(4, 1), 0.0, 0.1)      # after the copy: not in it
    assert copy.requests == {("PUT", "ok"): 2, ("PUT", "not_primary"): 1}
    buckets = dict(copy.latency["PUT"].buckets())
    assert buckets["0.0001"] == 1 and buckets["0.0005"] == 2 and buckets["0.005"] == 3 and buckets["+Inf"] == 3
    assert abs(copy.latency["PUT"].total - 0.00341) < 1e-9
    assert copy.commits[True].buckets()[-1] == ("+Inf", 1) and copy.commits[False].buckets()[-1] == ("+Inf", 0)


def _status(**over):
    st = {"node_id": 1, "mode": "leader", "version": "0.1.0", "uptime": 1.0, "role": "secondary", "term": 3,
          "primary_id": 2, "last_seq": 10, "commit_seq": 10, "applied_seq": 10, "first_seq": 1, "keys_estimate": 5,
          "restoring": False, "peers": [{"node_id": 2, "role": "primary", "alive": True, "last_seq": 12,
                                         "commit_seq": 12}], "primary_changes": 2,
          "watches": dict(Watches(None, lambda frames: None, 60.0).status(), open=2)}   # as a node reports them
    st.update(over)
    return st


def _sample(st, recorder=None):
    ready, why = metrics.readiness(st)
    return metrics.Sample(recorder or metrics.Recorder(), st, 1, 3, 4, ready, why, {})


def test_a_sample_becomes_prometheus_text_that_parses_back(tmp_path):
    (tmp_path / "file").write_bytes(b"x" * 1000)
    rec = metrics.Recorder()
    rec.request("GET", protocol.encode_ok(1, 1), 0.0, 0.001)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(_sample(_status(), rec), str(tmp_path)))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert samples[("zmqstore_requests_total", (("command", "GET"), ("outcome", "ok")))] == 1
    assert samples[("zmqstore_storage_size_bytes", ())] == 1000
    assert samples[("zmqstore_replication_lag_entries", (("peer", "2"),))] == 2
    assert samples[("zmqstore_leader_role", (("role", "secondary"),))] == 1
    assert samples[("zmqstore_leader_role", (("role", "primary"),))] == 0
    assert samples[("zmqstore_leader_primary_changes_total", ())] == 2
    assert samples[("zmqstore_writes_waiting_quorum", ())] == 1 and samples[("zmqstore_sessions", ())] == 4
    assert samples[("zmqstore_watch_watches", ())] == 2 and samples[("zmqstore_node_ready", ())] == 1


def test_readiness_in_leader_mode():
    assert metrics.readiness(_status()) == (True, "")
    far = _status(peers=[{"node_id": 2, "role": "primary", "alive": True, "last_seq": 5000}])
    assert metrics.readiness(far)[1].startswith("4990 entries behind")
    assert not metrics.readiness(_status(peers=[{"node_id": 2, "alive": False, "last_seq": 10}]))[0]
    assert not metrics.readiness(_status(primary_id=0, peers=[]))[0]
    assert metrics.readiness(_status(role="removed"))[1] == "removed from the cluster"
    assert not metrics.readiness(_status(restoring=True))[0]
    lone = _status(role="primary", primary_id=1, peers=[])
    assert metrics.readiness(lone)[0]
    two_of_three = [{"node_id": 2, "role": "secondary", "alive": True, "last_seq": 10},
                    {"node_id": 3, "role": "secondary", "alive": False, "last_seq": 3}]
    assert metrics.readiness(_status(role="primary", primary_id=1, peers=two_of_three))[0]
    cut_off = [dict(row, alive=False) for row in two_of_three]
    assert "fewer than the write quorum of 2" in metrics.readiness(
        _status(role="primary", primary_id=1, peers=cut_off, write_quorum=2))[1]
    # write_quorum = 3 needs every copy; a peer whose copy does not vote (restoring) does not count
    assert not metrics.readiness(_status(role="primary", primary_id=1, peers=two_of_three, write_quorum=3))[0]
    restoring = [dict(row, alive=True, voter=i == 0) for i, row in enumerate(two_of_three)]
    assert not metrics.readiness(_status(role="primary", primary_id=1, peers=restoring, write_quorum=3))[0]
    assert metrics.readiness(_status(role="primary", primary_id=1, peers=[dict(r, alive=True) for r in two_of_three],
                                     write_quorum=3))[0]


def test_readiness_in_dynamo_mode():
    def st(alive):
        return {"mode": "dynamo", "role": "peer", "members": [{}, {}, {}],
                "peers": [{"node_id": 2, "alive": alive[0]}, {"node_id": 3, "alive": alive[1]}]}
    assert metrics.readiness(st((True, False)))[0]
    assert metrics.readiness(st((False, False)))[1].startswith("reaches 1 of 3 members")
    assert metrics.readiness({"mode": "dynamo", "role": "peer", "members": [], "peers": []})[0]
