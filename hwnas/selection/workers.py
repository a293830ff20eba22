"""Parallel multi-trial search: workers on one Optuna study (``hwnas search --storage URL --workers N``,
``hwnas worker --study RUN``).

The study in the shared storage (``hwnas.selection.storage``) is the record: one Optuna trial per
claimed architecture, its tokens in the user attribute ``arch``, its evaluation's result, seed, predicted
latency, duration and worker (``host:pid``) in the others, its value the metric. Every worker runs the
same loop, asynchronously (no barrier, no master):

1. read the study; tell its own selector every trial completed since it last looked, in the order they
   completed (a worker started late, or restarted, replays them all: that is its resume);
2. stop when ``n_trials`` are complete; wait while complete + running already make ``n_trials``;
3. take the next architecture: first one of a trial that failed for lack of heartbeat (its worker was
   killed) and that nobody has claimed since, else its selector's next proposal that is neither
   complete nor running;
4. claim it: ``study.ask()`` numbers the trial atomically; then, reading the study again, the claim
   yields (the trial is marked PRUNED, ``duplicate_of`` / ``over_budget``) if a trial numbered lower holds
   the same architecture and is running or complete, or if the lower-numbered running and complete trials
   already make ``n_trials``. Two workers that claim at once both see the lower number, so exactly one of
   them evaluates: no architecture is evaluated twice and the count is never exceeded;
5. evaluate it with seed ``seed + trial number``, beating a heartbeat (user attribute ``heartbeat``,
   every ``heartbeat`` seconds) from a thread; tell the value (COMPLETE) and append the row to
   ``RUN/workers/<worker>.jsonl``.

A worker killed mid-trial leaves a RUNNING trial whose heartbeat stops; any other worker marks it FAIL
after ``6 x heartbeat`` seconds (``failed`` names why) and its architecture is evaluated again by the
next free worker, so the study still ends with ``n_trials`` complete. Optuna 5.1's ``RDBStorage`` has a
heartbeat of its own but ``JournalStorage`` has none, so the heartbeat here is a trial attribute, the same
on both (clocks of the workers' machines must agree within the grace period, as NTP keeps them).

Pending trials: regularized evolution is asynchronous by design (Real et al. 2019 ran 450 workers on one
population): each worker's population is the most recently *completed* trials. ``bo``'s TPE in each worker
fits the completed trials only; a trial pending on another worker counts neither as good nor as bad (a
proposal that collides with it is redrawn), so with W workers up to W - 1 proposals are made without the
results in flight. Each worker seeds its selector from the run's seed and its own worker id, so the
workers' random proposals differ; a parallel run is therefore not reproducible trial by trial, only in
distribution.

When the count is reached, the worker that finds it writes the run's merged view: ``trials.jsonl``
(every complete trial in completion order, with ``worker`` and ``study_trial``), ``arch.json``,
``summary.json``, the plot (atomic writes; every worker that finishes writes the same files).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from pathlib import Path

from hwnas.selection.loop import WORKER

log = logging.getLogger("hwnas.selection")
GRACE_BEATS = 6  # a running trial without a heartbeat for this many intervals belongs to a dead worker
RETRIES = 2  # an architecture whose worker died is evaluated again at most this many times


def worker_seed(seed: int, worker: str = WORKER) -> int:
    """The seed of one worker's selector: the run's, shifted by a hash of the worker id."""
    return int(seed) + 1 + zlib.crc32(worker.encode()) % 1_000_003


def create_study(storage, name: str, config: dict):
    """Create the study ``name`` (or load it, if a launcher already did) and store the run's config in it,
    so that ``hwnas worker --storage URL --study NAME`` needs nothing but the storage."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if "hwnas_config" not in study.user_attrs:
        study.set_user_attr("hwnas_config", config)
    return study


def load_study(storage, name: str):
    import optuna

    try:
        return optuna.load_study(storage=storage, study_name=name)
    except KeyError:
        raise ValueError(f"no study {name!r} in the storage (start it with hwnas search ... --storage)") from None


