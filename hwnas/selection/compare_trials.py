"""Multi-trial methods side by side on a tabular benchmark (``hwnas compare --evaluator tabular``): every
method run ``repeats`` times (seeds ``seed .. seed + repeats - 1``) for the largest budget, and the best
metric among the trials that meet the target read off each run after 10, 30, 100 and 300 trials (those
within the budget), as NASLib and HW-NAS-Bench compare strategies. Beside them, random search's exact
expectation at each budget from the benchmark itself (``expected_best_of_random`` over the architectures
that meet the target), against which the random runs' mean is a check and the others' gain is read.

Each run is an ordinary selection run directory (``<out>/<method>/seed-<s>/trials.jsonl``), so a killed
compare resumes: finished trials are replayed, not evaluated again. The report: ``report.csv`` (one row per
method and budget: mean, standard deviation, min, max of the best, how many returned architectures break
the target, the strategy's own time per trial), ``report.md`` and ``best_so_far.png`` (mean best against
trials per method, random's expectation dashed). Strategy time is measured around ``ask`` and ``tell`` only
(the lookup and the trial record are not the strategy's cost).
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hwnas.fsio import atomic_write_text

log = logging.getLogger("hwnas.compare")

BUDGETS = (10, 30, 100, 300)
FIELDS = ["method", "trials", "mean_best", "std_best", "min_best", "max_best", "repeats", "violations",
          "random_expectation", "random_std", "strategy_ms_per_trial"]


@dataclass
class TrialsCompareConfig:
    methods: list[str] = field(default_factory=lambda: ["random", "evolution", "bo", "rl"])
    repeats: int = 20
    trials: int = 300
    seed: int = 0
    space: str = "nb201"
    latency_target: str | None = None
    benchmark: str | None = None
    metric: str = "accuracy"
    latency_column: str | None = None
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # per method: {"evolution": {"population": 20}}

    def validate(self) -> None:
        from hwnas.selection.selector import get_selector

        for m in self.methods:
            get_selector(m)
        if self.repeats < 1 or self.trials < 1:
            raise ValueError(f"need --repeats >= 1 and --trials >= 1 (got {self.repeats}, {self.trials})")
        if not self.benchmark:
            raise ValueError("--evaluator tabular needs --benchmark FILE.csv")


class _Timed:
    """A selector whose ``ask`` and ``tell`` time themselves (everything else passes through)."""

    def __init__(self, selector):
        self.selector, self.seconds = selector, 0.0

    def ask(self):
        t = time.perf_counter()
        try:
            return self.selector.ask()
        finally:
            self.seconds += time.perf_counter() - t

    def tell(self, layers, result):
        t = time.perf_counter()
        try:
            return self.selector.tell(layers, result)
        finally:
            self.seconds += time.perf_counter() - t

    def settings(self):
        return self.selector.settings()


def best_curve(trials: list[dict], upper_ms: float | None) -> list[float]:
    """Best metric so far after each trial, among trials predicted within ``upper_ms`` (-inf before one)."""
    best, out = float("-inf"), []
    for t in trials:
        ok = upper_ms is None or (t["predicted_ms"] is not None and t["predicted_ms"] <= upper_ms + 1e-12)
        if ok:
            best = max(best, float(t["result"]["accuracy"]))
        out.append(best)
    return out


def compare_selectors(cfg: TrialsCompareConfig, out_dir, table=None, progress=None) -> list[dict]:
    """Run the comparison (see the module docstring) into ``out_dir``; returns the report rows."""
    from hwnas.selection.loop import run_trials
    from hwnas.selection.run import SelectionConfig, selection_inputs
    from hwnas.selection.selector import get_selector
    from hwnas.selection.tabular import expected_best_of_random, std_best_of_random

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scfg = SelectionConfig(method=cfg.methods[0], evaluator="tabular", trials=cfg.trials, space=cfg.space,
                           latency_target=cfg.latency_target, config=dict(cfg.config), benchmark=cfg.benchmark,
                           metric=cfg.metric, latency_column=cfg.latency_column)
    scfg.validate()
    space, deploy, latency, target, evaluator = selection_inputs(scfg, out, table)
    window = (target.lower_ms, target.target_ms) if target.target_ms is not None and target.binds else None
    upper = None if window is None else window[1]
    stored = out / "compare.json"
    record = {**asdict(cfg), "target_ms": target.target_ms, "window": window, "table": scfg.table}
    if stored.exists():
        was = json.loads(stored.read_text())
        diff = sorted(k for k in record if k in ("methods", "seed", "space", "latency_target", "benchmark", "metric",
                                                 "latency_column", "config", "options") and was.get(k) != record[k])
        if diff:
            raise ValueError(f"{out}: this comparison ran with other {diff[0]} {was.get(diff[0])!r}; use a new --out")
    atomic_write_text(stored, json.dumps(record, indent=2) + "\n")

    bench = evaluator.bench
    feasible = [v for a, (v, _) in bench.rows.items() if upper is None or latency.of_tokens(list(a)) <= upper]
    budgets = [b for b in BUDGETS if b < cfg.trials] + [cfg.trials]
    expectation = {b: expected_best_of_random(feasible, b) for b in budgets}
    spread = {b: std_best_of_random(feasible, b) for b in budgets}
    log.info("%s: %d of %d architectures meet the target%s; random search's expected best at %s trials: %s",
             cfg.benchmark, len(feasible), len(bench.rows), f" {upper:.4g} ms" if upper else "",
             "/".join(map(str, budgets)), " / ".join(f"{expectation[b]:.3f}" for b in budgets))

    rows, curves = [], {}
    done, total = 0, len(cfg.methods) * cfg.repeats
    for method in cfg.methods:
        cls = get_selector(method)
        options = {**cls.budget_defaults(cfg.trials), **cfg.options.get(method, {})}
        per_seed, seconds, violations = [], 0.0, 0
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            selector = _Timed(cls(space, deploy, seed=seed, latency=latency, window=window, **options))
            trials = run_trials(selector, evaluator, out / method / f"seed-{seed}", cfg.trials, seed=seed,
                                latency=latency)
            seconds += selector.seconds
            curve = best_curve(trials, upper)
            per_seed.append(curve + [curve[-1]] * (cfg.trials - len(curve)))
            legal = [t for t in trials if upper is None or t["predicted_ms"] <= upper + 1e-12]
            if legal:
                best = max(legal, key=lambda t: t["result"]["accuracy"])
                violations += int(upper is not None and latency.of_tokens(best["arch"]) > upper + 1e-12)
            done += 1
            if progress is not None:
                progress(done, total)
        curves[method] = np.asarray(per_seed)
        for b in budgets:
            at = curves[method][:, b - 1]
            rows.append({"method": method, "trials": b, "mean_best": float(at.mean()), "std_best": float(at.std()),
                         "min_best": float(at.min()), "max_best": float(at.max()), "repeats": cfg.repeats,
                         "violations": violations, "random_expectation": expectation[b], "random_std": spread[b],
                         "strategy_ms_per_trial": 1e3 * seconds / (cfg.repeats * cfg.trials)})
    _write(out, rows, cfg, curves, expectation, len(feasible), len(bench.rows), upper)
    return rows


def _write(out: Path, rows, cfg, curves, expectation, n_feasible, n_total, upper) -> None:
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    budgets = sorted(expectation)
    lines = [f"# Multi-trial comparison on {cfg.benchmark} ({cfg.metric}{', latency ' + cfg.latency_column if cfg.latency_column else ''})",
             "",
             f"{cfg.repeats} seeds per method, up to {cfg.trials} trials; target "
             f"{'%.4g ms' % upper if upper else 'none'}: {n_feasible} of {n_total} architectures meet it. "
             f"Best {cfg.metric} among trials within the target, mean ± std over seeds [min, max].",
             "",
             "| method | " + " | ".join(f"{b} trials" for b in budgets) + " | violations | strategy ms/trial |",
             "|---" * (len(budgets) + 3) + "|"]
    for m in cfg.methods:
        cells = []
        for b in budgets:
            r = next(r for r in rows if r["method"] == m and r["trials"] == b)
            cells.append(f"{r['mean_best']:.3f} ± {r['std_best']:.3f} [{r['min_best']:.2f}, {r['max_best']:.2f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['violations']} | {r['strategy_ms_per_trial']:.3f} |")
    exact = [next(r for r in rows if r["trials"] == b) for b in budgets]
    lines.append("| random, exact | " + " | ".join(f"{r['random_expectation']:.3f} ± {r['random_std']:.3f}" for r in exact)
                 + " | | |")
    lines += ["", "Violations: returned architectures (the best within the target of a run) whose latency is above "
              "the target; strategy ms/trial: time inside ask and tell, the lookup and the trial record excluded."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(out / "best_so_far.png", curves, expectation, cfg)


def _plot(path: Path, curves, expectation, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, c in curves.items():
        mean = np.where(np.isfinite(c), c, np.nan)
        x = np.arange(1, c.shape[1] + 1)
        ax.plot(x, np.nanmean(mean, axis=0), label=m)
    b = sorted(expectation)
    ax.plot(b, [expectation[k] for k in b], "k--o", label="random, exact expectation")
    ax.set_xscale("log")
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best {cfg.metric} within the target")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
