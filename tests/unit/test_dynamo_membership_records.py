"""Dynamo mode's membership (docs/MEMBERSHIP.md, "Dynamo mode"): records merged by stamp, in any
order, to the same membership; changes on any node; the removal safety check."""
import itertools
import random

import pytest

from zmqstore import config, errors, faults, protocol
from zmqstore.dynamo.engine import load_membership
from zmqstore.dynamo.membership import DynamoMembership
from zmqstore.modes import DynamoMode
from zmqstore.sends import Sends
from zmqstore.storage import Storage


def member(node_id, host="127.0.0.1"):
    return protocol.Member(node_id, host, 9000 + node_id, 10000 + node_id, 11000 + node_id, False, None)


def flags(node_id, ids):
    return DynamoMembership(node_id, [protocol.DynamoMember(n, "127.0.0.1", 9000 + n, 10000 + n, 11000 + n, None, 0,
                                                            False, 0) for n in ids])


def joined(x, y):
    return x.merge(y.records.values()) or x


def test_merging_is_order_free_and_a_removal_is_not_undone_by_a_stale_copy():
    base = flags(1, (1, 2, 3))
    on1 = base.adding(member(4), changer=1)           # node 1 adds 4
    on2 = flags(2, (1, 2, 3)).removing(3, changer=2)  # node 2, concurrently, removes 3
    on3 = flags(3, (1, 2, 3)).adding(member(5), changer=3).removing(5, changer=3)   # 5 added, then removed
    changes = [on1, on2, on3, base]
    results = set()
    for order in itertools.permutations(changes):
        m = DynamoMembership(1, order[0].records.values())
        for other in order[1:]:
            m = m.merge(other.records.values()) or m
        results.add(m.encoded)
        assert sorted(m.members) == [1, 2, 4]
        assert m.merge(base.records.values()) is None      # stale copies add nothing: 3 and 5 stay removed
    assert len(results) == 1                                # the same membership in every order
    # Re-adding a removed node id gives its record the next counter: it beats the removal.
    final = DynamoMembership(1, [r for c in changes for r in c.records.values() if r.node_id == 3 and r.removed] +
                             [r for r in on1.records.values() if r.node_id != 3])
    again = final.adding(member(3), changer=4)
    assert 3 in again.members and again.records[3].counter == final.records[3].counter + 1
    assert final.merge(again.records.values()).members == again.members


def test_concurrent_changes_of_one_node_id_resolve_the_same_everywhere():
    base = flags(1, (1, 2))
    a = base.adding(member(3, host="127.0.0.7"), changer=1)
    b = base.adding(member(3, host="127.0.0.8"), changer=2)
    assert joined(a, b).encoded == joined(b, a).encoded and joined(a, b).members[3].host == "127.0.0.8"
    # same counter: a removal wins over an addition, whoever made it
    c = a.removing(2, changer=1)
    d = a.removing(3, changer=2)
    e = a.adding(member(9), changer=2).removing(9, changer=2)
    merged = random.Random(1).sample([c, d, e], 3)
    m = merged[0]
    for other in merged[1:]:
        m = m.merge(other.records.values()) or m
    assert sorted(m.members) == [1]


def test_changes_are_checked():
    m = flags(1, (1, 2, 3))
    assert m.adding(member(2)._replace(host="127.0.0.1"), changer=1) is None      # the same member again
    with pytest.raises(errors.BadArgument, match="already a member"):
        m.adding(member(2)._replace(host="127.0.0.9"), changer=1)
    with pytest.raises(errors.BadArgument, match="already used by node 2"):
        m.adding(member(2)._replace(node_id=7), changer=1)
    assert m.removing(9, changer=1) is None
    with pytest.raises(errors.BadArgument, match="last member"):
        flags(1, (1,)).removing(1, changer=1)
    with pytest.raises(errors.BadArgument, match="has had 256 node ids"):
        flags(1, range(1, protocol.DYNAMO_IDS_MAX + 1)).adding(member(999), changer=1)
    too_many = flags(1, range(1, protocol.DYNAMO_RECORDS_MAX + 1))
    with pytest.raises(errors.MalformedMessage):
        flags(1, (1,)).merge(too_many.records.values()).merge(flags(1, (600,)).records.values())
    assert m.removing(1, changer=1).removed_by == 1


