#!/usr/bin/env python3
"""Placement of a partitioned dynamo cluster, simulated without sockets (issue 16,
docs/PARTITIONING.md): 100 nodes and millions of keys. Prints, for the placement in
zmqstore/dynamo/placement.py:

- balance: keys and partitions per node (max/mean, min/mean);
- movement: the partitions and key copies that change owner when a node joins or leaves, beside
  the least any placement can move (1/(members after a join), or the leaving node's share);
- messages per write: peer messages a write costs under the replication protocol of
  docs/PARTITIONING.md (forward to an owner when the coordinating node is not one, the change to
  the other owners, their acknowledgements), counted on random keys and coordinating nodes.

Usage: python bench/placement_sim.py [--nodes 100] [--keys 2000000] [--replicas 3] [--seed 1]
"""
import argparse
import collections
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zmqstore.dynamo.placement import PARTITIONS, Placement, partition_of  # noqa: E402


def keys_per_partition(count):
    counts = collections.Counter(partition_of(b"user:%012d" % i) for i in range(count))
    return [counts.get(p, 0) for p in range(PARTITIONS)]


def balance(placement, counts):
    """(max/mean, min/mean) of keys per member, and of partitions per member."""
    keys = [sum(counts[p] for p in placement.owned_by(n)) for n in placement.members]
    parts = [len(placement.owned_by(n)) for n in placement.members]
    mean_k, mean_p = sum(keys) / len(keys), sum(parts) / len(parts)
    return max(keys) / mean_k, min(keys) / mean_k, max(parts) / mean_p, min(parts) / mean_p


def movement(before, after, counts):
    """(partitions whose owners change, replica slots moved / all slots, key copies moved / all copies)."""
    moves = before.moves(after)
    slots = sum(len(gained) for _lost, gained in moves.values())
    copies = sum(counts[p] * len(gained) for p, (_lost, gained) in moves.items())
    total_slots = PARTITIONS * after.replicas
    return len(moves), slots / total_slots, copies / (sum(counts) * after.replicas)


def messages_per_write(placement, rng, samples=20_000):
    """Peer messages per write, averaged: a forward and its reply when the node the client chose
    is not an owner, the change to the other replicas - 1 owners, and their acknowledgements (an
    owner acknowledges every change it applies, whatever w the coordinator waits for)."""
    members, n = placement.members, placement.replicas
    total = 0
    for _ in range(samples):
        owners = placement.owners(rng.randrange(PARTITIONS))
        if rng.choice(members) not in owners:
            total += 2
        total += 2 * (n - 1)
    return total / samples


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    counts = keys_per_partition(args.keys)
    hashing = time.perf_counter() - started
    nodes = list(range(1, args.nodes + 1))
    started = time.perf_counter()
    base = Placement(nodes, args.replicas)
    computing = time.perf_counter() - started
    print(f"{args.nodes} nodes, {args.keys:,} keys in {PARTITIONS} partitions, replicas = {base.replicas} "
          f"(keys hashed in {hashing:.1f} s; placement computed in {computing:.2f} s)")
    kmax, kmin, pmax, pmin = balance(base, counts)
    print(f"balance: keys per node max/mean {kmax:.3f}, min/mean {kmin:.3f}; "
          f"partitions per node max/mean {pmax:.3f}, min/mean {pmin:.3f}")
    joined = Placement(nodes + [args.nodes + 1], args.replicas)
    parts, slots, copies = movement(base, joined, counts)
    taken = len(joined.owned_by(args.nodes + 1)) / (PARTITIONS * joined.replicas)
    print(f"join of node {args.nodes + 1}: {parts} partitions change owners; {slots:.2%} of replica slots and "
          f"{copies:.2%} of key copies move (the new node's own share: {taken:.2%} of the slots; "
          f"1/{args.nodes + 1} = {1 / (args.nodes + 1):.2%})")
    leaving = rng.choice(nodes)
    left = Placement([n for n in nodes if n != leaving], args.replicas)
    share = sum(counts[p] for p in base.owned_by(leaving)) / (sum(counts) * base.replicas)
    parts, slots, copies = movement(base, left, counts)
    print(f"leave of node {leaving}: {parts} partitions change owners; {slots:.2%} of replica slots and "
          f"{copies:.2%} of key copies move (least possible: its own share, {share:.2%})")
    for size in sorted({3, 6, 9, 30, args.nodes}):
        if size < args.replicas:
            continue
        print(f"messages per write, {size:>3} nodes: {messages_per_write(Placement(range(1, size + 1), args.replicas), rng):.2f}")


if __name__ == "__main__":
    main()
