"""Settings from flags, INI or JSON files, with documented defaults and checked invariants.

Precedence: built-in defaults < config file < command-line flags. docs/CONFIG.md lists every
setting; the defaults below are the documented ones.
"""
import configparser
import dataclasses
import json
import ipaddress
import os
import socket
from typing import Optional

from .errors import ConfigError
from .protocol import MEMBERS_MAX

MODES = ("leader", "dynamo")
ROLES = ("primary", "secondary")

# [node] settings: who this node is. None means "derived" (see resolve()).
NODE_DEFAULTS = {
    "node_id": None,          # required: an integer from 1 to 2^32 - 1, unique in the cluster
    "host": "127.0.0.1",      # address the ROUTER and PUB sockets bind to, and the source address of outgoing links
    "port": 9000,             # client ROUTER port (client requests only)
    "pub_port": None,         # PUB port for the change stream (peer plane); default port + 1000
    "peer_port": None,        # peer ROUTER port (role queries, votes, acks, fetches); default port + 2000
    "role": None,             # primary|secondary: only bootstraps an empty leader-mode cluster
    "mode": "leader",         # leader|dynamo
    "data_dir": None,         # default ./data/node<node_id>; relative paths are relative to the working dir
    "log_level": "INFO",
    "log_format": "text",     # text: one line per event; json: one JSON object per line (docs/OPERATIONS.md)
    "restore": None,          # a backup file (datastore-cli backup) to seed a new data dir from (docs/OPERATIONS.md)
    "insecure": False,        # allow binding a non-loopback host without keys (docs/SECURITY.md)
    # CurveZMQ keys (docs/SECURITY.md); setting secret_key turns them on for every socket
    "secret_key": None,       # this node's NAME.key_secret (datastore-cli keygen)
    "node_keys": None,        # directory of every node's public key, node<ID>.key
    "client_keys": None,      # directory of public keys of read-write clients
    "readonly_keys": None,    # directory of public keys of read-only clients
    "join": None,             # host:port[,host:port...] of members to ask for admission (no peers needed)
    "metrics_port": None,     # HTTP port for /metrics, /healthz and /readyz (docs/OPERATIONS.md); unset: none
    "metrics_host": None,     # address the metrics port binds to; default host
    "max_data_bytes": None,   # space quota on the data dir: past it writes that add data get no_space; unset: none
    "min_free_bytes": 64 << 20,  # free space floor of the data dir's file system, likewise (docs/OPERATIONS.md)
}

# [cluster] settings: must agree on every node.
CLUSTER_DEFAULTS = {
    "election_interval": 0.5,     # seconds without a primary before an election; heartbeats every 1/5 of it
    "replication_timeout": 2.0,   # seconds a write may wait for its quorum before `replication_timeout`
    "write_quorum": None,         # leader: nodes (primary included) holding an entry before it commits, int or
                                  # majority (the default); dynamo: nodes holding a write before its ack (1)
    "read_quorum": 1,             # dynamo mode: replicas consulted per read
    "replicas": 0,                # dynamo mode: copies of each key (0: every member); fixed at creation
    "fsync": True,                # sync each group-commit batch to disk before acknowledging it
    "log_retention": 100_000,     # log entries kept for replication (and outcomes recovered at restart)
    "session_timeout": 60.0,      # seconds a silent client's write outcomes are kept for its retries
    "max_key_size": 1024,         # bytes
    "max_value_size": 1 << 20,    # bytes of the msgpack-encoded value
    "max_batch_items": 10_000,    # items in one put_many
    "max_request_size": 16 << 20,  # bytes of one message frame; larger frames drop the connection (ZMQ_MAXMSGSIZE)
    "client_output_limit": 64 << 20,  # bytes of replies a client connection may leave unread (docs/SECURITY.md)
    "max_connections": 1024,      # client connections a node accepts at once; more are refused at the handshake
    "max_connections_per_host": None,  # of those, from one address; default max_connections / 4
}

