"""Selection: random search in a latency window (chain and cell spaces), the trial loop's record, its
no-repeat rule and its resume after a kill, and the two evaluators."""
import json
import random

import numpy as np
import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.selection import (RandomSelector, Selector, SupernetPath, TrainFromScratch, get_selector, read_trials,
                             run_trials)
from hwnas.spaces import Arch, get_space
from hwnas.strategies import get_strategy
from tests.helpers import synthetic_table

CONFIGS = {"proxyless": {"width_mult": 0.25, "num_classes": 4},
           "darts": {"search_C": 4, "search_layers": 3, "num_classes": 4}}


def _model(name):
    space = get_space(name)
    cfg = space.resolve_config(CONFIGS[name])
    return space, cfg, LatencyModel(synthetic_table(space, cfg), space, cfg)


def _window(model, lo_frac=0.3, hi_frac=0.45):
    (fast, _), (slow, _) = model.extremes()
    return fast + lo_frac * (slow - fast), fast + hi_frac * (slow - fast)


class Counting:
    """An evaluator whose accuracy is a known function of the tokens; counts its calls."""

    def __init__(self):
        self.calls = []

    def evaluate(self, layers, seed):
        self.calls.append(list(layers))
        return {"accuracy": sum(len(t) for t in layers) / 1000}

    def settings(self):
        return {"evaluator": "counting"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_search_in_the_window_is_legal_seeded_and_the_reference_draw(name):
    space, cfg, model = _model(name)
    lo, hi = _window(model)
    sel = RandomSelector(space, cfg, seed=3, latency=model, window=(lo, hi), mode="window")
    got = [sel.ask() for _ in range(6)]
    for layers in got:
        Arch(name, cfg, layers)
        assert lo - 1e-9 <= model.of_tokens(layers) <= hi + 1e-9
    rng = np.random.default_rng(3)  # the reference: Gumbel scores, then the best-scoring arch in the window
    want = [model.derive_within([rng.gumbel(size=len(c)) for c in model.choices], lo, hi) for _ in range(6)]
    assert got == want
    again = RandomSelector(space, cfg, seed=3, latency=model, window=(lo, hi), mode="window")
    assert [again.ask() for _ in range(6)] == got
    other = RandomSelector(space, cfg, seed=4, latency=model, window=(lo, hi), mode="window")
    assert [other.ask() for _ in range(6)] != got
    assert get_selector("random") is RandomSelector


def test_uniform_random_search_samples_the_space():
    space, cfg, _ = _model("proxyless")
    sel = RandomSelector(space, cfg, seed=0)
    archs = [sel.ask() for _ in range(30)]
    for layers in archs:
        Arch("proxyless", cfg, layers)
    assert all(len({a[i] for a in archs}) > 1 for i in range(1, len(archs[0])))
    assert archs == [space.sample(r, cfg) for r in [random.Random(0)] for _ in range(30)]
    with pytest.raises(ValueError, match="needs a latency table"):
        RandomSelector(space, cfg, window=(1.0, 2.0))


def test_trials_are_recorded_distinct_and_resume_after_a_kill(tmp_path):
    space, cfg, model = _model("proxyless")
    window = _window(model, 0.2, 0.8)
    make = lambda: RandomSelector(space, cfg, seed=1, latency=model, window=window)  # noqa: E731
    straight = run_trials(make(), Counting(), tmp_path / "straight", 6, seed=10, latency=model)
    assert [t["trial"] for t in straight] == list(range(6)) and [t["seed"] for t in straight] == list(range(10, 16))
    assert len({tuple(t["arch"]) for t in straight}) == 6
    for t in straight:
        assert t["result"]["accuracy"] == sum(len(x) for x in t["arch"]) / 1000
        assert t["predicted_ms"] == pytest.approx(model.of_tokens(t["arch"]))
        assert t["seconds"] >= 0 and t["finished"].endswith("+00:00")
    assert read_trials(tmp_path / "straight" / "trials.jsonl") == straight

    first = Counting()
    run_trials(make(), first, tmp_path / "run", 3, seed=10, latency=model)
    second = Counting()
    resumed = run_trials(make(), second, tmp_path / "run", 6, seed=10, latency=model)
    assert len(first.calls) == 3 and len(second.calls) == 3  # nothing evaluated twice
    assert [t["arch"] for t in resumed] == [t["arch"] for t in straight]
    settings = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert settings["selector"]["seed"] == 1 and settings["evaluator"] == {"evaluator": "counting"}


def test_a_torn_last_line_is_dropped_a_corrupt_middle_line_is_an_error(tmp_path):
    space, cfg, _ = _model("proxyless")
    run = tmp_path / "run"
    run_trials(RandomSelector(space, cfg, seed=0), Counting(), run, 3)
    path = run / "trials.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines) + "\n" + lines[0][:25])  # killed while writing trial 3
    again = Counting()
    trials = run_trials(RandomSelector(space, cfg, seed=0), again, run, 4)
    assert len(trials) == 4 and len(again.calls) == 1
    assert [json.loads(x)["trial"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]
    path.write_text(lines[0] + "\n{oops\n" + lines[2] + "\n")
    with pytest.raises(ValueError) as e:
        run_trials(RandomSelector(space, cfg, seed=0), Counting(), run, 4)
    assert "trials.jsonl:2:" in str(e.value) and "\n" not in str(e.value)

    path.write_bytes(("\n".join(lines[:2]) + "\n").encode() + b'{"trial": 2, "arch": ["\xc3')  # torn mid-character
    assert [t["trial"] for t in read_trials(path)] == [0, 1]
    assert path.read_text() == "\n".join(lines[:2]) + "\n"  # cut exactly at the last full line (bytes)
    path.write_text("\n".join(lines[:2]) + '\n{"arch": []}\n' + lines[2] + "\n")
    with pytest.raises(ValueError, match="trials.jsonl:3:"):  # parses, but is no trial record
        read_trials(path)


def test_resume_refuses_another_seed_or_evaluator(tmp_path):
    space, cfg, _ = _model("proxyless")
    run_trials(RandomSelector(space, cfg, seed=0), Counting(), tmp_path, 2)
    with pytest.raises(ValueError, match="selector setting 'seed' = 0 \\(now 1\\)") as e:
        run_trials(RandomSelector(space, cfg, seed=1), Counting(), tmp_path, 3)
    assert "selection.json" in str(e.value) and "\n" not in str(e.value)

    path = tmp_path / "trials.jsonl"  # same settings, but the record is not what this selector proposes
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["arch"] = space.sample(random.Random(99), cfg)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="trial 1 was written by another selector or seed") as e:
        run_trials(RandomSelector(space, cfg, seed=0), Counting(), tmp_path, 3)
    assert "\n" not in str(e.value)

    class Other(Counting):
        def settings(self):
            return {"evaluator": "other"}

    with pytest.raises(ValueError, match="evaluator"):
        run_trials(RandomSelector(space, cfg, seed=0), Other(), tmp_path, 3)


def test_a_selector_that_repeats_itself_stops_after_max_tries(tmp_path, caplog):
    class Stuck(Selector):
        name = "stuck"

        def __init__(self, archs):
            self.archs, self.i = archs, 0

        def ask(self):
            self.i += 1
            return self.archs[min(self.i - 1, len(self.archs) - 1)]

        def settings(self):
            return {"selector": "stuck"}

    space, cfg, _ = _model("proxyless")
    a, b = space.sample(random.Random(0), cfg), space.sample(random.Random(1), cfg)
    ev = Counting()
    with caplog.at_level("WARNING", logger="hwnas.selection"):
        trials = run_trials(Stuck([a, a, b]), ev, tmp_path / "stuck", 5, max_tries=20)
    assert [t["arch"] for t in trials] == [a, b] and ev.calls == [a, b]
    assert "only 2 distinct architectures in 20 proposals" in caplog.text

    class Dry(Stuck):  # runs out: ask() -> None ends the loop without a warning
        def ask(self):
            self.i += 1
            return self.archs[self.i - 1] if self.i <= len(self.archs) else None

    caplog.clear()
    done = []
    trials = run_trials(Dry([a, b]), Counting(), tmp_path / "dry", 5, progress=lambda i, n: done.append((i, n)))
    assert [t["arch"] for t in trials] == [a, b] and done == [(1, 5), (2, 5)]
    assert "distinct" not in caplog.text


def test_supernet_path_scores_a_path_with_recalibrated_batchnorm():
    space, cfg, _ = _model("proxyless")
    torch.manual_seed(0)
    s = get_strategy("proxyless").build(space, cfg, 32, 4)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(3)]
    layers = space.sample(random.Random(0), cfg)
    ev = SupernetPath(s, batches, batches, "cpu", calibration_batches=2)
    r = ev.evaluate(layers, 0)
    assert 0.0 <= r["accuracy"] <= 1.0
    bn = next(m for m in s.supernet.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 2  # recalibrated on exactly two batches
    assert ev.settings() == {"evaluator": "supernet_path", "calibration_batches": 2}


@pytest.mark.slow
def test_train_from_scratch_trains_each_trial_into_its_own_directory(tmp_path):
    cfg = {"width_mult": 0.25, "num_classes": 10}
    space = get_space("proxyless")
    layers = space.sample(random.Random(0), space.resolve_config(cfg))
    ev = TrainFromScratch("proxyless", cfg, tmp_path, epochs=1, batch_size=256)
    r = ev.evaluate(layers, 0)
    assert set(r) == {"accuracy", "test_acc", "params"} and 0 <= r["accuracy"] <= 1 and r["params"] > 0
    assert len(list(tmp_path.glob("trial-*/train.json"))) == 1
