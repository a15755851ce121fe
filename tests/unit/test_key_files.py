"""Key files (zmqstore/keys.py) and the ZAP decisions built on them (trust.Gatekeeper), without a node."""
import os
import shutil
import stat

import pytest
import zmq
from zmq.utils import z85

from zmqstore import config, keys, protocol, trust
from zmqstore.errors import ConfigError


@pytest.fixture
def key_dirs(tmp_path):
    secret, nodes, clients = tmp_path / "secret", tmp_path / "nodes", tmp_path / "clients"
    for d in (nodes, clients):
        d.mkdir()
    for name, public_dir in (("node1", nodes), ("node2", nodes), ("app", clients)):
        public, _ = keys.keygen(secret, name)
        shutil.copy(public, public_dir)
    return secret, nodes, clients


def settings(secret, nodes, clients, **extra):
    return config.resolve(None, {"node_id": 1, "secret_key": str(secret / "node1.key_secret"),
                                 "node_keys": str(nodes), "client_keys": str(clients),
                                 "peers": [{"node_id": 2, "host": "127.0.0.2", "port": 9001}], **extra})


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    public, secret = keys.keygen(tmp_path / "k", "node7")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert keys.load_pair(secret).public == keys.load_pair(public.replace(".key", ".key_secret")).public
    with pytest.raises(ConfigError, match="exists"):
        keys.keygen(tmp_path / "k", "node7")
    with pytest.raises(ConfigError, match="no secret key"):
        keys.load_pair(public)


def test_a_node_checks_its_keys_at_start(key_dirs, tmp_path):
    secret, nodes, clients = key_dirs
    sec = keys.load_node_security(settings(secret, nodes, clients))
    assert set(sec.nodes) == {1, 2} and set(sec.clients.values()) == {keys.READ_WRITE}
    with pytest.raises(ConfigError, match=r"node1.key \(or, while the key is rotated, node1.<LABEL>.key\), the public half"):
        keys.load_node_security(settings(secret, nodes, clients, secret_key=str(secret / "app.key_secret")))
    os.remove(nodes / "node2.key")
    with pytest.raises(ConfigError, match=r"no key for peer\(s\) \[2\]"):
        keys.load_node_security(settings(secret, nodes, clients))
    shutil.copy(secret / "node2.key", nodes)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no client can connect"):
        keys.load_node_security(settings(secret, nodes, empty))


def test_a_node_being_rotated_has_two_keys(key_dirs):
    """node<ID>.<LABEL>.key is a second key of node ID (docs/SECURITY.md, rotation): node<ID>.key
    comes first whatever the label, a node may start with either, and the ZAP handler names either
    as that node. A third key, one key file under two nodes' names, a key that is also a client's,
    and a truncated key file are refused."""
    secret, nodes, clients = key_dirs
    public, _ = keys.keygen(secret, "node2.a")
    shutil.copy(public, nodes)
    found = keys.load_node_keys(nodes)
    assert found[2] == (keys.load_pair(secret / "node2.key_secret").public,
                        keys.load_pair(secret / "node2.a.key_secret").public)
    cfg = settings(secret, nodes, clients)
    ctx = zmq.Context()
    try:
        gate = trust.Gatekeeper(ctx, cfg.peers, 10, 5, keys.load_node_security(cfg))
        try:
            for key in found[2]:
                assert gate._decide(zap_request(trust.PEER_DOMAIN, "127.0.0.2", key))[2:5] == [b"200", b"OK", b"node-2"]
        finally:
            gate.close()
    finally:
        ctx.term()
    public, _ = keys.keygen(secret, "node1.next")
    shutil.copy(public, nodes)
    assert keys.load_node_security(settings(secret, nodes, clients, secret_key=str(secret / "node1.next.key_secret")))
    public, _ = keys.keygen(secret, "node2.next")
    shutil.copy(public, nodes)
    with pytest.raises(ConfigError, match="node 2 has more than 2 keys"):
        keys.load_node_keys(nodes)
    os.remove(nodes / "node2.next.key")
    shutil.copy(nodes / "node2.a.key", clients / "stolen.key")
    with pytest.raises(ConfigError, match="both a node's"):
        keys.load_node_security(settings(secret, nodes, clients))
    os.remove(clients / "stolen.key")
    text = (nodes / "node2.a.key").read_text()
    (nodes / "node2.a.key").write_text(text[:text.index("public-key") + 30])      # a half-copied file
    with pytest.raises(ConfigError, match="cannot read the public key"):
        keys.load_node_keys(nodes)
    os.remove(nodes / "node2.a.key")
    shutil.copy(nodes / "node2.key", nodes / "node3.key")
    with pytest.raises(ConfigError, match="holds the key of node 2 too"):
        keys.load_node_keys(nodes)


