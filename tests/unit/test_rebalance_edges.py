"""Edge cases of rebalancing in a partitioned dynamo cluster (docs/PARTITIONING.md, "Rebalancing"),
on one node's real engine and storage in tmp_path, its peers played by the test: a partition lost
while being pulled is a partial copy (never a source), hand-over waits for a write staged in the
same iteration, the DSYNC that first says a peer hands a partition over keeps its pairs, a node
that is not heard can be removed while partitions move unless it may be the last whole holder, a
node handing a partition over forwards its requests to the owners, and a snapshot page's seqs must
name members' origins."""
import pytest

from zmqstore import config, errors, faults, protocol
from zmqstore.dynamo.layout import bucket_of
from zmqstore.dynamo.departures import Departures
from zmqstore.dynamo.moves import Pull
from zmqstore.dynamo.placement import Placement
from zmqstore.modes import DynamoMode
from zmqstore.sends import Sends
from zmqstore.storage import Storage, log_key

from test_engine import Caller

V = protocol.pack_value
NOW = 100.0


def member(node_id):
    return protocol.Member(node_id, f"127.0.0.{node_id + 1}", 9000, 10000, 11000, False, None)


@pytest.fixture
def start(tmp_path):
    """start(ids) -> node 1's DynamoMode among members `ids` (replicas 3); again: a restart."""
    opened = []

    def make(ids=(1, 2, 3, 4, 5)):
        for mode in opened:
            if mode.engine.storage._db is not None:
                mode.engine.storage.close()
        cfg = config.resolve(None, {"node_id": 1, "mode": "dynamo", "host": "127.0.0.2", "replicas": 3,
                                    "data_dir": str(tmp_path / "n1"), "election_interval": 0.5,
                                    "peers": [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000}
                                              for n in ids if n != 1]})
        mode = DynamoMode(Sends(), Storage.open(cfg.data_dir, 1, "dynamo", fsync=False), cfg, faults.NONE, NOW)
        opened.append(mode)
        return mode
    yield make
    for mode in opened:
        if mode.engine.storage._db is not None:
            mode.engine.storage.close()


def change(mode, membership):
    mode.engine.set_membership(membership)
    mode.commit()


def hear(rep, node_id, moving=(), leaving=()):
    """The peer's DSYNC came just now, complete, covering `applied` as the test set it."""
    view = rep.views[node_id]
    view.sync_heard = view.heard = NOW
    view.synced = True
    view.moving, view.leaving = frozenset(moving), frozenset(leaving)
    rep._now = NOW


def handing_over(start):
    """Node 1 started, then node 6 added: (its mode, the lowest partition node 1 now hands over)."""
    mode = start()
    engine = mode.engine
    before = engine.placement.owned_by(1)
    change(mode, engine.membership.adding(member(6), changer=1))
    return mode, min(before - engine.placement.owned_by(1))


def key_in(partition):
    i = 0
    while bucket_of(b"k%d" % i) != partition:
        i += 1
    return b"k%d" % i


def test_a_partition_lost_while_it_is_pulled_is_a_partial_copy_and_is_pulled_when_owned_again(start):
    mode = start()
    engine = mode.engine
    owned = engine.placement.owned_by(1)
    change(mode, engine.membership.removing(5, changer=1))          # node 1 gains node 5's share ...
    gained = engine.placement.owned_by(1) - owned
    assert gained and engine.moving_in == gained
    before = engine.placement.owned_by(1)
    change(mode, engine.membership.adding(member(6), changer=1))    # ... and loses some to node 6
    lost = before - engine.placement.owned_by(1)
    partial, whole = lost & gained, lost - gained
    assert partial and whole
    assert engine.partial == partial and engine.leaving == lost
    assert not any(engine.holds(p) for p in partial) and all(engine.holds(p) for p in whole)
    fields = protocol.decode_peer(mode.replication.sync.message(2)).fields
    assert partial <= set(fields[8]) and whole.isdisjoint(fields[8]) and set(fields[9]) == lost   # moving, leaving
    # Never a snapshot source: a DRANGE for a partial copy is not answered.
    mode.out.take()
    mode.replication.moves.on_range((2, 1, min(partial), None), [b"node-2"], NOW)
    assert mode.out.take() == []
    # Recorded: a restart keeps each as it was (the keys-only guess at start would say whole).
    engine = start(()).engine
    assert engine.partial == partial and engine.leaving == lost and engine.moving_in == gained - lost
    # Owned again (node 6 removed): a partial copy is pulled, a whole one just kept.
    mode = start(())
    change(mode, mode.engine.membership.removing(6, changer=1))
    engine = mode.engine
    assert engine.moving_in >= partial and engine.moving_in.isdisjoint(whole) and not engine.partial
    assert engine.leaving == set() and all(engine.holds(p) for p in whole)


