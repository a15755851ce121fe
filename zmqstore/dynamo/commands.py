"""What each client command means in dynamo mode (docs/PROTOCOL.md, docs/DYNAMO.md), against the
node's DynamoEngine: reads of a key's versions, writes that make a new version at this node's
origin, exactly once per client request. Each returns (reply body, Wait); the rest of the table
(PING, STATUS, the retry check, a scan page) is shared with leader mode (command_table.py)."""
import time
from typing import NamedTuple

from .. import errors, protocol
from ..command_table import CommandTable
from ..versions import winner
from .layout import _winning_value, origin_name


class Wait(NamedTuple):
    """What a reply waits for on this node (modes.DynamoMode): the batch that makes it durable (0:
    nothing) and, for a write this run made, its entries' dots (origin, seq) of this run's origins
    (none: ()), which a write with w > 1 also waits to see held by w nodes."""
    batch: int
    dots: tuple = ()


NO_WAIT = Wait(0)
SERVED_WHEN_REMOVED = frozenset({"PING", "STATUS", "MEMBERS"})    # what a removed node still answers


def read_reply(req, state):
    """The reply to GET or GET_VERSIONS from a key state (also a quorum read's merge)."""
    if req.command == "GET":
        best = winner(state)
        return protocol.encode_ok(req.request_id, None if best is None else best.value, len(state.siblings) > 1)
    siblings = [[s.value, s.node, s.seq, s.hlc] for s in state.siblings]
    return protocol.encode_ok(req.request_id, siblings, protocol.encode_context(state.ctx))


def refuse_partial(engine, what):
    """Scans, watches and backups read one node's data: in a partitioned cluster only a node that
    owns every partition has all of it (docs/PARTITIONING.md, "Limits")."""
    if not engine.holds_everything:
        raise errors.UnsupportedOperation(
            f"{what} is not served by this cluster: it keeps {engine.replicas} copies of each key on "
            f"{engine.membership.size} nodes, so no node holds every key (docs/PARTITIONING.md)")


