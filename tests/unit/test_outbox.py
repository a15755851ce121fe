"""The outbox on real ZeroMQ sockets: replies to a client that does not read are held to a byte
budget, beyond which they are dropped and the client's requests refused, until it reads."""
import time
import types

import pytest
import zmq

from zmqstore import protocol, transport
from zmqstore.outbox import MIN_HWM, Grouped, Outbox, send_hwm


def test_send_hwm_holds_about_the_limit_in_the_largest_replies():
    assert send_hwm(256 << 20, 1 << 20) == 240
    assert send_hwm(256 << 20, 4 << 10) == 240          # scan pages are up to 1 MiB whatever the values
    assert send_hwm(1 << 40, 1 << 20) == transport.ROUTER_HWM
    assert send_hwm(32 << 20, 1 << 20) == MIN_HWM       # the default half of 64 MiB: a 64-deep pipeline fits


@pytest.fixture
def ports():
    """A client port's ROUTER as the node sets it up (ROUTER_MANDATORY, the send queue floor), and a
    factory for clients that read nothing until told: connect() -> (socket, identity on the router)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, MIN_HWM)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    clients = []

    def connect():
        client = ctx.socket(zmq.DEALER)
        clients.append(client)
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.RCVHWM, 1)
        client.setsockopt(zmq.RCVBUF, 1 << 14)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert sock.poll(5000)
        return client, sock.recv_multipart()[0]
    yield types.SimpleNamespace(sock=sock, connect_client=connect)
    for client in clients:
        client.close(linger=0)
    sock.close(linger=0)
    ctx.term()


def test_a_client_that_does_not_read_is_held_to_the_limit_then_served_again(ports):
    client, identity = ports.connect_client()
    limit = 4 << 20
    outbox = Outbox(ports.sock, limit)
    filler = b"x" * (256 << 10)
    for i in range(200):                    # 50 MiB, far more than the pipe and the limit hold
        outbox.send([identity, i.to_bytes(4, "big") + filler])
    assert outbox.backlogs[identity].size > limit // 2        # the backlog took what the pipe did not
    assert outbox.dropped > 0 and outbox.refuses(identity)
    got, deadline = [], time.monotonic() + 10
    while outbox.backlogs and time.monotonic() < deadline:
        while client.poll(10):
            got.append(int.from_bytes(client.recv()[:4], "big"))
        outbox.flush(time.monotonic() + 1.0)      # as if every retry delay had passed
    assert not outbox.backlogs and not outbox.refuses(identity) and outbox.total == 0
    while client.poll(200):
        got.append(int.from_bytes(client.recv()[:4], "big"))
    assert len(got) == 200 - outbox.dropped                 # every reply not dropped arrived, once
    assert got == sorted(got) and got[0] == 0               # in the order they were sent
    outbox.send([identity, b"again"])       # served again
    assert client.poll(5000) and client.recv() == b"again"


def test_a_reply_to_a_client_that_left_is_dropped_quietly(ports):
    outbox = Outbox(ports.sock, 4 << 20)
    outbox.send([b"nobody", b"reply"])
    assert not outbox.backlogs


def test_when_every_queue_is_full_a_stalled_client_loses_its_replies_not_a_reading_one(ports):
    identities = [ports.connect_client()[1] for _ in range(5)]
    limit = 1 << 20
    outbox = Outbox(ports.sock, limit)
    reply = b"x" * (64 << 10)
    for identity in identities[:4]:             # four clients that do not read fill the shared budget
        while identity not in outbox.backlogs or outbox.backlogs[identity].size + len(reply) <= limit:
            outbox.send([identity, reply])
    assert outbox.total > 3 * limit
    time.sleep(0.06)                            # they have now sent nothing for STALLED_AFTER
    reader = identities[4]
    for _ in range(MIN_HWM + 10):               # the fifth client's replies overflow its queue
        outbox.send([reader, reply])
    assert reader in outbox.backlogs and not outbox.refuses(reader)
    assert outbox.backlogs[reader].size == 10 * (len(reply) + len(reader))   # none of its replies dropped
    assert sum(outbox.refuses(i) for i in identities[:4]) >= 1               # a stalled one was emptied


def test_replies_to_a_batch_leave_grouped_within_the_byte_bound_and_others_alone(ports):
    """docs/PROTOCOL.md section 2, "Batches": replies to batched requests (a Grouped envelope) wait
    until send_groups, then leave as few messages as hold GROUP_BYTES of bodies each, a larger body
    alone; so no message is larger than the largest single reply. Others leave at once, alone."""
    client, identity = ports.connect_client()
    client.setsockopt(zmq.RCVHWM, 1000)
    outbox = Outbox(ports.sock, 64 << 20)
    outbox.send([identity, b"alone"])
    assert client.poll(5000) and client.recv_multipart() == [b"alone"]
    envelope = Grouped([identity])
    small, big = b"s" * (10 << 10), b"b" * (protocol.GROUP_BYTES + 1)
    for body in [small] * 8 + [big] + [small] * 2:
        assert outbox.send(envelope + [body])
    assert not client.poll(100)                 # nothing has left yet
    outbox.send_groups()
    shapes = []
    while client.poll(1000):
        shapes.append([len(frame) for frame in client.recv_multipart()])
    assert shapes == [[len(small)] * 6, [len(small)] * 2, [len(big)], [len(small)] * 2]
    assert not outbox.groups
