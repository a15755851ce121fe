"""Who is in a dynamo-mode cluster (docs/MEMBERSHIP.md, "Dynamo mode"), as one value: a record per
node id that was ever a member, each stamped (protocol.DynamoMember). A change, made on any node,
replaces a node id's record by one with a higher counter; nodes exchange their records (DMEMBERS)
and keep, per node id, the record with the highest stamp. That merge is commutative, associative
and idempotent: nodes that have heard the same records hold the same membership, in whatever order
the records came. A removal is itself a record, so no stale copy can bring the node back. No I/O."""
import hashlib

from .. import errors, protocol
from ..leader.membership import check_new_member
from ..protocol import DYNAMO_IDS_MAX, DYNAMO_RECORDS_MAX, DynamoMember


class DynamoMembership:
    __slots__ = ("node_id", "records", "members", "peers", "encoded", "digest")

    def __init__(self, node_id, records):
        self.node_id = node_id
        self.records = {r.node_id: r for r in records}     # node id -> DynamoMember, removed ones included
        self.members = {nid: r.member for nid, r in sorted(self.records.items()) if not r.removed}
        self.peers = {nid: m for nid, m in self.members.items() if nid != node_id}
        self.encoded = protocol.encode_dynamo_members(self.records[nid] for nid in sorted(self.records))
        # What DSTATUS carries: nodes whose digests differ exchange their records (Replication).
        self.digest = int.from_bytes(hashlib.blake2b(self.encoded, digest_size=8).digest(), "big")

    @classmethod
    def from_config(cls, config) -> "DynamoMembership":
        """The flags' membership: this node and its --peers, each at counter 0."""
        return cls(config.node_id, [DynamoMember(n.node_id, n.host, n.port, n.pub_port, n.peer_port, None, 0, False, 0)
                                    for n in (config, *config.peers)])

    @classmethod
    def decode(cls, node_id, data) -> "DynamoMembership":
        return cls(node_id, protocol.decode_dynamo_members(data))

    @property
    def size(self) -> int:
        """How many nodes are members: the bound on a request's w and r."""
        return len(self.members)

    @property
    def removed_by(self):
        """The node that removed this one (0: its flags), or None while it is a member."""
        own = self.records.get(self.node_id)
        return own.changer if own is not None and own.removed else None

    def member_records(self) -> list:
        """The members as MEMBERS and STATUS report them (docs/PROTOCOL.md); every one votes."""
        return [{"node_id": m.node_id, "host": m.host, "port": m.port, "pub_port": m.pub_port,
                 "peer_port": m.peer_port, "voter": True, **({"key": m.key} if m.key else {})}
                for m in self.members.values()]

    def differs_from(self, flags) -> list:
        """Lines saying how the flags' membership differs from this one, for the log."""
        return [f"node {nid}: {_describe(flags.members.get(nid))} by the flags, "
                f"{_describe(self.members.get(nid))} by the record"
                for nid in sorted(set(self.members) | set(flags.members))
                if self.members.get(nid) != flags.members.get(nid)]

    # ------------------------------------------------------------ merging and changes

    def merge(self, records):
        """This membership joined with `records` (a peer's): a new DynamoMembership, or None when
        they add nothing. Raises MalformedMessage when the join would hold more than
        DYNAMO_RECORDS_MAX records."""
        mine = self.records
        newer = [r for r in records if r.node_id not in mine or r.stamp > mine[r.node_id].stamp]
        if not newer:
            return None
        merged = {**mine, **{r.node_id: r for r in newer}}
        if len(merged) > DYNAMO_RECORDS_MAX:
            raise errors.MalformedMessage(f"a membership of more than {DYNAMO_RECORDS_MAX} records")
        return DynamoMembership(self.node_id, merged.values())

    def adding(self, member, changer):
        """The membership with `member` (protocol.Member) added by node `changer`, or None when it is
        a member already with the same addresses and key. Raises BadArgument on a clash."""
        old = self.records.get(member.node_id)
        if old is not None and not old.removed:
            if old.member == member._replace(voter=True):
                return None
            raise errors.BadArgument(f"node {member.node_id} is already a member at {old.member.address} (peer "
                                     f"port {old.peer_port}, change stream {old.pub_port}); remove it first to "
                                     f"change its addresses or key")
        if old is None and len(self.records) >= DYNAMO_IDS_MAX:
            raise errors.BadArgument(f"this cluster has had {DYNAMO_IDS_MAX} node ids; reuse a removed one")
        check_new_member(self.members.values(), member)
        counter = old.counter + 1 if old is not None else 1
        return self._with(DynamoMember(member.node_id, member.host, member.port, member.pub_port, member.peer_port,
                                       member.key, counter, False, changer))

    def removing(self, node_id, changer):
        """The membership without node_id, removed by node `changer`; None when it is not a member.
        Raises BadArgument when no member would be left."""
        old = self.records.get(node_id)
        if old is None or old.removed:
            return None
        if self.size == 1:
            raise errors.BadArgument(f"node {node_id} is the last member; a cluster keeps at least one")
        return self._with(old._replace(counter=old.counter + 1, removed=True, changer=changer))

    def _with(self, record):
        return DynamoMembership(self.node_id, [*(r for nid, r in self.records.items() if nid != record.node_id),
                                               record])


def _describe(member):
    if member is None:
        return "not a member"
    return f"{member.address} (pub {member.pub_port}, peer {member.peer_port})"
