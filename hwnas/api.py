"""The Python API: what the ``hwnas`` commands call, usable from a notebook without the CLI.

    import hwnas
    table = hwnas.profile("proxyless", backend="onnxruntime")          # hwnas profile
    result = hwnas.search("proxyless", latency_target="50%")           # hwnas search
    hwnas.train(result.run_dir, epochs=10)                             # hwnas train
    report = hwnas.export(result.run_dir)                              # hwnas export --onnx
    ms = hwnas.predict(result.run_dir)                                 # hwnas latency predict

Every function takes the options of its command under the same names (``--latency-target`` is
``latency_target``) with the same defaults; ``config`` is a dict for the repeated ``--config KEY=VALUE``
(and ``--resolution``, ``--width-mult``, ``--num-classes``), ``options`` one for ``--opt KEY=VALUE``.
Tables are found as ``hwnas.latency.lookup`` says (``tables=`` is ``--tables``).

``prepare_search`` resolves, before a search is built, everything a ``Search`` takes: the data, the
space's deploy config, the latency table (``table``: a LatencyTable, or a callable ``(space,
deploy_config) -> LatencyTable | None`` that finds one and may profile missing rows), the machine factor
(``auto`` times the table's reference networks now) and the target. Data flows one way: a ``Search``
never profiles or times anything.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hwnas.data import load_data
from hwnas.distributed import Distributed
from hwnas.latency.predictor import LatencyModel
from hwnas.objective import parse_machine_factor, resolve_target
from hwnas.searching import NullProgress, Search, SearchConfig, SearchInputs, _seed_all, load_search_config
from hwnas.spaces import get_space

log = logging.getLogger("hwnas.search")


# -- profile ---------------------------------------------------------------------------------------
def profile(space: str = "proxyless", *, device: str = "cpu", backend: str = "onnxruntime", config: dict | None = None,
            arch: str | None = None, out: str | os.PathLike | None = None, table: str | os.PathLike | None = None,
            batch: int = 1, dtype: str = "fp32", mode: str | None = None, provider: str | None = None,
            threads: int | None = None, warmup: int = 10, iterations: int = 100, statistic: str = "p10",
            rounds: int = 5, context: str | None = None, network_sets: int | None = None, progress=None):
    """Measure every block of ``space`` (at its deploy shape: ``config``, or the skeleton of ``arch``) on
    ``device`` into a latency table and return it (``hwnas profile``). The table goes to ``table`` (an exact
    path) or under ``out`` (default: the writable directory of the table lookup, never the shipped tables);
    rows already there are kept, so rerunning a killed profile resumes it. ``progress(i, n, signature)``."""
    from hwnas.device import resolve_device
    from hwnas.latency.tables import default_table_path, default_threads, profile_space

    dev = resolve_device(device)
    sp, cfg = space_and_config(space, config, arch)
    threads = threads or default_threads()
    path = Path(table) if table else default_table_path(
        sp.name, device=dev, backend=backend, resolution=cfg["resolution"], batch=batch, dtype=dtype,
        threads=threads, root=out, mode=mode, provider=provider)
    return profile_space(sp, cfg, path, device=dev, backend=backend, batch=batch, dtype=dtype, threads=threads,
                         warmup=warmup, iterations=iterations, progress=progress, mode=mode, provider=provider,
                         rounds=rounds, statistic=statistic, context=context, network_sets=network_sets)


# -- search ----------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What ``search`` returns: the run directory (arch.json, child.pt, metrics.csv, log.txt, ...), the
    derived architecture, the summary (``summary.json``: predicted latency, target, range, supernet
    accuracy) and the run's config (the tables it read: ``config.table``, ``config.table_overlay``)."""

    run_dir: Path
    arch: object  # hwnas.spaces.builder.Arch
    summary: dict
    config: SearchConfig
    space: object  # the Space searched


