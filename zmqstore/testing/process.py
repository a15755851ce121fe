"""Start, stop, kill and inspect real datastore-node processes on loopback (used by tests and bench)."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

from ..client import Client, Retry
from ..errors import ZmqstoreError
from ..keys import keygen, load_public

# Set to 1 to run every test cluster with keys (CurveZMQ on every socket; docs/TESTING.md).
KEYS_ENV = "ZMQSTORE_TEST_KEYS"


def keys_by_default() -> bool:
    return os.environ.get(KEYS_ENV, "") not in ("", "0")


class TestKeys:
    """Key pairs for test nodes and clients in `directory` (docs/SECURITY.md): secrets in secret/,
    node public keys in nodes/ (node<ID>.key), client public keys in clients/ (read-write, "client")
    and readonly/ ("reader"). Made once; `for_node` adds a node's pair when it is missing."""

    __test__ = False    # not a pytest test class

    def __init__(self, directory):
        self.dir = str(directory)
        self.secret = os.path.join(self.dir, "secret")
        self.nodes = os.path.join(self.dir, "nodes")
        self.clients = os.path.join(self.dir, "clients")
        self.readonly = os.path.join(self.dir, "readonly")
        for d in (self.nodes, self.clients, self.readonly):
            os.makedirs(d, exist_ok=True)
        self._secret_names = {}     # node id -> the name of its key pair, when not node<ID>
        self._pair("client", self.clients)
        self._pair("reader", self.readonly)

    def _pair(self, name, public_dir):
        if not os.path.exists(os.path.join(self.secret, name + ".key_secret")):
            public, _secret = keygen(self.secret, name)
            target = os.path.join(public_dir, os.path.basename(public))
            shutil.copy(public, target + ".tmp")
            os.replace(target + ".tmp", target)     # a node starting now reads a whole file or none

    def for_node(self, node_id):
        """A node's key flags (its pair made when missing)."""
        name = self._secret_names.get(node_id, f"node{node_id}")
        self._pair(name, self.nodes)
        return ["--secret-key", os.path.join(self.secret, f"{name}.key_secret"), "--node-keys", self.nodes,
                "--client-keys", self.clients, "--readonly-keys", self.readonly]

    def public_key(self, node_id) -> str:
        """A node's public key (Z85), its pair made when missing."""
        self.for_node(node_id)
        name = self._secret_names.get(node_id, f"node{node_id}")
        return load_public(os.path.join(self.nodes, f"{name}.key")).decode()

    def add_next_key(self, node_id, label="next"):
        """Key rotation, first step (docs/SECURITY.md): node<ID>.<label>.key beside node<ID>.key."""
        self._pair(f"node{node_id}.{label}", self.nodes)

    def switch_key(self, node_id, label="next"):
        """Key rotation, second step: the node starts with its next key from now on."""
        self._secret_names[node_id] = f"node{node_id}.{label}"

    def client_kwargs(self, name="client"):
        """Client(...) arguments: the read-write key ("client"), the read-only one ("reader"), or any
        other pair made here."""
        return {"secret_key": os.path.join(self.secret, name + ".key_secret"), "node_keys": self.nodes}


