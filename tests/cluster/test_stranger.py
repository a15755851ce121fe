"""A stranger against real nodes (issue 11): a process in no peer list, on its own loopback address
(127.0.0.9), without keys, sending frames built from docs/PROTOCOL.md. Each test replays one row of the
issue's table and asserts the harmless outcome: no node dies, terms do not move, nothing is
acknowledged without its real quorum, no value changes, memory stays bounded, and a well-behaved
client keeps working. Where the stranger is kept out by its address, a member's address doing the
same shows that the test's own receive path works (the assertion can fail)."""
import os
import socket
import stat
import threading
import time

import pytest
import zmq

from zmqstore import Retry, ZmqstoreError, errors, protocol
from zmqstore.testing import abuse
from zmqstore.testing.abuse import CID, STRANGER, Stranger, forged_role, received, send
from zmqstore.testing.process import wait_until

NO_RETRY = Retry(max_tries=1)


def rss_mb(node):
    return abuse.rss_mb(node.proc.pid)


def terms(cluster):
    return {n.node_id: (n.status() or {}).get("term") for n in cluster.nodes.values()}


@pytest.fixture
def stranger():
    s = Stranger()
    yield s
    s.close()


@pytest.fixture
def make_cluster(cluster):
    """Clusters without keys: the stranger has none (tests/conftest.py stops them and prints their logs)."""
    def make(mode="leader", size=3):
        return cluster(size=size, mode=mode, keys=False)
    return make


def test_a_term_overflow_attempt_changes_nothing_and_survives_a_full_restart(make_cluster, stranger):
    """Row 1: an ACK with term 2**64 - 1 from 'node 99' to every node, on every port, used to brick the
    cluster. Now it is refused (a term above 2**63 - 1 is malformed; the peer port does not admit the
    stranger; the client port answers wrong_port) and nobody's term moves."""
    c = make_cluster()
    before = terms(c)
    for node in c.nodes.values():
        for port in (node.port, node.peer_port):
            sock = stranger.dealer(node.host, port)
            for term in ((1 << 64) - 1, protocol.TERM_MAX):
                for node_id in (99, 2):
                    send(sock, protocol.encode_peer("ACK", node_id, term, 10**9, 10**9, True))
                send(sock, forged_role(term))
    client_port = stranger.dealer(c.nodes[1].host, c.nodes[1].port)
    send(client_port, protocol.encode_peer("ACK", 99, (1 << 64) - 1, 1, 1, True))
    reply = protocol.decode_reply(received(client_port, 5)[0][-1])
    assert not reply.ok and reply.result[0] == "wrong_port"
    with c.client(timeout=2.0) as db:
        db.put("after-overflow", 1)
    assert terms(c) == before
    assert all(n.alive() for n in c.nodes.values())
    c.stop_all()
    for node_id in c.nodes:
        c.start(node_id, wait=False)
    c.wait_primary(5)
    with c.client(timeout=2.0) as db:
        assert db.get("after-overflow") == 1
        db.put("after-restart", 2)


def test_a_storm_of_forged_term_bumps_does_not_move_terms(make_cluster, stranger):
    """Row 3: every 200 ms for 10 s, term + 1 to every node on every port (ACK, ROLE naming the
    stranger as primary, VOTE_REQUEST). Target: at least 90% of a well-behaved client's PUTs succeed
    and terms move by at most 3. The stranger is not admitted, so terms do not move at all."""
    c = make_cluster()
    before = terms(c)
    socks = [stranger.dealer(n.host, port) for n in c.nodes.values() for port in (n.port, n.peer_port)]
    ok = failed = 0
    with c.client(timeout=1.0, retry=NO_RETRY) as db:
        end = time.monotonic() + 10
        next_storm = 0.0
        i = 0
        while time.monotonic() < end:
            if time.monotonic() >= next_storm:
                next_storm = time.monotonic() + 0.2
                term = max(t or 0 for t in terms(c).values()) + 1
                for sock in socks:
                    send(sock, protocol.encode_peer("ACK", 2, term, 10**6, 10**6, True))
                    send(sock, forged_role(term, node_id=3))
                    send(sock, protocol.encode_peer("VOTE_REQUEST", term, 2, 10**6, term))
            try:
                db.put(f"storm-{i}", i)
                ok += 1
            except ZmqstoreError:
                failed += 1
            i += 1
    assert ok >= 0.9 * (ok + failed), f"{ok} PUTs succeeded, {failed} failed"
    after = terms(c)
    assert after == before, f"terms moved from {before} to {after}"


