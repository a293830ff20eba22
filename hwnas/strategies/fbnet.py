"""FBNet (Wu, Dai, Zhang, Wang, Sun, Wu, Tian, Vajda, Jia, Keutzer. CVPR 2019): differentiable
architecture search over a stochastic supernet with Gumbel-softmax sampling.

- Stochastic supernet (Sec. 3.3, eq. 5-6): layer ``l`` outputs ``x_{l+1} = sum_i m_{l,i} b_{l,i}(x_l)``
  with ``m_l`` a Gumbel-softmax sample of the layer's sampling parameters ``theta_l``::

      m_{l,i} = exp((theta_{l,i} + g_{l,i}) / tau) / sum_j exp((theta_{l,j} + g_{l,j}) / tau),  g ~ Gumbel(0, 1)

  Every candidate runs; the sum is ``hwnas.kernels.mixed_op_sum`` (``WeightedSumOp``; ``fused=False``
  selects the pure-torch reference).
- Latency (eq. 4, with the samples): ``LAT(a) = sum_l sum_i m_{l,i} LAT(b_{l,i})`` from the table, plus
  the fixed parts; differentiable in ``theta`` through ``m``.
- Loss (eq. 2): ``L(a, w_a) = CE(a, w_a) * alpha * log(LAT(a)) ** beta`` with ``alpha = 0.2``,
  ``beta = 0.6`` (Sec. 4.1), LAT in ms (so it needs LAT above 1 ms). With ``--latency-target`` the
  search minimizes ``CE`` plus the shared latency multiplier's penalty on ``LAT(a)``
  (``hwnas.objective.LatencyMultiplier``) instead; the paper's form stays the default without a target.
- Temperature (Sec. 4.1): ``tau = 5.0`` at the start, multiplied by ``exp(-0.045)`` every epoch.
- Optimization (Sec. 4.1): ``theta`` by Adam, lr 0.01, weight decay 5e-4, on validation batches; the
  weights by the loop's SGD on training batches with a (detached) Gumbel sample per layer, after
  warm-up epochs that train the weights only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hwnas.mixed.weighted_sum import WeightedSumOp
from hwnas.strategies.base import register
from hwnas.strategies.factorized import FactorizedStrategy


def temperature(epoch: int, tau0: float = 5.0, decay: float = 0.045) -> float:
    """FBNet's schedule: ``tau0 * exp(-decay * epoch)`` (epoch 0-based)."""
    return tau0 * math.exp(-decay * epoch)


def fbnet_loss(ce: torch.Tensor, lat_ms: torch.Tensor, alpha: float = 0.2, beta: float = 0.6) -> torch.Tensor:
    """``CE * alpha * log(LAT) ** beta`` (FBNet eq. 2), LAT in ms."""
    if float(lat_ms.detach()) <= 1.0:
        raise ValueError(f"FBNet's loss CE * alpha * log(LAT)^beta needs LAT above 1 ms (got {float(lat_ms):.3f} ms); "
                         "give --latency-target to use the latency multiplier instead")
    return ce * alpha * torch.log(lat_ms) ** beta


@register
class FBNet(FactorizedStrategy):
    name = "fbnet"
    mixed_op = WeightedSumOp
    defaults = {"arch_lr": 0.01, "arch_weight_decay": 5e-4, "alpha": 0.2, "beta": 0.6, "tau0": 5.0,
                "tau_decay": 0.045, "fused": True, "target_step": 0.05}

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        for op in self.supernet.mixed:
            op.fused = bool(self.options["fused"])
        self.tau = float(self.options["tau0"])
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"],
                                         weight_decay=self.options["arch_weight_decay"])

    def on_epoch_start(self, epoch: int) -> None:
        self.tau = temperature(epoch, self.options["tau0"], self.options["tau_decay"])

    def gumbel_samples(self) -> list[torch.Tensor]:
        """One soft sample ``m_l`` per layer (eq. 6) at the current temperature, differentiable in theta."""
        return [F.gumbel_softmax(a, tau=self.tau, hard=False) for a in self.alpha]

    def sample_weight_path(self) -> None:
        with torch.no_grad():
            for op, m in zip(self.supernet.mixed, self.gumbel_samples()):
                op.active, op.weights = None, m

    def set_eval_path(self, tokens: list[str]) -> None:
        for op, t in zip(self.supernet.mixed, tokens):
            op.active, op.weights = op.tokens.index(t), None

    def unconstrained_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return fbnet_loss(ce, expected, self.options["alpha"], self.options["beta"])

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return ce

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        masks = self.gumbel_samples()
        for op, m in zip(self.supernet.mixed, masks):
            op.active, op.weights = None, m
        ce = F.cross_entropy(self.supernet(x), y)
        lat = self.latency.expected(masks) if self.latency is not None else None
        loss, lat = self.objective(ce, lat)
        self.apply_arch_grads(torch.autograd.grad(loss, self.arch_parameters()))  # theta only, not the weights
        extra = {"temperature": self.tau}
        if lat is not None:
            extra.update(sampled_latency_ms=float(lat.detach()),
                         expected_latency_ms=float(self.expected_latency().detach()))
        return self.arch_metrics(loss, ce, lat, **extra)
