"""CurveZMQ key files (docs/SECURITY.md): ZeroMQ's certificate format, written and read by `zmq.auth`.

A node's key pair is `NAME.key` (public) and `NAME.key_secret` (secret, 0600). The node key
directory holds every node's public certificate as `node<ID>.key`: the file name binds the key to
the node id. While a node's key is rotated, the directory also holds its next key as
`node<ID>.<LABEL>.key` (e.g. node2.next.key): either key is then that node's, and whoever connects
to it tries both at once (docs/SECURITY.md). At most two keys per node. Client allow lists are directories of public certificates (any names): read-write
(`client_keys`) and read-only (`readonly_keys`).
"""
import logging
import os
import re
from typing import NamedTuple, Optional

import zmq.auth
from zmq.utils import z85

from .errors import BadArgument, ConfigError

log = logging.getLogger(__name__)

MAX_KEYS_PER_NODE = 2       # its key and, while that is rotated, the next one
NODE_KEY_FILE = re.compile(r"^node(\d+)(\.[A-Za-z0-9_-]+)?\.key$")
READ_WRITE, READ_ONLY = "rw", "ro"


class KeyPair(NamedTuple):
    public: bytes       # Z85, 40 bytes
    secret: bytes


class NodeSecurity(NamedTuple):
    """What a node with keys needs: its own pair, every node's public key, the client allow lists."""
    own: KeyPair
    nodes: dict             # node id -> its public keys (Z85), node<ID>.key first
    clients: dict           # public key (Z85) -> READ_WRITE or READ_ONLY


class ClientKeys(NamedTuple):
    """What a client with keys needs: its own pair and the nodes' public keys, to follow a redirect."""
    own: KeyPair
    nodes: dict             # node id -> its public keys (Z85), node<ID>.key first


def keygen(directory, name) -> tuple:
    """Write NAME.key and NAME.key_secret (0600) into `directory`; returns their paths."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if os.path.exists(os.path.join(directory, name + suffix)):
            raise ConfigError(f"{os.path.join(directory, name + suffix)} exists; remove it or choose another name")
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    return public, secret


def load_pair(path) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the secret key {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key: give the .key_secret file keygen wrote")
    return KeyPair(public, secret)


def load_node_keys(directory) -> dict:
    """{node id: (public key, ...)} from the node<ID>.key and node<ID>.<LABEL>.key files of
    `directory`: node<ID>.key first, then the labelled ones by name. A key may belong to one node only."""
    if not os.path.isdir(directory):
        raise ConfigError(f"node_keys {directory} is not a directory")
    keys, owner = {}, {}
    # Sorted on (id, labelled, name): node2.key comes before node2.a.key whatever the labels.
    found = []
    for name in os.listdir(directory):
        match = NODE_KEY_FILE.match(name)
        if match:
            found.append((int(match.group(1)), match.group(2) is not None, name))
    for node_id, _labelled, name in sorted(found):
        public = _public(os.path.join(directory, name))
        if owner.setdefault(public, node_id) != node_id:
            raise ConfigError(f"node_keys {directory}: {name} holds the key of node {owner[public]} too; "
                              f"each node needs its own key pair")
        if public not in keys.get(node_id, ()):
            keys[node_id] = keys.get(node_id, ()) + (public,)
        if len(keys[node_id]) > MAX_KEYS_PER_NODE:
            raise ConfigError(f"node_keys {directory}: node {node_id} has more than {MAX_KEYS_PER_NODE} keys "
                              f"(node{node_id}.key and one node{node_id}.<LABEL>.key while it is rotated); "
                              f"delete the retired one")
    return keys


def load_allow_list(directory, what) -> set:
    """The public keys of every .key file in `directory`."""
    if not os.path.isdir(directory):
        raise ConfigError(f"{what} {directory} is not a directory")
    return {_public(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
            if name.endswith(".key")}


def load_public(path) -> bytes:
    """A public key file (NAME.key) -> its key, Z85 (ConfigError when it is not one)."""
    return _public(path)


def _public(path) -> bytes:
    try:
        public, _secret = zmq.auth.load_certificate(path)
        if len(public) != 40 or len(z85.decode(public)) != 32:    # a truncated or half-copied file
            raise ValueError("not a 40-character Z85 CurveZMQ public key")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc}") from None
    return public


def check_public(key: str) -> bytes:
    """A public key (Z85 text) given in a request -> bytes; BadArgument unless it is one."""
    try:
        raw = key.encode("ascii")
        if len(raw) != 40 or len(z85.decode(raw)) != 32:
            raise ValueError
    except (ValueError, UnicodeError, TypeError):
        raise BadArgument("key must be a 40-character Z85 CurveZMQ public key (the first line of NAME.key "
                          "after public-key = )") from None
    return raw


def load_node_security(config) -> Optional[NodeSecurity]:
    """The node's keys when `secret_key` is set (None: no keys), checked: the node's own key is
    node<ID>.key in node_keys, every peer has one, and some client may connect."""
    if config.secret_key is None:
        return None
    own = load_pair(config.secret_key)
    nodes = load_node_keys(config.node_keys)
    if own.public not in nodes.get(config.node_id, ()):
        raise ConfigError(f"node_keys {config.node_keys} must hold node{config.node_id}.key (or, while the key is "
                          f"rotated, node{config.node_id}.<LABEL>.key), the public half of secret_key "
                          f"{config.secret_key}")
    missing = [p.node_id for p in config.peers if p.node_id not in nodes]
    if missing:
        raise ConfigError(f"node_keys {config.node_keys} has no key for peer(s) {missing} "
                          f"(node<ID>.key files; datastore-cli keygen nodeID)")
    clients = {}
    if config.readonly_keys:
        clients.update(dict.fromkeys(load_allow_list(config.readonly_keys, "readonly_keys"), READ_ONLY))
    if config.client_keys:
        clients.update(dict.fromkeys(load_allow_list(config.client_keys, "client_keys"), READ_WRITE))
    if {key for node_keys in nodes.values() for key in node_keys} & set(clients):
        raise ConfigError("a key is both a node's (node_keys) and a client's (client_keys or readonly_keys): "
                          "each must have its own key pair")
    for node_id, node_keys in nodes.items():
        if len(node_keys) > 1:
            log.warning("node %d has two keys while its key is rotated (docs/SECURITY.md): %s", node_id,
                        ", ".join(k.decode() for k in node_keys))
    if not clients:
        raise ConfigError("with keys, client_keys or readonly_keys must name a directory holding client "
                          "public keys (datastore-cli keygen NAME); otherwise no client can connect")
    return NodeSecurity(own, nodes, clients)


def load_client_keys(secret_key, node_keys) -> ClientKeys:
    return ClientKeys(load_pair(secret_key), load_node_keys(node_keys))
