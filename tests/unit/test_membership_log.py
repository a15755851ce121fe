"""Leader-mode membership (docs/MEMBERSHIP.md) in the engine and the primary, on real storage: which
membership a node uses as entries are appended, applied, truncated, installed from a snapshot and
recovered at restart; quorums counted from voters only; the checks of a change."""
import pytest

from test_leader import FakeIO, PeerMessage, cycle, follow, step
from zmqstore import errors, protocol
from zmqstore.leader import Engine, Primary
from zmqstore.leader.membership import Membership
from zmqstore.protocol import LogEntry, Member
from zmqstore.storage import Storage


def member(node_id, voter=True):
    return Member(node_id, "127.0.0.1", 9000 + node_id, 10000 + node_id, 11000 + node_id, voter)


def members_entry(term, *members):
    return protocol.encode_entry(LogEntry(term, b"", 0, protocol.members_ops(members)))


def put_entry(term, key):
    return protocol.encode_entry(LogEntry(term, b"c", 1, ((protocol.OP_PUT, key, protocol.pack_value(1)),)))


def request(command, *args, rid=1):
    return protocol.decode_request(protocol.encode_request(command, b"admin", rid, rid, *args))


def primary_of(eng, cfg, acks=(2, 3)):
    """Node 1 as primary of term 1 (its first entry, seq 1, records the flags' membership) with a
    Primary that follows the membership as Roles does; `acks`: the peers that ACK seq 1 (committed)."""
    eng.become_primary(1)
    primary = Primary(eng, cfg, eng.membership, FakeIO(), 0.0)
    eng.on_membership = primary.set_membership
    cycle(eng, primary)
    for pid in acks:
        primary.on_ack((pid, 1, 1, 0, True), 0.1)
    return primary


def test_a_secondary_uses_a_membership_entry_when_it_holds_it_and_forgets_it_when_truncated(make):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    seen = []
    eng.on_membership = seen.append
    assert eng.membership.seq == 0 and eng.membership.voters == {1, 2, 3}     # the flags
    grown = (member(1), member(2), member(3), member(4, voter=False))
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [members_entry(1, member(1), member(2), member(3)),
                                                   members_entry(1, *grown)], 0, 2)), now=0.0)
    # Used before it commits, as in Raft: the latest one held.
    assert eng.membership.seq == 2 and sorted(eng.membership.members) == [1, 2, 3, 4]
    assert eng.membership.voters == {1, 2, 3} and [m.seq for m in seen] == [1, 2]
    # A new primary's log differs from seq 2 on: the entry goes, and the one before it is used again.
    follow(eng, cfg, io, 2)
    sec = follow(eng, cfg, io, 2)
    sec.matched = 1
    step(sec, PeerMessage("CHANGE", (2, 1, 1, 1, [put_entry(2, b"k")], 1, 2)), now=0.1)
    assert eng.membership.seq == 1 and sorted(eng.membership.members) == [1, 2, 3]
    # Applied, it is recorded in the data dir with its seq.
    assert eng.storage.members is not None and protocol.decode_members(eng.storage.members)[0] == 1


def test_the_recorded_membership_survives_a_restart_and_beats_the_flags(make, tmp_path):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [members_entry(1, member(1), member(2), member(5)),
                                                   put_entry(1, b"k")], 2, 2)), now=0.0)
    eng.flush()
    assert eng.membership.seq == 1 and sorted(eng.membership.members) == [1, 2, 5]
    eng.storage.close()
    st = Storage.open(cfg.data_dir, 2, "leader")
    try:
        again = Engine(st, cfg, "test")        # the flags still name nodes 1 and 3
        assert again.membership.seq == 1 and sorted(again.membership.peers) == [1, 5]
        assert again.replicated and again.removed_by is None
    finally:
        st.close()


def test_a_node_left_out_by_a_committed_membership_is_removed(make):
    eng, cfg = make(3)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [members_entry(1, member(1), member(2))], 0, 1)), now=0.0)
    assert eng.removed_by is None                        # held, not committed: not removed yet
    step(sec, PeerMessage("HEARTBEAT", (1, 1, 0, 1, 1)), now=0.1)
    assert eng.removed_by == 1
    with pytest.raises(errors.NotPrimary, match="removed from the cluster by entry 1"):
        eng.handle(request("GET", b"k", True))


