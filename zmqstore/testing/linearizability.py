"""A linearizability checker for a key-value store of registers with put, get and cas.

Wing & Gong's search with Lowe's memoisation (as in Knossos and Porcupine): walk the history's call
and return events in time order; at a call, try to linearize that operation now (its effect on the
register must match what it returned); at a return whose operation is not yet linearized, backtrack.
Configurations already explored, (set of linearized operations, register value), are not tried
again. Keys are independent registers, so each key is checked on its own (P-compositionality).

Operations (`Op`) carry their outcome as a client saw it:
- "ok": it took effect once, between invoke and complete, and returned `result`;
- "fail": it definitely did not take effect (dropped before the search);
- "info": unknown (timeout, connection lost): it may have taken effect at any time after its invoke,
  even after the history ends, or never. Its return event is at infinity, and the search may
  linearize it as applied or as not applied.
"""
import json
import math
from typing import Any, NamedTuple

ABSENT = None          # the register's value before any put


class Op(NamedTuple):
    process: Any           # who issued it (a client id)
    kind: str              # "put", "get" or "cas"
    key: Any
    value: Any = None      # put: the value; cas: (expected, new)
    invoke: float = 0.0
    complete: float = math.inf
    outcome: str = "ok"    # "ok", "fail" or "info"
    result: Any = None     # get: the value read; cas: True or False

    def describe(self):
        if self.kind == "put":
            what = f"put({self.value!r})"
        elif self.kind == "get":
            what = f"get() -> {self.result!r}"
        else:
            what = f"cas({self.value[0]!r} -> {self.value[1]!r})" + (
                f" -> {self.result!r}" if self.outcome == "ok" else "")
        end = "..." if self.complete == math.inf else f"{self.complete:.6f}"
        return f"[{self.invoke:.6f}, {end}] process {self.process} {what} {self.outcome}"


class Verdict(NamedTuple):
    ok: bool
    key: Any = None
    window: tuple = ()     # the operations of the shortest failing prefix's tail (for a report)
    checked: int = 0       # operations checked (all keys)

    def report(self):
        if self.ok:
            return f"linearizable ({self.checked} operations)"
        lines = [f"NOT linearizable: key {self.key!r}; the shortest failing prefix ends with:"]
        lines += ["  " + op.describe() for op in self.window]
        return "\n".join(lines)


def _steps(op, state):
    """The register values `op` may leave when applied to `state` (empty: it cannot happen now)."""
    if op.kind == "put":
        return [op.value] if op.outcome == "ok" else [op.value, state]
    if op.kind == "get":
        return [state] if op.outcome != "ok" or op.result == state else []
    expected, new = op.value
    if op.outcome == "info":
        return [new, state] if state == expected else [state]
    if op.result:
        return [new] if state == expected else []
    return [state] if state != expected else []


