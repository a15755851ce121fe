"""The wire protocol's vocabulary (docs/PROTOCOL.md): every client request and peer message
defined once as a table of typed fields, the limits, and the tuples messages decode to. No
msgpack here."""
from typing import NamedTuple

PROTOCOL_VERSION = 1       # client requests and replies (section 3 of docs/PROTOCOL.md)
# Peer messages have a version of their own (docs/PROTOCOL.md, section 6, "Versions"): each message
# carries the version it is encoded in, a node accepts the versions in PEER_VERSIONS and refuses
# others with a log line, and ROLE and DSTATUS announce that range to every peer. A release that
# changes a peer message raises PEER_VERSION and keeps the old one in its range, so that it runs
# beside the release before it during a rolling upgrade. Version 1 had no range in ROLE and DSTATUS.
# Version 3 only adds messages (DSYNC, DFORWARD, DHINT, DHANDOFF and their replies: partitioned
# dynamo clusters, docs/PARTITIONING.md). A node encodes in the highest version every peer accepts
# (codec.speak), but a message never below the version that defines it (PEER_MESSAGE_VERSION), so a
# version-2 node refuses those plainly where a cluster would need them. Version 4 only adds shared
# log entries (LogEntry.more): a primary logs them only while every peer speaks 4 (SHARED_ENTRY_VERSION).
PEER_VERSION = 4
PEER_VERSIONS = (2, 4)     # (lowest, highest) accepted
SHARED_ENTRY_VERSION = 4

# Field types of request messages; each has a checker in _CHECKERS.
KEY = "key"                # bin, 1..max_key_size bytes
OPT_KEY = "opt_key"        # bin (may be empty) or nil
VALUE = "value"            # bin holding exactly one msgpack object, <= max_value_size bytes
OPT_VALUE = "opt_value"    # VALUE or nil
BOOL = "bool"
OPT_UINT = "opt_uint"      # non-negative int or nil
ITEMS = "items"            # array of [KEY, VALUE], 1..max_batch_items entries
UINT = "uint"              # unsigned 64-bit int
TERM = "term"              # a leader-mode term: uint up to TERM_MAX, so one more always fits in 64 bits
STR = "str"                # str of at most STR_MAX characters (peer messages: roles, addresses)
OPT_STR = "opt_str"        # STR or nil
CONTEXT = "context"        # bin: an opaque causal context from GET_VERSIONS (dynamo mode)
POSITION = "position"      # where a watch resumes: nil (now), a uint seq (leader mode) or an
                           # array of [uint, uint], an applied vector (dynamo mode)

# Client requests: command -> ((field name, field type), ...). See docs/PROTOCOL.md section "Commands".
REQUESTS = {
    "PING": (),
    "GET": (("key", KEY), ("stale", BOOL)),
    "PUT": (("key", KEY), ("value", VALUE)),
    "DEL": (("key", KEY),),
    "CAS": (("key", KEY), ("expected", OPT_VALUE), ("new", VALUE)),
    "PUT_MANY": (("items", ITEMS),),
    "SCAN": (("start", OPT_KEY), ("end", OPT_KEY), ("prefix", OPT_KEY), ("limit", OPT_UINT), ("stale", BOOL)),
    "STATUS": (),
    "OUTCOME": (("request_id", UINT),),
    # dynamo mode (docs/DYNAMO.md): every sibling with the key's context; a write with a context
    # (value nil: a delete) replaces exactly the versions that context covers
    "GET_VERSIONS": (("key", KEY),),
    "PUT_CTX": (("key", KEY), ("value", OPT_VALUE), ("context", CONTEXT)),
    # membership (leader mode, docs/MEMBERSHIP.md): the members as the node sees them; add a learner
    # (pub_port, peer_port nil: port + 1000, port + 2000; key: its public key, Z85, with keys); remove one
    "MEMBERS": (),
    "ADD_MEMBER": (("node_id", UINT), ("host", STR), ("port", UINT), ("pub_port", OPT_UINT), ("peer_port", OPT_UINT),
                   ("key", OPT_STR)),
    "REMOVE_MEMBER": (("node_id", UINT),),
    # change feeds (docs/WATCH.md): a stream of replies under the WATCH's request id, at most `credit`
    # bytes of them until WATCH_CREDIT returns more; WATCH_CREDIT is answered only when it fails
    "WATCH": (("prefix", OPT_KEY), ("from", POSITION), ("snapshot", BOOL), ("credit", UINT), ("stale", BOOL)),
    "WATCH_CREDIT": (("watch_id", UINT), ("credit", UINT)),
}
WATCH_COMMANDS = frozenset({"WATCH", "WATCH_CREDIT"})
WRITE_COMMANDS = frozenset({"PUT", "DEL", "CAS", "PUT_MANY", "PUT_CTX"})
MEMBERSHIP_CHANGES = frozenset({"ADD_MEMBER", "REMOVE_MEMBER"})    # logged like writes; read-write keys only
# Commands that take a trailing map of per-request options (docs/PROTOCOL.md): dynamo-mode quorums,
# "w" (nodes holding a write before its reply) and "r" (nodes consulted by a read), and leader mode's
# "read_index" (a linearizable GET served by the secondary talked to, docs/REPLICATION.md "Reads").
OPTION_COMMANDS = {"GET": ("r", "read_index"), "GET_VERSIONS": ("r",), "PUT": ("w",), "PUT_CTX": ("w",),
                   "DEL": ("w",), "PUT_MANY": ("w",)}
