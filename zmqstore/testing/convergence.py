"""The dynamo-mode checker (docs/TESTING.md): after the faults stop and the cluster heals, every
node must hold identical data, and no acknowledged write may be lost silently.

The workload writes only with contexts (get_versions, then put or delete with that context), so
for every write the history knows exactly which versions it superseded. An acknowledged write
(whose reply named its dot, (origin, seq)) must then be, in the final state, either
- a sibling of its key, or
- superseded: another recorded write to that key read it as a sibling and replaced it (its
  context covered it): that write causally followed it, or
- for a delete, collected: tombstones are dropped once every node has applied them, and that is
  correct as long as nothing the delete covered is a sibling again (no resurrection).
Anything else is a lost write. A write of unknown outcome (info) counts as a superseder only when
its value is in the final state. A
sibling that an acknowledged write's context covered has come back (reported with the lost ones).
A final sibling whose value no client wrote is a phantom; a sibling
carrying an acknowledged write's value under another dot is a mismatch (the value was applied
twice only if the client retried it on another node, which the workload never does for an
acknowledged write).
"""
import json
from typing import NamedTuple, Optional


class WriteOp(NamedTuple):
    process: int
    kind: str              # "put" or "delete"
    key: str
    value: Optional[int]   # None for a delete
    context: dict          # {origin: seq} the write was made with (what the client read)
    invoke: float
    complete: Optional[float]
    outcome: str           # ok | fail | info
    dot: Optional[tuple]   # (origin, seq) from the reply, for ok
    seen: tuple = ()       # ((origin, seq, value), ...): the siblings the write's read returned


class DynamoVerdict(NamedTuple):
    identical: bool
    differences: list      # (key, {node: state}) where nodes differ
    acknowledged: int
    lost: list             # WriteOp
    phantoms: list         # (key, value)
    mismatched: list       # (WriteOp, sibling)

    @property
    def ok(self):
        return self.identical and not self.lost and not self.phantoms and not self.mismatched

    def report(self):
        lines = [f"identical data on every node: {'yes' if self.identical else 'NO'}",
                 f"acknowledged writes checked: {self.acknowledged}, lost: {len(self.lost)}, phantom values: "
                 f"{len(self.phantoms)}, mismatched dots: {len(self.mismatched)}"]
        for key, by_node in self.differences[:5]:
            lines.append(f"  DIFFERS: {key}: " + "; ".join(f"node {n}: {st}" for n, st in sorted(by_node.items())))
        for op in self.lost[:10]:
            lines.append(f"  LOST: process {op.process} {op.kind} {op.key}={op.value} dot {op.dot} "
                         f"(acknowledged at {op.complete:.3f})")
        for key, value in self.phantoms[:10]:
            lines.append(f"  PHANTOM: {key}={value} was never written")
        for op, sib in self.mismatched[:10]:
            lines.append(f"  MISMATCH: {op.key}={op.value} acknowledged as dot {op.dot}, found as {sib}")
        return "\n".join(lines)


def covers(ctx, dot):
    return ctx.get(dot[0], 0) >= dot[1]


def check(history, finals, owners=None):
    """history: WriteOps of every client. finals: {node id: {key: (siblings, ctx)}} with siblings a
    list of (value, origin, seq, deleted), read from every node after convergence. owners: in a
    partitioned cluster, key -> the ids of the nodes holding it (finals then have each node's own
    keys only): identical means identical on each key's owners."""
    states = list(finals.values())
    keys = sorted({k for s in states for k in s} | {op.key for op in history})
    differences = []
    final = {}
    for key in keys:
        holders = [n for n in finals if owners is None or n in owners(key)]
        by_node = {n: finals[n].get(key) for n in holders}
        if len({repr(v) for v in by_node.values()}) > 1:
            differences.append((key, by_node))
        if by_node[holders[0]] is not None:
            final[key] = by_node[holders[0]]
    identical = not differences
    by_key = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    lost, mismatched, resurrected = [], [], []
    acknowledged = 0
    applied_values = {v for op in history for _o, _q, v in op.seen} | {
        s[0] for sibs, _ctx in final.values() for s in sibs}
    read_by = {}          # (key, dot) -> the writes whose read returned that version
    for op in history:
        for origin, seq, _value in op.seen:
            read_by.setdefault((op.key, (origin, seq)), []).append(op)
    for op in history:
        if op.outcome != "ok" or op.dot is None:
            continue
        acknowledged += 1
        siblings, _ctx = final.get(op.key, ([], {}))
        dots = {(s[1], s[2]): s for s in siblings}
        if op.dot in dots:
            sib = dots[op.dot]
            if sib[0] != op.value or sib[3] != (op.kind == "delete"):
                mismatched.append((op, sib))
            continue
        if _superseded(op, read_by.get((op.key, op.dot), ()), applied_values):
            continue
        if op.kind == "delete" and not any(covers(op.context, (s[1], s[2])) for s in siblings):
            continue      # a tombstone collected once every node had it: what it deleted stays deleted
        lost.append(op)
    # No acknowledged write's context may cover a version that is still there: it superseded it.
    for key, (siblings, _ctx) in final.items():
        for sib in siblings:
            for op in by_key.get(key, ()):
                if op.outcome == "ok" and op.dot != (sib[1], sib[2]) and covers(op.context, (sib[1], sib[2])):
                    resurrected.append((op, sib))
                    break
    written = {(op.key, op.value) for op in history if op.kind == "put" and op.outcome in ("ok", "info")}
    acked_at = {(op.key, op.value): op for op in history if op.kind == "put" and op.outcome == "ok"}
    phantoms = []
    for key, (siblings, _ctx) in final.items():
        for value, origin, seq, deleted in siblings:
            if deleted:
                continue
            if (key, value) not in written:
                phantoms.append((key, value))
            elif (key, value) in acked_at and acked_at[(key, value)].dot != (origin, seq):
                mismatched.append((acked_at[(key, value)], (value, origin, seq, deleted)))
    lost += [op for op, _ in resurrected if all(op is not other for other in lost)]
    return DynamoVerdict(identical, differences, acknowledged, lost, phantoms, mismatched)


def _superseded(op, readers, applied_values):
    """True when a recorded write to the key read op's version as a sibling and then replaced it
    (its context covered it): an acknowledged write, or one of unknown outcome that was applied (its
    value was read by someone or is in the final state). A context that merely covers the dot is
    not enough: a store that dropped the version silently still joins its dot into the key's
    context, and every later read would hand that context out."""
    for other in readers:
        if other is op or not covers(other.context, op.dot):
            continue
        if other.outcome == "ok" or (other.outcome == "info" and other.value in applied_values):
            return True
    return False


def write_history(path, history):
    with open(path, "w", encoding="utf-8") as f:
        for op in history:
            d = op._asdict()
            d["context"] = sorted(op.context.items())
            d["seen"] = [list(x) for x in op.seen]
            f.write(json.dumps(d) + "\n")


def read_history(path):
    ops = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            d["context"] = {o: s for o, s in d["context"]}
            d["dot"] = tuple(d["dot"]) if d["dot"] is not None else None
            d["seen"] = tuple(tuple(x) for x in d.get("seen", ()))
            ops.append(WriteOp(**d))
    return ops
