"""Settings from INI, JSON and flags; every invariant refuses a bad value with a message."""
import json
import pathlib

import pytest

from zmqstore.config import load_file, parse_peers_json, resolve
from zmqstore.errors import ConfigError

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf"


def test_single_ini():
    cfg = resolve(load_file(CONF / "single.ini"))
    assert (cfg.node_id, cfg.port, cfg.pub_port, cfg.mode, cfg.fsync) == (1, 9000, 10000, "leader", True)
    assert cfg.peers == () and cfg.write_quorum == 1 and cfg.data_dir == "data/single"


@pytest.mark.parametrize("node_id", [1, 2, 3])
def test_leader_ini_and_json_agree(node_id):
    ini = resolve(load_file(CONF / "leader" / f"node{node_id}.ini"))
    js = resolve(load_file(CONF / "leader" / f"node{node_id}.json"))
    assert ini == js
    assert len(ini.peers) == 2 and ini.write_quorum == 2 and ini.election_interval == 0.5
    assert {p.node_id for p in ini.peers} == {1, 2, 3} - {node_id}


@pytest.mark.parametrize("node_id", [1, 2])
def test_dynamo_ini_and_json_agree(node_id):
    ini = resolve(load_file(CONF / "dynamo" / f"node{node_id}.ini"))
    assert ini == resolve(load_file(CONF / "dynamo" / f"node{node_id}.json"))
    assert ini.mode == "dynamo" and len(ini.peers) == 1


def test_flags_override_file():
    cfg = resolve(load_file(CONF / "single.ini"), {"port": "9100", "election_interval": "1.5", "host": None})
    assert cfg.port == 9100 and cfg.pub_port == 10100 and cfg.election_interval == 1.5 and cfg.host == "127.0.0.1"


def test_peers_json_flag():
    peers = parse_peers_json('[{"node_id":2,"host":"127.0.0.1","port":9001}]')
    cfg = resolve(None, {"node_id": 1, "peers": peers})
    assert cfg.peers[0].address == "127.0.0.1:9001" and cfg.peers[0].pub_port == 10001
    assert cfg.heartbeat_interval == pytest.approx(0.1)


BAD = [
    ({}, "node_id is required"),
    ({"node_id": 0}, "from 1 to 4294967295"),
    ({"node_id": 1 << 32}, "from 1 to 4294967295"),
    ({"node_id": 1, "peers": [{"node_id": 1 << 32, "host": "h", "port": 1}]}, "peer node_id"),
    ({"node_id": "x"}, "not an integer"),
    ({"node_id": 1, "mode": "raft"}, "mode"),
    ({"node_id": 1, "role": "boss"}, "role"),
    ({"node_id": 1, "port": 70000}, "TCP port"),
    ({"node_id": 1, "port": 9000, "pub_port": 9000}, "pub_port equals port"),
    ({"node_id": 1, "election_interval": 0}, "election_interval"),
    ({"node_id": 1, "election_interval": "fast"}, "not a number"),
    ({"node_id": 1, "replication_timeout": 0.01}, "replication_timeout"),
    ({"node_id": 1, "write_quorum": 2}, "write_quorum"),
    ({"node_id": 1, "fsync": "maybe"}, "true or false"),
    ({"node_id": 1, "max_value_size": 1 << 30}, "max_value_size"),
    ({"node_id": 1, "max_request_size": 10}, "max_request_size"),
    ({"node_id": 1, "log_level": "LOUD"}, "log_level"),
    ({"node_id": 1, "peers": [{"node_id": 1, "host": "h", "port": 1}]}, "own id"),
    ({"node_id": 1, "peers": [{"node_id": 2, "host": "h", "port": 1}, {"node_id": 2, "host": "h", "port": 2}]},
     "listed twice"),
    ({"node_id": 1, "peers": [{"node_id": 2, "host": "127.0.0.1", "port": 9000}]}, "already uses"),
    ({"node_id": 1, "peers": [{"node_id": 2, "host": "h"}]}, "needs node_id, host and port"),
    ({"node_id": 1, "peers": ["h:1"]}, "must be an object"),
    ({"node_id": 1, "log_level": 5}, "not a string"),
    ({"node_id": 1, "data_dir": 5}, "not a string"),
    ({"node_id": 1, "host": ["a"]}, "not a string"),
    ({"node_id": 1, "write_quorum": True}, "write_quorum"),
    ({"node_id": 1, "session_timeout": 0}, "session_timeout"),
    ({"node_id": 1, "peers": [{"node_id": 2, "host": 7, "port": 1}]}, "non-empty string"),
    ({"node_id": 1, "port": 9000, "peer_port": 10000}, "peer_port 10000 equals port or pub_port"),
    ({"node_id": 1, "peers": [{"node_id": 2, "host": "127.0.0.1", "port": 9001, "peer_port": 11000}]},
     "already uses"),                                                  # this node's own peer port
    ({"node_id": 1, "host": "10.1.2.3"}, "not a loopback address and no keys"),
    ({"node_id": 1, "host": "0.0.0.0"}, "pass --insecure"),
    ({"node_id": 1, "node_keys": "k"}, "need secret_key"),
    ({"node_id": 1, "secret_key": "k"}, "needs node_keys"),
    ({"node_id": 1, "client_output_limit": 1 << 20}, "client_output_limit"),
    ({"node_id": 1, "max_connections": 0}, "max_connections"),
    ({"node_id": 1, "max_connections": 10, "max_connections_per_host": 11}, "max_connections_per_host"),
]