def search(method: str = "proxyless", *, space: str | None = None, latency_target: str | None = None,
           data: str = "digits", data_root: str | None = None, config: dict | None = None,
           options: dict | None = None, epochs: int | None = None, warmup_epochs: int | None = None,
           batch_size: int = 32, lr: float = 0.05, arch_every: int = 1, seed: int = 0, device: str = "auto",
           train_resolution: int | None = None, machine_factor: float | str | None = None,
           latency_table: str | os.PathLike | None = None, latency_device: str = "cpu", tables=None,
           backend: str = "onnxruntime", batch: int = 1, dtype: str = "fp32", mode: str | None = None,
           provider: str | None = None, threads: int | None = None, profile_missing: bool = True,
           no_latency: bool = False, runs: str | os.PathLike = "runs", resume: str | os.PathLike | None = None,
           evaluator: str = "train", trials: int = 20, trial_epochs: int = 1, supernet: str | None = None,
           benchmark: str | os.PathLike | None = None, metric: str = "accuracy", latency_column: str | None = None,
           storage: str | None = None, workers: int | None = None, heartbeat: float = 10.0, engine: str = "local",
           ray_address: str | None = None, trial_cpus: float = 1.0, trial_gpus: float = 0.0,
           progress=NullProgress, profile_progress=None, trial_progress=None) -> SearchResult:
    """Search ``space`` (default: the method's) with ``method`` on ``data`` and derive an architecture that
    meets ``latency_target`` (``"20ms"``, ``"800us"``, ``"40%"`` of the space's range; None: the latency
    term without a promise) on this machine's table (``hwnas search``). The table is ``latency_table``
    if given, else found by the lookup (``tables``), its missing rows profiled first unless
    ``profile_missing=False``. ``resume=RUN_DIR`` continues a killed search from its last checkpoint, on
    the table(s) it started with. ``epochs``/``warmup_epochs`` default to the method's for the space.

    A multi-trial ``method`` (``random``, ``evolution``, ``bo``, ``rl``: ``hwnas.selection``) evaluates ``trials`` distinct
    architectures with ``evaluator`` (``train``: each trained from scratch for ``trial_epochs``; ``supernet``:
    each a path of the trained supernet of the one-shot run ``supernet``; ``tabular``: column ``metric`` of
    the CSV ``benchmark``, latency from its ``latency_column`` if given) and returns the most accurate one
    predicted within the target (``hwnas.selection.run``); ``trial_progress(done, total)``. ``workers=N``
    evaluates them with N processes on one Optuna study in ``storage`` (``journal:PATH`` or an RDB URL;
    default a journal file in the run directory) that more may join (``worker``), a trial's heartbeat every
    ``heartbeat`` seconds (``hwnas.selection.workers``); ``engine="ray"`` runs each trial as a Ray task
    (``trial_cpus``/``trial_gpus``) on ``ray.init(address=ray_address)`` (``hwnas.selection.ray_engine``)."""
    from hwnas.device import resolve_device
    from hwnas.latency.lookup import recorded_layers
    from hwnas.runs import new_run_dir
    from hwnas.selection import SELECTORS
    from hwnas.selection.run import is_selection_run
    from hwnas.strategies import get_strategy

    if (resume and is_selection_run(resume)) or (not resume and method in SELECTORS):
        from hwnas.selection.run import select

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"method {method!r} is multi-trial: its workers share an Optuna storage "
                             f"(--storage journal:PATH --workers N; hwnas worker), torchrun runs one-shot searches")
        return select(method, space=space, latency_target=latency_target, data=data, data_root=data_root,
                       config=config, options=options, seed=seed, device=device, train_resolution=train_resolution,
                       trials=trials, trial_epochs=trial_epochs, evaluator=evaluator, supernet=supernet,
                       benchmark=benchmark, metric=metric, latency_column=latency_column, runs=runs, resume=resume, table=table_callback(
                           latency_table, no_latency=no_latency, latency_device=latency_device, tables=tables,
                           backend=backend, batch=batch, dtype=dtype, mode=mode, provider=provider, threads=threads,
                           profile_missing=profile_missing, progress=profile_progress), progress=trial_progress,
                       storage=storage, workers=workers, heartbeat=heartbeat, engine=engine, ray_address=ray_address,
                       trial_cpus=trial_cpus, trial_gpus=trial_gpus)
    if storage or workers is not None or engine != "local":
        raise ValueError(f"--storage, --workers and --engine belong to the multi-trial methods ({', '.join(sorted(SELECTORS))}); "
                         f"a one-shot search scales with torchrun")
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.json").exists():
            raise ValueError(f"--resume {run_dir}: not a run directory (no config.json)")
        cfg = load_search_config(run_dir)
        if options:  # e.g. a run from before its method's defaults changed, whose config.json lacks them
            cfg.options = {**cfg.options, **options}
        dist = Distributed.from_env(resolve_device(cfg.device))
        latency_table = recorded_layers(cfg) or None
    else:
        train_device = resolve_device(device)
        strategy = get_strategy(method)
        space = space or strategy.default_space
        strategy.check_space(get_space(space))
        default_epochs, default_warmup = strategy.default_epochs(get_space(space))
        epochs = epochs if epochs is not None else default_epochs
        warmup_epochs = warmup_epochs if warmup_epochs is not None else min(default_warmup, max(0, epochs - 1))
        cfg = SearchConfig(method=method, space=space, data=data, data_root=data_root, seed=seed, epochs=epochs,
                           warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, arch_every=arch_every,
                           device=str(train_device), latency_target=latency_target, config=dict(config or {}),
                           options=dict(options or {}), train_resolution=train_resolution,
                           machine_factor=machine_factor)
        cfg.validate()
        dist = Distributed.from_env(train_device)
        run_dir = Path(dist.broadcast(str(new_run_dir(runs, cfg.method, cfg.space)) if dist.is_main else None))

    def record(table):
        cfg.table, cfg.table_overlay = str(table.path), (str(table.overlay) if table.overlay else None)
        cfg.table_device = (table.meta.get("device") or {}).get("slug")

    table_for = table_callback(latency_table, record=record, no_latency=no_latency, latency_device=latency_device,
                               tables=tables, backend=backend, batch=batch, dtype=dtype, mode=mode,
                               provider=provider, threads=threads, profile_missing=profile_missing,
                               progress=profile_progress)
    try:
        run = build_search(cfg, run_dir, table=table_for, progress=progress, dist=dist)  # validates all inputs first
        handler = _log_file(run_dir / "log.txt") if dist.is_main else logging.NullHandler()
        try:
            log.info("run directory: %s", run_dir)
            summary = run.run()
        finally:
            logging.getLogger("hwnas").removeHandler(handler)
            handler.close()
    finally:
        dist.close()
    if summary is None:  # a rank other than 0 under torchrun: rank 0 derived and wrote the run
        return SearchResult(run_dir, None, None, cfg, run.space)
    from hwnas.exporting import resolve_arch

    return SearchResult(run_dir, resolve_arch(str(run_dir)).arch, summary, cfg, run.space)


