"""NSGA-II selection for evolution (``--opt pareto=true``): the non-dominated sort and the crowding distance
against hand computation, and a tabular run whose pareto.json is the front of its trials."""
import json

import numpy as np
import pytest

from hwnas.selection import read_trials
from hwnas.selection.evolution import crowded_order, crowding_distance, non_dominated_ranks
from tests.test_cli import assert_one_line_error, run
from tests.test_tabular import TAB, bench_path, here  # noqa: F401 (fixtures)


def test_non_dominated_sort_by_hand():
    # (minimize both): a=(1,5) b=(2,2) c=(5,1) form the front; d=(3,3) is dominated by b; e=(4,4) by b and d
    obj = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [2, 2]], dtype=float)
    assert non_dominated_ranks(obj).tolist() == [0, 0, 0, 1, 2, 0]  # an equal point does not dominate


def test_crowding_distance_by_hand():
    obj = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(obj)
    # inner points: (gap in f1)/4 + (gap in f2)/4; point 1: (3-0)/4 + (4-1)/4 = 1.5; point 2: (4-1)/4 + (2-0)/4 = 1.25
    assert np.isinf(d[0]) and np.isinf(d[3]) and d[1] == pytest.approx(1.5) and d[2] == pytest.approx(1.25)
    assert crowded_order(obj)[:2] in ([0, 3], [3, 0]) and crowded_order(obj)[2:] == [1, 2]


def test_pareto_evolution_on_a_tabular_benchmark(here, capsys):  # noqa: F811
    code, out, err = run(capsys, "search", "--method", "evolution", *TAB, "--latency-target", "60%", "--trials", "60",
                         "--opt", "pareto=true")
    assert code == 0, err
    run_dir = next((here / "runs").iterdir())
    front = json.loads((run_dir / "pareto.json").read_text())
    trials = [t for t in read_trials(run_dir / "trials.jsonl")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pareto"] == len(front) >= 2 and (run_dir / "pareto.png").exists()
    pts = [(f["accuracy"], f["predicted_latency_ms"]) for f in front]
    for a, l in pts:  # no front member dominates another ...
        assert not any(a2 >= a and l2 <= l and (a2, l2) != (a, l) for a2, l2 in pts)
    for t in trials:  # ... and every trial within T is matched or dominated by one
        if t["predicted_ms"] <= summary["target_ms"]:
            assert any(a >= t["result"]["accuracy"] and l <= t["predicted_ms"] for a, l in pts)
    assert max(a for a, _ in pts) == summary["accuracy"]  # the most accurate within T is on the front
    code, _, err = run(capsys, "search", "--method", "evolution", *TAB, "--trials", "5", "--opt", "pareto=maybe")
    assert_one_line_error(code, err, "pareto must be true or false")
