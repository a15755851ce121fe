"""Partitioned dynamo clusters (docs/PARTITIONING.md), real processes on 127.0.0.2...: with
`replicas` = 3 on 6 nodes each key lives on exactly its partition's 3 owners, any node serves any
key (it forwards to an owner), w and r count the key's owners, `replicas` is fixed at creation, and
forged peer messages of the new kinds change nothing."""
import time

import pytest

from zmqstore import Retry, errors, protocol
from zmqstore.dynamo.layout import bucket_of
from zmqstore.dynamo.placement import Placement
from zmqstore.testing.abuse import Stranger, received, send
from zmqstore.testing.process import run_node_command, wait_until

RETRY = Retry(max_tries=20, deadline=15.0)
KEYS = 30_000


def converged(c, among=None):
    nodes = [c.nodes[n] for n in (among or c.nodes)]
    return all((n.status() or {}).get("converged") for n in nodes)


def load(c, count, prefix="key"):
    """count keys, key<i> = i, written through every node in turn (pipelined)."""
    size = len(c.nodes)
    for node_id, node in c.nodes.items():
        with node.client(retry=RETRY) as db:
            with db.pipeline(64) as p:
                for i in range(node_id - 1, count, size):
                    p.put(f"{prefix}{i}", i)
                p.execute()


def owners_of(placement, key):
    return placement.owners(bucket_of(key.encode()))


def test_six_nodes_keep_each_key_on_exactly_its_three_owners(cluster):
    c = cluster(size=6, mode="dynamo", args=["--replicas", "3"], keys=False)
    load(c, KEYS)
    wait_until(lambda: converged(c), 60, interval=0.2, message="every node converged")
    placement = Placement(list(c.nodes), 3)
    expected = {n: 0 for n in c.nodes}
    for i in range(KEYS):
        for owner in owners_of(placement, f"key{i}"):
            expected[owner] += 1
    statuses = {n: node.status() for n, node in c.nodes.items()}
    held = {n: st["keys"] for n, st in statuses.items()}
    print("keys per node:", held, "expected:", expected)
    assert held == expected and sum(held.values()) == 3 * KEYS       # every key on exactly its 3 owners
    assert all(abs(k - KEYS / 2) <= 0.15 * KEYS / 2 for k in held.values())
    assert {n: st["partitions_owned"] for n, st in statuses.items()} == \
        {n: len(placement.owned_by(n)) for n in c.nodes}
    assert all(st["replicas"] == 3 for st in statuses.values())
    # Any node serves any key: node 2 owns about half of them and forwards the others.
    with c.nodes[2].client(retry=RETRY) as db:
        with db.pipeline(64) as p:
            for i in range(0, KEYS, 10):
                p.get(f"key{i}")
            assert p.execute() == list(range(0, KEYS, 10))
        with pytest.raises(errors.UnsupportedOperation, match="no node holds every key"):
            list(db.scan())


def test_w_and_r_count_the_keys_owners_and_a_non_owner_forwards(cluster):
    """w and r among the key's 3 owners (a 4th is refused); with one owner down, w = 3 is met
    through a hint; with every owner down, the key is unavailable."""
    c = cluster(size=6, mode="dynamo", args=["--replicas", "3"], keys=False)
    placement = Placement(list(c.nodes), 3)
    key = "quorum-key"
    owners = owners_of(placement, key)
    outsider = next(n for n in c.nodes if n not in owners)
    with c.nodes[outsider].client(retry=RETRY) as db:
        db.put(key, "v1", w=3)           # forwarded to an owner, acknowledged by all 3 owners
        assert db.get(key, r=3) == "v1"
        with pytest.raises(errors.BadArgument, match="exceeds the 3 nodes that hold each key"):
            db.put(key, "v2", w=4)
    statuses = {n: c.nodes[n].status() for n in c.nodes}
    assert all(statuses[n]["keys"] == (1 if n in owners else 0) for n in c.nodes)
    c.nodes[owners[2]].kill()
    # Once the coordinator (the first owner) sees the third down, a fallback holds its copy: w = 3
    # is still met (a sloppy quorum), and the hint waits for the owner.
    wait_until(lambda: not any(p["alive"] for p in c.nodes[owners[0]].status()["peers"] if p["node_id"] == owners[2]),
               10, interval=0.05, message="the coordinator seeing the third owner down")
    with c.nodes[outsider].client(retry=Retry(max_tries=1), timeout=5.0) as db:
        db.put(key, "v2", w=2)           # the two owners left hold it
        db.put(key, "v3", w=3)           # and a fallback for the third
    assert sum(c.nodes[n].status()["hints_pending"] for n in c.nodes if n != owners[2]) >= 1
    for owner in owners[:2]:
        c.nodes[owner].kill()
    with c.nodes[outsider].client(retry=Retry(max_tries=1), timeout=5.0) as db:
        wait_until(lambda: _refused(db, key), 10, interval=0.2, message="no owner reachable: unavailable")


