"""Partition placement (zmqstore/dynamo/placement.py, docs/PARTITIONING.md): deterministic preference
lists of distinct members, the least movement on a join or a leave, and balance."""
import pytest

from zmqstore.dynamo.placement import ALL, PARTITIONS, Placement, partition_of, score


def test_every_partition_has_replicas_distinct_members_and_the_same_lists_whatever_the_order_given():
    a, b = Placement([3, 1, 6, 2, 5, 4], 3), Placement([1, 2, 3, 4, 5, 6, 6], 3)
    for p in range(PARTITIONS):
        owners = a.owners(p)
        assert len(owners) == len(set(owners)) == 3 and set(owners) <= set(a.members)
        assert owners == b.owners(p)
        assert a.ranking(p)[:3] == owners and sorted(a.ranking(p)) == list(a.members)
        ranked = [score(p, n) for n in a.ranking(p)]
        assert ranked == sorted(ranked, reverse=True)
    assert a.preference(b"user:1") == a.owners(partition_of(b"user:1"))


def test_a_join_moves_only_the_slots_the_new_member_takes_and_a_leave_only_the_leavers():
    six = Placement(range(1, 7), 3)
    seven = Placement(range(1, 8), 3)
    moves = six.moves(seven)
    assert moves and all(lost and gained == (7,) and len(lost) == 1 for lost, gained in moves.values())
    assert set(moves) == seven.owned_by(7)
    assert abs(len(moves) / (PARTITIONS * 3) - 1 / 7) < 0.02        # about 1/7 of the replica slots
    back = seven.moves(six)
    assert set(back) == set(moves) and all(lost == (7,) for lost, _gained in back.values())
    # Leaving: each of the leaver's slots goes to the next member of that partition's ranking.
    five = Placement([1, 2, 3, 5, 6], 3)
    for p, (lost, gained) in six.moves(five).items():
        assert lost == (4,) and gained == (six.ranking(p)[3],)
    assert set(six.moves(five)) == six.owned_by(4)


def test_six_members_with_three_replicas_each_own_about_half_the_partitions():
    placement = Placement(range(1, 7), 3)
    for node in placement.members:
        assert abs(len(placement.owned_by(node)) / (PARTITIONS / 2) - 1) < 0.05
    assert sum(len(placement.owned_by(n)) for n in placement.members) == PARTITIONS * 3
    assert placement.owned_by(99) == frozenset()


@pytest.mark.parametrize("replicas", [ALL, 3, 7])
def test_replicas_all_or_at_least_the_members_puts_every_key_on_every_member(replicas):
    placement = Placement([1, 2, 3], replicas)
    assert not placement.partitioned and placement.replicas == 3
    assert all(placement.owners(p) == (1, 2, 3) for p in (0, 17, PARTITIONS - 1))
    assert all(placement.owned_by(n) == frozenset(range(PARTITIONS)) for n in (1, 2, 3))
    ranked = [score(17, n) for n in placement.ranking(17)]      # fallbacks' order is still by rank
    assert sorted(placement.ranking(17)) == [1, 2, 3] and ranked == sorted(ranked, reverse=True)
    assert placement.moves(Placement([1, 2, 3], 2))       # partitioning it would move slots


def test_no_members_or_a_negative_count_is_refused():
    with pytest.raises(ValueError):
        Placement([], 3)
    with pytest.raises(ValueError):
        Placement([1, 2, 3], -1)