BOOL_OPTIONS = frozenset({"read_index"})
QUORUM_MAX = 64

# Peer messages (docs/REPLICATION.md, docs/DYNAMO.md). Layout: [peer version, command, field...].
BIN_LIST = "bin_list"      # array of bin (log entries as stored)
PAIR_LIST = "pair_list"    # array of [bin, bin] (snapshot items)
VECTOR = "vector"          # array of [uint, uint]: {node id: seq} (dynamo applied vectors)
UINT_LIST = "uint_list"    # array of uint (anti-entropy hashes)
BIN = "bin"                # bin of any length up to the frame limit
OPT_BIN = "opt_bin"        # BIN or nil
VERSIONS = "versions"      # [uint, uint]: the lowest and highest peer version the sender accepts
# sender_id: the node sending; for CHANGE and HEARTBEAT that is the primary of `term`.
_LOG_BATCH = (("term", TERM), ("sender_id", UINT), ("prev_seq", UINT), ("prev_term", TERM),
              ("entries", BIN_LIST), ("commit_seq", UINT), ("sender_last_seq", UINT))
# A node's state as ROLE and ROLE_REPLY carry it (election.py).
_ROLE = (("node_id", UINT), ("term", TERM), ("role", STR), ("leader_id", UINT), ("last_seq", UINT),
         ("last_term", TERM), ("commit_seq", UINT), ("leader_lost", BOOL), ("voter", BOOL),
         ("address", STR), ("pub_address", STR), ("space_alarm", BOOL), ("versions", VERSIONS))
# `members`: a digest of the sender's membership (dynamo/membership.py); a peer whose own differs
# sends it DMEMBERS.
_DSTATUS = (("node_id", UINT), ("applied", VECTOR), ("digest", UINT), ("keys", UINT), ("conflicts", UINT),
            ("tombstones", UINT), ("address", STR), ("members", UINT), ("versions", VERSIONS))