def test_hand_over_waits_for_a_write_staged_in_the_iteration_it_would_drop_the_partition(start):
    mode, p = handing_over(start)
    engine, rep = mode.engine, mode.replication
    key, call = key_in(p), Caller(engine)
    call("PUT", key, V("first"))
    mode.commit()
    owners = engine.placement.owners(p)
    for n in rep.views:
        rep.views[n].applied = dict(engine.durable_applied)      # every owner holds what is durable here
        hear(rep, n)
    call("PUT", key, V("second"))        # staged in this iteration, not durable, not on the owners
    rep.housekeeping(NOW)
    assert p in engine.leaving and engine.load(key).siblings, "a staged write was dropped with its partition"
    mode.commit()
    for n in owners:
        rep.views[n].applied = dict(engine.durable_applied)
        hear(rep, n)        # (a hand-over changes what is shared: views start again)
    rep.housekeeping(NOW)
    mode.commit()
    assert p not in engine.leaving and not engine.load(key).siblings


def test_the_dsync_that_first_says_a_peer_hands_a_partition_over_keeps_its_seqs(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    p = min(engine.placement.owned_by(1) - engine.placement.owned_by(2))    # node 2 holds it only while leaving
    origin = (2 << 32) | (5 << 12) | p
    rep._on_sync((2, 2 << 32, engine.run, 1, 0, 3, [[origin, 7]], True, [], [p]), None, NOW)
    assert rep.views[2].applied.get(origin) == 7 and rep.views[2].leaving == {p}
    assert p in rep._shared[2]
    # A pair of a partition not shared by this node's membership is kept too: the sender's may be
    # ahead, and it will not send the pair again once this node confirms it.
    q = max(engine.placement.owned_by(1) - engine.placement.owned_by(2))
    ahead = (2 << 32) | (5 << 12) | q
    rep._on_sync((2, 2 << 32, engine.run, 2, 0, 3, [[ahead, 4]], True, [], [p]), None, NOW)
    assert rep.views[2].applied.get(ahead) == 4 and q not in rep._shared[2]
    # When it no longer hands it over, its seqs of the partition are forgotten (it may pull it again
    # later from less than it held).
    rep._on_sync((2, 2 << 32, engine.run, 3, 0, 3, [], True, [], []), None, NOW)
    assert origin not in rep.views[2].applied and p not in rep._shared[2]


def test_a_node_not_heard_is_removable_while_partitions_move_unless_it_may_hold_one_alone(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    engine.moving_in.add(next(iter(engine.placement.owned_by(1))))    # a move under way here
    for n in (2, 3, 4):
        hear(rep, n)
    with pytest.raises(errors.Unavailable, match="still moving"):
        rep.check_removal(2, NOW)                   # heard: waits for moves
    rep.check_removal(5, NOW)                       # not heard: every partition of it is held whole elsewhere
    only_5_and_pulled = sorted(p for p in engine.placement.owned_by(5) if not engine.holds(p))
    p = only_5_and_pulled[0]
    for n in (2, 3, 4):
        hear(rep, n, moving=[p])                    # its other owners still pull it
    with pytest.raises(errors.Unavailable, match=f"partition {p} whole"):
        rep.check_removal(5, NOW)


def test_a_node_handing_a_partition_over_forwards_its_requests_to_the_owners(start):
    mode, p = handing_over(start)
    engine, rep = mode.engine, mode.replication
    request = protocol.decode_request(protocol.encode_request("GET", b"c", 1, 0, key_in(p), False), engine.limits)
    assert engine.holds(p)
    put = protocol.decode_request(protocol.encode_request("PUT", b"c", 2, 0, key_in(p), V(1)), engine.limits)
    assert rep.forwards.target(request) is None and rep.forwards.target(put) is None   # no owner heard: here
    owner = engine.placement.owners(p)[0]
    hear(rep, owner)
    assert rep.forwards.target(request) == owner and rep.forwards.target(put) == owner


def test_a_snapshot_page_naming_origins_of_non_members_is_refused(start):
    mode = start()
    engine, moves = mode.engine, mode.replication.moves
    p = next(iter(engine.placement.owned_by(1)))
    engine.moving_in.add(p)
    hear(mode.replication, 2)
    moves._holders = lambda partition: [2]
    moves.tick(NOW)
    pull = moves.pulls[p]
    stranger = (40 << 32) | (1 << 12) | p
    with pytest.raises(errors.BadArgument, match="never members"):
        moves.on_range_reply((2, pull.id, p, None, [], None, [[stranger, 3]]), NOW)
    assert p in engine.moving_in and stranger not in engine.applied


def test_a_node_handing_a_partition_over_keeps_fetching_it_and_owners_wait_for_it(start):
    """It is still a pull source, so it keeps up (before: it dropped fetched entries); and the
    owners' tombstone collection counts it (before: only owners), or a pull from it could bring
    back a collected key."""
    mode, p = handing_over(start)
    engine, rep = mode.engine, mode.replication
    owner = engine.placement.owners(p)[0]
    origin = (owner << 32) | (5 << 12) | p
    mode.out.take()
    rep._on_sync((owner, owner << 32, engine.run, 1, 0, 3, [[origin, 3]], True, [], []), None, NOW)
    fetches = [protocol.decode_peer(body).fields for _kind, to, body in mode.out.take()
               if to == owner and b"DFETCH" in body]
    assert fetches == [(1, origin, 1)]
    # An owner's side: node 1 owns q; node 2 (no owner of q) says it hands q over, having applied
    # less of node 1's writes to q than the owners: q's stable seq waits for it.
    q = min(p for p in engine.placement.owned_by(1) if 2 not in engine.placement.owners(p))
    call = Caller(engine)
    for i in range(3):
        call("PUT", key_in(q), V(i))
    mode.commit()
    mine = engine.own_origin(q)
    seq = engine.durable_applied[mine]
    for n in engine.placement.owners(q):
        if n != 1:
            rep.views[n].applied[mine] = seq
            hear(rep, n)
    assert rep._partition_vectors()[0][mine] == seq
    rep._on_sync((2, 2 << 32, engine.run, 1, 0, 3, [[mine, 1]], True, [], [q]), None, NOW)
    assert rep._partition_vectors()[0][mine] == 1


def test_only_owners_acknowledgements_count_toward_w(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(engine.placement.owned_by(1))
    outsider = next(n for n in rep.views if n not in engine.placement.owners(q))
    owner = next(n for n in engine.placement.owners(q) if n != 1)
    Caller(engine)("PUT", key_in(q), V(1))
    mode.commit()
    dot = (engine.own_origin(q), 1)
    rep._on_ack((outsider, *dot), None, NOW)        # a node handing q over (or any non-owner)
    assert rep.copies([dot]) == 1
    rep._on_ack((owner, *dot), None, NOW)
    assert rep.copies([dot]) == 2


def test_a_partition_whose_entries_a_co_owner_trimmed_is_pulled_again(start):
    """A data dir older than what its co-owners still log (restored from a copy): the streams
    cannot complete it, so the partition is pulled again, and a restart resumes the pull."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(engine.placement.owned_by(1))
    owner = next(n for n in engine.placement.owners(q) if n != 1)
    origin = (owner << 32) | (5 << 12) | q
    rep._on_entries((owner, origin, 1, [], 40), NOW)        # unasked: any member could send it
    assert q not in engine.moving_in
    rep._fetch(origin, owner, NOW)
    rep._on_entries((owner, origin, 1, [], 40), NOW)        # it keeps entries from 40 on only
    assert q in engine.moving_in and not engine.holds(q)
    mode.commit()
    assert q in start().engine.moving_in


def test_a_quorum_read_asks_and_counts_only_owners_holding_the_partition_whole(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(engine.placement.owned_by(1))
    pulling, whole = [n for n in engine.placement.owners(q) if n != 1]
    hear(rep, pulling, moving=[q])
    hear(rep, whole)
    get = protocol.decode_request(protocol.encode_request("GET", b"c", 1, 0, key_in(q), False, {"r": 2}),
                                  engine.limits)
    mode.out.take()
    read = rep.reads.start(get, 2)
    assert read.asked == {whole}
    assert [to for _kind, to, body in mode.out.take() if b"DREAD" in body] == [whole]


def test_a_removed_node_is_drained_of_its_writes_by_the_holders_of_their_partitions(start):
    """Node 5 is removed. Node 1 fetches from it what it coordinated in partitions node 1 keeps, as
    node 5's last DSYNC and, once it knows, its DMEMBERS say (its own origins); not what belongs to
    partitions node 1 does not hold, which their holders drain. Before: nothing was fetched (the
    vectors drained were DSTATUS's, empty in a partitioned cluster)."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    placement = engine.placement
    after = Placement([1, 2, 3, 4], 3)
    kept = min(p for p in placement.owned_by(1) if 5 in placement.owners(p))
    other = min(p for p in placement.owned_by(5) if 1 not in after.owners(p))
    seen, late, elsewhere = ((5 << 32) | (9 << 12) | kept, (5 << 32) | (8 << 12) | kept,
                             (5 << 32) | (9 << 12) | other)
    rep.views[5].applied[seen] = 4                  # its last DSYNC
    change(mode, engine.membership.removing(5, changer=1))
    assert 5 in rep.departures
    mode.out.take()
    removal = engine.membership.encoded
    rep.on_request(protocol.PeerMessage("DMEMBERS", (5, removal, [[late, 2], [elsewhere, 7]])), [b"node-5"], NOW)
    fetched = sorted(protocol.decode_peer(body).fields[1] for _kind, to, body in mode.out.take()
                     if to == 5 and b"DFETCH" in body)
    assert fetched == sorted([seen, late])
    assert rep.departures.applied_of(5) == {seen: 4, late: 2}      # let go once node 1 holds these


def test_a_removed_node_tells_its_old_peers_what_it_coordinated(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(engine.placement.owned_by(1))
    Caller(engine)("PUT", key_in(q), V(1))
    mode.commit()
    engine.applied[(2 << 32) | q] = 3                # another node's origin: not its to give
    assert protocol.decode_peer(rep._members_message()).fields[2] == []    # a member sends none
    change(mode, engine.membership.removing(1, changer=2))
    assert engine.role == "removed"
    assert protocol.decode_peer(rep._members_message()).fields[2] == [[engine.own_origin(q), 1]]


def test_a_pull_of_a_partition_lost_meanwhile_stops_and_adopts_nothing(start):
    """Lost by a second change while its pull runs: the next page is not merged, no seqs are
    adopted, the partition stays a partial copy (before: the pull went on and claimed it whole)."""
    mode = start()
    engine, moves = mode.engine, mode.replication.moves
    change(mode, engine.membership.removing(5, changer=1))
    before = engine.placement.owned_by(1)
    change(mode, engine.membership.adding(member(6), changer=1))
    lost = sorted((before - engine.placement.owned_by(1)) & engine.partial)
    assert lost
    p = lost[0]
    moves.pulls[p] = pull = Pull(77, 2, NOW + 10)
    holder = (2 << 32) | (3 << 12) | p
    moves.on_range_reply((2, 77, p, None, [[key_in(p), b"junk"]], None, [[holder, 9]]), NOW)
    assert p not in moves.pulls and holder not in engine.applied and p in engine.partial
    assert not engine.load(key_in(p)).siblings and pull.keys == 0
    # Lost and gained again before the old pull heard anything: that pull is of the old move and
    # must not finish the new one from its cursor (the new move starts from the first page).
    q = lost[1] if len(lost) > 1 else lost[0]
    moves.pulls[q] = Pull(78, 2, NOW + 10, engine.move_of.get(q, 0))
    engine._moved_partitions(set(), {q})            # owned again: a new move
    assert q in engine.moving_in
    moves.on_range_reply((2, 78, q, None, [], None, [[(2 << 32) | (3 << 12) | q, 9]]), NOW)
    assert q not in moves.pulls and q in engine.moving_in


def test_garbage_collection_waits_while_a_member_is_not_heard(start):
    """A member cut off may take writes as a fallback that its partitions' owners do not know of."""
    mode = start()
    rep = mode.replication
    for n in (2, 3, 4, 5):
        rep.views[n].members = mode.engine.membership.digest
    for n in (2, 3, 4):
        hear(rep, n)
    assert rep.gc_vector() is None and rep.gc_vector() is None      # node 5 not heard
    hear(rep, 5)
    rep.gc_vector()
    rep.gc_vector()
    assert rep.gc_vector() is not None


def test_a_node_not_heard_holding_a_partial_copy_is_removed_only_through_an_owner_holding_it(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    mine = sorted(p for p in engine.placement.owned_by(1) if 5 not in engine.placement.owners(p))
    theirs = sorted(p for p in range(4096) if 1 not in engine.placement.owners(p)
                    and 5 not in engine.placement.owners(p))
    for n in (2, 3, 4):
        hear(rep, n)
    view = rep.views[5]
    view.leaving = view.moving = frozenset({mine[0]})      # its last DSYNC: a partial copy of mine[0]
    view.synced = True
    origin = (5 << 32) | (4 << 12) | mine[0]
    view.applied[origin] = 3
    with pytest.raises(errors.Unavailable, match=f"partition {mine[0]}"):
        rep.check_removal(5, NOW)                           # node 1 owns it but lacks its writes
    engine.applied[origin] = engine.durable_applied[origin] = 3
    rep.check_removal(5, NOW)
    view.leaving = view.moving = frozenset({theirs[0]})
    with pytest.raises(errors.Unavailable, match="ask an owner"):
        rep.check_removal(5, NOW)                           # not an owner: it cannot tell
    view.leaving = view.moving = frozenset({mine[0]})
    view.synced = False                                     # its view of node 5 may lack pairs
    with pytest.raises(errors.Unavailable, match=f"partition {mine[0]}"):
        rep.check_removal(5, NOW)


def test_a_drained_node_is_let_go_once_this_node_no_longer_keeps_what_it_lacked(start):
    """It handed the partition over meanwhile (its applied seqs of it gone): waiting for them would
    keep the removed node connected for a day."""
    mode = start()
    keeping, fetched = {True}, []
    origin = (5 << 32) | (2 << 12) | 7
    departures = Departures(mode.engine, lambda o, n, now: fetched.append(o), lambda o: True in keeping)
    departures.add({5: member(5)}, NOW, {5: {origin: 3}})
    assert not departures.on_status(5, {}, NOW, knows=True) and fetched == [origin]
    keeping.clear()
    assert departures.on_status(5, {}, NOW) and 5 not in departures


def test_a_handed_off_hint_keeps_the_log_of_an_origin_this_node_applies(start):
    """A fallback that also holds the partition (a copy it hands over) serves that origin's
    entries from its log: delivering a hint must not delete them (before: fetches of it stalled)."""
    mode = start()
    engine, hints = mode.engine, mode.replication.hints
    p = min(q for q in range(4096) if not engine.owns(q))
    owner = engine.placement.owners(p)[0]
    origin = (owner << 32) | (6 << 12) | p
    raw = b"entry"
    batch = engine.staging()
    batch.put_cf("log", log_key(origin, 1), raw)
    engine.first[origin], engine.applied[origin] = 1, 1          # applied here too
    hints.held[(owner, origin)] = [1, 1]
    hints.on_handoff_ack((owner, origin, 1), NOW)
    mode.commit()
    assert not hints.held and engine.storage.get_cf("log", log_key(origin, 1)) == raw


def test_a_lacking_origin_is_fetched_from_a_peer_that_has_not_left_a_fetch_unanswered(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(p for p in engine.placement.owned_by(1))
    a, b = rep._sharers[q]                      # the order it would ask them in
    origin = (4 << 32) | (2 << 12) | q
    for n in (a, b):
        hear(rep, n)
        rep.views[n].applied[origin] = 5
    rep._lacking[origin] = None
    rep._unanswered[origin] = {a}               # a left one unanswered (a hiccup)
    mode.out.take()
    rep._fetch_lacking(NOW)
    assert [to for _k, to, body in mode.out.take() if b"DFETCH" in body] == [b]


def test_a_views_growth_past_its_bound_keeps_only_shared_partitions(start, monkeypatch):
    import zmqstore.dynamo.partitioned as partitioned
    monkeypatch.setattr(partitioned, "VIEW_MAX", 2)
    mode = start()
    engine, rep = mode.engine, mode.replication
    shared = min(rep._shared[2])
    other = min(p for p in range(4096) if p not in rep._shared[2])
    pairs = [[(2 << 32) | (r << 12) | shared, 1] for r in (1, 2)] + [[(2 << 32) | (3 << 12) | other, 1]]
    rep._on_sync((2, 2 << 32, engine.run, 1, 0, 3, pairs, True, [], []), None, NOW)
    assert sorted(rep.views[2].applied) == sorted(o for o, _s in pairs[:2])
    assert rep.views[2].sync_heard == NOW        # not refused: the peer stays alive


def test_a_pulled_partition_fetches_what_sharers_showed_while_it_was_pulled(start):
    """A pair that came (and was confirmed) while the partition was pulled is not fetched then;
    once pulled, it is (the sender never sends it again)."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    q = min(engine.placement.owned_by(1))
    engine.moving_in.add(q)
    sharer = rep._sharers[q][0]
    elsewhere = min(p for p in range(4096) if not engine.keeps(p))
    origin, other = (sharer << 32) | (2 << 12) | q, (sharer << 32) | (2 << 12) | elsewhere
    rep._on_sync((sharer, sharer << 32, engine.run, 1, 0, 3, [[origin, 4], [other, 4]], True, [], []), None, NOW)
    assert origin not in rep._lacking
    engine.moved_in(q)
    rep._moved_in(q)
    assert origin in rep._lacking and other not in rep._lacking