def test_peer_ports_and_protected_mode():
    cfg = resolve(None, {"node_id": 1, "port": 9100, "peers": [{"node_id": 2, "host": "127.0.0.2", "port": 9001}]})
    assert cfg.peer_port == 11100 and cfg.peers[0].peer_port == 11001 and not cfg.keys
    assert cfg.max_connections_per_host == cfg.max_connections // 4
    assert resolve(None, {"node_id": 1, "host": "10.1.2.3", "insecure": True}).host == "10.1.2.3"
    assert resolve(None, {"node_id": 1, "host": "10.1.2.3", "secret_key": "s", "node_keys": "k"}).keys


@pytest.mark.parametrize("flags,message", BAD)
def test_bad_settings_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, flags)


def test_unknown_keys_and_sections(tmp_path):
    f = tmp_path / "a.ini"
    f.write_text("[node]\nnode_id = 1\ncolour = blue\n")
    with pytest.raises(ConfigError, match="unknown node setting"):
        resolve(load_file(f))
    f.write_text("[nodes]\nnode_id = 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_file(f)
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"node": {"node_id": 1}, "cluster": {"fsnyc": True}}))
    with pytest.raises(ConfigError, match="unknown cluster setting"):
        resolve(load_file(j))
    j.write_text("{broken")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_file(j)
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.ini")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_peers_json("[{")


def test_ini_peer_lines(tmp_path):
    f = tmp_path / "p.ini"
    f.write_text("[node]\nnode_id = 1\n[peers]\n2 = 10.0.0.2:9001:9501\n")
    assert resolve(load_file(f)).peers[0].pub_port == 9501
    f.write_text("[node]\nnode_id = 1\n[peers]\n2 = 10.0.0.2:9001:9501:9601\n")
    assert resolve(load_file(f)).peers[0].peer_port == 9601
    f.write_text("[node]\nnode_id = 1\n[peers]\n2 = nonsense\n")
    with pytest.raises(ConfigError, match="host:port"):
        load_file(f)


def test_metrics_port_and_host():
    cfg = resolve(flags={"node_id": 1, "metrics_port": 9100})
    assert cfg.metrics_port == 9100 and cfg.metrics_host == cfg.host
    assert resolve(flags={"node_id": 1}).metrics_port is None
    assert resolve(flags={"node_id": 1, "metrics_port": 9100, "metrics_host": "0.0.0.0"}).metrics_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="metrics_port 9000 equals port"):
        resolve(flags={"node_id": 1, "metrics_port": 9000})
    with pytest.raises(ConfigError, match="metrics_port"):
        resolve(flags={"node_id": 1, "metrics_port": 70000})


def test_ini_inline_comments_and_the_systemd_example(tmp_path):
    """`key = value   ; comment` as docs/CONFIG.md shows it, and conf/systemd/node1.ini as shipped."""
    path = tmp_path / "c.ini"
    path.write_text("[node]\nnode_id = 4 ; this node\nport = 9100\ndata_dir = /srv/node #1\n[peers]\n"
                    "5 = 127.0.0.1:9101          ; node_id = host:port\n")
    cfg = resolve(load_file(str(path)))
    assert (cfg.node_id, cfg.port, cfg.peers[0].port) == (4, 9100, 9101)
    assert cfg.data_dir == "/srv/node #1"         # only ";" starts a comment after a value
    shipped = resolve(load_file(str(CONF / "systemd" / "node1.ini")))
    assert shipped.host == "10.0.0.1" and shipped.min_free_bytes == 1 << 30 and len(shipped.peers) == 2
