"""Peer protocol versions across releases (docs/OPERATIONS.md, "Upgrading"): a node of a release
whose peer version this one does not accept is refused, with one plain line on each side, and the
others go on without it; started again on this release, it rejoins. The other release is a real
node process posing as one (faults.py, ZMQSTORE_TEST_PEER_VERSION): it encodes its peer messages in
the next version and accepts only that one."""
import re

import pytest

from zmqstore import Retry, faults, protocol
from zmqstore.testing.load import put_pipelined
from zmqstore.testing.process import wait_until

NEXT = protocol.PEER_VERSION + 1
OTHER_RELEASE = {faults.PEER_VERSION_ENV: str(NEXT)}
RETRY = Retry(max_tries=40, deadline=20)


def refusal(version, lowest, highest):
    """The line a node logs when refusing a peer's messages of `version`."""
    return re.compile(rf"refusing peer messages from node \d+: peer protocol version {version}; this node accepts "
                      rf"{lowest}\.\.{highest}\. It runs a release")


def peer_alive(status, peer_id, mode):
    if mode == "dynamo":
        return any(p["alive"] for p in status["peers"] if p["node_id"] == peer_id)
    return status["views"][peer_id]["alive"]


@pytest.mark.parametrize("mode", ["leader", "dynamo"])
def test_a_node_of_a_release_whose_peer_version_does_not_overlap_is_refused_plainly_then_rejoins(cluster, mode):
    c = cluster(size=3, mode=mode, start=False)
    c.start(1, wait=False)
    c.start(2, wait=False)
    c.start(3, wait=False, env=OTHER_RELEASE)
    for node in c.nodes.values():
        node.wait_ready(20)
    if mode == "leader":
        c.wait_primary(20, among=(1, 2))
    lowest, highest = protocol.PEER_VERSIONS
    ours, theirs = refusal(NEXT, lowest, highest), refusal(protocol.PEER_VERSION, NEXT, NEXT)
    wait_until(lambda: ours.search(c.nodes[1].log()) and ours.search(c.nodes[2].log()), 10, interval=0.1,
               message="nodes 1 and 2 refusing node 3's version")
    wait_until(lambda: theirs.search(c.nodes[3].log()), 10, interval=0.1, message="node 3 refusing theirs")
    assert len(ours.findall(c.nodes[1].log())) == 1       # said once a minute per peer, not per message

    # The two of one release work together; node 3 is not one of them.
    with c.nodes[1].client(retry=RETRY) as db:
        db.put(b"upgraded", "before")
    with c.nodes[2].client(retry=RETRY) as db:
        wait_until(lambda: db.get(b"upgraded", stale=True) == "before", 10, interval=0.05,
                   message="node 2 holding the write")
    st1, st3 = c.nodes[1].status(), c.nodes[3].status()
    assert not peer_alive(st1, 3, mode) and peer_alive(st1, 2, mode)
    assert not peer_alive(st3, 1, mode) and not peer_alive(st3, 2, mode)
    with c.nodes[3].client(retry=Retry(max_tries=1), timeout=1.0) as db:
        assert db.get(b"upgraded", stale=True) is None

    # Node 3 started again on this release (its data dir kept) catches up like any restarted node.
    c.nodes[3].stop()
    c.start(3, env={})
    with c.nodes[3].client(retry=RETRY) as db:
        wait_until(lambda: db.get(b"upgraded", stale=True) == "before", 20, interval=0.05,
                   message="node 3 catching up on this release")
    wait_until(lambda: peer_alive(c.nodes[1].status() or {"peers": [], "views": {3: {"alive": False}}}, 3, mode),
               10, interval=0.05, message="node 1 hearing node 3")


@pytest.mark.parametrize("mode", ["leader", "dynamo"])
def test_a_node_of_the_next_release_that_still_accepts_this_version_runs_beside_it(cluster, mode):
    """The next release encodes in this version while it accepts the next one too: it is a member
    like any other, and its peers log the range it announces."""
    c = cluster(size=3, mode=mode, start=False)
    c.start(1, wait=False)
    c.start(2, wait=False)
    c.start(3, wait=False, env={faults.PEER_VERSION_ENV: f"{protocol.PEER_VERSION}-{NEXT}"})
    for node in c.nodes.values():
        node.wait_ready(20)
    announced = f"node 3 accepts peer protocol versions {protocol.PEER_VERSION}..{NEXT} (this node: " \
                f"{protocol.PEER_VERSIONS[0]}..{protocol.PEER_VERSIONS[1]})"
    wait_until(lambda: announced in c.nodes[1].log() and announced in c.nodes[2].log(), 10, interval=0.1,
               message="nodes 1 and 2 noting node 3's range")
    if mode == "leader":
        c.wait_primary(20)
    with c.client(retry=RETRY) as db:
        db.put("from-the-cluster", 2)
    with c.nodes[3].client(retry=RETRY) as db:
        wait_until(lambda: db.get("from-the-cluster", stale=True) == 2, 10, interval=0.05,
                   message="node 3 replicating")
        if mode == "dynamo":
            db.put("from-node-3", 3)        # and its writes reach the others
    if mode == "dynamo":
        with c.nodes[1].client(retry=RETRY) as db:
            wait_until(lambda: db.get("from-node-3") == 3, 10, interval=0.05, message="node 3's write on node 1")
    assert "refusing peer messages" not in "".join(n.log() for n in c.nodes.values())



def _pipelined_puts(c, db, prefix, puts):
    """How many log entries `puts` pipelined puts took on the primary (fewer than puts: shared)."""
    primary = c.nodes[c.wait_primary(20)]
    before = primary.status()["last_seq"]
    put_pipelined(db, {f"{prefix}{i}": i for i in range(puts)})
    return primary.status()["last_seq"] - before


def test_no_shared_entry_is_logged_while_a_member_of_the_release_before_is_in_the_cluster(cluster):
    """Shared log entries (peer version 4, docs/PROTOCOL.md section 5) stay in the log, so a primary
    writes them only once every member has said it reads them: not beside a member that speaks 3,
    and again once that member runs this release, which then holds every write."""
    c = cluster(size=3, start=False)
    c.start(1, wait=False)
    c.start(2, wait=False)
    c.start(3, wait=False, env={faults.PEER_VERSION_ENV: "3"})
    for node in c.nodes.values():
        node.wait_ready(20)
    primary = c.wait_primary(20, among=(1, 2))
    wait_until(lambda: "node 3 accepts peer protocol versions 3..3" in c.nodes[primary].log(), 10, interval=0.1,
               message="the primary noting node 3's range")
    with c.client(retry=RETRY) as db:
        assert _pipelined_puts(c, db, "old-", 300) == 300          # one entry per write
        c.nodes[3].stop()
        c.start(3, env={})
        wait_until(lambda: "node 3 accepts peer protocol versions 2..4" in c.nodes[c.wait_primary(20)].log(), 20,
                   interval=0.1, message="the primary noting node 3's new range")
        assert _pipelined_puts(c, db, "new-", 300) < 300           # writes of one iteration share an entry
    with c.nodes[3].client(retry=RETRY) as db:
        wait_until(lambda: db.get("new-299", stale=True) == 299, 20, interval=0.05, message="node 3 holding them")
        assert [db.get(f"{p}{i}", stale=True) for p in ("old-", "new-") for i in (0, 150)] == [0, 150, 0, 150]
