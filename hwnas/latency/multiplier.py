"""The one latency-target mechanism every latency-aware strategy shares: a Lagrange multiplier on the
expected latency, updated by dual ascent.

With a target T the architecture step minimizes the method's task loss plus ``lam * (E[LAT] / T* - 1)``
and, after each step, moves ``lam <- lam + eta * (E[LAT] / T* - 1)`` (dual ascent on the equality
constraint ``E[LAT] = T*``; Boyd & Vandenberghe, Convex Optimization, Sec. 5.1-5.5, and e.g. the
"budget" updates of constrained NAS such as TF-NAS, Hu et al. 2020, Sec. 3.4). ``T* = aim * T`` with
``aim = 0.95`` by default, the middle of the window ``[0.9 T, T]`` that the derivation
(``hwnas.latency.constraint.most_probable_within``) guarantees: while the expected latency is above
``T*`` the multiplier grows and pushes the architecture towards faster candidates; below, it shrinks
and turns negative, which rewards spending the budget instead of leaving it unused. The multiplier is a
buffer, so it is saved and restored with the strategy's checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn


class LatencyMultiplier(nn.Module):
    def __init__(self, target_ms: float, step: float = 0.05, aim: float = 0.95, init: float = 0.0):
        super().__init__()
        if target_ms <= 0:
            raise ValueError(f"latency target must be positive, got {target_ms:g} ms")
        if not 0 < aim <= 1:
            raise ValueError(f"aim must be in (0, 1], got {aim:g}")
        if step < 0:
            raise ValueError(f"multiplier step must be >= 0, got {step:g}")
        self.target_ms, self.aim, self.step = float(target_ms), float(aim), float(step)
        self.register_buffer("lam", torch.tensor(float(init), dtype=torch.float64))

    def violation(self, expected_ms: torch.Tensor) -> torch.Tensor:
        """``E[LAT] / T* - 1``: positive when too slow, negative when budget is left."""
        return expected_ms / (self.aim * self.target_ms) - 1.0

    def penalty(self, expected_ms: torch.Tensor) -> torch.Tensor:
        """``lam * (E[LAT] / T* - 1)`` (differentiable in ``expected_ms``; ``lam`` is a constant here)."""
        return self.lam.to(expected_ms.dtype) * self.violation(expected_ms)

    @torch.no_grad()
    def update(self, expected_ms: torch.Tensor | float) -> float:
        """One dual-ascent step; returns the new multiplier."""
        v = self.violation(torch.as_tensor(expected_ms, dtype=torch.float64).detach().cpu())
        self.lam += self.step * v.to(self.lam.device)
        return float(self.lam)
