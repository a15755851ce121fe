"""Disk space (docs/OPERATIONS.md, "Disk space"): a quota on the data dir (`max_data_bytes`) and a
floor under its file system's free space (`min_free_bytes`). Past either, the space alarm is on:
the node refuses writes that add data with `no_space`, while reads, deletes, membership changes and
everything replication needs go on, and its log keeps only what it must (the engines read
`space_alarm`), so deletes can give space back. The alarm clears by itself once space is back,
with a margin so it does not flap. etcd's NOSPACE alarm is the model; unlike etcd's, it needs
no operator to disarm it.

The quota counts what RocksDB holds (live table files and memtables, Storage.stored_bytes), as
etcd's counts its backend and not its WAL: write-ahead log files are kept for reuse and come and go
with the memtables, and the free-space floor covers them. Measured in the loop (a statvfs call and
a few RocksDB properties): every housekeeping interval, and after every MEASURE_EVERY bytes of
write requests or of batches written (a secondary's writes come from its primary, not from
requests), so a burst cannot run far past the limits between two measurements.
"""
import logging
import os

from . import errors
from .storage import UNFLUSHED_MAX

MEASURE_EVERY = 1 << 20     # bytes of write requests, or of batches written, between two measurements
HYSTERESIS = 0.05           # the quota alarm clears 5% under the quota (the floor's: space.SpaceGuard._over)
ADDS_DATA = frozenset({"PUT", "PUT_MANY", "CAS"})   # and PUT_CTX with a value (PUT_CTX with nil deletes)

log = logging.getLogger("zmqstore.space")


def adds_data(request) -> bool:
    """Whether the space alarm refuses this request."""
    command = request.command
    return command in ADDS_DATA or (command == "PUT_CTX" and request.args[1] is not None)


def request_bytes(request) -> int:
    """About what a write request stores: its keys and values."""
    total = 0
    for arg in request.args:
        if isinstance(arg, (bytes, str)):
            total += len(arg)
        elif isinstance(arg, list):         # PUT_MANY's [[key, value], ...]
            total += sum(len(k) + len(v) for k, v in arg)
    return total


class SpaceGuard:
    def __init__(self, path, stored_bytes, max_data_bytes, min_free_bytes, on_change=None, written=lambda: 0):
        self.path, self.max_data_bytes, self.min_free_bytes = path, max_data_bytes, min_free_bytes
        self.stored_bytes = stored_bytes    # () -> bytes of data RocksDB holds (Storage.stored_bytes)
        self.written = written      # () -> bytes of batches written so far (Storage.written)
        self.on_change = on_change  # (alarm on?) -> None, when the alarm goes on or off
        self.peers_short = None     # () -> ids of peers whose alarm is on (leader mode: the primary refuses for them)
        self.alarm = None           # why writes are refused, or None
        self.used = self.free = 0
        self.raised = 0             # times the alarm went on (metrics)
        self._since = 0             # bytes of write requests since the last measurement
        self._written_at = 0        # self.written() at the last measurement
        self.measure()

    def admit(self, nbytes):
        """A write request that adds data, of nbytes: raises NoSpace while the alarm is on, here or
        on a peer `peers_short` names (a leader-mode primary: the write would reach that disk too)."""
        if self.alarm is None:
            self._since += nbytes
            if self._since >= MEASURE_EVERY:
                self.measure()
        if self.alarm is not None:
            raise errors.NoSpace(f"no space: {self.alarm}; reads and deletes still work",
                                 {"used": self.used, "free": self.free})
        short = self.peers_short() if self.peers_short is not None else ()
        if short:
            raise errors.NoSpace(f"no space on node {', '.join(map(str, short))}: its space alarm is on; reads and "
                                 f"deletes still work", {"used": self.used, "free": self.free, "nodes": short})

    def check(self):
        """After a loop iteration: measure again once MEASURE_EVERY bytes were written since the last."""
        if self.written() - self._written_at >= MEASURE_EVERY:
            self.measure()

    def measure(self) -> bool:
        """Measure again and raise or clear the alarm; True when it changed."""
        self._since = 0
        self._written_at = self.written()
        try:
            st = os.statvfs(self.path)
            self.free = st.f_bavail * st.f_frsize
        except OSError as exc:
            log.warning("cannot measure the free space of %s: %s", self.path, exc.strerror)
            return False
        self.used = self.stored_bytes()
        before = self.alarm
        if self.alarm is None:
            self.alarm = self._over(clearing=False)
        elif self._over(clearing=True) is None:
            self.alarm = None
        if self.alarm == before or (self.alarm is not None and before is not None):
            return False
        if self.on_change is not None:
            self.on_change(self.alarm is not None)
        if self.alarm is not None:
            self.raised += 1
            log.error("space alarm: %s; writes that add data get no_space until space is back (delete keys, "
                      "raise max_data_bytes, free disk space); reads and deletes go on", self.alarm)
        else:
            log.warning("space alarm cleared: the data dir holds %d bytes, %d bytes free; writes accepted again",
                        self.used, self.free)
        return True

    def _over(self, clearing):
        """Why the node is short of space, or None. To clear, the limits are tighter: the quota by
        HYSTERESIS, the floor by one memtable flush (which alone moves free space by that much), so
        the alarm does not go on and off with each flush."""
        floor = self.min_free_bytes + (UNFLUSHED_MAX if clearing and self.min_free_bytes else 0)
        if self.free < floor:
            return (f"the data dir's file system has {self.free:,} bytes free, under min_free_bytes = "
                    f"{self.min_free_bytes:,}")
        quota = self.max_data_bytes * (1 - HYSTERESIS if clearing else 1) if self.max_data_bytes else None
        if quota is not None and self.used > quota:
            return f"RocksDB holds {self.used:,} bytes of data, over max_data_bytes = {self.max_data_bytes:,}"
        return None

    def status(self) -> dict:
        return {"alarm": self.alarm, "data_bytes": self.used,
                "free_bytes": self.free, "max_data_bytes": self.max_data_bytes,
                "min_free_bytes": self.min_free_bytes, "alarms_raised": self.raised}
