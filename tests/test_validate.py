import itertools
import json

import numpy as np
import pytest

from hwnas.latency.calibration import fit_affine
from hwnas.latency.predictor import LatencyModel
from hwnas.latency.table import LatencyTable
from hwnas.latency.tables import profile_space
from hwnas.latency.validation import (anchor_positions, chunk_factors, error_figures, fit_rows, kendall_tau, sample_archs,
                                      validate)
from hwnas.spaces import get_space
from helpers import synthetic_table


def brute_tau(x, y):
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
        if sx * sy > 0:
            c += 1
        elif sx * sy < 0:
            d += 1
        elif sx == 0 and sy != 0:
            tx += 1
        elif sy == 0 and sx != 0:
            ty += 1
    return (c - d) / np.sqrt((c + d + tx) * (c + d + ty))


def test_kendall_tau_known_answers():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 30).astype(float)  # with ties
    assert kendall_tau(x, y) == pytest.approx(brute_tau(x, y))


def test_fit_and_error_figures():
    raw = np.array([1.0, 2.0, 3.0, 4.0])
    cal = fit_affine(raw, 0.5 + 1.5 * raw)
    assert cal["a"] == pytest.approx(0.5) and cal["b"] == pytest.approx(1.5) and cal["fit_samples"] == 4
    f = error_figures([1.04, 2.19, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0])
    assert f["within_5pct"] == 0.5 and f["within_10pct"] == 0.75
    assert f["mape"] == pytest.approx((0.04 + 0.095 + 0 + 0.25) / 4)


def test_calibration_is_folded_into_every_prediction():
    space = get_space("spnas")
    cfg = space.resolve_config({"width_mult": 0.25})
    table = synthetic_table(space, cfg)
    plain = LatencyModel(table, space, cfg)
    table.meta = {"calibration": {"form": "affine", "a": 0.7, "b": 0.8}}
    cal = LatencyModel(table, space, cfg)
    tokens = sample_archs(space, cfg, 1, seed=3)[0]
    assert cal.of_tokens(tokens) == pytest.approx(0.7 + 0.8 * plain.of_tokens(tokens))
    (lo, _), (hi, _) = cal.extremes()
    assert lo == pytest.approx(0.7 + 0.8 * plain.extremes()[0][0])
    assert sum(ms for _, _, ms in cal.breakdown(tokens)) == pytest.approx(cal.of_tokens(tokens))
    table.meta = {"calibration": {"form": "affine", "a": 0.7, "b": -1.0}}
    with pytest.raises(ValueError, match="b > 0"):
        LatencyModel(table, space, cfg)


def test_sample_archs_are_valid_distinct_and_seeded():
    space = get_space("fbnet")
    cfg = space.resolve_config({})
    a = sample_archs(space, cfg, 20, seed=1)
    assert len({tuple(t) for t in a}) == 20 and a == sample_archs(space, cfg, 20, seed=1)
    plan = space.plan(cfg)
    assert all(t in p.choices for arch in a for t, p in zip(arch, plan.layers))


def test_spread_sampling_covers_the_range_uniform_does_not():
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25})
    model = LatencyModel(synthetic_table(space, cfg), space, cfg)
    (lo, _), (hi, _) = model.extremes()
    plan = space.plan(cfg)
    spans = {}
    for sampling in ("uniform", "spread"):
        archs = sample_archs(space, cfg, 200, seed=2, sampling=sampling, model=model)
        assert len({tuple(a) for a in archs}) == 200
        assert all(t in p.choices for a in archs for t, p in zip(a, plan.layers, strict=True))
        lat = np.array([model.of_tokens(a) for a in archs])
        spans[sampling] = (np.percentile(lat, 95) - np.percentile(lat, 5)) / (hi - lo)
    assert spans["spread"] > 0.6 and spans["spread"] > 2 * spans["uniform"], spans
    with pytest.raises(ValueError, match="needs the latency model"):
        sample_archs(space, cfg, 2, sampling="spread")
    with pytest.raises(ValueError, match="unknown sampling 'grid'"):
        sample_archs(space, cfg, 2, sampling="grid", model=model)


