"""The sampling methods as a user runs them: `hwnas search --method spos|fairnas|oneshot|enas` with a target
(the derived architecture in [0.9 T, T], every evaluated path too), the selection resumed without scoring a
finished path again, `hwnas rank` against training and against a tabular benchmark, and `hwnas compare`."""
import json

import pytest

import hwnas
from hwnas.cli import main
from hwnas.ranking import average_ranks, kendall_tau, spearman_rho
from hwnas.selection import read_trials
from hwnas.selection.evaluate import SupernetPath

SMALL = {"width_mult": 0.25}
FAST = {"spos": {"population": 4, "topk": 2, "iterations": 1}, "fairnas": {"population": 4, "topk": 2, "iterations": 1},
        "oneshot": {"samples": 5}, "enas": {"derive_samples": 4}}


def _search(method, target="50%", **kw):
    return hwnas.search(method, latency_target=target, epochs=1, batch_size=128, config=SMALL,
                        options=FAST[method], profile_missing=False, **kw)


@pytest.mark.parametrize("method", ["spos", pytest.param("fairnas", marks=pytest.mark.slow),
                                    pytest.param("oneshot", marks=pytest.mark.slow), "enas"])
def test_each_sampling_method_searches_to_a_path_in_the_window(quick_tables, method):
    r = _search(method)
    s = r.summary
    lo, hi = 0.9 * s["target_ms"], s["target_ms"]
    assert lo - 1e-9 <= s["predicted_latency_ms"] <= hi + 1e-9
    trials = read_trials(r.run_dir / "selection" / "trials.jsonl")
    assert trials and all(lo - 1e-9 <= t["predicted_ms"] <= hi + 1e-9 for t in trials)
    best = max(trials, key=lambda t: t["result"]["accuracy"])
    assert s["arch"] == best["arch"] and s["selection"]["trials"] == len(trials)
    assert r.arch.layers == s["arch"] and (r.run_dir / "child.pt").exists()
    cfg = json.loads((r.run_dir / "config.json").read_text())
    assert cfg["warmup_epochs"] == 0 and set(FAST[method]) <= set(cfg["method_options"])


def test_spos_selection_resumes_without_scoring_a_finished_path_again(quick_tables, monkeypatch):
    r = _search("spos")
    path = r.run_dir / "selection" / "trials.jsonl"
    full = read_trials(path)
    assert len(full) == 8  # population 4, one more generation
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:3]))
    for name in ("arch.json", "summary.json"):
        (r.run_dir / name).unlink()
    calls = []
    real = SupernetPath.evaluate
    monkeypatch.setattr(SupernetPath, "evaluate", lambda self, layers, seed: calls.append(layers) or real(self, layers, seed))
    resumed = hwnas.search(resume=str(r.run_dir))
    trials = read_trials(path)
    assert len(calls) == 5 and trials[:3] == full[:3]
    assert [t["arch"] for t in trials[:3]] == [t["arch"] for t in full[:3]]
    assert resumed.summary["arch"] == max(trials, key=lambda t: t["result"]["accuracy"])["arch"]


def test_rank_statistics_known_answers():
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert list(average_ranks([5, 1, 5, 3])) == [3.5, 1.0, 3.5, 2.0]
    # tau-b with ties: a = [1, 1, 2], b = [1, 2, 3]: 2 concordant of 3 pairs, 1 tie in a -> 2 / sqrt(2 * 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6 ** 0.5)
    assert spearman_rho([1, 1, 1], [1, 2, 3]) != spearman_rho([1, 1, 1], [1, 2, 3])  # nan: a constant side


def test_rank_against_training_resumes_and_refuses_bad_input(quick_tables, capsys):
    r = _search("spos")
    assert main(["rank", str(r.run_dir), "--archs", "3", "--trial-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau" in out and "Spearman rho" in out
    f = json.loads((r.run_dir / "rank-trained" / "rank.json").read_text())
    assert f["archs"] == 3 and (-1 <= f["kendall_tau"] <= 1 or f["kendall_tau"] != f["kendall_tau"])
    trials = read_trials(r.run_dir / "rank-trained" / "trials.jsonl")
    lo, hi = f["window_ms"]
    assert all(lo - 1e-9 <= t["predicted_ms"] <= hi + 1e-9 and "truth" in t["result"] for t in trials)
    assert (r.run_dir / "rank-trained" / "rank.png").stat().st_size > 0
    assert main(["rank", str(r.run_dir), "--archs", "3", "--trial-epochs", "1"]) == 0  # resumed: nothing new
    assert read_trials(r.run_dir / "rank-trained" / "trials.jsonl") == trials
    capsys.readouterr()
    for bad, what in ((["--archs", "2"], "at least 3"), (["--benchmark", "x.csv", "--trial-epochs", "2"], "not both")):
        assert main(["rank", str(r.run_dir), *bad]) != 0
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1
    assert main(["rank", str(quick_tables), "--archs", "3"]) != 0
    assert "not a finished one-shot search" in capsys.readouterr().err


def test_rank_against_a_tabular_benchmark(quick_tables, tmp_path):
    from tests.test_tabular import write_benchmark

    bench = write_benchmark(tmp_path / "b.csv")
    r = hwnas.search("spos", space="nb201", epochs=1, batch_size=256, config={"C": 4, "N": 1}, train_resolution=8,
                     options={"population": 3, "topk": 1, "iterations": 0}, no_latency=True)
    from hwnas.ranking import rank

    f = rank(r.run_dir, 5, benchmark=str(bench), metric="val_acc")
    trials = read_trials(r.run_dir / "rank-benchmark" / "trials.jsonl")
    assert f["archs"] == 5 and f["truth"] == "benchmark" and f["window_ms"] is None
    import csv

    table = {row["arch"]: float(row["val_acc"]) for row in csv.DictReader(open(bench))}
    space = r.space
    assert all(t["result"]["truth"] == table[space.arch_string(t["arch"])] for t in trials)
    est, tru = [t["result"]["accuracy"] for t in trials], [t["result"]["truth"] for t in trials]
    assert f["kendall_tau"] == pytest.approx(kendall_tau(est, tru), nan_ok=True)


@pytest.mark.slow
def test_compare_runs_a_sampling_method_beside_its_children(tmp_path):
    from hwnas.compare import CompareConfig, compare
    from tests.test_compare import TINY, table

    cfg = CompareConfig(methods=["enas"], **{**TINY, "warmup_epochs": 0, "random_archs": 1})
    import hwnas.strategies.enas as enas

    rows = compare(cfg, tmp_path / "cmp", table)
    assert [r["entry"] for r in rows] == ["enas", "random-0"]
    assert rows[0]["step_ms"] > 0 and rows[0]["child_step_ms"] > 0 and rows[0]["step_mib"] > 0
    assert 0.9 * rows[0]["target_ms"] - 1e-9 <= rows[0]["predicted_ms"] <= rows[0]["target_ms"] + 1e-9
    assert "enas" in (tmp_path / "cmp" / "report.md").read_text() and enas.ENAS.arch_steps
