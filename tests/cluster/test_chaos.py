"""A short fault campaign (zmqstore/testing/chaos.py): clients record put/get/cas while the primary
and other nodes are killed and paused; the history must be linearizable. `make chaos` runs long ones."""
from zmqstore.testing.chaos import campaign
from zmqstore.testing.linearizability import check, read_history


def test_short_campaign_is_linearizable(tmp_path):
    summary = campaign(str(tmp_path), seconds=15, seed=20261126, clients=2)
    assert summary["faults"] >= 5 and summary["operations"] > 1000
    assert summary["linearizable"], summary.get("report")
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
