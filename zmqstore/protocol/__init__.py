"""The zmqstore wire format: every message defined once, msgpack encoding with size limits.

docs/PROTOCOL.md is the specification; this package is its only implementation, imported as one
module (`protocol.X`): `schema` (every request and peer message as a table of typed fields, the
limits, the tuples messages decode to), `values` (msgpack with bounded cost; values, vectors,
contexts), `checks` (every field checked against the tables) and `codec` (frames, requests, peer
messages, replies, log entries, dynamo states). No module outside it imports msgpack. Values travel
and are stored as msgpack-encoded bytes (`pack_value`), so a node never re-encodes a value it stores.
"""
from .schema import (BATCH_MAX, GROUP_BYTES, DYNAMO_IDS_MAX, DYNAMO_RECORDS_MAX, DynamoMember, KEY_Z85_LEN, MEMBERS_MAX, MEMBERSHIP_CHANGES, OPT_STR, Member, BIN, BIN_LIST, BOOL, CLIENT_ID_MAX, CONTEXT, CONTEXT_MAX, ERR, FENCE, HEADER_FIELDS, ITEMS,
                     KEY, OK, OPTION_COMMANDS, OPT_BIN, OPT_KEY, OPT_UINT, OPT_VALUE, OP_DEL, OP_PUT, PAIR_LIST,
                     PEER_ARRAY_MAX, PEER_MESSAGES, PEER_REPLIES, PEER_REQUESTS, PEER_SENDER_FIELD, PEER_STREAM,
                     PEER_VERSION, PEER_VERSIONS, PROTOCOL_VERSION, QUORUM_MAX, REQUESTS, SHARED_ENTRY_VERSION, STR, STR_MAX, TERM, TERM_MAX, UINT, UINT64_MAX,
                     UINT_LIST, VALUE, VECTOR, WATCH_COMMANDS, WRITE_COMMANDS, Limits, LogEntry, PeerMessage, Reply,
                     Request, STREAM_UNTAGGED,
                     leader_topics, peer_sender, stream_topic)  # noqa: F401
from .values import ExtType, Timestamp, decode_context, encode_context, is_one_scalar, pack_value, unpack_value, vector_from_pairs, vector_pairs  # noqa: F401
from .codec import (DynEntry, reply_outcome, decode_dyn_entry, decode_entry, decode_key_state, decode_peer, decode_reply,
                    decode_peer_entry, entry_writers, peers_read_shared_entries, peers_take, check_members, data_ops, decode_members, encode_members, decode_dynamo_members,
                    encode_dynamo_members, entry_members,
                    members_ops, decode_request, encode_dyn_entry, encode_entry, encode_error, encode_exception,
                    encode_key_state, encode_ok, encode_peer, encode_request, entry_term, peer_versions, speak, speak_peer_version,
                    split_batch, split_frames)  # noqa: F401
