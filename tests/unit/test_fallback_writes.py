"""Fallback coordinators in a partitioned dynamo cluster (docs/PARTITIONING.md, "Sloppy quorum"),
on one node's real engine and storage, its peers played by the test: a write whose partition's
owners are all down is taken by a node that does not own it, kept as a partial copy of the
partition it hands over (the owners fetch it once back) and dropped once they hold it; a read is
not served from such a copy."""
import pytest

from zmqstore import errors, protocol

from test_rebalance_edges import NOW, hear, key_in, start   # noqa: F401 (start: a fixture)

V = protocol.pack_value


def request(engine, command, *args):
    return protocol.decode_request(protocol.encode_request(command, b"client", request.ids.pop(), 0, *args),
                                   engine.limits)


request.ids = list(range(1000, 1, -1))


def test_a_write_whose_owners_are_all_down_is_taken_by_a_fallback_and_handed_over(start):
    mode = start()
    engine, rep = mode.engine, mode.replication
    p = min(q for q in range(4096) if not engine.owns(q))
    owners = engine.placement.owners(p)
    others = [n for n in rep.views if n not in owners]
    for n in others:
        hear(rep, n)                            # every node but the partition's owners is up
    key = key_in(p)
    with pytest.raises(errors.Unavailable):     # up for less than election_interval: not heard is not down
        mode.handle(request(engine, "PUT", key, V("too soon")), None, NOW)
    rep._started = NOW - 1
    with pytest.raises(errors.BadArgument):     # a refused write takes nothing
        mode.handle(request(engine, "PUT", key, V("x"), {"w": 4}), None, NOW)
    assert p not in engine.leaving
    with pytest.raises(errors.Unavailable):     # a delete would find nothing to delete there: refused
        mode.handle(request(engine, "DEL", key), None, NOW)
    put = request(engine, "PUT", key, V("sloppy"))
    reply, until = mode.handle(put, None, NOW)
    assert protocol.decode_reply(reply).result[0] is True and until is not None   # acknowledged once durable
    assert p in engine.leaving and p in engine.partial and not engine.holds(p)
    mode.commit()
    assert start(()).engine.partial >= {p}                                     # recorded
    mode = start()
    engine, rep = mode.engine, mode.replication
    rep._started = NOW - 1
    for n in others:
        hear(rep, n)
    # A read is not served from the partial copy: with no owner heard, it is unavailable.
    with pytest.raises(errors.Unavailable):
        mode.handle(request(engine, "GET", key, False), None, NOW)
    # The owners come back: they share p with this node (its DSYNC says it hands p over, partial),
    # fetch its entry, and once their views cover it, the copy is dropped.
    sync = protocol.decode_peer(rep.sync.message(owners[0])).fields
    assert p in sync[8] and p in sync[9]                                       # moving (not whole), leaving
    origin = next(o for o in engine.partition_origins(p))
    assert [o for o, _s in sync[6]] == [origin]                                # its seqs of p go to the owner
    for n in owners:
        rep.views[n].applied[origin] = engine.durable_applied[origin]
        hear(rep, n)
    rep.housekeeping(NOW)
    mode.commit()
    assert p not in engine.leaving and not engine.load(key).siblings


def test_a_write_is_refused_while_an_owner_is_heard_and_cannot_be_reached(start):
    """Only when no owner is heard does a non-owner take the write: one heard but not reachable
    (its connection not up yet) is retried by the client."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    p = min(q for q in range(4096) if not engine.owns(q))
    hear(rep, engine.placement.owners(p)[0], moving=[p])                        # heard, but still pulling p
    with pytest.raises(errors.Unavailable):
        mode.handle(request(engine, "PUT", key_in(p), V(1)), None, NOW)
    assert p not in engine.leaving


def test_a_request_forwarded_to_a_node_still_pulling_is_refused_when_no_holder_is_heard(start):
    """It would send it on to a node holding the partition whole; with none heard it answers
    `unavailable` at once (it does not take a forwarded write as a fallback)."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    rep._started = NOW - 1
    p = min(engine.placement.owned_by(1))
    engine.moving_in.add(p)
    forwarder = next(n for n in rep.views if n not in engine.placement.owners(p))
    hear(rep, forwarder)
    body = protocol.encode_request("PUT", b"client", 5, 0, key_in(p), V(1))
    mode.out.take()
    mode._on_forward((forwarder, 9, 0, body), [b"node-x"], NOW)
    (kind, _target, reply), = mode.out.take()
    answer = protocol.decode_reply(protocol.decode_peer(reply).fields[2])
    assert not answer.ok and answer.result[0] == "unavailable"


def test_a_retry_of_a_fallback_write_takes_nothing_again(start):
    """Its first outcome comes back from the session; no new write is made, so a partition handed
    over since is not taken again (before: any reply with dots took it)."""
    mode = start()
    engine, rep = mode.engine, mode.replication
    rep._started = NOW - 1
    p = min(q for q in range(4096) if not engine.owns(q))
    for n in rep.views:
        if n not in engine.placement.owners(p):
            hear(rep, n)
    put = request(engine, "PUT", key_in(p), V(1))
    first, _until = mode.handle(put, None, NOW)
    mode.commit()
    engine.drop_partition(p)                    # handed over meanwhile
    mode.commit()
    again, _until = mode.handle(put, None, NOW)
    assert protocol.decode_reply(again).result == protocol.decode_reply(first).result
    assert p not in engine.leaving
