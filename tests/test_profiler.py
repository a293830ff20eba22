"""Timing, ONNX Runtime sessions, the resumable profiler and device resolution."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwnas import device as device_mod
from hwnas.device import DeviceError, device_info, device_slug, resolve_device
from hwnas.latency.measure.blocks import BlockSpec, profile_blocks
from hwnas.latency.measure.runtimes import runtime, runtime_label
from hwnas.latency.measure.timing import Runner, measure_interleaved, measure_module, random_inputs, summarize, time_callable
from hwnas.latency.table import LatencyTable, LatencyTableError
from hwnas.onnx import export_onnx_bytes, ort_session

STAT_KEYS = {"count", "mean", "std", "p10", "p50", "p90"}


def tiny_block(channels: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels),
        torch.nn.ReLU6(),
    )


# --------------------------------------------------------------------------------------------- summarize


def test_summarize_known_answers():
    s = summarize([float(v) for v in range(11, 0, -1)])  # 1..11, unsorted on purpose
    assert s == {"count": 11, "mean": 6.0, "std": pytest.approx(math.sqrt(11.0)),
                 "p10": 2.0, "p50": 6.0, "p90": 10.0}
    s = summarize([4.0, 1.0, 3.0, 2.0])  # linear interpolation between order statistics
    assert (s["p10"], s["p50"], s["p90"]) == pytest.approx((1.3, 2.5, 3.7))
    assert summarize([2.5]) == {"count": 1, "mean": 2.5, "std": 0.0, "p10": 2.5, "p50": 2.5, "p90": 2.5}
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


# --------------------------------------------------------------------------------------------- time_callable


def test_time_callable_rotates_inputs_and_counts():
    calls = []
    inputs = ["a", "b", "c"]
    s = time_callable(calls.append, inputs, warmup=2, iterations=6)
    assert calls == ["a", "b", "a", "b", "c", "a", "b", "c"]  # warm-up, then 6 timed calls from input 0
    assert {x: calls[2:].count(x) for x in inputs} == {"a": 2, "b": 2, "c": 2}
    assert set(s) == STAT_KEYS and s["count"] == 6


def test_time_callable_syncs_inside_the_timed_region():
    syncs = []

    def slow_sync():
        syncs.append(1)
        time.sleep(0.002)

    s = time_callable(lambda x: None, [0], warmup=3, iterations=5, sync=slow_sync)
    assert len(syncs) == 5 + 1  # every timed call, plus once after warm-up
    assert s["p10"] >= 2.0  # the 2 ms of sync are inside the clock
    assert time_callable(lambda x: None, [0], warmup=0, iterations=5)["p50"] < 1.0


# --------------------------------------------------------------------------------------------- inputs


def test_random_inputs_are_random_and_reproducible():
    xs = random_inputs((2, 3, 5, 5), 4, dtype="fp16", device="cpu", seed=7)
    assert len(xs) == 4
    for x in xs:
        assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float16
        assert x.abs().sum() > 0 and (x != 0).float().mean() > 0.9
        assert 0.5 < x.float().std() < 1.5
    assert not torch.equal(xs[0], xs[1])
    again = random_inputs((2, 3, 5, 5), 4, dtype="fp16", device="cpu", seed=7)
    assert all(torch.equal(a, b) for a, b in zip(xs, again))


# --------------------------------------------------------------------------------------------- measure_module


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_measure_module_stats_are_sane(backend, capsys):
    block = tiny_block()
    threads_before = torch.get_num_threads()
    s = measure_module(block, (1, 4, 8, 8), backend=backend, device="cpu", threads=1, warmup=2, iterations=7)
    assert set(s) == STAT_KEYS and s["count"] == 7
    assert 0 < s["p10"] <= s["p50"] <= s["p90"] and s["mean"] > 0 and s["std"] >= 0
    assert s["p50"] < 1000
    assert torch.get_num_threads() == threads_before  # thread count restored
    assert block.training and next(block.parameters()).dtype == torch.float32  # caller's module untouched
    assert capsys.readouterr().out == ""  # the exporter's narration is silenced


def test_measure_module_dtypes():
    s = measure_module(tiny_block(), (1, 4, 8, 8), backend="torch", threads=1, warmup=1, iterations=3, dtype="bf16")
    assert s["count"] == 3
    with pytest.raises(ValueError, match="onnxruntime supports fp32 and fp16, not bf16"):
        measure_module(tiny_block(), (1, 4, 8, 8), backend="onnxruntime", threads=1, dtype="bf16")
    with pytest.raises(ValueError, match="unknown latency backend 'tvm'"):
        measure_module(tiny_block(), (1, 4, 8, 8), backend="tvm", threads=1)


def test_runtime_defaults_and_refusals():
    assert runtime("torch", "cpu") == ("eager", None)
    assert runtime("torch", "cpu", "compile") == ("compile", None)
    assert runtime("onnxruntime", "cpu") == (None, "cpu")
    assert runtime("onnxruntime", "cuda:0") == (None, "cuda")  # no CUDA needed to name the default
    assert runtime("onnxruntime", "cuda:0", provider="tensorrt") == (None, "tensorrt")
    with pytest.raises(ValueError, match="cudagraph needs a CUDA device"):
        runtime("torch", "cpu", "cudagraph")
    with pytest.raises(ValueError, match="--provider cuda is for --backend onnxruntime"):
        runtime("torch", "cpu", provider="cuda")
    with pytest.raises(ValueError, match="--mode compile is for --backend torch"):
        runtime("onnxruntime", "cpu", "compile")
    with pytest.raises(ValueError, match="--provider tensorrt does not run on --device cpu"):
        runtime("onnxruntime", "cpu", provider="tensorrt")
    with pytest.raises(ValueError, match="--provider cpu does not run on --device cuda:0"):
        runtime("onnxruntime", "cuda:0", provider="cpu")
    with pytest.raises(ValueError, match="unknown torch mode 'jit'"):
        runtime("torch", "cpu", "jit")
    assert [runtime_label("torch"), runtime_label("torch", "eager"), runtime_label("torch", "cudagraph"),
            runtime_label("onnxruntime", None, "cpu"), runtime_label("onnxruntime", None, "cuda"),
            runtime_label("onnxruntime", None, "tensorrt")] == [
        "torch", "torch", "torch-cudagraph", "onnxruntime", "onnxruntime", "onnxruntime-tensorrt"]


def test_measure_module_compile_mode_runs_the_compiled_block(monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(module, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    s = measure_module(tiny_block(), (1, 4, 8, 8), backend="torch", threads=1, warmup=1, iterations=4, mode="compile")
    assert compiled == ["Sequential"] and s["count"] == 4 and 0 < s["p50"] < 1000


class ScriptedRunner:
    """Stands in for a Runner: round r returns ``values[r]`` for every call, and records its calls."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def samples(self, iterations, warmup=0):
        self.calls.append((iterations, warmup))
        return np.full(iterations, self.values[len(self.calls) - 1], dtype=np.float64)


