"""The node's side of change feeds (zmqstore/watch.py over leader/feed.py) on a real standalone
engine in tmp_path, with a fake send that records replies: credit, pausing and resuming, prefixes,
progress, compaction, dropping, and watches refused."""
import json

import pytest

from zmqstore import errors, protocol
from zmqstore.leader.feed import LeaderFeed
from zmqstore.watch import WATCH_PROGRESS, Watches


class Sent:
    def __init__(self):
        self.replies = []
        self.gone = False

    def __call__(self, frames):
        if self.gone:
            return False
        self.replies.append((frames[:-1], protocol.decode_reply(frames[-1])))
        return None

    def take(self):
        taken, self.replies = [r for _, r in self.replies], []
        return taken


def put(eng, key, value, rid=[0]):
    rid[0] += 1
    eng.handle(protocol.decode_request(protocol.encode_request("PUT", b"c", rid[0], rid[0], key,
                                                              protocol.pack_value(value))))
    eng.flush()


def watch(watches, rid, prefix=b"", position=None, snapshot=False, credit=1 << 20, stale=False, who=b"A", now=0.0):
    req = protocol.decode_request(protocol.encode_request("WATCH", b"w", rid, rid, prefix, position, snapshot,
                                                          credit, stale))
    return watches.handle(req, [who], now)


def credit(watches, watch_id, amount, who=b"A", now=0.0):
    req = protocol.decode_request(protocol.encode_request("WATCH_CREDIT", b"w", 99, 99, watch_id, amount))
    return watches.handle(req, [who], now)


@pytest.fixture
def standalone(make):
    """A standalone primary, its Watches and what they sent; `retention` for its log_retention."""
    def start(retention=1000):
        eng, cfg = make(1, peers=[], log_retention=retention)
        eng.become_primary(1)
        sent = Sent()
        return eng, Watches(LeaderFeed(eng), sent, idle_timeout=60.0), sent
    return start


def test_credit_pauses_a_watcher_and_returning_it_resumes_without_a_gap(standalone):
    eng, watches, sent = standalone()
    first = protocol.decode_reply(watch(watches, 7, b"k", credit=400))
    assert first.result == ("changes", 0, [])                # where it starts
    for i in range(20):
        put(eng, b"k%02d" % i, "x" * 40)
        watches.pump(1.0 + i * 0.01)
    got = sent.take()
    assert 1 <= len(got) < 20 and watches.status()["paused"] == 1
    assert watches.status()["in_flight_max"] <= 400 + 120    # its credit, overdrawn by one entry at most
    watches.pump(2.0)
    assert sent.take() == []                                 # paused: nothing read or sent
    assert credit(watches, 7, 1 << 20) is None               # no reply on success
    while watches.busy:
        watches.pump(2.1)
    got += sent.take()
    seqs = [item[0] for r in got for item in r.result[2]]
    assert seqs == list(range(1, 21))
    assert all(r.request_id == 7 for r in got)


def test_prefixes_progress_and_what_other_keys_do(standalone):
    eng, watches, sent = standalone()
    watch(watches, 1, b"a")
    sent.take()
    put(eng, b"b1", 1)
    watches.pump(0.1)
    assert sent.take() == []                                 # nothing under "a": nothing sent yet ...
    watches.pump(0.1 + WATCH_PROGRESS)
    assert [r.result for r in sent.take()] == [("changes", 1, [])]    # ... until progress says how far
    put(eng, b"a1", 2)
    watches.pump(1.2)
    (reply,) = sent.take()
    assert reply.result[:2] == ("changes", 2) and reply.result[2][0][:2] == [2, b"a1"]


def test_compacted_while_paused_and_dropped_when_idle_or_gone(standalone):
    eng, watches, sent = standalone(retention=5)
    watch(watches, 1, credit=1)                              # paused after its first reply
    watch(watches, 2, who=b"B", credit=1 << 20)
    sent.take()
    for i in range(30):
        put(eng, b"k%d" % i, i)                              # log_retention 5: trimmed past watch 1
        watches.pump(1.0)
    assert credit(watches, 1, 1000, now=1.5) is None
    watches.pump(2.0)
    replies = {frames[0]: reply for frames, reply in sent.replies}
    err = replies[b"A"]
    assert not err.ok and err.result[0] == "compacted" and err.result[2]["min_from"] >= 20
    assert replies[b"B"].ok                                  # it kept up
    # Watch 2's client goes: its next send fails and the watch is forgotten.
    sent.gone = True
    put(eng, b"k99", 1)
    watches.pump(3.0)
    assert len(watches) == 0
    # A watcher without credit for idle_timeout is dropped; its WATCH_CREDIT then says so.
    sent.gone = False
    watch(watches, 3, credit=1, now=10.0)
    put(eng, b"k100", 1)
    watches.pump(11.0)
    watches.pump(10.0 + 61.0)
    assert len(watches) == 0 and watches.status()["watches_dropped"] == 2    # gone, then idle
    late = protocol.decode_reply(credit(watches, 3, 1000, now=72.0))
    assert late.request_id == 3 and late.result[0] == "unavailable"


