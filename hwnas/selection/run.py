"""A multi-trial search as a run directory: ``hwnas search --method random|evolution|bo|rl --evaluator train|supernet``.

The selector (``SELECTORS``) proposes, the evaluator scores, ``run_trials`` records ``trials.jsonl``; at the
end the most accurate trial predicted within the target is the run's ``arch.json`` (for ``hwnas train`` and
``hwnas export``), with ``summary.json`` and a best-so-far plot. ``config.json`` holds everything a resume
needs: ``hwnas search --resume RUN`` rebuilds the selector and evaluator from it and replays the trials.

Evaluators: ``train`` trains each candidate from scratch for ``trial_epochs`` (the ``hwnas train`` recipe,
validation accuracy); ``supernet`` scores each as a path of the trained supernet of the one-shot run
``supernet`` (its final checkpoint, BatchNorm recalibrated: SPOS's selection), on that run's space,
data and latency table.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hwnas.fsio import atomic_write_text

log = logging.getLogger("hwnas.selection")

EVALUATORS = ("train", "supernet", "tabular")


@dataclass
class SelectionConfig:
    method: str = "random"
    evaluator: str = "train"
    trials: int = 20
    space: str = "proxyless"
    data: str = "digits"
    data_root: str | None = None
    seed: int = 0
    latency_target: str | None = None
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the selector's (population, sample, tries)
    trial_epochs: int = 1
    batch_size: int = 64
    device: str = "cpu"
    supernet: str | None = None  # the one-shot run whose supernet scores paths (evaluator supernet)
    calibration_batches: int = 8
    table: str | None = None
    table_overlay: str | None = None
    train_resolution: int | None = None
    benchmark: str | None = None  # evaluator tabular: the CSV, its metric column, its latency column (or the LUT)
    metric: str = "accuracy"
    latency_column: str | None = None

    def validate(self) -> None:
        from hwnas.selection.selector import get_selector

        get_selector(self.method)
        if self.evaluator not in EVALUATORS:
            raise ValueError(f"--evaluator {self.evaluator!r}: choose from {', '.join(EVALUATORS)}")
        if self.trials < 1 or self.trial_epochs < 1:
            raise ValueError(f"need --trials >= 1 and --trial-epochs >= 1 (got {self.trials}, {self.trial_epochs})")
        if self.evaluator == "supernet" and not self.supernet:
            raise ValueError("--evaluator supernet needs --supernet RUN_DIR (a finished one-shot search)")
        if self.evaluator == "tabular" and not self.benchmark:
            raise ValueError("--evaluator tabular needs --benchmark FILE.csv (columns arch, --metric, [--latency-column])")
        if self.evaluator != "tabular" and (self.benchmark or self.latency_column):
            raise ValueError("--benchmark and --latency-column belong to --evaluator tabular")


def _supernet_evaluator(cfg: SelectionConfig):
    """The trained supernet of run ``cfg.supernet``: (evaluator, its Search) on that run's own inputs."""
    from hwnas.api import build_search
    from hwnas.latency.lookup import load_layers, recorded_layers
    from hwnas.searching import load_search_config
    from hwnas.selection.evaluate import SupernetPath

    run = Path(cfg.supernet)
    if not (run / "config.json").exists() or not (run / "checkpoint.pt").exists():
        raise ValueError(f"--supernet {run}: not a one-shot search run directory (needs config.json and checkpoint.pt)")
    scfg = load_search_config(run)
    layers = recorded_layers(scfg)
    table = load_layers(layers) if layers else None
    scfg.latency_target = cfg.latency_target if cfg.latency_target is not None else scfg.latency_target
    search = build_search(scfg, run, table=table)
    search.load_checkpoint()
    ev = SupernetPath(search.strategy, search.val_loader, search.train_loader, search.device, cfg.calibration_batches)
    return ev, search


def _tabular_inputs(cfg: SelectionConfig):
    """A benchmark with its own latency column: no LUT, no data; the target is read against the column."""
    from hwnas.objective import resolve_target
    from hwnas.selection.tabular import Tabular, TabularBenchmark, TabularLatency
    from hwnas.spaces import get_space

    space = get_space(cfg.space)
    deploy = space.resolve_config(cfg.config)
    bench = TabularBenchmark(cfg.benchmark, space, deploy, cfg.metric, cfg.latency_column)
    latency = TabularLatency(bench)
    target = resolve_target(cfg.latency_target, latency, where=f" in the benchmark {cfg.benchmark}")
    return space, deploy, latency, target, Tabular(bench)


