"""The benchmark scripts keep working (a tiny run; the figures are printed, never judged here)."""
import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "run.py"


def test_bench_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["seq_put"]["ops_s"] > 0 and figures["pipelined_put_4_clients_s"] > 0
    assert figures["node_status"]["fsync"] is True
    assert "pipelined put ops/s" in proc.stdout
