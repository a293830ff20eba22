"""The DenseNAS space (hwnas/spaces/dense.py) on small configs, against brute force: the chained expected
latency is the table sum of the network on the path for one-hot weights and the exact expectation over all
(path, ops) for soft ones (float64), its gradient matches finite differences, the Viterbi and the windowed
derivations pick what exhaustive search picks, and malformed architectures and configs are refused by name."""
import itertools
import math
import random

import numpy as np
import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces.chain import ArchError
from hwnas.spaces.dense import OFF, DenseSpace
from helpers import synthetic_table

SMALL = {"stem": 8, "first": {"token": "k3e1", "c": 8},
         "stages": [{"c": [8, 16], "s": 2, "n": 1}, {"c": [16, 24], "s": 2, "n": 1}, {"c": [32, 40], "s": 2, "n": 0}],
         "reach": 3, "head": 48, "resolution": 32, "num_classes": 10, "act": "relu6", "dropout": 0.0}
SPACE = DenseSpace("dense-test", ("k3e3", "k5e6"), SMALL, "test")


@pytest.fixture(scope="module")
def model():
    cfg = SPACE.resolve_config(None)
    return LatencyModel(synthetic_table(SPACE, cfg), SPACE, cfg)


def every_arch(space, cfg):
    """Every architecture, by brute force: every path, then every op of every layer on it."""
    st = space.structure(cfg)
    decisions = space.decisions(cfg)

    def paths(n):
        if st.route[n] is None:
            yield [n]
            return
        for j in st.nodes[n].successors:
            for rest in paths(j):
                yield [n] + rest

    for path in paths(0):
        slots = []
        for n, nxt in zip(path, path[1:] + [None]):
            slots += [(i, [t for t in decisions[i].choices if t != OFF]) for i in st.stack[n]]
            if nxt is not None:
                r = st.route[n]
                slots.append((r, [t for t in decisions[r].choices if t.startswith(f"to{nxt}:")]))
        for combo in itertools.product(*(c for _, c in slots)):
            layers = [OFF] * len(decisions)
            for (i, _), t in zip(slots, combo):
                layers[i] = t
            yield layers


def soft_probs(model, seed, requires_grad=False):
    """Random float64 distributions per decision, ``-`` given probability 0 (as a search gives it)."""
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(len(c), generator=g, dtype=torch.float64) for c in model.choices]
    for lg, c in zip(logits, model.choices):
        if OFF in c:
            lg[c.index(OFF)] = -math.inf
        lg.requires_grad_(requires_grad)
    return logits


def log_prob(model, logits, layers):
    lp = [torch.log_softmax(x.detach(), 0) for x in logits]
    return sum(float(lp[i][model.choices[i].index(t)]) for i, t in enumerate(layers) if t != OFF)


