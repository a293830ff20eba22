"""How well a trained supernet ranks architectures: ``hwnas rank RUN --archs N``.

For ``N`` architectures drawn uniformly among those predicted in the run's latency window ``[0.9 T, T]``
(rejection from ``Space.sample``; the window's random-score draw when that misses, as SPOS's evolution
fills its population), two scores side by side: the supernet's estimate (``SupernetPath``: the path's
inherited weights, BatchNorm recalibrated on training batches, validation accuracy) and the architecture's
own accuracy, trained from scratch for ``trial_epochs`` epochs with the ``hwnas train`` recipe (validation
accuracy) or read from a tabular benchmark (``benchmark``, column ``metric``). Reported: Kendall's tau-b
and Spearman's rho between the two (ties averaged), and a scatter plot.

Everything lands in ``RUN/rank-<what>/``: ``trials.jsonl`` (one line per architecture with both scores:
``hwnas.selection.loop.run_trials``, so a killed ranking resumes without scoring a finished architecture
again), ``rank.json`` (the figures), ``rank.csv`` and ``rank.png``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np

from hwnas.fsio import atomic_write_text
from hwnas.selection.evaluate import Evaluator

log = logging.getLogger("hwnas.rank")


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the average of the ranks they span."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(a, b) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (nan when either side is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau(a, b) -> float:
    """Kendall's tau-b: ``(concordant - discordant) / sqrt((n0 - ties_a)(n0 - ties_b))`` over all pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    n0 = len(da)
    denom = np.sqrt(float(n0 - (da == 0).sum()) * float(n0 - (db == 0).sum()))
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


class SideBySide(Evaluator):
    """The supernet's estimate (``accuracy``, what the sampler ranks by) beside the truth (``truth``)."""

    def __init__(self, supernet: Evaluator, truth: Evaluator):
        self.supernet, self.truth = supernet, truth

    def evaluate(self, layers: list[str], seed: int) -> dict:
        estimate = self.supernet.evaluate(layers, seed)["accuracy"]
        truth = self.truth.evaluate(layers, seed)
        return {"accuracy": estimate, "truth": truth["accuracy"],
                **{f"truth_{k}": v for k, v in truth.items() if k != "accuracy"}}

    def settings(self) -> dict:
        return {"supernet": self.supernet.settings(), "truth": self.truth.settings()}


def rank(run_dir: str | os.PathLike, archs: int = 10, *, trial_epochs: int = 1, benchmark: str | None = None,
         metric: str = "accuracy", seed: int = 0, calibration_batches: int = 8, batch_size: int = 64,
         device: str | None = None, progress=None) -> dict:
    """Score ``archs`` architectures of the one-shot run ``run_dir`` both ways (see the module docstring);
    returns the figures (also ``rank.json``)."""
    from hwnas.selection.loop import run_trials
    from hwnas.selection.run import SelectionConfig, _supernet_evaluator
    from hwnas.selection.spos_evolution import SPOSEvolution

    if archs < 3:
        raise ValueError(f"--archs {archs}: a rank correlation needs at least 3 architectures")
    run = Path(run_dir)
    cfg = SelectionConfig(method="random", evaluator="supernet", supernet=str(run), trials=archs,
                          calibration_batches=calibration_batches)
    estimate, search = _supernet_evaluator(cfg)
    if device is not None and str(search.device) != str(device):
        raise ValueError(f"--device {device}: the run {run} searched on {search.device}; rank it there")
    t = search.target
    window = (t.lower_ms, t.target_ms) if t.target_ms is not None and t.binds else None
    if benchmark:
        from hwnas.selection.tabular import Tabular, TabularBenchmark

        truth = Tabular(TabularBenchmark(benchmark, search.space, search.deploy_config, metric))
        what = "benchmark"
    else:
        from hwnas.selection.evaluate import TrainFromScratch

        if trial_epochs < 1:
            raise ValueError(f"--trial-epochs {trial_epochs}: must be at least 1")
        truth = TrainFromScratch(search.space.name, search.deploy_config, run / "rank-trained" / "trials",
                                 data=search.cfg.data, data_root=search.cfg.data_root, epochs=trial_epochs,
                                 device=str(search.device), batch_size=batch_size)
        what = "trained"
    out = run / f"rank-{what}"
    sampler = SPOSEvolution(search.space, search.deploy_config, seed=seed, latency=search.latency, window=window,
                            population=archs, topk=1, iterations=0, mutations=0, crossovers=0)
    log.info("rank: %d architectures of %s%s, the supernet's estimate beside %s", archs, run,
             f" predicted in [{window[0]:.4g}, {window[1]:.4g}] ms" if window else "",
             f"{benchmark} ({metric})" if benchmark else f"training from scratch for {trial_epochs} epoch(s)")
    trials = run_trials(sampler, SideBySide(estimate, truth), out, archs, seed=seed, latency=search.latency,
                        progress=progress)
    est = [t["result"]["accuracy"] for t in trials]
    tru = [t["result"]["truth"] for t in trials]
    figures = {"run_dir": str(run), "method": search.cfg.method, "space": search.cfg.space, "data": search.cfg.data,
               "archs": len(trials), "truth": what, "trial_epochs": None if benchmark else trial_epochs,
               "benchmark": benchmark, "metric": metric if benchmark else "val_acc", "window_ms": window,
               "kendall_tau": kendall_tau(est, tru), "spearman_rho": spearman_rho(est, tru),
               "supernet_range": [min(est), max(est)], "truth_range": [min(tru), max(tru)],
               "top1_truth_rank": int(len(tru) - average_ranks(tru)[int(np.argmax(est))] + 1), "out": str(out)}
    atomic_write_text(out / "rank.json", json.dumps(figures, indent=2) + "\n")
    with open(out / ".rank.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "arch", "predicted_ms", "supernet_acc", "truth"])
        for t in trials:
            w.writerow([t["trial"], search.space.arch_string(t["arch"]), t["predicted_ms"], t["result"]["accuracy"],
                        t["result"]["truth"]])
    os.replace(out / ".rank.csv.tmp", out / "rank.csv")
    _plot(est, tru, figures, out / "rank.png")
    return figures


def _plot(est, tru, figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(est, tru, s=14)
    ax.set_xlabel("supernet estimate (val acc, BN recalibrated)")
    ax.set_ylabel("own accuracy (" + ("benchmark" if figures["benchmark"] else f"trained {figures['trial_epochs']} ep")
                  + ")")
    ax.set_title(f"{figures['method']} on {figures['space']}: tau {figures['kendall_tau']:.2f}, "
                 f"rho {figures['spearman_rho']:.2f}, n={figures['archs']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
