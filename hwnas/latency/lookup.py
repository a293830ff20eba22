"""Where latency tables are found, and where new rows are written.

The lookup, first match wins:

1. ``--tables DIR`` (``tables=`` in the Python API): that directory alone, read and written;
2. ``$HWNAS_TABLES``: that directory alone, read and written;
3. otherwise the user's table directory (``$XDG_DATA_HOME/hwnas/latency_tables``, by default
   ``~/.local/share/hwnas/latency_tables``) layered over the tables shipped with hwnas (``latency_tables/``
   of a source checkout, ``hwnas/shipped_tables/`` of an installed wheel). A full table in the user's
   directory shadows the shipped one of the same name; otherwise the shipped table is read with the
   user's *overlay* of it (a table of the same name holding only the rows a search had to profile on top,
   its sidecar saying ``"overlay_of"``). Nothing ever writes into a shipped table.

Every table keeps the relative name ``<device slug>/<runtime>/<space>-r<res>-b<batch>-<dtype>.csv``
(``hwnas.latency.table.table_path``) whatever directory holds it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hwnas.latency.table import LatencyTable, table_files

ENV = "HWNAS_TABLES"


def shipped_root() -> Path | None:
    """The tables shipped with hwnas: package data of an installed wheel, or a source checkout's
    ``latency_tables/``; None if neither is there."""
    package = Path(__file__).resolve().parents[1]
    for root in (package / "shipped_tables", package.parent / "latency_tables"):
        if root.is_dir():
            return root
    return None


def user_root() -> Path:
    """``$XDG_DATA_HOME/hwnas/latency_tables`` (default ``~/.local/share/hwnas/latency_tables``)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "hwnas" / "latency_tables"


@dataclass(frozen=True)
class TableRoots:
    """Where tables are read (``read``, first match wins) and written (``write``, the first of ``read``);
    ``source`` says which rule of the lookup chose them (``--tables``, ``$HWNAS_TABLES`` or ``user``)."""

    write: Path
    shipped: Path | None
    source: str

    @property
    def read(self) -> tuple[Path, ...]:
        return (self.write,) + ((self.shipped,) if self.shipped is not None else ())

    def lines(self) -> list[str]:
        """The lookup as ``hwnas latency show`` prints it."""
        if self.source != "user":
            return [f"tables: {self.write} only ({self.source}; read and written, nothing shipped is read)"]
        out = [f"tables: 1. {self.write} (the user's table directory: tables you profile, and overlays of "
               f"shipped tables holding the rows a search profiled)"]
        out.append(f"        2. {self.shipped} (shipped with hwnas, read only)" if self.shipped is not None
                   else "        2. no shipped tables in this installation")
        out.append(f"        (--tables DIR or ${ENV} replace both with one directory)")
        return out


def table_roots(tables: str | os.PathLike | None = None) -> TableRoots:
    """The lookup for ``--tables`` (None when not given); see the module docstring."""
    if tables:
        return TableRoots(Path(tables).expanduser(), None, "--tables")
    if os.environ.get(ENV):
        return TableRoots(Path(os.environ[ENV]).expanduser(), None, f"${ENV}")
    return TableRoots(user_root(), shipped_root(), "user")


def is_overlay(path: str | os.PathLike) -> bool:
    """True if the table at ``path`` exists and is an overlay of a shipped table."""
    csv_path, json_path = table_files(path)
    if not (csv_path.is_file() and json_path.is_file()):
        return False
    try:  # the sidecar says it; the rows are read once, by whoever loads the table
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and bool(meta.get("overlay_of"))


@dataclass(frozen=True)
class Located:
    """Where one relative table name resolves: ``own`` (the writable path, which may not exist yet),
    ``base`` (the shipped table it overlays, if any) and whether ``own`` is an overlay of it."""

    own: Path
    base: Path | None

    @property
    def overlays(self) -> bool:
        return self.base is not None


def locate(relative: str | os.PathLike, roots: TableRoots) -> Located:
    """Resolve ``relative`` under ``roots``: a full table at the writable root is used alone; else a
    shipped table of that name is the base and the writable path its overlay."""
    own = roots.write / relative
    if table_files(own)[0].exists() and not is_overlay(own):
        return Located(own, None)
    if roots.shipped is not None and table_files(roots.shipped / relative)[0].exists():
        return Located(own, roots.shipped / relative)
    return Located(own, None)


def recorded_layers(cfg) -> list[str]:
    """The table files a run's config recorded (``table``, then ``table_overlay``), for ``load_layers``."""
    return [p for p in (getattr(cfg, "table", None), getattr(cfg, "table_overlay", None)) if p]


def load_layers(paths) -> LatencyTable:
    """A table read from ``paths``: one file, or a list of a table then the overlays merged on it (a run's
    ``table`` and ``table_overlay``), or a ``Located``."""
    if isinstance(paths, Located):
        return load_located(paths)
    if isinstance(paths, (str, os.PathLike)):
        return LatencyTable.load(paths)
    table, *tops = [LatencyTable.load(p) for p in paths]
    for top in tops:
        table = table.with_overlay(top)
    return table


def load_located(where: Located) -> LatencyTable:
    """The table ``where`` names: the base with its overlay merged on it, or the table at ``own``."""
    if where.base is None:
        return LatencyTable.load(where.own)
    base = LatencyTable.load(where.base)
    if not table_files(where.own)[0].exists():
        return base
    return base.with_overlay(LatencyTable.load(where.own))
