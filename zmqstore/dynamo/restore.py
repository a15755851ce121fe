"""Loading a dynamo-mode backup into a new data dir (backup.restore_into; docs/OPERATIONS.md,
"Backup and restore").

A dynamo backup holds each live key's versions (value, dot, HLC) at one applied vector. A restored
node stores each key's state with the context its versions' dots make, the hash index anti-entropy
reads, and an applied vector with an empty log for every origin in it: the log starts after the
vector, as if every node had trimmed it. That vector is the backup's, joined with every version's
dot: a node may hold a version it took by anti-entropy or read repair before applying its origin's
entry, and no entry of an old origin ever reaches a restored cluster. So nodes restored from one
file hold the same data, the same vector and the same digest, and agree at once; a node that joins
later finds the old origins' entries trimmed and takes their data by anti-entropy, as after any
garbage collection.
Writes after the restore come from each node's new origin (engine.py picks one per run, never one
the applied vector holds), so none can take a restored write's dot.
"""
from .. import errors
from ..protocol import encode_key_state
from ..storage import META_APPLIED, META_FIRST, META_HLC
from ..versions import Sibling
from .layout import _U64, _hash_key, _state_hash, bucket_of, origin_name

DYNAMO_META = (b"d:", b"d;")      # every dynamo key in the meta column family (storage.py)


class DynamoRestore:
    def __init__(self, config):
        self.config = config
        self.vector = {}        # the backup's applied vector, joined with every version's dot (check_item)
        self.hlc = 0

    def check_header(self, header):
        """The header's `seq` must be an applied vector: [[origin, seq], ...], each origin once."""
        pairs = header.get("seq")
        if type(pairs) is not list or not all(
                type(p) is list and len(p) == 2 and all(type(n) is int and 0 <= n < 1 << 64 for n in p)
                for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
            raise errors.BadBackup("the dynamo backup's header has no applied vector")
        self.vector = {origin: seq for origin, seq in pairs if seq}

    def check_item(self, item, number):
        """A key and its versions, as a dynamo node serves them: at least one of them not a delete,
        each dot once, and the whole state within what peers accept. The applied vector is joined
        with the versions' dots."""
        state = self._state(item)
        if state is None or len(state) > 2 * self.config.max_request_size:
            raise errors.BadBackup(f"item {number} of the backup is not a key and versions this node accepts")
        for _value, origin, seq, _hlc in item[1]:
            if seq > self.vector.get(origin, 0):
                self.vector[origin] = seq

    def put(self, batch, item):
        key = item[0]
        raw = self._state(item)
        batch.put_cf("data", key, raw)
        batch.put_cf("meta", _hash_key(bucket_of(key), key), _U64.pack(_state_hash(key, raw)))
        self.hlc = max([self.hlc, *(hlc for _value, _origin, _seq, hlc in item[1])])

    def start(self, batch):
        batch.delete_range_cf("meta", *DYNAMO_META)     # what an interrupted restore left

    def finish(self, batch):
        for origin, seq in self.vector.items():
            batch.put_cf("meta", META_APPLIED + _U64.pack(origin), _U64.pack(seq))
            batch.put_cf("meta", META_FIRST + _U64.pack(origin), _U64.pack(seq + 1))
        batch.put_cf("meta", META_HLC, _U64.pack(self.hlc))

    def position(self) -> str:
        return "applied vector {" + ", ".join(f"{origin_name(o)}: {s}" for o, s in sorted(self.vector.items())) + "}"

    def _state(self, item):
        """The stored state of a backup item, or None when the item is not a valid one."""
        cfg = self.config
        if type(item) is not list or len(item) != 2 or type(item[0]) is not bytes or type(item[1]) is not list:
            return None
        key, versions = item
        if not 0 < len(key) <= cfg.max_key_size or not versions:
            return None
        siblings, ctx = [], {}
        for version in versions:
            if type(version) is not list or len(version) != 4:
                return None
            value, origin, seq, hlc = version
            if not (type(origin) is int and type(seq) is int and type(hlc) is int and 0 <= origin < 1 << 64
                    and 0 < seq < 1 << 64 and 0 <= hlc < 1 << 64) or not (
                    value is None or type(value) is bytes and len(value) <= cfg.max_value_size):
                return None
            siblings.append(Sibling(origin, seq, hlc, value))
            ctx[origin] = max(ctx.get(origin, 0), seq)
        siblings.sort(key=lambda s: (s.node, s.seq))
        if all(s.value is None for s in siblings) or len({(s.node, s.seq) for s in siblings}) != len(siblings):
            return None
        return encode_key_state(ctx, siblings)
