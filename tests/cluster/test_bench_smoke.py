"""The benchmark scripts keep working (a tiny run; the figures are printed, never judged here)."""
import json
import os
import pathlib
import signal
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "run.py"


def test_bench_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    # Its own process group, with its node and workers in it, so a hung run is killed whole.
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=110)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout
    figures = json.loads(out.read_text())
    assert figures["seq_put"]["ops_s"] > 0 and figures["pipelined_put_4_clients_s"] > 0
    assert figures["node_status"]["fsync"] is True
    assert "pipelined put ops/s" in stdout
