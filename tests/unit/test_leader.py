"""The log stream's decisions (leader/primary.py, secondary.py, log_server.py) on real storage in
tmp_path (the `make` fixture: conftest.py), with a fake Sends that records what would be sent."""
import pytest

from zmqstore import errors, limits, protocol
from zmqstore.leader import LogServer, Primary
from zmqstore.leader.log_server import SNAPSHOT_IDLE, SNAPSHOT_TRIM_HOLD
from zmqstore.leader.membership import Membership
from zmqstore.leader.primary import COMMIT_NOTICE_DELAY, RECENT_ANSWERS, ROUND_WIDEN_AFTER
from zmqstore.leader.secondary import FETCH_RETRY, SOURCE_BACKOFF, SOURCE_PATIENCE, Plan, Secondary, plan_append
from zmqstore.protocol import OP_PUT, LogEntry, PeerMessage


class FakeIO:
    """What the loop would send (sends.Sends' interface), decoded at once."""

    def __init__(self):
        self.published, self.sent, self.replies = [], [], []
        self.tagged = []        # (topic, message): published for the subscribers of a topic only
        self.connected = True

    def publish(self, body, topic=None):
        if topic is None:
            self.published.append(protocol.decode_peer(body))
        else:
            self.tagged.append((topic, protocol.decode_peer(body)))

    def publish_early(self, body):
        self.publish(body)

    def send_to(self, node_id, body):
        self.request(node_id, body)

    def request(self, node_id, body):
        if not self.connected:
            return False
        self.sent.append((node_id, protocol.decode_peer(body)))
        return True

    def reply_peer(self, envelope, body):
        self.replies.append(protocol.decode_peer(body))


def follow(eng, cfg, io, term, leader_id=1):
    """What roles.py does on hearing the primary of a new term: persist it, start a new Secondary."""
    eng.follow(term, leader_id, "127.0.0.1:%d" % (9000 + leader_id))
    return Secondary(eng, cfg, io, leader_id)


def step(sec, message, now):
    """A message to a secondary, then the end of the loop iteration: its commit (engine.flush)."""
    handled = sec.on_message(message, now)
    sec.engine.flush()
    return handled


def cycle(eng, primary):
    """What the node does at the end of a loop iteration, minus the sockets."""
    staged = eng.take_staged()
    if staged:
        primary.publish_entries(*staged, 0.0)
    eng.flush()
    primary.advance_commit()


def entry(term, key, value=1):
    return protocol.encode_entry(LogEntry(term, b"c", 1, ((OP_PUT, key, protocol.pack_value(value)),)))


def test_a_shared_entry_reaches_a_secondary_whole_with_every_writer(make):
    """Three writes of two clients in one primary iteration: one CHANGE entry, which the secondary
    stages, applies in order and records for each writer (a retry after failover finds each), also
    after a restart that rebuilds its sessions from the log."""
    eng, cfg = make(1)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    cycle(eng, primary)
    req = lambda cid, rid, *args: protocol.decode_request(protocol.encode_request(*args[:1], cid, rid, 1, *args[1:]))  # noqa: E731
    a, b = b"a" * 16, b"b" * 16
    eng.handle(req(a, 1, "PUT", b"k", protocol.pack_value(1)))
    eng.handle(req(b, 7, "CAS", b"k", protocol.pack_value(1), protocol.pack_value(2)))
    eng.handle(req(a, 2, "PUT_MANY", [[b"j", protocol.pack_value(3)], [b"k", protocol.pack_value(4)]]))
    cycle(eng, primary)
    change = io.published[-1]
    assert change.command == "CHANGE" and len(change.fields[4]) == 1
    sec, cfg2 = make(2)
    sec.follow(1, 1, "127.0.0.1:9001")
    assert sec.append_entries(1, [e for m in io.published if m.command == "CHANGE" for e in m.fields[4]]) == 2
    sec.flush()
    sec.apply_committed(2)
    st = sec.storage
    assert (st.get(b"k"), st.get(b"j")) == (protocol.pack_value(4), protocol.pack_value(3))
    for cid, rid in ((a, 1), (b, 7), (a, 2)):
        assert sec.sessions.peek(cid, rid, 0.0)[0] == 2
    st.close()
    again, _ = make(2)
    assert [again.sessions.peek(cid, rid, 0.0)[0] for cid, rid in ((a, 1), (b, 7), (a, 2))] == [2, 2, 2]


