"""Tabular evaluation (a benchmark CSV over the nb201 space): random search's exact expectation, the
benchmark file's checks, random search uniform over the feasible set, `hwnas search --evaluator tabular`
end to end with a resume, and `hwnas compare --evaluator tabular`."""
import csv
import itertools
import json
import os
import random

import numpy as np
import pytest

from hwnas.selection import RandomSelector, read_trials
from hwnas.selection.tabular import (BenchmarkError, TabularBenchmark, TabularLatency, expected_best_of_random,
                                    std_best_of_random)
from hwnas.spaces import get_space
from tests.test_cli import assert_one_line_error, run

SPACE = get_space("nb201")
VALUE = {"none": 0.0, "skip_connect": 0.5, "nor_conv_1x1": 1.0, "nor_conv_3x3": 2.0, "avg_pool_3x3": 0.3}
COST = {"none": 0.0, "skip_connect": 0.02, "nor_conv_1x1": 0.3, "nor_conv_3x3": 1.0, "avg_pool_3x3": 0.15}


def write_benchmark(path, seed: int = 0, drop: int = 0, rows=None):
    """A synthetic benchmark of all 15,625 cells: accuracy with structure (weighted op values, one
    interaction) and noise; latency from op costs with jitter."""
    rng = random.Random(seed)
    w = [1.5, 1.0, 0.8, 0.6, 0.9, 1.2]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["arch", "val_acc", "lat_ms"])
        for a in (rows if rows is not None else SPACE.all_archs()[drop:]):
            acc = 60 + 3 * sum(wi * VALUE[t] for wi, t in zip(w, a)) + 5 * (a[0] == a[5] == "nor_conv_3x3")
            out.writerow([SPACE.arch_string(a), round(acc + rng.gauss(0, 1), 3),
                          round(1 + sum(COST[t] for t in a) * (1 + 0.05 * rng.random()), 4)])
    return path


@pytest.fixture(scope="module")
def bench_path(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench") / "bench.csv")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_exact_expectation_of_random_search_equals_enumeration(n):
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]  # ties included
    brute = np.mean([max(c) for c in itertools.combinations(values, n)])
    assert expected_best_of_random(values, n) == pytest.approx(brute, rel=1e-12)
    sd = np.std([max(c) for c in itertools.combinations(values, n)])
    assert std_best_of_random(values, n) == pytest.approx(sd, rel=1e-9, abs=1e-12)


def test_benchmark_files_are_checked_in_one_line(tmp_path):
    def refused(text, message):
        p = tmp_path / "b.csv"
        p.write_text(text)
        with pytest.raises(BenchmarkError, match=message) as e:
            TabularBenchmark(p, SPACE, {}, "val_acc", "lat_ms")
        assert "\n" not in str(e.value)

    good = SPACE.arch_string(["none"] * 6)
    refused("arch,acc\n", "no column 'val_acc'")
    refused(f"arch,val_acc,lat_ms\n{good},1,2\n{good},1,2\n", "appears twice")
    refused(f"arch,val_acc,lat_ms\n{good},high,2\n", "val_acc = 'high' is not a finite number")
    refused(f"arch,val_acc,lat_ms\n{good},1,-2\n", "not a positive latency")
    refused("arch,val_acc,lat_ms\n|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|,1,2\n", r"b.csv:2: .*unknown op 'conv'")
    refused(f"arch,val_acc,lat_ms\n{good},1,2\n", "holds 1 of the 15625 architectures")
    with pytest.raises(BenchmarkError, match="no such file"):
        TabularBenchmark(tmp_path / "absent.csv", SPACE, {}, "val_acc")


def test_random_search_is_uniform_over_the_feasible_set(bench_path):
    bench = TabularBenchmark(bench_path, SPACE, {}, "val_acc", "lat_ms")
    lat = TabularLatency(bench)
    (fast, _), (slow, _) = lat.extremes()
    upper = fast + 0.3 * (slow - fast)
    feasible = set(lat.feasible(upper))
    assert 0 < len(feasible) < len(bench.rows)
    sel = RandomSelector(SPACE, {}, seed=0, latency=lat, window=(0.9 * upper, upper))
    draws = [tuple(sel.ask()) for _ in range(4000)]
    assert set(draws) <= feasible  # none above T, and the window's lower edge is not a constraint here
    assert min(lat.of_tokens(list(a)) for a in draws) < 0.9 * upper
    # uniform: the mean accuracy of the draws is the feasible set's mean (4000 draws: SE ~ std / 63)
    values = np.array([bench.rows[a][0] for a in feasible])
    got = np.array([bench.rows[a][0] for a in draws])
    assert abs(got.mean() - values.mean()) < 4 * values.std() / np.sqrt(len(draws))


def test_rejection_sampling_on_a_latency_table_is_uniform_under_the_target():
    from hwnas.latency.predictor import LatencyModel
    from helpers import synthetic_table

    cfg = SPACE.resolve_config({"C": 4, "N": 1})
    model = LatencyModel(synthetic_table(SPACE, cfg), SPACE, cfg)
    (lo, _), (hi, _) = model.extremes()
    t = lo + 0.4 * (hi - lo)
    sel = RandomSelector(SPACE, cfg, seed=1, latency=model, window=(0.9 * t, t))
    draws = [sel.ask() for _ in range(300)]
    assert all(model.of_tokens(a) <= t + 1e-12 for a in draws)
    assert len({tuple(a) for a in draws}) > 250 and not sel.fell_back
    want = random.Random(1)  # the reference: uniform samples, those above T rejected
    ref = []
    while len(ref) < 20:
        a = SPACE.sample(want, cfg)
        if model.of_tokens(a) <= t:
            ref.append(a)
    assert draws[:20] == ref


