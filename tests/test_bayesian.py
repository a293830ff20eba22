"""Bayesian optimization (Optuna TPE through ask/tell): the target held before any evaluation, no
duplicate proposals, resume by replay, and that it beats random search on a structured task."""
import numpy as np
import pytest

from hwnas.selection import RandomSelector, get_selector
from hwnas.selection.bayesian import TPESelector
from tests.helpers import assert_selector_resumes_by_replay
from tests.test_evolution import Structured, _setup

pytest.importorskip("optuna")


def _best_at(n, seeds):
    space, cfg, model, window = _setup()
    best = {"bo": [], "random": []}
    for seed in range(seeds):
        task = Structured(space, cfg, seed=100 + seed)
        for name in best:
            sel = (TPESelector(space, cfg, seed=seed, latency=model, window=window) if name == "bo"
                   else RandomSelector(space, cfg, seed=seed, latency=model, window=window))
            seen, accs = set(), []
            while len(accs) < n:
                layers = sel.ask()
                assert model.of_tokens(layers) <= window[1] + 1e-9
                if tuple(layers) in seen:
                    assert name == "random", "bo proposed an architecture it was told"
                    continue
                seen.add(tuple(layers))
                r = task.evaluate(layers, 0)
                sel.tell(layers, r)
                accs.append(r["accuracy"])
            best[name].append(max(accs))
    return {k: float(np.mean(v)) for k, v in best.items()}


def test_bo_beats_random_search_within_the_target():
    best = _best_at(60, 3)
    assert best["bo"] > best["random"] + 0.5, best


def test_bo_resumes_by_replay_and_records_its_settings(tmp_path):
    space, cfg, model, window = _setup()
    make = lambda: TPESelector(space, cfg, seed=4, latency=model, window=window, startup=5)  # noqa: E731
    assert_selector_resumes_by_replay(make, lambda: Structured(space, cfg), tmp_path, 15, 8, latency=model)
    assert get_selector("bo") is TPESelector
    assert make().settings() == {"selector": "bo", "seed": 4, "startup": 5, "candidates": 24, "multivariate": True,
                                 "tries": 50, "metric": "accuracy", "window": list(window)}
    with pytest.raises(ValueError, match="startup, candidates and tries >= 1"):
        TPESelector(space, cfg, startup=0)