def test_forged_acks_do_not_acknowledge_a_write_without_its_quorum(make_cluster, stranger):
    """Row 2: with both secondaries killed, ACKs naming them (current term, every seq, every round)
    used to make the isolated primary acknowledge a PUT and serve a linearizable read. Forged from the
    stranger's address, or from node 3's host naming node 2, they are not counted: the PUT is not
    acknowledged and the read is not served. Control first: the same ACKs from node 3's host naming
    node 3, on node 3's identity, are admitted and commit a write (the path works; and without keys a
    member's host is trusted, docs/SECURITY.md)."""
    c = make_cluster()
    primary = c.nodes[1]
    term = primary.status()["term"]
    c.nodes[2].kill()
    c.nodes[3].kill()
    member = Stranger(source=c.nodes[3].host)
    try:
        control = member.dealer(primary.host, primary.peer_port, identity=b"node-3")
        stop = threading.Event()
        entry = primary.status()["last_seq"] + 1        # the seq the control's write will get

        def keep_acking():
            round_ = 1
            while not stop.is_set():
                send(control, protocol.encode_peer("ACK", 3, term, entry, round_, True))
                round_ += 1
                time.sleep(0.02)
        acker = threading.Thread(target=keep_acking)
        acker.start()
        try:
            with primary.client(timeout=3.0, retry=NO_RETRY) as db:
                db.put("admitted", 1)
        finally:
            stop.set()
            acker.join(10)
        forgers = [(stranger.dealer(primary.host, primary.port), (2, 3)),
                   (stranger.dealer(primary.host, primary.peer_port), (2, 3)),
                   (member.dealer(primary.host, primary.peer_port), (2,))]
        with primary.client(timeout=3.0, retry=NO_RETRY) as db:
            for round_ in range(1, 200):
                for sock, node_ids in forgers:
                    for node_id in node_ids:
                        for seq in (entry + 1, 10**6 + round_):
                            send(sock, protocol.encode_peer("ACK", node_id, term, seq, round_, True))
            with pytest.raises(ZmqstoreError):      # replication_timeout, or not_primary once it stepped down
                db.put("forged-quorum", 1)
            with pytest.raises(ZmqstoreError):
                db.get("forged-quorum")
    finally:
        member.close()
    assert primary.alive()


def test_a_stranger_can_neither_subscribe_nor_fetch(make_cluster, stranger):
    """Row 6: SUB on any PUB port, FETCH and SNAPSHOT as 'node 99' or as a member: nothing comes back.
    A SUB from a member's host, connected the same way, does receive the stream."""
    c = make_cluster()
    subs = [stranger.sub(n.host, n.pub_port) for n in c.nodes.values()]
    member = Stranger(source=c.nodes[2].host)
    try:
        member_sub = member.sub(c.nodes[1].host, c.nodes[1].pub_port)
        peers = [stranger.dealer(n.host, n.peer_port) for n in c.nodes.values()]
        for sock in peers:
            for node_id in (99, 2, 3):
                send(sock, protocol.encode_peer("FETCH", node_id, 1, 1))
                send(sock, protocol.encode_peer("SNAPSHOT", node_id, 1, 0, None))
        with c.client(timeout=2.0) as db:
            for i in range(20):
                db.put(f"secret-{i}", "value")
        assert all(received(s, 0.5) == [] for s in subs), "a stranger's SUB received the change stream"
        assert all(received(s, 0.5) == [] for s in peers), "a stranger's FETCH or SNAPSHOT was answered"
        assert received(member_sub, 2.0), "a member's SUB received nothing: the test cannot see the stream"
    finally:
        member.close()