def zap_request(domain, address, key=None):
    mechanism, creds = (b"CURVE", [z85.decode(key)]) if key is not None else (b"NULL", [])
    return [b"1.0", b"7", domain, address.encode(), b"", mechanism, *creds]


def test_zap_decisions_with_and_without_keys(key_dirs):
    secret, nodes, clients = key_dirs
    cfg = settings(secret, nodes, clients)
    sec = keys.load_node_security(cfg)
    ctx = zmq.Context()
    try:
        with_keys = trust.Gatekeeper(ctx, cfg.peers, 10, 5, sec)
        try:
            decide = with_keys._decide
            (peer2,), (own,), app = sec.nodes[2], sec.nodes[1], keys.load_pair(secret / "app.key_secret").public
            assert decide(zap_request(trust.PEER_DOMAIN, "127.0.0.9", peer2))[2:5] == [b"200", b"OK", b"node-2"]
            assert decide(zap_request(trust.PEER_DOMAIN, "127.0.0.2", own))[2] == b"400"    # not a peer's key
            assert decide(zap_request(trust.PEER_DOMAIN, "127.0.0.2", app))[2] == b"400"
            assert decide(zap_request(trust.PEER_DOMAIN, "127.0.0.2"))[2] == b"400"         # NULL: keys required
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.1", app))[2:5] == [b"200", b"OK", b"rw"]
            # A member's node key on the client port: admitted as that node, which may only ask to join.
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.7", peer2))[2:5] == [b"200", b"OK", b"node-2"]
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.7", own))[2] == b"400"    # not a member's
            join, put = (protocol.decode_request(protocol.encode_request(*r)) for r in (
                ("ADD_MEMBER", b"c", 1, 1, 2, "127.0.0.3", 9001, None, None, None),
                ("PUT", b"c", 2, 2, b"k", protocol.pack_value(1))))
            assert trust.Gatekeeper.node_may("node-2", join) and not trust.Gatekeeper.node_may("node-3", join)
            assert not trust.Gatekeeper.node_may("node-2", put) and trust.Gatekeeper.node_may("rw", put)
            assert decide([b"1.0"])[2] == b"400"                                            # malformed
            for _ in range(3):                       # 1 admitted above; per-host cap 5
                decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.1", app))
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.1", app))[2] == b"200"  # the 5th
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.1", app))[3].startswith(b"max_connections_per")
            assert decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.3", app))[2] == b"200"  # another host
        finally:
            with_keys.close()
        # A new context: the first handler's inproc endpoint is released asynchronously after its
        # close, so binding it again at once may find it still taken on a loaded machine.
        other = zmq.Context()
        try:
            without = trust.Gatekeeper(other, cfg.peers, 10, 5)
            try:
                assert without._decide(zap_request(trust.PEER_DOMAIN, "127.0.0.2"))[2] == b"200"
                assert without._decide(zap_request(trust.PEER_DOMAIN, "127.0.0.9"))[2] == b"400"
                assert without._decide(zap_request(trust.CLIENT_DOMAIN, "127.0.0.9"))[2] == b"200"
            finally:
                without.close()
        finally:
            other.destroy(linger=0)
    finally:
        ctx.destroy(linger=0)
