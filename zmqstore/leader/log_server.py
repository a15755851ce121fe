"""LogServer: FETCH and SNAPSHOT answered from this node's own log and data, whatever its role
(docs/REPLICATION.md, "Repair" and "Snapshots"). What it sends goes into the iteration's Sends."""
import logging

from .. import limits, protocol

SNAPSHOT_IDLE = 60.0              # seconds an unused snapshot is kept for a secondary to come back
                                  # (once its last chunk was sent: SNAPSHOT_TRIM_HOLD, since a RocksDB
                                  # snapshot pins every value it can see: deletes free no disk meanwhile)
SNAPSHOT_TRIM_HOLD = 10.0         # seconds after a snapshot's last use during which the log keeps the
                                  # entries after it, so its receiver can go on with FETCH

log = logging.getLogger("zmqstore.leader")


class LogServer:
    """Serves FETCH and SNAPSHOT from this node's own log and data, whatever its role: secondaries
    fetch from the primary, a candidate that won fetches the log it adopts from a voter."""

    def __init__(self, engine, config, out):
        self.engine = engine
        self.storage = engine.storage
        self.node_id = config.node_id
        self.out = out
        self._snapshots = {}            # snapshot seq -> [snapshot, term, last used, membership at its seq, last chunk sent]
        self._now = float("-inf")       # the latest time this was told
        self.counters = {"fetches_served": 0, "snapshots_served": 0}
        engine.trim_floor = self.trim_floor

    def trim_floor(self):
        """The lowest seq the log must keep (None: no limit): the entry after every snapshot in use.
        Without it, a snapshot that takes longer to install than the primary takes to write
        log_retention entries would be followed by NEED_SNAPSHOT again, for ever."""
        recent = [seq for seq, held in self._snapshots.items() if self._now - held[2] < SNAPSHOT_TRIM_HOLD]
        return min(recent) + 1 if recent else None

    def on_fetch(self, fields, envelope, now):
        node_id, _term, from_seq = fields
        st = self.storage
        if st.restoring:
            return      # our log and data are being replaced: nothing to serve (the asker retries)
        if from_seq < st.first_seq:
            self.out.reply_peer(envelope, protocol.encode_peer("NEED_SNAPSHOT", st.term, self.node_id, st.first_seq))
            return
        from_seq = min(from_seq, st.last_seq + 1)
        self.counters["fetches_served"] += 1
        entries = st.read_entries(from_seq, *limits.FETCH["leader"])
        self.out.reply_peer(envelope, protocol.encode_peer(
            "ENTRIES", st.term, self.node_id, from_seq - 1, st.term_at(from_seq - 1), entries,
            self.engine.commit_seq, st.last_seq))

    def on_snapshot(self, fields, envelope, now):
        node_id, _term, asked_seq, asked_cursor = fields
        self._now = now
        eng = self.engine
        if self.storage.restoring or (eng.role == "primary" and eng.commit_seq < eng.term_first_seq):
            # Restoring: nothing to serve. A new primary: its applied data may lag entries its
            # predecessor committed, and the receiver empties its log for the snapshot: wait
            # (the asker retries) until this term's first entry, and so all before it, commits.
            return
        snapshot_seq, cursor = asked_seq, asked_cursor
        held = self._snapshots.get(snapshot_seq) if snapshot_seq else None
        if held is None:
            # Taken between loop iterations, data is exactly at applied_seq.
            snapshot_seq = self.storage.applied_seq
            held = [self.storage.data_snapshot(), self.storage.term_at(snapshot_seq), now, self.storage.members, False]
            self._snapshots[snapshot_seq] = held
            self.counters["snapshots_served"] += 1
            cursor = None
            log.info("snapshot at seq %d for node %d", snapshot_seq, node_id)
        held[2] = now
        items, next_cursor = self.storage.snapshot_page(held[0], cursor, *limits.SNAPSHOT)
        held[4] = held[4] or next_cursor is None
        self.out.reply_peer(envelope, protocol.encode_peer(
            "SNAPSHOT_CHUNK", self.storage.term, self.node_id, asked_seq, asked_cursor, snapshot_seq, held[1],
            items, next_cursor, held[3] if next_cursor is None else None))

    def housekeeping(self, now):
        self._now = now
        for seq in [s for s, held in self._snapshots.items()
                    if now - held[2] > (SNAPSHOT_TRIM_HOLD if held[4] else SNAPSHOT_IDLE)]:
            del self._snapshots[seq]

    def close(self):
        self._snapshots.clear()     # snapshots hold RocksDB open
