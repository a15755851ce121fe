"""Client sessions: outcomes kept while the client waits, dropped once it says so, expired when silent."""
from zmqstore.sessions import STALE, Sessions


def test_outcomes_until_open_from_moves_past_them():
    s = Sessions(timeout=60)
    assert s.lookup(b"c", 1, 1, now=0) is None
    s.record(b"c", 1, 100, now=0)
    s.record(b"c", 2, 101, now=0)
    assert s.lookup(b"c", 1, 1, now=1) == 100          # a retry of 1 gets its seq
    assert s.lookup(b"c", 2, 2, now=1) == 101          # open_from = 2: outcome 1 may go
    assert len(s) == 1
    assert s.lookup(b"c", 1, 1, now=1) is STALE        # a late copy of 1: the client gave up on it
    assert s.peek(b"c", 1, now=1) == (None, False)      # so its outcome is no longer known


def test_clients_are_separate_and_expire():
    s = Sessions(timeout=10)
    s.record(b"a", 1, 5, now=0)
    s.lookup(b"b", 1, 1, now=8)
    s.record(b"b", 1, 6, now=8)
    assert s.lookup(b"a", 1, 1, now=5) == 5            # seen at 5
    assert s.expire(now=14) == 0
    assert s.expire(now=16) == 1                         # a silent since 5
    assert s.lookup(b"a", 1, 1, now=16) is None and s.lookup(b"b", 1, 1, now=16) == 6
    assert s.peek(b"z", 1, now=16) == (None, True)      # a client never seen: nothing held for it
    assert s.clients == 2


def test_outcomes_per_client_are_capped_and_peek_keeps_a_session_alive():
    from zmqstore.sessions import MAX_OUTCOMES_PER_CLIENT
    s = Sessions(timeout=10)
    for rid in range(1, MAX_OUTCOMES_PER_CLIENT + 11):
        s.lookup(b"c", rid, 1, now=0)          # open_from held at 1, as by an unresolved write
        s.record(b"c", rid, rid, now=0)
    assert len(s) == MAX_OUTCOMES_PER_CLIENT
    assert s.peek(b"c", 1, now=9) == (None, False)     # dropped by the cap: not known, not "absent"
    assert s.peek(b"c", MAX_OUTCOMES_PER_CLIENT + 10, now=9)[0] is not None
    assert s.peek(b"c", MAX_OUTCOMES_PER_CLIENT + 20, now=9) == (None, True)
    assert s.expire(now=15) == 0               # peek at 9 counted as activity


def test_records_of_truncated_entries_are_forgotten():
    s = Sessions(timeout=10)
    s.record(b"c", 1, 10, now=0)
    s.record(b"c", 2, -11, now=0)      # a fence
    s.record(b"c", 3, 12, now=0)
    s.forget_from(11)
    assert s.peek(b"c", 1, now=0)[0] == 10 and s.peek(b"c", 2, now=0)[0] is None and s.peek(b"c", 3, now=0)[0] is None
