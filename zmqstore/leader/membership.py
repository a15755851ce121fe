"""Who is in a leader-mode cluster, as one value (docs/MEMBERSHIP.md): the members by node id with
their addresses, which of them vote, and the majority that commits, confirms reads and elects.
`Roles`, `Election` and `Primary` read it from here rather than each deriving it from the flags.
Today it comes from `--peers` (`from_config`), every member a voter; issue 13 makes it replicated
state that changes at runtime. No I/O."""
from typing import NamedTuple


class Membership(NamedTuple):
    peers: dict             # node id -> config.Peer, every member but this node
    voters: frozenset       # node ids that vote, this node's included when it is a voting member

    @classmethod
    def from_config(cls, config) -> "Membership":
        peers = {p.node_id: p for p in config.peers}
        return cls(peers, frozenset(peers) | {config.node_id})

    @property
    def majority(self) -> int:
        """How many voters make a quorum for elections, read rounds and (by default) commits."""
        return len(self.voters) // 2 + 1
