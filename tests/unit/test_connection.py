"""The client's connection without a node to talk to: what it does when it cannot connect at all."""
import threading

import pytest

from zmqstore import Client, Retry, errors
from zmqstore.keys import keygen


@pytest.fixture
def client_keys(tmp_path):
    keygen(tmp_path / "secret", "app")
    keygen(tmp_path / "nodes", "node1")
    return {"secret_key": str(tmp_path / "secret" / "app.key_secret"), "node_keys": str(tmp_path / "nodes")}


def closes_promptly(db):
    closer = threading.Thread(target=db.close, daemon=True)
    closer.start()
    closer.join(5)
    return not closer.is_alive()


def test_an_endpoint_without_a_node_key_fails_like_a_timeout(client_keys):
    """Node 9 has no key in node_keys: each attempt fails with ConnectionTimeout (not a TypeError
    from a missing socket), the write keeps its request id for outcome(), and close() does not wait."""
    db = Client("9@127.0.0.1:1", timeout=0.2, retry=Retry(max_tries=3, delay=0.01), **client_keys)
    with pytest.raises(errors.ConnectionTimeout, match="no key for node 9") as info:
        db.put("k", 1)
    assert info.value.request_id == db.last_request_id
    assert [rid for rid, _ in db._unresolved] == [db.last_request_id]
    with pytest.raises(errors.ConnectionTimeout):
        db.pipeline().put("k", 1).get("k").execute()
    assert closes_promptly(db)


def test_a_client_that_never_connected_closes_promptly():
    db = Client("127.0.0.1:1", timeout=0.1, retry=Retry(max_tries=1))
    with pytest.raises(errors.ConnectionTimeout):
        db.ping()
    assert closes_promptly(db)
