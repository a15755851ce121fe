"""What a leader-mode node serves change feeds from (docs/WATCH.md): the committed entries of its
own log, up to its applied seq, and snapshots of its applied data. `watch.Watches` asks; no I/O
beyond RocksDB reads."""
from .. import errors, limits, protocol


class LeaderFeed:
    """Positions are log seqs: a watcher at `through` has every change with a seq up to it."""

    def __init__(self, engine):
        self.engine = engine
        self.storage = engine.storage

    def refusal(self, stale):
        """The error ending a watch this node may not serve now (None: it may): a secondary's
        `not_primary` unless `stale`, a removed node's always, `unavailable` while a snapshot is
        installed (its log and data are being replaced)."""
        try:
            self.engine.commands.check_readable(stale)
        except errors.ZmqstoreError as exc:
            return exc
        return None

    def position(self) -> int:
        """How far a watcher can be brought now: the applied seq (only committed entries)."""
        return self.storage.applied_seq

    @staticmethod
    def wire(position) -> int:
        return position

    @staticmethod
    def group_key(position) -> int:
        return position

    @staticmethod
    def behind(position, upto) -> bool:
        return position < upto

    def start(self, from_):
        """The position a new watch starts at: `from_` (a seq), or the applied seq for None. Raises
        Compacted when the log no longer holds the entry after `from_`, BadArgument for a vector
        (dynamo mode's positions) or, on the primary, a seq beyond its log (no committed entry can
        be there; a secondary may lag, and then the watch waits)."""
        st = self.storage
        if from_ is None:
            return st.applied_seq
        if type(from_) is not int:
            raise errors.BadArgument("a leader-mode watch resumes from a seq (uint), not an applied vector")
        self.check_retained(from_)
        if self.engine.role == "primary" and from_ > st.last_seq:
            raise errors.BadArgument(f"from = {from_} is beyond this primary's log (last seq {st.last_seq}): "
                                     f"no committed change can be there")
        return from_

    def check_retained(self, through):
        st = self.storage
        if through + 1 < st.first_seq:
            min_from = st.first_seq - 1
            raise errors.Compacted(f"the log no longer holds seq {through + 1} (it starts at {st.first_seq}); "
                                   f"resume from {min_from} or later, or watch with snapshot=True",
                                   {"min_from": min_from})

    def read(self, through, upto, max_bytes):
        """One page of committed changes after `through`, up to seq `upto`, of about `max_bytes` of
        entries at most (at least one entry): (new through, [(key, [seq, key, value or None]), ...])
        in seq order; every entry read is whole in it. Raises Compacted."""
        self.check_retained(through)
        page = limits.WATCH
        raws = self.storage.read_entries(through + 1, min(page.items, upto - through),
                                         max(1, min(page.bytes, max_bytes)))
        changes = []
        seq = through
        for raw in raws:
            seq += 1
            for op in protocol.data_ops(protocol.decode_entry(raw)):
                changes.append((op[1], [seq, op[1], op[2] if op[0] == protocol.OP_PUT else None]))
        return seq, changes

    def snapshot(self):
        """(a RocksDB snapshot of the applied data, the seq it is at)."""
        return self.storage.data_snapshot(), self.storage.applied_seq

    def snapshot_page(self, snapshot, prefix, cursor, max_bytes):
        """(items [(key, value)], next cursor or None) of the snapshot under `prefix` from `cursor`,
        about `max_bytes` at most (at least one item)."""
        page = limits.WATCH
        return self.storage.scan(cursor, None, prefix, page.items, max(1, min(page.bytes, max_bytes)),
                                 snapshot=snapshot)
