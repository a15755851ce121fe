"""ReadIndex reads (GET with read_index, docs/REPLICATION.md "Reads"): linearizable reads that a
secondary serves from its own data after its primary confirms the commit seq to wait for."""
import signal
import subprocess
import sys

import pytest

from zmqstore import Retry, ZmqstoreError, faults, protocol
from zmqstore.testing.abuse import Stranger, received, send
from zmqstore.testing.load import put_pipelined
from zmqstore.testing.process import wait_until

NO_RETRY = Retry(max_tries=1)


def wait_following(c, primary_id, node_ids):
    """Until each of node_ids names primary_id as its primary. A node that voted in the bootstrap is
    a voter before the primary's stream reaches it; until then it answers a ReadIndex read with
    not_primary (the primary is not known yet)."""
    for node_id in node_ids:
        wait_until(lambda: (c.nodes[node_id].status() or {}).get("primary_id") == primary_id, 10,
                   message=f"node {node_id} following node {primary_id}")


def test_secondaries_serve_read_index_reads_that_see_every_acknowledged_write(cluster):
    """With no retry, a not_primary refusal would raise: each read is served by the secondary
    talked to, and each sees the write acknowledged just before it (a stale read of the applied
    data can lag the primary's commit by a HEARTBEAT)."""
    c = cluster()
    wait_following(c, 1, (2, 3))
    secondaries = [c.nodes[2].client(retry=NO_RETRY), c.nodes[3].client(retry=NO_RETRY)]
    try:
        with c.client() as db:
            for i in range(150):
                db.put("k", i)
                for s in secondaries:
                    assert s.get("k", read_index=True) == i
            assert secondaries[0].get("absent", "none", read_index=True) == "none"
            assert db.get("k", read_index=True) == 149       # on the primary: a linearizable read
        assert [s.endpoint for s in secondaries] == [c.nodes[2].endpoint, c.nodes[3].endpoint]
        proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *c.nodes[2].cli_args(), "--json", "get", "k",
                               "--read-index"], capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stdout.strip()) == (0, "149"), proc.stderr
    finally:
        for s in secondaries:
            s.close()


def test_a_read_index_read_waits_until_the_secondary_has_applied_the_commit(cluster):
    """Node 3 misses 3,000 writes and is started again: a read it takes as soon as it answers
    waits until it has caught up to the commit seq its primary names, so it sees the last write."""
    c = cluster()
    with c.client() as db:
        db.put("late", "before")
        c.nodes[3].stop()
        put_pipelined(db, {f"filler{i}": "x" * 200 for i in range(3000)})
        db.put("late", "after")
    c.start(3)
    with c.nodes[3].client(retry=Retry(max_tries=20, delay=0.05, deadline=15)) as s:
        assert s.get("late", read_index=True) == "after"
        assert s.endpoint == c.nodes[3].endpoint


def test_a_read_index_read_is_not_answered_while_the_primary_cannot_confirm_it(cluster):
    """With the primary paused, a secondary's ask goes unanswered: the read fails (the client's
    timeout, before the election interval of 0.5 s has passed) rather than answering from data
    nobody vouched for."""
    c = cluster()
    with c.client() as db:
        db.put("k", 1)
    wait_following(c, 1, (2,))
    with c.nodes[2].client(timeout=0.45, retry=NO_RETRY) as s:
        assert s.get("k", read_index=True) == 1
        c.nodes[1].signal(signal.SIGSTOP)
        try:
            with pytest.raises(ZmqstoreError):
                s.get("k", read_index=True)
        finally:
            c.nodes[1].signal(signal.SIGCONT)


def test_a_read_held_by_a_secondary_that_becomes_primary_is_served_by_it(cluster):
    """The primary is paused while node 2 holds a ReadIndex read: node 2's ask goes unanswered,
    node 2 is elected (node 1 is silent for the election interval) and answers the read itself,
    with the data as of its own confirmed commit. No retry: a refusal or timeout would raise."""
    c = cluster(args=["--replication-timeout", "8"])
    with c.client() as db:
        db.put("k", "before the pause")
    wait_following(c, 1, (2,))
    with c.nodes[2].client(timeout=9.0, retry=NO_RETRY) as s:
        assert s.get("k", read_index=True) == "before the pause"
        c.nodes[1].signal(signal.SIGSTOP)
        try:
            assert s.get("k", read_index=True) == "before the pause"
            status = c.nodes[2].status()
            assert status["role"] == "primary" and status["term"] > 1
        finally:
            c.nodes[1].signal(signal.SIGCONT)


