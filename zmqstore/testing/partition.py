"""Network partitions between loopback node addresses with iptables, for fault tests.

Every rule lives in one chain of our own, ZMQSTORE_CHAOS, jumped to from INPUT, so `heal()` (and
`close()`, which a campaign calls in `finally`) removes every cut at once, and a run interrupted
hard can be cleaned with `python -m zmqstore.testing.partition --clean`. Only traffic between node
addresses (127.0.0.2, ...) is dropped: clients on 127.0.0.1 still reach every node, as in a
network where the nodes' links fail but not the clients'.
"""
import shutil
import subprocess
import sys

CHAIN = "ZMQSTORE_CHAOS"


def _iptables(*args, check=True):
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check, timeout=30)


def available():
    """True when iptables exists and this process may change rules (root, CAP_NET_ADMIN)."""
    if shutil.which("iptables") is None:
        return False
    try:
        return _iptables("-S", "INPUT", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Partitioner:
    def __init__(self, hosts):
        """hosts: {node id: loopback address}."""
        self.hosts = dict(hosts)
        self.cuts = set()
        clean()
        _iptables("-N", CHAIN)
        _iptables("-I", "INPUT", "-j", CHAIN)

    def cut(self, a, b):
        """Drop everything between nodes a and b, both ways."""
        pair = frozenset((a, b))
        if pair in self.cuts:
            return
        self.cuts.add(pair)
        ha, hb = self.hosts[a], self.hosts[b]
        _iptables("-A", CHAIN, "-s", ha, "-d", hb, "-j", "DROP")
        _iptables("-A", CHAIN, "-s", hb, "-d", ha, "-j", "DROP")

    def isolate(self, node):
        for other in self.hosts:
            if other != node:
                self.cut(node, other)

    def split(self, *groups):
        """Cut every link between nodes in different groups (a node in no group keeps all its
        links: that makes a bridge)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def heal(self):
        _iptables("-F", CHAIN)
        self.cuts.clear()

    def close(self):
        clean()


def clean():
    """Remove our chain and the jump to it, if present (safe to call any time)."""
    while _iptables("-D", "INPUT", "-j", CHAIN, check=False).returncode == 0:
        pass
    _iptables("-F", CHAIN, check=False)
    _iptables("-X", CHAIN, check=False)


if __name__ == "__main__":
    if "--clean" in sys.argv:
        clean()
        print(f"removed chain {CHAIN}")
