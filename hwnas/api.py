"""The Python API: what the ``hwnas`` commands call, usable from a notebook without the CLI.

``prepare_search`` resolves, before a search is built, everything a ``Search`` takes: the data, the
space's deploy config, the latency table (``table``: a LatencyTable, or a callable ``(space,
deploy_config) -> LatencyTable | None`` that finds one and may profile missing rows), the machine factor
(``auto`` times the table's reference networks now) and the target. Data flows one way: a ``Search``
never profiles or times anything.
"""
from __future__ import annotations

import logging
import os

from hwnas.data import load_data
from hwnas.latency.predictor import LatencyModel
from hwnas.objective import resolve_target
from hwnas.search import NullProgress, Search, SearchConfig, SearchInputs, _seed_all
from hwnas.spaces import get_space

log = logging.getLogger("hwnas.search")


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


def prepare_search(cfg: SearchConfig, table=None) -> SearchInputs:
    """Everything ``Search(cfg, run_dir, inputs)`` takes, resolved (see the module docstring)."""
    cfg.validate()
    _seed_all(cfg.seed)
    data = load_data(cfg.data, root=cfg.data_root, seed=cfg.seed, resolution=cfg.train_resolution)
    space = get_space(cfg.space)
    deploy_config = space.resolve_config({**cfg.config, "num_classes": data.num_classes})
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


def build_search(cfg: SearchConfig, run_dir: str | os.PathLike, table=None, progress=NullProgress) -> Search:
    """``Search(cfg, run_dir, prepare_search(cfg, table))``."""
    return Search(cfg, run_dir, prepare_search(cfg, table), progress=progress)
