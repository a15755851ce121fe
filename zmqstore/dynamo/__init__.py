"""Dynamo mode inside a node: every node accepts writes; replicas exchange their origin logs and
converge (docs/DYNAMO.md). No sockets: the node loop gives this package requests and peer messages;
what it sends goes into the iteration's Sends (sends.py), and replies wait in the node's one queue.

- `DynamoEngine` keeps this node's data and logs: each local write gets the next seq of this node's
  origin, its versions are computed (versions.py), and entry, key states and bookkeeping go to
  RocksDB in the loop iteration's one batch (one fsync) before any reply leaves. Entries from other
  origins are applied in each origin's seq order, and every entry applied is kept in the log, so
  any node can serve any origin's entries.
- `Replication` talks to the peers: it sends DSTATUS (applied vector, data and membership digests)
  to every member each heartbeat, fetches what a peer has and this node lacks, serves such fetches,
  exchanges membership records, and garbage-collects tombstones and log entries once every member
  has applied them.

The package: `layout.py` (meta keys, buckets, origins, log keys, limits), `engine.py`
(`DynamoEngine`), `commands.py` (client commands), `replication.py` (`Replication`),
`quorum_reads.py` (`QuorumRead`: reads with r > 1 and read repair), `membership.py` (who is in the
cluster), `departures.py` (removed nodes still drained) and `antientropy.py` (hash trees, bucket
pages, exchanges).

Origins: a node takes a new origin id at every start, (node id << 32) | 32 random bits, so a seq
is never reused, even by a node that lost or restored its data dir (docs/DYNAMO.md).
"""
from .engine import DynamoEngine
from ..storage import log_key
from .layout import MAX_CLOCK_AHEAD, origin_name, origin_node
from .quorum_reads import QuorumRead
from .replication import Replication

__all__ = ["DynamoEngine", "QuorumRead", "Replication", "MAX_CLOCK_AHEAD", "log_key", "origin_name", "origin_node"]
