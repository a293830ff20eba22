"""Single-Path NAS: the superkernel layer computes exactly the child it selects, the runtime model is
the table's latency of that child, thresholds are architecture parameters only, and a search ends in a
valid Arch of the space within the target window."""
import math
import random

import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.mixed.superkernel import SuperkernelOp
from hwnas.api import build_search
from hwnas.searching import SearchConfig
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
    with pytest.raises(ValueError, match=r"space .fbnet., layer 0: .*kernel x expansion grid .*k3e1"):
        make("fbnet")
    with pytest.raises(ValueError, match="kernel x expansion grid"):
        SuperkernelOp.build(("k3e3", "k5e6"), lambda t: None)  # not a full grid


def test_spnas_search_end_to_end_meets_the_target(tmp_path):
    cfg = SearchConfig(method="spnas", space="spnas", latency_target="50%", epochs=2, warmup_epochs=1,
                       batch_size=128, config={"width_mult": 0.25}, data="digits", device="cpu")
    summary = build_search(cfg, tmp_path / "run", table=lambda sp, c: synthetic_table(sp, c)).run()
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    arch = Arch.load(tmp_path / "run" / "arch.json")
    assert arch.space == "spnas" and arch.layers == summary["arch"]
    child = build_child(arch)
    child.load_state_dict(torch.load(tmp_path / "run" / "child.pt"))  # the inherited, cropped weights


def _hand_set(op, k5: bool, e6: bool, keep: bool) -> torch.Tensor:
    """Thresholds one unit below (decision on) or above (off) each norm; the e6 and skip norms are taken
    on the weight masked by the chosen kernel size, as the indicators take them."""
    pick = lambda on, n: n - 1.0 if on else n + 1.0  # noqa: E731
    t5 = pick(k5, float(op.margins(torch.zeros(4))[0].detach()))
    _, _, ze, zs = op.margins(torch.tensor([t5, 0.0, 0.0, 0.0]))  # z = the masked norms when t = 0
    return torch.tensor([t5, 0.0, pick(e6, float(ze.detach())), pick(keep, float(zs.detach()))])


@pytest.mark.parametrize("k5,e6,keep,want", [(False, False, True, "k3e3"), (True, False, True, "k5e3"),
                                             (False, True, True, "k3e6"), (True, True, True, "k5e6"),
                                             (True, True, False, "skip")])
def test_hand_set_thresholds_select_exactly_that_candidate(k5, e6, keep, want):
    s, lat = make()
    i = next(i for i, c in enumerate(s.supernet.choices) if "skip" in c)  # a layer with all three decisions
    op = s.supernet.mixed[i]
    t = _hand_set(op, k5, e6, keep)
    with torch.no_grad():
        s.thresholds[i].copy_(t)
    assert s.derive()[i] == want
    weights = op.token_weights()
    assert weights.tolist() == [1.0 if tok == want else 0.0 for tok in op.tokens]
    # and the layer computes that candidate: the same output as fixing the decisions by hand
    x = torch.randn(2, op.block.body[0][0].in_channels, 8, 8)
    op.eval()
    with torch.no_grad():
        learned = op(x)
        op.set_thresholds(op.fixed(want))
        fixed = op(x)
    torch.testing.assert_close(learned, fixed)


def test_runtime_model_against_a_hand_made_table():
    """R for hand-set decisions equals the hand-made LUT's entry, and dR/dt_k5 is the multilinear form's
    derivative times the indicator's straight-through slope -sigmoid'(z5)."""
    s, lat = make()
    i = next(i for i, c in enumerate(s.supernet.choices) if "skip" in c)
    op = s.supernet.mixed[i]
    choices = s.supernet.choices[i]
    known = {"k3e3": 1.0, "k3e6": 2.0, "k5e3": 3.0, "k5e6": 5.0, "skip": 0.0}
    for j, tok in enumerate(choices):
        lat.layer(i)[j] = known[tok]
    with torch.no_grad():
        t = s.thresholds[i].detach().clone()
        z0 = op.margins(t)
        t[0] = float(z0[0]) + t[0] - 0.3  # z5 = +0.3: the 5x5 ring on, close to the boundary
        s.thresholds[i].copy_(t)
    s._set(detach=False)
    z5, _, ze, zs = op.margins()
    d5, de, ds = (float(v.detach() > 0) for v in (z5, ze, zs))
    assert (d5, de, ds) == (1.0, 1.0, 1.0)
    r = s.runtime()
    others = sum(float(lat.layer(j)[s.supernet.choices[j].index(tok)])
                 for j, tok in enumerate(s.derive()) if j != i) + lat.fixed_ms
    assert float(r.detach()) == pytest.approx(others + known["k5e6"], rel=1e-6)  # float32 weights
    (g,) = torch.autograd.grad(r, [s.thresholds[i]])
    sig = torch.sigmoid(z5.detach())
    dR_dd5 = ds * ((1 - de) * (known["k5e3"] - known["k3e3"]) + de * (known["k5e6"] - known["k3e6"]))
    sig_e = torch.sigmoid(ze.detach())
    dR_dde = ds * (d5 * (known["k5e6"] - known["k5e3"]) + (1 - d5) * (known["k3e6"] - known["k3e3"]))
    slope_e = float(sig_e * (1 - sig_e))
    assert float(g[2]) == pytest.approx(-dR_dde * slope_e, rel=1e-4)
    sig_s = torch.sigmoid(zs.detach())
    dR_dds = known["k5e6"] - known["skip"]
    slope_s = float(sig_s * (1 - sig_s))
    assert float(g[3]) == pytest.approx(-dR_dds * slope_s, rel=1e-4)
    # t_k5 moves d5 directly and, through the kernel mask, the e6 and skip norms: dz/dd5 = 2 * (the
    # squared norm of that channel half on the 5x5 ring)
    w = op.dw[0].weight.detach().squeeze(1)
    d = (torch.arange(5) - 2).abs()
    ring = (torch.maximum(d[:, None], d[None, :]) == 2).float()
    s_e, s_s = float((w[op.split:] ** 2 * ring).sum()), float((w[:op.split] ** 2 * ring).sum())
    want = -float(sig * (1 - sig)) * (dR_dd5 + dR_dde * slope_e * 2 * s_e + dR_dds * slope_s * 2 * s_s)
    assert float(g[0]) == pytest.approx(want, rel=1e-4)