def test_a_write_whose_owners_are_down_is_held_as_a_hint_until_they_return(cluster):
    """Two of a key's three owners killed: a write with w = 2 succeeds through the one owner left
    and a hint on a fallback (sloppy quorum), which holds it durably for each owner that is down.
    Restarted, the owners get it, and every node's hints_pending is 0 within 10 s."""
    c = cluster(size=6, mode="dynamo", args=["--replicas", "3"], keys=False)
    placement = Placement(list(c.nodes), 3)
    key = "hinted-key"
    partition = bucket_of(key.encode())
    owners = placement.owners(partition)
    fallbacks = [n for n in placement.ranking(partition) if n not in owners]
    coordinator, down = owners[0], owners[1:]
    with c.nodes[fallbacks[-1]].client(retry=RETRY) as db:
        db.put("warm-up", 1)             # every node up and heard
    # A coordinator that had not heard an owner of "warm-up" yet (the nodes started moments ago)
    # hands the write to a fallback as a hint; it must be delivered before owners go down, or it
    # stays pending beside the one this test counts.
    wait_until(lambda: all((c.nodes[n].status() or {"hints_pending": 1})["hints_pending"] == 0 for n in c.nodes),
               10, interval=0.05, message="no hint pending before the owners go down")
    for node_id in down:
        c.nodes[node_id].kill()
    wait_until(lambda: not any(p["alive"] for p in c.nodes[coordinator].status()["peers"] if p["node_id"] in down),
               10, interval=0.1, message="the coordinator noticing the two owners down")
    with c.nodes[fallbacks[-1]].client(retry=RETRY) as db:
        db.put(key, "while-down", w=2)   # the owner left and a fallback hold it
    pending = {n: c.nodes[n].status()["hints_pending"] for n in c.nodes if n not in down}
    assert pending == {n: (1 if n in fallbacks[:2] else 0) for n in pending}, pending
    started = time.monotonic()
    for node_id in down:
        c.start(node_id)
    wait_until(lambda: all((c.nodes[n].status() or {"hints_pending": 1})["hints_pending"] == 0 for n in c.nodes),
               10, interval=0.05, message="every hint delivered")
    print(f"hints delivered {time.monotonic() - started:.2f} s after the owners were started")
    for node_id in owners:               # an owner answers from its own data
        with c.nodes[node_id].client(retry=RETRY) as db:
            assert db.get(key) == "while-down"
    assert sum(c.nodes[n].status()["hints_delivered"] for n in fallbacks[:2]) == 2


def test_a_write_whose_owners_are_all_down_is_taken_by_a_fallback_coordinator(cluster):
    """Both owners of a key killed (4 nodes, replicas 2): a non-owner takes the write (w = 2: it
    and a hint on the other fallback), refuses a read it cannot serve whole, and once the owners
    are back they hold the write beside the one it had not seen, no hint is pending and nothing
    is moving."""
    c = cluster(size=4, mode="dynamo", args=["--replicas", "2"], keys=False)
    placement = Placement(list(c.nodes), 2)
    key = "sloppy-key"
    owners = placement.owners(bucket_of(key.encode()))
    fallback = min(n for n in c.nodes if n not in owners)
    with c.nodes[fallback].client(retry=RETRY) as db:
        db.put(key, "before")
    for node_id in owners:
        c.nodes[node_id].kill()
    wait_until(lambda: not any(p["alive"] for p in c.nodes[fallback].status()["peers"] if p["node_id"] in owners),
               10, interval=0.1, message="the fallback noticing both owners down")
    with c.nodes[fallback].client(retry=Retry(max_tries=1)) as db:
        db.put(key, "while-down", w=2)
        assert _refused(db, key)
        assert db.status()["partitions_handing_over"] == 1
    for node_id in owners:
        c.start(node_id, wait=False)
    started = time.monotonic()
    for node_id in owners:
        c.nodes[node_id].wait_ready(15)
    ready = time.monotonic()
    wait_until(lambda: converged(c) and all((c.nodes[n].status() or {"hints_pending": 1})["hints_pending"] == 0
                                            for n in c.nodes), 20, interval=0.05,
               message="the owners holding the write, nothing moving, no hint pending")
    print(f"fallback write handed over {time.monotonic() - started:.2f} s after the owners were started "
          f"({time.monotonic() - ready:.2f} s after they were ready)")
    for node_id in owners:      # the fallback had not seen "before": the two are siblings, none dropped
        with c.nodes[node_id].client(retry=RETRY) as db:
            assert db.get(key) == "while-down"
            assert sorted(v.value for v in db.get_versions(key).siblings) == ["before", "while-down"]
    assert c.nodes[fallback].status()["partitions_moving"] == 0