def selection_inputs(cfg: SelectionConfig, run_dir: Path, table=None):
    """(space, deploy config, latency model, target, evaluator) of ``cfg``; records the table used in ``cfg``."""
    from hwnas.api import prepare_search
    from hwnas.searching import SearchConfig
    from hwnas.selection.evaluate import TrainFromScratch

    if cfg.evaluator == "supernet":
        evaluator, search = _supernet_evaluator(cfg)
        space, deploy, latency, target = search.space, search.deploy_config, search.latency, search.target
        cfg.space, cfg.data, cfg.data_root = search.cfg.space, search.cfg.data, search.cfg.data_root
        cfg.table, cfg.table_overlay = search.cfg.table, search.cfg.table_overlay
        cfg.train_resolution = search.data.resolution
    elif cfg.evaluator == "tabular" and cfg.latency_column:
        space, deploy, latency, target, evaluator = _tabular_inputs(cfg)
    else:
        scfg = SearchConfig(space=cfg.space, data=cfg.data, data_root=cfg.data_root, seed=cfg.seed,  # the inputs only
                            latency_target=cfg.latency_target, config=cfg.config, train_resolution=cfg.train_resolution)
        inputs = prepare_search(scfg, table)
        space, deploy, latency, target = inputs.space, inputs.deploy_config, inputs.latency, inputs.target
        cfg.train_resolution = inputs.data.resolution
        t = getattr(latency, "table", None)
        if t is not None:
            cfg.table, cfg.table_overlay = str(t.path), (str(t.overlay) if t.overlay else None)
        if cfg.evaluator == "tabular":
            from hwnas.selection.tabular import Tabular, TabularBenchmark

            evaluator = Tabular(TabularBenchmark(cfg.benchmark, space, deploy, cfg.metric))
        else:
            evaluator = TrainFromScratch(space.name, deploy, run_dir / "trials", data=cfg.data, data_root=cfg.data_root,
                                         epochs=cfg.trial_epochs, device=cfg.device, batch_size=cfg.batch_size)
    return space, deploy, latency, target, evaluator


