"""Roles' decisions on real storage in tmp_path, read from the iteration's Sends (no sockets)."""
from zmqstore import config, faults, protocol
from zmqstore.leader.election import Vote
from zmqstore.modes import LeaderMode
from zmqstore.protocol import OP_PUT, LogEntry, PeerMessage
from zmqstore.sends import TO_PEER, Sends
from zmqstore.storage import Storage


def entry(term, key):
    return protocol.encode_entry(LogEntry(term, b"c", 1, ((OP_PUT, key, protocol.pack_value(1)),)))


def test_a_candidacy_counts_the_entries_staged_in_the_same_iteration(tmp_path):
    """A secondary stages a CHANGE (its ACK leaves after the iteration's commit, so the primary may
    count it toward a commit), then stands in the same iteration. Its own vote must show those
    entries: a winner adopts the best log among the votes, and one that missed them could lose a
    committed write."""
    peers = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in (1, 3)]
    cfg = config.resolve(None, {"node_id": 2, "host": "127.0.0.3", "port": 9000, "data_dir": str(tmp_path),
                                "peers": peers})
    storage = Storage.open(cfg.data_dir, 2, "leader")
    try:
        out = Sends()
        mode = LeaderMode(out, storage, cfg, faults.NONE, 0.0)
        mode.engine.record_vote(1, 1, learner=False)         # a founding voter, following node 1 in term 1
        roles = mode.roles
        roles.on_message(PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"a"), entry(1, b"b")], 0, 2)), 0.0)
        assert storage.last_seq == 0 and mode.engine.last_seq == 2      # staged, acknowledged after the commit
        # Node 3 reports the primary lost: node 2, the lowest id alive, stands at once.
        roles.on_message(PeerMessage("ROLE_REPLY", (3, 1, "secondary", 1, 0, 0, 0, True, True, "127.0.0.4:9000",
                                                    "127.0.0.4:9002", False, [2, 2])), 5.0)
        assert roles.election.candidacy is not None
        assert roles.election.candidacy.votes[2] == Vote(1, 2)
        requests = [protocol.decode_peer(body) for kind, to, body in out.take() if kind is TO_PEER and to == 3]
        assert PeerMessage("VOTE_REQUEST", (2, 2, 2, 1)) in requests
        assert storage.last_seq == 2                          # written before the candidacy's vote
    finally:
        storage.close()


def test_a_secondary_short_of_disk_keeps_the_entries_a_peer_lacks(tmp_path):
    """Short of disk a secondary trims its log, but never past what a peer (heard lately or not) last
    said it holds: if it becomes primary it must bring that peer up to date from its log, since a new
    primary serves no snapshot before its term's first entry commits."""
    peers = [{"node_id": n, "host": f"127.0.0.{n + 1}", "port": 9000} for n in (1, 3)]
    cfg = config.resolve(None, {"node_id": 2, "host": "127.0.0.3", "port": 9000, "data_dir": str(tmp_path),
                                "peers": peers})
    storage = Storage.open(cfg.data_dir, 2, "leader")

    def role(node_id, last_seq):
        return PeerMessage("ROLE_REPLY", (node_id, 1, "primary" if node_id == 1 else "secondary", 1, last_seq, 1,
                                          last_seq, False, True, "h:1", "h:2", False, [2, 2]))

    def iteration():
        mode.engine.make_room()
        mode.end_iteration(lambda items: None, lambda failed: None)

    try:
        mode = LeaderMode(Sends(), storage, cfg, faults.NONE, 0.0)
        mode.engine.record_vote(1, 1, learner=False)
        roles = mode.roles
        roles.on_message(PeerMessage("CHANGE", (1, 1, 0, 0, [entry(1, b"k%d" % i) for i in range(20)], 20, 20)), 0.0)
        roles.on_message(role(1, 20), 0.1)
        roles.on_message(role(3, 5), 0.1)
        iteration()
        assert (storage.applied_seq, storage.first_seq) == (20, 1)     # no alarm: log_retention keeps all
        mode.engine.space_alarm = True
        iteration()
        assert storage.first_seq == 6           # node 3 holds up to 5
        roles.on_message(role(3, 15), 0.2)
        iteration()
        assert storage.first_seq == 16
    finally:
        storage.close()