def test_measure_interleaved_pools_rounds_and_outvotes_a_slow_spell():
    steady, spelled = ScriptedRunner([1.0] * 5), ScriptedRunner([1.0, 9.0, 1.0, 1.0, 1.0])
    seen = []
    stats = measure_interleaved([steady, spelled], warmup=7, iterations=23, rounds=5,
                                progress=lambda d, n: seen.append((d, n)))
    assert steady.calls == [(5, 7), (5, 3), (5, 3), (5, 3), (5, 3)]  # ceil(23/5) per round; re-warm later rounds
    assert stats[0]["count"] == 25 and stats[0]["p50"] == 1.0
    assert stats[1]["p50"] == 1.0 and stats[1]["mean"] == pytest.approx(13.0 / 5)  # the spell moves the mean only
    assert seen == [(i, 10) for i in range(1, 11)]
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        measure_interleaved([steady], warmup=0, iterations=1, rounds=0)


def test_measure_interleaved_spreads_rounds_in_time():
    started = time.perf_counter()
    measure_interleaved([ScriptedRunner([1.0] * 3)], warmup=0, iterations=3, rounds=3, min_round_s=0.2)
    assert time.perf_counter() - started >= 0.4  # two pauses between three rounds, none after the last


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_runner_is_prepared_once_and_reused(backend):
    runner = Runner(tiny_block(), (1, 4, 8, 8), backend=backend, threads=1)
    a, b = runner.samples(3, 1), runner.samples(5)
    assert a.shape == (3,) and b.shape == (5,) and (a > 0).all() and (b > 0).all()


# --------------------------------------------------------------------------------------------- ONNX Runtime


@pytest.fixture(scope="module")
def tiny_onnx():
    torch.manual_seed(0)
    block = tiny_block().eval()
    x = random_inputs((1, 4, 8, 8), 1, seed=1)[0]
    with torch.no_grad():
        expected = block(x)
    return export_onnx_bytes(block, x), x, expected


