"""GDAS (Dong & Yang. Searching for A Robust Neural Architecture in Four GPU Hours. CVPR 2019).

DARTS with a sampled, hard forward (Sec. 3.2): for every edge (layer), draw
``h = one_hot(argmax_o (alpha_o + g_o))`` with Gumbel noise ``g`` (eq. 3, Gumbel-max), so only the sampled
op runs, in the weight step and in the architecture step alike; the gradient reaches alpha through the
straight-through estimator ``h_st = h - sg(h_soft) + h_soft`` with ``h_soft = softmax((alpha + g) / tau)``
(eq. 5). The temperature anneals linearly from ``tau_max = 10`` to ``tau_min = 0.1`` over the search
(Sec. 4.1), overridable. One sample per decision and step is shared by all cells of a type (as the
released code does). Everything else — Adam on alpha, derivation, the latency multiplier — is DARTS's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hwnas.strategies.base import register
from hwnas.strategies.darts import DARTS


def linear_temperature(epoch: int, epochs: int, tau_max: float = 10.0, tau_min: float = 0.1) -> float:
    """``tau_max - (tau_max - tau_min) * epoch / (epochs - 1)`` (epoch 0-based)."""
    if epochs <= 1:
        return tau_min
    return tau_max - (tau_max - tau_min) * epoch / (epochs - 1)


def gumbel_hard(alpha: torch.Tensor, tau: float) -> tuple[int, torch.Tensor]:
    """(sampled index, straight-through one-hot) for one decision."""
    g = -torch.empty_like(alpha).exponential_().log()
    soft = F.softmax((alpha + g) / tau, dim=-1)
    index = int(soft.argmax())
    hard = torch.zeros_like(soft)
    hard[index] = 1.0
    return index, hard - soft.detach() + soft


@register
class GDAS(DARTS):
    name = "gdas"
    defaults = {**DARTS.defaults, "tau_max": 10.0, "tau_min": 0.1}

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        if self.options["order"] != 1:
            raise ValueError("method 'gdas': only first-order architecture gradients (order=1)")
        self.tau = float(self.options["tau_max"])

    def on_epoch_start(self, epoch: int) -> None:
        self.tau = linear_temperature(epoch, self.num_epochs or 1, self.options["tau_max"], self.options["tau_min"])

    def configure_hard(self, requires_grad: bool) -> None:
        for i, a in enumerate(self.alpha):
            index, h = gumbel_hard(a if requires_grad else a.detach(), self.tau)
            for op in self.supernet.decision_ops(i):
                op.active, op.weights = index, h

    def sample_weight_path(self) -> None:
        with torch.no_grad():
            self.configure_hard(requires_grad=False)

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        self.configure_hard(requires_grad=True)
        ce = F.cross_entropy(self.supernet(x), y)
        loss, expected = self.objective(ce)
        self.apply_arch_grads(torch.autograd.grad(loss, self.arch_parameters(), allow_unused=True))
        return self.arch_metrics(loss, ce, expected, temperature=self.tau)