def test_the_space_enumerates_paths_and_ops_as_designed():
    cfg = SPACE.resolve_config(None)
    nodes = SPACE.nodes(cfg)
    assert [(n.width, n.res, n.stage) for n in nodes] == [(8, 16, 0), (8, 8, 1), (16, 8, 1), (16, 4, 2), (24, 4, 2),
                                                          (32, 2, 3), (40, 2, 3), (48, 2, 4)]
    # the next `reach` nodes up to the first more than one stage ahead; the sink (7) after the last stage
    assert [n.successors for n in nodes] == [(1, 2), (2, 3, 4), (3, 4), (4, 5, 6), (5, 6), (6, 7), (7,), ()]
    archs = list(every_arch(SPACE, cfg))
    assert len({tuple(a) for a in archs}) == len(archs)
    for a in archs[:: max(1, len(archs) // 40)]:
        SPACE.check_layers(cfg, a)


def test_one_hot_weights_give_the_table_sum_of_the_derived_chain(model):
    """E[LAT] of a one-hot distribution = the dense table sum = the chain space's table sum of the network on
    the path, and the child the chain builds runs."""
    cfg = SPACE.resolve_config(None)
    table = synthetic_table(SPACE, cfg)
    rng = random.Random(0)
    for _ in range(12):
        a = SPACE.sample(rng, cfg)
        probs = [torch.tensor([1.0 if t == tok else 0.0 for t in c], dtype=torch.float64) for c, tok in zip(model.choices, a)]
        expected = float(model.expected(probs))
        chain_cfg, tokens = SPACE.to_chain(a, cfg)
        chain_sum = LatencyModel(table, SPACE.chain, chain_cfg).of_tokens(tokens)
        assert expected == pytest.approx(model.of_tokens(a), rel=1e-12, abs=1e-12)
        assert expected == pytest.approx(chain_sum, rel=1e-12, abs=1e-12)
    net = SPACE.build_child(a, cfg, 32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_soft_weights_give_the_exact_expectation_over_every_network(model):
    """The chained estimate is E[LAT] under the distribution it describes: the sum over every (path, ops) of
    its probability times its table sum (float64)."""
    cfg = SPACE.resolve_config(None)
    logits = soft_probs(model, 1)
    probs = [torch.softmax(x, 0) for x in logits]
    brute, mass = 0.0, 0.0
    for a in every_arch(SPACE, cfg):
        p = math.exp(log_prob(model, logits, a))
        brute += p * model.of_tokens(a)
        mass += p
    assert mass == pytest.approx(1.0, abs=1e-12)
    assert float(model.expected(probs)) == pytest.approx(brute, rel=1e-12)


def test_the_gradient_of_the_chained_estimate_matches_finite_differences(model):
    logits = soft_probs(model, 2)
    finite = [torch.where(torch.isinf(x), torch.zeros_like(x), x).requires_grad_() for x in logits]
    masks = [torch.isinf(x) for x in logits]

    def f(*xs):
        return model.expected([torch.softmax(x.masked_fill(m, -math.inf), 0) for x, m in zip(xs, masks)])

    assert torch.autograd.gradcheck(f, tuple(finite), eps=1e-6, atol=1e-8)


def test_the_unconstrained_derivation_is_the_viterbi_path_then_argmax(model):
    cfg = SPACE.resolve_config(None)
    st = SPACE.structure(cfg)
    for seed in range(5):
        logits = soft_probs(model, 10 + seed)
        lp = [torch.log_softmax(x, 0).numpy() for x in logits]
        got = SPACE.derive(model.choices, lp)

        def route_score(a):
            return sum(lp[r][model.choices[r].index(a[r])] for r in st.route if r is not None and a[r] != OFF)

        best = max(every_arch(SPACE, cfg), key=lambda a: (route_score(a), log_prob(model, logits, a)))
        assert got == best


@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_the_windowed_derivation_is_the_most_probable_network_in_the_window(model, fraction):
    cfg = SPACE.resolve_config(None)
    (lo, lo_t), (hi, hi_t) = model.extremes()
    archs = list(every_arch(SPACE, cfg))
    lats = [model.of_tokens(a) for a in archs]
    assert lo == pytest.approx(min(lats)) and hi == pytest.approx(max(lats))
    target = lo + fraction * (hi - lo)
    for seed in range(3):
        logits = soft_probs(model, 20 + seed)
        lp = [torch.log_softmax(x, 0).numpy() for x in logits]
        got = model.derive_within(lp, 0.9 * target, target)
        SPACE.check_layers(cfg, got)
        assert 0.9 * target <= model.of_tokens(got) <= target
        # exact up to the latency grid (20000 bins, at most one bin of rounding per layer): nothing well inside
        # the window is more probable
        slack = 20 * target / 20000
        inside = [a for a, t in zip(archs, lats) if 0.9 * target + slack <= t <= target - slack]
        assert len(inside) > 5
        assert log_prob(model, logits, got) >= max(log_prob(model, logits, a) for a in inside) - 1e-9


def test_samples_and_mutations_are_legal_networks_that_move(model):
    cfg = SPACE.resolve_config(None)
    rng = random.Random(4)
    seen = set()
    a = SPACE.sample(rng, cfg)
    for _ in range(200):
        m = SPACE.mutate(a, rng, cfg)
        SPACE.check_layers(cfg, m)
        assert m != a
        seen.add(tuple(SPACE.path_nodes(cfg, m)))
        a = m
    assert len(seen) >= 5  # mutation re-routes, not only re-ops
    assert len({tuple(SPACE.sample(rng, cfg)) for _ in range(30)}) > 20


def test_every_token_has_its_row_and_the_profiled_blocks_build():
    cfg = SPACE.resolve_config(None)
    terms = SPACE.latency_terms(cfg)
    profiled = {sig: (build, shape) for sig, build, shape in SPACE.profiled_blocks(cfg)}
    needed = {s for row in terms.signatures for ks in row for s in ks} | {s for _, ks in terms.fixed for s in ks}
    assert needed == set(profiled)
    assert "k5e6:8>16:s1:r8:relu6" in profiled and "k3e3:16>24:s1:r4:relu6" in profiled  # a width change in a stage
    assert {"head:32>48:s1:r2:relu6", "head:40>48:s1:r2:relu6"} <= set(profiled)  # the 1x1 conv from either width
    assert not [s for s in profiled if s.startswith("skip")]  # every skip here is an identity: no row
    build, shape = profiled["k5e6:8>16:s2:r16:relu6"]
    assert build()(torch.randn(1, *shape)).shape == (1, 16, 8, 8)


def test_malformed_architectures_are_refused_by_name():
    cfg = SPACE.resolve_config(None)
    a = SPACE.sample(random.Random(0), cfg)
    with pytest.raises(ArchError, match=r"layers \(tokens\) but its"):
        SPACE.check_layers(cfg, a[:-1])
    with pytest.raises(ArchError, match="route 0: token 'to3:k3e3' is not a candidate here"):
        SPACE.check_layers(cfg, ["to3:k3e3"] + a[1:])
    path = SPACE.path_nodes(cfg, a)
    st = SPACE.structure(cfg)
    off = next(n for n in range(1, 5) if n not in path and st.stack[n])
    bad = list(a)
    bad[st.stack[off][0]] = "k3e3"
    with pytest.raises(ArchError, match=f"block {off} is off the path"):
        SPACE.check_layers(cfg, bad)
    bad = list(a)
    bad[st.stack[path[1]][0]] = OFF
    with pytest.raises(ArchError, match=f"block {path[1]} is on the path"):
        SPACE.check_layers(cfg, bad)


@pytest.mark.parametrize("change, message", [
    ({"reach": 1, "stages": [{"c": [8], "s": 2, "n": 1}, {"c": [16], "s": 2, "n": 2}]}, None),
    ({"stages": [{"c": [8], "s": 2, "n": 1}, {"c": [16], "s": 3, "n": 1}]}, "stage 2 = "),
    ({"stages": [{"c": [], "s": 2, "n": 1}]}, "stage 1 = "),
    ({"stages": [{"c": [8], "s": 2, "n": -1}]}, "stage 1 = "),
    ({"reach": 0}, "reach=0 must be a positive integer"),
    ({"stages": []}, "stages must be a non-empty list"),
    ({"widths": [1]}, "unknown config key"),
])
def test_configs_are_checked(change, message):
    if message is None:
        SPACE.resolve_config(change)  # a plain chain: one path
        return
    with pytest.raises(ArchError, match=message):
        SPACE.resolve_config(change)


def test_crossover_joins_two_paths_at_a_shared_node():
    cfg = SPACE.resolve_config(None)
    rng = random.Random(7)
    seen = set()
    for _ in range(50):
        a, b = SPACE.sample(rng, cfg), SPACE.sample(rng, cfg)
        c = SPACE.crossover(a, b, rng, cfg)
        SPACE.check_layers(cfg, c)
        pa, pb, pc = (SPACE.path_nodes(cfg, x) for x in (a, b, c))
        cut = next(k for k, n in enumerate(pc) if n in pb and pc[k:] == pb[pb.index(n):])  # b's tail ...
        assert pc[:cut] == pa[:cut]  # ... after a's head
        seen.add((tuple(pc) != tuple(pa), tuple(pc) != tuple(pb)))
    assert (True, True) in seen  # children differ from both parents


@pytest.mark.parametrize("name", ["random", "evolution", "bo", "rl"])
def test_multi_trial_selectors_propose_legal_paths_in_the_window(model, name):
    """Every multi-trial selector on the routed space: legal networks (a path, '-' off it), under T, none
    proposed twice by the selectors that promise it; the told metric rewards wide blocks so a learning selector has a signal."""
    pytest.importorskip("optuna")
    from hwnas.selection import get_selector

    cfg = SPACE.resolve_config(None)
    (lo, _), (hi, _) = model.extremes()
    window = (lo + 0.3 * (hi - lo), lo + 0.6 * (hi - lo))
    sel = get_selector(name)(SPACE, cfg, seed=3, latency=model, window=window)
    seen = set()
    for _ in range(25):
        layers = sel.ask()
        SPACE.check_layers(cfg, layers)
        assert model.of_tokens(layers) <= window[1] + 1e-9  # held to T before evaluation
        assert tuple(layers) not in seen or name in ("random", "rl")
        seen.add(tuple(layers))
        widths = [SPACE.nodes(cfg)[n].width for n in SPACE.path_nodes(cfg, layers)]
        sel.tell(layers, {"accuracy": sum(widths) / 100.0})
    assert len(seen) > 10


def test_the_covering_puts_every_token_on_some_path():
    cfg = SPACE.resolve_config(None)
    decisions = SPACE.decisions(cfg)
    archs = SPACE.cover(random.Random(0), cfg, 2)
    for a in archs:
        SPACE.check_layers(cfg, a)
    want = {(i, t) for i, d in enumerate(decisions) for t in d.choices}
    got = {(i, t) for a in archs for i, t in enumerate(a)}
    assert got == want
    # the source and a one-width stage are on every path: no '-' there
    assert OFF not in decisions[SPACE.structure(cfg).route[0]].choices and OFF in decisions[-1].choices
    assert len(archs) < 4 * len(want)  # walks cover several tokens each


def test_residual_blocks_start_as_the_identity_in_the_child_and_the_supernet_only_on_this_space():
    from hwnas.blocks import MBConv
    from hwnas.mixed.binary_gate import BinaryGatedOp
    from hwnas.spaces.definitions import PROXYLESS

    cfg = SPACE.resolve_config(None)
    rng = random.Random(3)
    child = SPACE.build_child(SPACE.sample(rng, cfg), cfg, resolution=32)
    supernet = SPACE.build_supernet(cfg, BinaryGatedOp, resolution=32)
    for net in (child, supernet):
        blocks = [m for m in net.modules() if isinstance(m, MBConv)]
        residual = [m for m in blocks if m.use_residual]
        assert residual and len(residual) < len(blocks)
        for m in blocks:
            gamma = m.body[-1][1].weight
            assert torch.equal(gamma, torch.zeros_like(gamma) if m.use_residual else torch.ones_like(gamma))
    x = torch.randn(2, residual[0].body[0][0].in_channels, 8, 8)
    assert torch.equal(residual[0].train()(x), x)  # x + BN(...) with gamma 0 and beta 0
    chain = [m for m in PROXYLESS.build_child(PROXYLESS.sample(rng), PROXYLESS.defaults).modules()
             if isinstance(m, MBConv) and m.use_residual]
    assert chain and all(bool((m.body[-1][1].weight == 1).all()) for m in chain)  # the chain spaces keep theirs