def test_ort_session_options_are_set(tiny_onnx):
    onnx_bytes, x, expected = tiny_onnx
    session = ort_session(onnx_bytes, device="cpu", threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session.get_providers() == ["CPUExecutionProvider"]
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback guard")
def test_ort_session_refuses_silent_cpu_fallback(tiny_onnx):
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        ort_session(tiny_onnx[0], device="cuda:0", threads=1)


def test_export_falls_back_to_torchscript_and_logs(monkeypatch, caplog):
    real_export = torch.onnx.export

    def dynamo_broken(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    block = tiny_block().eval()
    x = random_inputs((1, 4, 8, 8), 1)[0]
    with caplog.at_level(logging.WARNING, logger="hwnas.onnx"):
        onnx_bytes = export_onnx_bytes(block, x)
    assert "simulated dynamo failure" in caplog.text and "TorchScript" in caplog.text
    session = ort_session(onnx_bytes, device="cpu", threads=1)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, block(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- profiler

FAST = dict(backend="torch", device="cpu", threads=1, warmup=1, iterations=3, dtype="fp32")
META = {"space": "toy", "resolution": 8, "batch": 1, "source": "test"}


class Builds:
    """Block factories that count their builds; ``fail`` names signatures whose build raises."""

    def __init__(self, fail=()):
        self.count: dict[str, int] = {}
        self.fail = set(fail)

    def spec(self, signature: str, channels: int) -> BlockSpec:
        def build():
            self.count[signature] = self.count.get(signature, 0) + 1
            if signature in self.fail:
                raise RuntimeError(f"simulated kill while building {signature}")
            return tiny_block(channels)

        return BlockSpec(signature, build, (1, channels, 8, 8))

    def specs(self):
        return [self.spec("c2", 2), self.spec("c3", 3), self.spec("c4", 4)]


def test_profile_blocks_resumes_after_a_kill(tmp_path):
    path = tmp_path / "dev" / "torch" / "toy-r8-b1-fp32.csv"
    first = Builds(fail={"c4"})
    with pytest.raises(RuntimeError, match="simulated kill"):
        profile_blocks(first.specs(), path, meta=META, **FAST)
    saved = LatencyTable.load(path)
    assert list(saved.df.index) == ["c2", "c3"]  # every finished block was saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy-r8-b1-fp32.csv", "toy-r8-b1-fp32.json"]

    second = Builds()
    seen = []
    table = profile_blocks(second.specs() + [second.spec("c2", 2)], path, meta=META,
                           progress=lambda i, n, sig: seen.append((i, n, sig)), **FAST)
    assert second.count == {"c4": 1}  # c2 and c3 were not re-measured
    assert seen == [(1, 1, "c4")]
    assert list(table.df.index) == ["c2", "c3", "c4"]
    reloaded = LatencyTable.load(path)
    assert list(reloaded.df.index) == ["c2", "c3", "c4"]
    assert (reloaded.df["count"] == 3).all()
    assert reloaded.df.loc["c2"].equals(saved.df.loc["c2"])  # the old row is untouched

    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["backend"] == "torch" and meta["provider"] == "torch-eager-cpu"
    assert meta["threads"] == 1 and meta["warmup"] == 1 and meta["iterations"] == 3
    assert meta["device"]["slug"] == device_slug("cpu", 1) and meta["source"] == "test"
    assert meta["space"] == "toy" and meta["resolution"] == 8 and meta["dtype"] == "fp32"

    third = Builds()
    profile_blocks(third.specs(), path, meta=META, only_missing=False, **FAST)
    assert third.count == {"c2": 1, "c3": 1, "c4": 1}

    with pytest.raises(LatencyTableError, match=r"mode 'eager' \(table\) != 'compile' \(now\)"):
        profile_blocks(third.specs(), path, meta=META, **{**FAST, "mode": "compile"})


def test_profile_blocks_in_rounds_saves_whole_chunks(tmp_path):
    path = tmp_path / "t.csv"
    builds = Builds(fail={"c4"})
    with pytest.raises(RuntimeError, match="simulated kill"):
        profile_blocks(builds.specs(), path, meta=META, rounds=2, chunk=2, min_round_s=0.0, **FAST)
    assert list(LatencyTable.load(path).df.index) == ["c2", "c3"]  # the first chunk landed whole
    seen = []
    table = profile_blocks(Builds().specs(), path, meta=META, rounds=2, chunk=2, min_round_s=0.0,
                           progress=lambda i, n, sig: seen.append((i, n, sig)), **FAST)
    assert seen == [(1, 1, "c4")] and table.df.loc["c4", "count"] == 4  # ceil(3/2) calls x 2 rounds
    assert json.loads(path.with_suffix(".json").read_text())["rounds"] == 2
    with pytest.raises(ValueError, match="rounds >= 1"):
        profile_blocks(Builds().specs(), tmp_path / "u.csv", meta=META, rounds=0, **FAST)


def test_profile_blocks_records_provider_and_mode(tmp_path):
    path = tmp_path / "t.csv"
    profile_blocks([Builds().spec("c2", 2)], path, meta=META, **{**FAST, "backend": "onnxruntime"})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["provider"] == "CPUExecutionProvider" and meta["mode"] is None
    with pytest.raises(ValueError, match="tensorrt does not run on --device cpu"):
        profile_blocks([Builds().spec("c2", 2)], tmp_path / "u.csv", meta=META,
                       **{**FAST, "backend": "onnxruntime", "provider": "tensorrt"})
    assert not (tmp_path / "u.csv").exists()  # refused before anything was written


def test_profile_blocks_dedupes_and_refuses_other_settings(tmp_path, capsys):
    builds = Builds()
    path = tmp_path / "t.csv"
    table = profile_blocks([builds.spec("c2", 2), builds.spec("c2", 2)], path, meta=META, **FAST)
    assert builds.count == {"c2": 1} and len(table) == 1
    assert capsys.readouterr() == ("", "")  # library code logs, never prints
    with pytest.raises(LatencyTableError, match=r"threads 1 \(table\) != 2 \(now\)"):
        profile_blocks(builds.specs(), path, meta=META, **{**FAST, "threads": 2})
    with pytest.raises(ValueError, match="two input shapes"):
        profile_blocks([builds.spec("x", 2), BlockSpec("x", tiny_block, (1, 4, 8, 8))], tmp_path / "u.csv",
                       meta=META, **FAST)


# --------------------------------------------------------------------------------------------- device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda():
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda:0")
    assert str(info.value) == (
        "--device cuda:0 requested but this machine has no CUDA device "
        "(torch.cuda.is_available() is False); use --device cpu"
    )
    assert isinstance(info.value, ValueError)
    assert resolve_device(None) == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")


def test_resolve_device_specs():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'gpu' is not a device"):
        resolve_device("gpu")


def test_device_slug(monkeypatch):
    slug = device_slug(torch.device("cpu"), threads=2)
    assert re.fullmatch(r"cpu-[a-z0-9]+(-[a-z0-9]+)*-2t", slug)
    assert device_info("cpu", 2)["slug"] == slug
    monkeypatch.setattr(device_mod, "cpu_model_name", lambda: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")
    assert device_slug(torch.device("cpu"), threads=2) == "cpu-intel-xeon-platinum-8375c-2t"
    monkeypatch.setattr(device_mod, "cpu_model_name", lambda: "AMD EPYC 7763 64-Core Processor / x86_64 (β)")
    assert device_slug("cpu", 16) == "cpu-amd-epyc-7763-64-core-x86-64-16t"


# --------------------------------------------------------------------------------------------- allocator


def _heap_range() -> tuple[int, int] | None:
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = line.split()[0].split("-")
            return int(lo, 16), int(hi, 16)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_heap_serves_big_buffers_from_the_heap():
    """glibc serves a 64 MiB malloc with mmap under its defaults (the dynamic threshold stops at 32 MiB);
    with the heap kept the same request comes from the brk heap, and freeing it keeps the memory."""
    import ctypes

    from hwnas.latency.measure import allocator

    if allocator._libc() is None:
        pytest.skip("no glibc here")
    assert allocator.keep_heap() == allocator.KEPT_HEAP
    assert allocator.keep_heap() == allocator.KEPT_HEAP and allocator.heap_regime() == allocator.KEPT_HEAP
    libc = allocator._libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    ptr = libc.malloc(64 << 20)
    try:
        heap = _heap_range()
        assert heap is not None and heap[0] <= ptr < heap[1], (hex(ptr), heap)
    finally:
        libc.free(ptr)
    assert allocator.DEPLOY_ENV["MALLOC_MMAP_THRESHOLD_"] == str(1 << 30)


def test_torch_cpu_tables_record_the_heap_and_refuse_to_mix(tmp_path):
    from hwnas.latency.measure.allocator import heap_regime

    path = tmp_path / "t.csv"
    profile_blocks([Builds().spec("c2", 2)], path, meta=META, **FAST)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    assert meta["allocator"] == heap_regime()
    del meta["allocator"]  # a table profiled before the heap was kept
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(LatencyTableError, match=r"allocator None \(table\) != '.+' \(now\)"):
        profile_blocks(Builds().specs(), path, meta=META, **FAST)
    ort_path = tmp_path / "o.csv"
    profile_blocks([Builds().spec("c2", 2)], ort_path, meta=META, **{**FAST, "backend": "onnxruntime"})
    assert "allocator" not in json.loads(ort_path.with_suffix(".json").read_text())  # ORT has its own arena