def check_register(ops, initial=ABSENT):
    """True when this one register's history is linearizable."""
    ops = [op for op in ops if op.outcome != "fail" and not (op.kind == "get" and op.outcome != "ok")]
    if not ops:
        return True
    # Events: (time, 0 = call / 1 = return, index). A return at the same instant as a call comes
    # after it: operations that touch in time are concurrent, never ordered.
    events = sorted([(op.invoke, 0, i) for i, op in enumerate(ops)] +
                    [(op.complete, 1, i) for i, op in enumerate(ops)])
    n = len(events)
    nxt = list(range(1, n + 1))            # a doubly linked list over event positions
    prv = list(range(-1, n - 1))
    head = [0]                              # position of the first event (n: empty)
    call_pos, ret_pos = {}, {}
    for pos, (_t, is_ret, i) in enumerate(events):
        (ret_pos if is_ret else call_pos)[i] = pos

    def unlink(pos):
        p, q = prv[pos], nxt[pos]
        if p >= 0:
            nxt[p] = q
        else:
            head[0] = q
        if q < n:
            prv[q] = p

    def relink(pos):
        p, q = prv[pos], nxt[pos]
        if p >= 0:
            nxt[p] = pos
        else:
            head[0] = pos
        if q < n:
            prv[q] = pos

    linearized = 0                          # bitset of operation indices
    state = initial
    seen = set()                            # (linearized, state) configurations already explored
    stack = []                              # (op index, state before it, alternatives not yet tried)

    def apply(i, candidates):
        """Linearize op i now with the first untried resulting state; False when none is new."""
        nonlocal linearized, state
        while candidates:
            new_state = candidates.pop(0)
            config = (linearized | (1 << i), _freeze(new_state))
            if config in seen:
                continue
            seen.add(config)
            stack.append((i, state, candidates))
            linearized |= 1 << i
            state = new_state
            unlink(call_pos[i])
            unlink(ret_pos[i])
            return True
        return False

    pos = head[0]
    while head[0] < n:
        _t, is_ret, i = events[pos]
        if not is_ret:
            pos = head[0] if apply(i, _steps(ops[i], state)) else nxt[pos]
            continue
        # The return of an operation not linearized yet: undo the latest choice and try its next
        # alternative, or move past it.
        while True:
            if not stack:
                return False
            i, state, candidates = stack.pop()
            relink(ret_pos[i])
            relink(call_pos[i])
            linearized &= ~(1 << i)
            if apply(i, candidates):
                pos = head[0]
                break
            pos = nxt[call_pos[i]]
            break
    return True


def _freeze(value):
    """A hashable form of a register value (values may be lists or dicts from msgpack)."""
    if isinstance(value, (list, tuple)):
        return ("l",) + tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return ("d",) + tuple(sorted((repr(k), _freeze(v)) for k, v in value.items()))
    return value


def check(history, initial=ABSENT, window=10) -> Verdict:
    """Check a whole history (operations on any keys). On failure, the verdict names the key and
    the last `window` operations of the shortest failing prefix (by invoke time) of that key."""
    by_key = {}
    for op in history:
        by_key.setdefault(_freeze(op.key), []).append(op)
    checked = 0
    for key, ops in by_key.items():
        checked += len(ops)
        if check_register(ops, initial):
            continue
        ops = sorted(ops, key=lambda op: op.invoke)
        times = sorted({op.complete for op in ops if op.complete != math.inf}) + [math.inf]
        lo, hi = 0, len(times) - 1          # the earliest cut time at which the history fails
        while lo < hi:
            mid = (lo + hi) // 2
            if check_register(_prefix(ops, times[mid]), initial):
                lo = mid + 1
            else:
                hi = mid
        return Verdict(False, ops[0].key, tuple(_prefix(ops, times[lo])[-window:]), checked)
    return Verdict(True, checked=checked)


def _prefix(ops, t):
    """The history as it stood at time t: operations invoked by t; those still running at t are
    cut as they were then: a read is dropped (it may yet observe a write invoked after t), a write
    becomes info (it may or may not take effect). So a failing prefix is a real violation, never
    one made by the cut. `ops` sorted by invoke time."""
    out = []
    for op in ops:
        if op.invoke > t:
            break
        if op.complete <= t:
            out.append(op)
        elif op.kind != "get" and op.outcome != "fail":
            out.append(op._replace(complete=math.inf, outcome="info", result=None))
    return out


# ---------------------------------------------------------------- history files (JSON lines)

def write_history(path, history):
    with open(path, "w", encoding="utf-8") as f:
        for op in history:
            f.write(json.dumps({**op._asdict(), "complete": None if op.complete == math.inf else op.complete})
                    + "\n")


def read_history(path):
    ops = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            d["complete"] = math.inf if d["complete"] is None else d["complete"]
            if d["kind"] == "cas" and isinstance(d["value"], list):
                d["value"] = tuple(d["value"])
            ops.append(Op(**d))
    return ops