def test_watches_refused(standalone):
    eng, watches, sent = standalone()
    with pytest.raises(errors.BadArgument):
        watch(watches, 1, position=[[1, 2]])                 # a dynamo position
    with pytest.raises(errors.BadArgument):
        watch(watches, 2, position=3, snapshot=True)
    with pytest.raises(errors.BadArgument):
        watch(watches, 3, position=10)                       # beyond the primary's log
    with pytest.raises(errors.BadArgument):
        watch(watches, 4, credit=0)
    for i in range(64):
        watch(watches, 100 + i)
    with pytest.raises(errors.Unavailable):
        watch(watches, 200)                                  # 64 on one connection
    watch(watches, 200, who=b"B")                            # another connection may
    eng.role = "secondary"
    with pytest.raises(errors.NotPrimary):
        watch(watches, 300, who=b"C")
    watch(watches, 301, who=b"C", stale=True)
    sent.take()
    watches.pump(1.0)                                        # the primary-only ones end with not_primary
    codes = {r.result[0] for r in sent.take() if not r.ok}
    assert codes == {"not_primary"} and len(watches) == 1
    assert Watches(None, sent, 60.0).feed is None
    with pytest.raises(errors.UnsupportedOperation):
        watch(Watches(None, sent, 60.0), 1)


def test_the_campaign_watch_check_catches_gaps_duplicates_disorder_and_uncommitted_changes(tmp_path):
    from zmqstore.testing.linearizability import Op
    from zmqstore.testing.watching import check_watch
    history = [Op(0, "put", "a", 1, 0.0, 1.0, "ok"), Op(0, "put", "a", 2, 1.0, 2.0, "info"),
               Op(0, "put", "b", 3, 2.0, 3.0, "fail"), Op(1, "cas", "a", (1, 4), 3.0, 4.0, "ok", True),
               Op(1, "cas", "a", (9, 5), 4.0, 5.0, "ok", False)]

    def judge(lines, tail={"reconnections": 0, "through": 9, "target": 9}):
        path = tmp_path / "watch.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, tail]))
        return check_watch(str(path), history)
    assert judge([[1, "a", 1], [2, "a", 2], [3, "a", 4]])["ok"]          # the unknown write may be there
    assert judge([[1, "a", 1], [3, "a", 4]])["ok"]                       # or not
    assert judge([[1, "a", 1]])["missing"] == 1                          # the applied cas is not
    assert judge([[1, "a", 1], [1, "a", 1], [3, "a", 4]])["duplicates"] == 1
    assert judge([[3, "a", 4], [1, "a", 1]])["out_of_order"] == 1
    assert judge([[1, "a", 1], [2, "b", 3], [3, "a", 4]])["uncommitted"] == 1   # a failed put
    assert judge([[1, "a", 1], [2, "a", 5], [3, "a", 4]])["uncommitted"] == 1   # a cas that did not apply
    assert not judge([[1, "a", 1], [3, "a", 4]], {"reconnections": 0, "through": 3, "target": 9})["ok"]


def test_the_dynamo_campaign_watch_check_wants_every_acknowledged_dot_once_in_origin_order(tmp_path):
    from zmqstore.testing.convergence import WriteOp
    from zmqstore.testing.watching import check_dynamo_watch
    a, b = (1 << 32) | 7, (2 << 32) | 9
    history = [WriteOp(0, "put", "a", 1, {}, 0.0, 1.0, "ok", (a, 1)),
               WriteOp(0, "delete", "a", None, {a: 1}, 1.0, 2.0, "ok", (a, 2)),
               WriteOp(1, "put", "b", 3, {}, 0.0, 1.0, "ok", (b, 1)),
               WriteOp(1, "put", "b", 4, {}, 1.0, None, "info", None),
               WriteOp(1, "put", "c", 5, {}, 2.0, 3.0, "fail", None)]
    every = [[a, 1, "a", 1], [b, 1, "b", 3], [a, 2, "a", None]]

    def judge(lines, through=((a, 2), (b, 2)), target=()):
        path = tmp_path / "watch.jsonl"
        tail = {"reconnections": 1, "reopened": 1, "through": [list(x) for x in through], "target": None if target is None else list(target)}
        path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, tail]))
        return check_dynamo_watch(str(path), history)
    assert judge(every)["ok"] and judge(every)["reconnections"] == 2
    assert judge(every + [[b, 2, "b", 4]])["ok"]                              # the unknown write may be there
    assert judge(every[:2])["missing"] == 1
    assert judge(every + [[a, 2, "a", None]])["duplicates"] == 1
    assert judge([every[2], every[0], every[1]])["out_of_order"] == 1        # per origin: a 2 before a 1
    assert judge([every[1], every[0], every[2]])["ok"]                       # across origins: any order
    assert judge([[a, 1, "a", 9], *every[1:]])["wrong"] == 1
    assert judge([[a, 1, "a", 1], [b, 1, "b", 3], [a, 2, "a", 1]])["wrong"] == 1    # a delete is null
    assert judge(every + [[b, 2, "c", 5]])["uncommitted"] == 1               # a failed put
    assert judge(every + [[b, 2, "b", 77]])["unexplained"] == 1              # nobody wrote 77
    assert judge(every + [[b, 2, "b", None]])["unexplained"] == 1            # nobody deleted b
    assert not judge(every, through=((a, 1), (b, 1)))["ok"]                   # not current at the end
    assert not judge(every, target=None)["ok"]


