"""``hwnas search ... --engine ray``: the trials of a parallel multi-trial search as Ray tasks, one trial per
task with its resources (``--trial-cpus``, ``--trial-gpus``), on a Ray cluster (Moritz et al., "Ray: A
Distributed Framework for Emerging AI Applications", OSDI 2018; ``ray.init(address=...)``).

Ray schedules; the Optuna study (``hwnas.selection.workers``) stays the record and the arbiter. Each task
is one worker for one trial (``run_worker(..., claims=1)``): it replays the completed trials into its own
selector, claims the next architecture under the same rules as every worker (no architecture twice, the
count never exceeded), evaluates it with its heartbeat and tells the study. The driver (the ``hwnas search``
process) keeps ``--workers`` tasks in flight (default: the cluster's CPUs / ``--trial-cpus``), fails trials
whose heartbeat stopped (a node that died), and ends when the study holds ``--trials`` complete trials. Ray's
own task retries are off (``max_retries=0``): a lost trial is retried through the study, so it is never
evaluated twice. ``hwnas worker`` processes may join the same study beside the tasks.

Every node needs hwnas installed and the storage reachable: a journal file on a shared filesystem (the run
directory's, by default, so the run directory must be shared too), or an RDB URL. A task on a node without
the run directory writes its files under Ray's temporary directory and the study carries its results.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from hwnas.selection.workers import completed, fail_stale, trial_rows

log = logging.getLogger("hwnas.selection")


def _trial(run_dir: str, study: str, storage: str) -> list[dict]:
    """The body of one Ray task: one worker, one trial (``hwnas.selection.parallel.join(..., claims=1)``)."""
    import os

    os.environ.setdefault("HWNAS_PROGRESS", "0")
    from hwnas.selection.parallel import join

    if (Path(run_dir) / "config.json").exists():
        return join(run_dir, storage=storage, claims=1)
    return join(study, storage=storage, runs=Path(tempfile.gettempdir()) / "hwnas-ray", claims=1)


def check_ray(address: str | None):
    """Ray, imported, and ``address`` reachable; a one-line ValueError otherwise."""
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'hwnas[ray]'") from None
    _reachable(address)
    return ray


def _init(address: str | None):
    ray = check_ray(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # ConnectionError and the like: a cluster that cannot be reached
            raise ValueError(f"--ray-address {address}: cannot connect to Ray ({str(e).strip().splitlines()[0]})") from None
    return ray


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse in one line a ``host:port`` (or ``ray://host:port``) that accepts no connection: ``ray.init``
    itself retries an unreachable address for minutes."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if m is None:
        return  # None (a local instance), "auto", "local": Ray's own lookup
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"--ray-address {address}: cannot connect to Ray ({e.strerror or e})") from None


def run_on_ray(study, cfg, run_dir: Path, progress=None, poll: float = 1.0) -> list[dict]:
    """Run the study's remaining trials as Ray tasks (see the module docstring); returns the merged rows."""
    ray = _init(cfg.ray_address)
    from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

    cpus = ray.cluster_resources().get("CPU", 1.0)
    workers = cfg.workers or max(1, int(cpus // cfg.trial_cpus))
    task = ray.remote(num_cpus=cfg.trial_cpus, num_gpus=cfg.trial_gpus, max_retries=0)(_trial)
    log.info("Ray: %d trial tasks at a time (%g CPU, %g GPU each) on a cluster of %g CPUs", workers, cfg.trial_cpus,
             cfg.trial_gpus, cpus)
    pending: list = []
    draining = False  # the selector ran dry: submit nothing more, let the tasks in flight end
    idle = False  # a task that returned last round had nothing to claim
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            if fail_stale(study, trials, cfg.heartbeat):
                trials = study.get_trials(deepcopy=False)
            done = completed(trials)
            if progress is not None:
                progress(len(done), cfg.trials)
            if idle and not draining and len(done) < cfg.trials:
                if any(t.state.name == "RUNNING" for t in trials):
                    idle = False
                    time.sleep(poll)  # the running trials hold the rest: look again before submitting more
                    continue
                log.info("the selector has nothing more to propose after %d trials", len(done))
                draining = True
            if len(done) >= cfg.trials or (draining and not pending):
                break
            while not draining and len(pending) < workers:
                pending.append(task.remote(str(run_dir.resolve()), cfg.study, cfg.storage))
            ready, pending = ray.wait(pending, num_returns=1, timeout=poll)
            idle = False
            for ref in ready:
                try:
                    idle |= not ray.get(ref)  # a task with nothing to claim: the others hold the rest
                except (WorkerCrashedError, NodeDiedError) as e:  # its trial's heartbeat stops: retried via the study
                    log.warning("a Ray trial task was lost (%s); its trial is failed after %d missed heartbeats and "
                                "evaluated again", type(e).__name__, 6)
                except RayTaskError as e:  # the evaluation raised: stop, as a local worker would
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    raise ValueError(f"a trial failed on Ray: {type(cause).__name__}: "
                                     f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''}") from None
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    # read again: a task just cancelled, or a worker beside the tasks, may have completed a trial since
    return trial_rows(study.get_trials(deepcopy=False))