def test_plan_append(make):
    eng, _ = make(2)
    eng.follow(1, 1, "127.0.0.1:9001")
    eng.append_entries(1, [entry(1, b"a"), entry(1, b"b"), entry(2, b"c")])
    eng.apply_committed(1)
    assert eng.storage.last_seq == 0 and (eng.last_seq, eng.term_at(3)) == (3, 2)   # staged until the commit
    eng.flush()
    st = eng.storage
    assert (st.last_seq, st.last_term, st.applied_seq) == (3, 2, 1)
    assert plan_append(st, 5, 2, [entry(2, b"x")]) == Plan("fetch", 4)                  # a gap
    assert plan_append(st, 1, 1, [entry(1, b"b"), entry(2, b"c")]) == Plan("none")       # all held already
    assert plan_append(st, 2, 1, [entry(2, b"c"), entry(2, b"d")]) == Plan("append", 4, (entry(2, b"d"),))
    conflict = plan_append(st, 2, 1, [entry(3, b"z")])
    assert conflict.kind == "append" and conflict.seq == 3 and conflict.truncate
    assert plan_append(st, 3, 3, [entry(3, b"z")]) == Plan("fetch", 3, truncate=True)   # prev term differs
    eng.truncate_from(3)
    assert (st.last_seq, st.last_term) == (2, 1)
    with pytest.raises(errors.StorageError):
        eng.truncate_from(1)                     # applied entries are never dropped


def test_primary_commits_at_quorum_and_applies(make):
    eng, cfg = make(1)
    eng.become_primary(1)                      # stages the term's empty entry, seq 1
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    call = protocol.encode_request("PUT", b"c", 1, 1, b"k", protocol.pack_value(7))
    reply, wait_seq = eng.handle(protocol.decode_request(call))
    assert wait_seq == 2
    cycle(eng, primary)
    change = io.published[-1]
    assert change.command == "CHANGE" and change.fields[2:4] == (0, 0) and len(change.fields[4]) == 2
    # the term's first entry records the membership, which came from the flags until now
    first = protocol.decode_entry(change.fields[4][0])
    assert [m.node_id for m in protocol.entry_members(first)] == [1, 2, 3] and protocol.data_ops(first) == ()
    assert eng.commit_seq == 0 and eng.storage.get(b"k") is None       # durable on one node of three
    primary.on_ack((2, 1, 2, 0, True), now=1.0)
    assert eng.commit_seq == 2
    eng.apply_to_commit()
    assert eng.storage.get(b"k") == protocol.pack_value(7) and eng.storage.applied_seq == 2
    # The commit move waits for a CHANGE to carry it; none comes, so a HEARTBEAT says it alone.
    published = len(io.published)
    due = primary.announce_commit(5.0)
    assert due == 5.0 + COMMIT_NOTICE_DELAY and len(io.published) == published
    assert primary.announce_commit(due - COMMIT_NOTICE_DELAY / 2) == due and len(io.published) == published
    assert primary.announce_commit(due) == float("inf")
    assert io.published[-1].command == "HEARTBEAT" and io.published[-1].fields[3] == 2
    assert primary.announce_commit(due + 1.0) == float("inf") and len(io.published) == published + 1


def test_primary_commit_move_rides_on_the_next_change(make):
    """A CHANGE published before the notice is due carries the commit seq: no HEARTBEAT follows."""
    eng, cfg = make(1)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    for i in (1, 2):
        eng.handle(protocol.decode_request(protocol.encode_request("PUT", b"c", i, i, b"k", protocol.pack_value(i))))
        cycle(eng, primary)
        primary.on_ack((2, 1, eng.storage.last_seq, 0, True), now=1.0)
        assert primary.announce_commit(1.0) == 1.0 + COMMIT_NOTICE_DELAY
    assert [m.command for m in io.published] == ["CHANGE", "CHANGE"]
    assert io.published[-1].fields[5] == 2           # the second CHANGE carried the first put's commit
    assert primary.announce_commit(1.0 + COMMIT_NOTICE_DELAY) == float("inf")
    assert io.published[-1].command == "HEARTBEAT" and io.published[-1].fields[3] == 3


def test_primary_never_counts_what_it_does_not_hold(make):
    """Entries go out before the primary's own fsync: secondaries holding them is not enough."""
    eng, cfg = make(1)
    eng.become_primary(1)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    primary.publish_entries(*eng.take_staged(), 0.0)        # published, not yet flushed
    primary.on_ack((2, 1, 1, 0, True), now=1.0)
    primary.on_ack((3, 1, 1, 0, True), now=1.0)
    assert eng.commit_seq == 0
    eng.flush()
    primary.advance_commit()
    assert eng.commit_seq == 1