def _refused(db, key):
    try:
        db.get(key)
        return False
    except errors.Unavailable as exc:
        return "no node holding this key is reachable" in str(exc)


def test_replicas_is_fixed_when_the_cluster_is_created(cluster):
    c = cluster(size=3, mode="dynamo", args=["--replicas", "2"], keys=False)
    with c.nodes[1].client(retry=RETRY) as db:
        db.put("k", 1)
    node = c.nodes[3]
    node.stop()
    node.args = ["--peers", c.peers_json(3), "--mode", "dynamo", "--replicas", "3"]
    code, output = run_node_command(node.command()[3:], timeout=30)
    assert code != 0 and "created with replicas = 2" in output and "--replicas 2" in output
    # A new node (empty data dir) started with another value is refused by its peers, plainly.
    node.data_dir = str(c.base_dir + "/node3-other")
    node.start()
    wait_until(lambda: "runs with replicas = 3, but this node's cluster was created with replicas = 2"
               in c.nodes[1].log(), 10, interval=0.1, message="node 1 refusing node 3's replicas")
    with c.nodes[1].client(retry=RETRY) as db:
        db.put("k", 2)
        assert db.get("k") == 2


def test_forged_sync_and_forward_messages_change_nothing(cluster):
    """DSYNC naming another node's run, writes of the receiver's own origins it never made, another
    `replicas` or partitions beyond 4,095 (and pairs of partitions the two do not share, ignored); DFORWARD holding garbage or a command that is
    never forwarded; a DFORWARD_REPLY sent as a request: each refused, from node 3's own address on
    its identity (the decoder and the checks answer, not the handshake). Nothing changes: keys,
    values and the nodes' liveness."""
    c = cluster(size=3, mode="dynamo", args=["--replicas", "2"], keys=False)
    target = c.nodes[1]
    with target.client(retry=RETRY) as db:
        for i in range(200):
            db.put(f"k{i}", i)
        wait_until(lambda: converged(c), 30, interval=0.2, message="converged")
        before = {n: c.nodes[n].status()["keys"] for n in c.nodes}
        placement = Placement([1, 2, 3], 2)
        node_id, incarnation = target.status()["origin"].split(":")
        run = (int(node_id) << 32) | int(incarnation, 16)
        not_shared = next(p for p in range(4096) if 1 in placement.owners(p) and 3 not in placement.owners(p))
        shared = next(p for p in range(4096) if {1, 3} <= set(placement.owners(p)))
        r3 = (3 << 32) | (5 << 12)
        member = Stranger(source=c.nodes[3].host)
        try:
            sock = member.dealer(target.host, target.peer_port, identity=b"node-3")

            def refused_with(body, line):
                def attempt():      # refusals are logged at most once a second: send until it shows
                    send(sock, body)
                    return line in target.log()
                wait_until(attempt, 10, interval=0.3, message=line)
            send(sock, protocol.encode_peer("DSYNC", 3, r3, run, 1, 0, 2, [[r3 | not_shared, 9]], True, [], []))
            refused_with(protocol.encode_peer("DSYNC", 3, (2 << 32) | (5 << 12), run, 1, 0, 2, [], True, [], []),
                         "is not one of node 3")
            refused_with(protocol.encode_peer("DSYNC", 3, r3, run, 1, 0, 2, [[run | shared, 1 << 40]], True, [], []),
                         "claims write 1099511627776")
            refused_with(protocol.encode_peer("DSYNC", 3, r3, run, 1, 0, 7, [], True, [], []),
                         "node 3 runs with replicas = 7")
            refused_with(protocol.encode_peer("DSYNC", 3, r3, run, 1, 0, 2, [], True, [4096], []),
                         "partitions beyond 4095")
            refused_with(protocol.encode_peer("DFORWARD_REPLY", 3, 1, protocol.encode_ok(1, True)),
                         "DFORWARD_REPLY naming node 3")
            received(sock, 0.5)     # what the target sent node 3's identity so far
            for forward_id, request in ((11, b"\xc1garbage"),
                                        (12, protocol.encode_request("STATUS", b"c" * 16, 1, 1)),
                                        (13, protocol.encode_request("SCAN", b"c" * 16, 1, 1, None, None, None,
                                                                     None, False))):
                send(sock, protocol.encode_peer("DFORWARD", 3, forward_id, 0, request))
            replies = {}
            for frames in received(sock, 3.0):
                message = protocol.decode_peer(frames[-1])
                if message.command == "DFORWARD_REPLY":
                    replies[message.fields[1]] = protocol.decode_reply(message.fields[2])
            assert sorted(replies) == [11, 12, 13] and not any(r.ok for r in replies.values())
            assert "not forwarded between nodes" in replies[12].result[1]
        finally:
            member.close()
        assert [db.get(f"k{i}") for i in range(200)] == list(range(200))
        db.put("after", 1)
        assert db.get("after") == 1
    assert all(n.alive() for n in c.nodes.values())
    wait_until(lambda: converged(c), 30, interval=0.2, message="converged again")
    after = {n: c.nodes[n].status()["keys"] for n in c.nodes}
    assert sum(after.values()) == sum(before.values()) + 2


