"""Dynamo-mode versions of one key: dotted version vectors, siblings and hybrid logical clocks.
Pure functions, no I/O (docs/DYNAMO.md, "Versions").

A key's state is a causal context `ctx` ({node id: seq}) and its siblings, each a write
(node, seq, hlc, value) where (node, seq) is the write's *dot*: the origin node and that node's own
log seq, which is never reused. `ctx[n] = s` means "every write to this key from node n with seq
<= s has been seen". That holds because every node applies each origin's writes in seq order, and a
write's context, joined into the state, only names writes its origin had seen.

- A write carries its context: what its origin had seen of the key (a plain put), or what the
  client read (a put with the context from get_versions). Applying it removes every sibling the
  context covers and adds the write as a sibling: writes that did not see each other stay side by
  side, as siblings; nothing concurrent is dropped.
- A write whose dot the state already covers was seen, or superseded by a write that saw it: it
  is ignored, so applying is idempotent.
- A delete is a write whose value is None (a tombstone).
- `get` shows one winner: the highest hybrid logical clock timestamp, then the lowest node id.
"""
from typing import NamedTuple, Optional

HLC_LOGICAL_BITS = 16      # an HLC timestamp is (milliseconds << 16) | logical counter


class Sibling(NamedTuple):
    node: int              # the write's origin
    seq: int               # its seq in the origin's log: (node, seq) is the dot
    hlc: int               # hybrid logical clock timestamp at the origin
    value: Optional[bytes]  # the msgpack-encoded value; None: a tombstone (a delete)


class KeyState(NamedTuple):
    ctx: dict              # {node: seq}: the writes this state has seen
    siblings: tuple        # Sibling, sorted by (node, seq): one canonical form for digests


EMPTY = KeyState({}, ())


def covers(ctx, node, seq) -> bool:
    return ctx.get(node, 0) >= seq


def join(a, b) -> dict:
    """The least context covering both."""
    if not b:
        return a
    out = dict(a)
    for node, seq in b.items():
        if seq > out.get(node, 0):
            out[node] = seq
    return out


def apply_write(state, sibling, write_ctx):
    """The state after one write (`sibling`, made with context `write_ctx`), or None when the state
    has already seen the write (or a write that superseded it)."""
    if covers(state.ctx, sibling.node, sibling.seq):
        return None
    kept = [s for s in state.siblings if not covers(write_ctx, s.node, s.seq)]
    kept.append(sibling)
    kept.sort(key=_dot)
    ctx = join(join(state.ctx, write_ctx), {sibling.node: sibling.seq})
    return KeyState(ctx, tuple(kept))


def merge(a, b, a_seen=None, b_seen=None):
    """Join two states of one key (anti-entropy, read repair). A sibling present on one side only
    is kept unless the other side has seen its dot: in that side's key context or, when given, in
    its node-level applied vector (`a_seen`, `b_seen`), which covers writes whose key state was
    later superseded and garbage-collected there."""
    a_ctx = a.ctx if a_seen is None else join(a.ctx, a_seen)
    b_ctx = b.ctx if b_seen is None else join(b.ctx, b_seen)
    b_dots = {_dot(s) for s in b.siblings}
    a_dots = {_dot(s) for s in a.siblings}
    kept = [s for s in a.siblings if _dot(s) in b_dots or not covers(b_ctx, s.node, s.seq)]
    kept += [s for s in b.siblings if _dot(s) not in a_dots and not covers(a_ctx, s.node, s.seq)]
    kept.sort(key=_dot)
    return KeyState(join(a.ctx, b.ctx), tuple(kept))


def winner(state):
    """The sibling `get` shows: highest HLC, then lowest node id. None for no siblings."""
    if not state.siblings:
        return None
    return max(state.siblings, key=lambda s: (s.hlc, -s.node))


def is_tombstone_only(state) -> bool:
    """Only deletes remain: the key reads as absent and may be garbage-collected once stable."""
    return all(s.value is None for s in state.siblings)


def stable(state, vector) -> bool:
    """True when `vector` (the elementwise minimum of every node's applied vector) covers every
    write this state has seen: every node has applied all of them, so none can arrive again."""
    return all(vector.get(node, 0) >= seq for node, seq in state.ctx.items())


def _dot(s):
    return (s.node, s.seq)


class HybridClock:
    """A hybrid logical clock: timestamps grow with wall-clock milliseconds, never go back, and
    exceed every timestamp observed from other nodes (so a write that saw another has a higher one)."""

    def __init__(self, last=0):
        self.last = last

    def peek(self, wall_ms) -> int:
        """The timestamp tick() would return now, without taking it."""
        return max(self.last + 1, wall_ms << HLC_LOGICAL_BITS)

    def tick(self, wall_ms) -> int:
        self.last = self.peek(wall_ms)
        return self.last

    def observe(self, remote):
        if remote > self.last:
            self.last = remote
