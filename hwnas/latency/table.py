"""The latency lookup table (LUT): one row of timing statistics per block signature, plus provenance.

On disk a table is two files with the same stem::

    <root>/<device-slug>/<backend>/<space>-r<res>-b<batch>-<dtype>.csv   signature,count,mean,std,p10,p50,p90
    <root>/<device-slug>/<backend>/<space>-r<res>-b<batch>-<dtype>.json  sidecar: what, where, how, with what

Times are milliseconds. Signatures are opaque strings chosen by the search space (``k5e6:24>40:s2:r56``).
The sidecar holds ``format`` (1), ``space``, ``resolution``, ``batch``, ``dtype``, ``backend``,
``provider``, ``device`` (``hwnas.device.device_info``), ``threads``, ``warmup``, ``iterations``,
``statistic`` (the column ``latency()`` reads, default ``p50``), ``versions``, ``created``, ``updated``,
``git_commit``, and any extra keys a caller adds (kept through load/save).

``save`` is atomic per file (temp file in the same directory, fsync, ``os.replace``), sidecar first and
CSV second, so a killed process leaves either the old table or the new one, and a CSV never lacks its sidecar.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from hwnas.fsio import atomic_write_text

__all__ = [
    "FORMAT",
    "COLUMNS",
    "STAT_COLUMNS",
    "LatencyTableError",
    "MissingRowsError",
    "LatencyTable",
    "table_path",
    "table_files",
    "check_compatible",
    "device_mismatch_warning",
    "provenance",
    "library_versions",
    "git_commit",
]

FORMAT = 1
COLUMNS = ("signature", "count", "mean", "std", "p10", "p50", "p90")
STAT_COLUMNS = ("count", "mean", "std", "p10", "p50", "p90")
_STATISTICS = ("mean", "p10", "p50", "p90")
# Sidecar keys in the order they are written; other keys follow in their own order.
_META_ORDER = (
    "format", "space", "resolution", "batch", "dtype", "backend", "provider", "device", "threads",
    "warmup", "iterations", "statistic", "versions", "created", "updated", "git_commit",
)
_SHOW_MISSING = 5


class LatencyTableError(ValueError):
    """A latency table is missing, malformed, or does not fit the request (one-line message)."""


class MissingRowsError(LatencyTableError):
    """Signatures asked for are not in the table; ``.missing`` lists them all."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


# --------------------------------------------------------------------------------------------- paths


def table_path(
    root: str | os.PathLike, slug: str, backend: str, space: str, resolution: int, batch: int, dtype: str
) -> Path:
    """``<root>/<slug>/<backend>/<space>-r<resolution>-b<batch>-<dtype>.csv``."""
    return Path(root) / slug / backend / f"{space}-r{int(resolution)}-b{int(batch)}-{dtype}.csv"


def table_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(csv, json) for a path given as the .csv, the .json, or the stem without a suffix."""
    path = Path(path)
    if path.suffix in (".csv", ".json"):
        stem = path.with_suffix("")
    else:
        stem = path
    return Path(f"{stem}.csv"), Path(f"{stem}.json")


# --------------------------------------------------------------------------------------------- provenance


def _version(module: str, distributions: Iterable[str]) -> str | None:
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict:
    """Versions of python, torch, onnx, onnxruntime, triton (when installed) and hwnas."""
    versions = {
        "python": platform.python_version(),
        "torch": _version("torch", ["torch"]),
        "onnx": _version("onnx", ["onnx"]),
        "onnxruntime": _version("onnxruntime", ["onnxruntime", "onnxruntime-gpu"]),
        "triton": _version("triton", ["triton"]),
        "hwnas": _version("hwnas", ["hwnas"]),
    }
    return {k: v for k, v in versions.items() if v is not None or k != "triton"}


def _git_head(directory: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the working directory's repository, else of hwnas's source tree, else None."""
    commit = _git_head(Path.cwd())
    if commit is None:
        commit = _git_head(Path(__file__).resolve().parent)
    return commit


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict:
    """The sidecar keys describing this environment: versions, created, updated, git_commit."""
    now = _now()
    return {"versions": library_versions(), "created": now, "updated": now, "git_commit": git_commit()}


# --------------------------------------------------------------------------------------------- the table


def _fail(name: str, problem: str) -> LatencyTableError:
    return LatencyTableError(f"latency table {name}: {problem}")


def _empty_df() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="int64" if c == "count" else "float64") for c in STAT_COLUMNS})
    df.index = pd.Index([], dtype=object, name="signature")
    return df