class DynamoCommands(CommandTable):
    no_wait = NO_WAIT

    def __init__(self, engine):
        super().__init__(engine, {
            "GET": self._get, "GET_VERSIONS": self._get, "PUT": self._put, "PUT_CTX": self._put_ctx,
            "DEL": self._delete, "PUT_MANY": self._put_many, "CAS": self._cas, "SCAN": self._scan,
            "OUTCOME": self._outcome, "MEMBERS": self._members, "ADD_MEMBER": self._add_member,
            "REMOVE_MEMBER": self._remove_member,
        })

    def handle(self, request):
        removed_by = self.engine.membership.removed_by
        if removed_by is not None and request.command not in SERVED_WHEN_REMOVED:
            raise errors.Unavailable(f"node {self.config.node_id} was removed from the cluster (by node {removed_by}); "
                                     f"ask another member")
        return super().handle(request)

    def _get(self, req):
        key = req.args[0]
        return read_reply(req, self.engine.load(key)), Wait(self.engine.batch_of(key))

    def _check_write(self, req):
        """A retried write already applied here: its reply. None: apply it."""
        dot = self._retried(req)
        if dot is None:
            self._admit(req)
            return None
        origin, seq = dot[0]
        # a quorum write's retry waits for the quorum too: for the entries this run made, and with
        # replicas set for another owner's too (its first try reached that owner: Replication.copies)
        engine = self.engine
        return (protocol.encode_ok(req.request_id, True, seq, origin),
                Wait(engine.pending_batch, tuple(d for d in dot if engine.is_own(d[0]) or engine.per_partition)))

    def _written(self, req, ops, result=True):
        """A write's reply: [applied, seq, origin]: (origin, seq) is the new version's dot (with
        replicas set, a put_many over several partitions makes one entry each: the first's)."""
        engine = self.engine
        dots = engine.write(req, ops)
        origin, seq = dots[0]
        return protocol.encode_ok(req.request_id, result, seq, origin), Wait(engine.pending_batch, dots)

    def _put(self, req):
        done = self._check_write(req)
        if done:
            return done
        key, value = req.args
        return self._written(req, ((key, value, None),))

    def _put_ctx(self, req):
        done = self._check_write(req)
        if done:
            return done
        key, value, raw_ctx = req.args
        ctx = protocol.decode_context(raw_ctx)
        claim = self.engine.overclaim(ctx)
        if claim is not None:
            # No read could have returned it: this origin is this run's, and has made fewer writes.
            raise errors.BadArgument(f"the context names write {claim[1]} of this node's origin, which "
                                     f"has made {claim[2]}: it is not one get_versions returned")
        return self._written(req, ((key, value, ctx),))

    def _delete(self, req):
        done = self._check_write(req)
        if done:
            return done
        key = req.args[0]
        if not any(s.value is not None for s in self.engine.load(key).siblings):
            return protocol.encode_ok(req.request_id, False, 0, 0), Wait(self.engine.batch_of(key))
        return self._written(req, ((key, None, None),), result=True)

    def _put_many(self, req):
        done = self._check_write(req)
        if done:
            return done
        items = dict(req.args[0])     # a key given twice: the last value, as a sequence of puts would leave
        return self._written(req, tuple((k, v, None) for k, v in items.items()))

    @staticmethod
    def _cas(req):
        raise errors.UnsupportedOperation("cas is not offered in dynamo mode: another node may accept a write to "
                                          "the same key at the same moment; use get_versions and put with "
                                          "its context instead")

    def _scan(self, req):
        refuse_partial(self.engine, "scan")
        self.engine.flush()    # a scan reads RocksDB: this iteration's writes first
        return self._scan_page(req, _winning_value)

    # ------------------------------------------------------------ membership (docs/MEMBERSHIP.md)

    def _members(self, req):
        return protocol.encode_ok(req.request_id, self.engine.membership.member_records()), NO_WAIT

    def _changed(self, req, membership):
        """A membership change's reply, [changed, counter of the node's record, members]: it leaves
        once the change is durable here; the peers hear it at once and by every status exchange."""
        engine = self.engine
        if not engine.replicated:
            raise errors.UnsupportedOperation(f"node {self.config.node_id} runs standalone (no peers); start the "
                                              f"cluster's nodes with --peers to change its membership at runtime")
        node_id = req.args[0]
        changed = membership is not None
        if changed:
            engine.set_membership(membership)
        record = engine.membership.records.get(node_id)
        return (protocol.encode_ok(req.request_id, changed, 0 if record is None else record.counter,
                                   engine.membership.member_records()), Wait(engine.pending_batch))

    def _add_member(self, req):
        member = self._member_to_add(req)
        return self._changed(req, self.engine.membership.adding(member, self.config.node_id))

    def _remove_member(self, req):
        return self._changed(req, self.engine.membership.removing(req.args[0], self.config.node_id))

    def _outcome(self, req):
        dot, _certain = self.sessions.peek(req.client_id, req.args[0], time.monotonic())
        if dot is None:
            return protocol.encode_ok(req.request_id, "unknown", 0), NO_WAIT
        return protocol.encode_ok(req.request_id, "committed", dot[0][1]), Wait(self.engine.pending_batch)

    def _positions(self) -> dict:
        """Applied seqs and log starts per origin; with replicas set, where origins are one per run
        and partition (thousands), their totals per node instead."""
        e = self.engine
        if not e.per_partition:
            return {"applied": {origin_name(o): s for o, s in sorted(e.durable_applied.items()) if s},
                    "log_first": {origin_name(o): f for o, f in sorted(e.first.items())}}
        applied, kept = {}, {}
        for origin, seq in e.durable_applied.items():
            node = str(origin >> 32)
            applied[node] = applied.get(node, 0) + seq
            kept[node] = kept.get(node, 0) + seq - e.first.get(origin, seq + 1) + 1
        return {"applied": dict(sorted(applied.items())), "log_entries": dict(sorted(kept.items()))}

    def status(self) -> dict:
        cfg, e = self.config, self.engine
        return {
            "node_id": cfg.node_id, "mode": "dynamo", "role": self.engine.role, "term": 0, "primary_id": 0,
            "last_seq": e.made, "commit_seq": e.made,
            "origin": origin_name(e.origin), "replicas": e.replicas,
            **self._positions(),
            "keys_estimate": e.storage.approximate_keys(), "keys": e.owned_keys(),
            "partitions_owned": len(e.placement.owned_by(e.node_id)), "conflicts": e.conflicts,
            "tombstones": e.tombstones, "digest": f"{e.durable_digest:016x}",
            "address": cfg.address, "pub_address": f"{cfg.host}:{cfg.pub_port}", "peer_port": cfg.peer_port,
            "fsync": cfg.fsync,
            "uptime": round(time.monotonic() - e.started, 3), "version": e.version, "peers": [],
            "members": e.membership.member_records(),
            **(e.extra_status() if e.extra_status else {}),
        }