def test_validate_end_to_end_on_a_small_real_table(tmp_path):
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 64})
    table = profile_space(space, cfg, tmp_path / "t.csv", device=__import__("torch").device("cpu"),
                          backend="torch", threads=1, warmup=1, iterations=5, rounds=2)
    table = LatencyTable.load(tmp_path / "t.csv")
    seen = []
    rep = validate(table, space, cfg, tmp_path / "v", samples=8, warmup=1, iterations=5, rounds=2, chunk=3,
                   min_round_s=0.0, repeats=2, progress=lambda d, n: seen.append((d, n)))
    # 8 networks + 2 second instances + 3 anchors prepared; each timed in 2 rounds, the anchors in each of 3 chunks
    assert seen == [(d, 51) for d in range(1, 52)]
    assert rep.chunk == 3 and len(rep.chunk_factors) == 3
    assert rep.repeatability["n"] == 2 and 0 <= rep.repeatability["within_10pct"] <= 1
    assert rep.samples == 8 and rep.holdout == 4 and rep.calibration["fit_samples"] == 4
    for fig in (rep.before, rep.after):
        assert 0 <= fig["within_10pct"] <= 1 and -1 <= fig["kendall_tau"] <= 1 and fig["n"] == 4
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["calibration"]["b"] == pytest.approx(rep.calibration["b"])
    assert (tmp_path / "v" / "scatter.png").stat().st_size > 1000
    lines = (tmp_path / "v" / "samples.csv").read_text().splitlines()
    assert len(lines) == 9
    import csv

    rows = list(csv.DictReader((tmp_path / "v" / "samples.csv").open()))
    assert [bool(r["repeat_ms"]) for r in rows] == [i in (0, 4) for i in range(8)]  # twins spread: 0 and 4
    assert sorted({r["split"] for r in rows}) == ["fit", "held_out"] and sum(r["split"] == "fit" for r in rows) == 4


def test_repeatability_is_the_twins_agreement(tmp_path, monkeypatch):
    """Known answer: networks 0 and 3 (every samples/repeats-th) measured 10 and 13 ms, their second
    instances +4% and +12%."""
    import hwnas.latency.validation.run as v
    import hwnas.latency.validation.statistic as st

    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    table = synthetic_table(space, cfg)
    table.meta = {"backend": "torch", "threads": 1, "resolution": 32, "batch": 1, "dtype": "fp32"}

    class FakeRunner:
        def __init__(self, *a, **k):
            pass

    def fake_measure(runners, **kwargs):
        n = len(runners) - 2  # the last two are the twins of networks 0 and 3
        stat = lambda ms: {"count": 1, "mean": ms, "std": 0.0, "p10": ms, "p50": ms, "p90": ms}  # noqa: E731
        return [stat(10.0 + i) for i in range(n)] + [stat(10.0 * 1.04), stat(13.0 * 1.12)]

    monkeypatch.setattr(v, "Runner", FakeRunner)
    monkeypatch.setattr(v, "measure_interleaved", fake_measure)
    # 10 + i ms has nothing to do with the table: the fit is refused, the measurements are kept
    with pytest.raises(ValueError, match=r"do not grow with the table's sum .* kept in .*samples.csv.*--refit"):
        validate(table, space, cfg, tmp_path / "v", samples=6, repeats=2, min_round_s=0.0)
    assert len((tmp_path / "v" / "samples.csv").read_text().splitlines()) == 7
    monkeypatch.setattr(st, "select_calibration", lambda blocks, measured, rows=None: {"form": "affine", "a": 0.0, "b": 1.0})
    rep = validate(table, space, cfg, tmp_path / "v", samples=6, repeats=2, min_round_s=0.0)
    r = rep.repeatability
    assert r["n"] == 2 and r["within_5pct"] == 0.5 and r["within_10pct"] == 0.5
    assert r["median_abs_diff"] == pytest.approx(0.08) and r["max_abs_diff"] == pytest.approx(0.12)
    # 12% apart is within 10% x sqrt(2) = 14.1% (a perfect predictor's +-10% at this noise), not 5% x sqrt(2)
    assert r["perfect_within_10pct"] == 1.0 and r["perfect_within_5pct"] == 0.5
    with pytest.raises(ValueError, match="repeats must be >= 0"):
        validate(table, space, cfg, tmp_path / "w", samples=6, repeats=-1)


