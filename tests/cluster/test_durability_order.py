"""A reply never leaves before the writes it acknowledges or may have seen are committed.

The node runs in this process (in a thread) so that commits and sends can be recorded in order;
everything else is real: sockets, RocksDB in tmp_path, the Python client.
"""
import threading

from zmqstore import Client, config, protocol, transport
from zmqstore.node import Node
from zmqstore.storage import Storage
from zmqstore.testing.process import free_port


def test_replies_follow_their_commit(tmp_path, monkeypatch):
    # Every port free (the default peer port, port + 2000, was once taken on the CI machine).
    cfg = config.resolve(None, {"node_id": 1, "port": free_port(), "pub_port": free_port(),
                                "peer_port": free_port(), "data_dir": str(tmp_path / "d")})
    node = Node(cfg)
    events = []
    real_commit, real_send = node.storage.commit, transport.try_send_frames

    def commit(batch):
        real_commit(batch)
        events.append(("commit", node.storage.last_seq))

    def send_frames(sock, frames):
        real_send(sock, frames)     # raises zmq.Again when the client's queue is full: not sent yet
        for body in frames[1:]:     # [identity, reply, ...]: a batch's replies may share one message
            events.append(("send", protocol.decode_reply(body)))

    node.storage.commit = commit
    monkeypatch.setattr(transport, "try_send_frames", send_frames)   # how replies to clients leave
    runner = threading.Thread(target=node.run)
    runner.start()
    try:
        with Client(f"127.0.0.1:{cfg.port}") as db:
            p = db.pipeline(max_in_flight=64)
            for i in range(300):
                p.put(f"k{i % 7}", i)
                p.get(f"k{i % 7}")
            results = p.execute()
            assert results[-1] == 299
    finally:
        node.stop()
        runner.join(10)
    assert not runner.is_alive()
    # Which entry holds each put (the writes of one loop iteration share one: docs/PROTOCOL.md section 5)
    storage = Storage.open(cfg.data_dir, 1, "leader")
    try:
        seq_of = {protocol.unpack_value(op[2]): seq for seq, raw in storage.log_entries(1)
                  for op in protocol.data_ops(protocol.decode_entry(raw))}
        last_seq = storage.last_seq
    finally:
        storage.close()
    assert sorted(seq_of) == list(range(300))
    durable = 0
    writes_checked = reads_checked = 0
    for kind, what in events:
        if kind == "commit":
            durable = what
        elif what.ok and len(what.result) == 2:      # a write: [applied, seq]
            assert what.result[1] <= durable, f"reply for seq {what.result[1]} sent when only {durable} was durable"
            writes_checked += 1
        elif what.ok and len(what.result) == 1 and isinstance(what.result[0], bytes):
            seen_seq = seq_of[protocol.unpack_value(what.result[0])]     # a read of value i saw put i's entry
            assert seen_seq <= durable, f"read of seq {seen_seq} answered when only {durable} was durable"
            reads_checked += 1
    assert writes_checked == 300 and reads_checked == 300
    assert durable == last_seq == max(seq_of.values())
