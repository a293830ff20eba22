"""Strategies with one architecture logit vector per decision (``p_l = softmax(alpha_l)``): ProxylessNAS,
FBNet, Single-Path NAS and the DARTS family subclass ``FactorizedStrategy``.

Such a distribution factorizes over the decisions, so it has per-decision marginals: the expected latency
is the space's ``expected_latency`` of them (ProxylessNAS eq. 5, FBNet eq. 4), and the derivation under a
binding target ``T`` is the most probable architecture in ``[0.9 T, T]`` (``LatencyModel.derive_within``).
A method supplies ``sample_weight_path`` (which path a weight step trains), ``arch_step`` and
``set_eval_path``; it reaches its mixed ops only through ``supernet.decision_ops(i)``.

The latency term is shared: ``objective(ce)`` returns the method's own loss form without a target
(``unconstrained_loss``) and, with a target, the method's targeted form (``targeted_loss``) plus the
Lagrange multiplier's penalty (``hwnas.objective.LatencyMultiplier``), which a strategy advances with
``update_multiplier(E[LAT])`` after each architecture step.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.latency.predictor import LatencyModel
from hwnas.objective import LatencyMultiplier, latency_loss
from hwnas.strategies.base import DeriveContext, Strategy


class FactorizedStrategy(Strategy):
    """One logit vector ``alpha_l`` per decision (see the module docstring). The loop sets ``weight_lr``
    and ``last_train_batch`` through ``weight_step`` (second-order DARTS unrolls one weight step on it)."""

    arch_steps = True
    weight_lr: float | None = None
    last_train_batch: tuple[torch.Tensor, torch.Tensor] | None = None
    #: the optimizer of ``arch_parameters()``; a strategy sets it in its ``__init__``.
    arch_opt: torch.optim.Optimizer | None = None

    def __init__(self, supernet: nn.Module, latency: LatencyModel | None = None,
                 target_ms: float | None = None, **options):
        super().__init__(supernet, **options)
        self.latency = latency
        self.target_ms = target_ms
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(len(c))) for c in supernet.choices)
        self.multiplier = (LatencyMultiplier(target_ms, step=self.options.get("target_step", 0.05))
                           if latency is not None and target_ms is not None else None)

    # -- steps ----------------------------------------------------------------------------------------
    @abstractmethod
    def sample_weight_path(self) -> None:
        """Configure the mixed ops for a weight step on a training batch."""

    def weight_step(self, batch, optimizer) -> dict:
        """One path per step (``sample_weight_path``), cross-entropy, one optimizer step; with a method
        option ``weight_grad_clip``, the weight gradients' norm clipped to it first."""
        x, y = batch
        self.weight_lr, self.last_train_batch = optimizer.param_groups[0]["lr"], (x, y)
        self.sample_weight_path()
        logits = self.train_forward(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.get("weight_grad_clip"):
            torch.nn.utils.clip_grad_norm_(self.weight_parameters(), float(self.options["weight_grad_clip"]))
        optimizer.step()
        return {"loss": float(loss.detach()), "correct": int((logits.argmax(1) == y).sum()), "seen": len(y)}

    @abstractmethod
    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One architecture update on a validation batch; returns scalar metrics."""

    # -- reading the architecture -------------------------------------------------------------
    def probabilities(self) -> list[torch.Tensor]:
        return [F.softmax(a, dim=-1) for a in self.alpha]

    def log_probabilities(self) -> list[np.ndarray]:
        return [F.log_softmax(a.detach().double(), dim=-1).cpu().numpy() for a in self.alpha]

    def current_arch(self) -> list[str]:
        """The supernet's derivation from ``log_probabilities()`` (the space's ``derive``: a chain's most
        probable candidate per layer; a cell's strongest two edges per node)."""
        return self.supernet.derive(self.log_probabilities())

    def derive(self, context: DeriveContext | None = None) -> list[str]:
        """``current_arch()``; with a binding target the most probable architecture in
        ``[context.lower_ms, context.target_ms]``."""
        if context is None or context.target_ms is None:
            return self.current_arch()
        return context.latency.derive_within(self.log_probabilities(), context.lower_ms, context.target_ms)

    def epoch_record(self) -> dict:
        return {"probs": [np.exp(lp).round(4).tolist() for lp in self.log_probabilities()]}

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)

    # -- the latency-aware objective ------------------------------------------------------------
    def expected_latency(self) -> torch.Tensor | None:
        return None if self.latency is None else self.latency.expected(self.probabilities())

    def objective(self, ce: torch.Tensor, expected: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, E[LAT]). ``expected`` defaults to ``expected_latency()`` (a method whose latency term uses
        its samples rather than ``p``, like FBNet, passes its own). No table: ``ce``. No target: the
        method's ``unconstrained_loss``. A target: ``targeted_loss`` plus the multiplier's penalty."""
        if expected is None:
            expected = self.expected_latency()
        if expected is None:
            return ce, None
        if self.target_ms is None:
            return self.unconstrained_loss(ce, expected), expected
        return self.targeted_loss(ce, expected) + self._target_multiplier().penalty(expected), expected

    def _target_multiplier(self) -> LatencyMultiplier:
        if self.multiplier is None or self.multiplier.target_ms != float(self.target_ms):  # target set later
            self.multiplier = LatencyMultiplier(self.target_ms, step=self.options.get("target_step", 0.05)).to(
                self.arch_parameters()[0].device)
        return self.multiplier

    def unconstrained_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """The method's loss when no target is given (default: accuracy alone)."""
        return ce

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """The method's loss with a target, before the multiplier's penalty (default: ProxylessNAS's
        forms with T as the reference latency, ``options["loss"]``)."""
        return latency_loss(ce, expected, self.target_ms, self.options.get("loss", "mul#log"),
                            self.options.get("loss_params"))

    def update_multiplier(self, expected: torch.Tensor | None) -> dict:
        """Advance the latency multiplier after an architecture step; the metrics to log."""
        if self.target_ms is None or expected is None:
            return {}
        return {"latency_multiplier": self._target_multiplier().update(expected)}

    # -- shared plumbing of architecture steps ---------------------------------------------------------
    def apply_arch_grads(self, grads) -> None:
        """Set each architecture parameter's gradient (None: zero; averaged over the ranks under torchrun)
        and take one ``arch_opt`` step."""
        params = self.arch_parameters()
        grads = self.average_([torch.zeros_like(p) if g is None else g.clone() for p, g in zip(params, grads, strict=True)])
        for p, g in zip(params, grads):
            p.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def arch_metrics(self, loss: torch.Tensor, ce: torch.Tensor, expected: torch.Tensor | None, **extra) -> dict:
        """The scalars an architecture step reports; advances the latency multiplier (after the step)."""
        out = {"arch_loss": float(loss.detach()), "arch_ce": float(ce.detach()), **extra}
        if expected is not None:
            out.setdefault("expected_latency_ms", float(expected.detach()))
        out.update(self.update_multiplier(expected))
        return out

    def arch_optimizer_state(self) -> dict:
        return self.arch_opt.state_dict() if self.arch_opt is not None else {}

    def load_arch_optimizer_state(self, state: dict) -> None:
        if state and self.arch_opt is not None:
            self.arch_opt.load_state_dict(state)