def test_beside_a_node_of_a_release_without_read_index_a_secondary_redirects_to_the_primary(cluster):
    """Node 3 poses as a release of peer version 2, which has no READ_INDEX: the others speak 2,
    so node 2 sends no ask (it would go unanswered) and redirects the read to the primary, where a
    client that follows redirects gets a linearizable read."""
    c = cluster(start=False)
    c.start(1, wait=False)
    c.start(2, wait=False)
    c.start(3, wait=False, env={faults.PEER_VERSION_ENV: "2"})
    for node in c.nodes.values():
        node.wait_ready(20)
    with c.client() as db:
        db.put("k", "v")

    def redirected():
        with c.nodes[2].client(retry=NO_RETRY) as s:
            try:
                s.get("k", read_index=True)
            except ZmqstoreError as exc:
                return exc.code == "not_primary" and exc.details.get("primary_id") == 1
            return False
    wait_until(redirected, 10, message="node 2 redirecting once it knows node 3's versions")
    with c.client() as db:              # names node 1 first: served there
        assert db.get("k", read_index=True) == "v"
    with c.nodes[2].client() as s:      # follows the redirect
        assert s.get("k", read_index=True) == "v" and s.endpoint == c.nodes[1].endpoint


def test_read_index_is_refused_where_it_means_nothing(cluster, nodes, tmp_path):
    c = cluster(size=2, mode="dynamo")
    with c.nodes[1].client(retry=NO_RETRY) as db:
        with pytest.raises(ZmqstoreError) as info:
            db.get("k", read_index=True)
        assert info.value.code == "unsupported_operation"
    # datastore-cli passes --read-index on: dynamo mode refuses it (a plain get would say "absent")
    proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *c.nodes[1].cli_args(), "get", "k",
                           "--read-index"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unsupported_operation" in proc.stderr, (proc.stdout, proc.stderr)
    leader = cluster()
    with leader.nodes[2].client(retry=NO_RETRY) as db:
        with pytest.raises(ZmqstoreError) as info:
            db.get("k", stale=True, read_index=True)
        assert info.value.code == "bad_argument"
    standalone = nodes(data_dir=tmp_path / "standalone")
    with standalone.client() as db:
        db.put("k", 1)
        assert db.get("k", read_index=True) == 1


def test_a_read_index_ask_from_a_stranger_gets_no_answer(cluster):
    """READ_INDEX to the primary's peer port from an address in no peer list, naming node 99 or a
    member, is dropped. Control: the same ask from node 3's host, naming node 3, is answered with
    the commit seq (without keys a member's host is trusted, docs/SECURITY.md)."""
    c = cluster(keys=False)
    primary = c.nodes[1]
    with c.client() as db:
        db.put("k", 1)
    status = primary.status()
    term, commit = status["term"], status["commit_seq"]
    stranger, member = Stranger(), Stranger(source=c.nodes[3].host)
    try:
        socks = [(stranger.dealer(primary.host, primary.peer_port), node_id) for node_id in (99, 2, 3)]
        for sock, node_id in socks:
            send(sock, protocol.encode_peer("READ_INDEX", node_id, term, 1))
        control = member.dealer(primary.host, primary.peer_port, identity=b"node-3")
        send(control, protocol.encode_peer("READ_INDEX", 3, term, 1))
        answers = [protocol.decode_peer(frames[-1]) for frames in received(control, 2.0)]
        replies = [m for m in answers if m.command == "READ_INDEX_REPLY"]
        assert replies and list(replies[0].fields[:3]) == [term, 1, 1] and replies[0].fields[3] >= commit
        for sock, _ in socks:
            assert received(sock, 0.5) == []
    finally:
        stranger.close()
        member.close()
    wait_until(lambda: primary.status() is not None, 5, message="the primary answering")
    assert primary.status()["term"] == term
