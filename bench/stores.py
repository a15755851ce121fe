"""One client of each store compared by bench/compare.py, behind the same five operations, so the YCSB loop
(bench/ycsb.py) runs unchanged against all of them: read, update (also inserts), scan, read-modify-write
and pipelined puts, plus the bulk load.

`connect(spec, worker)` builds the client a spec (a dict, sent to client processes) names. Each client
uses its store the way that store's users do:
- zmqstore: `zmqstore.Client`. Leader mode: every client names every node and is redirected to the
  primary; with `read_index`, client k reads (GET with read_index) from node k mod 3, secondaries
  included, and writes through the primary. Dynamo mode: client k talks to node k mod 3 (every node
  accepts writes), with `w` per put.
  Read-modify-write: get + cas (leader mode), get_versions + put with its context (dynamo mode).
- Redis: redis-py (with hiredis) on the primary. Reads and writes go to the primary, as by default.
  With `wait`, every write, and every pipeline batch, is followed by WAIT 1 in the same round trip.
  Scans: a sorted set of every key (as YCSB's Redis binding keeps an index), ZRANGE BYLEX + MGET in
  one Lua script. Read-modify-write: GET, then a compare-and-set Lua script.
- etcd: gRPC (bench/etcd_grpc.py); client k talks to member k mod 3, as etcd's client balances over
  its endpoints. Reads are linearizable (etcd's default). Read-modify-write: Range, then a Txn on the
  key's mod_revision.
"""
from zmqstore import Client

LOAD_BATCH = 200
WAIT_TIMEOUT_MS = 5000

REDIS_INDEX = b"ycsb:index"
REDIS_SCAN = """
local keys = redis.call('ZRANGE', KEYS[1], '[' .. ARGV[1], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
if #keys == 0 then return {} end
return redis.call('MGET', unpack(keys))
"""
REDIS_CAS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""


def connect(spec, worker=0):
    kind = spec["kind"]
    if kind == "zmqstore":
        return ZmqstoreClient(spec, worker)
    if kind == "redis":
        return RedisClient(spec)
    if kind == "etcd":
        return EtcdClient(spec, worker)
    raise ValueError(f"unknown store {kind}")


class ZmqstoreClient:
    def __init__(self, spec, worker):
        endpoints = spec["endpoints"]
        self.dynamo = spec["mode"] == "dynamo"
        if self.dynamo:
            endpoints = [endpoints[worker % len(endpoints)]]
        self.db = Client(endpoints, timeout=10.0)
        self.w = spec.get("w") if self.dynamo else None
        self.read_index = bool(spec.get("read_index"))
        self.reader = Client([endpoints[worker % len(endpoints)]], timeout=10.0) if self.read_index else self.db

    def read(self, key):
        return self.reader.get(key, read_index=self.read_index)

    def update(self, key, value):
        self.db.put(key, value, w=self.w)

    insert = update

    def scan(self, start, limit):
        return list(self.db.scan(start=start, limit=limit))

    def read_modify_write(self, key, value):
        if self.dynamo:
            versions = self.db.get_versions(key)
            self.db.put(key, value, context=versions.context, w=self.w)
        else:
            self.db.cas(key, self.read(key), value)

    def put_pipelined(self, keys, value, depth):
        pipe = self.db.pipeline(max_in_flight=depth)
        for key in keys:
            pipe.put(key, value, w=self.w)
        pipe.execute()

    def load(self, items):
        for start in range(0, len(items), LOAD_BATCH):
            self.db.put_many(items[start:start + LOAD_BATCH], w=self.w)

    def close(self):
        self.db.close()
        if self.reader is not self.db:
            self.reader.close()


class RedisClient:
    def __init__(self, spec):
        import redis
        self.r = redis.Redis(host=spec["host"], port=spec["port"], socket_timeout=10)
        self.wait = spec["wait"]
        self._scan = self.r.register_script(REDIS_SCAN)
        self._cas = self.r.register_script(REDIS_CAS)

    def _writes(self, *queue):
        """Queue commands on a pipeline (each a function of it), add WAIT 1 when asked, send them
        in one round trip; a WAIT that no replica answered in time is an error."""
        pipe = self.r.pipeline(transaction=False)
        for command in queue:
            command(pipe)
        if self.wait:
            pipe.wait(1, WAIT_TIMEOUT_MS)
        replies = pipe.execute()
        if self.wait and replies[-1] < 1:
            raise RuntimeError("WAIT 1: no replica acknowledged the write in time")
        return replies

    def read(self, key):
        return self.r.get(key)

    def update(self, key, value):
        if self.wait:
            self._writes(lambda p: p.set(key, value))
        else:
            self.r.set(key, value)

    def insert(self, key, value):
        self._writes(lambda p: p.set(key, value), lambda p: p.zadd(REDIS_INDEX, {key: 0}))

    def scan(self, start, limit):
        return self._scan(keys=[REDIS_INDEX], args=[start, limit])

    def read_modify_write(self, key, value):
        old = self.r.get(key) or b""
        self._writes(lambda p: self._cas(keys=[key], args=[old, value], client=p))

    def put_pipelined(self, keys, value, depth):
        for start in range(0, len(keys), depth):
            self._writes(*(lambda p, k=k: p.set(k, value) for k in keys[start:start + depth]))

    def load(self, items):
        for start in range(0, len(items), LOAD_BATCH):
            batch = items[start:start + LOAD_BATCH]
            self._writes(lambda p: p.mset(dict(batch)), lambda p: p.zadd(REDIS_INDEX, {k: 0 for k, _ in batch}))

    def close(self):
        self.r.close()


class EtcdClient:
    def __init__(self, spec, worker):
        from etcd_grpc import Etcd
        endpoints = spec["endpoints"]
        self.etcd = Etcd(endpoints[worker % len(endpoints)])

    def read(self, key):
        return self.etcd.get(key)[0]

    def update(self, key, value):
        self.etcd.put(key, value)

    insert = update

    def scan(self, start, limit):
        return self.etcd.scan(start, limit)

    def read_modify_write(self, key, value):
        _old, revision = self.etcd.get(key)
        self.etcd.cas(key, revision, value)

    def put_pipelined(self, keys, value, depth):
        self.etcd.put_pipelined(((k, value) for k in keys), depth)

    def load(self, items):
        self.etcd.put_pipelined(items, LOAD_BATCH)

    def close(self):
        self.etcd.close()