def test_decoding_bombs_do_not_stall_the_primary(make_cluster, stranger):
    """Row 7: 400 requests of ~3 KB whose msgpack declares 1,000 nested arrays of 10,013 items each
    used to stall a primary for 50 s. Every well-behaved PUT must complete within 1 s while the bombs
    arrive and for 10 s after, with no election."""
    c = make_cluster()
    primary = c.nodes[1]
    term = primary.status()["term"]
    bomb = abuse.nested_bomb()
    socks = [stranger.dealer(primary.host, primary.port), stranger.dealer(primary.host, primary.peer_port)]
    with c.client(timeout=1.0, retry=NO_RETRY) as db:
        for i in range(400):
            for sock in socks:
                send(sock, bomb)
            if i % 20 == 0:
                db.put(f"during-{i}", i)
        end = time.monotonic() + 10
        i = 0
        while time.monotonic() < end:
            db.put(f"after-{i}", i)
            i += 1
    replies = received(socks[0], 1.0)
    assert replies and all(protocol.decode_reply(r[-1]).result[0] == "malformed" for r in replies)
    assert terms(c) == {n: term for n in c.nodes}


def test_an_8_mib_subscription_is_dropped_without_growing_memory(make_cluster, stranger):
    """Row 8: one 8 MiB subscription message to a PUB port grew RSS from 34 to 417 MB and caused an
    election. From the stranger's address it is refused at the handshake; from a member's host it is
    over the PUB's 256-byte inbound limit and drops the connection. RSS grows by under 100 MB and
    nobody stands for election."""
    c = make_cluster()
    primary = c.nodes[1]
    term = primary.status()["term"]
    before = rss_mb(primary)
    # Each sender is a process of its own: pyzmq crashes closing an XSUB whose 8 MiB message the
    # other side refused, so the sender leaves with os._exit instead of closing.
    senders = [abuse.subscription_bomb(primary.host, primary.pub_port, source)
               for source in (STRANGER, c.nodes[2].host)]
    try:
        with c.client(timeout=1.0, retry=NO_RETRY) as db:
            for i in range(100):
                db.put(f"sub-bomb-{i}", i)
                time.sleep(0.02)    # the load runs for about 2 s while the frames arrive
        assert rss_mb(primary) - before < 100, f"RSS grew from {before:.0f} MB to {rss_mb(primary):.0f} MB"
    finally:
        for proc in senders:
            proc.kill()
            proc.wait(10)
    assert terms(c) == {n: term for n in c.nodes}


def test_dynamo_forged_push_and_ack_change_nothing(make_cluster, stranger):
    """Rows 4 and 5: a DPUSH claiming node 2 with context and clock UINT64_MAX overwrote a key and
    made it unwritable; a forged DACK with the only peer dead acknowledged a w=2 PUT. Now the key
    keeps its value and stays writable, and the w=2 PUT times out."""
    c = make_cluster(mode="dynamo", size=2)
    one = c.nodes[1]
    with one.client(timeout=3.0, retry=NO_RETRY) as db:
        db.put("victim", "original")
        u64 = (1 << 64) - 1
        state = protocol.encode_key_state({u64 >> 1: u64}, [(u64 >> 1, u64, u64, protocol.pack_value("forged"))])
        socks = [stranger.dealer(one.host, one.port), stranger.dealer(one.host, one.peer_port)]
        for sock in socks:
            send(sock, protocol.encode_peer("DPUSH", 2, b"victim", state))
        wait_until(lambda: received(socks[0], 0.2), 5, message="wrong_port for the DPUSH on the client port")
        assert db.get("victim") == "original"
        db.put("victim", "rewritten")
        assert db.get("victim") == "rewritten"
        c.nodes[2].kill()
        node_id, incarnation = db.status()["origin"].split(":")     # status shows "node:incarnation"
        origin = int(node_id) << 32 | int(incarnation, 16)
        for sock in socks:
            for seq in range(1, 100):
                send(sock, protocol.encode_peer("DACK", 2, origin, seq))
        with pytest.raises(errors.ReplicationTimeout):
            db.put("needs-two", 1, w=2)
    assert one.alive()