def test_a_reply_the_outbox_drops_ends_the_watch_and_the_client_resumes_before_the_hole(standalone):
    """A stream must not go on after a hole: when the outbox drops a reply (the client's output
    limits), the watch ends; the client hears nothing more and resumes from its last position."""
    eng, watches, sent = standalone()
    watch(watches, 1)
    watch(watches, 2, who=b"B")
    sent.take()
    watches.connection_dropped(b"A")                         # what Outbox.on_drop reports
    put(eng, b"k", 1)
    watches.pump(1.0)
    assert [frames[0] for frames, _ in sent.replies] == [b"B"] and len(watches) == 1
    assert watches.status()["watches_dropped"] == 1


def test_outbox_reports_every_reply_it_drops():
    import zmq
    from zmqstore.outbox import Outbox
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 1)
        dealer.setsockopt(zmq.RCVHWM, 1)
        dealer.setsockopt(zmq.IDENTITY, b"slow")
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        assert router.poll(2000)
        router.recv_multipart()
        outbox, dropped = Outbox(router, limit=10_000), []
        outbox.on_drop = dropped.append
        results = [outbox.send([b"slow", b"x" * 3000]) for _ in range(200)]   # the client reads nothing
        assert results.count(False) > 0 and dropped and set(dropped) == {b"slow"}
        assert outbox.send([b"gone", b"x"]) is False                           # no such connection
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_the_client_stream_counts_only_a_placed_watch_and_checks_its_window():
    from zmqstore import Client, errors as errs
    from zmqstore.watcher import WatchStream, check_watch_args
    with Client("127.0.0.1:1") as client:
        stream = WatchStream(client, b"", None, False, False, 1 << 20)
        stream.start()
        with pytest.raises(errs.NotPrimary):
            stream.read(protocol.encode_error(stream.watch_id, "not_primary", "a secondary"))
        assert stream.replies == 0 and stream.watch_id is None   # not placed: it goes on trying
        stream.start()
        stream.read(protocol.encode_ok(stream.watch_id, "changes", 5, [[5, b"a", protocol.pack_value(1)],
                                                                       [5, b"b", None]]))
        assert stream.replies == 1 and stream.through == 5 and stream.resume_seq == 4
        stream.take()
        stream.take()
        assert stream.resume_seq == 5
        # Snapshot events still waiting: only a new snapshot gives them again.
        snap = WatchStream(client, b"", None, True, False, 1 << 20)
        snap.start()
        snap.read(protocol.encode_ok(snap.watch_id, "snapshot", 9, [[b"a", protocol.pack_value(1)]], True))
        assert snap.snapshot_seq == 9 and snap.resume_seq is None
        snap.take()
        assert snap.resume_seq == 9
    with pytest.raises(ValueError):
        check_watch_args(None, False, 16 << 20)                # more than a node ever gives
    with pytest.raises(ValueError):
        check_watch_args(3, True, 1 << 20)


def test_a_drop_while_pumping_ends_every_watch_of_that_connection_once(standalone):
    """A reply dropped for one watch (the outbox tells connection_dropped) ends the connection's
    other watches too, in the middle of a pump: they are not served, and nothing fails."""
    eng, watches, sent = standalone()
    watch(watches, 1, credit=1 << 20, now=0.0)               # quiet: due a progress reply
    watch(watches, 2, credit=1, now=0.0)                     # paused, and idle long enough to drop
    watch(watches, 3, credit=1 << 20, now=0.0)

    def send(frames):
        watches.connection_dropped(frames[0])    # as Outbox.send does before returning False
        return False
    watches._send = send
    watches.pump(61.0)
    assert len(watches) == 0 and watches.status()["watches_dropped"] == 3
