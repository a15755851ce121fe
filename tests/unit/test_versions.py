"""Dynamo-mode versions (versions.py): siblings, contexts, idempotence, merge, winners, and
convergence of replicas that receive the same writes in different orders."""
import random

from zmqstore.versions import (EMPTY, HybridClock, KeyState, Sibling, apply_write, covers, is_tombstone_only,
                               merge, stable, winner)

A, B, C = 1 << 32, 2 << 32, 3 << 32      # origins of nodes 1, 2, 3


def write(state, origin, seq, value, hlc=None, ctx=None):
    """A write made at `origin` on top of `state` (plain put: the state's own context)."""
    sib = Sibling(origin, seq, hlc if hlc is not None else seq, value)
    ctx = state.ctx if ctx is None else ctx
    return apply_write(state, sib, ctx), ctx


def test_a_write_supersedes_what_its_node_has_seen():
    s1, _ = write(EMPTY, A, 1, b"v1")
    s2, _ = write(s1, A, 2, b"v2")
    assert [s.value for s in s2.siblings] == [b"v2"] and s2.ctx == {A: 2}


def test_concurrent_writes_become_siblings_and_a_context_put_resolves_them():
    a, ctx_a = write(EMPTY, A, 1, b"a")
    b, ctx_b = write(EMPTY, B, 1, b"b")
    # each replica receives the other's write
    at_a = apply_write(a, Sibling(B, 1, 1, b"b"), ctx_b)
    at_b = apply_write(b, Sibling(A, 1, 1, b"a"), ctx_a)
    assert at_a == at_b and len(at_a.siblings) == 2
    # a client read both and writes at C with that context: one value left
    resolved, ctx = write(at_a, C, 1, b"merged", ctx=dict(at_a.ctx))
    assert [s.value for s in resolved.siblings] == [b"merged"]
    # a write with an older context (it saw only "a") leaves "b" in place
    partial, _ = write(at_a, C, 1, b"over-a", ctx={A: 1})
    assert sorted(s.value for s in partial.siblings) == [b"b", b"over-a"]


def test_applying_twice_or_late_changes_nothing():
    s1, ctx1 = write(EMPTY, A, 1, b"v1")
    assert apply_write(s1, Sibling(A, 1, 1, b"v1"), ctx1) is None
    s2, _ = write(s1, B, 1, b"v2")              # B saw v1 and overwrote it
    assert apply_write(s2, Sibling(A, 1, 1, b"v1"), ctx1) is None


def test_a_delete_that_saw_an_update_wins_and_a_concurrent_one_is_a_sibling():
    base, _ = write(EMPTY, A, 1, b"v1")
    updated, up_ctx = write(base, B, 1, b"v2")
    deleted, del_ctx = write(updated, C, 1, None)         # saw v2: supersedes it
    assert is_tombstone_only(deleted)
    # a replica that gets the delete before the update: the update arrives superseded
    other = apply_write(base, Sibling(C, 1, 1, None), del_ctx)
    assert apply_write(other, Sibling(B, 1, 1, b"v2"), up_ctx) is None
    assert other == deleted
    concurrent, _ = write(base, A, 2, b"v3")              # did not see the delete
    both = apply_write(concurrent, Sibling(C, 1, 1, None), del_ctx)
    assert sorted((s.value is None) for s in both.siblings) == [False, True]


def test_winner_is_highest_timestamp_then_lowest_node():
    s = KeyState({A: 1, B: 1}, (Sibling(A, 1, 5, b"a"), Sibling(B, 1, 7, b"b")))
    assert winner(s).value == b"b"
    tie = KeyState({A: 1, B: 1}, (Sibling(A, 1, 7, b"a"), Sibling(B, 1, 7, b"b")))
    assert winner(tie).value == b"a"
    assert winner(EMPTY) is None


def test_merge_keeps_concurrent_siblings_and_drops_seen_ones():
    a, _ = write(EMPTY, A, 1, b"a")
    b, _ = write(EMPTY, B, 1, b"b")
    m = merge(a, b)
    assert m == merge(b, a) and len(m.siblings) == 2
    newer, _ = write(m, A, 2, b"a2")
    assert merge(newer, m) == newer and merge(m, newer) == newer
    # a replica whose key was garbage-collected after it applied A:1 and B:1 (applied vector) drops them
    assert merge(m, EMPTY, b_seen={A: 1, B: 1}).siblings == ()
    assert merge(m, EMPTY, b_seen={A: 1}).siblings == (Sibling(B, 1, 1, b"b"),)


def test_stable_needs_every_seen_write_applied_everywhere():
    s, _ = write(EMPTY, A, 3, None)
    assert not stable(s, {A: 2}) and stable(s, {A: 3, B: 0})
    assert covers({A: 3}, A, 2) and not covers({}, A, 1)


def test_hybrid_clock_never_goes_back_and_passes_what_it_observed():
    clock = HybridClock()
    t1 = clock.tick(1000)
    t2 = clock.tick(999)          # the wall clock stepped back
    assert t2 > t1
    clock.observe(t2 + (5000 << 16))
    assert clock.tick(1001) > t2 + (5000 << 16)


def test_replicas_converge_whatever_the_delivery_order():
    """Three replicas each make random writes (puts, deletes, context puts) on two keys, and see
    each other's writes in random interleavings (each origin's in order, as the logs guarantee).
    Afterwards every replica holds the same state, and every write is either a sibling or was
    superseded by a write whose context covered it (nothing lost silently)."""
    for seed in range(200):
        rng = random.Random(seed)
        origins = [A, B, C]
        states = {o: {} for o in origins}          # origin -> key -> KeyState
        logs = {o: [] for o in origins}             # origin -> [(key, sibling, ctx)]
        delivered = {o: {p: 0 for p in origins} for o in origins}
        for _ in range(rng.randint(1, 25)):
            o = rng.choice(origins)
            if rng.random() < 0.6:   # make a write at o
                key = rng.choice("xy")
                st = states[o].get(key, EMPTY)
                seq = len(logs[o]) + 1
                ctx = dict(st.ctx) if rng.random() < 0.8 else {}
                sib = Sibling(o, seq, rng.randint(1, 50), rng.choice([None, b"%d" % rng.randint(0, 99)]))
                states[o][key] = apply_write(st, sib, ctx)
                logs[o].append((key, sib, ctx))
                delivered[o][o] = seq
            else:                    # deliver the next entry of some origin to o
                p = rng.choice([p for p in origins if p != o])
                i = delivered[o][p]
                if i < len(logs[p]):
                    key, sib, ctx = logs[p][i]
                    new = apply_write(states[o].get(key, EMPTY), sib, ctx)
                    if new is not None:
                        states[o][key] = new
                    delivered[o][p] = i + 1
        for o in origins:            # heal: deliver the rest
            for p in origins:
                for key, sib, ctx in logs[p][delivered[o][p]:]:
                    new = apply_write(states[o].get(key, EMPTY), sib, ctx)
                    if new is not None:
                        states[o][key] = new
        assert states[A] == states[B] == states[C], seed
        for p in origins:
            for key, sib, _ctx in logs[p]:
                final = states[A][key]
                superseded = any(covers(c, sib.node, sib.seq) for q in origins for k2, s2, c in logs[q]
                                 if k2 == key and (s2.node, s2.seq) != (sib.node, sib.seq))
                assert sib in final.siblings or superseded, (seed, sib)
