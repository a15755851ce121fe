"""What a hostile process sends a node (issue 11): sockets from an address of its own, floods and
bombs. Used by tests/cluster/test_stranger.py to assert harmless outcomes and by bench/security.py
to measure what the abuse costs a well-behaved client."""
import os
import subprocess
import sys
import time

import zmq

from .. import protocol

STRANGER = "127.0.0.9"     # an address no test node uses: a process in no peer list
CID = b"stranger-client!"


class Stranger:
    """Sockets that connect from `source` (STRANGER unless told otherwise) to a node's ports."""

    def __init__(self, source=STRANGER):
        self.source = source
        self.ctx = zmq.Context()
        self.socks = []

    def _sock(self, kind, host, port, identity=None):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(f"tcp://{self.source}:0;{host}:{port}")
        self.socks.append(sock)
        return sock

    def dealer(self, host, port, identity=None):
        """A DEALER to host:port; `identity` (e.g. b"node-3") as a node's DEALER names itself."""
        return self._sock(zmq.DEALER, host, port, identity)

    def sub(self, host, port):
        sock = self._sock(zmq.SUB, host, port)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        return sock

    def close(self):
        for sock in self.socks:
            sock.close(linger=0)
        self.socks.clear()
        self.ctx.term()


def send(sock, body):
    """Send without ever blocking the sender (a refused connection queues, then drops)."""
    try:
        sock.send(body, zmq.NOBLOCK)
    except zmq.Again:
        pass


def received(sock, seconds):
    """What arrives on `sock` within `seconds` (a bounded wait)."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.append(sock.recv_multipart())
    return got


def nested_bomb(levels=1000, declared=10_013):
    """`levels` nested msgpack array headers each declaring `declared` items, and nothing else: 3
    bytes a level; a naive decoder allocates `declared` slots for each before noticing the items are
    missing (the issue's 3 KB request: 80 MB and 56 ms to refuse)."""
    return (b"\xdc" + declared.to_bytes(2, "big")) * levels


def forged_role(term, node_id=99, role="primary"):
    """A ROLE naming `node_id` as primary of `term`."""
    return protocol.encode_peer("ROLE", node_id, term, role, node_id, 10**6, term, 10**6, False, True,
                                f"{STRANGER}:1", f"{STRANGER}:2", False, protocol.peer_versions())


# argv: source host, node host, port, seconds, report file. 500 PINGs in flight, replies read; the
# count of replies goes to the report file after 1,000 and at the end.
_PING_FLOOD = """
import os, sys, time, zmq
from zmqstore import protocol
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.connect(f"tcp://{sys.argv[1]}:0;{sys.argv[2]}:{sys.argv[3]}")
end, rid, out, got = time.monotonic() + float(sys.argv[4]), 0, 0, 0
def report():
    with open(sys.argv[5] + ".tmp", "w") as f:
        f.write(str(got))
    os.replace(sys.argv[5] + ".tmp", sys.argv[5])
while time.monotonic() < end:
    while out < 500:
        rid += 1
        out += 1
        sock.send(protocol.encode_request("PING", b"flooding-client!", rid, rid))
    while sock.poll(0):
        sock.recv()
        out -= 1
        got += 1
        if got == 1000:
            report()
    if out >= 500 and sock.poll(100):
        sock.recv()
        out -= 1
        got += 1
report()
os._exit(0)
"""

# argv: source host, node host, pub port. Three 8 MiB subscriptions, then exit without closing:
# pyzmq crashes closing an XSUB whose large message the other side refused.
_SUBSCRIPTION_BOMB = """
import os, sys, time, zmq
ctx = zmq.Context()
for _ in range(3):
    sock = ctx.socket(zmq.XSUB)
    sock.connect(f"tcp://{sys.argv[1]}:0;{sys.argv[2]}:{sys.argv[3]}")
    sock.send(b"\\x01" + os.urandom(8 << 20))
time.sleep(3)
os._exit(0)
"""


def ping_flood(host, port, seconds, report_path, source=STRANGER):
    """A process flooding PINGs (about 20-30k/s on a 2-core machine); returns its Popen."""
    return subprocess.Popen([sys.executable, "-c", _PING_FLOOD, source, host, str(port), str(seconds),
                             str(report_path)])


def subscription_bomb(host, pub_port, source=STRANGER):
    """A process sending three 8 MiB subscription messages to a PUB; returns its Popen."""
    return subprocess.Popen([sys.executable, "-c", _SUBSCRIPTION_BOMB, source, host, str(pub_port)])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))
