"""The client's connection without a node to talk to: what it does when it cannot connect at all, and
beside a ROUTER that answers as a node of this release or of an earlier one (batches)."""
import asyncio
import threading

import pytest
import zmq

from zmqstore import Client, Retry, aio, errors, protocol
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


class EarlierNode:
    """A ROUTER answering as a node of a release before batches (docs/PROTOCOL.md section 2): a
    message of more than one body is refused whole (`malformed`, id 0, nothing served); a lone PUT
    is served. Records the request ids it served, and how many bodies each message held.
    batches=True: a node of this release, serving every body of a batch and sending the replies
    back together in one message."""

    def __init__(self, batches=False):
        self.batches = batches
        self.sizes = []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.served, self.refused = [], 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            self.sizes.append(len(frames) - 1)
            if len(frames) != 2 and not self.batches:
                self.refused += 1
                self.sock.send_multipart([frames[0], protocol.encode_error(0, "malformed", "one body frame")])
                continue
            replies = []
            for body in frames[1:]:
                request = protocol.decode_request(body)
                self.served.append(request.request_id)
                replies.append(protocol.encode_ok(request.request_id, None))
            self.sock.send_multipart([frames[0], *replies])

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()


def test_a_pipeline_sends_one_request_per_message_to_a_node_that_refuses_batches():
    node = EarlierNode()
    try:
        with Client(f"127.0.0.1:{node.port}", timeout=5.0, retry=Retry(max_tries=1)) as db:
            pipe = db.pipeline(max_in_flight=16)
            for i in range(40):
                pipe.put(f"k{i}", i)
            assert pipe.execute() == [None] * 40
            assert node.refused >= 1 and not db.connection.batches
            assert sorted(node.served) == sorted(set(node.served)) and len(node.served) == 40
            refused = node.refused
            assert db.pipeline().put("a", 1).put("b", 2).execute() == [None, None]
            assert node.refused == refused      # it remembers: no batch is tried again on this connection
    finally:
        node.close()


async def aio_puts(port, n):
    async with aio.Client(f"127.0.0.1:{port}", timeout=5.0, retry=Retry(max_tries=1)) as db:
        results = await asyncio.gather(*(db.put(f"k{i}", i) for i in range(n)))
        alone = [await db.put("alone", 1), await db.put("alone", 2)]
        return results, alone, db.connection.batches


def test_the_asyncio_client_sends_what_one_pass_of_the_event_loop_asked_as_batches():
    node = EarlierNode(batches=True)
    try:
        results, alone, batches = asyncio.run(aio_puts(node.port, 200))
        assert results == [None] * 200 and alone == [None, None] and batches
        # 200 requests of one pass: batches of at most 64; the two awaited one by one go alone
        assert sorted(node.sizes[:-2]) == [8, 64, 64, 64] and node.sizes[-2:] == [1, 1]
        assert len(node.served) == len(set(node.served)) == 202
    finally:
        node.close()


def test_the_asyncio_client_sends_one_request_per_message_to_a_node_that_refuses_batches():
    node = EarlierNode()
    try:
        results, alone, batches = asyncio.run(aio_puts(node.port, 40))
        assert results == [None] * 40 and alone == [None, None] and not batches
        # the batch of 40 refused, then each sent again alone (same ids), and later ones alone too
        assert node.refused == 1 and node.sizes == [40] + [1] * 42
        assert len(node.served) == len(set(node.served)) == 42
    finally:
        node.close()
