"""A node refuses bad start-up conditions: exit status 2 and one line saying what to fix."""
import pytest

from zmqstore.testing.process import free_port, run_node_command


def own_ports():
    """Three free ports: port + 1000 and port + 2000 (the defaults) may be taken on a shared machine,
    and a node refused for a port in use would not show the refusal a test checks (seen once in CI)."""
    return ["--port", str(free_port()), "--pub-port", str(free_port()), "--peer-port", str(free_port())]


def refused(args):
    code, out = run_node_command(args)
    lines = out.strip().splitlines()
    assert code == 2, out
    assert len(lines) == 1, f"expected one line, got:\n{out}"
    return lines[0]


@pytest.mark.parametrize("args,fragment", [
    ([], "node_id is required"),
    (["--node-id", "1", "--election-interval", "fast"], "election_interval"),
    (["--node-id", "1", "--mode", "paxos"], "mode"),
    (["--node-id", "1", "--port", "0"], "TCP port"),
    (["--node-id", "1", "--peers", "[{"], "--peers is not valid JSON"),
    (["--node-id", "1", "--peers", '[{"node_id":1,"host":"127.0.0.1","port":9001}]'], "unique"),
    (["--node-id", "1", "--config", "/no/such/file.ini"], "cannot read config file"),
])
def test_bad_settings(args, fragment, tmp_path):
    assert fragment in refused([*args, "--data-dir", str(tmp_path / "d")])


def test_unknown_setting_in_file(tmp_path):
    conf = tmp_path / "c.ini"
    conf.write_text("[node]\nnode_id = 1\n[cluster]\nfsnyc = false\n")
    assert "unknown cluster setting" in refused(["--config", str(conf)])


def test_port_in_use(nodes, tmp_path):
    first = nodes()
    line = refused(["--node-id", "2", "--port", str(first.port), "--data-dir", str(tmp_path / "other")])
    assert "already in use" in line and str(first.port) in line
    line = refused(["--node-id", "2", "--port", str(free_port()), "--pub-port", str(first.pub_port),
                    "--peer-port", str(free_port()), "--data-dir", str(tmp_path / "other")])
    assert "pub_port" in line and "already in use" in line


def test_data_dir_of_another_node(nodes, tmp_path):
    n = nodes(node_id=1)
    n.stop()
    line = refused(["--node-id", "2", *own_ports(), "--data-dir", n.data_dir])
    assert "belongs to node 1" in line
    line = refused(["--node-id", "1", "--mode", "dynamo", *own_ports(), "--data-dir", n.data_dir])
    assert "leader mode" in line


def test_data_dir_in_use(nodes):
    n = nodes()
    line = refused(["--node-id", "1", *own_ports(),
                    "--data-dir", n.data_dir])
    assert "in use" in line


def test_foreign_and_missing_data_dirs(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not written by zmqstore" in refused(["--node-id", "1", *own_ports(),
                                                 "--data-dir", str(foreign)])
    assert (foreign / "notes.txt").read_text() == "mine"
    assert "parent of data dir" in refused(["--node-id", "1", *own_ports(),
                                            "--data-dir", str(tmp_path / "a" / "b")])


def test_unknown_flag_is_one_line():
    assert "unknown or repeated argument --bogus" in refused(["--bogus"])
    assert "--node-id requires argument" in refused(["--node-id"])
