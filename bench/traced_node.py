"""datastore-node with a timeline (bench/trace_puts.py): the same node, started as
`python bench/traced_node.py <datastore-node flags>`, with timestamps (CLOCK_MONOTONIC, which every
process on the machine shares, and the loop thread's CPU time) taken around the steps of a
replicated put, written at exit to $ZMQSTORE_TRACE_DIR/trace-<pid>.txt as "event seq seconds
cpu-seconds" lines. The node's code is not changed:
the steps are wrapped here, so production code carries no tracing.

Events: poll (zmq_poll returned), req (a client request taken), pub <seq> (the primary published
entries up to seq), ack<node> <seq> (the primary took an ACK of node's up to seq), recv <seq> (a
secondary took a CHANGE up to seq), c0 / c1 (the iteration's batch write began / ended, fsync
included), sent (the iteration's peer messages were handed to ZeroMQ), reply (a client reply was
handed to ZeroMQ). Between a secondary's poll and its write: serve (the loop began taking a peer
socket's messages), decoded (a peer message was received and decoded), handled (its CHANGE
handler returned), end (the iteration's end began).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from zmqstore import cli, modes, node, outbox, protocol  # noqa: E402
from zmqstore.leader import engine, primary, secondary  # noqa: E402

EVENTS = []
_clock, _cpu = time.monotonic, time.thread_time


def _mark(name, seq=0):
    EVENTS.append((name, seq, _clock(), _cpu()))


def _around(cls, name, before=None, after=None):
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        if before is not None:
            before(self, *args)
        try:
            return original(self, *args, **kwargs)
        finally:
            if after is not None:
                after(self, *args)
    setattr(cls, name, wrapped)


def _dump():
    directory = os.environ.get("ZMQSTORE_TRACE_DIR")
    if directory:
        with open(os.path.join(directory, f"trace-{os.getpid()}.txt"), "w") as f:
            f.writelines(f"{name} {seq} {t:.9f} {cpu:.9f}\n" for name, seq, t, cpu in EVENTS)


def install():
    poll = zmq.backend.zmq_poll

    def traced_poll(items, timeout):
        ready = poll(items, timeout)
        _mark("poll")
        return ready
    zmq.backend.zmq_poll = traced_poll        # Node._loop looks it up when the loop starts
    _around(node.Node, "_answer", before=lambda self, *a: _mark("req"))
    _around(node.Node, "run", after=lambda self, *a: _dump())
    _around(primary.Primary, "publish_entries", before=lambda self, prev_seq, prev_term, entries, now:
            _mark("pub", prev_seq + len(entries)))
    _around(primary.Primary, "on_ack", before=lambda self, fields, now: _mark(f"ack{fields[0]}", fields[2]))
    _around(secondary.Secondary, "_on_log_batch", before=lambda self, command, fields, now:
            _mark("recv", fields[2] + len(fields[4])), after=lambda self, *a: _mark("handled"))
    _around(node.PeerPlane, "serve", before=lambda self, *a: _mark("serve"))
    _around(modes.Mode, "end_iteration", before=lambda self, *a: _mark("end"))
    decode_peer = protocol.decode_peer      # peers.py calls it through the module

    def traced_decode_peer(*args):
        message = decode_peer(*args)
        _mark("decoded")
        return message
    protocol.decode_peer = traced_decode_peer
    flush = engine.Engine.flush

    def traced_flush(self):
        if self._batch is None:
            return flush(self)
        _mark("c0")
        try:
            return flush(self)
        finally:
            _mark("c1")
    engine.Engine.flush = traced_flush
    _around(node.PeerPlane, "send", after=lambda self, *a: _mark("sent"))
    _around(outbox.Outbox, "send", after=lambda self, *a: _mark("reply"))


if __name__ == "__main__":
    install()
    sys.argv[0] = "datastore-node"
    sys.exit(cli.node_entry())
