"""Single-Path NAS: the superkernel layer computes exactly the child it selects, the runtime model is
the table's latency of that child, thresholds are architecture parameters only, and a search ends in a
valid Arch of the space within the target window."""
import math
import random

import pytest
import torch

from hwnas.latency.penalty import LatencyModel
from hwnas.mixed.superkernel import SuperkernelOp
from hwnas.search import Search, SearchConfig
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import get_strategy
from hwnas.strategies.spnas import spnas_loss
from helpers import synthetic_table


def make(space="spnas", target=None, **opts):
    sp = get_space(space)
    cfg = sp.resolve_config({"width_mult": 0.25, "num_classes": 4})
    lat = LatencyModel(synthetic_table(sp, cfg), sp, cfg)
    torch.manual_seed(0)
    return get_strategy("spnas").build(sp, cfg, 32, 4, latency=lat, target_ms=target, **opts), lat


@pytest.mark.parametrize("space", ["spnas", "proxyless"])
def test_fixed_decisions_compute_exactly_the_cropped_child(space):
    s, _ = make(space)
    s.sample_weight_path()  # move BN statistics and weights off their init first
    s.supernet.train()
    with torch.no_grad():
        s.supernet(torch.randn(8, 3, 32, 32))
    rng = random.Random(3)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        tokens = [rng.choice(c) for c in s.supernet.choices]
        s.set_eval_path(tokens)
        s.supernet.eval()
        child = build_child(Arch(space, s.supernet.config, tokens), resolution=32).eval()
        child.load_state_dict(s.supernet.child_state_dict(tokens))  # strict: every child tensor is there
        with torch.no_grad():
            got, want = s.supernet(x), child(x)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max())), tokens


def test_search_starts_from_the_largest_child_and_the_runtime_is_the_tables():
    s, lat = make()
    tokens = s.derive()
    assert tokens == [max((t for t in c if t != "skip"), key=lambda t: (t[1], t[3])) for c in s.supernet.choices]
    assert float(s.expected_latency().detach()) == pytest.approx(lat.of_tokens(tokens), rel=1e-6)
    assert float(s.expected_latency().detach()) == pytest.approx(lat.extremes()[1][0], rel=1e-6)
    probs = s.probabilities()
    assert all(torch.isclose(p.sum(), torch.tensor(1.0)) for p in probs)  # a distribution per layer
    scores = s.log_probabilities()
    assert [c[int(p.argmax())] for c, p in zip(s.supernet.choices, scores)] == tokens
    # a skip-able layer: skip's score is its best inner state, not the sum over all four
    i = next(i for i, c in enumerate(s.supernet.choices) if "skip" in c)
    z = [float(v.detach()) for v in s.supernet.mixed[i].margins() if v is not None]  # z5, z_e6, z_skip
    sig = [1 / (1 + math.exp(-v)) for v in z]
    skip = s.supernet.choices[i].index("skip")
    assert math.exp(scores[i][skip]) == pytest.approx((1 - sig[2]) * max(sig[0], 1 - sig[0]) * max(sig[1], 1 - sig[1]))


def test_thresholds_are_architecture_parameters_only():
    s, _ = make()
    weights = {id(p) for p in s.supernet.parameters()}
    assert s.arch_parameters() and all(id(t) not in weights for t in s.arch_parameters())
    assert len(s.alpha) == 0


def test_runtime_gradient_reaches_every_threshold():
    s, lat = make()
    s._set(detach=False)
    r = s.runtime()
    grads = torch.autograd.grad(torch.log(r), s.arch_parameters(), allow_unused=True)
    # raising a threshold can only turn a decision off, which makes the network faster
    used = [g for g in grads if g is not None and float(g.abs().sum()) > 0]
    assert len(used) == len(s.thresholds)
    assert all(float(g.max()) >= 0 for g in used)


def test_spnas_loss_known_answer():
    ce = torch.tensor(1.5)
    assert float(spnas_loss(ce, torch.tensor(math.e ** 2))) == pytest.approx(1.5 + 0.02 * 2)
    assert float(spnas_loss(ce, torch.tensor(math.e), lam=0.5)) == pytest.approx(2.0)


def test_a_strong_runtime_term_switches_decisions_off():
    s, lat = make(**{"lambda": 50.0, "arch_lr": 2.0})
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    start = float(s.expected_latency().detach())
    for _ in range(15):
        m = s.arch_step(x, y)
    assert m["expected_latency_ms"] < 0.8 * start
    assert lat.of_tokens(s.derive()) == pytest.approx(m["expected_latency_ms"], rel=1e-3)


def test_fbnet_space_is_refused_with_the_layer_named():
    with pytest.raises(ValueError, match=r"kernel x expansion grid .*k3e1"):
        make("fbnet")
    with pytest.raises(ValueError, match="kernel x expansion grid"):
        SuperkernelOp.build(("k3e3", "k5e6"), lambda t: None)  # not a full grid


def test_spnas_search_end_to_end_meets_the_target(tmp_path):
    cfg = SearchConfig(method="spnas", space="spnas", latency_target="50%", epochs=2, warmup_epochs=1,
                       batch_size=128, config={"width_mult": 0.25}, data="digits", device="cpu")
    summary = Search(cfg, tmp_path / "run", table=lambda sp, c: synthetic_table(sp, c)).run()
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    arch = Arch.load(tmp_path / "run" / "arch.json")
    assert arch.space == "spnas" and arch.layers == summary["arch"]
    child = build_child(arch)
    child.load_state_dict(torch.load(tmp_path / "run" / "child.pt"))  # the inherited, cropped weights
