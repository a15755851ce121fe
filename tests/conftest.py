import pytest

from zmqstore.testing.process import NodeProcess


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def print_logs_if_failed(request, logs):
    """Node logs go to the test report when the test itself failed."""
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for text in logs:
            print(text)


@pytest.fixture
def nodes(request, tmp_path):
    """Factory for real node processes; every one is stopped at teardown, and their logs are printed
    when the test failed."""
    started = []

    def start(node_id=1, args=(), wait=True, **kwargs):
        data_dir = kwargs.pop("data_dir", tmp_path / f"node{node_id}")
        node = NodeProcess(node_id, data_dir, tmp_path / f"node{node_id}.log", args=args, **kwargs)
        started.append(node)
        node.start(wait=wait)
        return node

    yield start
    for node in started:
        node.stop()
    print_logs_if_failed(request, [f"----- log of node {n.node_id} ({n.log_path}) -----\n{n.log()[-20000:]}"
                                   for n in started])


@pytest.fixture
def node(nodes):
    """One standalone node with fsync on."""
    return nodes()


@pytest.fixture
def cluster(request, tmp_path):
    """Factory for a leader-mode cluster of real processes on 127.0.0.2...; all stopped at teardown,
    logs printed when the test failed."""
    from zmqstore.testing.process import Cluster
    made = []

    def make(size=3, args=(), env=None, start=True, bootstrap=(1,), mode="leader", keys=None, metrics=False):
        """keys: True/False for a cluster with/without CurveZMQ keys; None: ZMQSTORE_TEST_KEYS decides.
        metrics: every node serves /metrics (NodeProcess.http_get)."""
        c = Cluster(tmp_path / f"c{len(made)}" if made else tmp_path, size=size, args=args, env=env,
                    bootstrap=bootstrap, mode=mode, keys=keys, metrics=metrics)
        made.append(c)
        if start:
            c.start_all()
        return c

    yield make
    for c in made:
        c.stop_all()
    print_logs_if_failed(request, [c.logs() for c in made])
