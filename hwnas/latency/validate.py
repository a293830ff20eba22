"""Predicted vs measured latency of whole networks, and the calibration that closes the gap.

``validate`` samples random architectures of a space (uniform per layer), predicts each with the
table (the sum of its blocks) and measures each whole network end to end on the table's backend,
at the table's deploy shape. The samples are split in two: an affine calibration
``measured ~ a + b * sum`` is fitted by least squares on the first part only, and every figure is
reported on the held-out part, before and after calibration: the share within +-5% and +-10%, the
mean absolute percentage error and Kendall's tau. The sum of per-block latencies misses what lies
between blocks (per-call overhead of each block's session, memory traffic between blocks, fusion
across block boundaries); the affine form absorbs a constant per-network offset (a) and a common
scale (b) and, being monotonic, never reorders architectures.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwnas.latency.penalty import LatencyModel
from hwnas.latency.timing import PROVIDERS, measure_module
from hwnas.spaces import Arch, atomic_write_text
from hwnas.spaces.builder import build_child
from hwnas.spaces.chain import ChainSpace

log = logging.getLogger("hwnas.latency")


def table_runtime(meta: dict) -> tuple[str | None, str | None]:
    """``(mode, provider)`` a table was profiled with, as ``measure_module`` takes them."""
    if meta.get("backend") == "torch":
        return meta.get("mode") or "eager", None
    names = {v: k for k, v in PROVIDERS.items()}
    return None, names.get(meta.get("provider"), "cpu")


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


def fit_affine(raw_sum, measured) -> dict:
    """Least-squares ``measured ~ a + b * raw_sum``."""
    x, y = np.asarray(raw_sum, float), np.asarray(measured, float)
    b, a = np.polyfit(x, y, 1)
    return {"form": "affine", "a": float(a), "b": float(b), "fit_samples": int(len(x))}


def apply_calibration(raw_ms: float, calibration: dict | None) -> float:
    if not calibration:
        return raw_ms
    return calibration["a"] + calibration["b"] * raw_ms


def sample_archs(space: ChainSpace, config: dict, n: int, seed: int = 0) -> list[list[str]]:
    """``n`` distinct architectures, each layer's token drawn uniformly from its choices."""
    rng = random.Random(seed)
    plan = space.plan(config)
    out, seen = [], set()
    while len(out) < n:
        tokens = [rng.choice(p.choices) for p in plan.layers]
        if tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            out.append(tokens)
    return out


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

    def to_dict(self) -> dict:
        return asdict(self)


def validate(table, space: ChainSpace, config: dict, out_dir: str | os.PathLike, *, samples: int = 100,
             fit_fraction: float = 0.5, seed: int = 0, warmup: int = 10, iterations: int = 50,
             progress=None) -> ValidationReport:
    """Measure ``samples`` random architectures end to end and write ``samples.csv``,
    ``report.json`` and ``scatter.png`` into ``out_dir``. Returns the report; the caller decides
    whether to store the calibration in the table (``table.meta["calibration"]``)."""
    meta = table.meta
    backend, threads = meta["backend"], int(meta.get("threads", 1))
    mode, provider = table_runtime(meta)
    device = (meta.get("device") or {}).get("type") or ("cpu" if provider in (None, "cpu") else "cuda")
    res, batch = int(meta["resolution"]), int(meta.get("batch", 1))
    model = LatencyModel(table, space, config)
    archs = sample_archs(space, config, samples, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()
    for i, tokens in enumerate(archs):
        net = build_child(Arch(space.name, config, tokens))
        stats = measure_module(net, (batch, 3, res, res), backend=backend, device=device, threads=threads,
                               warmup=warmup, iterations=iterations, dtype=meta.get("dtype", "fp32"),
                               mode=mode, provider=provider)
        rows.append({"index": i, "predicted_sum_ms": model.of_tokens(tokens), "measured_p50_ms": stats["p50"],
                     "measured_p10_ms": stats["p10"], "measured_p90_ms": stats["p90"], "arch": " ".join(tokens)})
        if progress:
            progress(i + 1, len(archs))
    n_fit = max(2, int(round(fit_fraction * len(rows))))
    fit, held = rows[:n_fit], rows[n_fit:]
    if len(held) < 2:
        raise ValueError(f"--samples {samples} leaves {len(held)} held-out samples; use at least 6")
    cal = fit_affine([r["predicted_sum_ms"] for r in fit], [r["measured_p50_ms"] for r in fit])
    cal.update({"samples_seed": seed, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    pred = [r["predicted_sum_ms"] for r in held]
    meas = [r["measured_p50_ms"] for r in held]
    before = error_figures(pred, meas)
    after = error_figures([apply_calibration(p, cal) for p in pred], meas)
    for r in rows:
        r["split"] = "fit" if r["index"] < n_fit else "held_out"
        r["calibrated_ms"] = apply_calibration(r["predicted_sum_ms"], cal)
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = ValidationReport(str(getattr(table, "path", "")), space.name, backend, len(rows), len(held), before,
                              after, cal, time.perf_counter() - started)
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    _scatter(rows, out / "scatter.png", f"{space.name} on {meta.get('device', {}).get('slug', '?')} ({backend})")
    return report


def _scatter(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    held = [r for r in rows if r["split"] == "held_out"]
    fit = [r for r in rows if r["split"] == "fit"]
    ax.scatter([r["measured_p50_ms"] for r in fit], [r["calibrated_ms"] for r in fit], s=10, c="0.7",
               label="fit samples (calibrated)")
    ax.scatter([r["measured_p50_ms"] for r in held], [r["predicted_sum_ms"] for r in held], s=12, marker="x",
               c="tab:red", label="held out: plain sum")
    ax.scatter([r["measured_p50_ms"] for r in held], [r["calibrated_ms"] for r in held], s=12, c="tab:blue",
               label="held out: calibrated")
    lo = min(min(r["measured_p50_ms"], r["predicted_sum_ms"], r["calibrated_ms"]) for r in rows)
    hi = max(max(r["measured_p50_ms"], r["predicted_sum_ms"], r["calibrated_ms"]) for r in rows)
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="k", alpha=0.07, label="+-10%")
    ax.set_xlabel("measured end-to-end latency, p50 (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
