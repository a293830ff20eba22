"""Run directories: where a search, a training, a comparison or a validation writes, how the latest one is
found, and what a run recorded about itself. Every file in one is written atomically (``hwnas.fsio``)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hwnas.fsio import atomic_torch_save, atomic_write_text

__all__ = ["atomic_torch_save", "atomic_write_text", "latest_run", "new_run_dir", "run_config", "run_data"]


def new_run_dir(root: str | os.PathLike, *parts: str) -> Path:
    """``<root>/<stamp>-<part>-<part>...`` (e.g. ``runs/20261202-184341-proxyless-spnas``), not yet
    existing (a ``-1``, ``-2`` suffix when two runs start in the same second). Not created."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "-".join((stamp, *parts))
    path, i = Path(root) / name, 1
    while path.exists():
        path = Path(root) / f"{name}-{i}"
        i += 1
    return path


def latest_run(root: str | os.PathLike) -> Path | None:
    """The most recent run directory under ``root`` holding an arch.json."""
    runs = list(Path(root).glob("*/arch.json")) if Path(root).is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).parent if runs else None


def run_config(run_dir: str | os.PathLike | None) -> dict:
    """A run directory's resolved config.json, or {} when there is none (or it cannot be read)."""
    path = Path(run_dir) / "config.json" if run_dir is not None else None
    if path is None or not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def run_data(run_dir: str | os.PathLike | None) -> dict:
    """The data a run directory was searched on: ``data``, ``data_root``, ``train_resolution`` (or {})."""
    cfg = run_config(run_dir)
    return {k: cfg.get(k) for k in ("data", "data_root", "train_resolution")} if cfg else {}
