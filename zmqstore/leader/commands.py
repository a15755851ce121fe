"""What each client command means: checks, reads, writes and their replies (docs/PROTOCOL.md).

Commands are judged against the engine's committed data plus its writes not yet applied, and
return (reply body, commit seq the reply waits for; 0: it may leave now). The engine (engine.py)
keeps the log; command_table.py what both modes share.
"""
import time

from .. import errors, protocol
from ..command_table import CommandTable
from ..protocol import OP_DEL, OP_PUT


class Commands(CommandTable):
    def __init__(self, engine):
        super().__init__(engine, {
            "GET": self._get, "PUT": self._put, "DEL": self._delete, "CAS": self._cas,
            "PUT_MANY": self._put_many, "SCAN": self._scan, "OUTCOME": self._outcome,
            "GET_VERSIONS": self._dynamo_only, "PUT_CTX": self._dynamo_only,
            "MEMBERS": self._members, "ADD_MEMBER": self._add_member, "REMOVE_MEMBER": self._remove_member,
        })

    def handle(self, request):
        if request.options:     # read_index was taken by the mode (modes.LeaderMode.handle)
            raise errors.UnsupportedOperation("per-request quorum options (w, r) are for dynamo mode; in leader "
                                              "mode every write waits for write_quorum and reads for the primary")
        return self._handlers[request.command](request)

    def _check_writable(self, request):
        if self.engine.role != "primary":
            raise self.not_primary()
        membership = self.engine.membership
        if self.config.node_id not in membership.members:
            # Leaving: what was logged before the change commits with it; nothing more is taken.
            raise errors.NotPrimary(f"node {self.config.node_id} is leaving the cluster (entry {membership.seq}) and "
                                    f"hands over once that commits; retry on another member")
        seq = self._retried(request)
        if seq is None:
            self._admit(request)
            return None
        if seq < 0:   # the answer waits for the fence to commit, as OUTCOME's not_found does
            return protocol.encode_error(request.request_id, "request_fenced", f"request {request.request_id} "
                                         f"was declared not_found by an OUTCOME query; it was not applied and "
                                         f"never will be"), -seq
        return protocol.encode_ok(request.request_id, True, seq), seq

    def _logged(self, req, ops):
        """Log a write's ops; its reply waits for that entry's commit."""
        seq = self.engine.append(req, ops)
        return protocol.encode_ok(req.request_id, True, seq), seq

    @staticmethod
    def _unchanged(req, depends_on):
        """A write that changes nothing; its reply waits for the write it was judged against."""
        return protocol.encode_ok(req.request_id, False, 0), depends_on

    def not_primary(self):
        """NotPrimary naming the primary when this node knows it (a client follows it there)."""
        removed = self.engine.removed_by
        if removed is not None:
            return errors.NotPrimary(f"node {self.config.node_id} was removed from the cluster by entry {removed}; "
                                     f"it serves no requests")
        leader = self.storage.leader_id
        details = {"primary_id": leader, "primary_address": self.engine.leader_address} if leader else {}
        where = f"node {leader} at {self.engine.leader_address}" if leader else "not known yet"
        return errors.NotPrimary(f"node {self.config.node_id} is a secondary; the primary is {where}", details)

    def check_readable(self, stale):
        if self.engine.role == "primary":
            return
        if self.engine.removed_by is not None:
            raise self.not_primary()
        if not stale:
            raise self.not_primary()
        if self.storage.restoring:
            raise errors.Unavailable(f"node {self.config.node_id} is installing a snapshot")

    # ------------------------------------------------------------ commands (reply layouts: docs/PROTOCOL.md)

    def _get(self, req):
        key, stale = req.args
        self.check_readable(stale)
        if stale:  # applied data only: a committed prefix, never an uncommitted write
            return protocol.encode_ok(req.request_id, self.storage.get(key)), 0
        value, seq = self.engine.lookup(key)
        return protocol.encode_ok(req.request_id, value), seq

    def _put(self, req):
        done = self._check_writable(req)
        if done:
            return done
        key, value = req.args
        return self._logged(req, ((OP_PUT, key, value),))

    def _delete(self, req):
        done = self._check_writable(req)
        if done:
            return done
        key = req.args[0]
        value, seq = self.engine.lookup(key)
        if value is None:
            return self._unchanged(req, seq)
        return self._logged(req, ((OP_DEL, key),))

    @staticmethod
    def _dynamo_only(req):
        raise errors.UnsupportedOperation(f"{req.command} is a dynamo-mode command; this node runs in leader "
                                          f"mode, where a key has exactly one value")

    def _cas(self, req):
        done = self._check_writable(req)
        if done:
            return done
        key, expected, new = req.args
        value, seq = self.engine.lookup(key)
        if value != expected:
            return self._unchanged(req, seq)
        return self._logged(req, ((OP_PUT, key, new),))

    def _put_many(self, req):
        done = self._check_writable(req)
        if done:
            return done
        ops = tuple((OP_PUT, key, value) for key, value in req.args[0])
        return self._logged(req, ops)

    def _scan(self, req):
        stale = req.args[4]
        self.check_readable(stale)
        engine = self.engine
        if not stale and engine.replicated and engine.commit_seq < engine.term_first_seq:
            # A new primary may hold entries its predecessor committed that it has not committed
            # yet; a scan reads applied data, so it waits until this term's first entry commits.
            raise errors.Unavailable(f"node {self.config.node_id} became primary moments ago and has not "
                                     f"committed its term's first entry yet; retry")
        # Scans read RocksDB: standalone, staged writes that arrived before the scan go first. A
        # replicated primary scans committed data (uncommitted writes are not acknowledged yet),
        # applied first if the commit moved in this loop iteration.
        if not self.engine.replicated:
            self.engine.flush()
        elif self.engine.role == "primary" and self.storage.applied_seq < self.engine.commit_seq:
            self.engine.apply_committed(self.engine.commit_seq, now=True)   # the scan reads RocksDB
        return self._scan_page(req)

    def _outcome(self, req):
        """What became of this client's write `request_id` (docs/PROTOCOL.md, OUTCOME): "committed"
        once its entry commits; "not_found" once a fence entry for it commits (the request can never
        be applied after that); "unknown" when this node cannot tell."""
        if self.engine.role != "primary":
            raise self.not_primary()
        rid = req.args[0]
        now = time.monotonic()
        seq, certain = self.sessions.peek(req.client_id, rid, now)
        if seq is None:
            complete_for = now - self.engine.sessions_complete_since
            if (not certain or rid < req.open_from or rid >= req.request_id
                    or complete_for < self.config.session_timeout):
                # Its record may be gone (the client stopped waiting for it, or the per-client cap),
                # it is not an earlier request, or this node has not recorded every write it holds
                # for long enough (session_timeout covers a client's 15 s of retries plus its 30 s
                # of asking).
                return protocol.encode_ok(req.request_id, "unknown", 0), 0
            seq = -self.engine.append_fence(req.client_id, rid)
        if seq < 0:
            return protocol.encode_ok(req.request_id, "not_found", -seq), -seq
        return protocol.encode_ok(req.request_id, "committed", seq), seq

    # ------------------------------------------------------------ membership (docs/MEMBERSHIP.md)

    def _members(self, req):
        """The membership this node uses (on the primary: the latest, committed or not)."""
        return protocol.encode_ok(req.request_id, self.engine.membership.records()), 0

    def _change_members(self, req, change):
        """A membership change: one at a time, on the primary of a replicated cluster; the reply
        waits for its entry to commit. `change(membership)` gives the new members, None for no change."""
        done = self._check_writable(req)
        if done:
            return done
        engine = self.engine
        if not engine.replicated:
            raise errors.UnsupportedOperation(f"node {self.config.node_id} runs standalone (no peers); start the "
                                              f"cluster's nodes with --peers to change its membership at runtime")
        if not engine.membership_settled():
            raise errors.ChangeInProgress(
                "a membership change is in progress (or this primary's first entry is not committed yet); retry")
        members = change(engine.membership)
        if members is None:     # already so, by a committed entry
            membership = engine.membership
            return protocol.encode_ok(req.request_id, False, membership.seq, membership.records()), 0
        voters = sum(1 for m in members if m.voter)
        if not self.config.majority_quorum and voters < self.config.write_quorum:
            raise errors.BadArgument(f"write_quorum = {self.config.write_quorum} needs that many voters; this change "
                                     f"would leave {voters}, and nothing could commit")
        seq = engine.append_membership(members, req.client_id, req.request_id)
        return protocol.encode_ok(req.request_id, True, seq, engine.membership.records()), seq

    def _add_member(self, req):
        member = self._member_to_add(req)
        return self._change_members(req, lambda m: m.adding(member))

    def _remove_member(self, req):
        node_id = req.args[0]
        return self._change_members(req, lambda m: m.removing(node_id))

    def status(self) -> dict:
        s = self.storage
        cfg = self.config
        return {
            "node_id": cfg.node_id, "mode": cfg.mode, "role": self.engine.role, "term": s.term,
            "primary_id": s.leader_id if self.engine.replicated else cfg.node_id,
            "last_seq": self.engine.last_seq, "commit_seq": self.engine.commit_seq, "applied_seq": s.applied_seq,
            "first_seq": s.first_seq, "keys_estimate": s.approximate_keys(), "restoring": bool(s.restoring),
            "address": cfg.address, "pub_address": f"{cfg.host}:{cfg.pub_port}", "peer_port": cfg.peer_port,
            "fsync": cfg.fsync, "uptime": round(time.monotonic() - self.engine.started, 3),
            "version": self.engine.version, "peers": [], "members": self.engine.membership.records(),
            "membership_seq": self.engine.membership.seq, "primary_changes": self.engine.primary_changes,
            **(self.engine.extra_status() if self.engine.extra_status else {}),
        }
