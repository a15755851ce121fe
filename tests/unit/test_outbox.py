"""The outbox on real ZeroMQ sockets: replies to a client that does not read are held to a byte
budget, beyond which they are dropped and the client's requests refused, until it reads."""
import time

import zmq

from zmqstore import transport
from zmqstore.outbox import MIN_HWM, Outbox, send_hwm


def test_send_hwm_holds_about_the_limit_in_the_largest_replies():
    assert send_hwm(64 << 20, 1 << 20) == 60
    assert send_hwm(64 << 20, 4 << 10) == 60           # scan pages are up to 1 MiB whatever the values
    assert send_hwm(1 << 40, 1 << 20) == transport.ROUTER_HWM
    assert send_hwm(1 << 20, 64 << 20) == MIN_HWM


def test_a_client_that_does_not_read_is_held_to_the_limit_then_served_again():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, MIN_HWM)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.setsockopt(zmq.RCVHWM, 1)
    client.setsockopt(zmq.RCVBUF, 1 << 14)
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        client.send(b"hello")
        assert router.poll(5000)
        identity, _ = router.recv_multipart()
        limit = 4 << 20
        outbox = Outbox(router, limit)
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
    finally:
        client.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_a_reply_to_a_client_that_left_is_dropped_quietly():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.LINGER, 0)
    try:
        router.bind_to_random_port("tcp://127.0.0.1")
        outbox = Outbox(router, 4 << 20)
        outbox.send([b"nobody", b"reply"])
        assert not outbox.backlogs
    finally:
        router.close(linger=0)
        ctx.term()
