"""A multi-trial search as a run directory: ``hwnas search --method random|evolution|bo|rl --evaluator train|supernet``.

The selector (``SELECTORS``) proposes, the evaluator scores, ``run_trials`` records ``trials.jsonl``; at the
end the most accurate trial predicted within the target is the run's ``arch.json`` (for ``hwnas train`` and
``hwnas export``), with ``summary.json`` and a best-so-far plot. ``config.json`` holds everything a resume
needs: ``hwnas search --resume RUN`` rebuilds the selector and evaluator from it and replays the trials.
With ``--storage`` or ``--workers`` the run's processes are workers on one study (``hwnas.selection.parallel``).

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
    storage: str | None = None  # parallel workers: the Optuna storage URL (hwnas.selection.storage)
    study: str | None = None  # ... and the study's name in it (the run directory's name)
    heartbeat: float = 10.0  # ... seconds between a running trial's heartbeats (dead after 6 missed)
    engine: str = "local"  # ... local: worker processes; ray: one Ray task per trial (hwnas.selection.ray_engine)
    ray_address: str | None = None  # ... ray.init's address (None: a local Ray instance; "auto": the cluster here)
    trial_cpus: float = 1.0  # ... resources of one trial's Ray task
    trial_gpus: float = 0.0
    workers: int | None = None  # ... ray: tasks in flight (None: the cluster's CPUs / trial_cpus)

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
        if not self.heartbeat > 0:
            raise ValueError(f"--heartbeat must be > 0 seconds, got {self.heartbeat}")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {self.engine!r}")
        if not self.trial_cpus > 0 or self.trial_gpus < 0:
            raise ValueError(f"--trial-cpus must be > 0 and --trial-gpus >= 0, got {self.trial_cpus}, {self.trial_gpus}")


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


def make_selector(cfg: SelectionConfig, space, deploy, latency, window, seed: int):
    """The selector of ``cfg.method`` seeded with ``seed``, its budget defaults recorded in ``cfg.options``."""
    from hwnas.selection.selector import get_selector

    cls = get_selector(cfg.method)
    cfg.options = {**cls.budget_defaults(cfg.trials), **cfg.options}
    try:
        return cls(space, deploy, seed=seed, latency=latency, window=window, **cfg.options)
    except TypeError as e:  # an --opt the selector does not take
        raise ValueError(f"--method {cfg.method}: {e}") from None


def _window(target):
    return (target.lower_ms, target.target_ms) if target.target_ms is not None and target.binds else None


def write_config(cfg: SelectionConfig, run_dir: Path, deploy, target, window) -> dict:
    """The run's ``config.json`` record (written unless the run already has one, as a resumed run does)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    record = {**asdict(cfg), "kind": "selection", "deploy_config": deploy, "target_ms": target.target_ms,
              "window": window}
    if not path.exists():
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def run_selection(cfg: SelectionConfig, run_dir: str | os.PathLike, table=None, progress=None, spawn: int = 0,
                  claims: int | None = None, storage=None):
    """Run (or resume) the multi-trial search ``cfg`` into ``run_dir``; returns its summary. ``table`` is a
    LatencyTable or the search's table callback ``(space, deploy_config)`` (ignored with ``supernet``, which
    uses its run's). With ``cfg.storage`` this process is one worker on the shared study
    (``hwnas.selection.parallel``) and starts ``spawn`` more beside it (``hwnas worker`` processes, their
    output in ``RUN/workers/spawned-<i>.log``); with ``cfg.engine == "ray"`` it dispatches the trials as Ray
    tasks instead. ``claims=K``: evaluate K trials as one worker and return their rows (a Ray task's body).
    ``storage``: ``cfg.storage`` already opened by the caller, so that the process opens it once."""
    from hwnas.selection.loop import run_trials

    cfg.validate()
    run_dir = Path(run_dir)
    started = time.perf_counter()
    space, deploy, latency, target, evaluator = selection_inputs(cfg, run_dir, table)
    window = _window(target)
    if cfg.storage:
        from hwnas.selection.parallel import run_as_worker

        return run_as_worker(cfg, run_dir, space, deploy, latency, target, window, evaluator, progress, started,
                             spawn=spawn, claims=claims, storage=storage)
    selector = make_selector(cfg, space, deploy, latency, window, cfg.seed)
    write_config(cfg, run_dir, deploy, target, window)
    log.info("%s", target.describe(space.name, window=False))
    log.info("%s search, %d trials scored by %s%s", cfg.method, cfg.trials, cfg.evaluator,
             f"; every candidate predicted within {window[1]:.3f} ms" if window else "")
    trials = run_trials(selector, evaluator, run_dir, cfg.trials, seed=cfg.seed, latency=latency, progress=progress)
    return finish_selection(cfg, run_dir, trials, space, deploy, target, window, started)


