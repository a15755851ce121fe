"""A short fault campaign (zmqstore/testing/chaos.py): clients record put/get/cas while the primary
and other nodes are killed and paused; the history must be linearizable. `make chaos` runs long ones."""
import pytest

from zmqstore.testing.chaos import campaign
from zmqstore.testing.linearizability import check, read_history


def test_short_campaign_is_linearizable(tmp_path):
    summary = campaign(str(tmp_path), seconds=15, seed=20261126, clients=2)
    assert summary["faults"] >= 5 and summary["operations"] > 1000
    assert summary["linearizable"], summary.get("report")
    assert summary["passed"], summary.get("not_converged") or summary.get("broken_workers") or summary.get("watch")
    # The checker would notice if the store served an old value: make one read stale and see.
    history = [op for p in sorted(tmp_path.glob("history-*.jsonl")) for op in read_history(p)]
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.result is not None]
    puts = [o for o in history if o.kind == "put" and o.outcome == "ok"]
    for i in reversed(reads):
        op = history[i]
        # a put overwritten by another put that ended before this read began: reading it is stale
        stale = [old for old in puts if old.key == op.key and any(
            new.key == op.key and old.complete < new.invoke and new.complete < op.invoke for new in puts)]
        if stale:
            history[i] = op._replace(result=stale[0].value)
            break
    else:
        raise AssertionError("no read to make stale")
    assert not check(history).ok


@pytest.mark.timeout(300)      # the checker's search on a history that is not linearizable can be long:
def test_checker_catches_a_broken_build(tmp_path):   # once (2026-12-01) it took over 90 s after the campaign
    """A deliberately broken build (primaries acknowledge writes alone and never step down) loses
    acknowledged writes when the primary is cut off: the checker must report it."""
    from zmqstore.testing import partition
    if not partition.available():
        pytest.skip("needs iptables and root to cut the primary off (.ci/run installs iptables)")
    # 25 s: about a dozen isolations. Whether one of them lasts past an election on the majority
    # side and a client then sees the loss depends on timing; with 15 s, one run in about ten missed.
    summary = campaign(str(tmp_path), seconds=25, seed=5, clients=3, faults=["isolate-primary"],
                       broken="early-acks")
    assert summary["faults"] >= 3
    assert not summary["linearizable"] and "NOT linearizable" in summary["report"]


def test_short_dynamo_campaign_loses_nothing_and_converges(tmp_path):
    """Dynamo mode: writes and deletes with contexts on every node while nodes are killed, paused
    and (with iptables) cut off; afterwards every node holds the same data and every acknowledged
    write is a sibling or was superseded by a write that saw it."""
    summary = campaign(str(tmp_path), seconds=15, seed=20261127, clients=3, mode="dynamo")
    assert summary["faults"] >= 5 and summary["acknowledged"] > 1000
    assert summary["passed"], summary.get("report") or summary.get("not_converged") or summary.get("watch")
    # The watcher on one node got every acknowledged write, from every origin, once (issue 14).
    assert summary["watch"]["ok"] and summary["watch"]["events"] >= summary["acknowledged"]


def test_partitioned_dynamo_campaign_loses_nothing(tmp_path):
    """Issue 16: five nodes keeping each key on three (replicas = 3): requests forwarded to owners,
    hints for owners that are down, while nodes are killed, paused and cut off; every acknowledged
    write is on its key's owners afterwards, identical on each of them. (No watcher: a partitioned
    cluster serves no watch.) A broken build that keeps only the latest of concurrent writes fails
    the same check."""
    summary = campaign(str(tmp_path / "ok"), seconds=15, seed=20261202, clients=3, mode="dynamo", nodes=5,
                       replicas=3)
    assert summary["faults"] >= 5 and summary["acknowledged"] > 1000
    assert summary["passed"], summary.get("report") or summary.get("not_converged")
    from zmqstore.testing import partition
    if partition.available():
        broken = campaign(str(tmp_path / "broken"), seconds=10, seed=6, clients=3, mode="dynamo", nodes=5,
                          replicas=3, faults=["split", "isolate-random"], broken="dynamo-lww")
        assert broken["lost"] > 0 and "LOST" in broken["report"]


def test_checker_catches_a_broken_dynamo_build(tmp_path):
    """A deliberately broken build keeps only the latest of concurrent writes: when both sides of a
    partition write the same keys, acknowledged writes vanish, and the checker must say so."""
    from zmqstore.testing import partition
    if not partition.available():
        pytest.skip("needs iptables and root to partition the cluster (.ci/run installs iptables)")
    summary = campaign(str(tmp_path), seconds=10, seed=6, clients=3, mode="dynamo",
                       faults=["split", "isolate-random"], broken="dynamo-lww")
    assert summary["faults"] >= 3 and not summary["passed"]
    assert summary["lost"] > 0 and "LOST" in summary["report"]


def test_membership_changes_under_faults_are_linearizable(tmp_path):
    """Issue 13: nodes removed (the primary among them) and brought back with --join while clients
    run and the primary is killed; the history must still be linearizable and the nodes converge."""
    summary = campaign(str(tmp_path), seconds=15, seed=20261201, clients=2, keys=False,
                       faults=["remove-primary", "remove-random", "kill-primary"])   # --join in it: no keys
    kinds = {kind for _t, kind, _node in summary["fault_log"]}
    assert summary["faults"] >= 5 and kinds & {"remove-primary", "remove-random"}
    assert summary["operations"] > 1000
    assert summary["linearizable"], summary.get("report")
    assert summary["passed"], summary.get("not_converged") or summary.get("broken_workers")


# The campaign's own bounds: its watcher may take 120 s (CATCH_UP) to become current once the clients
# are done, and a worker that hangs is killed after seconds + 180 s, then reported. pytest's 120 s cut
# it short twice in full runs (2026-12-01, 2026-12-02), in proc.join, leaving no report to read. With
# the campaign's report (its node processes and their logs' ends), the third failure showed the cause:
# a node killed moments after it started from a new data dir left db/ without the marker, and was
# refused as foreign on every restart after (fixed in storage.py: zmqstore.creating).
@pytest.mark.timeout(300)
def test_dynamo_membership_changes_under_faults_lose_nothing(tmp_path):
    """Issue 13, dynamo mode: nodes removed through another node and brought back with --join from
    an empty data dir while clients write everywhere and nodes are killed; no acknowledged write may
    be lost, and the members converge."""
    summary = campaign(str(tmp_path), seconds=15, seed=20261202, clients=3, mode="dynamo", keys=False,
                       faults=["remove-random", "kill-random"])
    kinds = [kind for _t, kind, _node in summary["fault_log"]]
    assert summary["faults"] >= 5 and "remove-random" in kinds
    assert summary["passed"], {k: summary[k] for k in ("report", "not_converged", "broken_workers", "watch", "processes",
                                                       "fault_log") if k in summary}
    assert summary["acknowledged"] > 1000
    assert summary["watch"]["ok"] and summary["watch"]["events"] >= summary["acknowledged"]
