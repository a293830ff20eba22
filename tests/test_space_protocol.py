"""Every registered space against the Space protocol (hwnas/spaces/base.py): sampling, mutation and
encoding give legal architectures, the derivations keep their promises, and the expected latency of a
one-hot distribution is the architecture's own prediction (float64)."""
import random

import numpy as np
import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces import SPACES, Arch, ArchError, get_space
from hwnas.spaces.base import Space
from helpers import synthetic_table

SMALL = {"proxyless": {"width_mult": 0.25}, "fbnet": {"width_mult": 0.25}, "spnas": {"width_mult": 0.25},
         "darts": {"C": 8, "layers": 5, "search_C": 4, "search_layers": 5}, "nb201": {"C": 4, "N": 1},
         "densenas": {"stem": 8, "first": {"token": "k3e1", "c": 8}, "head": 64,
                      "stages": [{"c": [8, 16], "s": 2, "n": 1}, {"c": [16, 24], "s": 2, "n": 2},
                                 {"c": [32, 40], "s": 2, "n": 0}]}}


@pytest.fixture(params=sorted(SPACES))
def space_cfg(request):
    space = get_space(request.param)
    return space, space.resolve_config({**SMALL.get(space.name, {}), "num_classes": 10})


def model_of(space, cfg):
    return LatencyModel(synthetic_table(space, cfg), space, cfg)


def test_every_space_implements_the_protocol(space_cfg):
    space, cfg = space_cfg
    assert isinstance(space, Space)
    decisions = space.decisions(cfg)
    assert len(decisions) == space.num_layers(cfg) > 0
    assert all(d.name and len(d.choices) >= 1 for d in decisions)
    assert [d.choices for d in decisions] == model_of(space, cfg).choices


def test_samples_mutations_and_spread_samples_are_legal(space_cfg):
    space, cfg = space_cfg
    rng = random.Random(0)
    model = model_of(space, cfg)
    layer_ms = [model.layer(i) for i in range(model.num_layers)]
    seen = set()
    for _ in range(20):
        a = space.sample(rng, cfg)
        space.check_layers(cfg, a)
        m = space.mutate(a, rng, cfg)
        space.check_layers(cfg, m)
        assert m != a  # a mutation moves
        if "routes" in space.capabilities:  # ... one step: an op, or a route (the blocks it leaves go to '-')
            assert sum(x != y for x, y in zip(a, m)) == 1 or space.path_nodes(cfg, a) != space.path_nodes(cfg, m)
        else:
            assert sum(x != y for x, y in zip(a, m)) <= 2  # ... one step (a cell edge that moves changes two)
        s = space.sample_spread(rng, cfg, layer_ms)
        space.check_layers(cfg, s)
        seen.add(tuple(a))
    assert len(seen) == 20  # uniform samples of these spaces do not repeat in 20 draws
    assert space.sample(random.Random(3), cfg) == space.sample(random.Random(3), cfg)


def test_spread_sampling_covers_the_latency_range(space_cfg):
    space, cfg = space_cfg
    model = model_of(space, cfg)
    layer_ms = [model.layer(i) for i in range(model.num_layers)]
    rng = random.Random(1)
    (lo, _), (hi, _) = model.extremes()
    spread = [model.of_tokens(space.sample_spread(rng, cfg, layer_ms)) for _ in range(60)]
    uniform = [model.of_tokens(space.sample(rng, cfg)) for _ in range(60)]
    assert np.std(spread) > np.std(uniform)  # what spread sampling is for
    assert lo <= min(spread) and max(spread) <= hi


def test_encoding_is_one_hot_per_decision(space_cfg):
    space, cfg = space_cfg
    a = space.sample(random.Random(2), cfg)
    v = space.encode(a, cfg)
    assert v.shape == (sum(len(d.choices) for d in space.decisions(cfg)),)
    assert v.sum() == len(a) and set(np.unique(v)) <= {0.0, 1.0}
    assert not np.array_equal(v, space.encode(space.mutate(a, random.Random(0), cfg), cfg))


def test_one_hot_expected_latency_is_the_prediction_float64(space_cfg):
    space, cfg = space_cfg
    model = model_of(space, cfg)
    for seed in range(3):
        a = space.sample(random.Random(seed), cfg)
        probs = [torch.tensor([1.0 if t == tok else 0.0 for t in c], dtype=torch.float64, requires_grad=True)
                 for c, tok in zip(model.choices, a)]
        e = model.expected(probs)
        assert e.dtype == torch.float64
        # a cell's absent edges keep weight 1e-6 (the clamp that keeps E[LAT] differentiable), so its kept
        # edges' shares are 1 - O(1e-6); a chain's one-hot expectation is exact
        rel = 1e-5 if space.decision_groups() else 1e-12
        assert float(e.detach()) == pytest.approx(model.of_tokens(a), rel=rel, abs=1e-12)
        e.backward()
        assert all(p.grad is not None for p in probs)


def test_derive_within_keeps_the_window_and_extremes_bound_the_space(space_cfg):
    space, cfg = space_cfg
    model = model_of(space, cfg)
    (lo, fast), (hi, slow) = model.extremes()
    assert lo < hi and model.of_tokens(fast) == lo and model.of_tokens(slow) == hi
    rng = np.random.default_rng(0)
    for frac in (0.3, 0.6):
        t = lo + frac * (hi - lo)
        scores = [rng.gumbel(size=len(c)) for c in model.choices]
        tokens = model.derive_within(scores, 0.9 * t, t)
        space.check_layers(cfg, tokens)
        assert 0.9 * t <= model.of_tokens(tokens) <= t + 1e-9


def test_unconstrained_derivation_is_the_argmax(space_cfg):
    space, cfg = space_cfg
    a = space.sample(random.Random(5), cfg)
    choices = [d.choices for d in space.decisions(cfg)]
    lp = [np.log(np.where(np.array(c) == t, 0.9, 0.1 / max(1, len(c) - 1))) for c, t in zip(choices, a)]
    assert space.derive(choices, lp) == a


def test_child_and_supernet_build_and_run(space_cfg):
    space, cfg = space_cfg
    from hwnas.mixed.weighted_sum import WeightedSumOp

    a = space.sample(random.Random(0), cfg)
    child = space.build_child(a, cfg, resolution=16)
    assert child(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    supernet = space.build_supernet(cfg, WeightedSumOp, resolution=16, num_classes=10)
    assert len(supernet.choices) == len(a)
    assert str(Arch(space.name, cfg, a)).startswith(space.name)


def test_bad_layers_are_refused_in_one_line(space_cfg):
    space, cfg = space_cfg
    a = space.sample(random.Random(0), cfg)
    with pytest.raises(ArchError, match="not a candidate|unknown op"):
        space.check_layers(cfg, ["k9e9"] + a[1:])
    with pytest.raises(ArchError, match="layers|edge tokens"):
        space.check_layers(cfg, a[:-1])


def test_covering_design_on_chain_spaces_and_a_refusal_elsewhere(space_cfg):
    space, cfg = space_cfg
    if not space.chained_blocks:
        with pytest.raises(ValueError, match="covering|chain"):
            space.cover(random.Random(0), cfg, 1)
        with pytest.raises(ValueError, match="in-network"):
            space.block_positions(cfg, space.sample(random.Random(0), cfg))
        return
    for seed in (0, 1):
        rep = space.cover(random.Random(seed), cfg, 1)
        for i, d in enumerate(space.decisions(cfg)):
            assert {a[i] for a in rep} == set(d.choices)
    assert len(space.cover(random.Random(0), cfg, 2)) > len(rep)