def run_selection(cfg: SelectionConfig, run_dir: str | os.PathLike, table=None, progress=None) -> dict:
    """Run (or resume) the multi-trial search ``cfg`` into ``run_dir``; returns its summary. ``table`` is a
    LatencyTable or the search's table callback ``(space, deploy_config)`` (ignored with ``supernet``, which
    uses its run's)."""
    from hwnas.selection.loop import run_trials
    from hwnas.selection.selector import get_selector
    from hwnas.spaces import Arch

    cfg.validate()
    run_dir = Path(run_dir)
    started = time.perf_counter()
    space, deploy, latency, target, evaluator = selection_inputs(cfg, run_dir, table)
    window = (target.lower_ms, target.target_ms) if target.target_ms is not None and target.binds else None
    cls = get_selector(cfg.method)
    cfg.options = {**cls.budget_defaults(cfg.trials), **cfg.options}
    try:
        selector = cls(space, deploy, seed=cfg.seed, latency=latency, window=window, **cfg.options)
    except TypeError as e:  # an --opt the selector does not take
        raise ValueError(f"--method {cfg.method}: {e}") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if not path.exists():
        atomic_write_text(path, json.dumps({**asdict(cfg), "kind": "selection", "deploy_config": deploy,
                                            "target_ms": target.target_ms, "window": window}, indent=2) + "\n")
    log.info("%s", target.describe(space.name, window=False))
    log.info("%s search, %d trials scored by %s%s", cfg.method, cfg.trials, cfg.evaluator,
             f"; every candidate predicted within {window[1]:.3f} ms" if window else "")
    trials = run_trials(selector, evaluator, run_dir, cfg.trials, seed=cfg.seed, latency=latency, progress=progress)
    legal = [t for t in trials if window is None or (t["predicted_ms"] is not None and t["predicted_ms"] <= window[1])]
    if not legal:
        raise ValueError(f"{run_dir}: no trial meets the target {window[1]:.3f} ms; nothing to derive")
    best = max(legal, key=lambda t: t["result"]["accuracy"])
    arch = Arch(space.name, deploy, best["arch"])
    arch.meta = {"provenance": {"method": cfg.method, "evaluator": cfg.evaluator, "run_dir": str(run_dir),
                                "trial": best["trial"], "accuracy": best["result"]["accuracy"],
                                "predicted_latency_ms": best["predicted_ms"], "target_ms": target.target_ms,
                                "table": cfg.table, "table_overlay": cfg.table_overlay, "data": cfg.data}}
    arch.save(run_dir / "arch.json")
    summary = {"arch": best["arch"], "trial": best["trial"], "accuracy": best["result"]["accuracy"],
               "predicted_latency_ms": best["predicted_ms"], "target_ms": target.target_ms, "trials": len(trials),
               "seconds": round(time.perf_counter() - started, 1), "run_dir": str(run_dir)}
    if space.has_notation:
        summary["arch_string"] = space.arch_string(best["arch"])
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_best_so_far(trials, run_dir / "best_so_far.png")
    if cfg.options.get("pareto"):
        summary["pareto"] = write_pareto(legal, run_dir, space)
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_pareto(trials: list[dict], run_dir: Path, space) -> int:
    """The accuracy / latency Pareto front of ``trials`` as ``pareto.json`` (fastest first) and
    ``pareto.png``; returns its size."""
    import numpy as np

    from hwnas.selection.evolution import non_dominated_ranks

    obj = np.array([[-t["result"]["accuracy"], t["predicted_ms"]] for t in trials])
    front = sorted((t for t, r in zip(trials, non_dominated_ranks(obj)) if r == 0), key=lambda t: t["predicted_ms"])
    atomic_write_text(run_dir / "pareto.json", json.dumps(
        [{"trial": t["trial"], "arch": t["arch"], "arch_string": space.arch_string(t["arch"]),
          "accuracy": t["result"]["accuracy"], "predicted_latency_ms": t["predicted_ms"]} for t in front],
        indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(obj[:, 1], -obj[:, 0], s=8, c="0.7", label="trials")
    ax.plot([t["predicted_ms"] for t in front], [t["result"]["accuracy"] for t in front], "o-", c="C3",
            label="Pareto front")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "pareto.png", dpi=100)
    plt.close(fig)
    return len(front)


def select(method, *, space, latency_target, data, data_root, config, options, seed, device, train_resolution,
            trials, trial_epochs, evaluator, supernet, benchmark, metric, latency_column, runs, resume, table,
            progress):
    """A multi-trial search as ``hwnas.search`` (and ``hwnas search``) runs it: a new run directory (or
    ``resume``), its log file, ``run_selection``, the resulting arch."""
    from hwnas.api import SearchResult, _log_file
    from hwnas.device import resolve_device
    from hwnas.exporting import resolve_arch
    from hwnas.latency.lookup import load_layers, recorded_layers
    from hwnas.runs import new_run_dir

    if resume:
        run_dir = Path(resume)
        cfg = load_selection_config(run_dir)
        layers = recorded_layers(cfg)
        if layers:
            table = load_layers(layers)
    else:
        space = space or ("nb201" if evaluator == "tabular" else "proxyless")
        cfg = SelectionConfig(method=method, evaluator=evaluator, trials=trials, space=space, data=data,
                              data_root=data_root, seed=seed, latency_target=latency_target, config=dict(config or {}),
                              options=dict(options or {}), trial_epochs=trial_epochs,
                              device=str(resolve_device(device)), supernet=supernet, train_resolution=train_resolution,
                              benchmark=benchmark and str(benchmark), metric=metric, latency_column=latency_column)
        cfg.validate()
        run_dir = new_run_dir(runs, cfg.method, cfg.space if evaluator != "supernet" else "supernet")
    handler = _log_file(run_dir / "log.txt")
    try:
        summary = run_selection(cfg, run_dir, table=table, progress=progress)
    finally:
        logging.getLogger("hwnas").removeHandler(handler)
        handler.close()
    arch = resolve_arch(str(run_dir)).arch
    return SearchResult(run_dir, arch, summary, cfg, arch.space_obj)


def plot_best_so_far(trials: list[dict], path: Path) -> None:
    """Best accuracy so far against the trial count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, curve = float("-inf"), []
    for t in trials:
        best = max(best, t["result"]["accuracy"])
        curve.append(best)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xlabel("trials")
    ax.set_ylabel("best accuracy so far")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_selection_config(run_dir: str | os.PathLike) -> SelectionConfig:
    d = json.loads((Path(run_dir) / "config.json").read_text())
    return SelectionConfig(**{k: v for k, v in d.items() if k in SelectionConfig.__dataclass_fields__})


def is_selection_run(run_dir: str | os.PathLike) -> bool:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text()).get("kind") == "selection"
    except (OSError, ValueError):
        return False