def test_primary_measures_round_trips_from_the_stream_and_lag_in_seconds(make):
    """Metrics (docs/OPERATIONS.md): an ACK's round trip is timed from the publish of the latest
    entries it covers, unless longer than election_interval (a peer back from away); lag in
    seconds runs from the first publish a peer lacks."""
    eng, cfg = make(1)
    eng.become_primary(1)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0, round_trips={})

    def put(i, now):
        eng.handle(protocol.decode_request(protocol.encode_request("PUT", b"c", i, i, b"k", protocol.pack_value(i))))
        primary.publish_entries(*eng.take_staged(), now)
        eng.flush()
    put(1, 10.0)                                        # seqs 1-2 (the term's first entry and this put)
    put(2, 11.0)                                        # seq 3
    assert primary.lag_seconds(2, 11.5) == 1.5          # it lacks seq 1, published at 10.0
    primary.on_ack((2, 1, 2, 0, True), now=10.25)
    assert primary.lag_seconds(2, 11.5) == 0.5          # now from seq 3's publish at 11.0
    primary.on_ack((2, 1, 3, 0, True), now=11.125)
    assert primary.lag_seconds(2, 12.0) == 0.0
    rtt = primary.round_trips[2]
    assert rtt.counts[-1] == 0 and sum(rtt.counts) == 2 and abs(rtt.total - 0.375) < 1e-9
    # Node 3 was away (its ACK comes 489 s after the publish): a catch-up, not a round trip.
    primary.on_ack((3, 1, 3, 0, True), now=500.0)
    assert sum(primary.round_trips[3].counts) == 0 and primary.lag_seconds(3, 501.0) == 0.0
    # A new term's Primary keeps counting into the same histograms (counters never go back).
    again = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 600.0, round_trips=primary.round_trips)
    assert again.round_trips[2] is rtt


def test_primary_read_rounds_need_a_majority(make):
    eng, cfg = make(1)
    eng.become_primary(1)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    primary.start_round(0.0)
    assert primary.round == 1 and primary.confirmed_round() == 0
    primary.on_ack((3, 1, 0, 1, True), now=1.0)
    assert primary.confirmed_round() == 1
    primary.on_ack((2, 2, 0, 5, True), now=1.0)   # another term: ignored
    assert primary.acked_round[2] == 0


def test_a_read_round_asks_one_voter_in_turn_and_every_secondary_when_it_stays_unconfirmed(make):
    """With 3 voters a round needs one secondary beside the primary: its HEARTBEAT goes under that
    node's topic only, the next round's to the other. Unconfirmed after ROUND_WIDEN_AFTER, the
    latest round is asked of everyone (untagged); one confirmed in time is not."""
    eng, cfg = make(1)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    primary.start_round(0.0)
    primary.start_round(0.0)
    assert [(topic, m.command, m.fields[2]) for topic, m in io.tagged] == [(b"n3.", "HEARTBEAT", 1),
                                                                           (b"n2.", "HEARTBEAT", 2)]
    assert io.published == [] and primary.widen_round(0.0) == ROUND_WIDEN_AFTER
    primary.on_ack((3, 1, 0, 1, True), now=0.001)       # round 1 confirmed, round 2 not yet
    assert primary.widen_round(0.002) == ROUND_WIDEN_AFTER and io.published == []
    assert primary.widen_round(ROUND_WIDEN_AFTER) == float("inf")
    assert [(m.command, m.fields[2]) for m in io.published] == [("HEARTBEAT", 2)]     # to every secondary
    assert primary.round_counts == {"read_rounds": 2, "read_rounds_widened": 1}
    primary.start_round(0.05)
    assert io.tagged[-1][0] == b"n3."
    primary.on_ack((3, 1, 0, 3, True), now=0.051)
    assert primary.widen_round(1.0) == float("inf") and len(io.published) == 1      # confirmed in time
    # Node 2 has not answered for 2.5 heartbeat intervals (node 3 has): it is not asked alone.
    now = 0.05 + RECENT_ANSWERS * cfg.heartbeat_interval
    primary.on_ack((3, 1, 0, 3, True), now=now - 0.01)
    primary.start_round(now)
    primary.start_round(now)
    assert [topic for topic, _ in io.tagged[-2:]] == [b"n3.", b"n3."]
    # Neither answered lately: the round goes to every secondary at once.
    primary.start_round(now + 1.0)
    assert len(io.tagged) == 5 and (io.published[-1].command, io.published[-1].fields[2]) == ("HEARTBEAT", 6)
    assert primary.widen_round(now + 2.0) == float("inf")


