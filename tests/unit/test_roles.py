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
