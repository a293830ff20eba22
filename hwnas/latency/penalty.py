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

from hwnas.latency.calibration import block_ms, check_calibration
from hwnas.spaces.chain import ChainSpace

LOSS_FORMS = ("mul#log", "add#linear")
DEFAULTS = {"mul#log": {"alpha": 0.2, "beta": 0.3}, "add#linear": {"lambda": 0.1}}


class LatencyModel(nn.Module):
    """Per-layer candidate latencies (ms) of a space config, read from a latency table.

    ``table`` needs ``latency(signature) -> ms`` and ``require(signatures)``. Candidate latencies are
    buffers, so the model follows ``.to(device)``.

    A table whose sidecar carries a calibration (from ``hwnas latency validate``; the forms are in
    ``hwnas.latency.calibration``) is applied by folding it into the entries: every row is scaled by its
    factor (``b``, or its group's ``b_g``) plus the per-block term, and the offset ``a`` joins the fixed part. Expected latency,
    per-architecture predictions, the space's range and the constrained derivation are then all
    calibrated; ``calibrated=False`` gives the plain sum and ``calibration=`` overrides the table's.
    """

    def __init__(self, table, space: ChainSpace, config: dict, calibrated: bool = True,
                 calibration: dict | None = None):
        super().__init__()
        self.space, self.config = space, space.resolve_config(config)
        plan = space.plan(self.config)  # the deploy shape: the table's resolution
        keys = lambda p, t=None: signatures_of(space, p, t, self.config)  # noqa: E731
        self.choices = [p.choices for p in plan.layers]
        self.layer_signatures = [[keys(p, t) for t in p.choices] for p in plan.layers]
        self.fixed_signatures = [keys(p) for p in plan.fixed]
        needed = [s for row in self.fixed_signatures for s in row] + [s for row in self.layer_signatures for ks in row for s in ks]
        table.require(list(dict.fromkeys(needed)))
        self.table = table
        cal = calibration
        if cal is None and calibrated:
            cal = (getattr(table, "meta", None) or {}).get("calibration")
        if cal is not None:
            check_calibration(cal)
        self.calibration = cal
        look = lambda ks: sum(block_ms(cal, s, table.latency(s)) for s in ks)  # noqa: E731
        self.fixed_parts = [(p.kind, "+".join(ks) or None, look(ks)) for p, ks in zip(plan.fixed, self.fixed_signatures)]
        if cal:
            self.fixed_parts.append(("calibration offset", None, float(cal["a"])))
        self.fixed_ms = sum(ms for _, _, ms in self.fixed_parts)
        for i, row in enumerate(self.layer_signatures):
            self.register_buffer(f"lat{i}", torch.tensor([look(ks) for ks in row], dtype=torch.float64))
            if cal and float(self.layer(i).min()) < 0:
                j = int(self.layer(i).argmin())
                raise ValueError(f"latency table calibration makes layer {i}'s {self.choices[i][j]} cost "
                                 f"{float(self.layer(i)[j]):.4f} ms (negative): re-run `hwnas latency validate`")
        #: cell spaces: decision indices of each node's incoming edges, of which KEEP are kept
        self.groups = space.node_groups() if getattr(space, "kind", "chain") == "cell" else None
        self.keep = 2

    @property
    def num_layers(self) -> int:
        return len(self.choices)

    def layer(self, i: int) -> torch.Tensor:
        return getattr(self, f"lat{i}")

    def expected(self, probs: list[torch.Tensor], edge_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """E[LAT] in ms for per-layer probability vectors (differentiable).

        Cell spaces: an edge's op is drawn from its probabilities given that the edge is kept, and a node
        keeps ``KEEP`` of its incoming edges, edge ``e`` with probability
        ``min(1, KEEP * w_e / sum_node w)``, ``w_e = 1 - p_e(none)`` (times PC-DARTS's edge weight when
        ``edge_weights`` is given). At a converged (one-hot) architecture this is the derived genotype's
        latency; while the weights are soft it is a smooth stand-in whose gradient moves the ops and the
        edges the way the derivation will read them."""
        if len(probs) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} probability vectors, got {len(probs)}")
        if self.groups is None:
            total = sum((p * self.layer(i).to(p.dtype)).sum() for i, p in enumerate(probs))
            return total + self.fixed_ms
        total = 0.0
        for group in self.groups:
            mass = torch.stack([(probs[i] * self.layer(i).to(probs[i].dtype)).sum() for i in group])
            kept = torch.stack([1 - probs[i][0] for i in group]).clamp_min(1e-6)  # OPS[0] is none
            w = kept if edge_weights is None else kept * torch.stack([edge_weights[i] for i in group])
            share = torch.clamp(self.keep * w / w.sum(), max=1.0)
            total = total + (share * mass / kept).sum()
        return total + self.fixed_ms

    def of_tokens(self, tokens: list[str]) -> float:
        """Predicted latency (ms) of one architecture."""
        return self.fixed_ms + sum(float(self.layer(i)[self.choices[i].index(t)]) for i, t in enumerate(tokens))

    def blocks(self, tokens: list[str]) -> list[tuple[str, float]]:
        """``(signature, plain table ms)`` of every block the architecture runs, repeats included: what a
        calibration is fitted on."""
        sigs = [s for ks in self.fixed_signatures for s in ks]
        sigs += [s for i, t in enumerate(tokens) for s in self.layer_signatures[i][self.choices[i].index(t)]]
        return [(s, float(self.table.latency(s))) for s in sigs]

    def breakdown(self, tokens: list[str]) -> list[tuple[str, str, float]]:
        """(part, table signature or '-', ms) for every part of the architecture: stem, layers, then the
        other fixed parts (a cell space's per-cell preprocessing, head, classifier, calibration offset);
        the rows sum to ``of_tokens``."""
        rows = [(kind, sig or "-", ms) for kind, sig, ms in self.fixed_parts if kind in ("stem", "first")]
        for i, t in enumerate(tokens):
            j = self.choices[i].index(t)
            if self.groups is not None and t == "none":
                continue
            rows.append((f"layer {i} {t}", "+".join(dict.fromkeys(self.layer_signatures[i][j])) or "-",
                         float(self.layer(i)[j])))
        rows += [(kind, sig or "-", ms) for kind, sig, ms in self.fixed_parts  # cells' preprocessing too
                 if kind not in ("stem", "first")]
        return rows

    def extremes(self) -> tuple[tuple[float, list[str]], tuple[float, list[str]]]:
        """((fastest ms, tokens), (slowest ms, tokens)) over the whole space (per-layer min/max; in a
        cell space per node the ``KEEP`` edges whose cheapest / dearest op is cheapest / dearest)."""
        if self.groups is not None:
            return self._cell_extreme(min), self._cell_extreme(max)
        lo = [self.choices[i][int(torch.argmin(self.layer(i)))] for i in range(self.num_layers)]
        hi = [self.choices[i][int(torch.argmax(self.layer(i)))] for i in range(self.num_layers)]
        return (self.of_tokens(lo), lo), (self.of_tokens(hi), hi)


    def _cell_extreme(self, pick) -> tuple[float, list[str]]:
        tokens = ["none"] * self.num_layers
        for group in self.groups:
            best = []
            for i in group:
                lat = self.layer(i)[1:]  # every op but none
                j = int(torch.argmin(lat) if pick is min else torch.argmax(lat)) + 1
                best.append((float(self.layer(i)[j]), i, j))
            best.sort(reverse=pick is max)
            for _, i, j in best[: self.keep]:
                tokens[i] = self.choices[i][j]
        return self.of_tokens(tokens), tokens


def signatures_of(space, part, token=None, config=None) -> list[str]:
    """Every table key ``part`` with ``token`` runs (a cell space's edge runs in several cells; a chain
    layer is one block, or none for an identity)."""
    if hasattr(space, "signatures"):
        return space.signatures(part, token, config)
    sig = space.signature(part, token, config)
    return [] if sig is None else [sig]


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