def test_cli_status_shows_keys_partitions_and_hints_per_node(cluster):
    import subprocess
    import sys
    c = cluster(size=4, mode="dynamo", args=["--replicas", "2"], keys=False)
    load(c, 400)
    wait_until(lambda: converged(c), 30, interval=0.2, message="converged")
    proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *c.cli_args(), "status"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:7] == ["node_id", "address", "alive", "behind", "keys", "partitions", "hints"]
    rows = {int(line.split()[0]): line.split() for line in lines[1:5]}
    statuses = {n: c.nodes[n].status() for n in c.nodes}
    assert {n: int(row[4]) for n, row in rows.items()} == {n: st["keys"] for n, st in statuses.items()}
    assert sum(int(row[4]) for row in rows.values()) == 2 * 400
    assert {n: int(row[5]) for n, row in rows.items()} == {n: st["partitions_owned"] for n, st in statuses.items()}
    assert all(row[6] == "0" and row[3] == "0" for row in rows.values())
    assert "replicas: 2" in proc.stdout and "converged: yes" in proc.stdout


def quiet(c):
    """Every node converged with no partition moving."""
    sts = [n.status() for n in c.nodes.values()]
    return all(st and st["converged"] and st["partitions_moving"] == 0 for st in sts)


def moving(c):
    """Partitions still moving on some node (pulled or handed over)."""
    return sum((n.status() or {"partitions_moving": 1})["partitions_moving"] for n in c.nodes.values())


@pytest.mark.timeout(400)
def test_a_seventh_node_takes_its_share_and_a_removal_restores_every_copy(cluster):
    """6 nodes, replicas = 3, 30,000 keys. A 7th joins (--join) while a client writes and another
    reads through the first six: it pulls about 1/7 of the replica slots from their holders, the old
    owners hand them over, and afterwards every node holds exactly the keys it owns. Then node 3 is
    removed: its partitions are pulled from the owners that remain, back to 3 copies of every key."""
    from zmqstore.testing.load import Reader, Writer
    c = cluster(size=6, mode="dynamo", args=["--replicas", "3"], keys=False)
    load(c, KEYS)
    wait_until(lambda: quiet(c), 60, interval=0.2, message="loaded and converged")
    six = Placement(list(c.nodes), 3)
    with Writer(c, "w", RETRY) as w, Reader(c, KEYS, RETRY) as r:
        w.wait_for(50)
        c.add_node(7)
        started = time.monotonic()
        c.start(7, wait=False)
        c.nodes[7].wait_ready(20)
        wait_until(lambda: not moving(c), 120, interval=0.2, message="node 7 pulled its partitions, the rest handed over")
        took = time.monotonic() - started
        w.wait_for(50)
    wait_until(lambda: quiet(c), 60, interval=0.2, message="converged after the writes")
    seven = Placement(list(c.nodes), 3)
    slots = sum(len(gained) for _lost, gained in six.moves(seven).values())
    st7 = c.nodes[7].status()
    print(f"node 7: {st7['partitions_pulled']} partitions, {st7['keys_pulled']} keys pulled in {took:.1f} s; "
          f"{r.reads} reads and {len(w.acked)} writes meanwhile")
    assert abs(slots / (3 * 4096) - 1 / 7) < 0.02 and st7["partitions_pulled"] == slots == len(seven.owned_by(7))
    assert w.errors == 0 and r.errors == 0 and r.wrong == 0 and r.reads > 100
    total = KEYS + len(w.acked)

    def expected(placement):
        held = {n: 0 for n in placement.members}
        for key in [f"key{i}" for i in range(KEYS)] + list(w.acked):
            for owner in owners_of(placement, key):
                held[owner] += 1
        return held
    assert {n: c.nodes[n].status()["keys"] for n in c.nodes} == expected(seven)
    with c.nodes[7].client(retry=RETRY) as db:
        with db.pipeline(64) as p:
            for i in range(0, KEYS, 7):
                p.get(f"key{i}")
            assert p.execute() == list(range(0, KEYS, 7))
        for key, value in list(w.acked.items())[::10]:
            assert db.get(key) == value
        db.remove_member(3)
    c.nodes[3].stop()
    del c.nodes[3]
    wait_until(lambda: quiet(c), 120, interval=0.2, message="node 3's partitions pulled by the owners left")
    remaining = Placement(list(c.nodes), 3)
    held = {n: c.nodes[n].status()["keys"] for n in c.nodes}
    assert held == expected(remaining) and sum(held.values()) == 3 * total
