"""A shared log entry (docs/PROTOCOL.md section 5): the writes a leader-mode node judges in one loop
iteration, logged as one entry while they fit. The engine (engine.py) opens one for the first
write, adds the writes after it, and encodes it into the staged batch before anything reads the
staged log (the change stream, the flush)."""
from ..protocol import OP_PUT, LogEntry

# A shared entry takes no write that would take it past this many bytes, framing included
# (protocol/values.py decodes up to 64 KiB with a kept Unpacker).
SHARED_ENTRY_BYTES = 1 << 16
ENTRY_FRAMING = 32      # the entry's array, term, and the headers of ops and more (20 bytes at most)


def shared_size(client_id, ops) -> int:
    """What a write adds to a shared entry, at most: its keys, values and ids with their framing (an
    op's array, code and two bin headers take 8 bytes at most below 64 KiB; a writer's pair, 12 at
    most besides its client id)."""
    size = len(client_id) + 16
    for op in ops:
        size += len(op[1]) + (len(op[2]) if op[0] == OP_PUT else 0) + 8
    return size


def opens(size) -> bool:
    """Whether a write of this shared_size may start a shared entry (else it gets one of its own)."""
    return ENTRY_FRAMING + size <= SHARED_ENTRY_BYTES


class SharedEntry:
    """The entry later writes of this iteration may join: its ops (a list the engine's pending
    state also holds, so it applies them as one entry) and its writers."""

    __slots__ = ("seq", "term", "client_id", "request_id", "ops", "more", "size")

    def __init__(self, seq, term, client_id, request_id, ops, size):
        self.seq, self.term, self.client_id, self.request_id = seq, term, client_id, request_id
        self.ops, self.more, self.size = list(ops), [], ENTRY_FRAMING + size

    def takes(self, size, n_ops, max_ops) -> bool:
        return self.size + size <= SHARED_ENTRY_BYTES and len(self.ops) + n_ops <= max_ops

    def add(self, client_id, request_id, ops, size) -> int:
        self.ops.extend(ops)
        self.more.append((client_id, request_id))
        self.size += size
        return self.seq

    def entry(self) -> LogEntry:
        return LogEntry(self.term, self.client_id, self.request_id, tuple(self.ops), tuple(self.more))