_INT_KEYS = {"node_id", "port", "pub_port", "peer_port", "read_quorum", "replicas", "log_retention", "max_key_size",
             "max_value_size", "max_batch_items", "max_request_size", "client_output_limit", "max_connections",
             "max_connections_per_host", "metrics_port", "max_data_bytes", "min_free_bytes"}
NODE_ID_END = 1 << 32     # node ids fit in 32 bits: a dynamo origin is node id << 32 | incarnation
_FLOAT_KEYS = {"election_interval", "replication_timeout", "session_timeout"}
_BOOL_KEYS = {"fsync", "insecure"}


@dataclasses.dataclass(frozen=True)
class Peer:
    node_id: int
    host: str
    port: int
    pub_port: int
    peer_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Config:
    node_id: int
    host: str
    port: int
    pub_port: int
    peer_port: int
    role: Optional[str]
    mode: str
    data_dir: str
    log_level: str
    insecure: bool
    secret_key: Optional[str]
    node_keys: Optional[str]
    client_keys: Optional[str]
    readonly_keys: Optional[str]
    election_interval: float
    replication_timeout: float
    write_quorum: int
    read_quorum: int
    fsync: bool
    log_retention: int
    session_timeout: float
    max_key_size: int
    max_value_size: int
    max_batch_items: int
    max_request_size: int
    client_output_limit: int
    max_connections: int
    max_connections_per_host: int
    peers: tuple = ()
    replicas: int = 0               # dynamo mode: copies of each key, 0 for every member (docs/PARTITIONING.md)
    majority_quorum: bool = False   # write_quorum is "majority" (the default): it follows the membership
    join: tuple = ()                # --join: client endpoints of members to ask for admission (docs/MEMBERSHIP.md)
    metrics_port: Optional[int] = None
    metrics_host: Optional[str] = None
    max_data_bytes: Optional[int] = None
    min_free_bytes: int = 64 << 20
    log_format: str = "text"
    restore: Optional[str] = None

    @property
    def heartbeat_interval(self) -> float:
        return self.election_interval / 5

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def keys(self) -> bool:
        """CurveZMQ on every socket (docs/SECURITY.md)."""
        return self.secret_key is not None


def host_addresses(host) -> frozenset:
    """The IP addresses `host` stands for (a name is resolved once, at start): what a connection from
    that host shows as its peer address."""
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, UnicodeError):
        return frozenset()


def is_loopback(host) -> bool:
    """True when every address `host` stands for is a loopback address (127.0.0.0/8, ::1)."""
    addresses = host_addresses(host)
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


# ---------------------------------------------------------------- reading sources