PEER_MESSAGES = {
    # secondary -> primary, DEALER -> ROUTER
    "ACK": (("node_id", UINT), ("term", TERM), ("last_seq", UINT), ("round", UINT), ("voter", BOOL)),
    # any node -> any node (a secondary to its primary, a candidate to the voter whose log it adopts)
    "FETCH": (("node_id", UINT), ("term", TERM), ("from_seq", UINT)),
    "SNAPSHOT": (("node_id", UINT), ("term", TERM), ("snapshot_seq", UINT), ("cursor", OPT_KEY)),
    # primary -> secondaries: PUB
    "CHANGE": _LOG_BATCH,
    "HEARTBEAT": (("term", TERM), ("sender_id", UINT), ("round", UINT), ("commit_seq", UINT),
                  ("sender_last_seq", UINT)),
    # answers to FETCH and SNAPSHOT: ROUTER replies
    "ENTRIES": _LOG_BATCH,
    "NEED_SNAPSHOT": (("term", TERM), ("sender_id", UINT), ("first_seq", UINT)),
    "SNAPSHOT_CHUNK": (("term", TERM), ("sender_id", UINT), ("asked_seq", UINT), ("asked_cursor", OPT_KEY),
                       ("snapshot_seq", UINT), ("snapshot_term", TERM), ("items", PAIR_LIST),
                       ("next_cursor", OPT_KEY), ("members", OPT_BIN)),
    # every node <-> every node: role queries (DEALER -> ROUTER) and their replies are the heartbeats
    "ROLE": _ROLE,
    "ROLE_REPLY": _ROLE,
    # elections: a candidate asks (DEALER -> ROUTER), each node answers (ROUTER reply)
    "VOTE_REQUEST": (("term", TERM), ("candidate_id", UINT), ("last_seq", UINT), ("last_term", TERM)),
    "VOTE": (("term", TERM), ("node_id", UINT), ("granted", BOOL), ("last_seq", UINT), ("last_term", TERM),
             ("first_seq", UINT)),
    # ReadIndex reads on a secondary: it asks its primary for the commit seq (DEALER -> ROUTER); the
    # primary answers once a heartbeat round started after the ask is confirmed (ROUTER reply)
    "READ_INDEX": (("node_id", UINT), ("term", TERM), ("ask", UINT)),
    "READ_INDEX_REPLY": (("term", TERM), ("sender_id", UINT), ("ask", UINT), ("commit_seq", UINT)),
    # dynamo mode (docs/DYNAMO.md). An origin publishes its own new entries (PUB):
    "DCHANGE": (("origin", UINT), ("entries", BIN_LIST)),
    # every node <-> every node, every election_interval / 5: what each has applied, and a digest
    # of its data (DEALER -> ROUTER, and the ROUTER reply)
    "DSTATUS": _DSTATUS,
    "DSTATUS_REPLY": _DSTATUS,
    # a node lacking an origin's entries asks a peer that has them, and gets them in order
    "DFETCH": (("node_id", UINT), ("origin", UINT), ("from_seq", UINT)),
    "DENTRIES": (("sender_id", UINT), ("origin", UINT), ("from_seq", UINT), ("entries", BIN_LIST),
                 ("first_seq", UINT)),
    # anti-entropy: hashes of key buckets (group nil: the group hashes), then a bucket's key states
    "DTREE": (("node_id", UINT), ("repair_id", UINT), ("group", OPT_UINT)),
    "DTREE_REPLY": (("sender_id", UINT), ("repair_id", UINT), ("group", OPT_UINT), ("hashes", UINT_LIST),
                    ("applied", VECTOR)),
    "DRANGE": (("node_id", UINT), ("repair_id", UINT), ("bucket", UINT), ("cursor", OPT_KEY)),
    "DRANGE_REPLY": (("sender_id", UINT), ("repair_id", UINT), ("bucket", UINT), ("cursor", OPT_KEY),
                     ("items", PAIR_LIST), ("next_cursor", OPT_KEY), ("applied", VECTOR)),
    # quorums: a node that applied an origin's entries durably tells that origin (write_quorum > 1)
    "DACK": (("node_id", UINT), ("origin", UINT), ("seq", UINT)),
    # a read with read_quorum > 1 asks peers for their state of a key; stale replicas get the merge
    "DREAD": (("node_id", UINT), ("read_id", UINT), ("key", KEY)),
    "DREAD_REPLY": (("sender_id", UINT), ("read_id", UINT), ("state", OPT_BIN), ("applied", VECTOR)),
    "DPUSH": (("node_id", UINT), ("key", KEY), ("state", BIN)),
    # membership (docs/MEMBERSHIP.md, "Dynamo mode"): the sender's whole membership, every record
    # stamped (codec.encode_dynamo_members), which the receiver merges into its own; and its durable
    # applied vector (what a removed node holds, for the nodes that let it go)
    "DMEMBERS": (("node_id", UINT), ("members", BIN), ("applied", VECTOR)),
    # partitioned clusters (replicas set, docs/PARTITIONING.md), every heartbeat to every member:
    # what the sender's applied vector gained in the partitions both own, until the receiver's run
    # confirms it (`ack`: the highest `number` it heard from the sender's run `to_run` names);
    # `complete`: every change not yet confirmed is in it
    "DSYNC": (("node_id", UINT), ("run", UINT), ("to_run", UINT), ("number", UINT), ("ack", UINT),
              ("replicas", UINT), ("applied", VECTOR), ("complete", BOOL), ("moving", UINT_LIST),
              ("leaving", UINT_LIST)),
    # a request for a key this node does not own, sent to an owner, and its reply's body
    "DFORWARD": (("node_id", UINT), ("forward_id", UINT), ("hops", UINT), ("request", BIN)),
    "DFORWARD_REPLY": (("sender_id", UINT), ("forward_id", UINT), ("reply", BIN)),
    # hinted handoff: a coordinator gives a fallback its new entries for an owner that is down; the
    # fallback says which it holds; later it hands them to the owner, which says what it then holds
    "DHINT": (("node_id", UINT), ("owner", UINT), ("origin", UINT), ("entries", BIN_LIST)),
    "DHINT_ACK": (("sender_id", UINT), ("origin", UINT), ("low", UINT), ("high", UINT)),
    "DHANDOFF": (("node_id", UINT), ("origin", UINT), ("entries", BIN_LIST)),
    "DHANDOFF_ACK": (("sender_id", UINT), ("origin", UINT), ("seq", UINT)),
}
PEER_MESSAGE_VERSION = {"DSYNC": 3, "DFORWARD": 3, "DFORWARD_REPLY": 3,    # the rest: 2
                        "DHINT": 3, "DHINT_ACK": 3, "DHANDOFF": 3, "DHANDOFF_ACK": 3,
                        "READ_INDEX": 3, "READ_INDEX_REPLY": 3}

