"""Supernet level: a search step whose mixed ops run the fused kernel gives the loss and the
architecture-parameter gradients of the same step on the pure-torch reference (issue: kernels)."""
import pytest
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces import get_space
from hwnas.strategies import get_strategy
from helpers import synthetic_table


def _loss_and_grads(strategy, fused: bool, x, y, seed: int):
    for op in strategy.supernet.mixed:
        op.fused = fused
    torch.manual_seed(seed)  # the same Gumbel noise for both paths
    masks = strategy.gumbel_samples()
    for op, m in zip(strategy.supernet.mixed, masks):
        op.active, op.weights = None, m
    ce = torch.nn.functional.cross_entropy(strategy.supernet(x), y)
    loss, _ = strategy.objective(ce, strategy.latency.expected(masks))
    grads = torch.autograd.grad(loss, strategy.arch_parameters())
    return loss.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("target", [None, "binding"])
def test_fbnet_step_fused_equals_reference(device, target):
    space = get_space("fbnet")
    cfg = space.resolve_config({"width_mult": 0.25, "num_classes": 4})
    lat = LatencyModel(synthetic_table(space, cfg), space, cfg)
    torch.manual_seed(0)
    s = get_strategy("fbnet").build(space, cfg, 16, 4, latency=lat,
                                    target_ms=lat.extremes()[1][0] * 0.6 if target else None).to(device)
    s.supernet.eval()  # BN in eval: both passes see identical statistics
    x, y = torch.randn(2, 3, 16, 16, device=device), torch.randint(0, 4, (2,), device=device)
    calls = []
    import hwnas.mixed.weighted_sum as ws

    real = ws.mixed_op_sum
    ws.mixed_op_sum = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        fused_loss, fused_grads = _loss_and_grads(s, True, x, y, seed=5)
    finally:
        ws.mixed_op_sum = real
    ref_loss, ref_grads = _loss_and_grads(s, False, x, y, seed=5)
    assert len(calls) == len(s.supernet.mixed)  # the fused path really ran the kernel op
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-5, atol=1e-6)
    for f, r in zip(fused_grads, ref_grads):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in ref_grads)
