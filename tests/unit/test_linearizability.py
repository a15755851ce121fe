"""The linearizability checker on small known-good and known-bad histories."""
import math

from zmqstore.testing.linearizability import Op, check, check_register, read_history, write_history

INF = math.inf


def put(p, v, t0, t1, outcome="ok", key="k"):
    return Op(p, "put", key, v, t0, t1 if outcome != "info" else INF, outcome)


def get(p, r, t0, t1, key="k"):
    return Op(p, "get", key, None, t0, t1, "ok", r)


def cas(p, expected, new, ok, t0, t1, outcome="ok", key="k"):
    return Op(p, "cas", key, (expected, new), t0, t1 if outcome != "info" else INF, outcome, ok)


def test_sequential_history():
    assert check_register([put(1, 1, 0, 1), get(1, 1, 2, 3), cas(1, 1, 2, True, 4, 5), get(1, 2, 6, 7)])


def test_read_of_the_initial_value_and_of_a_concurrent_write():
    assert check_register([get(2, None, 0, 1), put(1, 1, 2, 5), get(2, 1, 3, 4)])    # read inside the put
    assert check_register([put(1, 1, 2, 5), get(2, None, 3, 4)])                     # or before it


def test_stale_read_is_caught():
    # put(1) completed before the read began, yet the read saw the old value
    assert not check_register([put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, 1, 4, 5)])


def test_lost_update_is_caught():
    # two CAS from 0 both succeed: one of them must have seen the other's write
    assert not check_register([put(1, 0, 0, 1), cas(1, 0, 1, True, 2, 5), cas(2, 0, 2, True, 3, 6)])


def test_value_never_written_is_caught():
    assert not check_register([put(1, 1, 0, 1), get(2, 7, 2, 3)])


def test_reads_going_back_in_time_are_caught():
    # the second read starts after the first ended, and sees an older value
    assert not check_register([put(1, 1, 0, 1), put(1, 2, 2, 10), get(2, 2, 3, 4), get(3, 1, 5, 6)])


def test_a_failed_write_must_not_be_visible_and_an_unknown_one_may_be():
    assert not check_register([put(1, 1, 0, 1), put(2, 2, 2, 3, "fail"), get(3, 2, 4, 5)])
    assert check_register([put(1, 1, 0, 1), put(2, 2, 2, 3, "info"), get(3, 2, 4, 5)])
    assert check_register([put(1, 1, 0, 1), put(2, 2, 2, 3, "info"), get(3, 1, 4, 5)])    # or not
    # an unknown write takes effect at most once: it cannot explain 2, then 1, then 2 again
    assert not check_register([put(1, 1, 0, 1), put(2, 2, 2, 3, "info"), get(3, 2, 4, 5),
                               put(1, 1, 6, 7), get(3, 2, 8, 9)])


def test_an_unknown_cas_may_apply_only_if_its_expectation_held():
    assert check_register([put(1, 0, 0, 1), cas(2, 0, 5, None, 2, 3, "info"), get(1, 5, 4, 5)])
    assert not check_register([put(1, 3, 0, 1), cas(2, 0, 5, None, 2, 3, "info"), get(1, 5, 4, 5)])


def test_a_failed_cas_needs_a_different_value():
    assert check_register([put(1, 3, 0, 1), cas(2, 0, 5, False, 2, 3)])
    assert not check_register([put(1, 0, 0, 1), cas(2, 0, 5, False, 2, 3), get(1, 0, 4, 5)])


def test_many_concurrent_writers_stay_tractable():
    # 12 overlapping writes and a read of one of them: memoisation keeps this fast
    ops = [put(p, p, 0, 10) for p in range(12)] + [get(99, 7, 11, 12)]
    assert check_register(ops)
    assert not check_register(ops + [get(99, 3, 13, 14)])


def test_keys_are_checked_separately_and_the_failure_is_reported(tmp_path):
    history = [put(1, 1, 0, 1, key="a"), get(2, 1, 2, 3, key="a"),
               put(1, 1, 0, 1, key="b"), put(1, 2, 2, 3, key="b"), get(2, 1, 4, 5, key="b"),
               put(1, 9, 6, 7, key="b")]
    verdict = check(history)
    assert not verdict.ok and verdict.key == "b" and verdict.checked == 6
    assert verdict.window[-1] == history[4]             # the stale read ends the shortest failing prefix
    assert "NOT linearizable" in verdict.report() and "get() -> 1" in verdict.report()
    path = tmp_path / "h.jsonl"
    write_history(path, history + [cas(3, 1, 2, None, 8, 9, "info", key="a")])
    again = read_history(path)
    assert again[:6] == history and again[6].complete == INF and again[6].value == (1, 2)
    assert check([op for op in again if op.key == "a"]).ok


def brute_force(ops, initial=None):
    """Linearizable by enumeration: some order respecting real time (and, for info operations,
    applied or skipped) replays every result. Only for tiny histories."""
    import itertools
    ops = [op for op in ops if op.outcome != "fail"]
    for order in itertools.permutations(range(len(ops))):
        pos = {i: k for k, i in enumerate(order)}
        if any(ops[a].complete < ops[b].invoke and pos[a] > pos[b]
               for a in range(len(ops)) for b in range(len(ops))):
            continue
        infos = [i for i in order if ops[i].outcome == "info"]
        for skips in itertools.product((False, True), repeat=len(infos)):
            skip = dict(zip(infos, skips))
            state, good = initial, True
            for i in order:
                op = ops[i]
                if skip.get(i):
                    continue
                if op.kind == "put":
                    state = op.value
                elif op.kind == "get":
                    good = op.result == state
                else:
                    expected, new = op.value
                    if op.outcome == "info":
                        state = new if state == expected else state
                    elif op.result:
                        good = state == expected
                        state = new
                    else:
                        good = state != expected
                if not good:
                    break
            if good:
                return True
    return False


def test_agrees_with_brute_force_on_random_small_histories():
    import random
    rng = random.Random(7)
    disagreements, bad = [], 0
    for trial in range(400):
        ops = []
        for p in range(rng.randint(2, 6)):
            t0 = rng.uniform(0, 10)
            t1 = t0 + rng.uniform(0.1, 4)
            kind = rng.choice(("put", "get", "cas"))
            outcome = rng.choices(("ok", "fail", "info"), (6, 1, 2))[0] if kind != "get" else "ok"
            if kind == "put":
                ops.append(put(p, rng.randint(0, 2), t0, t1, outcome))
            elif kind == "get":
                ops.append(get(p, rng.choice((None, 0, 1, 2)), t0, t1))
            else:
                ops.append(cas(p, rng.choice((None, 0, 1)), rng.randint(0, 2), rng.random() < 0.5, t0, t1, outcome))
        expected = brute_force(ops)
        bad += not expected
        if check_register(ops) != expected:
            disagreements.append(ops)
    assert not disagreements, disagreements[0]
    assert 50 < bad < 350          # both kinds were exercised