def test_a_forged_dynamo_membership_changes_nothing(make_cluster, stranger):
    """A DMEMBERS claiming node 2, removing nodes 1 and 2 and adding the stranger, from 127.0.0.9:
    refused with the connection; the membership stays. The same message from node 2's address (a
    member's host, without keys) is heard: the membership changes, so the test can fail."""
    c = make_cluster(mode="dynamo", size=2)
    one = c.nodes[1]
    own = [protocol.DynamoMember(n.node_id, n.host, n.port, n.pub_port, n.peer_port, None, 9, True, 2)
           for n in c.nodes.values()]
    forged = protocol.encode_peer("DMEMBERS", 2, protocol.encode_dynamo_members(
        [*own, protocol.DynamoMember(9, STRANGER, 9000, 10000, 11000, None, 9, False, 2)]), [])
    sock = stranger.dealer(one.host, one.peer_port)
    send(sock, forged)
    wait_until(lambda: f"refused a connection from {STRANGER}" in one.log(), 10, message="the stranger refused")
    with one.client(retry=NO_RETRY) as db:
        assert [m["node_id"] for m in db.members()] == [1, 2]
        db.put("still", "writable")
    # From a member's host the forgery is taken for node 2's word (hosts are the trust rule without
    # keys, docs/SECURITY.md): node 9 becomes a member of node 1's view.
    member = Stranger(source=c.nodes[2].host)
    try:
        control = member.dealer(one.host, one.peer_port, identity=b"node-2")
        send(control, protocol.encode_peer("DMEMBERS", 2, protocol.encode_dynamo_members(
            [protocol.DynamoMember(9, "127.0.0.10", 9000, 10000, 11000, None, 1, False, 2)]), []))
        wait_until(lambda: 9 in [m["node_id"] for m in (one.status() or {}).get("members", [])], 10,
                   message="a member's DMEMBERS heard")
    finally:
        member.close()
    assert one.alive()


def test_data_dirs_are_private(make_cluster):
    """Row 12: data dirs were created 0755 and their files 0644. No file or dir in a data dir may be
    readable by group or others."""
    c = make_cluster()
    with c.client(timeout=2.0) as db:
        db.put_many({f"k{i}": i for i in range(100)})
    for node in c.nodes.values():
        for root, dirs, files in os.walk(node.data_dir):
            for name in [root, *(os.path.join(root, f) for f in files)]:
                mode = stat.S_IMODE(os.lstat(name).st_mode)
                assert not mode & 0o077, f"{name} has mode {oct(mode)}"


@pytest.mark.parametrize("batch", [1, 60], ids=["one per message", "batches of 60"])
def test_unread_replies_are_bounded_in_bytes(make_cluster, stranger, batch):
    """Row 9: 1,500 GETs of a 1 MiB value never read on one connection grew RSS from 40 to 1,540 MB.
    Now a connection's unread replies are held to client_output_limit (64 MiB) in the node's queue and
    as much again in ZeroMQ's: RSS grows by under 300 MB, and a second client's GET answers within 1 s.
    The same sent as batches (docs/PROTOCOL.md section 2), whose replies may share messages: a message
    is never larger than the largest single reply, so the same bounds hold."""
    c = make_cluster()
    primary = c.nodes[1]
    with c.client(timeout=5.0) as db:
        db.put("big", os.urandom(1_000_000))
    before = rss_mb(primary)
    sock = stranger.dealer(primary.host, primary.port)
    sock.setsockopt(zmq.RCVHWM, 1)          # read nothing: the node's replies pile up on its side
    sock.setsockopt(zmq.RCVBUF, 1 << 16)
    bodies = [protocol.encode_request("GET", CID, i, 1, b"big", True) for i in range(1, 1501)]
    for i in range(0, len(bodies), batch):
        sock.send_multipart(bodies[i:i + batch])
    peak = before
    with c.client(timeout=1.0, retry=NO_RETRY) as db:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert len(db.get("big", stale=True)) == 1_000_000
            peak = max(peak, rss_mb(primary))
    assert peak - before < 300, f"RSS grew from {before:.0f} MB to {peak:.0f} MB"
    assert "is not reading its replies" in primary.log()