def test_a_read_round_of_five_voters_asks_two_and_a_targeted_round_does_not_announce_the_commit(make):
    peers = [{"node_id": n, "host": "127.0.0.1", "port": 9000 + n} for n in range(1, 6)]
    eng, cfg = make(1, peers=peers)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    eng.handle(protocol.decode_request(protocol.encode_request("PUT", b"c", 1, 1, b"k", protocol.pack_value(1))))
    cycle(eng, primary)
    for pid in (2, 3):
        primary.on_ack((pid, 1, eng.storage.last_seq, 0, True), now=0.0)
    commit = eng.commit_seq
    assert commit == eng.storage.last_seq == 2      # the term's first entry and the put
    due = primary.announce_commit(0.0)
    primary.start_round(0.0)
    assert sorted(topic for topic, _ in io.tagged) == [b"n3.", b"n4."]
    assert all(m.fields[3] == commit for _, m in io.tagged)     # they carry the commit, but to two nodes only
    assert primary.announce_commit(due) == float("inf")
    assert (io.published[-1].command, io.published[-1].fields[3]) == ("HEARTBEAT", commit)     # so all hear it


def committed_put(eng, primary, rid, key, value, now):
    """A PUT on the primary, through one loop iteration, acknowledged by node 2 and applied."""
    eng.handle(protocol.decode_request(protocol.encode_request(
        "PUT", b"c", rid, rid, key, protocol.pack_value(value))))
    cycle(eng, primary)
    primary.on_ack((2, 1, eng.storage.last_seq, 0, True), now=now)
    eng.apply_to_commit()


def test_log_server_answers_fetch_and_snapshot(make):
    eng, cfg = make(1, log_retention=3)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    for i in range(10):
        committed_put(eng, primary, i + 1, b"k%d" % i, i, 1.0)
    assert eng.commit_seq == 11 and eng.storage.first_seq > 1
    server = LogServer(eng, cfg, io)
    server.on_fetch((3, 1, 1), [b"node-3"], now=2.0)
    assert io.replies[-1].command == "NEED_SNAPSHOT"
    server.on_fetch((3, 1, eng.storage.first_seq), [b"node-3"], now=2.0)
    entries = io.replies[-1]
    assert entries.command == "ENTRIES" and entries.fields[2] == eng.storage.first_seq - 1
    assert len(entries.fields[4]) == 11 - eng.storage.first_seq + 1
    server.on_snapshot((3, 1, 0, None), [b"node-3"], now=2.0)
    chunk = io.replies[-1]
    assert chunk.command == "SNAPSHOT_CHUNK" and chunk.fields[2:5] == (0, None, 11) and len(chunk.fields[6]) == 10
    assert chunk.fields[7] is None                                   # the last chunk
    # The log keeps the entries after a snapshot in use, however many come, so its receiver can go
    # on with FETCH; once the snapshot is unused for SNAPSHOT_TRIM_HOLD, trimming resumes.
    for i in range(10, 30):
        committed_put(eng, primary, i + 1, b"k%d" % i, i, 3.0)
    assert eng.storage.first_seq == 12 and eng.storage.last_seq == 31
    server.housekeeping(2.0 + SNAPSHOT_TRIM_HOLD)
    eng.handle(protocol.decode_request(protocol.encode_request("PUT", b"c", 99, 99, b"x", protocol.pack_value(1))))
    cycle(eng, primary)
    assert eng.storage.first_seq > 12


def test_a_snapshot_sent_whole_is_released_after_the_trim_hold_and_one_half_sent_is_kept(make, monkeypatch):
    """A RocksDB snapshot pins every value it can see, so deletes free no disk while it is held
    (short of disk, the space alarm would stay on): one whose last chunk went is released once
    unused for SNAPSHOT_TRIM_HOLD; one still being sent stays for SNAPSHOT_IDLE, for its receiver."""
    monkeypatch.setattr(limits, "SNAPSHOT", (2, 1 << 20))     # two items per chunk
    eng, cfg = make(1)
    eng.become_primary(1)
    io = FakeIO()
    primary = Primary(eng, cfg, Membership.from_config(cfg), io, 0.0)
    for i in range(3):
        committed_put(eng, primary, i + 1, b"k%d" % i, i, 1.0)
    server = LogServer(eng, cfg, io)
    server.on_snapshot((3, 1, 0, None), [b"node-3"], now=2.0)
    first = io.replies[-1]
    assert first.fields[7] is not None                              # more to come
    whole_seq = first.fields[4]
    server.on_snapshot((3, 1, whole_seq, first.fields[7]), [b"node-3"], now=2.0)
    assert io.replies[-1].fields[7] is None                         # node 3 has it all
    committed_put(eng, primary, 9, b"late", 9, 2.0)
    server.on_snapshot((2, 1, 0, None), [b"node-2"], now=2.0)     # node 2: first chunk only
    half_seq = io.replies[-1].fields[4]
    assert half_seq > whole_seq and io.replies[-1].fields[7] is not None
    server.housekeeping(2.0 + SNAPSHOT_TRIM_HOLD + 0.1)
    assert whole_seq not in server._snapshots and half_seq in server._snapshots
    server.housekeeping(2.0 + SNAPSHOT_IDLE + 0.1)
    assert half_seq not in server._snapshots