def worker(study: str | os.PathLike, *, storage: str | None = None, runs: str | os.PathLike = "runs",
           trial_progress=None) -> SearchResult:
    """Join a parallel multi-trial search as one more worker (``hwnas worker``): ``study`` is its run
    directory, or its name in ``storage`` (``hwnas.selection.parallel.join``)."""
    from hwnas.selection.parallel import join

    return join(str(study), storage=storage, runs=runs, progress=trial_progress)


def table_callback(latency_table=None, *, record=None, no_latency: bool = False, latency_device: str = "cpu",
                   tables=None, backend: str = "onnxruntime", batch: int = 1, dtype: str = "fp32",
                   mode: str | None = None, provider: str | None = None, threads: int | None = None,
                   profile_missing: bool = True, progress=None):
    """A search's ``table(space, deploy_config)``: ``latency_table`` (a path, or a table and its overlays),
    checked against the search and with a warning when it was profiled on another device; else this
    machine's table under the lookup (``tables``), missing rows profiled unless ``profile_missing=False``.
    ``record(table)`` is told which table was used; ``no_latency`` returns None (accuracy alone)."""
    from hwnas.device import device_slug, resolve_device
    from hwnas.latency.table import device_mismatch_warning
    from hwnas.latency.tables import default_threads, ensure_table, load_table_for

    lat_device = resolve_device(latency_device)
    threads = threads or default_threads()

    def table_for(space, deploy_config):
        if no_latency:
            return None
        if latency_table:
            table = load_table_for(space, deploy_config, latency_table, batch=batch, dtype=dtype)
            warn = device_mismatch_warning(table, device_slug(lat_device, threads if lat_device.type == "cpu" else None))
            if warn:
                log.warning(warn)
        else:
            table = ensure_table(space, deploy_config, device=lat_device, backend=backend, batch=batch, dtype=dtype,
                                 threads=threads, root=tables, progress=progress, profile_missing=profile_missing,
                                 mode=mode, provider=provider)
        if record is not None:
            record(table)
        return table

    return table_for


def _machine_factor(cfg: SearchConfig, table) -> float | None:
    """The configured machine factor; ``auto`` times the table's reference networks now
    (``hwnas.latency.drift``) and records the figure in ``cfg``, so a resumed run keeps its target."""
    f = cfg.machine_factor
    if f is None or table is None:
        return None
    if f == "auto":
        from hwnas.latency.drift import measure_drift

        d = measure_drift(table)
        log.info("machine factor %.3f: the table's reference networks run %s x their latency at validation",
                 d["factor"], " / ".join(f"{r:.2f}" for r in d["ratios"]))
        cfg.machine_factor = f = d["factor"]
    return float(f)


