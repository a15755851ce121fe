"""The dynamo-mode checker (testing/convergence.py) on small known histories."""
from zmqstore.testing.convergence import WriteOp, check

A, B = 1 << 32, 2 << 32


def w(value, ctx, dot, outcome="ok", kind="put", key="k", process=0, seen=None):
    """A recorded write; by default its read returned as siblings exactly the dots its context names."""
    if seen is None:
        seen = tuple((o, q, None) for o, q in ctx.items())
    return WriteOp(process, kind, key, value, ctx, 0.0, 1.0, outcome, dot, seen)


def final(*siblings, ctx=None):
    return {"k": (sorted(siblings), ctx or {})}


def test_siblings_and_superseded_writes_pass():
    history = [w(1, {}, (A, 1)), w(2, {}, (B, 1)), w(3, {A: 1}, (A, 2))]
    state = final((2, B, 1, False), (3, A, 2, False), ctx={A: 2, B: 1})
    assert check(history, {1: state, 2: state}).ok


def test_a_lost_write_is_reported():
    history = [w(1, {}, (A, 1)), w(2, {}, (B, 1))]          # concurrent; only one survives
    state = final((2, B, 1, False), ctx={A: 1, B: 1})
    verdict = check(history, {1: state, 2: state})
    assert not verdict.ok and [op.value for op in verdict.lost] == [1] and "LOST" in verdict.report()


def test_a_write_of_unknown_outcome_may_supersede_but_a_failed_one_may_not():
    history = [w(1, {}, (A, 1)), w(2, {A: 1}, None, outcome="info")]
    state = final((2, B, 1, False), ctx={A: 1, B: 1})
    assert check(history, {1: state}).ok
    # ... but only if it was applied: its value is there (or some read returned it)
    assert not check(history, {1: final(ctx={})}).ok
    read_later = history + [w(3, {B: 1}, (B, 2), seen=((B, 1, 2),))]
    assert check(read_later, {1: final((3, B, 2, False), ctx={A: 1, B: 2})}).ok
    failed = [w(1, {}, (A, 1)), w(2, {A: 1}, None, outcome="fail")]
    assert not check(failed, {1: state}).ok        # (and 2 is a phantom: a failed write was applied)


def test_differing_nodes_phantoms_and_mismatched_dots_are_reported():
    history = [w(1, {}, (A, 1))]
    assert not check(history, {1: final((1, A, 1, False)), 2: final()}).identical
    phantom = check(history, {1: final((1, A, 1, False), (9, B, 1, False))})
    assert phantom.phantoms == [("k", 9)] and not phantom.ok
    moved = check(history, {1: final((1, B, 4, False))})
    assert moved.mismatched and not moved.ok


def test_a_collected_tombstone_is_fine_unless_what_it_deleted_comes_back():
    history = [w(1, {}, (A, 1)), w(None, {A: 1}, (A, 2), kind="delete"), w(3, {}, (B, 1))]
    collected = final((3, B, 1, False), ctx={B: 1})
    assert check(history, {1: collected}).ok
    resurrected = final((1, A, 1, False), (3, B, 1, False), ctx={A: 1, B: 1})
    verdict = check(history, {1: resurrected})
    assert not verdict.ok and [op.kind for op in verdict.lost] == ["delete"]


def test_a_superseded_version_that_comes_back_is_reported():
    history = [w(1, {}, (A, 1)), w(2, {A: 1}, (A, 2))]
    back = final((1, A, 1, False), (2, A, 2, False), ctx={A: 2})
    verdict = check(history, {1: back})
    assert not verdict.ok and [op.value for op in verdict.lost] == [2]


def test_a_version_dropped_silently_is_lost_even_if_later_contexts_cover_it():
    """A store that drops a concurrent version still joins its dot into the key's context; a later
    write's context then covers it although nobody ever read it: that is no excuse."""
    history = [w(1, {}, (A, 1)), w(2, {}, (B, 1)),
               w(3, {A: 1, B: 1}, (A, 2), seen=((B, 1, 2),))]      # read only 2: 1 had been dropped
    state = final((3, A, 2, False), ctx={A: 2, B: 1})
    verdict = check(history, {1: state})
    assert not verdict.ok and [op.value for op in verdict.lost] == [1]
