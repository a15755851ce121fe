"""Leader mode inside a node (docs/REPLICATION.md): one primary orders every write, secondaries
follow its log stream, and the lowest available voter takes over when it fails.

- `engine.py` `Engine`: the log, staging and the iteration's group commit, applying what committed;
  `commands.py` what each client command means against it;
- `election.py`: failure detection, who stands, vote counting, whose log to adopt (no I/O);
- `roles.py` `Roles`: the role a node plays and the moves between roles, persisting terms and votes;
- `primary.py`, `secondary.py`, `log_server.py`: the two sides of the log stream and the FETCH and
  SNAPSHOT server every node runs.
What they send goes into the iteration's Sends (sends.py); modes.LeaderMode drives them.
"""
from .engine import Engine
from .log_server import LogServer
from .primary import Primary
from .roles import Roles

__all__ = ["Engine", "LogServer", "Primary", "Roles"]
