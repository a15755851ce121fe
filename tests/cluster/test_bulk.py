"""Bulk export and import (issue 15, docs/OPERATIONS.md): `datastore-cli export` then `import` into a
new cluster gives identical data in both formats, every value type included; an import cut short
with SIGINT resumes where it stopped and ends with the right count."""
import json
import math
import os
import subprocess
import sys

import pytest

from zmqstore import Retry
from zmqstore.testing.process import Cluster, interrupt, wait_until

RETRY = Retry(max_tries=40, delay=0.05, max_delay=0.3, deadline=20)
VALUES = {
    "plain": "text",
    "nested": {"list": [1, 2.5, None, True], "map": {"é": {"deep": [b"\x00\xff"]}}, 7: "int key"},
    "bytes": b"\x00\x01\xfe\xff",
    "floats": [0.1, 1e-300, -0.0, math.inf, -math.inf, 2 ** 53 + 1],
    "non-ascii key é€😀": "value",
    "big": "x" * 100_000,
}


def cli(cluster, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "zmqstore.cli_main", *cluster.cli_args(), *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def data(cluster):
    with cluster.client(retry=RETRY) as db:
        return dict(db.scan())


@pytest.mark.parametrize("fmt", ["msgpack", "jsonl"])
def test_export_then_import_into_a_new_cluster_gives_identical_data(cluster, tmp_path, fmt):
    old = cluster()
    with old.client(retry=RETRY) as db:
        for key, value in VALUES.items():
            db.put(key, value)
        db.put(b"\xff\xfebinary-key", 1)
        for start in range(0, 2500, 500):
            db.put_many({f"many/{i:05d}": {"i": i} for i in range(start, start + 500)})
    path = str(tmp_path / f"export.{fmt}")
    summary = json.loads(cli(old, "--json", "export", path, *(["--jsonl"] if fmt == "jsonl" else [])).stdout)
    assert summary["count"] == len(VALUES) + 1 + 2500 and os.stat(path).st_mode & 0o777 == 0o600
    partial = str(tmp_path / "many-only")
    assert json.loads(cli(old, "--json", "export", partial, "--prefix", "many/").stdout)["count"] == 2500

    new = Cluster(tmp_path / "new", size=3)
    try:
        new.start_all()
        new.wait_primary(10)
        out = json.loads(cli(new, "--json", "import", path).stdout)
        assert out["count"] == summary["count"] and out["skipped"] == 0
        assert data(new) == data(old)
        assert not os.path.exists(path + ".progress")
    finally:
        new.stop_all()


def test_an_import_interrupted_with_sigint_resumes_and_completes_with_the_right_count(cluster, tmp_path):
    src = str(tmp_path / "src.jsonl")
    total = 400_000      # several seconds of import: time to interrupt it after its first record
    with open(src, "w", encoding="utf-8") as f:
        for i in range(total):
            f.write(json.dumps({"key": f"k{i:07d}", "value": {"i": i, "pad": "p" * 40}}) + "\n")
    c = cluster()
    proc = subprocess.Popen([sys.executable, "-m", "zmqstore.cli_main", *c.cli_args(), "import", src],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        marker = src + ".progress"

        def recorded():
            try:
                with open(marker) as f:
                    return json.load(f)["items"]
            except (OSError, ValueError):
                return 0        # not there yet, or being replaced
        wait_until(lambda: recorded() > 0 or proc.poll() is not None, 60, interval=0.01,
                   message="the import's first progress record")
        assert proc.poll() is None, "the import finished before it could be interrupted; make the file larger"
    finally:
        _out, err = interrupt(proc, timeout=60)
    assert proc.returncode == 130 and "run it again to resume" in err, err
    at_stop = recorded()
    assert 0 < at_stop < total
    out = json.loads(cli(c, "--json", "import", src).stdout)
    assert out["skipped"] == at_stop and out["count"] == total and not os.path.exists(marker)
    got = data(c)
    assert len(got) == total and got["k0000000"] == {"i": 0, "pad": "p" * 40}
    assert got[f"k{total - 1:07d}"]["i"] == total - 1
