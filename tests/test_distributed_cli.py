"""``torchrun --nproc-per-node 2 -m hwnas search`` end to end on 2 CPU (gloo) processes, as a user runs it:
one run directory, written by rank 0, an architecture within the target, then ``hwnas export``."""
import json
import os
import subprocess
import sys

from tests.test_cli import FAST, run


def test_torchrun_two_ranks_search_then_export(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "profile", "--device", "cpu", "--backend", "torch", "--width-mult", "0.25",
                         "--warmup", "1", "--iterations", "3", "--rounds", "2", "--network-sets", "2", "--out", "tables")
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HWNAS_PROGRESS": "0"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "hwnas", "search", "--method", "proxyless", "--latency-target", "50%", "--epochs", "2",
                        "--warmup-epochs", "1", "--batch-size", "128", *FAST],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # one run directory, not one per rank
    assert p.stdout.count("derived architecture: proxyless[") == 1, p.stdout  # rank 0 alone derives and reports
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    log = (runs[0] / "log.txt").read_text()
    assert "torchrun: 2 ranks (gloo), global batch 128 (64 a rank)" in log and summary["ranks"] == 2
    code, out, err = run(capsys, "export", "--onnx", "--tables", "tables", "--iterations", "5")
    assert code == 0, err
    assert "onnx.checker ok" in out and json.loads((runs[0] / "export.json").read_text())["rel_diff"] <= 1e-4