def test_the_primary_counts_voters_only_and_not_itself_once_it_leaves(make):
    eng, cfg = make(1)
    primary = primary_of(eng, cfg)
    assert eng.commit_seq == 1
    eng.apply_to_commit()
    # Add a learner: its ACKs alone never commit anything.
    reply, seq = eng.handle(request("ADD_MEMBER", 4, "127.0.0.5", 9004, None, None, None))
    assert seq == 2 and eng.membership.voters == {1, 2, 3} and 4 in eng.membership.peers
    cycle(eng, primary)
    primary.on_ack((4, 1, 2, 0, True), 0.2)
    assert eng.commit_seq == 1
    primary.on_ack((2, 1, 2, 0, True), 0.2)
    assert eng.commit_seq == 2
    eng.apply_to_commit()
    # Remove the primary itself: its own copy no longer counts; it takes no more writes.
    reply, seq = eng.handle(request("REMOVE_MEMBER", 1, rid=2))
    assert seq == 3 and not primary.own_counts and primary.write_quorum == 2
    with pytest.raises(errors.NotPrimary, match="leaving the cluster"):
        eng.handle(request("PUT", b"k", protocol.pack_value(1), rid=3))
    cycle(eng, primary)
    primary.on_ack((2, 1, 3, 0, True), 0.3)
    assert eng.commit_seq == 2                          # node 1's copy plus node 2's: not two voters
    primary.on_ack((3, 1, 3, 0, True), 0.3)
    assert eng.commit_seq == 3


def test_one_change_at_a_time_and_the_checks_of_a_change(make):
    eng, cfg = make(1)
    primary = primary_of(eng, cfg, acks=())
    # The term's first entry is not committed yet: no change.
    with pytest.raises(errors.ChangeInProgress):
        eng.handle(request("ADD_MEMBER", 4, "127.0.0.5", 9004, None, None, None))
    primary.on_ack((2, 1, 1, 0, True), 0.1)
    eng.handle(request("ADD_MEMBER", 4, "127.0.0.5", 9004, None, None, None, rid=2))
    with pytest.raises(errors.ChangeInProgress):
        eng.handle(request("REMOVE_MEMBER", 3, rid=3))
    cycle(eng, primary)
    primary.on_ack((2, 1, 2, 0, True), 0.2)
    # Committed: the next change may start. A clash is refused, the last voter cannot go.
    with pytest.raises(errors.BadArgument, match="already used by node 4"):
        eng.handle(request("ADD_MEMBER", 5, "127.0.0.5", 9004, None, None, None, rid=4))
    with pytest.raises(errors.BadArgument, match="three distinct TCP ports"):
        eng.handle(request("ADD_MEMBER", 5, "127.0.0.6", 9005, 9005, None, None, rid=5))
    assert Membership(1, (member(1), member(2, voter=False)), 9).removing(2) is not None
    with pytest.raises(errors.BadArgument, match="no voter"):
        Membership(1, (member(1), member(2, voter=False)), 9).removing(1)


def test_hostile_memberships_are_refused():
    good = [list(member(1)), list(member(2))]
    for bad in ([], [good[0], good[0]], [list(member(1, voter=False))], [good[0][:6]],
                [[1, "h", 0, 2, 3, True, None]], [[1, "h", 1, 2, 3, True, "short"]], [[1, "h" * 300, 1, 2, 3, True, None]],
                [[0, "h", 1, 2, 3, True, None]], [good[0]] * 65):
        raw = protocol.encode_entry(LogEntry(1, b"", 0, {"members": bad}))
        with pytest.raises(errors.MalformedMessage):
            protocol.decode_peer_entry(raw)
    raw = protocol.encode_entry(LogEntry(1, b"", 0, {"members": good, "extra": 1}))
    with pytest.raises(errors.MalformedMessage):
        protocol.decode_peer_entry(raw)
    assert protocol.decode_members(protocol.encode_members(3, [member(1)])) == (3, (member(1),))
    with pytest.raises(errors.MalformedMessage):
        protocol.decode_members(b"\x92\x03\xc0")


def test_a_numeric_write_quorum_is_kept_and_no_change_may_leave_fewer_voters(make):
    eng, cfg = make(1, write_quorum=3)
    primary = primary_of(eng, cfg)
    assert eng.commit_seq == 1 and primary.write_quorum == 3
    with pytest.raises(errors.BadArgument, match="write_quorum = 3 needs that many voters"):
        eng.handle(request("REMOVE_MEMBER", 3))
