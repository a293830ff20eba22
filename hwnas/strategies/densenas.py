"""DenseNAS (Fang, Sun, Zhang, Li, Liu, Wang. CVPR 2020): differentiable search of widths and depths in a
densely connected super network (``hwnas.spaces.dense``, ``hwnas.mixed.dense_supernet``).

- Architecture parameters (Sec. 3.2): ``alpha`` per mixed op (every head layer of every link, every stacked
  layer; ``skip`` among a stacked layer's candidates is the depth search) and ``beta_n`` per node over its
  outgoing links; the transition probability ``w_{n->j} = softmax(beta_n)_j`` weights the head layer
  ``n -> j`` in block ``j``'s input sum.
- Weight step: one candidate per mixed op sampled from ``softmax(alpha)`` (a single path's memory per op, as
  ProxylessNAS's binary gates) and the dense forward with the transition probabilities held fixed.
- Architecture step: two candidates per mixed op with binary gates and ProxylessNAS's eq. 4 gradient for
  ``alpha`` (with the rescaling), ``beta`` by autograd through the dense forward's weighted sums and the
  latency term; Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (the released search config and
  ``run_apis/optimizer.py``).
- Weight gradients clipped to norm 5 (``weight_grad_clip``; the released search does not clip). The dense
  forward's route sums grow the gradient backward by about 2x per block at initialization: on digits the
  weight gradient's norm was 1172 at the first step (57 on the proxyless chain), and a 2-epoch search at
  the loop's SGD lr 0.05 diverged to a loss of 18 and chance accuracy. ``--opt weight_grad_clip=0`` turns
  it off.
- Latency (Sec. 3.3): the chained cost estimation of ``DenseSpace.expected_latency`` over the route and
  layer probabilities (``q_n(j, o) = softmax(beta_n)_j softmax(alpha_{n->j})_o``), differentiable in both.
- Loss (Sec. 3.3, eq. 8): ``CE + lambda log_tau(E[LAT])`` with ``lambda = 0.15``, ``tau = 15`` (the released
  MobileNetV2 config) without a target; with ``--latency-target``, ``CE`` plus the shared latency
  multiplier's penalty (``hwnas.objective.LatencyMultiplier``): the paper has no hard target (its issue #11).
- Derivation (Sec. 3.4): the Viterbi path over the transition probabilities, then every layer's most
  probable candidate; under a target the most probable (path, candidates) in ``[0.9 T, T]``
  (``DenseSpace.derive_within``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.dense_supernet import DenseSupernet
from hwnas.mixed.shared_gate import SharedBinaryGatedOp
from hwnas.strategies.base import register
from hwnas.strategies.factorized import FactorizedStrategy
from hwnas.strategies.proxyless import two_path_alpha_grad


def densenas_loss(ce: torch.Tensor, lat_ms: torch.Tensor, factor: float = 0.15, base: float = 15.0) -> torch.Tensor:
    """``CE + factor * log_base(LAT)`` (DenseNAS eq. 8), LAT in ms."""
    return ce + factor * torch.log(lat_ms) / math.log(base)


@register
class DenseNAS(FactorizedStrategy):
    name = "densenas"
    needs = frozenset({"routes"})
    default_space = "densenas"
    current_arch_label = "Viterbi path"
    defaults = {"arch_lr": 3e-4, "arch_weight_decay": 1e-3, "factor": 0.15, "base": 15.0, "target_step": 0.05,
                "weights": "shared", "weight_grad_clip": 5.0}
    WEIGHTS = {"shared": SharedBinaryGatedOp, "separate": BinaryGatedOp}

    @classmethod
    def mixed_op_for(cls, **options):
        weights = options.get("weights", cls.defaults["weights"])
        if weights not in cls.WEIGHTS:
            raise ValueError(f"method {cls.name!r}: weights must be one of {', '.join(cls.WEIGHTS)}, got {weights!r}")
        return cls.WEIGHTS[weights]

    def __init__(self, supernet: DenseSupernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        st = supernet.structure
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(len(op.tokens))) for op in supernet.mixed)
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(len(node.successors)))
                                     for node in st.nodes if node.successors)
        self._beta_of = {n: k for k, n in enumerate(n for n, node in enumerate(st.nodes) if node.successors)}
        self._head_of = {key: k for k, key in enumerate(supernet.heads.keys())}
        self._stack_of = {}
        k = len(supernet.heads)
        for n, ops in enumerate(supernet.stacks):
            for i in st.stack[n]:
                self._stack_of[i] = k
                k += 1
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"], betas=(0.5, 0.999),
                                         weight_decay=self.options["arch_weight_decay"])

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha) + list(self.beta)

    # -- the distribution over architectures --------------------------------------------------------
    def transition(self) -> list[torch.Tensor | None]:
        """``softmax(beta_n)`` per node (None for the last block)."""
        return [F.softmax(self.beta[self._beta_of[n]], -1) if n in self._beta_of else None
                for n in range(len(self.supernet.structure.nodes))]

    def probabilities(self) -> list[torch.Tensor]:
        """Per decision of the space, the probability of each of its choices (``-``: 0): a route token
        ``to<j>:<o>`` of node ``n`` has ``softmax(beta_n)_j softmax(alpha_{n->j})_o``."""
        st, sn = self.supernet.structure, self.supernet
        trans = self.transition()
        choices = sn.choices
        out = [None] * len(choices)
        for n, r in enumerate(st.route):
            if r is None:
                continue
            parts = [trans[n][k] * F.softmax(self.alpha[self._head_of[f"{n}>{j}"]], -1)
                     for k, j in enumerate(st.nodes[n].successors)]
            out[r] = torch.cat(parts + [parts[0].new_zeros(len(choices[r]) - sum(len(q) for q in parts))])
        for i, k in self._stack_of.items():
            p = F.softmax(self.alpha[k], -1)
            out[i] = torch.cat([p, p.new_zeros(len(choices[i]) - len(p))])  # '-', where the block may be off
        return out

    def log_probabilities(self) -> list[np.ndarray]:
        with torch.no_grad(), np.errstate(divide="ignore"):
            return [np.log(p.double().cpu().numpy()) for p in self.probabilities()]  # '-': -inf

    # -- steps ------------------------------------------------------------------------------------
    def _set_routes(self, grad: bool) -> None:
        self.supernet.path = None
        trans = self.transition()
        self.supernet.route_weights = [None if t is None else (t if grad else t.detach()) for t in trans]

    def sample_weight_path(self) -> None:
        self._set_routes(grad=False)
        with torch.no_grad():
            for op, a in zip(self.supernet.mixed, self.alpha):
                op.gated_paths = None
                op.active = int(torch.multinomial(F.softmax(a, -1), 1))

    def set_eval_path(self, tokens: list[str]) -> None:
        for op in self.supernet.mixed:
            op.gated_paths = None
        self.supernet.set_child(tokens)

    def unconstrained_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return densenas_loss(ce, expected, self.options["factor"], self.options["base"])

    def targeted_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        return ce

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        ops = self.supernet.mixed
        pairs = []
        with torch.no_grad():
            for op, a in zip(ops, self.alpha):
                p = F.softmax(a, -1)
                pair = tuple(int(i) for i in torch.multinomial(p, min(2, len(p)), replacement=False))
                op.gated_paths = pair
                op.active = pair[int(torch.multinomial(F.softmax(a[list(pair)], -1), 1))]
                pairs.append(pair)
        self._set_routes(grad=True)
        try:
            ce = F.cross_entropy(self.supernet(x), y)
            loss, expected = self.objective(ce)
            grads = torch.autograd.grad(loss, [op.gates for op in ops] + self.arch_parameters(), allow_unused=True)
        finally:
            for op in ops:
                op.gated_paths = None
            self._set_routes(grad=False)
        gate_grads, rest = grads[:len(ops)], grads[len(ops):]
        steps, old = [], []
        for a, pair, gg, ag in zip(self.alpha, pairs, gate_grads, rest):
            g = torch.zeros_like(a) if ag is None else ag.clone()
            if gg is not None:
                g += two_path_alpha_grad(a.detach(), pair, gg)
            steps.append(g)
            old.append(a.detach()[list(pair)].clone())
        steps += [torch.zeros_like(b) if g is None else g for b, g in zip(self.beta, rest[len(self.alpha):])]
        self.apply_arch_grads(steps)
        with torch.no_grad():  # ProxylessNAS's rescaling: the unsampled candidates keep their probabilities
            for a, pair, before in zip(self.alpha, pairs, old):
                idx = list(pair)
                a[idx] -= torch.logsumexp(a[idx], 0) - torch.logsumexp(before, 0)
        return self.arch_metrics(loss, ce, expected)
