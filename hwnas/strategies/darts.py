"""DARTS (Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019).

- Continuous relaxation (Sec. 2.2, eq. 2): every edge (cell space) or layer (chain space) outputs
  ``sum_o softmax(alpha)_o o(x)`` over its candidates (``WeightedSumOp`` on
  ``hwnas.kernels.mixed_op_sum``; ``fused=False`` selects the pure-torch reference). In the cell space
  the alphas are shared by all cells of a type (14 edges x 8 ops, normal and reduction).
- Bilevel optimization (Sec. 2.3, eq. 3-4), alternating: weights ``w`` on training batches by the search
  loop's SGD with ``softmax(alpha)`` fixed; alphas on validation batches by Adam (lr 3e-4, betas
  (0.5, 0.999), weight decay 1e-3, the paper's Sec. 3.1.1 settings).
- Architecture gradient (eq. 6-8): ``order=1`` uses ``grad_alpha L_val(w, alpha)`` (first order, xi = 0).
  ``order=2`` uses the one-step unrolled model ``w' = w - xi grad_w L_train(w, alpha)`` (eq. 6, xi the
  weights' current learning rate)::

      grad_alpha L_val(w', alpha) - xi * grad2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)     (7)

  with the Hessian-vector product by central finite differences (eq. 8)::

      (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),  w+- = w +- eps grad_w' L_val(w', alpha)

  and ``eps = 0.01 / ||grad_w' L_val(w', alpha)||``. (The released code's virtual step also applies the
  optimizer's momentum and weight decay; this follows eq. 6 as written.)
- Derivation (Sec. 2.4): chain spaces the strongest candidate per layer; the cell space the top-2
  incoming edges per node by their strongest op other than ``none``.
- Latency: DARTS has no latency term; with ``--latency-target`` the shared multiplier
  (``hwnas.objective.LatencyMultiplier``) adds ``lam * (E[LAT] / T* - 1)`` to ``L_val`` with ``E[LAT]`` from the
  table under ``softmax(alpha)`` (``LatencyModel.expected``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hwnas.mixed.weighted_sum import WeightedSumOp
from hwnas.strategies.base import register
from hwnas.strategies.factorized import FactorizedStrategy

DARTS_SPACES = ("darts", "nb201", "proxyless", "fbnet")


@register
class DARTS(FactorizedStrategy):
    name = "darts"
    mixed_op = WeightedSumOp
    spaces = DARTS_SPACES
    default_space = "darts"
    defaults = {"arch_lr": 3e-4, "arch_weight_decay": 1e-3, "order": 1, "fused": True, "target_step": 0.05}

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        if self.options["order"] not in (1, 2):
            raise ValueError(f"method {self.name!r}: order must be 1 or 2, got {self.options['order']!r}")
        for i in range(len(self.alpha)):
            for op in self.supernet.decision_ops(i):
                op.fused = bool(self.options["fused"])
        with torch.no_grad():  # the paper initializes alpha to 1e-3 * N(0, 1)
            for a in self.alpha:
                a.normal_(0.0, 1e-3)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"], betas=(0.5, 0.999),
                                         weight_decay=self.options["arch_weight_decay"])

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """DARTS has no latency term of its own: with a target, ``L_val`` is the cross-entropy and the shared
        multiplier's penalty alone steers E[LAT] (the module docstring). (Until 2026-12-03 this fell through to
        ProxylessNAS's ``mul#log`` form, which also refused every target under 1 ms.)"""
        return ce

    # -- configuring the mixed ops ------------------------------------------------------------------------
    def mix_weights(self) -> list[torch.Tensor]:
        """The per-decision weights the mixed ops combine with (DARTS: ``softmax(alpha)``)."""
        return self.probabilities()

    def configure(self, weights: list[torch.Tensor]) -> None:
        for i, w in enumerate(weights):
            for op in self.supernet.decision_ops(i):
                op.active, op.weights = None, w

    def sample_weight_path(self) -> None:
        with torch.no_grad():
            self.configure([w.detach() for w in self.mix_weights()])

    def set_eval_path(self, tokens: list[str]) -> None:
        for i, t in enumerate(tokens):
            for op in self.supernet.decision_ops(i):
                if t in op.tokens:
                    op.active, op.weights = op.tokens.index(t), None
                elif t == "none":  # an edge whose candidate set no longer holds 'none' (P-DARTS): all weights 0
                    op.active, op.weights = None, torch.zeros(len(op.tokens))
                else:
                    raise ValueError(f"decision {i}: {t!r} is not among its candidates {op.tokens}")

    # -- the architecture step ------------------------------------------------------------------------------
    def val_loss(self, x: torch.Tensor, y: torch.Tensor):
        """(loss, ce, E[LAT]) on a batch with the relaxed weights (differentiable in alpha and w)."""
        self.configure(self.mix_weights())
        ce = F.cross_entropy(self.supernet(x), y)
        loss, expected = self.objective(ce)
        return loss, ce, expected

    def train_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.configure(self.mix_weights())
        return F.cross_entropy(self.supernet(x), y)

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        if self.options["order"] == 2:
            grads, loss, ce, expected = self.second_order_grads(x, y)
        else:
            loss, ce, expected = self.val_loss(x, y)
            grads = torch.autograd.grad(loss, self.arch_parameters(), allow_unused=True)
        self.apply_arch_grads(grads)
        return self.arch_metrics(loss, ce, expected)

    def second_order_grads(self, x: torch.Tensor, y: torch.Tensor, xi: float | None = None):
        """Eq. 7-8 on the validation batch ``(x, y)`` and the last training batch; returns
        (alpha grads, loss, ce, E[LAT]) with loss/ce at the unrolled weights."""
        if self.last_train_batch is None:
            raise RuntimeError("second-order DARTS needs a training batch (last_train_batch) before the arch step")
        xt, yt = self.last_train_batch
        if xi is None:
            xi = self.weight_lr if self.weight_lr is not None else 0.025
        weights = [p for p in self.supernet.parameters() if p.requires_grad]
        alphas = self.arch_parameters()
        saved = [p.detach().clone() for p in weights]
        try:
            g_train = torch.autograd.grad(self.train_loss(xt, yt), weights, allow_unused=True)
            self.average_([g for g in g_train if g is not None])  # torchrun: every rank unrolls the same w'
            with torch.no_grad():  # w' = w - xi grad_w L_train(w, alpha)      (eq. 6)
                for p, g in zip(weights, g_train):
                    if g is not None:
                        p.sub_(xi * g)
            loss, ce, expected = self.val_loss(x, y)
            grads = torch.autograd.grad(loss, alphas + weights, allow_unused=True)
            d_alpha, v = grads[: len(alphas)], grads[len(alphas):]
            v = self.average_([torch.zeros_like(p) if g is None else g for p, g in zip(weights, v)])
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in v))
            eps = 0.01 / max(float(norm), 1e-12)
            hessian = []
            for sign in (1.0, -1.0):  # grad_alpha L_train(w +- eps v, alpha)      (eq. 8)
                with torch.no_grad():
                    for p, w0, g in zip(weights, saved, v):
                        p.copy_(w0 + sign * eps * g)
                hessian.append(torch.autograd.grad(self.train_loss(xt, yt), alphas, allow_unused=True))
            out = []
            for a, da, hp, hn in zip(alphas, d_alpha, *hessian):
                da = torch.zeros_like(a) if da is None else da
                hp = torch.zeros_like(a) if hp is None else hp
                hn = torch.zeros_like(a) if hn is None else hn
                out.append(da - xi * (hp - hn) / (2 * eps))
        finally:
            with torch.no_grad():
                for p, w0 in zip(weights, saved):
                    p.copy_(w0)
        return out, loss, ce, expected
