"""The sequential trial loop: ask the selector, evaluate, tell, record. Every finished trial is one JSON
line of ``trials.jsonl`` in the run directory (``trial``, ``arch``, ``seed``, ``result``,
``predicted_ms``, ``seconds``, ``finished``, ``worker``: host and process id), flushed and fsynced before the next starts, so a kill loses
at most the trial in progress; ``selection.json`` records the selector's and the evaluator's settings.
An architecture is never evaluated twice. Run again on the same directory, the loop resumes: it rebuilds
the selector's state by replaying the recorded trials (a proposal that differs from the record means
another selector or seed, refused), then goes on.

Several workers on one search are the job of a shared Optuna storage, not of this loop.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from hwnas.fsio import atomic_write_text

log = logging.getLogger("hwnas.selection")
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial


def read_trials(path: Path) -> list[dict]:
    """The recorded trials; a torn last line (a kill mid-write) is dropped from the file with a warning, a
    corrupt line before it is a one-line error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()  # bytes: the truncation offset must count bytes, not characters
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    trials, keep = [], 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if not line.strip():
            keep += len(line) + 1
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not (isinstance(row, dict) and isinstance(row.get("arch"), list) and isinstance(row.get("result"), dict)
                    and isinstance(row.get("trial"), int)):
                raise ValueError("not a trial record")
            if last and not data.endswith(b"\n"):
                raise ValueError("no line end")
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if last:
                log.warning("%s: dropping a torn last line (%s)", path, reason)
                with open(path, "r+b") as f:
                    f.truncate(keep)
                break
            raise ValueError(f"{path}:{i + 1}: not a trial record ({reason}); fix or remove that line") from None
        trials.append(row)
        keep += len(line) + 1
    return trials


def _check_settings(path: Path, settings: dict) -> None:
    if not path.exists():
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
        return
    try:
        stored = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: cannot read the settings to resume ({e})") from None
    for key in ("selector", "evaluator"):
        was, now = stored.get(key), json.loads(json.dumps(settings[key]))  # as stored: tuples become lists
        if was != now:
            if isinstance(was, dict) and isinstance(now, dict):
                sub = sorted(k for k in {**was, **now} if was.get(k) != now.get(k))[0]
                what = f"{key} setting {sub!r} = {json.dumps(was.get(sub))} (now {json.dumps(now.get(sub))})"
            else:
                what = f"{key} {json.dumps(was)} (now {json.dumps(now)})"
            raise ValueError(f"{path}: the trials were run with {what}; use a new run directory")


def run_trials(selector, evaluator, run_dir, n_trials: int, *, seed: int = 0, latency=None, progress=None,
               max_tries: int | None = None) -> list[dict]:
    """Record ``n_trials`` distinct trials into ``run_dir`` (see the module docstring) and return them all;
    fewer when the selector runs dry (``ask`` returns None) or ``max_tries`` asks (default 50 n) found
    fewer distinct architectures. Trial ``i``'s evaluation gets seed ``seed + i``."""
    if n_trials < 1:
        raise ValueError(f"need at least one trial, got {n_trials}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(run_dir / "selection.json", {"selector": selector.settings(), "evaluator": evaluator.settings(),
                                                 "n_trials": n_trials})
    path = run_dir / "trials.jsonl"
    trials, seen, tries = read_trials(path), set(), 0
    max_tries = 50 * n_trials if max_tries is None else int(max_tries)

    dry = False

    def next_new():
        nonlocal tries, dry
        while tries < max_tries:
            tries += 1
            layers = selector.ask()
            if layers is None:
                dry = True
                return None
            if tuple(layers) not in seen:
                return list(layers)
        return None

    for t in trials:  # replay: the selector's state as it was when each trial was told
        layers = next_new()
        if layers != t["arch"]:
            raise ValueError(f"{path}: trial {t['trial']} was written by another selector or seed "
                             f"(it proposes {layers} now); use a new run directory")
        seen.add(tuple(layers))
        selector.tell(layers, t["result"])
    if trials:
        log.info("resuming %s after %d of %d trials", path, len(trials), n_trials)
    with open(path, "a", encoding="utf-8") as f:
        while len(trials) < n_trials:
            layers = next_new()
            if layers is None:
                if dry:
                    log.info("%s: the selector has nothing more to propose after %d trials", path, len(trials))
                else:
                    log.warning("%s: only %d distinct architectures in %d proposals (max_tries; %d asked for)",
                                path, len(trials), tries, n_trials)
                break
            i = len(trials)
            started = time.perf_counter()
            result = evaluator.evaluate(layers, seed + i)
            row = {"trial": i, "arch": layers, "seed": seed + i, "result": result,
                   "predicted_ms": None if latency is None else float(latency.of_tokens(layers)),
                   "seconds": round(time.perf_counter() - started, 3),
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "worker": WORKER}
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            seen.add(tuple(layers))
            selector.tell(layers, result)
            trials.append(row)
            if progress is not None:
                progress(len(trials), n_trials)
    return trials