def test_secondary_appends_acks_and_repairs_gaps(make):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), entry(1, b"b")], 1, 2)), now=0.0)
    assert eng.storage.term == 1 and eng.storage.leader_id == 1 and eng.role == "secondary"
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 2, 0, False)))
    assert eng.storage.applied_seq == 1 and eng.storage.get(b"a") is not None and eng.storage.get(b"b") is None
    step(sec, PeerMessage("CHANGE", (1, 1, 5, 1, [entry(1, b"f")], 2, 6)), now=0.1)   # seqs 3-5 lost
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 1, 3)))
    n = len(io.sent)
    sec.tick(0.2)
    assert len(io.sent) == n                              # not yet: the FETCH may still be answered
    sec.tick(0.1 + FETCH_RETRY)
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 1, 3)))
    step(sec, PeerMessage("ENTRIES", (1, 1, 2, 1, [entry(1, b"c"), entry(1, b"d"), entry(1, b"e"),
                                                         entry(1, b"f")], 6, 6)), now=1.5)
    assert eng.storage.last_seq == 6 and eng.storage.applied_seq == 6
    step(sec, PeerMessage("HEARTBEAT", (1, 1, 4, 6, 6)), now=1.6)
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 6, 4, False)))
    assert not step(sec, PeerMessage("HEARTBEAT", (0, 3, 1, 0, 0)), now=1.7)    # a lower term: ignored
    assert not step(sec, PeerMessage("HEARTBEAT", (1, 3, 1, 0, 0)), now=1.7)    # not its primary
    assert eng.storage.leader_id == 1


def test_a_secondary_writes_an_iterations_changes_in_one_batch(make):
    """Two CHANGEs in one loop iteration are staged, matched and acknowledged (the ACKs leave after
    the iteration's commit, modes.Mode.end_iteration), and written together by the one flush."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    sec.on_message(PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), entry(1, b"b")], 1, 2)), now=0.0)
    sec.on_message(PeerMessage("CHANGE", (1, 1, 2, 1, [entry(1, b"c")], 2, 3)), now=0.0)
    st = eng.storage
    assert (st.last_seq, st.applied_seq, st.get(b"a")) == (0, 0, None)      # nothing written yet
    assert (eng.last_seq, eng.applied_seq, sec.matched) == (3, 2, 3)
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 3, 0, False)))
    eng.flush()
    assert (st.last_seq, st.last_term, st.applied_seq) == (3, 1, 2) and st.get(b"b") is not None
    assert st.get(b"c") is None                                                # not committed yet


def test_a_change_with_a_malformed_entry_stages_nothing(make):
    """Every entry is checked before any is staged: a CHANGE whose second entry is malformed (a put
    without its value) is refused whole, and the iteration's batch holds nothing of it."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    bad = protocol.encode_entry(LogEntry(1, b"c", 2, ((OP_PUT, b"k"),)))
    with pytest.raises(errors.MalformedMessage):
        sec.on_message(PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), bad], 1, 2)), now=0.0)
    eng.flush()
    assert (eng.last_seq, eng.applied_seq, eng.storage.last_seq, eng.storage.applied_seq) == (0, 0, 0, 0)
    assert eng.storage.get(b"a") is None and io.sent == []
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a")], 1, 1)), now=0.1)   # the stream goes on
    assert eng.storage.applied_seq == 1 and io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 1, 0, False)))


def test_secondary_refuses_a_primary_that_lost_its_log(make, caplog):
    """A primary of a later term whose log ends below what we applied lost data (or took writes
    without a majority): it is not followed, and that is logged once, not with every message."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), entry(1, b"b")], 2, 2)), now=0.0)
    sec = follow(eng, cfg, io, 2, leader_id=3)
    sent = len(io.sent)
    with caplog.at_level("ERROR"):
        assert not step(sec, PeerMessage("HEARTBEAT", (2, 3, 1, 0, 0)), now=1.0)   # its log ends at 0
        assert not step(sec, PeerMessage("CHANGE", (2, 3, 0, 0, [entry(2, b"x")], 0, 1)), now=1.1)
    assert len(io.sent) == sent and eng.storage.applied_seq == 2 and eng.storage.get(b"x") is None
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "node 3's log ends at seq 0, below our applied seq 2: it lost data, or entries were acknowledged "
        "without a majority (write_quorum below a majority); not following"]


def test_a_reply_built_before_the_stream_moved_on_is_not_taken_for_lost_data(make, caplog):
    """Seen in CI: a FETCH's ENTRIES carries the primary's log end when it was answered, before that
    iteration's flush, while the stream (another connection) had already brought and committed the
    next entry. The stale reply is followed like any other, with no ERROR, and moves nothing back."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a")], 0, 1)), now=0.0)
    sec.on_leader_progress(2, 1, now=0.1)           # a role reply says the log is ahead: FETCH from 2
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 1, 2)))
    step(sec, PeerMessage("CHANGE", (1, 1, 1, 1, [entry(1, b"b")], 2, 2)), now=0.2)   # the stream wins
    assert eng.storage.applied_seq == 2
    with caplog.at_level("ERROR"):
        assert step(sec, PeerMessage("ENTRIES", (1, 1, 1, 1, [], 1, 1)), now=0.3)    # answered at seq 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert (sec.leader_last, sec.leader_commit, sec.matched, eng.storage.applied_seq) == (2, 2, 2, 2)
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 2, 0, False)))


