"""What a dynamo-mode node serves change feeds from (docs/WATCH.md, "Dynamo mode"): the entries of
each origin's log that this node has applied durably, and snapshots of its key states. Positions
are applied vectors {origin: seq}; `watch.Watches` asks. No I/O beyond RocksDB reads."""
from .. import errors, limits, protocol
from ..storage import log_key
from .commands import refuse_partial
from .layout import _decode_state


def siblings_wire(state) -> list:
    """A key state's versions as GET_VERSIONS lists them: [[value or nil, origin, seq, hlc], ...]."""
    return [[s.value, s.node, s.seq, s.hlc] for s in state.siblings]


def _wire_size(siblings) -> int:
    """About what a sibling list costs encoded (a value's bytes, and the rest of each entry)."""
    return sum(len(value or b"") + 32 for value, *_ in siblings)


class DynamoFeed:
    def __init__(self, engine):
        self.engine = engine
        self.storage = engine.storage

    def refusal(self, stale):
        """Any member serves its own feed (`stale` means nothing here); a removed one serves none."""
        removed_by = self.engine.membership.removed_by
        if removed_by is not None:
            return errors.Unavailable(f"node {self.engine.node_id} was removed from the cluster (by node "
                                      f"{removed_by}); watch through another member")
        try:
            refuse_partial(self.engine, "watch (and backup)")
        except errors.UnsupportedOperation as exc:
            return exc
        return None

    def position(self) -> dict:
        """What is durable here: the applied vector the last flush wrote."""
        return self.engine.durable_applied

    @staticmethod
    def wire(position) -> list:
        return [[origin, seq] for origin, seq in sorted(position.items()) if seq]

    @staticmethod
    def group_key(position):
        return tuple(sorted((o, s) for o, s in position.items() if s))

    @staticmethod
    def behind(position, upto) -> bool:
        return any(seq > position.get(origin, 0) for origin, seq in upto.items())

    def start(self, from_) -> dict:
        """A new watch's position: `from_` (an applied vector, as pairs), or the durable applied
        vector for None. Raises BadArgument for a seq, Compacted when a log no longer reaches it."""
        if from_ is None:
            return dict(self.engine.durable_applied)
        if type(from_) is not list:
            raise errors.BadArgument("a dynamo-mode watch resumes from an applied vector (array of [origin, seq]), "
                                     "not a seq")
        # Only origins this node knows are kept: a vector is sorted, copied and sent back at every
        # step, so a client must not make it as large as it likes. An origin left out is read from
        # its start when it appears, and the client drops what it already has.
        known = self.engine.applied
        position = {o: s for o, s in protocol.vector_from_pairs(from_).items() if o in known}
        self.check_retained(position)
        return position

    def check_retained(self, position):
        first = self.engine.first
        short = {o: f - 1 for o, f in first.items() if position.get(o, 0) + 1 < f
                 and position.get(o, 0) < self.engine.durable_applied.get(o, 0)}
        if short:
            min_from = {**position, **short}
            raise errors.Compacted(f"the logs of {len(short)} origin(s) no longer reach this watch's position; "
                                   f"resume from the vector in min_from, or watch with snapshot=True",
                                   {"min_from": self.wire(min_from)})

    def read(self, position, upto, max_bytes):
        """The next entries after `position`, origin by origin, about `max_bytes` at most (at least
        one entry): (new position, [(key, [origin, seq, hlc, key, value or nil, siblings]), ...]),
        each origin's entries in seq order. `siblings` is the key's state when read. Raises
        Compacted."""
        self.check_retained(position)
        page = limits.WATCH
        budget = max(1, min(page.bytes, max_bytes))
        new, changes, size, count = dict(position), [], 0, 0
        states = {}     # key -> (siblings, their size): read once per page
        for origin, last in sorted(upto.items()):
            have = position.get(origin, 0)
            if last <= have:
                continue
            for _key, raw in self.storage.iter_cf("log", log_key(origin, have + 1), log_key(origin, last + 1)):
                if count and (size >= budget or count >= page.items):
                    return new, changes
                entry = protocol.decode_dyn_entry(raw)
                for key, _ctx, value in entry.ops:
                    siblings, cost = states.get(key) or states.setdefault(key, self._siblings(key))
                    changes.append((key, [origin, entry.seq, entry.hlc, key, value, siblings]))
                    size += cost        # each item carries the key's versions again
                new[origin] = entry.seq
                size += len(raw)
                count += 1
        return new, changes

    def _siblings(self, key):
        raw = self.engine.durable_state(key)
        siblings = siblings_wire(_decode_state(raw)) if raw is not None else []
        return siblings, _wire_size(siblings)

    def snapshot(self):
        """(a RocksDB snapshot of the key states, the applied vector it is at)."""
        return self.storage.data_snapshot(), dict(self.engine.durable_applied)

    def snapshot_page(self, snapshot, prefix, cursor, max_bytes):
        """(items [[key, siblings]] of keys with a live version, next cursor or None)."""
        page = limits.WATCH
        items, next_key = self.storage.scan(cursor, None, prefix, page.items, max(1, min(page.bytes, max_bytes)),
                                            value_of=_live, snapshot=snapshot)
        return [(key, siblings_wire(_decode_state(raw))) for key, raw in items], next_key


def _live(raw):
    """The stored state when the key has a version that is not a delete, else None: a key where a
    delete wins over a concurrent write is kept, with both (GET shows it absent, GET_VERSIONS both)."""
    return raw if any(s.value is not None for s in _decode_state(raw).siblings) else None