def _check_stats(name: str, signature: str, stats: Mapping) -> dict:
    """Validated {column: value} for one row; raises LatencyTableError naming the row and the problem."""
    row = {}
    for col in STAT_COLUMNS:
        if col not in stats:
            raise _fail(name, f"row {signature!r} has no {col}")
        raw = stats[col]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise _fail(name, f"row {signature!r} has {col}={raw!r} (not a number)") from None
        if not math.isfinite(value):
            raise _fail(name, f"row {signature!r} has {col}={value} (must be finite)")
        if col == "count":
            if value < 1 or value != int(value):
                raise _fail(name, f"row {signature!r} has count={raw} (must be an integer >= 1)")
            value = int(value)
        elif value < 0:
            raise _fail(name, f"row {signature!r} has {col}={value} (must be >= 0)")
        row[col] = value
    return row


class LatencyTable:
    """Per-signature latency statistics (``.df``, indexed by signature) and provenance (``.meta``)."""

    def __init__(self, df: pd.DataFrame, meta: dict, path: str | os.PathLike | None = None):
        self.df = df
        self.meta = meta
        self.path = Path(path) if path is not None else None
        self.overlay: Path | None = None  # the overlay merged on this table (``with_overlay``), if any

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def empty(cls, meta: Mapping | None = None) -> LatencyTable:
        """A table with no rows; ``meta`` overrides the defaults (format, statistic p50, provenance)."""
        full = {"format": FORMAT, "statistic": "p50", **provenance()}
        full.update(meta or {})
        if full["statistic"] not in _STATISTICS:
            raise LatencyTableError(f"latency table statistic {full['statistic']!r} must be one of {_STATISTICS}")
        return cls(_empty_df(), full)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Load and validate a table from its .csv, its .json sidecar, or the common stem."""
        csv_path, json_path = table_files(path)
        name = str(csv_path)
        if not csv_path.is_file():
            raise _fail(name, "file not found")
        if not json_path.is_file():
            raise _fail(name, f"sidecar {json_path.name} not found (a table needs its provenance)")
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _fail(name, f"sidecar {json_path.name} is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise _fail(name, f"sidecar {json_path.name} must hold a JSON object")
        fmt = meta.get("format")
        if fmt != FORMAT:
            raise _fail(name, f"sidecar {json_path.name} has format={fmt!r}; this hwnas reads format {FORMAT}")
        statistic = meta.setdefault("statistic", "p50")
        if statistic not in _STATISTICS:
            raise _fail(name, f"sidecar {json_path.name} has statistic={statistic!r} (use one of {_STATISTICS})")

        try:
            raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise _fail(name, f"cannot parse CSV ({str(e).strip().splitlines()[0] if str(e).strip() else e})") from None
        missing_cols = [c for c in COLUMNS if c not in raw.columns]
        if missing_cols:
            raise _fail(name, f"missing column(s) {', '.join(missing_cols)} (need {','.join(COLUMNS)})")

        signatures = raw["signature"].astype(str).str.strip()
        if (signatures == "").any():
            line = int((signatures == "").to_numpy().argmax()) + 2
            raise _fail(name, f"line {line} has an empty signature")
        dup = signatures[signatures.duplicated()]
        if len(dup):
            first = dup.iloc[0]
            raise _fail(name, f"signature {first!r} appears {int((signatures == first).sum())} times")

        rows = [
            _check_stats(name, sig, rec)
            for sig, rec in zip(signatures, raw[list(STAT_COLUMNS)].to_dict("records"), strict=True)
        ]
        df = pd.DataFrame(rows, columns=list(STAT_COLUMNS)) if rows else _empty_df()
        df = df.astype({"count": "int64", **{c: "float64" for c in STAT_COLUMNS[1:]}})
        df.index = pd.Index(list(signatures), dtype=object, name="signature")
        return cls(df, meta, csv_path)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the sidecar then the CSV, each atomically; sets ``meta["updated"]``. Returns the CSV path."""
        target = path if path is not None else self.path
        if target is None:
            raise LatencyTableError("latency table has no path: pass one to save()")
        if path is None and self.overlay is not None:  # never fold an overlay's rows into the (shipped) base
            raise LatencyTableError(f"latency table {self.name} is read with an overlay: save it to a path of its own")
        csv_path, json_path = table_files(target)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.meta["updated"] = _now()
        self.meta.setdefault("created", self.meta["updated"])
        out = self.df.reset_index()[list(COLUMNS)]
        meta = {k: self.meta[k] for k in _META_ORDER if k in self.meta}
        meta.update((k, v) for k, v in self.meta.items() if k not in meta)
        atomic_write_text(json_path, json.dumps(meta, indent=2, default=str) + "\n")
        atomic_write_text(csv_path, out.to_csv(index=False, lineterminator="\n"))
        self.path = csv_path
        return csv_path

    # -- queries --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        name = str(self.path) if self.path is not None else "<unsaved>"
        return f"{name} + overlay {self.overlay}" if self.overlay is not None else name

    @property
    def layers(self) -> list[str]:
        """The files this table was read from: its own, then the overlay merged on it."""
        return [str(p) for p in (self.path, self.overlay) if p is not None]

    def with_overlay(self, top: LatencyTable) -> LatencyTable:
        """This table with the rows of ``top`` (an overlay: rows profiled later, on the same device, the same
        way) merged on it; ``LatencyTableError`` naming both files where ``top`` was measured otherwise. The
        result keeps this table's meta (its calibration and references describe the device) and path."""
        keys = ("space", "resolution", "batch", "dtype", "backend", "mode", "provider", "statistic", "context")
        diffs = [f"{k} {self.meta.get(k)!r} != {top.meta.get(k)!r}" for k in keys
                 if str(self.meta.get(k, "alone" if k == "context" else None))
                 != str(top.meta.get(k, "alone" if k == "context" else None))]
        slugs = [(t.meta.get("device") or {}).get("slug") for t in (self, top)]
        if slugs[0] != slugs[1]:
            diffs.append(f"device {slugs[0]!r} != {slugs[1]!r}")
        if diffs:
            raise LatencyTableError(f"latency table overlay {top.name} does not fit {self.name}: {'; '.join(diffs)} "
                                    f"(delete the overlay to profile its rows again)")
        df = pd.concat([self.df[~self.df.index.isin(top.df.index)], top.df])
        merged = LatencyTable(df, self.meta, self.path)
        merged.overlay = top.path
        return merged

    @property
    def statistic(self) -> str:
        return self.meta.get("statistic", "p50")

    def __len__(self) -> int:
        return len(self.df)

    def __contains__(self, signature: object) -> bool:
        return signature in self.df.index

    def __repr__(self) -> str:
        return f"LatencyTable({self.name!r}, rows={len(self)}, statistic={self.statistic!r})"

    def missing(self, signatures: Iterable[str]) -> list[str]:
        """Signatures (deduplicated, in first-seen order) that have no row."""
        have = self.df.index
        return [s for s in dict.fromkeys(signatures) if s not in have]

    def require(self, signatures: Iterable[str]) -> None:
        """Raise ``MissingRowsError`` unless every signature has a row."""
        wanted = list(dict.fromkeys(signatures))
        missing = self.missing(wanted)
        if missing:
            shown = ", ".join(repr(s) for s in missing[:_SHOW_MISSING])
            more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
            raise MissingRowsError(
                f"latency table {self.name}: {len(missing)} of {len(wanted)} signatures missing: {shown}{more} "
                "(profile them with `hwnas profile` for this space and shape)",
                missing,
            )

    def latency(self, signature: str) -> float:
        """The table's statistic (default p50) for ``signature`` in ms; ``MissingRowsError`` if absent."""
        if signature not in self.df.index:
            self.require([signature])
        return float(self.df.at[signature, self.statistic])

    def as_dict(self) -> dict[str, float]:
        """{signature: latency in ms} for every row, using the table's statistic."""
        return {str(k): float(v) for k, v in self.df[self.statistic].items()}

    # -- updates --------------------------------------------------------------------------------

    def add(self, signature: str, stats: Mapping) -> None:
        """Insert or replace the row for ``signature`` (``stats`` holds at least the six stat columns)."""
        if not isinstance(signature, str) or not signature.strip() or signature != signature.strip():
            raise LatencyTableError(f"latency table {self.name}: bad signature {signature!r}")
        row = _check_stats(self.name, signature, stats)
        if len(self.df) == 0:
            df = pd.DataFrame([row], columns=list(STAT_COLUMNS))
            df = df.astype({"count": "int64", **{c: "float64" for c in STAT_COLUMNS[1:]}})
            df.index = pd.Index([signature], dtype=object, name="signature")
            self.df = df
        else:
            self.df.loc[signature, list(STAT_COLUMNS)] = [row[c] for c in STAT_COLUMNS]


