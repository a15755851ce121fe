"""Fixtures the leader-mode unit tests share."""
import pytest

from zmqstore import config
from zmqstore.leader import Engine
from zmqstore.storage import Storage

PEERS = [{"node_id": n, "host": "127.0.0.1", "port": 9000 + n} for n in (1, 2, 3)]


@pytest.fixture
def make(tmp_path):
    opened = []

    def make_engine(node_id, peers=PEERS, **settings):
        cfg = config.resolve(None, {"node_id": node_id, "port": 9200 + node_id, "data_dir": str(tmp_path / f"n{node_id}"),
                                    "peers": [p for p in peers if p["node_id"] != node_id], **settings})
        st = Storage.open(cfg.data_dir, node_id, "leader")
        opened.append(st)
        return Engine(st, cfg, "test"), cfg
    yield make_engine
    for st in opened:
        st.close()
