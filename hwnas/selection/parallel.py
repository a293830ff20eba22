"""One multi-trial search shared by several workers through an Optuna storage (see docs/distributed.md).

``run_selection`` with ``cfg.storage`` hands its run to ``run_as_worker``: this process becomes one worker
on the run's study (created in the storage if new, the run's config stored in it), starts ``spawn`` more
``hwnas worker`` processes beside it on this machine, or, with ``cfg.engine == "ray"``, drives the trials
as Ray tasks (``hwnas.selection.ray_engine``). ``join`` (``hwnas worker``, and the body of each Ray task) is
any other process joining the study, by its run directory or by its name in the storage. The workers'
loop is ``hwnas.selection.workers``; the storages, ``hwnas.selection.storage``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

from hwnas.fsio import atomic_write_text
from hwnas.selection.run import (finish_selection, is_selection_run, load_selection_config, make_selector,
                                 run_selection, write_config)

log = logging.getLogger("hwnas.selection")


def run_as_worker(cfg, run_dir, space, deploy, latency, target, window, evaluator, progress, started, spawn=0,
                  claims=None, storage=None):
    """``run_selection``'s part with ``cfg.storage``: this process as one worker on the study, ``spawn``
    more beside it (or the Ray driver); returns the run's summary, or with ``claims=K`` the rows of the K
    trials it evaluated. ``storage`` is ``cfg.storage`` opened, when the caller already holds it."""
    from hwnas.selection.loop import WORKER
    from hwnas.selection.storage import open_storage, redact
    from hwnas.selection.workers import create_study, run_worker, worker_seed

    selector = make_selector(cfg, space, deploy, latency, window, worker_seed(cfg.seed))
    storage = open_storage(cfg.storage) if storage is None else storage
    cfg.study = cfg.study or run_dir.name
    record = write_config(cfg, run_dir, deploy, target, window)
    study = create_study(storage, cfg.study, record)
    if claims is not None:  # a Ray task: one more worker for K trials, the driver finishes the run
        return run_worker(study, selector, evaluator, run_dir, cfg.trials, seed=cfg.seed, latency=latency,
                          heartbeat=cfg.heartbeat, claims=claims)
    log.info("%s", target.describe(space.name, window=False))
    log.info("worker %s on study %s in %s: %s, %d trials in all, scored by %s%s", WORKER, cfg.study,
             redact(cfg.storage), cfg.method, cfg.trials, cfg.evaluator,
             f"; every candidate predicted within {window[1]:.3f} ms" if window else "")
    if cfg.engine == "ray":
        from hwnas.selection.ray_engine import run_on_ray

        trials = run_on_ray(study, cfg, run_dir, progress=progress)
        atomic_write_text(run_dir / "trials.jsonl", "".join(json.dumps(t) + "\n" for t in trials))
        return finish_selection(cfg, run_dir, trials, space, deploy, target, window, started)
    children = _spawn_workers(run_dir, spawn)
    try:
        trials = run_worker(study, selector, evaluator, run_dir, cfg.trials, seed=cfg.seed, latency=latency,
                            heartbeat=cfg.heartbeat, progress=progress)
    except BaseException:
        for child, _ in children:  # Ctrl-C or an error here: the others stop too (their trials marked failed)
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        raise
    for child, out in children:
        if child.wait() != 0:
            log.warning("worker %d exited with %d (see %s)", child.pid, child.returncode, out)
    atomic_write_text(run_dir / "trials.jsonl", "".join(json.dumps(t) + "\n" for t in trials))
    return finish_selection(cfg, run_dir, trials, space, deploy, target, window, started)


def _spawn_workers(run_dir: Path, n: int) -> list:
    """Start ``n`` ``hwnas worker --study RUN`` processes on this machine (the study already exists)."""
    import subprocess
    import sys

    children = []
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        out = run_dir / "workers" / f"spawned-{i + 1}.log"
        with open(out, "ab") as f:
            child = subprocess.Popen([sys.executable, "-m", "hwnas", "worker", "--study", str(run_dir)],
                                     stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HWNAS_PROGRESS": "0"})
        children.append((child, out))
        log.info("started worker process %d (output: %s)", child.pid, out)
    return children


def join(study: str, *, storage: str | None = None, runs="runs", progress=None, claims: int | None = None):
    """One more worker on a parallel multi-trial search (``hwnas worker``): ``study`` is the run directory
    (on a filesystem this machine shares; ``storage`` overrides the URL it recorded, e.g. a journal mounted
    at another path) or, with ``storage``, the study's name, the run's files then written to
    ``runs/<name>``. Returns the search's result once the study holds its trials; with ``claims=K`` (a Ray
    task) the rows of the K trials it evaluated. A joining worker evaluates here, whatever the run's engine."""
    from hwnas.api import SearchResult, _log_file
    from hwnas.exporting import resolve_arch
    from hwnas.latency.lookup import load_layers, recorded_layers

    path = Path(study)
    opened = None
    if (path / "config.json").exists():
        run_dir = path
        if not is_selection_run(run_dir):
            raise ValueError(f"--study {run_dir}: a one-shot search; workers join multi-trial searches")
        cfg = load_selection_config(run_dir)
        if storage:
            cfg.storage = storage
        if not cfg.storage:
            raise ValueError(f"--study {run_dir}: a sequential search (started without --storage or --workers); "
                             f"resume it with hwnas search --resume {run_dir}")
    elif storage:
        from hwnas.selection.storage import open_storage
        from hwnas.selection.workers import load_study

        opened = open_storage(storage)
        record = load_study(opened, str(study)).user_attrs.get("hwnas_config")
        if not isinstance(record, dict):
            raise ValueError(f"study {study!r} in {storage} was not started by hwnas search (no config)")
        run_dir = Path(runs) / str(study)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.json").exists():
            atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")
        cfg = load_selection_config(run_dir)
        cfg.storage = storage
    else:
        raise ValueError(f"--study {study}: not a run directory (no config.json); give the run directory, or "
                         f"--storage URL with the study's name")
    cfg.engine = "local"
    layers = recorded_layers(cfg)
    table = load_layers(layers) if layers else None
    handler = _log_file(run_dir / "log.txt")
    try:
        summary = run_selection(cfg, run_dir, table=table, progress=progress, claims=claims, storage=opened)
        if claims is not None:
            return summary
    finally:
        logging.getLogger("hwnas").removeHandler(handler)
        handler.close()
    arch = resolve_arch(str(run_dir)).arch
    return SearchResult(run_dir, arch, summary, cfg, arch.space_obj)
