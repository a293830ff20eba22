"""Drift compensation by the table's reference networks (hwnas.latency.reference, hwnas.exporting)."""
import pytest
import torch

import hwnas.exporting as ex
from hwnas.device import device_slug
from hwnas.exporting import ArchSource, export
from hwnas.latency.reference import check_references, machine_factor, pick_references, unusable
from hwnas.latency.validation import sample_archs
from hwnas.compare import _measured_cell
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from helpers import synthetic_table


def test_pick_references_at_the_quartiles():
    rows = [{"arch": f"a{i}", "measured_ms": float(i)} for i in (5, 1, 9, 3, 7, 2, 8, 4, 6)]
    assert pick_references(rows) == [{"arch": "a3", "ms": 3.0}, {"arch": "a5", "ms": 5.0}, {"arch": "a7", "ms": 7.0}]
    assert [r["ms"] for r in pick_references(rows, n=1)] == [5.0]
    assert pick_references([]) == []


def test_machine_factor_is_the_median_ratio():
    assert machine_factor([1.2, 2.2, 3.9], [1.0, 2.0, 3.0]) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="matching positive"):
        machine_factor([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="matching positive"):
        machine_factor([0.0], [1.0])
    with pytest.raises(ValueError, match="references must be a list"):
        check_references([{"arch": "k3e3", "ms": -1}])


def _setup(threads=2):
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32, "num_classes": 10})
    table = synthetic_table(space, cfg)
    archs = sample_archs(space, cfg, 3, seed=7)
    table.statistic = "p10"
    table.meta = {"space": "proxyless", "config": cfg, "resolution": 32, "batch": 1, "threads": threads,
                  "backend": "onnxruntime", "provider": "CPUExecutionProvider",
                  "device": {"slug": device_slug("cpu", threads)},
                  "calibration": {"form": "affine", "a": 0.0, "b": 1.0,
                                  "references": [{"arch": " ".join(archs[1]), "ms": 1.0},
                                                 {"arch": " ".join(archs[2]), "ms": 2.0}]}}
    return ArchSource(Arch("proxyless", cfg, archs[0]), "test"), table


OK = {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "threads": 2, "batch": 1, "resolution": 32}


def test_unusable_names_why():
    _, table = _setup()
    table.meta["calibration"]["statistic"] = "p10"
    assert unusable(table, **OK) is None
    assert "validated with 2 threads, this measures with 4" in unusable(table, **{**OK, "threads": 4})
    assert "batch 8" in unusable(table, **{**OK, "batch": 8})
    assert "validated at 32x32, this measures 64x64" in unusable(
        table, backend="onnxruntime", provider="CPUExecutionProvider", threads=2, batch=1, resolution=64)
    assert "validated in fp32, this measures fp16" in unusable(
        table, backend="onnxruntime", provider="CPUExecutionProvider", threads=2, batch=1, resolution=32, dtype="fp16")
    table.statistic = "p50"
    assert "measured at p10, the table reads p50" in unusable(table, **OK)
    table.statistic = "p10"
    table.meta["device"] = {"slug": "gpu-h100"}
    assert "validated on gpu-h100" in unusable(table, **OK)
    table.meta["backend"] = "torch"
    assert "validated on torch" in unusable(table, **OK)
    del table.meta["calibration"]["references"]
    assert "no reference networks" in unusable(table, **OK)


def test_export_divides_by_the_references_drift(tmp_path, monkeypatch):
    """Known answer: the references ran 1.5x and 1.5x their validation latency, so the model's 3.0 ms
    is 2.0 ms on the machine the prediction describes."""
    src, table = _setup()
    seen = []

    def fake(runners, **kwargs):
        seen.append(len(runners))
        st = lambda ms: {"count": 1, "mean": ms, "std": 0.0, "p10": ms, "p50": ms * 1.1, "p90": ms * 1.2}  # noqa: E731
        return [st(3.0), st(1.5), st(3.0)][:len(runners)]

    built = []

    class Recorder:
        def __init__(self, net, shape, **kwargs):
            built.append((net, tuple(shape), kwargs))

    monkeypatch.setattr(ex, "measure_interleaved", fake)
    monkeypatch.setattr(ex, "Runner", Recorder)
    rep = export(src, tmp_path / "m.onnx", threads=2, table=table)
    assert seen == [3]  # the model and both references, in the same rounds
    # rebuilt as the validation built them: the table's config and deploy shape, its runtime and threads
    assert [b[1] for b in built] == [(1, 3, 32, 32)] * 2
    assert all(b[2] == {"backend": "onnxruntime", "device": "cpu", "threads": 2, "provider": "cpu"} for b in built)
    want = [build_child(Arch("proxyless", table.meta["config"], r["arch"].split(" ")))
            for r in table.meta["calibration"]["references"]]
    assert [sum(p.numel() for p in b[0].parameters()) for b in built] == [sum(p.numel() for p in w.parameters()) for w in want]
    assert [type(m).__name__ for m in built[1][0].modules()] == [type(m).__name__ for m in want[1].modules()]
    assert rep.reference_ratios == pytest.approx([1.5, 1.5]) and rep.machine_factor == pytest.approx(1.5)
    assert rep.compensated_ms == pytest.approx(2.0) and not rep.notes
    alone = export(src, tmp_path / "m.onnx", threads=1, table=table)  # other threads: references do not apply
    assert seen[-1] == 1 and alone.compensated_ms is None and "validated with 2 threads" in alone.notes[0]
    off = export(src, tmp_path / "m.onnx", threads=2, table=table, references=False)
    assert seen[-1] == 1 and off.compensated_ms is None


def test_export_times_real_references(tmp_path):
    torch.manual_seed(0)
    src, table = _setup(threads=1)
    rep = export(src, tmp_path / "m.onnx", threads=1, table=table, iterations=6, rounds=2, warmup=1)
    assert len(rep.reference_ratios) == 2 and all(r > 0 for r in rep.reference_ratios)
    assert rep.compensated_ms == pytest.approx(rep.measured_ms["p10"] / rep.machine_factor)


def test_a_stale_reference_costs_no_export(tmp_path):
    """A reference whose tokens the space no longer has: the model is measured alone, with a note."""
    src, table = _setup(threads=1)
    table.meta["calibration"]["references"][0]["arch"] = "k9e9 " * 3
    rep = export(src, tmp_path / "m.onnx", threads=1, table=table, iterations=4, rounds=1, warmup=1)
    assert rep.measured_ms["p10"] > 0 and rep.compensated_ms is None and (tmp_path / "m.onnx").exists()
    assert "could not be rebuilt" in rep.notes[0]


def test_compare_cell_shows_the_compensated_figure_only_when_complete():
    assert _measured_cell({"measured_ms": 3.0}) == "3.000"
    assert _measured_cell({"measured_ms": 3.0, "compensated_ms": "", "machine_factor": ""}) == "3.000"
    assert _measured_cell({"measured_ms": 3.0, "compensated_ms": 2.0, "machine_factor": None}) == "3.000"
    assert _measured_cell({"measured_ms": 3.0, "compensated_ms": "2.0", "machine_factor": "1.5"}) == "3.000 (2.000 at x1.50)"