def test_a_remove_waits_while_the_node_may_hold_writes_no_other_member_holds(tmp_path):
    cfg = config.resolve(None, {"node_id": 1, "mode": "dynamo", "data_dir": str(tmp_path / "n1"), "peers": [
        {"node_id": n, "host": "127.0.0.1", "port": 9000 + n} for n in (2, 3)]})
    mode = DynamoMode(Sends(), Storage.open(cfg.data_dir, 1, "dynamo"), cfg, faults.NONE, 0.0)
    try:
        rep, engine = mode.replication, mode.engine
        other = (3 << 32) + 7
        rep.views[2].applied, rep.views[2].heard = {}, 10.0
        rep.views[3].applied, rep.views[3].heard = {other: 5}, 10.0    # node 3 has writes node 1 lacks
        with pytest.raises(errors.Unavailable, match="node 3 holds writes"):
            rep.check_removal(3, 10.1)
        rep.check_removal(3, 20.0)              # not heard for longer than election_interval: removed at once
        engine.applied[engine.origin] = engine.durable_applied[engine.origin] = 4
        with pytest.raises(errors.Unavailable, match="no member has applied every write node 1 holds"):
            rep.check_removal(1, 10.1)
        rep.views[2].applied = {engine.origin: 4}
        rep.check_removal(1, 10.1)
        # The change itself: durable with the iteration's batch, then told to every old and new peer.
        rep.views[2].heard = 19.9              # node 2 heard lately, node 3 not: it goes
        reply, _until = mode.handle(protocol.decode_request(protocol.encode_request("REMOVE_MEMBER", b"c", 1, 1, 3)),
                                    [b"env"], 20.0)
        assert protocol.decode_reply(reply).result[0] is True and engine.pending_batch
        assert sorted(rep.views) == [2] and [m.node_id for m in mode.peer_list()] == [2, 3]   # 3: leaving
        mode.commit()
        sent = [(to, body) for _kind, to, body in mode.out.take()]
        assert sorted(to for to, body in sent if b"DMEMBERS" in body) == [2, 3]
        # Node 3 stays connected, for status queries only, until it says it knows it was removed.
        rep.tick(30.0)
        assert sorted(to for _kind, to, body in mode.out.take() if b"DSTATUS" in body) == [2, 3]
        fetch = protocol.PeerMessage("DFETCH", (3, engine.origin, 1))
        rep.on_request(fetch, [b"node-3"], 30.0)
        assert mode.out.take() == []            # nothing served to a removed node
        # Its records say it was removed, and it holds writes this node lacks: still connected, and
        # they are fetched from it.
        # (It had added node 9 while cut off: its records are merged, node 9 becomes a member here.)
        records = engine.membership.adding(member(9), changer=3).encoded
        knows = protocol.PeerMessage("DMEMBERS", (3, records, [[other, 5]]))
        rep.on_request(knows, [b"node-3"], 30.0)
        assert sorted(engine.membership.members) == [1, 2, 9]
        assert [m.node_id for m in mode.peer_list()] == [2, 3, 9]
        assert [to for _kind, to, body in mode.out.take() if b"DFETCH" in body] == [3]
        engine.applied[other] = engine.durable_applied[other] = 5     # as if fetched and flushed
        rep.on_request(knows, [b"node-3"], 30.5)
        assert [m.node_id for m in mode.peer_list()] == [2, 9]
        assert rep.status(31.0)["leaving"] == []
        mode.commit()
    finally:
        mode.engine.storage.close()
    # The record outlives a restart and beats the flags (which still name node 3).
    storage = Storage.open(cfg.data_dir, 1, "dynamo")
    try:
        assert sorted(load_membership(storage, cfg).members) == [1, 2, 9]
    finally:
        storage.close()