# Where each peer message names the node that sent it: the index of that field (DCHANGE names its
# origin, whose node id is origin >> 32). A node accepts a peer message only from the connection of
# the node it names (docs/SECURITY.md).
PEER_REQUESTS = frozenset({"ACK", "FETCH", "SNAPSHOT", "ROLE", "VOTE_REQUEST", "DSTATUS", "DFETCH", "DTREE",
                           "DRANGE", "DACK", "DREAD", "DPUSH", "DMEMBERS", "DSYNC",
                           "DFORWARD", "DHINT", "DHANDOFF", "READ_INDEX"})   # sent to a peer port
PEER_STREAM = frozenset({"CHANGE", "HEARTBEAT", "DCHANGE"})          # published on a PUB
PEER_REPLIES = frozenset(PEER_MESSAGES) - PEER_REQUESTS - PEER_STREAM   # back on the DEALER that asked
PEER_SENDER_FIELD = {cmd: 0 for cmd in PEER_MESSAGES}
PEER_SENDER_FIELD.update({"VOTE_REQUEST": 1, "CHANGE": 1, "HEARTBEAT": 1, "ENTRIES": 1, "NEED_SNAPSHOT": 1,
                          "SNAPSHOT_CHUNK": 1, "VOTE": 1, "READ_INDEX_REPLY": 1})


# Leader mode's change stream (docs/PROTOCOL.md, HEARTBEAT): a message for every secondary is one
# frame, its body, a msgpack array, so it begins with one of STREAM_UNTAGGED; a read round's
# HEARTBEAT for some secondaries goes as [stream_topic(node id), body] to each. A leader-mode SUB
# subscribes to both kinds (leader_topics): a topic always ends with "." so that n1. is no prefix of n12.
STREAM_UNTAGGED = tuple(bytes([head]) for head in range(0x90, 0xa0)) + (b"\xdc", b"\xdd")


def stream_topic(node_id) -> bytes:
    return b"n%d." % node_id


def leader_topics(node_id) -> tuple:
    """What a leader-mode node's SUBs subscribe to: untagged stream messages, and those for it."""
    return STREAM_UNTAGGED + (stream_topic(node_id),)


