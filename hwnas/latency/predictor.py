"""The latency predictor: differentiable expected latency of a supernet from a latency table.

Expected latency of a chain supernet (ProxylessNAS eq. 5 / FBNet eq. 4)::

    E[LAT] = sum_l sum_i p_{l,i} * LAT_{l,i}  +  LAT_fixed

with ``p_l`` the layer's candidate probabilities and ``LAT_{l,i}`` the latency table's entry for
candidate ``i`` at layer ``l``'s deploy shape; LAT_fixed covers the stem, fixed first block, head and
classifier. It is a plain tensor expression, so its gradient reaches the architecture parameters:
``dE/dalpha_{l,i} = p_{l,i} (LAT_{l,i} - E_l)`` for a softmax. The loss forms built on it and the
target policy are in ``hwnas.objective``.
"""
from __future__ import annotations

import torch
from torch import nn

from hwnas.latency.calibration import block_ms, check_calibration
from hwnas.spaces.base import Space


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

    def __init__(self, table, space: Space, config: dict, calibrated: bool = True,
                 calibration: dict | None = None):
        super().__init__()
        self.space, self.config = space, space.resolve_config(config)
        terms = space.latency_terms(self.config)  # at the deploy shape: the table's resolution
        self.choices = list(terms.choices)
        self.layer_signatures = terms.signatures
        self.fixed_signatures = [ks for _, ks in terms.fixed]
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
        self.fixed_parts = [(part, "+".join(ks) or None, look(ks)) for part, ks in terms.fixed]
        if cal:
            self.fixed_parts.append(("calibration offset", None, float(cal["a"])))
        self.fixed_ms = sum(ms for _, _, ms in self.fixed_parts)
        for i, row in enumerate(self.layer_signatures):
            self.register_buffer(f"lat{i}", torch.tensor([look(ks) for ks in row], dtype=torch.float64))
            if cal and float(self.layer(i).min()) < 0:
                j = int(self.layer(i).argmin())
                raise ValueError(f"latency table calibration makes layer {i}'s {self.choices[i][j]} cost "
                                 f"{float(self.layer(i)[j]):.4f} ms (negative): re-run `hwnas latency validate`")

    @property
    def num_layers(self) -> int:
        return len(self.choices)

    def layer(self, i: int) -> torch.Tensor:
        return getattr(self, f"lat{i}")

    def expected(self, probs: list[torch.Tensor], edge_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """E[LAT] in ms for per-decision probability vectors (differentiable): the space's
        ``expected_latency`` (independent decisions: ProxylessNAS eq. 5; a cell's kept edges: see
        ``CellSpace.expected_latency``; ``edge_weights`` are PC-DARTS's)."""
        if len(probs) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} probability vectors, got {len(probs)}")
        return self.space.expected_latency(probs, self.layer_ms(), self.fixed_ms, edge_weights, config=self.config)

    def layer_ms(self) -> list[torch.Tensor]:
        """Every decision's candidate latencies (ms), as buffers."""
        return [self.layer(i) for i in range(self.num_layers)]

    def derive_within(self, log_probs, lower_ms: float, upper_ms: float) -> list[str]:
        """The most probable architecture (per-decision ``log_probs``) whose predicted latency lies in
        ``[lower_ms, upper_ms]``: the space's constrained derivation on this table."""
        lat = [x.detach().cpu().numpy() for x in self.layer_ms()]
        return self.space.derive_within(self.choices, log_probs, lat, self.fixed_ms, lower_ms, upper_ms)

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
            if t is not None and t == self.space.absent_token:
                continue
            rows.append((f"layer {i} {t}", "+".join(dict.fromkeys(self.layer_signatures[i][j])) or "-",
                         float(self.layer(i)[j])))
        rows += [(kind, sig or "-", ms) for kind, sig, ms in self.fixed_parts  # cells' preprocessing too
                 if kind not in ("stem", "first")]
        return rows

    def extremes(self) -> tuple[tuple[float, list[str]], tuple[float, list[str]]]:
        """((fastest ms, tokens), (slowest ms, tokens)) over the whole space (``Space.extremes``)."""
        lo, hi = self.space.extremes(self.choices, [x.detach().cpu().numpy() for x in self.layer_ms()])
        return (self.of_tokens(lo), lo), (self.of_tokens(hi), hi)
