"""Single-Path NAS (Stamoulis, Ding, Wang, Lymberopoulos, Priyantha, Liu, Marculescu. ECML-PKDD 2019):
one superkernel per layer, decisions by learned thresholds on weight norms.

- Supernet (Sec. 3.1-3.2): every layer is a ``SuperkernelOp`` (``hwnas.mixed.superkernel``): the
  largest candidate's MBConv whose ``k_max`` depthwise kernel runs through
  ``hwnas.kernels.masked_dwconv``; its kernel size (eq. 2), expansion ratio (eq. 3) and, where the
  layer allows it, the skip decision (eq. 3's ``1(||w_{k,3}||^2 > t_{e=3})``) are indicators
  ``1(||w_ring||^2 > t)`` of learned thresholds ``t``; in the backward pass an indicator has the gradient
  of ``sigmoid`` (the authors' straight-through relaxation, ``dstamoulis/single-path-nas``).
- Runtime model (Sec. 3.3, eq. 4-6): each layer's latency is the table's entry of the candidate the
  indicators select, written as the multilinear form
  ``R_l = d_skip * sum_{k,e} P_k(d5, d7) P_e(d_e6) R_l(k, e) + (1 - d_skip) R_l(skip)`` (so it is
  differentiable in the thresholds and the weight norms through the indicators), ``R = R_fixed + sum_l R_l``.
- Loss (Sec. 3.4, eq. 7): ``CE + lambda * log(R)``, ``lambda = 0.02`` (the released search script's
  ``runtime_lambda_val``), R in ms. With ``--latency-target`` the shared latency multiplier's penalty on R
  replaces the log term (``hwnas.objective.LatencyMultiplier``).
- Deriving the architecture (Sec. 3.5) reads the indicators: each layer's token is the one the current
  decisions select. For the constrained derivation each decision ``j`` is on with probability
  ``sigmoid(z_j)`` (``z = ||.||^2 - t``) and a token scores the probability of its most probable
  decision state: the best-scoring architecture is the indicators' reading, and under a binding target
  the derivation picks the best-scoring one in the window.

Differences from the paper, documented: the paper updates weights and thresholds together on one loss
and one batch; here, as for every method of the loop, weights are trained on training batches (CE,
thresholds fixed) and thresholds on validation batches (CE + runtime term), so the runtime term moves
the thresholds, not the weights. Thresholds start just below each ring's initial squared norm (every
decision on: the search starts from the largest child, as in the paper) and are trained by Adam
(lr 0.05), since the squared norms of this implementation are on another scale than the code's plain
norms and need thresholds that move by whole units.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.mixed.superkernel import SuperkernelOp
from hwnas.strategies.base import register
from hwnas.strategies.factorized import FactorizedStrategy


def spnas_loss(ce: torch.Tensor, runtime_ms: torch.Tensor, lam: float = 0.02) -> torch.Tensor:
    """``CE + lambda * log(R)`` (Single-Path NAS eq. 7), R in ms."""
    return ce + lam * torch.log(runtime_ms)


@register
class SinglePathNAS(FactorizedStrategy):
    name = "spnas"
    mixed_op = SuperkernelOp
    defaults = {"arch_lr": 0.05, "lambda": 0.02, "init_margin": 0.5, "fused": True, "target_step": 0.05}

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        self.alpha = nn.ParameterList()  # no logits: the thresholds are the architecture parameters
        margin = float(self.options["init_margin"])
        thresholds = []
        for op in self.supernet.mixed:
            op.fused = bool(self.options["fused"])
            with torch.no_grad():  # every decision on, just: thresholds a margin below the initial norms
                z = op.margins(torch.zeros(4))
                t = torch.tensor([0.0 if v is None else float(v) - margin for v in z])
            thresholds.append(nn.Parameter(t))
        self.thresholds = nn.ParameterList(thresholds)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"])

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.thresholds)

    def _set(self, detach: bool) -> None:
        for op, t in zip(self.supernet.mixed, self.thresholds):
            op.set_thresholds(t.detach() if detach else t)

    # -- reading the architecture -------------------------------------------------------------------
    def probabilities(self) -> list[torch.Tensor]:
        """Per layer, each token's probability with every decision on with probability sigmoid(z)."""
        self._set(detach=False)
        return [op.token_weights(soft="sum") for op in self.supernet.mixed]

    def log_probabilities(self) -> list[np.ndarray]:
        """Per layer, each token's log-score: the log-probability of its most probable decision state
        (``token_weights(soft="max")``). Their per-layer argmax is the indicators' reading; the
        constrained derivation maximizes their sum, i.e. the most probable decisions in the window."""
        self._set(detach=True)
        with torch.no_grad():
            return [torch.log(op.token_weights(soft="max").double().clamp_min(1e-300)).cpu().numpy()
                    for op in self.supernet.mixed]

    def current_arch(self) -> list[str]:
        """The tokens the indicators select now."""
        self._set(detach=True)
        with torch.no_grad():
            return [op.tokens[int(torch.argmax(op.token_weights()))] for op in self.supernet.mixed]

    def runtime(self) -> torch.Tensor | None:
        """R (ms) of the architecture the indicators select, differentiable through them (eq. 4-6)."""
        if self.latency is None:
            return None
        return self.latency.expected([op.token_weights() for op in self.supernet.mixed])

    def expected_latency(self) -> torch.Tensor | None:
        self._set(detach=False)
        return self.runtime()

    # -- steps ----------------------------------------------------------------------------------------
    def sample_weight_path(self) -> None:
        self._set(detach=True)

    def set_eval_path(self, tokens: list[str]) -> None:
        for op, token in zip(self.supernet.mixed, tokens):
            op.set_thresholds(op.fixed(token).to(self.thresholds[0].device))

    def unconstrained_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return spnas_loss(ce, expected, self.options["lambda"])

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return ce

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        self._set(detach=False)
        ce = F.cross_entropy(self.supernet(x), y)
        loss, runtime = self.objective(ce, self.runtime())
        self.apply_arch_grads(torch.autograd.grad(loss, self.arch_parameters(), allow_unused=True))
        return self.arch_metrics(loss, ce, runtime)
