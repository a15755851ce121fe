"""`--join` (docs/MEMBERSHIP.md): before its loop starts, a leader-mode node that is not a member
yet asks the cluster, through any member's client port, to add it as a learner, and records the
membership the cluster committed. From then on it is a member like any other: it connects to the
members, catches up (snapshot, then the stream) and is promoted to voter by the primary."""
import logging
import time

from . import errors, keys, protocol
from .api import Call
from .client import Client, Retry

JOIN_TIMEOUT = 60.0         # seconds to keep asking before the node gives up and exits

log = logging.getLogger("zmqstore.node")


def join_cluster(config, storage, stopping=lambda: False):
    """Ask `config.join`'s endpoints to add this node, unless its data dir already records it as a
    member; record the membership of the reply (committed) in the data dir. Raises ConfigError when
    the cluster refuses or cannot be reached within JOIN_TIMEOUT."""
    if config.mode != "leader":
        raise errors.ConfigError("--join is for leader mode; a dynamo-mode node is given its peers with --peers")
    if storage.members is not None:
        seq, members = protocol.decode_members(storage.members)
        if any(m.node_id == config.node_id for m in members):
            log.info("--join: already a member by entry %d; not asking again", seq)
            return
    # With keys, the node's own key: the cluster admits it only if `add-member --key` recorded it.
    own_key = keys.load_pair(config.secret_key).public.decode() if config.keys else None
    credentials = {"secret_key": config.secret_key, "node_keys": config.node_keys} if config.keys else {}
    me = (config.node_id, config.host, config.port, config.pub_port, config.peer_port, own_key)
    log.info("--join: asking %s to add node %d (%s:%d) as a learner", ",".join(config.join), config.node_id,
             config.host, config.port)
    deadline = time.monotonic() + JOIN_TIMEOUT
    last = None
    try:
        client = Client(list(config.join), timeout=2.0, retry=Retry(max_tries=5, deadline=5.0), **credentials)
    except ValueError as exc:
        raise errors.ConfigError(f"--join: {exc}") from None
    with client:
        while time.monotonic() < deadline and not stopping():
            try:
                # The whole reply, not add_member()'s seq: its members are the membership that
                # committed with this node in it, which is what this node may record.
                result = client._execute(Call("ADD_MEMBER", me, lambda r: r))
            except (errors.Unavailable, errors.NotPrimary, errors.ConnectionTimeout,
                    errors.ReplicationTimeout) as exc:
                last = exc
                time.sleep(0.2)
                continue
            except errors.RequestError as exc:
                raise errors.ConfigError(f"--join: the cluster refused to add node {config.node_id}: {exc}") from None
            if len(result) < 3:
                continue    # a retry's reply names the entry but not the members: ask again (a no-op now)
            _changed, seq, records = result
            members = protocol.check_members([[r["node_id"], r["host"], r["port"], r["pub_port"], r["peer_port"],
                                               r["voter"], r.get("key")] for r in records])
            batch = storage.batch()
            batch.set_members(protocol.encode_members(seq, members))
            storage.commit(batch)
            log.info("--join: added by entry %d; members %s", seq, sorted(m.node_id for m in members))
            return
    hint = (" With keys, a member admits this node's key only once `datastore-cli add-member "
            f"{config.node_id} {config.host}:{config.port} --key <its public key file>` added it.") if config.keys else ""
    raise errors.ConfigError(f"--join: no member of {','.join(config.join)} added this node within "
                             f"{JOIN_TIMEOUT:.0f} s (last answer: {last}).{hint}")
