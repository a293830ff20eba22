"""LatencyTable: layout, round trip, atomic save, validation messages, queries and compatibility checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from hwnas.latency import table as table_mod
from hwnas.latency.table import (
    COLUMNS,
    LatencyTable,
    LatencyTableError,
    MissingRowsError,
    check_compatible,
    device_mismatch_warning,
    table_path,
)

META = {"space": "proxyless", "resolution": 224, "batch": 1, "dtype": "fp32", "backend": "onnxruntime",
        "device": {"slug": "cpu-test-2t", "name": "test"}, "threads": 2}


def stats(p50: float, **over) -> dict:
    row = {"count": 50, "mean": p50 * 1.1, "std": 0.01, "p10": p50 * 0.9, "p50": p50, "p90": p50 * 1.3}
    row.update(over)
    return row


def make_table(n: int = 3) -> LatencyTable:
    table = LatencyTable.empty({**META, "note": "extra key survives"})
    for i in range(n):
        table.add(f"k{3 + 2 * i}e6:24>24:s1:r56", stats(0.25 * (i + 1)))
    return table


def write_raw(tmp_path: Path, csv_text: str, meta: dict | None = None, *, sidecar: bool = True) -> Path:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(csv_text)
    if sidecar:
        (tmp_path / "t.json").write_text(json.dumps({"format": 1, **META} if meta is None else meta))
    return csv_path


GOOD_CSV = "signature,count,mean,std,p10,p50,p90\nk3e6:a,10,1.0,0.1,0.9,1.0,1.2\nk5e6:a,10,2.0,0.1,1.9,2.0,2.2\n"


def test_table_path_layout(tmp_path):
    path = table_path(tmp_path, "cpu-amd-epyc-2t", "onnxruntime", "proxyless", 224, 1, "fp32")
    assert path == tmp_path / "cpu-amd-epyc-2t" / "onnxruntime" / "proxyless-r224-b1-fp32.csv"


def test_round_trip_by_csv_json_and_stem(tmp_path):
    table = make_table()
    csv_path = table.save(tmp_path / "dev" / "ort" / "proxyless-r224-b1-fp32.csv")
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    for given in (csv_path, csv_path.with_suffix(".json"), csv_path.with_suffix("")):
        loaded = LatencyTable.load(given)
        pd.testing.assert_frame_equal(loaded.df, table.df)
        assert loaded.df["count"].dtype == "int64"
        assert loaded.meta["note"] == "extra key survives"
        assert loaded.meta["space"] == "proxyless" and loaded.meta["format"] == 1
        assert loaded.latency("k5e6:24>24:s1:r56") == 0.5
        assert len(loaded) == 3 and "k7e6:24>24:s1:r56" in loaded and "nope" not in loaded


def test_sidecar_has_provenance(tmp_path):
    meta = json.loads(Path(make_table().save(tmp_path / "t.csv")).with_suffix(".json").read_text())
    for key in ("format", "statistic", "versions", "created", "updated", "git_commit"):
        assert key in meta
    assert meta["statistic"] == "p50"
    assert {"python", "torch", "onnx", "onnxruntime", "hwnas"} <= set(meta["versions"])


def test_statistic_column_is_used(tmp_path):
    table = make_table()
    table.meta["statistic"] = "p90"
    table.save(tmp_path / "t.csv")
    assert LatencyTable.load(tmp_path / "t.csv").latency("k3e6:24>24:s1:r56") == pytest.approx(0.25 * 1.3)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    table = make_table()
    table.save(tmp_path / "t.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]
    before = (tmp_path / "t.csv").read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    table.add("k9e9:new", stats(9.0))
    monkeypatch.setattr(table_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        table.save(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == before  # the old table is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]  # temp file removed
    monkeypatch.undo()
    table.save(tmp_path / "t.csv")
    assert "k9e9:new" in LatencyTable.load(tmp_path / "t.csv")


def test_resave_keeps_unknown_keys_and_created(tmp_path):
    make_table().save(tmp_path / "t.csv")
    loaded = LatencyTable.load(tmp_path / "t.csv")
    created = loaded.meta["created"]
    loaded.meta["another"] = {"nested": [1, 2]}
    loaded.save()
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.meta["created"] == created
    assert again.meta["note"] == "extra key survives" and again.meta["another"] == {"nested": [1, 2]}


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("signature,count,mean,std,p10,p50\nk3e6:a,10,1.0,0.1,0.9,1.0\n", "missing column(s) p90"),
        ("signature,count,mean,std,p10,p50,p90\nk3e6:a,10,1.0,0.1,0.9,-1.0,1.2\n",
         "row 'k3e6:a' has p50=-1.0 (must be >= 0)"),
        ("signature,count,mean,std,p10,p50,p90\nk3e6:a,10,nan,0.1,0.9,1.0,1.2\n",
         "row 'k3e6:a' has mean=nan (must be finite)"),
        ("signature,count,mean,std,p10,p50,p90\nk3e6:a,10,1.0,0.1,0.9,inf,1.2\n",
         "row 'k3e6:a' has p50=inf (must be finite)"),
        ("signature,count,mean,std,p10,p50,p90\nk3e6:a,10,1.0,0.1,0.9,,1.2\n",
         "row 'k3e6:a' has p50='' (not a number)"),
        ("signature,count,mean,std,p10,p50,p90\nk3e6:a,0,1.0,0.1,0.9,1.0,1.2\n",
         "row 'k3e6:a' has count=0 (must be an integer >= 1)"),
        (GOOD_CSV + "k3e6:a,10,1.0,0.1,0.9,1.0,1.2\n", "signature 'k3e6:a' appears 2 times"),
    ],
    ids=["missing-column", "negative", "nan", "inf", "empty", "zero-count", "duplicate"],
)
def test_validation_messages(tmp_path, csv_text, expected):
    path = write_raw(tmp_path, csv_text)
    with pytest.raises(LatencyTableError) as info:
        LatencyTable.load(path)
    message = str(info.value)
    assert message == f"latency table {path}: {expected}" or (
        message.startswith(f"latency table {path}: ") and expected in message
    )
    assert "\n" not in message


def test_missing_sidecar(tmp_path):
    path = write_raw(tmp_path, GOOD_CSV, sidecar=False)
    with pytest.raises(LatencyTableError, match=r"latency table .*t\.csv: sidecar t\.json not found"):
        LatencyTable.load(path)


def test_bad_sidecar_and_missing_csv(tmp_path):
    path = write_raw(tmp_path, GOOD_CSV)
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match=r"sidecar t\.json is not valid JSON"):
        LatencyTable.load(path)
    (tmp_path / "t.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(LatencyTableError, match=r"format=99"):
        LatencyTable.load(path)
    with pytest.raises(LatencyTableError, match=r"other\.csv: file not found"):
        LatencyTable.load(tmp_path / "other")


def test_signature_strings_are_kept_verbatim(tmp_path):
    # "NA", "null" and "nan" are valid signatures, not missing values.
    table = LatencyTable.empty(META)
    for sig in ("NA", "null", "nan", "skip:24>24:s1:r56"):
        table.add(sig, stats(1.0))
    table.save(tmp_path / "t.csv")
    assert list(LatencyTable.load(tmp_path / "t.csv").df.index) == ["NA", "null", "nan", "skip:24>24:s1:r56"]


def test_require_and_missing():
    table = make_table(1)
    wanted = ["k3e6:24>24:s1:r56"] + [f"k5e{i}:x" for i in range(7)] + ["k5e0:x"]
    assert table.missing(wanted) == [f"k5e{i}:x" for i in range(7)]
    table.require(["k3e6:24>24:s1:r56"])
    with pytest.raises(MissingRowsError) as info:
        table.require(wanted)
    message = str(info.value)
    assert isinstance(info.value, LatencyTableError) and isinstance(info.value, ValueError)
    assert "7 of 8 signatures missing: 'k5e0:x', 'k5e1:x', 'k5e2:x', 'k5e3:x', 'k5e4:x' and 2 more" in message
    assert "\n" not in message
    assert info.value.missing == [f"k5e{i}:x" for i in range(7)]
    with pytest.raises(MissingRowsError, match="1 of 1 signatures missing: 'zzz'"):
        table.latency("zzz")


def test_add_validates_and_replaces():
    table = make_table(1)
    with pytest.raises(LatencyTableError, match=r"has p90=-2.0 \(must be >= 0\)"):
        table.add("x", stats(1.0, p90=-2.0))
    with pytest.raises(LatencyTableError, match="has no std"):
        table.add("x", {"count": 1, "mean": 1, "p10": 1, "p50": 1, "p90": 1})
    assert "x" not in table
    table.add("k3e6:24>24:s1:r56", stats(4.0))
    assert len(table) == 1 and table.latency("k3e6:24>24:s1:r56") == 4.0
    assert table.as_dict() == {"k3e6:24>24:s1:r56": 4.0}


def test_check_compatible():
    table = make_table()
    check_compatible(table, space="proxyless", resolution=224, batch=1, dtype="fp32")
    with pytest.raises(LatencyTableError) as info:
        check_compatible(table, space="proxyless", resolution=32, batch=8, dtype="fp32")
    message = str(info.value)
    assert "resolution 224 (table) != 32 (requested)" in message
    assert "batch 1 (table) != 8 (requested)" in message
    assert "space" not in message.split("fit:")[1] and "dtype" not in message


def test_device_mismatch_warning():
    table = make_table()
    assert device_mismatch_warning(table, "cpu-test-2t") is None
    warning = device_mismatch_warning(table, "nvidia-h100-80gb-hbm3")
    assert "cpu-test-2t" in warning and "nvidia-h100-80gb-hbm3" in warning
    table.meta.pop("device")
    assert "does not record its device" in device_mismatch_warning(table, "cpu-test-2t")


def test_empty_table_round_trips(tmp_path):
    LatencyTable.empty(META).save(tmp_path / "e.csv")
    loaded = LatencyTable.load(tmp_path / "e.csv")
    assert len(loaded) == 0 and loaded.missing(["a"]) == ["a"]
    assert os.path.getsize(tmp_path / "e.csv") > 0
