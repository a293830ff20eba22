"""FBNet: Gumbel-softmax sampling, temperature schedule, loss, the shared latency multiplier, and one
search end to end."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwnas.latency.predictor import LatencyModel
from hwnas.mixed.weighted_sum import WeightedSumOp
from hwnas.objective import LatencyMultiplier
from hwnas.api import build_search
from hwnas.searching import SearchConfig
from hwnas.spaces import Arch, get_space
from hwnas.strategies import STRATEGIES, FactorizedStrategy, get_strategy
from hwnas.strategies.fbnet import fbnet_loss, temperature
from helpers import synthetic_table

SMALL = {"width_mult": 0.25, "num_classes": 4}

#: The gradient methods of the chain spaces (the sampling methods are covered by test_sampling_methods.py).
#: (densenas needs routes, which only its own space has: tests/test_dense_space.py)
GRADIENT_CHAIN_METHODS = sorted(m for m, c in STRATEGIES.items()
                                if c.spaces is None and issubclass(c, FactorizedStrategy)
                                and all(c.applies_to(get_space(s)) for s in ("proxyless", "fbnet", "spnas")))


def make(method="fbnet", space="fbnet", target=None, **opts):
    sp = get_space(space)
    cfg = sp.resolve_config(SMALL)
    lat = LatencyModel(synthetic_table(sp, cfg), sp, cfg)
    torch.manual_seed(0)
    return get_strategy(method).build(sp, cfg, 32, 4, latency=lat, target_ms=target, **opts), lat


def test_temperature_schedule_is_the_papers():
    assert temperature(0) == 5.0
    assert temperature(10) == pytest.approx(5.0 * math.exp(-0.45))
    assert temperature(3, tau0=2.0, decay=0.1) == pytest.approx(2.0 * math.exp(-0.3))
    s, _ = make()
    s.on_epoch_start(20)
    assert s.tau == pytest.approx(5.0 * math.exp(-0.9))


def test_gumbel_samples_follow_the_softmax():
    """Gumbel-max: argmax of a sample is distributed as softmax(theta); soft samples sum to one."""
    s, _ = make()
    with torch.no_grad():
        s.alpha[0].copy_(torch.log(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005])))
    s.tau = 1.0
    torch.manual_seed(3)
    n = 20000
    counts = np.zeros(len(s.alpha[0]))
    for _ in range(n // 500):
        samples = F.gumbel_softmax(s.alpha[0].detach().expand(500, -1), tau=s.tau, hard=False)
        assert torch.allclose(samples.sum(-1), torch.ones(500))
        counts += np.bincount(samples.argmax(-1).numpy(), minlength=len(counts))
    np.testing.assert_allclose(counts / n, torch.softmax(s.alpha[0].detach(), 0).numpy(), atol=0.012)
    m = s.gumbel_samples()
    assert len(m) == len(s.alpha) and all(x.requires_grad for x in m)


def test_fbnet_loss_known_answer_and_gradient():
    ce = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    lat = torch.tensor(math.exp(2.0), dtype=torch.float64, requires_grad=True)
    loss = fbnet_loss(ce, lat)
    assert float(loss.detach()) == pytest.approx(2.0 * 0.2 * 2.0 ** 0.6)
    loss.backward()
    # d/dLAT [CE a log(LAT)^b] = CE a b log(LAT)^(b-1) / LAT
    assert float(lat.grad) == pytest.approx(2.0 * 0.2 * 0.6 * 2.0 ** -0.4 / math.exp(2.0))
    assert float(ce.grad) == pytest.approx(0.2 * 2.0 ** 0.6)
    with pytest.raises(ValueError, match="needs LAT above 1 ms"):
        fbnet_loss(ce, torch.tensor(0.8, dtype=torch.float64))


def test_weight_step_runs_every_candidate_and_leaves_theta_alone():
    s, _ = make()
    s.sample_weight_path()
    assert all(op.active is None and not op.weights.requires_grad for op in s.supernet.mixed)
    s.supernet(torch.randn(2, 3, 32, 32)).sum().backward()
    for op in s.supernet.mixed:
        for cand in op.candidates:
            assert all(p.grad is not None for p in cand.parameters())
    assert all(a.grad is None for a in s.alpha)


def test_arch_step_moves_theta_only_with_the_sampled_latency():
    s, lat = make()  # no target: the paper's loss CE * 0.2 * log(LAT)^0.6
    weights = [p.detach().clone() for p in s.supernet.parameters()]
    before = [a.detach().clone() for a in s.alpha]
    m = s.arch_step(torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,)))
    assert {"arch_loss", "arch_ce", "temperature", "sampled_latency_ms", "expected_latency_ms"} <= set(m)
    assert "latency_multiplier" not in m
    assert m["arch_loss"] == pytest.approx(m["arch_ce"] * 0.2 * math.log(m["sampled_latency_ms"]) ** 0.6, rel=1e-5)
    assert all(torch.equal(w, p.detach()) for w, p in zip(weights, s.supernet.parameters()))
    assert all(not torch.equal(b, a.detach()) for b, a in zip(before, s.alpha))
    assert all(p.grad is None for p in s.supernet.parameters())


def test_eval_path_runs_one_candidate():
    s, _ = make()
    tokens = [c[-1] for c in s.supernet.choices]
    s.set_eval_path(tokens)
    calls = []
    for op in s.supernet.mixed:
        for ci, cand in enumerate(op.candidates):
            cand.register_forward_hook(lambda mod, i, o, ci=ci: calls.append(ci))
    s.supernet(torch.randn(1, 3, 32, 32))
    assert calls == [len(c) - 1 for c in s.supernet.choices]


def test_weighted_sum_op_refuses_to_run_unset():
    op = WeightedSumOp(("a", "b"), [torch.nn.Identity(), torch.nn.Identity()])
    with pytest.raises(RuntimeError, match="neither weights nor an active path"):
        op(torch.randn(2))
    op.weights = torch.tensor([0.25, 0.75])
    x = torch.randn(5)
    assert torch.allclose(op(x), x)


# --------------------------------------------------------------------------------------------- multiplier


def test_multiplier_dual_ascent_known_steps():
    m = LatencyMultiplier(10.0, step=0.5, aim=0.95)
    assert float(m.violation(torch.tensor(9.5))) == pytest.approx(0.0)
    assert m.update(19.0) == pytest.approx(0.5 * (19.0 / 9.5 - 1))  # too slow: grows
    assert m.update(4.75) == pytest.approx(0.5 - 0.25)  # budget left: shrinks
    e = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    m.penalty(e).backward()
    assert float(e.grad) == pytest.approx(0.25 / 9.5)
    restored = LatencyMultiplier(10.0)
    restored.load_state_dict(m.state_dict())
    assert float(restored.lam) == pytest.approx(0.25)
    for bad in ({"target_ms": 0}, {"target_ms": 1, "aim": 1.5}, {"target_ms": 1, "step": -1}):
        with pytest.raises(ValueError):
            LatencyMultiplier(**bad)


@pytest.mark.parametrize("method", GRADIENT_CHAIN_METHODS)
def test_every_method_steers_with_the_multiplier_under_a_target(method):  # the DARTS family: test_registry.py
    s, lat = make(method=method, space="spnas")
    s.target_ms = lat.extremes()[0][0] * 1.05  # near the fastest: far below the expected latency
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    lams = [s.arch_step(x, y)["latency_multiplier"] for _ in range(3)]
    assert lams[0] > 0 and lams[0] < lams[1] < lams[2]  # too slow: the multiplier keeps growing
    assert "multiplier.lam" in s.state_dict()


# --------------------------------------------------------------------------------------------- search


@pytest.mark.slow
def test_fbnet_search_end_to_end_meets_the_target_and_resumes(tmp_path):
    sp = get_space("fbnet")

    def table(space, deploy_config):
        return synthetic_table(space, deploy_config)

    cfg = SearchConfig(method="fbnet", space="fbnet", latency_target="40%", epochs=2, warmup_epochs=1,
                       batch_size=128, config={"width_mult": 0.25}, data="digits", device="cpu")
    first = build_search(cfg, tmp_path / "run", table=table)
    first.cfg.epochs = 1
    first.run()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2
    cfg.epochs = 2
    summary = build_search(cfg, tmp_path / "run", table=table).run()  # resumes at epoch 1
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "temperature" in rows[0] and "latency_multiplier" in rows[0]
    assert 0.9 * summary["target_ms"] <= summary["predicted_latency_ms"] <= summary["target_ms"]
    arch = json.loads((tmp_path / "run" / "arch.json").read_text())
    assert Arch.from_dict(arch).layers == summary["arch"] and arch["space"] == sp.name


#: (method, space) pairs that cannot work, and the message that says why.
REFUSED = {("spnas", "fbnet"): "kernel x expansion grid"}


@pytest.mark.parametrize("space", ["proxyless", "fbnet", "spnas"])
@pytest.mark.parametrize("method", GRADIENT_CHAIN_METHODS)
def test_every_method_takes_a_weight_and_an_arch_step_on_every_space(method, space):  # all pairs: test_registry
    if (method, space) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[(method, space)]):
            make(method=method, space=space)
        return
    s, lat = make(method=method, space=space, target=None)
    s.target_ms = lat.extremes()[1][0] * 0.8
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    s.sample_weight_path()
    F.cross_entropy(s.supernet(x), y).backward()
    assert any(p.grad is not None for p in s.supernet.parameters())
    before = [a.detach().clone() for a in s.alpha]
    metrics = s.arch_step(x, y)
    assert metrics["expected_latency_ms"] > 0 and np.isfinite(metrics["arch_loss"])
    assert all(not torch.equal(b, a.detach()) for b, a in zip(before, s.alpha))
    tokens = s.derive()
    assert Arch(space, s.supernet.config, tokens).layers == tokens
