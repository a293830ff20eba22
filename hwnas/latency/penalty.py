"""Differentiable expected latency and the latency-aware loss forms.

Expected latency of a chain supernet (ProxylessNAS eq. 5 / FBNet eq. 4)::

    E[LAT] = sum_l sum_i p_{l,i} * LAT_{l,i}  +  LAT_fixed

with ``p_l`` the layer's candidate probabilities and ``LAT_{l,i}`` the latency table's entry for
candidate ``i`` at layer ``l``'s deploy shape; LAT_fixed covers the stem, fixed first block, head and
classifier. It is a plain tensor expression, so its gradient reaches the architecture parameters:
``dE/dalpha_{l,i} = p_{l,i} (LAT_{l,i} - E_l)`` for a softmax.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hwnas.spaces.chain import ChainSpace

LOSS_FORMS = ("mul#log", "add#linear")
DEFAULTS = {"mul#log": {"alpha": 0.2, "beta": 0.3}, "add#linear": {"lambda": 0.1}}


class LatencyModel(nn.Module):
    """Per-layer candidate latencies (ms) of a space config, read from a latency table.

    ``table`` needs ``latency(signature) -> ms`` and ``require(signatures)``. Candidate latencies are
    buffers, so the model follows ``.to(device)``.

    A table whose sidecar carries an affine calibration ``measured ~ a + b * sum`` (from ``hwnas
    latency validate``) is applied by folding it into the entries: every candidate latency is scaled
    by ``b`` and the fixed part becomes ``a + b * fixed``. Expected latency, per-architecture
    predictions, the space's range and the constrained derivation are then all calibrated, and
    ``calibrated=False`` gives the plain sum.
    """

    def __init__(self, table, space: ChainSpace, config: dict, calibrated: bool = True):
        super().__init__()
        self.space, self.config = space, space.resolve_config(config)
        plan = space.plan(self.config)  # the deploy shape: the table's resolution
        self.choices = [p.choices for p in plan.layers]
        self.layer_signatures = [[space.signature(p, t, self.config) for t in p.choices] for p in plan.layers]
        self.fixed_signatures = [space.signature(p, None, self.config) for p in plan.fixed]
        needed = [s for s in self.fixed_signatures if s] + [s for row in self.layer_signatures for s in row if s]
        table.require(needed)
        cal = (getattr(table, "meta", None) or {}).get("calibration") if calibrated else None
        if cal is not None and not (cal.get("form") == "affine" and cal.get("b", 0) > 0):
            raise ValueError(f"latency table calibration {cal!r} is not an affine form with b > 0")
        self.calibration = cal
        scale, offset = (cal["b"], cal["a"]) if cal else (1.0, 0.0)
        look = lambda s: 0.0 if s is None else scale * float(table.latency(s))  # noqa: E731
        self.fixed_parts = [(p.kind, s, look(s)) for p, s in zip(plan.fixed, self.fixed_signatures)]
        if cal:
            self.fixed_parts.append(("calibration offset", None, offset))
        self.fixed_ms = sum(ms for _, _, ms in self.fixed_parts)
        for i, row in enumerate(self.layer_signatures):
            self.register_buffer(f"lat{i}", torch.tensor([look(s) for s in row], dtype=torch.float64))

    @property
    def num_layers(self) -> int:
        return len(self.choices)

    def layer(self, i: int) -> torch.Tensor:
        return getattr(self, f"lat{i}")

    def expected(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """E[LAT] in ms for per-layer probability vectors (differentiable)."""
        if len(probs) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} probability vectors, got {len(probs)}")
        total = sum((p * self.layer(i).to(p.dtype)).sum() for i, p in enumerate(probs))
        return total + self.fixed_ms

    def of_tokens(self, tokens: list[str]) -> float:
        """Predicted latency (ms) of one architecture."""
        return self.fixed_ms + sum(float(self.layer(i)[self.choices[i].index(t)]) for i, t in enumerate(tokens))

    def breakdown(self, tokens: list[str]) -> list[tuple[str, str, float]]:
        """(part, table signature or '-', ms) for every part of the architecture, in network order."""
        rows = [(kind, sig or "-", ms) for kind, sig, ms in self.fixed_parts if kind in ("stem", "first")]
        for i, t in enumerate(tokens):
            j = self.choices[i].index(t)
            rows.append((f"layer {i} {t}", self.layer_signatures[i][j] or "-", float(self.layer(i)[j])))
        rows += [(kind, sig or "-", ms) for kind, sig, ms in self.fixed_parts
                 if kind in ("head", "classifier", "calibration offset")]
        return rows

    def extremes(self) -> tuple[tuple[float, list[str]], tuple[float, list[str]]]:
        """((fastest ms, tokens), (slowest ms, tokens)) over the whole space (per-layer min/max)."""
        lo = [self.choices[i][int(torch.argmin(self.layer(i)))] for i in range(self.num_layers)]
        hi = [self.choices[i][int(torch.argmax(self.layer(i)))] for i in range(self.num_layers)]
        return (self.of_tokens(lo), lo), (self.of_tokens(hi), hi)


def latency_loss(ce: torch.Tensor, expected_ms: torch.Tensor, target_ms: float, form: str = "mul#log",
                 params: dict | None = None) -> torch.Tensor:
    """The ProxylessNAS latency-regularized losses (Cai et al. 2019, Sec. 3.3.1 and its code):

    - ``mul#log``:    ``alpha * CE * (log E[LAT] / log T) ** beta``   (defaults alpha=0.2, beta=0.3)
    - ``add#linear``: ``CE + lambda * (E[LAT] - T) / T``              (default lambda=0.1)

    ``T`` is the reference latency (the target). ``mul#log`` needs E[LAT] and T above 1 ms (the logs
    are of milliseconds); use ``add#linear`` for sub-millisecond targets.
    """
    p = {**DEFAULTS.get(form, {}), **(params or {})}
    if form == "mul#log":
        if target_ms <= 1.0:
            raise ValueError(f"loss form mul#log needs a target above 1 ms (got {target_ms:g} ms); use add#linear")
        return p["alpha"] * ce * (torch.log(expected_ms) / math.log(target_ms)) ** p["beta"]
    if form == "add#linear":
        return ce + p["lambda"] * (expected_ms - target_ms) / target_ms
    raise ValueError(f"unknown latency loss form {form!r}; allowed: {', '.join(LOSS_FORMS)}")