def test_nothing_is_collected_while_a_member_reports_another_membership(tmp_path):
    """A node added elsewhere and not heard of here may be writing: while any member's status
    carries another membership digest, no tombstone is collected; once they agree, it is."""
    cfg = config.resolve(None, {"node_id": 1, "mode": "dynamo", "data_dir": str(tmp_path / "n1"), "peers": [
        {"node_id": 2, "host": "127.0.0.1", "port": 9002}]})
    mode = DynamoMode(Sends(), Storage.open(cfg.data_dir, 1, "dynamo"), cfg, faults.NONE, 0.0)
    try:
        rep, engine = mode.replication, mode.engine
        for rid, command, args in ((8, "PUT", (b"k", protocol.pack_value(1))), (9, "DEL", (b"k",))):
            engine.handle(protocol.decode_request(protocol.encode_request(command, b"c", rid, rid, *args)))
            engine.flush()
        assert engine.tombstones == 1
        view = rep.views[2]
        view.applied, view.heard, view.members = dict(engine.durable_applied), 0.0, engine.membership.digest ^ 1
        for t in range(5):
            rep.housekeeping(float(t))
            engine.flush()
        assert engine.tombstones == 1           # node 2 knows another membership: nothing collected
        view.members = engine.membership.digest
        for t in range(5, 10):
            rep.housekeeping(float(t))
            engine.flush()
        assert engine.tombstones == 0
    finally:
        engine.storage.close()


def test_a_node_that_learns_of_its_removal_keeps_answering_its_old_peers(tmp_path):
    """Its peers drain it (status, DFETCH) until it has shown that it knows: it must keep admitting
    them (found by a dynamo campaign: it dropped them at once, and its writes stayed unfetched)."""
    cfg = config.resolve(None, {"node_id": 1, "mode": "dynamo", "data_dir": str(tmp_path / "n1"), "peers": [
        {"node_id": n, "host": "127.0.0.1", "port": 9000 + n} for n in (2, 3)]})
    mode = DynamoMode(Sends(), Storage.open(cfg.data_dir, 1, "dynamo"), cfg, faults.NONE, 0.0)
    try:
        rep, engine = mode.replication, mode.engine
        removal = engine.membership.removing(1, changer=2)
        rep.on_request(protocol.PeerMessage("DMEMBERS", (2, removal.encoded, [])), [b"node-2"], 1.0)
        assert engine.role == "removed" and [m.node_id for m in mode.peer_list()] == [2, 3]
        mode.commit()
        mode.out.take()
        status = protocol.PeerMessage("DSTATUS", (2, [], 0, 0, 0, 0, "h:1", removal.digest, [2, 2]))
        rep.on_request(status, [b"node-2"], 2.0)
        answers = [body for _kind, _to, body in mode.out.take()]
        assert any(b"DSTATUS_REPLY" in body for body in answers) and any(b"DMEMBERS" in body for body in answers)
        rep.on_request(protocol.PeerMessage("DFETCH", (2, engine.origin, 1)), [b"node-2"], 2.0)
        assert any(b"DENTRIES" in body for _kind, _to, body in mode.out.take())
        rep.on_request(protocol.PeerMessage("DREAD", (2, 1, b"k")), [b"node-2"], 2.0)
        assert mode.out.take() == []            # nothing else
    finally:
        engine.storage.close()
    storage = Storage.open(cfg.data_dir, 1, "dynamo")    # restarted: still removed, still answering them
    try:
        mode = DynamoMode(Sends(), storage, cfg, faults.NONE, 0.0)
        assert mode.engine.role == "removed" and [m.node_id for m in mode.peer_list()] == [2, 3]
    finally:
        storage.close()
