"""Fitting a validation's calibration and choosing what it is fitted at: which rows fit (``fit_rows``), each
chunk's machine speed from the anchor networks (``anchor_positions``, ``chunk_factors``) and how much of it
is divided out, the statistic a table is read at (``pick_statistic``), and the fit with its held-out
figures (``_fit_and_report``)."""
from __future__ import annotations

import math
import random
import time

import numpy as np

from hwnas.latency.calibration import fit_affine, select_calibration
from hwnas.latency.predictor import LatencyModel
from hwnas.latency.reference import pick_references
from hwnas.latency.validation.figures import ValidationReport, error_figures

# Statistics ``validate`` stores for every measured network (``measured_<stat>_ms``), and those it chooses
# among when asked to choose (``pick_statistic``): the low quantile and the median; p90 is the tail.
_STATISTIC_COLUMNS = ("p10", "p50", "p90")
STATISTIC_CANDIDATES = ("p10", "p50")
# How much of each chunk's anchor factor is divided out, chosen with the statistic (``pick_statistic``):
# a measurement is put at ``raw / factor ** w``. The factor is itself measured: its error goes into every
# network of the chunk, and dividing by all of it over-corrects. In the shipped torch validations the
# chunks' mean residual after calibration fell as their factor rose, the signature of a noisy regressor
# (measurements: docs/measurements.md, 'Anchor weight'); the weight that predicts the fit networks best
# shrinks it.
ANCHOR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _every_row(table, model: LatencyModel) -> dict[str, float]:
    """Every row of the space in ``table`` (signature -> ms at the table's statistic): what a calibration
    must keep positive."""
    return {s: float(table.latency(s)) for ks in model.fixed_signatures + [k for row in model.layer_signatures for k in row]
            for s in ks}


def _factor(row: dict, q: str) -> float:
    """The chunk factor a row's ``measured_<q>_ms`` was divided by (``chunk_factor_<q>``; runs before one
    factor per quantile: ``chunk_factor``; no chunks: 1)."""
    for key in (f"chunk_factor_{q}", "chunk_factor"):
        if row.get(key) not in (None, ""):
            return float(row[key])
    return 1.0


def _at_weight(row: dict, q: str, weight: float, column: str = "measured") -> float:
    """``<column>_<q>_ms`` with only ``factor ** weight`` of its chunk factor divided out (stored: all of it)."""
    return float(row[f"{column}_{q}_ms"]) * _factor(row, q) ** (1.0 - weight)


def pick_statistic(table, space, config, rows: list[dict], fit_at: set[int],
                   candidates=STATISTIC_CANDIDATES, weights=ANCHOR_WEIGHTS) -> dict:
    """Choose the statistic the table is read at (and its networks measured at), and how much of each
    chunk's anchor factor to divide out (``weights``, see ``ANCHOR_WEIGHTS``), by the fit rows alone: for each
    pair the calibration is selected as usual (``select_calibration``) on the rows at ``fit_at``, table and
    networks read at that statistic, the networks at ``raw / factor ** weight``, and the pair with the
    smallest leave-one-out relative error wins (ties: the table's current statistic, then the full factor).
    The held-out rows play no part, so the figures reported on them stay held out. Which quantile repeats
    best is a property of the host: p10 on one whose calls run in a fast usual mode with an occasional slow
    one, p50 on one with an intermittent fast mode that p10 picks up (measurements: docs/measurements.md,
    'Which statistic (p10/p50)'). Sets ``table.meta["statistic"]`` and every row's
    ``measured_ms``, ``repeat_ms`` (at the chosen statistic and weight), ``chunk_factor`` and
    ``predicted_sum_ms``; returns ``{"candidates": {stat: best loo}, "by_weight": {stat: {weight: loo}},
    "chosen": stat, "anchor_weight": weight, "was": previous stat}``. Runs without chunks try the full
    factor only (it is 1)."""
    was = table.statistic
    missing = [q for q in candidates if q not in _STATISTIC_COLUMNS or any(r.get(f"measured_{q}_ms") in (None, "") for r in rows)]
    if missing:
        raise ValueError(f"the measured networks carry no {', '.join(missing)} figures to choose a statistic from "
                         f"(validate stores {', '.join(_STATISTIC_COLUMNS)}; choose among those, or validate again)")
    fit = [r for k, r in enumerate(rows) if k in fit_at]
    chunked = any(_factor(r, q) != 1.0 for r in rows for q in candidates)
    weights = tuple(weights) if chunked else (1.0,)
    loo: dict[str, dict[float, float]] = {}
    for q in candidates:
        table.meta["statistic"] = q
        model = LatencyModel(table, space, config, calibrated=False)
        blocks, every = [model.blocks(r["arch"].split(" ")) for r in fit], _every_row(table, model)
        loo[q] = {}
        for w in weights:
            try:
                loo[q][w] = select_calibration(blocks, [_at_weight(r, q, w) for r in fit], rows=every)["loo_rmse"]
            except ValueError:
                loo[q][w] = math.inf  # no calibration fits at this statistic and weight
    chosen, weight = min(((q, w) for q in candidates for w in weights),
                         key=lambda qw: (loo[qw[0]][qw[1]], qw[0] != was, qw[1] != 1.0))
    if not math.isfinite(loo[chosen][weight]):
        table.meta["statistic"] = was
        raise ValueError(f"no calibration fits the fit rows at any of {', '.join(candidates)}")
    table.meta["statistic"] = chosen
    model = LatencyModel(table, space, config, calibrated=False)
    for r in rows:
        r["measured_ms"] = _at_weight(r, chosen, weight)
        if r.get(f"repeat_{chosen}_ms") not in (None, ""):
            r["repeat_ms"] = _at_weight(r, chosen, weight, "repeat")
        if f"chunk_factor_{chosen}" in r:
            r["chunk_factor"] = r[f"chunk_factor_{chosen}"]
        r["predicted_sum_ms"] = model.of_tokens(r["arch"].split(" "))
    return {"candidates": {q: float(min(v.values())) for q, v in loo.items()},
            "by_weight": {q: {str(w): float(x) for w, x in v.items()} for q, v in loo.items()},
            "chosen": chosen, "anchor_weight": float(weight), "was": was}