def load_file(path) -> dict:
    """A config file as {"node": {...}, "cluster": {...}, "peers": [Peer-like dicts]}; INI or JSON by content."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be an object with node, cluster and peers")
        unknown = set(raw) - {"node", "cluster", "peers"}
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; use node, cluster and peers")
        return {"node": raw.get("node", {}), "cluster": raw.get("cluster", {}), "peers": raw.get("peers", [])}
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: invalid INI: {exc}".replace("\n", " ")) from None
    unknown = set(parser.sections()) - {"node", "cluster", "peers"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; use [node], [cluster] and [peers]")
    peers = []
    if parser.has_section("peers"):
        for name, value in parser.items("peers"):
            peers.append(_parse_peer_line(path, name, value))
    return {
        "node": dict(parser.items("node")) if parser.has_section("node") else {},
        "cluster": dict(parser.items("cluster")) if parser.has_section("cluster") else {},
        "peers": peers,
    }


def _parse_peer_line(path, name, value):
    """INI peer line: `<node_id> = host:port`, `host:port:pub_port` or `host:port:pub_port:peer_port`."""
    parts = value.strip().split(":")
    if len(parts) not in (2, 3, 4):
        raise ConfigError(f"{path}: [peers] {name} = {value!r}: expected host:port, host:port:pub_port "
                          f"or host:port:pub_port:peer_port")
    peer = {"node_id": name, "host": parts[0], "port": parts[1]}
    for field, part in zip(("pub_port", "peer_port"), parts[2:]):
        peer[field] = part
    return peer


def parse_peers_json(text) -> list:
    try:
        peers = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--peers is not valid JSON: {exc}") from None
    if not isinstance(peers, list):
        raise ConfigError('--peers must be a JSON list like [{"node_id":2,"host":"127.0.0.1","port":9001}]')
    return peers


# ---------------------------------------------------------------- resolving and checking

def resolve(file_settings=None, flags=None) -> Config:
    """Merge defaults, a loaded file and flags (dict of setting -> value, None = not given); check all."""
    file_settings = file_settings or {"node": {}, "cluster": {}, "peers": []}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = {}
    for section, defaults in (("node", NODE_DEFAULTS), ("cluster", CLUSTER_DEFAULTS)):
        given = file_settings.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {section} must be a mapping of setting = value")
        unknown = set(given) - set(defaults)
        if unknown:
            raise ConfigError(f"unknown {section} setting(s) {sorted(unknown)}; known: {', '.join(defaults)}")
        for key, default in defaults.items():
            merged[key] = _convert(key, flags.get(key, given.get(key, default)))
    peers_raw = flags.get("peers", file_settings.get("peers") or [])
    merged["peers"] = tuple(_convert_peer(p) for p in peers_raw)
    return _check(merged)


def _convert(key, value):
    if value is None:
        return None
    try:
        if key in _INT_KEYS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT_KEYS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key in _BOOL_KEYS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if key == "write_quorum":
            if isinstance(value, bool):
                raise ValueError
            return "majority" if str(value).strip().lower() == "majority" else int(value)
    except (TypeError, ValueError):
        kind = "an integer" if key in _INT_KEYS else "a number" if key in _FLOAT_KEYS else \
            "true or false" if key in _BOOL_KEYS else "an integer or 'majority'"
        raise ConfigError(f"{key} = {value!r} is not {kind}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key} = {value!r} is not a string")
    return value.strip()


def _convert_peer(raw) -> Peer:
    if not isinstance(raw, dict):
        raise ConfigError(f"peer {raw!r} must be an object with node_id, host and port")
    unknown = set(raw) - {"node_id", "host", "port", "pub_port", "peer_port"}
    if unknown or not {"node_id", "host", "port"} <= set(raw):
        raise ConfigError(f"peer {raw!r} needs node_id, host and port (optional pub_port, peer_port) and "
                          f"nothing else")
    node_id = _convert("node_id", raw["node_id"])
    if not 1 <= node_id < NODE_ID_END:
        raise ConfigError(f"peer node_id = {node_id} must be an integer from 1 to {NODE_ID_END - 1}")
    port = _convert("port", raw["port"])
    pub_port = _convert("pub_port", raw.get("pub_port"))
    peer_port = _convert("peer_port", raw.get("peer_port"))
    host = raw["host"].strip() if isinstance(raw["host"], str) else ""
    if not host:
        raise ConfigError(f"peer {node_id}: host must be a non-empty string")
    _check_port(f"peer {node_id} port", port)
    pub_port = port + 1000 if pub_port is None else pub_port
    _check_port(f"peer {node_id} pub_port", pub_port)
    peer_port = port + 2000 if peer_port is None else peer_port
    _check_port(f"peer {node_id} peer_port", peer_port)
    return Peer(node_id, host, port, pub_port, peer_port)


def _check_port(name, port):
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} = {port} is not a TCP port (1-65535)")


def _check(s) -> Config:
    if s["node_id"] is None:
        raise ConfigError("node_id is required: pass --node-id N or set node_id in [node]")
    if not 1 <= s["node_id"] < NODE_ID_END:
        raise ConfigError(f"node_id = {s['node_id']} must be an integer from 1 to {NODE_ID_END - 1}")
    if s["mode"] not in MODES:
        raise ConfigError(f"mode = {s['mode']!r}; use one of {', '.join(MODES)}")
    if s["role"] is not None and s["role"] not in ROLES:
        raise ConfigError(f"role = {s['role']!r}; use one of {', '.join(ROLES)}")
    if s["log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level = {s['log_level']!r}; use DEBUG, INFO, WARNING or ERROR")
    s["log_level"] = s["log_level"].upper()
    s["log_format"] = s["log_format"].lower()
    if s["log_format"] not in ("text", "json"):
        raise ConfigError(f"log_format = {s['log_format']!r}; use text or json")
    if not s["host"]:
        raise ConfigError("host is empty")
    _check_port("port", s["port"])
    if s["pub_port"] is None:
        s["pub_port"] = s["port"] + 1000
    _check_port("pub_port", s["pub_port"])
    if s["pub_port"] == s["port"]:
        raise ConfigError(f"pub_port equals port ({s['port']}); give --pub-port another port")
    if s["peer_port"] is None:
        s["peer_port"] = s["port"] + 2000
    _check_port("peer_port", s["peer_port"])
    if s["peer_port"] in (s["port"], s["pub_port"]):
        raise ConfigError(f"peer_port {s['peer_port']} equals port or pub_port; give --peer-port another port")
    if s["metrics_port"] is not None:
        _check_port("metrics_port", s["metrics_port"])
        s["metrics_host"] = s["metrics_host"] or s["host"]
        if s["metrics_host"] == s["host"] and s["metrics_port"] in (s["port"], s["pub_port"], s["peer_port"]):
            raise ConfigError(f"metrics_port {s['metrics_port']} equals port, pub_port or peer_port; "
                              f"give --metrics-port another port")
    if s["restore"] and s["join"]:
        raise ConfigError("restore seeds a new cluster's nodes; join adds a node to a running cluster (it "
                          "takes the data from the members): use one or the other")
    if s["max_data_bytes"] is not None and s["max_data_bytes"] < 1 << 20:
        raise ConfigError(f"max_data_bytes = {s['max_data_bytes']} is under 1 MiB; RocksDB alone needs more")
    if s["min_free_bytes"] is None or s["min_free_bytes"] < 0:
        raise ConfigError(f"min_free_bytes = {s['min_free_bytes']} must be 0 or more bytes")
    for key in ("secret_key", "node_keys", "client_keys", "readonly_keys"):
        if s[key] == "":
            s[key] = None
    if s["secret_key"] is None and any(s[k] for k in ("node_keys", "client_keys", "readonly_keys")):
        raise ConfigError("node_keys, client_keys and readonly_keys need secret_key, this node's key "
                          "(datastore-cli keygen node<ID>)")
    if s["secret_key"] is not None and s["node_keys"] is None:
        raise ConfigError("secret_key needs node_keys, the directory of every node's public key (node<ID>.key)")
    if s["secret_key"] is None and not s["insecure"] and not is_loopback(s["host"]):
        raise ConfigError(f"host {s['host']} is not a loopback address and no keys are configured: anyone who "
                          f"can reach it could read and change data; pass --insecure to run without keys "
                          f"anyway (docs/SECURITY.md)")
    if s["data_dir"] is None:
        s["data_dir"] = os.path.join("data", f"node{s['node_id']}")
    _check_peers(s)
    s["join"] = tuple(e.strip() for e in (s["join"] or "").split(",") if e.strip())
    for endpoint in s["join"]:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"join endpoint {endpoint!r} is not host:port")
    if s["join"] and s["peers"]:
        raise ConfigError("give --join (the cluster tells a joining node its peers) or --peers, not both")
    n = 1 + len(s["peers"])
    if not 0.05 <= s["election_interval"] <= 60:
        raise ConfigError(f"election_interval = {s['election_interval']} s; use 0.05 to 60 seconds")
    if not 0 < s["replication_timeout"] <= 600:
        raise ConfigError(f"replication_timeout = {s['replication_timeout']} s; use more than 0 and at most 600")
    if s["replication_timeout"] < s["election_interval"] / 5:
        raise ConfigError(f"replication_timeout ({s['replication_timeout']} s) is shorter than one heartbeat "
                          f"(election_interval / 5 = {s['election_interval'] / 5} s); raise it")
    if s["write_quorum"] is None:
        s["write_quorum"] = 1 if s["mode"] == "dynamo" else "majority"
    s["majority_quorum"] = s["write_quorum"] == "majority"
    if s["write_quorum"] == "majority":
        s["write_quorum"] = n // 2 + 1
    # A joining node learns its cluster's size only once admitted: its quorums are checked then.
    top = MEMBERS_MAX if s["join"] else n
    if not 1 <= s["write_quorum"] <= top:
        raise ConfigError(f"write_quorum = {s['write_quorum']} must be 1..{n} (cluster of {n}) or 'majority'")
    if not 1 <= s["read_quorum"] <= top:
        raise ConfigError(f"read_quorum = {s['read_quorum']} must be 1..{n} (cluster of {n})")
    if not 0 <= s["replicas"] <= MEMBERS_MAX:
        raise ConfigError(f"replicas = {s['replicas']} must be 0 (every member holds every key) to {MEMBERS_MAX}")
    for key in ("write_quorum", "read_quorum"):
        if s["replicas"] and s[key] > s["replicas"]:
            raise ConfigError(f"{key} = {s[key]} exceeds replicas = {s['replicas']}: a key is held by {s['replicas']} "
                              f"nodes")
    if s["replicas"] and s["mode"] != "dynamo":
        raise ConfigError(f"replicas = {s['replicas']} is a dynamo-mode setting; in leader mode every member "
                          f"holds every key")
    if not 1 <= s["session_timeout"] <= 86400:
        raise ConfigError(f"session_timeout = {s['session_timeout']} s; use 1 to 86400 seconds")
    if s["log_retention"] < 1:
        raise ConfigError(f"log_retention = {s['log_retention']} must be at least 1")
    if not 1 <= s["max_key_size"] <= 65536:
        raise ConfigError(f"max_key_size = {s['max_key_size']} must be 1..65536 bytes")
    if not 1 <= s["max_value_size"] <= 64 << 20:
        raise ConfigError(f"max_value_size = {s['max_value_size']} must be 1..{64 << 20} bytes")
    if not 1 <= s["max_batch_items"] <= 1_000_000:
        raise ConfigError(f"max_batch_items = {s['max_batch_items']} must be 1..1000000")
    floor = s["max_key_size"] + s["max_value_size"] + 4096
    if s["max_request_size"] < floor:
        raise ConfigError(f"max_request_size = {s['max_request_size']} must be at least max_key_size + "
                          f"max_value_size + 4096 = {floor}")
    largest_reply = max(s["max_value_size"], 1 << 20) + (64 << 10)
    if s["client_output_limit"] < 2 * largest_reply:
        raise ConfigError(f"client_output_limit = {s['client_output_limit']} must be at least twice the largest "
                          f"reply ({2 * largest_reply} bytes with max_value_size = {s['max_value_size']})")
    if not 1 <= s["max_connections"] <= 1_000_000:
        raise ConfigError(f"max_connections = {s['max_connections']} must be 1..1000000")
    if s["max_connections_per_host"] is None:
        s["max_connections_per_host"] = max(1, s["max_connections"] // 4)
    if not 1 <= s["max_connections_per_host"] <= s["max_connections"]:
        raise ConfigError(f"max_connections_per_host = {s['max_connections_per_host']} must be 1..max_connections "
                          f"({s['max_connections']})")
    return Config(**s)


def _check_peers(s):
    seen_ids = {s["node_id"]}
    own = {(s["host"], s["port"]), (s["host"], s["pub_port"]), (s["host"], s["peer_port"])}
    seen_addrs = set(own)
    for peer in s["peers"]:
        if peer.node_id in seen_ids:
            what = "this node's own id" if peer.node_id == s["node_id"] else "listed twice"
            raise ConfigError(f"peer node_id {peer.node_id} is {what}; node ids must be unique")
        seen_ids.add(peer.node_id)
        for port in (peer.port, peer.pub_port, peer.peer_port):
            if (peer.host, port) in seen_addrs:
                raise ConfigError(f"peer {peer.node_id} uses {peer.host}:{port}, which another node already uses")
            seen_addrs.add((peer.host, port))
