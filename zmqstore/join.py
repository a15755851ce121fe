"""`--join` (docs/MEMBERSHIP.md): before its loop starts, a node that is not a member yet asks the
cluster, through any member's client port, to add it, and records the membership of the reply. From
then on it is a member like any other. In leader mode it joins as a learner, catches up (snapshot,
then the stream) and is promoted to voter by the primary; the membership it records is committed.
In dynamo mode any member adds it; it learns the rest of the membership from its peers' records
(DMEMBERS) and the data through their logs and anti-entropy."""
import logging
import struct
import time

from . import errors, keys, protocol
from .api import Call
from .client import Client, Retry
from .dynamo.membership import DynamoMembership
from .protocol import DynamoMember
from .dynamo.placement import Placement
from .storage import META_DMEMBERS, META_MOVING, META_PLACED

JOIN_TIMEOUT = 60.0         # seconds to keep asking before the node gives up and exits

log = logging.getLogger("zmqstore.node")


def join_cluster(config, storage, stopping=lambda: False):
    """Ask `config.join`'s endpoints to add this node, unless its data dir already records it as a
    member; record the membership of the reply (committed) in the data dir. Raises ConfigError when
    the cluster refuses or cannot be reached within JOIN_TIMEOUT."""
    if _already_member(config, storage):
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
        checked = config.mode != "dynamo"
        while time.monotonic() < deadline and not stopping():
            try:
                if not checked:
                    _check_replicas(config, client)
                    checked = True
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
            _record(config, storage, seq, members)
            return
    hint = (" With keys, a member admits this node's key only once `datastore-cli add-member "
            f"{config.node_id} {config.host}:{config.port} --key <its public key file>` added it.") if config.keys else ""
    raise errors.ConfigError(f"--join: no member of {','.join(config.join)} added this node within "
                             f"{JOIN_TIMEOUT:.0f} s (last answer: {last}).{hint}")


def _check_replicas(config, client):
    """A dynamo cluster's replicas is fixed when it is created (docs/PARTITIONING.md): a node that
    would join with another value refuses to start and names the cluster's."""
    theirs = client.status().get("replicas", 0)
    if theirs != config.replicas:
        raise errors.ConfigError(f"--join: the cluster keeps replicas = {theirs} (fixed when it was created); this "
                                 f"node was started with replicas = {config.replicas}: start it with "
                                 f"--replicas {theirs}")


def _already_member(config, storage) -> bool:
    """Whether the data dir records this node as a member (then it does not ask again). A dynamo
    data dir that records its node's removal cannot join again: its data missed what the cluster
    collected meanwhile (deleted keys could come back), so the node must start from an empty one."""
    if config.mode == "dynamo":
        raw = storage.get_cf("meta", META_DMEMBERS)
        if raw is None:
            return False
        membership = DynamoMembership.decode(config.node_id, raw)
        if membership.removed_by is not None:
            raise errors.ConfigError(f"--join: this data dir records that node {config.node_id} was removed from the "
                                     f"cluster (by node {membership.removed_by}); join again with an empty --data-dir")
        log.info("--join: already a member; not asking again")
        return True
    if storage.members is None:
        return False
    seq, members = protocol.decode_members(storage.members)
    if any(m.node_id == config.node_id for m in members):
        log.info("--join: already a member by entry %d; not asking again", seq)
        return True
    return False


def _record(config, storage, seq, members):
    """Record the membership of the reply that added this node: in leader mode that of its
    committed entry `seq`; in dynamo mode the members at counter 0, which every record the peers
    send (DMEMBERS) supersedes, and this node's own record at the reply's counter `seq`."""
    batch = storage.batch()
    if config.mode == "dynamo":
        records = [DynamoMember(m.node_id, m.host, m.port, m.pub_port, m.peer_port, m.key,
                                seq if m.node_id == config.node_id else 0, False, 0) for m in members]
        batch.put_cf("meta", META_DMEMBERS, protocol.encode_dynamo_members(records))
        if config.replicas:     # every partition it owns is pulled from its holders (docs/PARTITIONING.md)
            owned = Placement([m.node_id for m in members], config.replicas).owned_by(config.node_id)
            for p in owned:
                batch.put_cf("meta", META_MOVING + struct.pack(">H", p), b"")
            batch.put_cf("meta", META_PLACED, b"")
    else:
        batch.set_members(protocol.encode_members(seq, members))
    storage.commit(batch)
    log.info("--join: added by %s %d; members %s", "record counter" if config.mode == "dynamo" else "entry", seq,
             sorted(m.node_id for m in members))
