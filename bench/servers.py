"""The clusters bench/compare.py measures, each started from scratch in a temporary directory and stopped
at the end: zmqstore (a single node, 3 nodes in leader mode, 3 in dynamo mode), Redis 7 (a primary and
two replicas, AOF on) and etcd (3 members). Redis and etcd come from Debian's packages (redis-server,
etcd-server), installed with apt-get when missing and allowed (root); a server that cannot be had is
reported and left out of the table, never stood in for.
"""
import os
import shutil
import subprocess
import time

from zmqstore.testing.process import Cluster, NodeProcess, free_ports, wait_until

LOOPBACK = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0


def proc_stat(path):
    """(name, user + system CPU seconds) of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file;
    None once the process or thread is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid) -> float:
    """User + system CPU seconds a process (all its threads) has used; 0.0 once it is gone."""
    stat = proc_stat(f"/proc/{pid}/stat")
    return stat[1] if stat else 0.0


def ensure_installed(binary, package):
    """The binary's path, installing its Debian package first when it is missing; None (with the reason
    printed) when it cannot be had."""
    found = shutil.which(binary)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print(f"{binary} is missing and cannot be installed here (needs apt-get as root): left out", flush=True)
        return None
    print(f"{binary} is missing: apt-get install {package}", flush=True)
    ok = subprocess.run(f"apt-get update -qq && apt-get install -y -qq {package}", shell=True,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    found = shutil.which(binary)
    if not (ok and found):
        print(f"apt-get install {package} failed: {binary} left out", flush=True)
    return found


def version_of(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


class Processes:
    """Server processes started here, stopped (SIGTERM, then SIGKILL) by stop() whatever happened."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_path):
        with open(log_path, "ab") as log:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    def cpu(self) -> list:
        return [cpu_seconds(p.pid) for p in self.procs]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.procs = []


class ZmqstoreCluster:
    """`size` nodes (1: a standalone node) on 127.0.0.2.., fsync on, logging warnings only."""

    def __init__(self, base_dir, mode, size, code_dir=None):
        """code_dir: run the nodes from this copy of the source (bench/compare.py --baseline), not this one."""
        self.mode, self.size = mode, size
        # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (this tree) first
        env = {"PYTHONPATH": code_dir, "PYTHONSAFEPATH": "1"} if code_dir else None
        args = ["--log-level", "WARNING"]
        if size == 1:
            os.makedirs(base_dir, exist_ok=True)
            self.nodes = [NodeProcess(1, os.path.join(base_dir, "data"), os.path.join(base_dir, "node.log"),
                                      args=args, new_session=False, keys=False)]
            self.nodes[0].env = env
            self.cluster = None
        else:
            self.cluster = Cluster(base_dir, size=size, args=args, env=env, new_session=False, mode=mode, keys=False)
            self.nodes = list(self.cluster.nodes.values())
        self.version = "zmqstore " + version_of(["git", "-C", os.path.dirname(__file__), "rev-parse", "--short",
                                                 "HEAD"]) if code_dir is None else f"zmqstore {os.path.basename(code_dir)}"

    def start(self):
        if self.cluster:
            self.cluster.start_all(timeout=START_TIMEOUT)
        else:
            self.nodes[0].start()

    def cpu(self) -> list:
        """CPU seconds of each node so far, by node id."""
        return [cpu_seconds(n.proc.pid) if n.proc is not None else 0.0 for n in self.nodes]

    def spec(self, w=None, read_index=False):
        return {"kind": "zmqstore", "mode": self.mode, "endpoints": [n.endpoint for n in self.nodes], "w": w,
                "read_index": read_index}

    def stop(self):
        if self.cluster:
            self.cluster.stop_all()
        else:
            self.nodes[0].stop()


class RedisCluster:
    """A primary and two replicas, AOF on with `appendfsync` as given, RDB snapshots off."""

    def __init__(self, base_dir, appendfsync):
        self.base_dir, self.appendfsync = base_dir, appendfsync
        self.binary = ensure_installed("redis-server", "redis-server")
        self.version = version_of([self.binary, "--version"]) if self.binary else None
        self.processes = Processes()
        self.ports = []

    def start(self):
        import redis
        self.ports = free_ports(LOOPBACK, 3)
        for i, port in enumerate(self.ports):
            d = os.path.join(self.base_dir, f"redis{i}")
            os.makedirs(d, exist_ok=True)
            argv = [self.binary, "--port", str(port), "--bind", LOOPBACK, "--dir", d, "--appendonly", "yes",
                    "--appendfsync", self.appendfsync, "--save", "", "--protected-mode", "no"]
            if i:
                argv += ["--replicaof", LOOPBACK, str(self.ports[0])]
            self.processes.start(argv, os.path.join(d, "redis.log"))

        def replicas_up():
            try:
                info = redis.Redis(host=LOOPBACK, port=self.ports[0]).info("replication")
            except redis.RedisError:
                return False
            return info.get("connected_slaves") == 2 and all(
                info.get(f"slave{i}", {}).get("state") == "online" for i in range(2))
        wait_until(replicas_up, START_TIMEOUT, interval=0.1, message="redis replicas online")

    def cpu(self) -> list:
        """CPU seconds of the primary, then each replica."""
        return self.processes.cpu()

    def spec(self, wait):
        return {"kind": "redis", "host": LOOPBACK, "port": self.ports[0], "wait": wait}

    def stop(self):
        self.processes.stop()


class EtcdCluster:
    """Three members, each with its own data dir (etcd fsyncs its WAL before it commits)."""

    def __init__(self, base_dir):
        self.base_dir = base_dir
        self.binary = ensure_installed("etcd", "etcd-server")
        self.version = version_of([self.binary, "--version"]) if self.binary else None
        self.processes = Processes()
        self.client_urls = []

    def start(self):
        ports = free_ports(LOOPBACK, 6)
        peers = [f"http://{LOOPBACK}:{p}" for p in ports[3:]]
        self.client_urls = [f"{LOOPBACK}:{p}" for p in ports[:3]]
        initial = ",".join(f"e{i}={url}" for i, url in enumerate(peers))
        for i in range(3):
            d = os.path.join(self.base_dir, f"etcd{i}")
            argv = [self.binary, "--name", f"e{i}", "--data-dir", d,
                    "--listen-client-urls", f"http://{self.client_urls[i]}",
                    "--advertise-client-urls", f"http://{self.client_urls[i]}",
                    "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "zmqstore-bench", "--log-level", "warn",
                    "--quota-backend-bytes", str(8 << 30),
                    "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000"]
            os.makedirs(self.base_dir, exist_ok=True)
            self.processes.start(argv, os.path.join(self.base_dir, f"etcd{i}.log"))
        from etcd_grpc import Etcd
        clients = [Etcd(url) for url in self.client_urls]

        def serving():
            try:
                for c in clients:
                    c.put(b"bench:ready", b"1")
                return True
            except Exception:
                time.sleep(0.2)
                return False
        try:
            wait_until(serving, START_TIMEOUT, interval=0.1, message="etcd members serving")
        finally:
            for c in clients:
                c.close()

    def cpu(self) -> list:
        return self.processes.cpu()

    def spec(self):
        return {"kind": "etcd", "endpoints": self.client_urls}

    def stop(self):
        self.processes.stop()