class _Heartbeat:
    """Sets the trial's ``heartbeat`` user attribute to the time every ``interval`` seconds, from a thread."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, float(interval)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="hwnas-heartbeat")

    def _run(self):
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception as e:  # a finished trial (failed by another worker) or a storage hiccup
                log.warning("heartbeat of trial %d: %s", self.trial_id, str(e).splitlines()[0] if str(e) else e)
                return

    def __enter__(self):
        self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _finished_error() -> type[Exception]:
    """Optuna's error for an update of a trial that is already finished, imported late as all of Optuna is
    here: importing this module does not import Optuna."""
    from optuna.exceptions import UpdateFinishedTrialError

    return UpdateFinishedTrialError


def fail_stale(study, trials, heartbeat: float, now: float | None = None) -> list[int]:
    """Mark FAIL every RUNNING trial whose heartbeat is older than ``GRACE_BEATS x heartbeat`` seconds;
    returns their numbers."""
    from optuna.trial import TrialState

    now, grace, failed = time.time() if now is None else now, GRACE_BEATS * float(heartbeat), []
    storage = study._storage  # the public Study has no way to finish another process's trial
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if now - beat <= grace:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "failed", f"no heartbeat for {now - beat:.0f} s "
                                                               f"(worker {t.user_attrs.get('worker')})")
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                log.warning("trial %d (worker %s) had no heartbeat for %.0f s: marked failed, its architecture "
                            "goes back to the queue", t.number, t.user_attrs.get("worker"), now - beat)
        except _finished_error():
            pass  # it finished (or another worker failed it) meanwhile
    return failed


def _arch(t) -> tuple[str, ...] | None:
    a = t.user_attrs.get("arch")
    return tuple(a) if isinstance(a, list) else None


def completed(trials) -> list:
    """The COMPLETE trials that hold an architecture, in the order they completed."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and _arch(t) is not None and "result" in t.user_attrs]
    return sorted(done, key=lambda t: (t.datetime_complete, t.number))


def trial_rows(trials) -> list[dict]:
    """The merged view: one ``trials.jsonl`` row per complete trial, in completion order."""
    rows = []
    for i, t in enumerate(completed(trials)):
        a = t.user_attrs
        rows.append({"trial": i, "arch": list(a["arch"]), "seed": a.get("seed"), "result": a["result"],
                     "predicted_ms": a.get("predicted_ms"), "seconds": a.get("seconds"),
                     "finished": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
                     "worker": a.get("worker"), "study_trial": t.number})
    return rows


def run_worker(study, selector, evaluator, run_dir, n_trials: int, *, seed: int = 0, latency=None,
               heartbeat: float = 10.0, poll: float = 1.0, progress=None, max_tries: int | None = None,
               claims: int | None = None) -> list[dict]:
    """One worker's loop on ``study`` (see the module docstring) until ``n_trials`` trials are complete,
    or the selector runs dry with nothing running; returns the merged rows. ``claims=K`` (a Ray task,
    ``hwnas.selection.ray_engine``): return the rows of the trials it evaluated after K of them, or at once
    when there is nothing to claim, instead of waiting for the other workers."""
    from optuna.trial import TrialState

    run_dir = Path(run_dir)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    own = run_dir / "workers" / f"{WORKER.replace(':', '-')}.jsonl"
    told: set[int] = set()
    max_tries = 50 * n_trials if max_tries is None else int(max_tries)
    tries, dry, waiting_logged, mine = 0, False, False, []
    with open(own, "a", encoding="utf-8") as f:
        while True:
            trials = study.get_trials(deepcopy=False)
            if fail_stale(study, trials, heartbeat):
                trials = study.get_trials(deepcopy=False)
            done = completed(trials)
            for t in done:
                if t.number not in told:
                    selector.tell(list(t.user_attrs["arch"]), t.user_attrs["result"])
                    told.add(t.number)
            if progress is not None:
                progress(len(done), n_trials)
            running = [t for t in trials if t.state == TrialState.RUNNING and _arch(t) is not None]
            if len(done) >= n_trials or ((dry or tries >= max_tries) and not running):
                break
            if len(done) + len(running) >= n_trials or dry or tries >= max_tries:
                if claims is not None:
                    break
                if not waiting_logged:
                    log.info("waiting for %d running trial(s) of other workers", len(running))
                    waiting_logged = True
                time.sleep(poll)
                continue
            waiting_logged = False
            busy = {_arch(t) for t in done} | {_arch(t) for t in running}
            layers, retry_of = _retry(trials, busy)
            if layers is None:
                while tries < max_tries:
                    tries += 1
                    proposal = selector.ask()
                    if proposal is None:
                        dry = True
                        break
                    if tuple(proposal) not in busy:
                        layers = list(proposal)
                        break
                if layers is None:
                    continue
            trial = study.ask()
            trial.set_user_attr("arch", layers)
            trial.set_user_attr("worker", WORKER)
            if retry_of is not None:
                trial.set_user_attr("retry_of", retry_of)
            clash = _clash(study.get_trials(deepcopy=False), trial.number, tuple(layers), n_trials)
            if clash is not None:
                trial.set_user_attr(*clash)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            row = _evaluate(study, trial, layers, evaluator, seed, latency, heartbeat)
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            mine.append(row)
            if claims is not None and len(mine) >= claims:
                break
    if claims is not None:
        return mine
    if dry and len(done) < n_trials:
        log.info("the selector has nothing more to propose after %d trials", len(done))
    elif tries >= max_tries and len(done) < n_trials:
        log.warning("only %d distinct architectures in %d proposals (max_tries; %d asked for)", len(done), tries,
                    n_trials)
    return trial_rows(study.get_trials(deepcopy=False))


