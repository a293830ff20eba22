"""`hwnas latency drift` (the table's reference networks timed again) and `hwnas search --machine-factor`."""
from __future__ import annotations

import pytest
from helpers import synthetic_table

from hwnas.device import device_slug
from hwnas.spaces import get_space

SPACE = get_space("proxyless")
CFG = SPACE.resolve_config({"width_mult": 0.25, "resolution": 32, "num_classes": 10})


def _table(tmp_path, *, references=True, slug=None):
    """A 1-thread torch table of this machine whose calibration keeps three reference networks
    (validated at 2, 3 and 4 ms)."""
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.validation import sample_archs

    table = LatencyTable.empty({"space": "proxyless", "config": {"width_mult": 0.25, "num_classes": 10},
                                "resolution": 32, "batch": 1, "dtype": "fp32", "backend": "torch", "threads": 1,
                                "statistic": "p50", "device": {"type": "cpu", "slug": slug or device_slug("cpu", 1)}})
    for sig, ms in synthetic_table(SPACE, CFG).rows.items():
        table.add(sig, {"count": 10, "mean": ms, "std": 0.0, "p10": ms, "p50": ms, "p90": ms})
    archs = sample_archs(SPACE, CFG, 3, seed=1)
    if references:
        table.meta["calibration"] = {"form": "affine", "a": 0.0, "b": 1.0, "statistic": "p50",
                                     "references": [{"arch": " ".join(a), "ms": ms} for a, ms in zip(archs, (2.0, 3.0, 4.0))]}
    return table.save(tmp_path / "t.csv")


def _fake_timing(monkeypatch, now_of):
    """Reference networks "measure" ``now_of(then_ms)`` at every statistic, in the order they are given."""
    import hwnas.latency.measure.timing as timing

    seen = []

    class FakeRunner:
        def __init__(self, net, shape, **kw):
            seen.append((shape, kw))

    def measure(runners, **kw):
        return [{q: now_of(ms) for q in ("p10", "p50", "p90", "mean")} for ms in (2.0, 3.0, 4.0)[:len(runners)]]

    monkeypatch.setattr(timing, "Runner", FakeRunner)
    monkeypatch.setattr(timing, "measure_interleaved", measure)
    return seen


def test_drift_is_the_median_ratio_of_the_references_now_to_then(tmp_path, monkeypatch):
    from hwnas.latency.drift import measure_drift
    from hwnas.latency.table import LatencyTable

    import torch

    seen = _fake_timing(monkeypatch, lambda ms: {2.0: 1.5, 3.0: 2.4, 4.0: 3.6}[ms])  # 0.75, 0.8, 0.9
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    try:
        d = measure_drift(LatencyTable.load(_table(tmp_path)))  # a 1-thread table: timed on 1 thread ...
        assert torch.get_num_threads() == max(2, before)  # ... the caller's threads given back (a search trains next)
    finally:
        torch.set_num_threads(before)
    assert d["factor"] == pytest.approx(0.8) and d["ratios"] == pytest.approx([0.75, 0.8, 0.9])
    assert d["then_ms"] == [2.0, 3.0, 4.0] and d["statistic"] == "p50"
    assert len(seen) == 3 and all(shape == (1, 3, 32, 32) and kw["backend"] == "torch" and kw["threads"] == 1
                                  for shape, kw in seen)


def test_drift_cli_prints_the_factor_and_what_it_means(tmp_path, monkeypatch, capsys):
    from hwnas.cli import main

    _fake_timing(monkeypatch, lambda ms: ms * 0.8)
    assert main(["latency", "drift", "--table", str(_table(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "machine factor 0.800 (p50)" in out and "+25.0% against what it measures now" in out
    assert "--machine-factor 0.800" in out and out.count("reference network:") == 3


@pytest.mark.parametrize("problem", ["no_references", "other_machine"])
def test_drift_refuses_a_table_it_cannot_time_here_in_one_line(tmp_path, monkeypatch, capsys, problem):
    from hwnas.cli import main

    _fake_timing(monkeypatch, lambda ms: ms)
    path = (_table(tmp_path, references=False) if problem == "no_references"
            else _table(tmp_path, slug="cpu-some-other-cpu-1t"))
    assert main(["latency", "drift", "--table", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hwnas: error:")]
    assert len(err) == 1 and "cannot measure drift" in err[0]
    assert ("no reference networks" if problem == "no_references" else "validated on cpu-some-other-cpu-1t") in err[0]


@pytest.mark.parametrize("factor", [0.8, "auto"])
def test_search_puts_an_absolute_target_on_the_tables_scale(tmp_path, monkeypatch, factor):
    """This machine runs at 0.8x the table's validation: a 5 ms target now is 6.25 ms on the table's
    scale. `auto` measures the factor and records the figure, so a resumed run keeps the target; a
    relative target (a share of the table's own range) is left alone."""
    from hwnas.latency.table import LatencyTable
    from hwnas.api import build_search
    from hwnas.searching import SearchConfig

    _fake_timing(monkeypatch, lambda ms: ms * 0.8)
    table = LatencyTable.load(_table(tmp_path))
    base = dict(epochs=2, warmup_epochs=1, batch_size=256, config={"width_mult": 0.25, "resolution": 32})
    plain = build_search(SearchConfig(latency_target="5ms", **base), tmp_path / "a", table=table)
    s = build_search(SearchConfig(latency_target="5ms", machine_factor=factor, **base), tmp_path / "b", table=table)
    assert plain.target_ms == pytest.approx(5.0) and s.target_ms == pytest.approx(6.25)
    assert s.machine_factor == pytest.approx(0.8) and s.cfg.machine_factor == pytest.approx(0.8)
    assert "5.00 ms on this machine now" in s.describe_target()
    rel = build_search(SearchConfig(latency_target="50%", machine_factor=factor, **base), tmp_path / "c", table=table)
    assert rel.target_ms == pytest.approx(plain.range_ms[0] + 0.5 * (plain.range_ms[1] - plain.range_ms[0]))


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan"])
def test_a_bad_machine_factor_is_refused(bad):
    from hwnas.searching import SearchConfig

    with pytest.raises(ValueError, match="--machine-factor"):
        SearchConfig(latency_target="5ms", machine_factor=bad).validate()


def test_predict_prints_the_prediction_on_this_machine_now(tmp_path, monkeypatch, capsys):
    from hwnas.cli import main
    from hwnas.latency.predictor import LatencyModel
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.validation import sample_archs
    from hwnas.spaces import Arch

    _fake_timing(monkeypatch, lambda ms: ms * 0.8)
    path = _table(tmp_path)
    arch = Arch("proxyless", CFG, sample_archs(SPACE, CFG, 1, seed=9)[0])
    arch.save(tmp_path / "arch.json")
    want = LatencyModel(LatencyTable.load(path), SPACE, CFG).of_tokens(arch.layers)
    for factor in ("auto", "0.8"):
        assert main(["latency", "predict", "--table", str(path), "--arch", str(tmp_path / "arch.json"),
                     "--machine-factor", factor]) == 0
        out = capsys.readouterr().out
        assert f"{want:.3f} ms" in out and f"{want * 0.8:.3f} ms on this machine now (machine factor 0.800" in out
    assert main(["latency", "predict", "--table", str(path), "--arch", str(tmp_path / "arch.json"),
                 "--machine-factor", "-2"]) == 2
    assert "--machine-factor '-2'" in capsys.readouterr().err