def prepare_search(cfg: SearchConfig, table=None, resolved=None) -> SearchInputs:
    """Everything ``Search(cfg, run_dir, inputs)`` takes, resolved (see the module docstring); ``resolved``:
    the (latency model, target) another rank resolved (nothing is profiled or timed then)."""
    cfg.validate()
    _seed_all(cfg.seed)
    data = load_data(cfg.data, root=cfg.data_root, seed=cfg.seed, resolution=cfg.train_resolution)
    space = get_space(cfg.space)
    deploy_config = space.resolve_config({**cfg.config, "num_classes": data.num_classes})
    if resolved is not None:
        return SearchInputs(data, space, deploy_config, *resolved)
    if callable(table):
        table = table(space, deploy_config)
    latency = LatencyModel(table, space, deploy_config) if table is not None else None
    factor = _machine_factor(cfg, table)
    cal = (getattr(table, "meta", None) or {}).get("calibration") or {}
    if latency is not None and factor is None and cal.get("references") and cal.get("date"):
        log.info("the table's predictions describe this machine as it ran at its validation (%s); "
                 "`hwnas latency drift --table %s` measures how it runs now", cal["date"][:10],
                 getattr(table, "path", "T"))
    target = resolve_target(cfg.latency_target, latency, factor, f" {cfg.space!r} on this table")
    return SearchInputs(data, space, deploy_config, latency, target)


def build_search(cfg: SearchConfig, run_dir: str | os.PathLike, table=None, progress=NullProgress,
                 dist: Distributed | None = None) -> Search:
    """``Search(cfg, run_dir, prepare_search(cfg, table))``. Under torchrun (``dist``) rank 0 resolves the
    table (profiling what is missing) and the target, and the other ranks receive them with its config
    (a machine factor measured once), so every rank holds the same latency term; an error there stops every
    rank with rank 0's one line."""
    if dist is None or not dist.active:
        return Search(cfg, run_dir, prepare_search(cfg, table), progress=progress, dist=dist)
    shared = None
    if dist.is_main:
        try:
            inputs = prepare_search(cfg, table)
            shared = (cfg, inputs.latency, inputs.target)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, then rank 0 raises its own
            dist.broadcast(e if isinstance(e, ValueError) else ValueError(f"rank 0: {e}"))
    cfg_0, latency, target = dist.broadcast(shared)
    if not dist.is_main:
        cfg.__dict__.update(cfg_0.__dict__)
        inputs = prepare_search(cfg, resolved=(latency, target))
    return Search(cfg, run_dir, inputs, progress=progress, dist=dist)


# -- train -----------------------------------------------------------------------------------------
def train(arch: str | os.PathLike | None = None, *, data: str | None = None, data_root: str | None = None,
          resolution: int | None = None, epochs: int = 10, batch_size: int = 64, lr: float | None = None,
          weight_decay: float | None = None, grad_clip: float | None = None, seed: int = 0, device: str = "auto",
          out: str | os.PathLike | None = None, runs: str | os.PathLike = "runs", progress=None) -> dict:
    """Train ``arch`` (a run directory, an arch.json or a preset; default: the latest run under ``runs``)
    from scratch with its space's recipe and return its figures (``hwnas train``: test and validation
    accuracy, parameters, ``out``). A run directory trains on the data and resolution it was searched on
    unless told otherwise; the weights go to ``out`` (default: the run directory) as trained.pt."""
    from hwnas.device import resolve_device
    from hwnas.exporting import resolve_arch
    from hwnas.runs import new_run_dir, run_data
    from hwnas.training import train_child

    dev = resolve_device(device)
    src = resolve_arch(str(latest_or(arch, runs, "train")))
    searched = run_data(src.run_dir)
    if data is None:  # a run directory trains on what it was searched on; anything else on digits
        data, data_root = searched.get("data") or "digits", data_root or searched.get("data_root")
        resolution = resolution or searched.get("train_resolution")
    out = Path(out) if out else (src.run_dir or new_run_dir(runs, "train"))
    handler = _log_file(out / "train_log.txt")
    try:
        r = train_child(src.arch, out, data=data, data_root=data_root, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, device=dev, resolution=resolution,
                        progress=progress)
    finally:
        logging.getLogger("hwnas").removeHandler(handler)
        handler.close()
    return {**r, "arch": src.arch, "out": out, "run_dir": src.run_dir}