def test_validate_refuses_a_table_profiled_on_another_machine(tmp_path, monkeypatch, capsys):
    """Timing an Intel table's networks on an AMD host measured the AMD host (predictions 46% low) and would
    have stored its calibration in the Intel table: refused before anything is built, the sidecar as it was.
    A CUDA table on a machine without CUDA is refused the same way."""
    import torch

    import hwnas.latency.validation.run as v
    from hwnas.cli import main
    from hwnas.device import device_slug
    from tests.test_cli import assert_one_line_error

    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    synth = synthetic_table(space, cfg)
    meta = {"space": "proxyless", "config": {"width_mult": 0.25}, "resolution": 32, "batch": 1, "dtype": "fp32",
            "backend": "onnxruntime", "threads": 2, "statistic": "p10",
            "device": {"type": "cpu", "slug": "cpu-some-other-cpu-2t", "name": "another CPU"}}
    table = LatencyTable.empty(meta)
    for sig, ms in synth.rows.items():
        table.add(sig, {"count": 10, "mean": ms, "std": 0.0, "p10": ms, "p50": ms, "p90": ms})
    path = table.save(tmp_path / "t.csv")
    monkeypatch.setattr(v, "build_child", lambda arch: pytest.fail("built a network of another machine's table"))
    with pytest.raises(ValueError, match=r"cannot validate here: the table was profiled on cpu-some-other-cpu-2t, "
                                         rf"this is {device_slug('cpu', 2)} \(profile this machine's own table"):
        validate(LatencyTable.load(path), space, cfg, tmp_path / "v", samples=6, repeats=0)
    assert not (tmp_path / "v").exists()
    before = path.with_suffix(".json").read_text()
    code = main(["latency", "validate", "--table", str(path), "--samples", "6", "--out", str(tmp_path / "w")])
    assert_one_line_error(code, capsys.readouterr().err, "cannot validate here", "cpu-some-other-cpu-2t")
    assert path.with_suffix(".json").read_text() == before and not (tmp_path / "w").exists()
    if not torch.cuda.is_available():
        table.meta["device"] = {"type": "cuda", "slug": "nvidia-h100-80gb-hbm3"}
        with pytest.raises(ValueError, match="profiled on nvidia-h100-80gb-hbm3 \\(CUDA\\) and this machine has no CUDA"):
            validate(table, space, cfg, tmp_path / "v", samples=6, repeats=0)
    # this machine's own slug passes the check (and reaches the measurement, stubbed here)
    table.meta["device"] = {"type": "cpu", "slug": device_slug("cpu", 2)}
    monkeypatch.setattr(v, "build_child", lambda arch: (_ for _ in ()).throw(RuntimeError("reached the build")))
    with pytest.raises(RuntimeError, match="reached the build"):
        validate(table, space, cfg, tmp_path / "v", samples=6, repeats=0)


def test_chunk_factors_and_anchor_positions_known_answers():
    # anchor 0 at 10/11/10 ms and anchor 1 at 20/22/20 ms in three chunks: the second chunk ran 10% slow
    assert chunk_factors([[10, 20], [11, 22], [10, 20]]) == pytest.approx([1.0, 1.1, 1.0])
    assert chunk_factors([[10.0], [5.0], [20.0]]) == pytest.approx([1.0, 0.5, 2.0])
    for bad in ([], [[1.0, -2.0]], [[float("nan")]]):
        with pytest.raises(ValueError, match="anchor timings"):
            chunk_factors(bad)
    # quartiles of the predicted latencies 5, 1, 4, 2, 3 are the samples predicted 2, 3 and 4 ms
    assert anchor_positions([5, 1, 4, 2, 3], 3) == [2, 3, 4]
    assert anchor_positions([1.0, 2.0], 0) == [] and anchor_positions([], 3) == []


def test_fit_rows_are_drawn_at_random_not_the_first():
    a = fit_rows(100, 0.5, seed=0)
    assert len(a) == 50 and a == fit_rows(100, 0.5, seed=0) and a != set(range(50)) and a != fit_rows(100, 0.5, seed=1)
    assert len(fit_rows(6, 0.5, 0)) == 3
    with pytest.raises(ValueError, match="held-out"):
        fit_rows(4, 0.5, 0)


