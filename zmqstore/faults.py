"""Test-only fault switches (docs/TESTING.md), in one place and read once, when a node starts.

Tests set them in a node process's environment to prove a repair path or to show that a checker
catches a deliberately broken build. Production never sets them; a node that starts with one on
says so loudly in its log.
"""
import logging
import os
from typing import NamedTuple

from .errors import ConfigError

log = logging.getLogger("zmqstore.faults")

# The fraction (0 to 1) of published change-stream messages a node drops: the repair path (FETCH)
# must bring the secondaries what they missed.
DROP_CHANGES_ENV = "ZMQSTORE_TEST_DROP_CHANGES"
# A secondary exits (status 70, no cleanup, like kill -9) after installing this many chunks of a
# snapshot, in its middle: a restart must resume or restart the install.
CRASH_IN_SNAPSHOT_ENV = "ZMQSTORE_TEST_CRASH_IN_SNAPSHOT"
# A deliberately broken build: "deposed-reads", a primary that answers linearizable reads without
# confirming its leadership and never steps down; "dynamo-lww", a dynamo node that keeps only the
# winner of concurrent writes. The fault campaigns show their checkers catching each.
BROKEN_ENV = "ZMQSTORE_TEST_BROKEN"
BROKEN_BUILDS = ("deposed-reads", "dynamo-lww")
# A node of another release: "N", it encodes peer messages in peer protocol version N and accepts
# only that one (its peers must refuse it, and it them); "N-M", it encodes in N and accepts N..M
# (a next release beside this one). protocol.speak_peer_version.
PEER_VERSION_ENV = "ZMQSTORE_TEST_PEER_VERSION"

CRASH_EXIT_STATUS = 70


class Faults(NamedTuple):
    drop_changes: float = 0.0
    crash_in_snapshot: int = 0
    broken: str = ""
    peer_version: tuple = ()      # (lowest, highest) accepted, encoding in lowest; () when off

    @property
    def deposed_reads(self) -> bool:
        return self.broken == "deposed-reads"

    @property
    def dynamo_lww(self) -> bool:
        return self.broken == "dynamo-lww"

    @classmethod
    def from_environment(cls, environ=None) -> "Faults":
        """The switches set in `environ` (default: this process's environment), logged when on."""
        environ = os.environ if environ is None else environ
        try:
            versions = [int(v) for v in (environ.get(PEER_VERSION_ENV) or "").split("-") if v]
            faults = cls(float(environ.get(DROP_CHANGES_ENV) or 0), int(environ.get(CRASH_IN_SNAPSHOT_ENV) or 0),
                         environ.get(BROKEN_ENV) or "", tuple(versions[:1] * 2 if len(versions) == 1 else versions))
        except ValueError as exc:
            raise ConfigError(f"a test-only fault switch is not a number: {exc}") from None
        if not 0 <= faults.drop_changes <= 1:
            raise ConfigError(f"{DROP_CHANGES_ENV}={faults.drop_changes}: a fraction from 0 to 1")
        if faults.broken and faults.broken not in BROKEN_BUILDS:
            raise ConfigError(f"{BROKEN_ENV}={faults.broken!r}: expected one of {', '.join(BROKEN_BUILDS)}")
        if faults.peer_version and not (len(faults.peer_version) == 2 and 0 < faults.peer_version[0] <=
                                        faults.peer_version[1]):
            raise ConfigError(f"{PEER_VERSION_ENV}={environ.get(PEER_VERSION_ENV)}: a peer protocol version N, "
                              f"or a range N-M with 0 < N <= M")
        for name, value in zip((DROP_CHANGES_ENV, CRASH_IN_SNAPSHOT_ENV, BROKEN_ENV, PEER_VERSION_ENV), faults):
            if value:
                log.warning("TEST-ONLY FAULT SWITCH %s=%s is on: never use this node's data", name, value)
        return faults


NONE = Faults()


def crash():
    """Exit at once, like kill -9: no cleanup, no clean close of RocksDB."""
    log.warning("test switch: exiting without cleanup")
    os._exit(CRASH_EXIT_STATUS)