# -- export and predict ----------------------------------------------------------------------------
def export(arch: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None, *,
           latency_table: str | os.PathLike | None = None, tables=None, batch: int = 1, threads: int | None = None,
           iterations: int = 50, measure: bool = True, references: bool = True, runs: str | os.PathLike = "runs"):
    """Export ``arch`` (run directory, arch.json or preset; default: the latest run under ``runs``) to ONNX
    at ``onnx`` (default: model.onnx in the run directory), check it against torch, and measure it with
    ONNX Runtime beside the prediction of ``latency_table`` (default: this machine's table under the
    lookup, if one covers the arch). Returns the ``hwnas.exporting.ExportReport`` (``hwnas export``)."""
    from hwnas.exporting import export as export_arch, resolve_arch
    from hwnas.latency.tables import default_threads

    spec = str(latest_or(arch, runs, "export"))
    src = resolve_arch(spec)
    if onnx in (None, ""):
        onnx = (src.run_dir / "model.onnx") if src.run_dir else Path(f"{Path(spec).stem}.onnx")
    table = arch_table(src.arch, latency_table, tables=tables, batch=batch, threads=threads)
    threads = threads or (int(table.meta.get("threads", default_threads())) if table is not None else default_threads())
    return export_arch(src, onnx, batch=batch, threads=threads, measure=measure, table=table,
                       iterations=iterations, references=references)


def predict(arch: str | os.PathLike, table: str | os.PathLike | None = None, *, tables=None,
            machine_factor: float | str | None = None, calibrated: bool = True) -> float:
    """The predicted latency of ``arch`` in ms on ``table`` (default: this machine's ONNX Runtime table under
    the lookup), calibrated when the table carries a calibration; times ``machine_factor`` (a number, or
    ``"auto"`` to time the table's reference networks now) for this machine now (``hwnas latency predict``)."""
    from hwnas.exporting import resolve_arch

    a = resolve_arch(str(arch)).arch
    t = arch_table(a, table, tables=tables, required=True)
    ms = LatencyModel(t, a.space_obj, a.config, calibrated=calibrated).of_tokens(a.layers)
    factor = parse_machine_factor(machine_factor)
    if factor == "auto":
        from hwnas.latency.drift import measure_drift

        factor = measure_drift(t)["factor"]
    return ms * factor if factor is not None else ms


def arch_table(arch, latency_table=None, *, tables=None, batch: int = 1, threads: int | None = None,
               required: bool = False):
    """The table that predicts ``arch``: ``latency_table``, else this machine's ONNX Runtime table under the
    lookup if it exists and covers the arch (a preset with a wider skeleton may not be covered); None then,
    with the reason logged, unless ``required``."""
    import torch

    from hwnas.latency.table import LatencyTableError, table_files
    from hwnas.latency.tables import find_table, load_table_for

    if latency_table:
        if not table_files(latency_table)[0].exists():
            raise ValueError(f"--latency-table {latency_table} does not exist")
        return load_table_for(arch.space_obj, arch.config, latency_table, batch=batch)
    where = find_table(arch.space, device=torch.device("cpu"), backend="onnxruntime",
                       resolution=arch.config["resolution"], batch=batch, root=tables, threads=threads)
    if not (where.overlays or table_files(where.own)[0].exists()):
        msg = f"no latency table for this machine at {where.own} (run `hwnas profile --space {arch.space}`)"
        if required:
            raise ValueError(msg)
        log.info("%s: no prediction", msg)
        return None
    try:
        return load_table_for(arch.space_obj, arch.config, where, batch=batch)
    except LatencyTableError as e:
        if required:
            raise
        log.info("no prediction: %s", e)
        return None


# -- shared ----------------------------------------------------------------------------------------
def latest_or(arch, runs, verb: str):
    """``arch`` as given, or the latest finished search under ``runs`` (said in the log)."""
    from hwnas.runs import latest_run

    if arch is not None:
        return arch
    latest = latest_run(runs)
    if latest is None:
        raise ValueError(f"no finished search under {runs}/ to {verb}; pass --arch RUN_DIR|arch.json|PRESET")
    log.info("%s the latest run: %s", "exporting" if verb == "export" else "training", latest)
    return latest


def space_and_config(space: str, config: dict | None = None, arch: str | None = None):
    """The space and resolved config to act on: ``arch``'s own (with ``config`` on top), or ``space``'s."""
    if arch:
        from hwnas.exporting import resolve_arch

        a = resolve_arch(arch).arch
        return a.space_obj, a.space_obj.resolve_config({**a.config, **(config or {})})
    sp = get_space(space)
    return sp, sp.resolve_config(dict(config or {}))


def _log_file(path: Path) -> logging.Handler:
    """A handler writing hwnas's log to ``path`` (the run's log.txt) while a run lasts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("hwnas").addHandler(h)
    return h