@pytest.fixture
def here(tmp_path, monkeypatch, bench_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench.csv").write_bytes(bench_path.read_bytes())
    return tmp_path


TAB = ["--evaluator", "tabular", "--benchmark", "bench.csv", "--metric", "val_acc", "--latency-column", "lat_ms"]


@pytest.mark.parametrize("method", ["random", "evolution", "bo", "rl"])
def test_tabular_search_end_to_end_meets_the_target_and_resumes(here, capsys, method):
    code, out, err = run(capsys, "search", "--method", method, *TAB, "--latency-target", "40%", "--trials", "30")
    assert code == 0, err
    assert "val_acc" in out and "column lat_ms of bench.csv" in out
    run_dir = next((here / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["predicted_latency_ms"] <= summary["target_ms"]
    assert SPACE.parse_arch_string(summary["arch_string"]) == summary["arch"]
    trials = read_trials(run_dir / "trials.jsonl")
    assert len(trials) == 30 and len({tuple(t["arch"]) for t in trials}) == 30
    assert all(t["worker"].endswith(f":{os.getpid()}") and t["seconds"] >= 0 for t in trials)
    # a kill after 12 trials: the resume replays them and evaluates only the missing 18, the same ones
    lines = (run_dir / "trials.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "trials.jsonl").write_text("".join(lines[:12]) + lines[12][:20])  # torn 13th line
    code, out, err = run(capsys, "search", "--resume", str(run_dir))
    assert code == 0, err
    again = read_trials(run_dir / "trials.jsonl")
    assert [t["arch"] for t in again] == [t["arch"] for t in trials]
    assert json.loads((run_dir / "summary.json").read_text())["arch"] == summary["arch"]


def test_tabular_bad_inputs(here, capsys):
    code, _, err = run(capsys, "search", "--method", "random", "--evaluator", "tabular")
    assert_one_line_error(code, err, "--evaluator tabular needs --benchmark")
    code, _, err = run(capsys, "search", "--method", "random", *TAB[:-2], "--latency-column", "ms")
    assert_one_line_error(code, err, "no column 'ms' (--latency-column)")
    code, _, err = run(capsys, "search", "--method", "random", *TAB, "--latency-target", "0.5ms")
    assert_one_line_error(code, err, "below the fastest architecture of the space in the benchmark bench.csv")


def test_compare_on_a_tabular_benchmark(here, capsys):
    code, out, err = run(capsys, "compare", "--methods", "random", "evolution", *TAB, "--latency-target", "40%",
                         "--repeats", "8", "--trials", "30", "--out", "cmp")
    assert code == 0, err
    rows = list(csv.DictReader(open(here / "cmp" / "report.csv")))
    assert [(r["method"], r["trials"]) for r in rows] == [("random", "10"), ("random", "30"), ("evolution", "10"),
                                                          ("evolution", "30")]
    assert all(r["violations"] == "0" for r in rows)
    r30 = next(r for r in rows if r["method"] == "random" and r["trials"] == "30")
    # the random runs' mean best agrees with the exact expectation (8 seeds: within 4 exact standard errors)
    assert abs(float(r30["mean_best"]) - float(r30["random_expectation"])) < 4 * float(r30["random_std"]) / 8**0.5
    assert "random, exact" in out and (here / "cmp" / "best_so_far.png").exists()
    code, out, err = run(capsys, "compare", "--methods", "random", "evolution", *TAB, "--latency-target", "40%",
                         "--repeats", "8", "--trials", "30", "--out", "cmp")  # resumed: everything replayed
    timeless = lambda rs: [{k: v for k, v in r.items() if k != "strategy_ms_per_trial"} for r in rs]  # noqa: E731
    assert code == 0 and timeless(csv.DictReader(open(here / "cmp" / "report.csv"))) == timeless(rows)
    code, _, err = run(capsys, "compare", "--methods", "random", "proxyless", *TAB)
    assert_one_line_error(code, err, "either one-shot methods")


@pytest.mark.slow
def test_evolution_and_bo_beat_random_at_100_trials_over_20_seeds(here, capsys):
    """The issue's target on a synthetic benchmark: mean best at 100 trials over 20 seeds above the random runs'
    mean (bo above random's exact expectation too; evolution is within noise of it here: 82.99 against 83.37,
    standard error 0.57), no returned architecture above T."""
    code, out, err = run(capsys, "compare", "--methods", "random", "evolution", "bo", *TAB, "--latency-target", "40%",
                         "--repeats", "20", "--trials", "100", "--out", "cmp")
    assert code == 0, err
    rows = {r["method"]: r for r in csv.DictReader(open(here / "cmp" / "report.csv")) if r["trials"] == "100"}
    for m in ("evolution", "bo"):
        assert float(rows[m]["mean_best"]) > float(rows["random"]["mean_best"])
    assert float(rows["bo"]["mean_best"]) > float(rows["bo"]["random_expectation"])
    assert all(r["violations"] == "0" for r in rows.values())
