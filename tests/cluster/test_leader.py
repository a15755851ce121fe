"""Leader mode with real processes: the seed's 3-node cluster on 127.0.0.2-4."""
import pytest

from zmqstore import Client, Retry, errors
from zmqstore.testing.process import wait_until


def stale_get(node, key):
    with node.client(timeout=1.0, retry=Retry(max_tries=1)) as c:
        return c.get(key, stale=True)


def test_writes_reach_every_secondary(cluster):
    c = cluster()
    with c.client() as db:
        for i in range(50):
            db.put(f"k{i}", i)
        p = db.pipeline()
        for i in range(50, 500):
            p.put(f"k{i}", i)
        p.execute()
        assert db.get("k499") == 499
        status = db.status()
        assert status["role"] == "primary" and status["commit_seq"] == 500
    for node in c.nodes.values():
        wait_until(lambda: stale_get(node, "k499") == 499, 10, message=f"node {node.node_id} has k499")
        with node.client() as db:
            assert dict(db.scan(prefix="k", stale=True)) == {f"k{i}": i for i in range(500)}


def test_secondary_redirects_writes_and_reads(cluster):
    c = cluster()
    with Client(c.nodes[2].endpoint) as db:       # talks to a secondary first
        db.put("x", 1)                              # followed not_primary to node 1
        assert db.endpoint == c.nodes[1].endpoint
        assert db.get("x") == 1
    with Client(c.nodes[3].endpoint, retry=Retry(max_tries=1)) as db:
        with pytest.raises(errors.NotPrimary) as info:
            db._call("PUT", b"y", b"\x01")
        assert info.value.details["primary_id"] == 1
        assert info.value.details["primary_address"] == c.nodes[1].endpoint
