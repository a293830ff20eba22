"""Regularized evolution (Real et al. 2019, Algorithm 1): the aging order, the tournament, the latency
target held before any evaluation, resume by replay, and that it beats random search on a structured task."""
import random

import numpy as np
import pytest

from hwnas.latency.predictor import LatencyModel
from hwnas.selection import RandomSelector, get_selector, read_trials, run_trials
from hwnas.selection.evolution import RegularizedEvolution, scaled_population
from hwnas.spaces import get_space
from tests.helpers import synthetic_table


def _setup():
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "num_classes": 4})
    model = LatencyModel(synthetic_table(space, cfg), space, cfg)
    (fast, _), (slow, _) = model.extremes()
    target = fast + 0.4 * (slow - fast)
    return space, cfg, model, (0.9 * target, target)


class Structured:
    """A tabular-like task: each (layer, token) adds a fixed random amount, plus a little noise per arch."""

    def __init__(self, space, cfg, seed=0):
        rng = np.random.default_rng(seed)
        self.w = [{t: float(rng.normal()) for t in d.choices} for d in space.decisions(cfg)]
        self.calls = []

    def evaluate(self, layers, seed):
        self.calls.append(list(layers))
        noise = random.Random(" ".join(layers)).gauss(0, 0.1)
        return {"accuracy": sum(w[t] for w, t in zip(self.w, layers)) + noise}

    def settings(self):
        return {"evaluator": "structured"}


def test_the_oldest_dies_not_the_worst():
    space, cfg, _, _ = _setup()
    ev = RegularizedEvolution(space, cfg, population=3, sample=2)
    archs = [space.sample(random.Random(i), cfg) for i in range(5)]
    for i, (a, acc) in enumerate(zip(archs, [0.9, 0.1, 0.5, 0.2, 0.3])):
        ev.tell(a, {"accuracy": acc})
    # five told into a population of three: the first two (0.9 the best of all) have aged out
    assert [m[0] for m in ev.population] == archs[2:] and [m[1] for m in ev.population] == [0.5, 0.2, 0.3]


def test_the_parent_is_the_best_of_a_sample_drawn_with_replacement():
    space, cfg, _, _ = _setup()
    ev = RegularizedEvolution(space, cfg, population=4, sample=4, seed=3)
    archs = [space.sample(random.Random(i), cfg) for i in range(4)]
    for a, acc in zip(archs, [0.1, 0.4, 0.3, 0.2]):
        ev.tell(a, {"accuracy": acc})
    rng = random.Random(3)  # the same draws the selector makes
    picks = []
    for _ in range(200):
        drawn = [rng.randrange(4) for _ in range(4)]
        picks.append(archs[max(drawn, key=lambda i: [0.1, 0.4, 0.3, 0.2][i])])
    assert [ev.parent() for _ in range(200)] == picks
    # with replacement, the best member is missed now and then: P(miss) = (3/4)^4 = 0.316
    assert 0.2 < sum(p != archs[1] for p in picks) / 200 < 0.45


def test_proposals_are_one_mutation_from_a_parent_and_never_above_the_target():
    space, cfg, model, window = _setup()
    ev = RegularizedEvolution(space, cfg, seed=0, latency=model, window=window, population=5, sample=2)
    task = Structured(space, cfg)
    trials = []
    for _ in range(60):
        layers = ev.ask()
        assert model.of_tokens(layers) <= window[1] + 1e-9
        if ev.told >= ev.population_size:
            members = [m[0] for m in ev.population]
            assert min(sum(a != b for a, b in zip(layers, m)) for m in members) <= 1 or \
                window[0] <= model.of_tokens(layers)  # a mutant, or a fresh random one in the window
        ev.tell(layers, task.evaluate(layers, 0))
        trials.append(layers)
    assert len(trials) == 60


def test_settings_and_refusals():
    space, cfg, model, window = _setup()
    assert get_selector("evolution") is RegularizedEvolution
    assert scaled_population(100) == 20 and scaled_population(5) == 4 and scaled_population(10**5) == 100
    ev = RegularizedEvolution(space, cfg, seed=2, latency=model, window=window, population=20)
    assert ev.settings() == {"selector": "evolution", "seed": 2, "population": 20, "sample": 5, "tries": 20,
                             "metric": "accuracy", "pareto": False, "window": list(window)}
    with pytest.raises(ValueError, match="population >= 2"):
        RegularizedEvolution(space, cfg, population=1)


def test_evolution_resumes_by_replay(tmp_path):
    space, cfg, model, window = _setup()
    make = lambda: RegularizedEvolution(space, cfg, seed=1, latency=model, window=window, population=5)  # noqa: E731
    full = run_trials(make(), Structured(space, cfg), tmp_path / "a", 20, latency=model)
    run_trials(make(), Structured(space, cfg), tmp_path / "b", 12, latency=model)
    lines = (tmp_path / "b" / "trials.jsonl").read_text().splitlines()
    (tmp_path / "b" / "trials.jsonl").write_text("\n".join(lines[:7]) + "\n")  # killed after 7 trials
    (tmp_path / "b" / "selection.json").unlink()  # n_trials differs between the two runs' budgets
    task = Structured(space, cfg)
    resumed = run_trials(make(), task, tmp_path / "b", 20, latency=model)
    assert [t["arch"] for t in resumed] == [t["arch"] for t in full] and len(task.calls) == 13
    assert len(read_trials(tmp_path / "b" / "trials.jsonl")) == 20


def mean_best_at_100_trials(seeds: int) -> dict:
    """Mean over ``seeds`` of the best accuracy in 100 distinct trials, evolution and random search."""
    space, cfg, model, window = _setup()
    best = {"evolution": [], "random": []}
    for seed in range(seeds):
        task = Structured(space, cfg, seed=100 + seed)
        for name in best:
            sel = (RegularizedEvolution(space, cfg, seed=seed, latency=model, window=window,
                                        population=scaled_population(100)) if name == "evolution"
                   else RandomSelector(space, cfg, seed=seed, latency=model, window=window))
            seen, accs = set(), []
            while len(accs) < 100:
                layers = sel.ask()
                if tuple(layers) in seen:
                    continue
                seen.add(tuple(layers))
                r = task.evaluate(layers, 0)
                sel.tell(layers, r)
                assert model.of_tokens(layers) <= window[1] + 1e-9
                accs.append(r["accuracy"])
            best[name].append(max(accs))
    return {name: float(np.mean(v)) for name, v in best.items()}


@pytest.mark.parametrize("seeds", [6, pytest.param(20, marks=pytest.mark.slow)])
def test_evolution_beats_random_search_at_100_trials(seeds):
    best = mean_best_at_100_trials(seeds)
    assert best["evolution"] > best["random"] + 0.5, best