def test_chunks_are_put_on_one_machine_speed_by_the_anchors(tmp_path, monkeypatch):
    """Known answer: every network measures exactly its plain sum times its chunk's machine speed
    (1.0, 1.3, 1.0, 0.9 for four chunks); the anchors, timed in every chunk, slow down with it. After
    the chunk factors are divided out, every network reads its plain sum, and the factors are the speeds
    over their median (1.0)."""
    import hwnas.latency.validation.run as v

    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    table = synthetic_table(space, cfg)
    table.meta = {"backend": "torch", "threads": 1, "resolution": 32, "batch": 1, "dtype": "fp32"}
    model = LatencyModel(table, space, cfg, calibrated=False)
    speeds, calls = [1.0, 1.3, 1.0, 0.9], []

    class FakeRunner:
        def __init__(self, net, *a, **k):
            self.ms = model.of_tokens(list(net))

    def fake_measure(runners, **kwargs):
        s = speeds[len(calls)]
        calls.append(len(runners))
        stat = lambda ms: {"count": 1, "mean": ms, "std": 0.0, "p10": ms, "p50": ms, "p90": ms}  # noqa: E731
        return [stat(r.ms * s) for r in runners]

    monkeypatch.setattr(v, "build_child", lambda arch: arch.layers)
    monkeypatch.setattr(v, "Runner", FakeRunner)
    monkeypatch.setattr(v, "measure_interleaved", fake_measure)
    rep = validate(table, space, cfg, tmp_path / "v", samples=16, chunk=5, repeats=0, min_round_s=0.0)
    assert calls == [5 + 3, 5 + 3, 5 + 3, 1 + 3]  # each chunk with the three anchors
    assert rep.chunk_factors == pytest.approx(speeds)
    import csv

    rows = list(csv.DictReader((tmp_path / "v" / "samples.csv").open()))
    for r in rows:
        assert float(r["measured_ms"]) == pytest.approx(float(r["predicted_sum_ms"]))
        assert float(r["measured_p90_ms"]) == pytest.approx(float(r["predicted_sum_ms"]))
    assert rep.after["within_5pct"] == 1.0
    # torch eager on a CPU defaults to chunks of TORCH_CPU_CHUNK
    calls.clear()
    speeds[:] = [1.0] * 4
    rep = validate(table, space, cfg, tmp_path / "w", samples=30, repeats=0, min_round_s=0.0)
    assert rep.chunk == v.TORCH_CPU_CHUNK and calls == [v.TORCH_CPU_CHUNK + 3] * 3


def test_each_quantile_is_put_on_one_machine_speed_by_its_own_anchor_factor(tmp_path, monkeypatch):
    """Known answer: in the second of three chunks the p10 of every network (anchors included) reads 0.8x
    (a fast mode some calls run in) while its p50 reads 1.2x (the machine slower in the median). Each
    quantile is divided by its own chunk factor, so every network reads its plain sum at p50 and half of it
    at p10; one factor taken at p10 and divided into the p50 (the old way) would leave that chunk's p50
    at 1.5x its sum. The report keeps both factor lists and the anchors' raw timings."""
    import csv

    import hwnas.latency.validation.run as v

    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": 0.25, "resolution": 32})
    table = synthetic_table(space, cfg)
    table.meta = {"backend": "torch", "threads": 1, "resolution": 32, "batch": 1, "dtype": "fp32"}
    model = LatencyModel(table, space, cfg, calibrated=False)
    p10_speed, p50_speed, calls = [1.0, 0.8, 1.0], [1.0, 1.2, 1.0], []

    class FakeRunner:
        def __init__(self, net, *a, **k):
            self.ms = model.of_tokens(list(net))

    def fake_measure(runners, **kwargs):
        c = len(calls)
        calls.append(len(runners))
        return [{"count": 1, "mean": r.ms * p50_speed[c], "std": 0.0, "p10": 0.5 * r.ms * p10_speed[c],
                 "p50": r.ms * p50_speed[c], "p90": r.ms * p50_speed[c]} for r in runners]

    monkeypatch.setattr(v, "build_child", lambda arch: arch.layers)
    monkeypatch.setattr(v, "Runner", FakeRunner)
    monkeypatch.setattr(v, "measure_interleaved", fake_measure)
    rep = validate(table, space, cfg, tmp_path / "v", samples=12, chunk=4, repeats=0, min_round_s=0.0)
    assert rep.chunk_factors_by_statistic["p10"] == pytest.approx(p10_speed)
    assert rep.chunk_factors_by_statistic["p50"] == pytest.approx(p50_speed)
    assert rep.chunk_factors == rep.chunk_factors_by_statistic[getattr(table, "statistic", "p50")]  # the table's own
    assert len(rep.anchor_timings) == 3 and len(rep.anchor_timings[1]) == 3
    assert rep.anchor_timings[1][0]["p50"] == pytest.approx(1.2 * rep.anchor_timings[0][0]["p50"])
    rows = list(csv.DictReader((tmp_path / "v" / "samples.csv").open()))
    for r in rows:
        s = float(r["predicted_sum_ms"])
        assert float(r["measured_p50_ms"]) == pytest.approx(s) and float(r["measured_p10_ms"]) == pytest.approx(0.5 * s)
    assert {r["chunk_factor_p50"] for r in rows} == {"1.0", "1.2"}
