"""Where each key lives when a dynamo cluster keeps `replicas` copies of it (docs/PARTITIONING.md).
Pure: no I/O, no clock; every node that knows the same members computes the same lists.

Keys fall into PARTITIONS fixed partitions, the anti-entropy buckets (layout.bucket_of), so a
partition's keys are exactly one bucket's and its hash is the bucket hash anti-entropy keeps. Each
partition ranks every member by a score, BLAKE2b-64 of the partition and the node id (rendezvous,
or highest-random-weight, hashing): its **preference list** is the `replicas` highest-ranked
members, its **fallbacks** the rest, in rank order. A member that joins takes exactly the
partitions where it ranks in the top `replicas`, one slot each, and a member that leaves gives up
exactly its own slots, each to the next member in that partition's ranking: no other slot moves,
which is the least movement any placement can have. Balance is statistical: each member owns about
PARTITIONS * replicas / members partitions (bench/placement_sim.py measures it for 100 nodes)."""
import hashlib
import heapq
import struct

from .layout import BUCKETS, bucket_of

PARTITIONS = BUCKETS                # 4096, fixed: a cluster cannot change it
ALL = 0                             # replicas = ALL: every member holds every key (no partitioning)
_PAIR = struct.Struct(">HQ")


def partition_of(key: bytes) -> int:
    return bucket_of(key)


def score(partition: int, node_id: int) -> int:
    """The node's rank weight in the partition: higher ranks first (ties, which need a 64-bit
    collision, break by the lower node id)."""
    return int.from_bytes(hashlib.blake2b(_PAIR.pack(partition, node_id), digest_size=8).digest(), "big")


class Placement:
    """The preference lists of one membership. `members`: node ids; `replicas`: copies of each key
    (ALL, or more than there are members: every member holds every key)."""

    def __init__(self, members, replicas=ALL):
        self.members = tuple(sorted(set(members)))
        if not self.members:
            raise ValueError("a placement needs at least one member")
        if type(replicas) is not int or replicas < 0:
            raise ValueError(f"replicas must be a whole number, 0 meaning all members (got {replicas!r})")
        self.replicas = len(self.members) if replicas == ALL else min(replicas, len(self.members))
        self.partitioned = self.replicas < len(self.members)
        if self.partitioned:
            self._owners = tuple(self._top(p, self.replicas) for p in range(PARTITIONS))
        else:       # every member owns every partition (listed by id: no rank is needed to choose them)
            self._owners = (self.members,) * PARTITIONS
        owned = {n: [] for n in self.members}
        for p, owners in enumerate(self._owners):
            for n in owners:
                owned[n].append(p)
        self._owned = {n: frozenset(ps) for n, ps in owned.items()}

    def _top(self, partition, count):
        ranked = heapq.nlargest(count, self.members, key=lambda n: (score(partition, n), -n))
        return tuple(ranked)

    def owners(self, partition) -> tuple:
        """The partition's preference list: `replicas` distinct members, highest rank first."""
        return self._owners[partition]

    def ranking(self, partition) -> tuple:
        """Every member in the partition's rank order: the preference list, then the fallbacks
        that take its writes while owners are down (sloppy quorum)."""
        return self._top(partition, len(self.members))

    def owned_by(self, node_id) -> frozenset:
        """The partitions of which the node is an owner (empty for a non-member)."""
        return self._owned.get(node_id, frozenset())

    def preference(self, key: bytes) -> tuple:
        return self._owners[partition_of(key)]

    def moves(self, other) -> dict:
        """{partition: (owners losing it, owners gaining it)} from this placement to `other`, for
        the partitions whose preference list changes as a set."""
        out = {}
        for p in range(PARTITIONS):
            before, after = set(self._owners[p]), set(other._owners[p])
            if before != after:
                out[p] = (tuple(sorted(before - after)), tuple(sorted(after - before)))
        return out
