"""Every (strategy, space) pair: allowed pairs run one weight step and one latency-aware architecture step
under a target; the others are refused with a one-line message naming the methods that do apply."""
import pytest
import torch
import torch.nn.functional as F

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces import SPACES, get_space
from hwnas.strategies import STRATEGIES, get_strategy
from hwnas.strategies.sampling import SamplingStrategy
from tests.helpers import synthetic_table

SMALL = {"chain": {"width_mult": 0.25, "num_classes": 4}, "cell": {"search_C": 4, "search_layers": 3, "num_classes": 4},
         "nb201": {"C": 4, "N": 1, "num_classes": 4},
         "densenas": {"stem": 8, "first": {"token": "k3e1", "c": 8}, "head": 32, "num_classes": 4,
                      "stages": [{"c": [8, 16], "s": 2, "n": 1}, {"c": [16, 24], "s": 2, "n": 1}]}}
PAIRS = [(m, s) for m in sorted(STRATEGIES) for s in sorted(SPACES)]


def allowed(method: str, space: str) -> bool:
    cls, caps = STRATEGIES[method], SPACES[space].capabilities
    if cls.spaces is not None:  # smash, pdarts, ...: the spaces they name
        return space in cls.spaces
    if issubclass(cls, SamplingStrategy):  # every space; fairnas needs independent decisions
        return method != "fairnas" or SPACES[space].decision_groups() is None
    if cls.needs == frozenset({"routes"}):  # densenas: the routing-block space only
        return "routes" in caps
    if cls.spaces is None:
        return "layers" in caps and not (method == "spnas" and space == "fbnet")  # spnas: no grid on fbnet
    return space in cls.spaces


def test_the_family_is_registered_where_the_issue_asks():
    for m in ("darts", "pcdarts", "gdas"):
        assert {"darts", "proxyless", "fbnet"} <= set(STRATEGIES[m].spaces)
    assert STRATEGIES["pdarts"].spaces == ("darts",)


@pytest.mark.parametrize("method, space", PAIRS)
def test_one_search_step_or_a_clear_refusal(method, space):
    sp = get_space(space)
    cfg = sp.resolve_config(SMALL.get(space) or SMALL["cell" if "cells" in sp.capabilities else "chain"])
    cls = get_strategy(method)
    if not allowed(method, space):
        with pytest.raises(ValueError) as e:
            cls.build(sp, cfg, 32, 4)
        msg = str(e.value)
        assert "\n" not in msg and (f"does not apply to space {space!r}" in msg or "grid" in msg)
        return
    torch.manual_seed(0)
    lat = LatencyModel(synthetic_table(sp, cfg), sp, cfg)
    target = lat.extremes()[0][0] * 1.2
    s = cls.build(sp, cfg, 32, 4, latency=lat, target_ms=target)
    s.num_epochs = 3
    s.on_epoch_start(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    before = [p.detach().clone() for p in s.weight_parameters()]
    if isinstance(s, SamplingStrategy):
        return _sampling_step(s, sp, cfg, before, x, y)
    s.sample_weight_path()
    loss = F.cross_entropy(s.supernet(x), y)
    loss.backward()
    with torch.no_grad():
        for p in s.weight_parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert any(not torch.equal(a, b) for a, b in zip(before, s.weight_parameters()))
    alphas = [a.detach().clone() for a in s.arch_parameters()]
    s.last_train_batch, s.weight_lr = (x, y), 0.05
    metrics = s.arch_step(x, y)
    assert metrics["latency_multiplier"] > 0  # the expected latency is above a near-fastest target
    assert any(not torch.equal(a, b) for a, b in zip(alphas, s.arch_parameters()))
    tokens = s.derive()
    from hwnas.spaces import Arch

    Arch(space, sp.resolve_config({}) if "cells" in sp.capabilities else cfg, tokens)  # a valid Arch
    s.set_eval_path(tokens)
    assert s.supernet(x).shape == (4, 4)


def _sampling_step(s, sp, cfg, before, x, y):
    """A sampling method: its own weight step, the controller's step (enas), a legal reference child."""
    s.weight_step((x, y), torch.optim.SGD(s.weight_parameters(), lr=0.1))
    assert any(not torch.equal(a, b) for a, b in zip(before, s.weight_parameters()))
    if s.arch_steps:
        ctrl = [p.detach().clone() for p in s.controller.parameters()]
        assert "reward" in s.arch_step(x, y)
        assert any(not torch.equal(a, b) for a, b in zip(ctrl, s.controller.parameters()))
    tokens = s.derive()
    sp.check_layers(cfg, tokens)
    s.set_eval_path(tokens)
    assert s.supernet(x).shape == (4, 4)