def finish_selection(cfg: SelectionConfig, run_dir: Path, trials: list[dict], space, deploy, target, window,
                     started: float) -> dict:
    """The run's answer from its trials: ``arch.json`` (the most accurate trial predicted within T),
    ``summary.json``, the best-so-far plot (and the Pareto front with ``pareto=true``)."""
    from hwnas.spaces import Arch

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
    if cfg.storage:
        summary["workers"] = sorted({t["worker"] for t in trials if t.get("worker")})
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
            progress, storage=None, workers=None, heartbeat=10.0, engine="local", ray_address=None,
            trial_cpus=1.0, trial_gpus=0.0):
    """A multi-trial search as ``hwnas.search`` (and ``hwnas search``) runs it: a new run directory (or
    ``resume``), its log file, ``run_selection``, the resulting arch. ``workers=N`` runs N workers on one
    Optuna study (this process and N - 1 started beside it; ``storage`` defaults to a journal file in the
    run directory); ``storage`` alone makes this process one worker that others may join (``hwnas worker``).
    ``engine="ray"``: the trials run as Ray tasks (``trial_cpus``/``trial_gpus`` each, ``workers`` at once)
    on ``ray.init(address=ray_address)``, this process their driver (``hwnas.selection.ray_engine``)."""
    from hwnas.api import SearchResult, _log_file
    from hwnas.device import resolve_device
    from hwnas.exporting import resolve_arch
    from hwnas.latency.lookup import load_layers, recorded_layers
    from hwnas.runs import new_run_dir

    opened = None
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
                              benchmark=benchmark and str(benchmark), metric=metric, latency_column=latency_column,
                              storage=storage, heartbeat=float(heartbeat), engine=engine, ray_address=ray_address,
                              trial_cpus=float(trial_cpus), trial_gpus=float(trial_gpus),
                              workers=int(workers) if engine == "ray" and workers is not None else None)
        cfg.validate()
        if workers is not None and int(workers) < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        run_dir = new_run_dir(runs, cfg.method, cfg.space if evaluator != "supernet" else "supernet")
        if (workers is not None or engine == "ray") and not cfg.storage:
            cfg.storage = f"journal:{run_dir.resolve() / 'study.journal'}"
        elif cfg.storage:
            from hwnas.selection.storage import open_storage

            opened = open_storage(cfg.storage)  # an unreachable storage fails here, before anything is written
        if cfg.engine == "ray":
            from hwnas.selection.ray_engine import check_ray

            check_ray(cfg.ray_address)  # so does a missing Ray or a cluster address that refuses connections
        run_dir.mkdir(parents=True)
    if workers is not None and int(workers) > 1 and not cfg.storage:
        raise ValueError(f"{run_dir} is a sequential search (no --storage): resume it without --workers")
    handler = _log_file(run_dir / "log.txt")
    try:
        spawn = int(workers or 1) - 1 if cfg.engine == "local" else 0
        summary = run_selection(cfg, run_dir, table=table, progress=progress, spawn=spawn, storage=opened)
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