def peer_sender(message) -> int:
    """The node id a validated peer message says sent it."""
    if message.command == "DCHANGE":
        return message.fields[0] >> 32
    return message.fields[PEER_SENDER_FIELD[message.command]]


# Reply status words.
OK = "OK"
ERR = "ERR"

# Operations inside a log entry.
OP_PUT = 0
OP_DEL = 1

HEADER_FIELDS = 5  # version, command, client_id, request_id, open_from
PEER_ARRAY_MAX = 10_000  # entries or snapshot items in one peer message

BATCH_MAX = 64              # request bodies in one client message (docs/PROTOCOL.md section 2, "Batches")
GROUP_BYTES = 64 << 10      # reply bodies one grouped reply message holds, unless one alone is larger
CLIENT_ID_MAX = 64
TERM_MAX = (1 << 63) - 1
CONTEXT_MAX = 64 << 10
STR_MAX = 256
UINT64_MAX = (1 << 64) - 1


class Limits(NamedTuple):
    """Size limits a node enforces on requests (settings max_key_size, max_value_size, max_batch_items)."""

    max_key_size: int = 1024
    max_value_size: int = 1 << 20
    max_batch_items: int = 10_000
    max_request_size: int = 16 << 20


class Request(NamedTuple):
    command: str
    client_id: bytes
    request_id: int
    open_from: int       # the lowest request id this client still waits for (docs/PROTOCOL.md)
    args: tuple
    options: dict = {}   # per-request options (a trailing map): "w", "r" (dynamo quorums)


class Reply(NamedTuple):
    request_id: int
    ok: bool
    result: tuple        # the OK fields, or (code, message, details) for ERR


class PeerMessage(NamedTuple):
    command: str
    fields: tuple


class LogEntry(NamedTuple):
    term: int
    client_id: bytes
    request_id: int
    ops: tuple           # ((OP_PUT, key, value) | (OP_DEL, key), ...); None: a fence (see FENCE);
                         # {"members": (member, ...)}: a membership change (codec.entry_members)
    more: tuple = ()     # a shared entry: ((client_id, request_id), ...) of the writes after the first,
                         # whose ops follow its own in `ops` (docs/PROTOCOL.md section 5)


class Member(NamedTuple):
    """One member of a leader-mode cluster as its membership records it (docs/MEMBERSHIP.md)."""
    node_id: int
    host: str
    port: int
    pub_port: int
    peer_port: int
    voter: bool = True
    key: str = None      # its public key (Z85), with keys

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class DynamoMember(NamedTuple):
    """One record of a dynamo-mode membership (docs/MEMBERSHIP.md, "Dynamo mode"): a node's
    addresses and key, and the stamp (counter, removed, changer) by which concurrent records of
    the same node id are ordered; the highest wins everywhere."""
    node_id: int
    host: str
    port: int
    pub_port: int
    peer_port: int
    key: str            # its public key (Z85), with keys; else None
    counter: int        # 0: from the flags; each change of this node id's record adds one
    removed: bool
    changer: int        # the node that made the change (0: the flags)

    @property
    def member(self) -> Member:
        return Member(self.node_id, self.host, self.port, self.pub_port, self.peer_port, True, self.key)

    @property
    def stamp(self) -> tuple:
        """The merge order: counter, then a removal over an addition, then the changer; the record
        itself last, so that two records always compare the same way on every node."""
        return (self.counter, self.removed, self.changer, self.host, self.port, self.pub_port, self.peer_port,
                self.key or "")


MEMBERS_MAX = 64            # members of one cluster
DYNAMO_IDS_MAX = 256        # node ids a dynamo cluster may have had (ADD_MEMBER refuses more)
DYNAMO_RECORDS_MAX = 512    # records of a dynamo membership a node takes: room for concurrent additions
KEY_Z85_LEN = 40            # a CurveZMQ public key in Z85

# A log entry whose ops are FENCE (nil) applies nothing: it records that the client's request id
# was declared not_found by OUTCOME and must never be applied (docs/REPLICATION.md).
FENCE = None