def test_secondary_never_acks_or_applies_entries_the_primary_did_not_vouch_for(make):
    """Entries 3-5 came from the primary's previous run, which died before making them durable.
    Restarted in term 2, the primary's log ends at 2: the secondary must not report or apply them."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"k", "old%d" % i) for i in range(5)], 2, 5)),
                   now=0.0)
    assert eng.storage.last_seq == 5 and eng.storage.applied_seq == 2
    io.sent.clear()
    sec = follow(eng, cfg, io, 2)
    step(sec, PeerMessage("HEARTBEAT", (2, 1, 1, 4, 4)), now=1.0)    # term 2; its first CHANGE was lost
    assert (1, PeerMessage("ACK", (2, 2, 2, 1, False))) in io.sent                # matched is 2, not 5
    assert (1, PeerMessage("FETCH", (2, 2, 3))) in io.sent                 # verify from the last match
    assert eng.storage.applied_seq == 2                                     # nothing unverified applied
    step(sec, PeerMessage("ENTRIES", (2, 1, 2, 1, [entry(2, b"noop"), entry(2, b"k", "new")], 4, 4)), now=1.1)
    st = eng.storage
    assert (st.last_seq, st.last_term, st.applied_seq) == (4, 2, 4)
    assert protocol.unpack_value(st.get(b"k")) == "new"
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 2, 4, 1, False)))   # carries the last round seen
    assert sec.counters["truncations"] == 1


def test_snapshot_chunks_from_a_duplicate_request_are_ignored(make):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("NEED_SNAPSHOT", (1, 1, 10)), now=0.0)
    assert io.sent[-1] == (1, PeerMessage("SNAPSHOT", (2, 1, 0, None)))
    step(sec, PeerMessage("SNAPSHOT_CHUNK", (1, 1, 0, None, 50, 1, [[b"a", b"\x01"]], b"b", None)), now=0.1)
    assert io.sent[-1] == (1, PeerMessage("SNAPSHOT", (2, 1, 50, b"b")))
    # A duplicate of the first request is answered again, with a newer snapshot: ignored.
    step(sec, PeerMessage("SNAPSHOT_CHUNK", (1, 1, 0, None, 51, 1, [[b"z", b"\x01"]], b"zz", None)), now=0.2)
    assert eng.storage.restoring and eng.storage.get(b"a") == b"\x01"
    # The last chunk carries the membership at the snapshot's seq: this node now follows it.
    members = [protocol.Member(1, "127.0.0.1", 9000, 10000, 11000), protocol.Member(2, "127.0.0.1", 9001, 10001, 11001),
               protocol.Member(5, "127.0.0.1", 9004, 10004, 11004, False)]
    step(sec, PeerMessage("SNAPSHOT_CHUNK", (1, 1, 50, b"b", 50, 1, [[b"b", b"\x02"]], None,
                                             protocol.encode_members(40, members))), now=0.4)
    st = eng.storage
    assert not st.restoring and (st.last_seq, st.applied_seq, st.first_seq) == (50, 50, 51)
    assert eng.membership.seq == 40 and sorted(eng.membership.members) == [1, 2, 5]
    assert eng.membership.voters == {1, 2} and protocol.decode_members(st.members) == (40, tuple(members))
    assert st.get(b"a") == b"\x01" and st.get(b"b") == b"\x02" and st.get(b"z") is None
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 1, 51)))


def test_committed_entries_from_a_contact_while_no_primary_is_heard(make):
    """Roles decides when (no primary heard, a contact reports a higher commit seq); the Secondary
    then takes committed entries from that contact: only up to its commit seq, applied at once, our
    conflicting leftovers dropped; a snapshot from it is installed only when it covers our whole
    log; hearing the primary ends it (docs/MEMBERSHIP.md, "A member that missed the changes")."""
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), entry(1, b"b"), entry(1, b"x")], 2, 3)), now=0.0)
    st = eng.storage
    assert (st.last_seq, st.applied_seq) == (3, 2)          # seq 3 is not known committed
    eng.follow(2, 0, None)
    sec = Secondary(eng, cfg, io, 0)                         # term 2, no primary known
    sec.catch_up_committed(3, 5, now=1.0)
    assert io.sent[-1] == (3, PeerMessage("FETCH", (2, 2, 3)))
    n = len(io.sent)
    # Its log holds 3-6 of term 2, committed up to 5: our seq 3 is a leftover, 6 is not taken.
    reply = PeerMessage("ENTRIES", (2, 3, 2, 1, [entry(2, b"c"), entry(2, b"d"), entry(2, b"e"), entry(2, b"f")], 5, 6))
    assert not step(sec, reply, now=1.1)                     # not a primary: nothing about one was heard
    assert (st.last_seq, st.last_term, st.applied_seq) == (5, 2, 5)
    assert st.get(b"x") is None and st.get(b"e") is not None and st.get(b"f") is None
    assert len(io.sent) == n and sec.counters["truncations"] == 1   # no ACK to anyone; done
    step(sec, reply, now=1.2)                                # a duplicate changes nothing
    assert (st.last_seq, st.applied_seq) == (5, 5)
    # Its log no longer reaches back to seq 6: a snapshot, only if it covers all of ours.
    st_before = (st.first_seq, st.last_seq, st.applied_seq)
    sec.catch_up_committed(3, 9, now=2.0)
    step(sec, PeerMessage("NEED_SNAPSHOT", (2, 3, 8)), now=2.1)
    assert io.sent[-1] == (3, PeerMessage("SNAPSHOT", (2, 2, 0, None)))
    step(sec, PeerMessage("SNAPSHOT_CHUNK", (2, 3, 0, None, 4, 2, [[b"q", b"\x01"]], None, None)), now=2.2)
    assert not st.restoring and (st.first_seq, st.last_seq, st.applied_seq) == st_before and st.get(b"q") is None
    n = len(io.sent)
    sec.catch_up_committed(3, 9, now=3.0)                    # it cannot help: left alone for a while
    assert len(io.sent) == n
    sec.catch_up_committed(3, 9, now=2.2 + SOURCE_BACKOFF)
    step(sec, PeerMessage("NEED_SNAPSHOT", (2, 3, 8)), now=7.3)
    step(sec, PeerMessage("SNAPSHOT_CHUNK", (2, 3, 0, None, 9, 2, [[b"q", b"\x01"]], None, None)), now=7.4)
    assert (st.last_seq, st.applied_seq, st.first_seq) == (9, 9, 10) and st.get(b"q") == b"\x01"
    assert io.sent[-1] == (3, PeerMessage("FETCH", (2, 2, 10)))
    # A contact that stops answering is given up after SOURCE_PATIENCE; another is asked.
    sec.tick(7.4 + SOURCE_PATIENCE)
    n = len(io.sent)
    sec.catch_up_committed(3, 12, now=8.0 + SOURCE_PATIENCE)
    assert len(io.sent) == n
    sec.catch_up_committed(4, 12, now=8.0 + SOURCE_PATIENCE)
    assert io.sent[-1] == (4, PeerMessage("FETCH", (2, 2, 10)))
    # One whose committed entry differs from ours is never asked again.
    step(sec, PeerMessage("ENTRIES", (2, 4, 9, 1, [entry(2, b"z")], 12, 12)), now=11.0)
    assert st.last_seq == 9 and st.get(b"z") is None
    n = len(io.sent)
    sec.catch_up_committed(4, 12, now=30.0)
    assert len(io.sent) == n
    # Known but not heard, primary 1 speaks again: the catch-up from node 5 ends, FETCH goes to it.
    sec = follow(eng, cfg, io, 2, leader_id=1)
    sec.catch_up_committed(5, 12, now=40.0)
    assert io.sent[-1] == (5, PeerMessage("FETCH", (2, 2, 10)))
    step(sec, PeerMessage("HEARTBEAT", (2, 1, 1, 9, 11)), now=40.1)
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 2, 10)))
    step(sec, PeerMessage("ENTRIES", (2, 5, 9, 2, [entry(2, b"late")], 12, 12)), now=40.2)
    assert st.last_seq == 9 and st.get(b"late") is None      # the late answer is not taken
    # ENTRIES from the primary that answer no FETCH to it (sent while it was a contact) are not taken.
    sec = follow(eng, cfg, io, 2, leader_id=5)
    assert not step(sec, PeerMessage("ENTRIES", (2, 5, 9, 2, [entry(2, b"early")], 10, 10)), now=41.0)
    assert st.last_seq == 9


def test_rounds_from_another_run_of_the_primary_confirm_nothing(make):
    eng, cfg = make(1)
    eng.become_primary(2)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    primary.on_ack((2, 2, 0, 57, True), now=1.0)   # round 57 of an old run
    primary.start_round(1.0)
    assert primary.round == 1 and primary.confirmed_round() == 0


def test_secondary_numbers_rounds_afresh_for_a_new_primary_term(make):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    step(sec, PeerMessage("HEARTBEAT", (1, 1, 57, 0, 0)), now=0.0)
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 1, 0, 57, False)))
    sec = follow(eng, cfg, io, 2)
    step(sec, PeerMessage("CHANGE", (2, 1, 0, 0, [entry(2, b"noop")], 0, 1)), now=0.1)   # new term
    assert io.sent[-1] == (1, PeerMessage("ACK", (2, 2, 1, 0, False)))


def test_a_fetch_that_could_not_be_sent_goes_at_the_next_tick(make):
    eng, cfg = make(2)
    io = FakeIO()
    sec = follow(eng, cfg, io, 1)
    io.connected = False                       # the link to the primary is not up yet
    step(sec, PeerMessage("HEARTBEAT", (1, 1, 0, 0, 5)), now=0.0)
    assert io.sent == []
    io.connected = True
    sec.tick(0.1)                              # well before FETCH_RETRY
    assert io.sent[-1] == (1, PeerMessage("FETCH", (2, 1, 1)))
    sec.tick(0.2)
    assert len(io.sent) == 1                   # sent now: the retry waits FETCH_RETRY


def test_a_new_primary_scans_only_after_its_terms_first_entry_commits(make):
    """Entries its predecessor committed may not be committed here yet: a linearizable scan must
    not read data from before them (a get waits on the pending entry instead)."""
    eng, cfg = make(1)
    eng.become_primary(2)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    scan = protocol.encode_request("SCAN", b"c", 1, 1, None, None, None, None, False)
    with pytest.raises(errors.Unavailable):
        eng.handle(protocol.decode_request(scan))
    stale = protocol.encode_request("SCAN", b"c", 2, 2, None, None, None, None, True)
    eng.handle(protocol.decode_request(stale))                  # stale scans answer at once
    cycle(eng, primary)
    primary.on_ack((2, 2, eng.storage.last_seq, 0, True), now=1.0)
    assert eng.commit_seq == eng.term_first_seq
    reply, _ = eng.handle(protocol.decode_request(scan))
    assert protocol.decode_reply(reply).ok


def test_entries_of_an_earlier_term_commit_only_under_one_of_this_term_and_the_log_is_read_once(make):
    """Raft's rule (DESIGN.md 4.2) through Primary._of_this_term: a quorum holding term-1 entries
    commits nothing for the primary of term 2 until its own first entry is held; from then on the
    commit moves without reading the log (it read one entry to learn where its term starts)."""
    eng, cfg = make(1)
    eng.become_primary(1)
    put = lambda rid: protocol.decode_request(protocol.encode_request(     # noqa: E731
        "PUT", b"c" * 16, rid, 1, b"k%d" % rid, protocol.pack_value(rid)))
    eng.handle(put(1))
    eng.flush()
    eng.become_primary(2)               # its empty entry: seq 3, term 2
    eng.flush()
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    primary.on_ack((2, 2, 2, 0, True), now=1.0)
    primary.on_ack((3, 2, 2, 0, True), now=1.0)
    assert eng.commit_seq == 0 and eng.term_at(2) == 1
    primary.on_ack((2, 2, 3, 0, True), now=1.0)
    assert eng.commit_seq == 3
    reads = []
    term_at = eng.storage.term_at
    eng.storage.term_at = lambda seq: reads.append(seq) or term_at(seq)
    for rid in (2, 3):
        eng.handle(put(rid))
        eng.flush()
    primary.on_ack((2, 2, 4, 0, True), now=1.0)
    primary.on_ack((2, 2, 5, 0, True), now=1.0)
    assert eng.commit_seq == 5 and reads == []


def test_copies_on_learners_do_not_count_toward_commit(make):
    """A learner (a new data dir) may have lost a vote it gave: the primary does not count its ACKs."""
    eng, cfg = make(1)
    eng.become_primary(1)
    primary = Primary(eng, cfg, Membership.from_config(cfg), FakeIO(), 0.0)
    cycle(eng, primary)
    primary.on_ack((2, 1, 1, 0, False), now=1.0)
    assert eng.commit_seq == 0
    primary.on_ack((3, 1, 1, 0, True), now=1.0)
    assert eng.commit_seq == 1