# --------------------------------------------------------------------------------------------- checks


def _same(key: str, have, want) -> bool:
    if key in ("resolution", "batch"):
        try:
            return int(have) == int(want)
        except (TypeError, ValueError):
            return False
    return str(have) == str(want)


def check_compatible(table: LatencyTable, *, space: str, resolution: int, batch: int, dtype: str) -> None:
    """Raise LatencyTableError naming every field where the table's sidecar differs from the request."""
    wanted = {"space": space, "resolution": resolution, "batch": batch, "dtype": dtype}
    diffs = [
        f"{key} {table.meta.get(key)!r} (table) != {value!r} (requested)"
        for key, value in wanted.items()
        if not _same(key, table.meta.get(key), value)
    ]
    if diffs:
        raise LatencyTableError(f"latency table {table.name} does not fit: {'; '.join(diffs)}")


def device_mismatch_warning(table: LatencyTable, slug: str) -> str | None:
    """A warning when the table was profiled on a device other than ``slug``; None when they agree."""
    device = table.meta.get("device")
    profiled = device.get("slug") if isinstance(device, Mapping) else None
    if profiled == slug:
        return None
    if profiled is None:
        return f"latency table {table.name} does not record its device; its latencies may not describe {slug}"
    return (
        f"latency table {table.name} was profiled on {profiled}, not on this device ({slug}); "
        "its latencies describe the profiled device"
    )