def _retry(trials, busy) -> tuple[list[str] | None, int | None]:
    """An architecture whose worker died (a FAIL trial with ``failed``) that is not complete or running
    and failed fewer than ``RETRIES + 1`` times, with the failed trial's number."""
    from optuna.trial import TrialState

    fails: dict[tuple, list] = {}
    for t in trials:
        if t.state == TrialState.FAIL and "failed" in t.user_attrs and _arch(t) is not None:
            fails.setdefault(_arch(t), []).append(t)
    for arch, ts in sorted(fails.items(), key=lambda kv: kv[1][0].number):
        if arch not in busy and len(ts) <= RETRIES:
            return list(arch), ts[-1].number
    return None, None


def _clash(trials, number: int, arch: tuple, n_trials: int) -> tuple[str, object] | None:
    """Why the claim numbered ``number`` must yield (see the module docstring), or None."""
    from optuna.trial import TrialState

    ahead = [t for t in trials if t.number < number and _arch(t) is not None
             and t.state in (TrialState.RUNNING, TrialState.COMPLETE)]
    same = [t.number for t in ahead if _arch(t) == arch]
    if same:
        return "duplicate_of", same[0]
    if len(ahead) >= n_trials:
        return "over_budget", len(ahead)
    return None


def _evaluate(study, trial, layers, evaluator, seed, latency, heartbeat) -> dict:
    from datetime import datetime, timezone

    from optuna.trial import TrialState

    trial_seed = int(seed) + trial.number
    started = time.perf_counter()
    try:
        with _Heartbeat(study._storage, trial._trial_id, heartbeat):
            result = evaluator.evaluate(layers, trial_seed)
    except BaseException as e:  # an evaluation that raised (or Ctrl-C): the trial fails, nothing else is lost
        study._storage.set_trial_user_attr(trial._trial_id, "error", f"{type(e).__name__}: {e}"[:500])
        study.tell(trial, state=TrialState.FAIL)
        raise
    predicted = None if latency is None else float(latency.of_tokens(layers))
    row = {"study_trial": trial.number, "arch": layers, "seed": trial_seed, "result": result,
           "predicted_ms": predicted, "seconds": round(time.perf_counter() - started, 3),
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "worker": WORKER}
    try:
        for key in ("seed", "result", "predicted_ms", "seconds"):
            trial.set_user_attr(key, row[key])
        study.tell(trial, float(result["accuracy"]))
    except (_finished_error(), ValueError):  # another worker failed it for lack of heartbeat meanwhile
        log.warning("trial %d was marked failed by another worker while it ran (heartbeat starved?); it will be "
                    "evaluated again, this result stays only in this worker's log", trial.number)
    return row
