"""Multi-trial search as a command: `hwnas search --method random|evolution --evaluator train|supernet`, its
run directory, the target held, the best trial as arch.json, and resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import hwnas
from hwnas.cli import main
from hwnas.selection import read_trials

SMALL = {"width_mult": 0.25}


def test_evolution_trains_trials_resumes_after_kill_9_and_returns_the_best_within_the_target(quick_tables, tmp_path):
    from hwnas.latency.table import LatencyTable

    # the quick table's thread count names it (cpu-...-<N>t): the child process must time the same way
    threads = LatencyTable.load(next(quick_tables.glob("*/*/*.csv"))).meta["threads"]
    argv = [sys.executable, "-m", "hwnas", "search", "--method", "evolution", "--trials", "4", "--trial-epochs", "1",
            "--width-mult", "0.25", "--latency-target", "50%", "--no-profile", "--opt", "population=2",
            "--threads", str(threads)]
    env = {**os.environ, "HWNAS_PROGRESS": "0"}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, done = time.time() + 300, []
    while time.time() < deadline:
        done = list(tmp_path.glob("runs/*/trials.jsonl"))
        if done and len(done[0].read_text().splitlines()) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be killed: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done, "no trial recorded within 300 s"
    run = done[0].parent
    kept = read_trials(run / "trials.jsonl")
    assert 2 <= len(kept) < 4 and not (run / "arch.json").exists()
    code = main(["search", "--resume", str(run)])
    assert code == 0
    trials = read_trials(run / "trials.jsonl")
    assert len(trials) == 4 and trials[:len(kept)] == kept  # finished trials kept, none evaluated twice
    assert len({tuple(t["arch"]) for t in trials}) == 4
    cfg = json.loads((run / "config.json").read_text())
    target = cfg["target_ms"]
    assert all(t["predicted_ms"] <= target + 1e-9 for t in trials)
    best = max(trials, key=lambda t: t["result"]["accuracy"])
    arch = json.loads((run / "arch.json").read_text())
    assert arch["layers"] == best["arch"] and arch["space"] == "proxyless"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accuracy"] == best["result"]["accuracy"] and summary["trials"] == 4
    assert (run / "best_so_far.png").stat().st_size > 0
    assert json.loads((run / "selection.json").read_text())["selector"]["population"] == 2


def test_random_search_over_a_trained_supernet_scores_paths(quick_tables, tmp_path):
    one_shot = hwnas.search("proxyless", latency_target="50%", epochs=2, warmup_epochs=1, config=SMALL,
                            profile_missing=False)
    result = hwnas.search("random", evaluator="supernet", supernet=str(one_shot.run_dir), trials=5)
    trials = read_trials(result.run_dir / "trials.jsonl")
    assert len(trials) == 5 and all(0.0 <= t["result"]["accuracy"] <= 1.0 for t in trials)
    # the supernet run's target and table: every trial within T (random search is uniform under it), the best returned
    _, upper = json.loads((result.run_dir / "config.json").read_text())["window"]
    assert upper == pytest.approx(one_shot.summary["target_ms"])
    assert all(t["predicted_ms"] <= upper + 1e-9 for t in trials)
    assert result.summary["accuracy"] == max(t["result"]["accuracy"] for t in trials)
    assert result.config.table == one_shot.config.table and result.arch.layers == result.summary["arch"]


def test_bad_multi_trial_input_is_one_line(quick_tables, capsys):
    assert main(["search", "--method", "evolution", "--evaluator", "supernet"]) == 2
    assert "--evaluator supernet needs --supernet RUN_DIR" in capsys.readouterr().err
    assert main(["search", "--method", "random", "--evaluator", "supernet", "--supernet", "nowhere"]) == 2
    assert "--supernet nowhere: not a one-shot search run directory" in capsys.readouterr().err
    assert main(["search", "--method", "evolution", "--trials", "0"]) == 2
    assert "need --trials >= 1" in capsys.readouterr().err
    assert main(["search", "--method", "evolution", "--opt", "elitism=1", "--width-mult", "0.25",
                 "--no-profile", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "hwnas: error: --method evolution:" in err and "elitism" in err
