"""Who is in a leader-mode cluster, as one value (docs/MEMBERSHIP.md): the members by node id with
their addresses, which of them vote, and the majority that commits, confirms reads and elects.
`Roles`, `Election` and `Primary` read it from here. It comes from the latest membership entry in
the node's log, else the one its data holds (applied, or from a snapshot), else its flags
(`from_config`, every member a voter). No I/O."""
from .. import errors
from ..protocol import MEMBERS_MAX, Member


class Membership:
    __slots__ = ("node_id", "members", "seq", "peers", "voters", "peer_list")

    def __init__(self, node_id, members, seq):
        self.node_id = node_id
        self.members = {m.node_id: m for m in members}     # node id -> protocol.Member, this node's included
        self.seq = seq                  # the log seq of the entry it comes from (0: the flags)
        self.peers = {nid: m for nid, m in self.members.items() if nid != node_id}   # every member but us
        self.peer_list = tuple(self.peers[nid] for nid in sorted(self.peers))
        self.voters = frozenset(nid for nid, m in self.members.items() if m.voter)

    @classmethod
    def from_config(cls, config) -> "Membership":
        own = Member(config.node_id, config.host, config.port, config.pub_port, config.peer_port, True, None)
        return cls(config.node_id, [own, *(Member(p.node_id, p.host, p.port, p.pub_port, p.peer_port, True, None)
                                          for p in config.peers)], 0)

    @property
    def majority(self) -> int:
        """How many voters make a quorum for elections, read rounds and (by default) commits."""
        return len(self.voters) // 2 + 1

    @property
    def member_list(self) -> tuple:
        return tuple(self.members[nid] for nid in sorted(self.members))

    def records(self) -> list:
        """The members as MEMBERS and STATUS report them (docs/PROTOCOL.md)."""
        return [{"node_id": m.node_id, "host": m.host, "port": m.port, "pub_port": m.pub_port,
                 "peer_port": m.peer_port, "voter": m.voter, **({"key": m.key} if m.key else {})}
                for m in self.member_list]

    def differs_from(self, flags) -> list:
        """Lines saying how the flags' membership differs from this one (the record), for the log."""
        lines = []
        for nid in sorted(set(self.members) | set(flags.members)):
            ours, theirs = self.members.get(nid), flags.members.get(nid)
            if ours != theirs:
                lines.append(f"node {nid}: {_describe(theirs)} by the flags, {_describe(ours)} by the record")
        return lines

    # ------------------------------------------------------------ changes (the primary's checks)

    def adding(self, member) -> tuple:
        """The members after adding `member` as a learner. The same node again (same addresses and
        key) changes nothing: returns None. Raises BadArgument when it clashes with a member."""
        old = self.members.get(member.node_id)
        if old is not None:
            if old._replace(voter=False) == member:
                return None
            raise errors.BadArgument(f"node {member.node_id} is already a member at {old.address} (peer port "
                                     f"{old.peer_port}, change stream {old.pub_port}); remove it first to change "
                                     f"its addresses or key")
        check_new_member(self.members.values(), member)
        return (*self.member_list, member)

    def removing(self, node_id) -> tuple:
        """The members after removing node_id; None when it is not a member. Raises BadArgument when
        no voter would be left."""
        if node_id not in self.members:
            return None
        rest = tuple(m for m in self.member_list if m.node_id != node_id)
        if not any(m.voter for m in rest):
            raise errors.BadArgument(f"removing node {node_id} would leave no voter; add and promote another first")
        return rest

    def promoting(self, node_id) -> tuple:
        """The members after learner node_id becomes a voter."""
        return tuple(m._replace(voter=True) if m.node_id == node_id else m for m in self.member_list)


def check_new_member(members, member):
    """Raises BadArgument when `member` (not one of `members`) would make too many members or take
    an address one of them uses. Both modes' additions go through it (dynamo/membership.py too)."""
    members = list(members)
    if len(members) >= MEMBERS_MAX:
        raise errors.BadArgument(f"a cluster holds at most {MEMBERS_MAX} members")
    taken = {(m.host, p): m.node_id for m in members for p in (m.port, m.pub_port, m.peer_port)}
    for port in (member.port, member.pub_port, member.peer_port):
        if (member.host, port) in taken:
            raise errors.BadArgument(f"{member.host}:{port} is already used by node {taken[member.host, port]}")


def _describe(member):
    if member is None:
        return "not a member"
    return f"{member.address} (pub {member.pub_port}, peer {member.peer_port}, {'voter' if member.voter else 'learner'})"