def wait_until(predicate, timeout, interval=0.02, message="condition"):
    """Poll `predicate` until it returns a truthy value; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout} s")
        time.sleep(interval)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as an outgoing connection's source port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_PORTS_FROM = 10000
_given = set()                  # ports this process handed out already
_pick = random.SystemRandom()


def free_ports(host, count):
    """`count` distinct TCP ports free on `host` right now, below the kernel's ephemeral range: the
    source port of some outgoing connection (a client, a DEALER) cannot take one between this pick
    and the node's bind, which binding to port 0 (a port from that very range) could not promise.
    Each is held open while the others are picked, and none is handed out twice by this process."""
    if _EPHEMERAL_LOW - _PORTS_FROM < 1000:     # an unusual ip_local_port_range: let the kernel pick
        return _kernel_ports(host, count)
    picked, socks = [], []
    try:
        for _ in range(10000):
            if len(picked) == count:
                break
            port = _pick.randrange(_PORTS_FROM, _EPHEMERAL_LOW)
            if port in _given or port in picked:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
            picked.append(port)
        if len(picked) < count:
            raise RuntimeError(f"no {count} free ports on {host} between {_PORTS_FROM} and {_EPHEMERAL_LOW}")
        _given.update(picked)
        return picked
    finally:
        for sock in socks:
            sock.close()


def _kernel_ports(host, count):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host="127.0.0.1"):
    """A TCP port free on `host` right now (see free_ports)."""
    return free_ports(host, 1)[0]


def cli_args(endpoints, keys):
    if keys is None:
        return ["--endpoints", endpoints]
    kwargs = keys.client_kwargs()
    return ["--endpoints", endpoints, "--secret-key", kwargs["secret_key"], "--node-keys", kwargs["node_keys"]]


class NodeProcess:
    """One datastore-node process. `args` are extra command-line flags; output goes to `log_path`."""

    def __init__(self, node_id, data_dir, log_path, host="127.0.0.1", port=None, pub_port=None, args=(),
                 new_session=True, peer_port=None, keys=None):
        """new_session=False keeps the node in the caller's process group, so that killing the group
        (a benchmark run cut short) takes the node with it. keys: a TestKeys (CurveZMQ); by default
        one next to the data dir when ZMQSTORE_TEST_KEYS is set."""
        self.node_id = node_id
        self.host = host
        picked = free_ports(host, 3)    # a node's three ports must differ from each other
        self.port = port or picked[0]
        self.pub_port = pub_port or picked[1]
        self.peer_port = peer_port or picked[2]
        self.data_dir = str(data_dir)
        self.log_path = str(log_path)
        self.args = list(args)
        self.new_session = new_session
        self.env = None           # extra environment variables for the process
        self.proc = None
        if keys is None and keys_by_default():
            keys = TestKeys(os.path.join(os.path.dirname(os.path.abspath(self.data_dir)), "keys"))
        self.keys = keys or None          # False: no keys, whatever the environment says
        self.metrics_port = None          # set (before start) to serve /metrics, /healthz, /readyz

    def http_get(self, path, timeout=3.0):
        """(HTTP status, body text) of GET path on the node's metrics port; (None, why) when it does
        not answer."""
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return None, str(exc)

    @property
    def endpoint(self):
        return f"{self.host}:{self.port}"

    @property
    def named_endpoint(self):
        """ID@host:port, how a client with keys names this node."""
        return f"{self.node_id}@{self.endpoint}"

    def command(self):
        keys = self.keys.for_node(self.node_id) if self.keys is not None else []
        return [sys.executable, "-m", "zmqstore", "--node-id", str(self.node_id), "--host", self.host,
                "--port", str(self.port), "--pub-port", str(self.pub_port), "--peer-port", str(self.peer_port),
                "--data-dir", self.data_dir, *keys, *self.args,
                *(["--metrics-port", str(self.metrics_port)] if self.metrics_port else [])]

    def start(self, wait=True, timeout=15.0):
        env = dict(os.environ, **self.env) if self.env else None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=self.new_session)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15.0):
        def answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client(timeout=0.2, retry=Retry(max_tries=1)) as c:
                    return c.ping() == self.node_id
            except ZmqstoreError:
                return False
        wait_until(answers, timeout, interval=0.05, message=f"node {self.node_id} answering")

    def cli_args(self):
        """datastore-cli's --endpoints for this node, and its key flags when it has keys."""
        return cli_args(self.named_endpoint if self.keys else self.endpoint, self.keys)

    def client(self, **kwargs):
        """A Client of this node alone (with the read-write test key when the node has keys)."""
        if self.keys is None:
            return Client(self.endpoint, **kwargs)
        return Client(self.named_endpoint, **{**self.keys.client_kwargs(), **kwargs})

    def status(self, timeout=0.5):
        """The node's STATUS, or None when it does not answer (down, paused, busy): pollers ask again."""
        if not self.alive():
            return None
        try:
            with self.client(timeout=timeout, retry=Retry(max_tries=1)) as c:
                return c.status()
        except ZmqstoreError:
            return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self):
        """kill -9 and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def interrupt(proc, timeout=20.0):
    """Ctrl-C a process a test started (SIGINT) and collect it: (stdout, stderr). Killed if it is
    still there after `timeout` seconds, or if collecting it fails: no test leaves one behind."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def run_node_command(args, timeout=20.0):
    """Run datastore-node with `args` to completion (for start-up errors). Returns (code, output)."""
    proc = subprocess.run([sys.executable, "-m", "zmqstore", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


class Cluster:
    """N nodes, node i on loopback address 127.0.0.(i+1) so that links between nodes can be cut
    with iptables. Leader mode: node 1 bootstraps as primary. Data dirs and logs under `base_dir`."""

    def __init__(self, base_dir, size=3, args=(), env=None, new_session=True, bootstrap=(1,), mode="leader",
                 keys=None, metrics=False):
        """bootstrap: the node ids started with --role primary (one, unless a test wants a mistake).
        keys: CurveZMQ on every socket (default: when ZMQSTORE_TEST_KEYS is set). metrics: every node
        serves /metrics on a free port of its own (NodeProcess.http_get)."""
        self.base_dir = str(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        if keys is None:
            keys = keys_by_default()
        self.keys = TestKeys(os.path.join(self.base_dir, "keys")) if keys else None
        if self.keys is not None:
            for node_id in range(1, size + 1):      # every node's key exists before any node starts
                self.keys.for_node(node_id)
        self.mode = mode
        self.args = list(args)
        self.bootstrap = tuple(bootstrap) if mode == "leader" else ()
        self.env = env
        self.new_session = new_session
        self.nodes = {}
        for node_id in range(1, size + 1):
            host = f"127.0.0.{node_id + 1}"
            self.nodes[node_id] = NodeProcess(
                node_id, os.path.join(self.base_dir, f"node{node_id}"),
                os.path.join(self.base_dir, f"node{node_id}.log"), host=host,
                new_session=new_session, keys=self.keys or False)
            if metrics:
                self.nodes[node_id].metrics_port = free_ports(host, 1)[0]

    def peers_json(self, node_id):
        return json.dumps([{"node_id": n.node_id, "host": n.host, "port": n.port, "pub_port": n.pub_port,
                            "peer_port": n.peer_port} for n in self.nodes.values() if n.node_id != node_id])

    def node_args(self, node_id):
        join = getattr(self.nodes[node_id], "join", None)
        if join:
            return ["--join", join, *(["--mode", "dynamo"] if self.mode == "dynamo" else []), *self.args]
        if self.mode == "dynamo":
            return ["--peers", self.peers_json(node_id), "--mode", "dynamo", *self.args]
        role = "primary" if node_id in self.bootstrap else "secondary"
        return ["--peers", self.peers_json(node_id), "--role", role, *self.args]

    def start(self, node_id, wait=True, data_dir=None, env=None):
        node = self.nodes[node_id]
        if data_dir is not None:
            node.data_dir = str(data_dir)
        node.args = self.node_args(node_id)
        node.env = env if env is not None else self.env
        node.start(wait=wait)
        return node

    def add_node(self, node_id, join=True, admit=True):
        """A new node on 127.0.0.(node_id + 1), not started; with `join`, started with --join naming
        the current members' client ports (docs/MEMBERSHIP.md). With keys its key pair is made, and
        with `admit` (and `join`) the running cluster admits its key first (`add-member --key`, as an
        operator would): a node with keys may join only so."""
        assert node_id not in self.nodes
        others = list(self.nodes.values())
        node = self.nodes[node_id] = NodeProcess(
            node_id, os.path.join(self.base_dir, f"node{node_id}"), os.path.join(self.base_dir, f"node{node_id}.log"),
            host=f"127.0.0.{node_id + 1}", new_session=self.new_session, keys=self.keys or False)
        if join:
            node.join = ",".join(n.named_endpoint if self.keys else n.endpoint for n in others)
            if self.keys and admit:
                key = self.keys.public_key(node_id)
                with self.client(retry=Retry(max_tries=40, deadline=20)) as db:
                    db.add_member(node_id, node.host, node.port, node.pub_port, node.peer_port, key=key)
        return node

    def rejoin(self, node_id, data_dir):
        """Start a removed (and stopped) node again with --join naming the other nodes, from
        `data_dir` (an empty one: what an operator does). With keys its key is admitted first, as
        for any new node."""
        node = self.nodes[node_id]
        node.join = ",".join(n.named_endpoint if self.keys else n.endpoint
                             for i, n in self.nodes.items() if i != node_id)
        if self.keys:
            with self.client(retry=Retry(max_tries=40, deadline=20)) as db:
                db.add_member(node_id, node.host, node.port, node.pub_port, node.peer_port,
                              key=self.keys.public_key(node_id))
        return self.start(node_id, wait=False, data_dir=data_dir)

    def start_all(self, timeout=20.0):
        """Start every node, wait until each answers, one of them is primary and every node is a
        voter (a node that has not caught up yet is a learner: a fault then could leave too few
        voters to elect anyone, which is right, but not what a test starting a cluster means)."""
        for node_id in self.nodes:
            self.start(node_id, wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout)
        if self.mode == "dynamo":
            wait_until(lambda: all(all(p["alive"] for p in (n.status() or {"peers": [{"alive": False}]})["peers"])
                                   for n in self.nodes.values()), timeout, interval=0.05,
                       message="every node hearing every peer")
            return self
        self.wait_primary(timeout)
        wait_until(lambda: all((n.status() or {}).get("voter") for n in self.nodes.values()), timeout,
                   interval=0.05, message="every node a voter")
        return self

    def role_of(self, node_id):
        """(role, term) the node reports, or None when it does not answer."""
        st = self.nodes[node_id].status()
        return None if st is None else (st["role"], st["term"])

    def primaries(self):
        """{node id: term} of the live nodes that say they are primary."""
        found = {}
        for node_id in self.nodes:
            role = self.role_of(node_id)
            if role is not None and role[0] == "primary":
                found[node_id] = role[1]
        return found

    def wait_primary(self, timeout=20.0, among=None):
        """Wait until a node (one of `among`, if given) is primary; returns its id."""
        def one():
            found = [n for n in self.primaries() if among is None or n in among]
            return found[0] if found else None
        return wait_until(one, timeout, interval=0.05, message="a primary elected")

    def dynamo_converged(self, among=None):
        """Dynamo mode: every node (of `among`, default all) answers with the same data digest and
        applied vector, and sees every peer alive with the same (its status's `converged`)."""
        sts = [self.nodes[i].status() for i in (among or self.nodes)]
        if any(st is None for st in sts):
            return False
        if any(st.get("replicas") for st in sts):    # partitioned: each holds its partitions; compared pairwise
            return all(st["converged"] and not st.get("hints_pending") for st in sts)
        return (len({st["digest"] for st in sts}) == 1 and len({json.dumps(st["applied"], sort_keys=True)
                                                                for st in sts}) == 1
                and all(st["converged"] for st in sts))

    @property
    def endpoints(self):
        """Every node's client endpoint, named ID@host:port when the cluster has keys."""
        return [n.named_endpoint if self.keys else n.endpoint for n in self.nodes.values()]

    def cli_args(self, node_ids=None):
        """datastore-cli's --endpoints for these nodes (default all), and its key flags when the
        cluster has keys."""
        nodes = [self.nodes[i] for i in (node_ids or self.nodes)]
        return cli_args(",".join(n.named_endpoint if self.keys else n.endpoint for n in nodes), self.keys)

    def client(self, **kwargs):
        if self.keys is None:
            return Client(self.endpoints, **kwargs)
        return Client(self.endpoints, **{**self.keys.client_kwargs(), **kwargs})

    def stop_all(self):
        """Stop every node; one that cannot be stopped cleanly is killed, and the rest still stop."""
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception:
                node.kill()

    def logs(self):
        return "\n".join(f"----- node {n.node_id} -----\n{n.log()[-20000:]}" for n in self.nodes.values())
