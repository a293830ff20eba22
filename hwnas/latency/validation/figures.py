"""The figures a validation reports (``ValidationReport``): prediction error and ranking agreement
(``error_figures``, ``kendall_tau``), the measurement's own noise from networks built twice
(``repeatability``) and what a perfect predictor would reach under it (``tau_ceiling``), and the scatter
plot of predicted against measured latency."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class ValidationReport:
    table: str
    space: str
    backend: str
    samples: int
    holdout: int
    before: dict
    after: dict
    calibration: dict
    seconds: float
    sampling: str = "spread"
    rounds: int = 5
    iterations: int = 50
    repeatability: dict | None = None
    after_affine: dict | None = None  # held-out figures of the affine form, beside a grouped choice
    chunk: int | None = None  # networks alive and timed together
    chunk_factors: list | None = None  # each chunk's speed relative to the anchors' median (divided out)
    statistic_choice: dict | None = None  # pick_statistic's leave-one-out error per statistic, and its choice
    chunk_factors_by_statistic: dict | None = None  # {p10|p50|p90: [factor per chunk]}, each divided out of its own
    anchor_timings: list | None = None  # [chunk][anchor] {p10, p50, p90} ms as measured (before any factor)

    def to_dict(self) -> dict:
        return asdict(self)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties counted as neither concordant nor discordant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        dx, dy = np.sign(x[i + 1:] - x[i]), np.sign(y[i + 1:] - y[i])
        prod = dx * dy
        conc += int((prod > 0).sum())
        disc += int((prod < 0).sum())
        tx += int(((dx == 0) & (dy != 0)).sum())
        ty += int(((dy == 0) & (dx != 0)).sum())
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else 0.0


def error_figures(predicted, measured) -> dict:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (p - m) / m
    return {"n": int(len(m)), "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "mape": float(np.mean(np.abs(rel))),
            "mean_signed_error": float(np.mean(rel)), "kendall_tau": kendall_tau(p, m)}


def repeatability(rows: list[dict], stat: str) -> dict | None:
    """The noise floor at ``stat``: how often the networks built twice (``repeat_<stat>_ms`` beside
    ``measured_<stat>_ms``; older runs: ``repeat_ms`` beside ``measured_ms``) agreed within +-5% and +-10%,
    and how often a perfect predictor would land within them of one measurement (module docstring of
    ``validate``). None when no network was built twice."""
    col, rep = f"measured_{stat}_ms", f"repeat_{stat}_ms"
    if rows and rep not in rows[0]:
        col, rep = "measured_ms", "repeat_ms"
    pairs = [(float(r[col]), float(r[rep])) for r in rows if r.get(rep) not in (None, "")]
    if not pairs:
        return None
    diff = np.array([abs(b / a - 1) for a, b in pairs])
    return {"n": int(len(diff)), "statistic": stat, "within_5pct": float(np.mean(diff <= 0.05)),
            "within_10pct": float(np.mean(diff <= 0.10)), "median_abs_diff": float(np.median(diff)),
            "max_abs_diff": float(diff.max()),
            "perfect_within_5pct": float(np.mean(diff <= 0.05 * math.sqrt(2))),
            "perfect_within_10pct": float(np.mean(diff <= 0.10 * math.sqrt(2)))}


def tau_ceiling(measured, median_abs_diff: float, draws: int = 200, seed: int = 0) -> float:
    """About the Kendall tau a perfect predictor would reach against ``measured`` (the held-out networks'
    measurements) when each measurement carries the noise the twins show: two instances of one network
    differing by ``median_abs_diff`` in the median means one measurement's relative error has a standard
    deviation of about ``median_abs_diff / (0.6745 * sqrt(2))`` (Gaussian noise assumed); the ceiling is
    the mean tau between ``measured`` and ``measured * (1 + e)`` over ``draws`` such errors. Networks whose
    latencies lie closer together than that noise swap places whatever the predictor: a tau target above
    this figure cannot be met by measuring once."""
    m = np.asarray(measured, dtype=np.float64)
    if len(m) < 2 or not median_abs_diff > 0:
        return 1.0
    sigma = median_abs_diff / (0.6745 * math.sqrt(2))
    rng = np.random.default_rng(seed)
    return float(np.mean([kendall_tau(m, m * (1 + rng.normal(0.0, sigma, len(m)))) for _ in range(draws)]))


def _with_tau_ceiling(rep: dict | None, rows: list[dict]) -> dict | None:
    if rep is None:
        return None
    held = [float(r["measured_ms"]) for r in rows if r.get("split") == "held_out"]
    return {**rep, "perfect_kendall_tau": tau_ceiling(held, float(rep["median_abs_diff"]))}


def _scatter(rows: list[dict], path: Path, title: str, stat: str = "p50") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    held = [r for r in rows if r["split"] == "held_out"]
    fit = [r for r in rows if r["split"] == "fit"]
    ax.scatter([r["measured_ms"] for r in fit], [r["calibrated_ms"] for r in fit], s=10, c="0.7",
               label="fit samples (calibrated)")
    ax.scatter([r["measured_ms"] for r in held], [r["predicted_sum_ms"] for r in held], s=12, marker="x",
               c="tab:red", label="held out: plain sum")
    ax.scatter([r["measured_ms"] for r in held], [r["calibrated_ms"] for r in held], s=12, c="tab:blue",
               label="held out: calibrated")
    lo = min(min(r["measured_ms"], r["predicted_sum_ms"], r["calibrated_ms"]) for r in rows)
    hi = max(max(r["measured_ms"], r["predicted_sum_ms"], r["calibrated_ms"]) for r in rows)
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="k", alpha=0.07, label="+-10%")
    ax.set_xlabel(f"measured end-to-end latency, {stat} (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