def test_a_ping_flood_does_not_starve_another_client(make_cluster, tmp_path):
    """Row 10: a PING flood (about 27k/s) from one client took a second client's p50 from 4 to 279 ms.
    Every well-behaved PUT must still complete within 1 s while the flood is served (the latency
    figures are in docs/BENCHMARKS.md)."""
    c = make_cluster()
    primary = c.nodes[1]
    count = tmp_path / "flood-replies"
    flood = abuse.ping_flood(primary.host, primary.port, 10, count)
    try:
        # The flood writes its count once it has 1,000 replies, or when it ends after 10 s. This has
        # failed in CI with no file after 10 s (twice, under load, cause unknown): wait past the
        # flood's end so that a failure says how many replies it had, and whether it exited.
        try:
            wait_until(count.exists, 25, message="the flood reporting")
        except TimeoutError:
            raise AssertionError(f"the flood wrote no count within 25 s; its exit status: {flood.poll()}") from None
        assert int(count.read_text()) >= 1000, f"the flood had only {count.read_text()} replies by {count}"
        with c.client(timeout=1.0, retry=NO_RETRY) as db:
            end = time.monotonic() + 6
            i = 0
            while time.monotonic() < end:
                db.put(f"flooded-{i}", i)
                i += 1
        assert flood.poll() is None, "the flood ended before the well-behaved client did"
        assert i > 50
        flood.wait(20)
        assert int(count.read_text()) > 20_000, f"the flood got only {count.read_text()} replies"
    finally:
        flood.kill()
        flood.wait(10)


def test_connections_beyond_max_connections_are_refused(nodes, stranger, tmp_path):
    """Row 11: 11,821 idle connections took 303 MB and 11,856 open files. Connections beyond
    max_connections, or beyond max_connections_per_host from one address, are refused at the
    handshake; sockets that never finish a handshake fill only their own host's share. Open files stay
    near the caps, a client connected before keeps working, a new client from another host gets in
    meanwhile, and the stranger's host is served again once its connections close."""
    conf = tmp_path / "cap.ini"
    conf.write_text("[cluster]\nmax_connections = 100\nmax_connections_per_host = 30\n")
    node = nodes(args=["--config", str(conf)], host="127.0.0.2", keys=False)     # a stranger without keys
    silent = []
    with node.client(timeout=1.0, retry=NO_RETRY) as early:
        early.put("early", 1)
        files_before = len(os.listdir(f"/proc/{node.proc.pid}/fd"))
        socks = [stranger.dealer(node.host, node.port) for _ in range(200)]
        for _ in range(100):        # connected, and never a byte: the handshake never starts
            sock = socket.create_connection((node.host, node.port), source_address=("127.0.0.7", 0))
            silent.append(sock)
        for sock in socks:
            send(sock, protocol.encode_request("PING", CID, 1, 1))
        answered = sum(bool(received(s, 0.01)) for s in socks)
        wait_until(lambda: "max_connections_per_host = 30 reached" in node.log(), 5, message="refusals logged")
        answered += sum(bool(received(s, 0.01)) for s in socks)
        files = len(os.listdir(f"/proc/{node.proc.pid}/fd"))
        assert 20 <= answered <= 30, f"{answered} of the stranger's 200 connections were served (cap 30 a host)"
        assert files - files_before < 200, f"open files went from {files_before} to {files}"
        early.put("still-served", 2)
        assert _new_client_gets_in(node), "a client from another host was locked out"
        for sock in socks:
            sock.close(linger=0)
        stranger.socks.clear()
        wait_until(lambda: _gets_a_reply(stranger.dealer(node.host, node.port)), 10,
                   message="a new connection from the stranger's host served once its others left")
    for sock in silent:
        sock.close()


def _gets_a_reply(sock):
    send(sock, protocol.encode_request("PING", CID, 1, 1))
    return bool(received(sock, 0.5))


def _new_client_gets_in(node):
    try:
        with node.client(timeout=0.5, retry=NO_RETRY) as db:
            return db.ping() == 1
    except ZmqstoreError:
        return False


