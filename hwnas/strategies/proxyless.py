"""ProxylessNAS (Cai, Zhu, Han. ICLR 2019), the gradient-based variant with path binarization.

- Binary gates (Sec. 3.2, eq. 2-3): ``g = binarize(p_1..p_N)`` with ``p = softmax(alpha)``; the mixed
  op outputs the single active path, so a weight step holds one path in memory (``BinaryGatedOp``).
- Weight step: sample one path per layer from ``p`` (multinomial), update the path's weights on a
  training batch; architecture parameters are frozen.
- Architecture step (Sec. 3.2.1, eq. 4): on a validation batch, sample two paths per layer from the
  multinomial over ``p``, renormalize their probabilities, sample the active one, and estimate
  ``dL/dalpha_i = sum_j dL/dg_j * p_j (delta_ij - p_i)`` over the two paths, with ``dL/dg_j`` the
  gates' autograd gradients. After the update, the two updated logits are shifted by a common
  offset so the probabilities of the unsampled paths stay as they were (the paper's rescaling).
- Latency (Sec. 3.3.1, eq. 5): ``E[LAT] = sum_l sum_i p_{l,i} F(o_{l,i})`` with F the latency table;
  its gradient reaches every logit directly. Loss forms ``mul#log`` and ``add#linear``
  (hwnas.objective.latency_loss), plus the shared latency multiplier with a target
  (hwnas.objective.LatencyMultiplier). Defaults are the released code's: Adam lr 1e-3,
  betas (0, 0.999), eps 1e-8, no weight decay; mul#log alpha 0.2 beta 0.3; add#linear lambda 0.1.
- Option ``weights``: ``shared`` (default) cuts the candidates of every kernel x expansion layer out of
  one MBConv (``SharedBinaryGatedOp``: Once-for-All's elastic kernel and width), ``separate`` gives
  every candidate its own weights as the paper does. On a small proxy the separate-weight supernet
  does not learn in a search's few hundred steps (docs/methods.md, "Shared- vs separate-weight supernets"); gates, sampling and eq. 4
  are the same either way.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from hwnas.mixed.binary_gate import BinaryGatedOp
from hwnas.mixed.shared_gate import SharedBinaryGatedOp
from hwnas.strategies.base import register
from hwnas.strategies.factorized import FactorizedStrategy


def two_path_alpha_grad(alpha: torch.Tensor, pair: tuple[int, ...], gate_grad: torch.Tensor) -> torch.Tensor:
    """Eq. 4 over the sampled paths: ``dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)`` for ``i`` in
    ``pair`` (zero elsewhere), with ``q = softmax(alpha[pair])`` the renormalized probabilities."""
    q = F.softmax(alpha[list(pair)], dim=-1)
    g = gate_grad.to(q.dtype)
    local = q * (g - (q * g).sum())  # sum_j g_j q_j (delta_ij - q_i) = q_i (g_i - sum_j q_j g_j)
    out = torch.zeros_like(alpha)
    out[list(pair)] = local
    return out


@register
class ProxylessNAS(FactorizedStrategy):
    name = "proxyless"
    mixed_op = BinaryGatedOp
    defaults = {"arch_lr": 1e-3, "loss": "mul#log", "loss_params": None, "target_step": 0.05, "weights": "shared"}
    WEIGHTS = {"shared": SharedBinaryGatedOp, "separate": BinaryGatedOp}

    @classmethod
    def mixed_op_for(cls, **options):
        weights = options.get("weights", cls.defaults["weights"])
        if weights not in cls.WEIGHTS:
            raise ValueError(f"method {cls.name!r}: weights must be one of {', '.join(cls.WEIGHTS)}, got {weights!r}")
        return cls.WEIGHTS[weights]

    def __init__(self, supernet, latency=None, target_ms=None, **options):
        super().__init__(supernet, latency, target_ms, **options)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=self.options["arch_lr"],
                                         betas=(0.0, 0.999), eps=1e-8, weight_decay=0.0)

    def sample_weight_path(self) -> None:
        with torch.no_grad():
            for op, p in zip(self.supernet.mixed, self.probabilities()):
                op.gated_paths = None
                op.active = int(torch.multinomial(p, 1))

    def set_eval_path(self, tokens: list[str]) -> None:
        for op, t in zip(self.supernet.mixed, tokens):
            op.gated_paths = None
            op.active = op.tokens.index(t)

    def _sample_two_paths(self) -> list[tuple[int, ...]]:
        pairs = []
        with torch.no_grad():
            for op, a, p in zip(self.supernet.mixed, self.alpha, self.probabilities()):
                pair = tuple(int(i) for i in torch.multinomial(p, min(2, len(p)), replacement=False))
                q = F.softmax(a[list(pair)], dim=-1)
                op.gated_paths = pair
                op.active = pair[int(torch.multinomial(q, 1))]
                pairs.append(pair)
        return pairs

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        pairs = self._sample_two_paths()
        try:
            ce = F.cross_entropy(self.supernet(x), y)
            loss, expected = self.objective(ce)
            ops = list(self.supernet.mixed)
            inputs = [op.gates for op in ops] + self.arch_parameters()
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        finally:
            for op in self.supernet.mixed:
                op.gated_paths = None
        gate_grads, alpha_grads = grads[:len(ops)], grads[len(ops):]
        alpha_step, old = [], []
        for a, pair, gg, ag in zip(self.alpha, pairs, gate_grads, alpha_grads):
            grad = torch.zeros_like(a) if ag is None else ag.clone()
            if gg is not None:
                grad += two_path_alpha_grad(a.detach(), pair, gg)
            alpha_step.append(grad)
            old.append(a.detach()[list(pair)].clone())
        self.apply_arch_grads(alpha_step)
        with torch.no_grad():  # rescale: unsampled paths keep their probabilities
            for a, pair, before in zip(self.alpha, pairs, old):
                idx = list(pair)
                offset = torch.logsumexp(a[idx], 0) - torch.logsumexp(before, 0)
                a[idx] -= offset
        return self.arch_metrics(loss, ce, expected)


