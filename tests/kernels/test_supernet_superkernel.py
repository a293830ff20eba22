"""Supernet level: a Single-Path NAS architecture step whose superkernel layers run the fused
masked_dwconv kernel gives the loss and threshold gradients of the same step on the reference."""
import torch

from hwnas.latency.predictor import LatencyModel
from hwnas.spaces import get_space
from hwnas.strategies import get_strategy
from helpers import synthetic_table


def _loss_and_grads(s, fused, x, y):
    for op in s.supernet.mixed:
        op.fused = fused
    s._set(detach=False)
    ce = torch.nn.functional.cross_entropy(s.supernet(x), y)
    loss, _ = s.objective(ce, s.runtime())
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, s.arch_parameters())]


def test_spnas_step_fused_equals_reference(device):
    space = get_space("spnas")
    cfg = space.resolve_config({"width_mult": 0.25, "num_classes": 4})
    lat = LatencyModel(synthetic_table(space, cfg), space, cfg)
    torch.manual_seed(0)
    s = get_strategy("spnas").build(space, cfg, 16, 4, latency=lat, target_ms=None).to(device)
    s.supernet.eval()
    with torch.no_grad():  # a mix of decisions: some rings and halves off
        for i, t in enumerate(s.thresholds):
            t[: 3] += torch.tensor([1.0, 0.0, 1.0], device=device) * (i % 2)
    x, y = torch.randn(2, 3, 16, 16, device=device), torch.randint(0, 4, (2,), device=device)
    import hwnas.mixed.superkernel as sk

    calls, real = [], sk.masked_dwconv
    sk.masked_dwconv = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        fused_loss, fused_grads = _loss_and_grads(s, True, x, y)
    finally:
        sk.masked_dwconv = real
    ref_loss, ref_grads = _loss_and_grads(s, False, x, y)
    assert len(calls) == len(s.supernet.mixed)
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-5, atol=1e-6)
    for f, r in zip(fused_grads, ref_grads):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in ref_grads)