def test_a_strangers_watches_are_bounded_and_touch_nobody_elses(make_cluster, stranger):
    """Change feeds (issue 14, docs/WATCH.md) as a stranger would use them: 64 watches with the
    largest credit on one connection that never reads, then one more; a WATCH_CREDIT for another
    connection's watch; a bad position. The node answers each with a documented code, caps what
    the unread connection can make it hold (its watches end when its replies are dropped), RSS stays
    bounded while 20 MB are written, and a well-behaved watcher elsewhere gets every change."""
    c = make_cluster()
    primary = c.nodes[1]
    hog = stranger.dealer(primary.host, primary.port)
    hog.setsockopt(zmq.RCVHWM, 1)           # it reads nothing: the node's replies pile up on its side
    hog.setsockopt(zmq.RCVBUF, 1 << 16)
    for rid in range(1, 65):
        send(hog, protocol.encode_request("WATCH", CID, rid, rid, b"", None, False, protocol.UINT64_MAX, False))
    wait_until(lambda: (primary.status() or {}).get("watches", {}).get("open") == 64, 10, message="64 watches")
    probe = stranger.dealer(primary.host, primary.port)
    send(probe, protocol.encode_request("WATCH_CREDIT", CID, 100, 100, 1, 1 << 20))      # the hog's watch 1
    send(probe, protocol.encode_request("WATCH", CID, 101, 101, b"", [[1, 2]], False, 100, False))
    replies = {r.request_id: r for r in (protocol.decode_reply(m[-1]) for m in received(probe, 3))}
    assert replies[1].result[0] == "unavailable"          # no watch 1 on *this* connection
    assert replies[101].result[0] == "bad_argument"       # a vector in leader mode
    for rid in range(102, 167):             # 65 watches on this connection
        send(probe, protocol.encode_request("WATCH", CID, rid, rid, b"none:", None, False, 1000, False))
    replies = {r.request_id: r for r in (protocol.decode_reply(m[-1]) for m in received(probe, 3))}
    assert replies[166].result[0] == "unavailable" and all(replies[r].ok for r in range(102, 166))   # 64 at most
    before = rss_mb(primary)
    peak = before
    with c.client(timeout=5.0) as db, db.watch("v") as good:
        value = os.urandom(200_000)
        for i in range(100):
            db.put(f"v{i:03d}", value)
            peak = max(peak, rss_mb(primary))
        got = []
        end = time.monotonic() + 20
        while len(got) < 100 and time.monotonic() < end:
            got += good.poll(1.0)
    assert [e.key for e in got] == [f"v{i:03d}" for i in range(100)] and all(e.value == value for e in got)
    assert peak - before < 300, f"RSS grew from {before:.0f} MB to {peak:.0f} MB"
    watches = primary.status()["watches"]
    assert watches["watches_dropped"] >= 64 and watches["in_flight_max"] <= 8 << 20 << 1


def test_forged_peer_versions_and_fields_change_nothing(make_cluster, stranger):
    """Peer messages with an out-of-range, huge or non-integer peer version, or a ROLE whose
    `versions` or `space_alarm` field is malformed, sent from node 3's own address on its identity
    (past the handshake, so the decoder is what answers) and from the stranger: every one is refused
    with a line, no node dies, terms do not move, and writes are still accepted (a malformed ROLE
    claiming a space alarm does not stop them)."""
    import msgpack
    c = make_cluster()
    primary = c.nodes[c.wait_primary(10)]
    before = terms(c)

    def role(versions, alarm):
        return [protocol.PEER_VERSION, "ROLE", 3, before[3], "secondary", 1, 0, 0, 0, True, True, "x:1", "x:2",
                alarm, versions]
    bodies = [msgpack.packb(m, use_bin_type=True) for m in (
        [(1 << 64) - 1, "ROLE"], [-1, "ACK"], ["2", "FETCH", 3, 1, 1], [None, "FETCH"], [True, "FETCH"],
        role([5, 1], True), role([(1 << 64) - 1, 2], True), role("2..2", True), role([2, 2], 1), role([2, 2] * 500, True),
        role([2, 2], "x" * 300_000))]
    member = Stranger(source=c.nodes[3].host)
    try:
        socks = [member.dealer(primary.host, primary.peer_port, identity=b"node-3"),
                 stranger.dealer(primary.host, primary.peer_port, identity=b"node-3")]
        for sock in socks:
            for body in bodies:
                send(sock, body)
        wait_until(lambda: "refusing peer messages from node 3: peer protocol version" in primary.log(), 10,
                   interval=0.1, message="the out-of-range version refused with its line")
        wait_until(lambda: "a malformed peer message" in primary.log(), 10, interval=0.1,
                   message="the malformed fields refused")
        with c.client(timeout=3.0, retry=Retry(max_tries=10, deadline=10)) as db:
            db.put("after-forgery", 1)      # no no_space: the forged alarm was not believed
            assert db.get("after-forgery") == 1
        assert all(n.alive() for n in c.nodes.values()) and terms(c) == before
        assert all(not v["space_alarm"] for v in primary.status()["views"].values())
    finally:
        member.close()