def _on_common_level(stats: dict, factors: dict) -> dict:
    """``summarize`` stats with each quantile divided by its chunk factor (``factors[q]``), mean and std by
    the median's (counts kept)."""
    return {k: (v / factors[k] if k in factors else v / factors["p50"] if k in ("mean", "std") else v)
            for k, v in stats.items()}


def anchor_positions(predicted: list[float], k: int) -> list[int]:
    """Positions of ``k`` samples spread over the predicted range (nearest to evenly spaced quantiles
    strictly inside it): the anchors timed in every chunk."""
    if k < 1 or not predicted:
        return []
    order = sorted(range(len(predicted)), key=lambda i: predicted[i])
    return sorted({order[min(len(order) - 1, int((j + 1) * len(order) / (k + 1)))] for j in range(k)})


def chunk_factors(anchor_stats: list[list[float]]) -> list[float]:
    """Each chunk's speed relative to the others, from the anchor networks timed in every chunk:
    ``anchor_stats[c][j]`` is anchor ``j`` in chunk ``c``; the factor of chunk ``c`` is the median over
    anchors of its time divided by that anchor's median over all chunks (1.0 for a chunk at the usual
    speed, 1.1 for one measured while the machine ran 10% slower)."""
    a = np.asarray(anchor_stats, dtype=np.float64)
    if a.ndim != 2 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"anchor timings must be positive, one row per chunk; got {anchor_stats!r}")
    return [float(f) for f in np.median(a / np.median(a, axis=0), axis=1)]


def _split(n: int, fit_fraction: float) -> int:
    """How many of ``n`` samples fit the calibration; at least 3; at least 2 are held out."""
    n_fit = max(3, int(round(fit_fraction * n)))
    if n - n_fit < 2:
        raise ValueError(f"--samples {n} leaves {n - n_fit} held-out samples after {n_fit} to fit; use at least 6")
    return n_fit


def fit_rows(n: int, fit_fraction: float, seed: int) -> set[int]:
    """Which of ``n`` samples (by position) fit the calibration: ``_split``'s count, drawn at random with
    ``seed``. Not the first ones: in a torch validation whose fit half was the first half, the fit half
    measured a clearly larger multiple of its sums than the held-out half in the same interleaved rounds
    (the ratio fell with the position at which a network was built), and a calibration fitted on one and
    judged on the other measured that, not the predictor (measurements: docs/measurements.md, 'Fit half
    drawn at random')."""
    n_fit = _split(n, fit_fraction)
    return set(random.Random(seed).sample(range(n), n_fit))


def _fit_and_report(table, space, config, model: LatencyModel, rows: list[dict], fit_at: set[int], *, seed: int,
                    stat: str) -> ValidationReport:
    """Fit the calibration on ``rows`` at the positions ``fit_at`` (``select_calibration``: the affine form,
    per-block-type scales and/or a per-block term, whichever has the smallest leave-one-out error on those
    rows by a margin), fill in every row's ``split`` and ``calibrated_ms``, and return the report (figures
    on the held-out rows)."""
    fit = [r for k, r in enumerate(rows) if k in fit_at]
    held = [r for k, r in enumerate(rows) if k not in fit_at]
    blocks = [model.blocks(r["arch"].split(" ")) for r in fit]  # only the fit rows are fitted on
    cal = select_calibration(blocks, [r["measured_ms"] for r in fit], rows=_every_row(table, model))
    affine = fit_affine([r["predicted_sum_ms"] for r in fit], [r["measured_ms"] for r in fit])
    cal.update({"samples_seed": seed, "statistic": stat, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "references": pick_references(fit)})  # for drift compensation (hwnas.latency.reference)
    calibrated = LatencyModel(table, space, config, calibration=cal)
    for k, r in enumerate(rows):
        r["split"] = "fit" if k in fit_at else "held_out"
        r["calibrated_ms"] = calibrated.of_tokens(r["arch"].split(" "))
    meas = [r["measured_ms"] for r in held]
    before = error_figures([r["predicted_sum_ms"] for r in held], meas)
    after = error_figures([r["calibrated_ms"] for r in held], meas)
    after_affine = None
    if affine["b"] > 0:
        as_affine = LatencyModel(table, space, config, calibration=affine)
        after_affine = error_figures([as_affine.of_tokens(r["arch"].split(" ")) for r in held], meas)
    return ValidationReport(str(getattr(table, "path", "")), space.name, table.meta.get("backend", "?"), len(rows),
                            len(held), before, after, cal, 0.0, after_affine=after_affine)
