"""Test-only fault switches (zmqstore/faults.py): read once from an environment, unknown builds refused."""
import pytest

from zmqstore import faults
from zmqstore.errors import ConfigError


def test_switches_are_off_unless_set_and_read_from_the_environment_given():
    assert faults.Faults.from_environment({}) == faults.NONE
    on = faults.Faults.from_environment({faults.DROP_CHANGES_ENV: "0.5", faults.CRASH_IN_SNAPSHOT_ENV: "3",
                                         faults.BROKEN_ENV: "deposed-reads"})
    assert (on.drop_changes, on.crash_in_snapshot, on.deposed_reads, on.dynamo_lww) == (0.5, 3, True, False)
    assert faults.Faults.from_environment({faults.BROKEN_ENV: "dynamo-lww"}).dynamo_lww
    assert faults.Faults.from_environment({faults.PEER_VERSION_ENV: "3"}).peer_version == (3, 3)
    assert faults.Faults.from_environment({faults.PEER_VERSION_ENV: "2-3"}).peer_version == (2, 3)
    for bad in ("3-2", "0", "2-3-4"):
        with pytest.raises(ConfigError, match=faults.PEER_VERSION_ENV):
            faults.Faults.from_environment({faults.PEER_VERSION_ENV: bad})
    with pytest.raises(ConfigError, match="not a number"):
        faults.Faults.from_environment({faults.PEER_VERSION_ENV: "x"})


def test_an_unknown_broken_build_and_bad_numbers_are_refused():
    with pytest.raises(ConfigError, match="deposed-reads, dynamo-lww"):
        faults.Faults.from_environment({faults.BROKEN_ENV: "deposed-read"})
    with pytest.raises(ConfigError, match="not a number"):
        faults.Faults.from_environment({faults.CRASH_IN_SNAPSHOT_ENV: "three"})
    with pytest.raises(ConfigError, match="fraction"):
        faults.Faults.from_environment({faults.DROP_CHANGES_ENV: "50"})
