"""Departures: the removed nodes a dynamo node still drains (docs/MEMBERSHIP.md, "Dynamo mode").
A node removed from the membership may have taken writes before it heard of its removal. Its old
peers keep it connected (it stays in their contacts), send it DSTATUS, fetch what it reports holding
and they lack, and let it go only once it has shown that it knows (its DMEMBERS names it removed:
it takes no more writes, so the applied vector it sends is all it will ever hold) and they hold all
of that; or after LEAVING_MAX. Replication feeds it the removed node's reports. In a partitioned
cluster a node drains only the origins of partitions it keeps (`keeps`): each partition's holders
drain their own. No I/O."""

LEAVING_MAX = 86400.0             # seconds a removed node stays connected at most


class Leaving:
    """One removed node: its record (to stay connected to it), until when, whether it knows, and the
    highest applied vector it reported."""

    __slots__ = ("member", "until", "knows", "applied")

    def __init__(self, member, until):
        self.member, self.until = member, until
        self.knows = False
        self.applied = {}


class Departures:
    def __init__(self, engine, fetch, keeps=None):
        self.engine = engine
        self._fetch = fetch             # fetch(origin, node_id, now): ask that node for an origin's entries
        self._keeps = keeps or (lambda origin: True)     # origin -> whether this node drains it
        self.nodes = {}                 # removed node id -> Leaving

    def __contains__(self, node_id):
        return node_id in self.nodes

    def __iter__(self):
        return iter(self.nodes)

    def members(self) -> dict:
        """node id -> protocol.Member of every removed node still connected."""
        return {node_id: leaving.member for node_id, leaving in self.nodes.items()}

    def add(self, members, now, reported=None):
        """Start draining `members` ({node id: Member}), removed just now (or asked again after a
        restart); `reported`: what each last reported it had applied, where known."""
        for node_id, member in members.items():
            leaving = self.nodes[node_id] = Leaving(member, now + LEAVING_MAX)
            leaving.applied = {o: s for o, s in (reported or {}).get(node_id, {}).items() if self._keeps(o)}

    def forget(self, node_ids):
        """Those are members again (added back): nothing to drain."""
        for node_id in node_ids:
            self.nodes.pop(node_id, None)

    def expire(self, now) -> bool:
        """Drop those kept for LEAVING_MAX; True when any went."""
        if not any(leaving.until <= now for leaving in self.nodes.values()):
            return False
        self.nodes = {node_id: v for node_id, v in self.nodes.items() if v.until > now}
        return True

    def applied_of(self, node_id) -> dict:
        leaving = self.nodes.get(node_id)
        return leaving.applied if leaving is not None else {}

    def on_status(self, node_id, applied, now, knows=False) -> bool:
        """A removed node's status (DSTATUS, DSTATUS_REPLY) or, with `knows`, its DMEMBERS naming
        it removed: fetch what it holds and this node lacks. True when it was let go."""
        self.engine.check_remote(0, (applied,))
        leaving = self.nodes[node_id]
        leaving.knows |= knows
        for origin, seq in applied.items():
            if seq > leaving.applied.get(origin, 0):
                leaving.applied[origin] = seq
        # (again each time: a partition this node kept may have been handed over since)
        leaving.applied = {o: s for o, s in leaving.applied.items() if self._keeps(o)}
        mine = self.engine.applied
        for origin, seq in leaving.applied.items():     # (what it reported before, too: a fetch may be lost)
            if seq > mine.get(origin, 0) and not self.engine.is_own(origin):
                self._fetch(origin, node_id, now)
        durable = self.engine.durable_applied
        if leaving.knows and all(seq <= durable.get(o, 0) for o, seq in leaving.applied.items()):
            del self.nodes[node_id]
            return True
        return False
