"""Timing done right: warm-up, rotating random inputs, per-call clocks, sync inside the timed region.

``sample_callable`` is the one timing loop (``time_callable`` summarizes it); a ``Runner`` prepares an
``nn.Module`` once on a backend and times it with that loop, in one burst (``measure_module``) or in
interleaved rounds beside others (``measure_interleaved``):

- ``"torch"``: eager, ``eval()`` + ``torch.inference_mode()``, ``torch.set_num_threads(threads)`` on CPU
  (restored afterwards) with glibc's heap kept (``hwnas.latency.measure.allocator.keep_heap``),
  ``torch.cuda.synchronize()`` inside the timed region on CUDA, run as ``mode`` (``"eager"``,
  ``"compile"``, ``"cudagraph"``; ``hwnas.latency.measure.runtimes``).
- ``"onnxruntime"``: the module is exported to ONNX in memory and run by an ``InferenceSession`` on the
  execution ``provider`` ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (``hwnas.onnx``: ``export_onnx_bytes``,
  ``ort_session``).

``runtime(backend, device, mode, provider)`` (``hwnas.latency.measure.runtimes``) checks a combination and
fills in the defaults.

Every result is ``summarize(samples_ms)``: count, mean, std, p10, p50, p90 in milliseconds.
Inputs are random normal tensors (``random_inputs``), never zeros.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hwnas.latency.measure.allocator import keep_heap
from hwnas.latency.measure.runtimes import _torch_runner, runtime
from hwnas.onnx import _ORT_ELEMENT_TYPES, _ort_timing_fn, export_onnx_bytes, ort_session

__all__ = [
    "DTYPES",
    "summarize",
    "time_callable",
    "random_inputs",
    "torch_dtype",
    "measure_module",
    "Runner",
    "CallRunner",
    "measure_interleaved",
    "sample_callable",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


# --------------------------------------------------------------------------------------------- statistics


def summarize(samples_ms: Sequence[float]) -> dict:
    """``{"count", "mean", "std", "p10", "p50", "p90"}`` of samples in ms.

    Percentiles interpolate linearly between order statistics (numpy's default); ``std`` is the sample
    standard deviation (ddof=1), 0.0 for a single sample.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"summarize needs a non-empty 1-d sequence of samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("summarize: samples contain NaN or inf")
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
    }


def time_callable(
    fn: Callable[[Any], Any],
    inputs: list,
    *,
    warmup: int,
    iterations: int,
    sync: Callable[[], Any] | None = None,
) -> dict:
    """Time ``fn(inputs[i % len(inputs)])`` and return ``summarize`` of the per-call times in ms
    (``sample_callable``'s samples)."""
    return summarize(sample_callable(fn, inputs, warmup=warmup, iterations=iterations, sync=sync))


def sample_callable(
    fn: Callable[[Any], Any],
    inputs: list,
    *,
    warmup: int,
    iterations: int,
    sync: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Per-call times in ms of ``fn(inputs[i % len(inputs)])``.

    ``warmup`` untimed calls run first, then ``iterations`` timed calls; both loops start at input 0 and
    rotate through ``inputs`` (so with ``iterations`` a multiple of ``len(inputs)`` every input is timed
    equally often). Each timed call is bracketed by ``perf_counter_ns``; ``sync()`` (for example
    ``torch.cuda.synchronize``) runs inside the bracket, and once after the warm-up. The garbage
    collector is paused while timing.
    """
    if not inputs:
        raise ValueError("time_callable needs at least one input")
    if warmup < 0 or iterations < 1:
        raise ValueError(f"time_callable needs warmup >= 0 and iterations >= 1, got {warmup} and {iterations}")
    n = len(inputs)
    for i in range(warmup):
        fn(inputs[i % n])
    if sync is not None:
        sync()
    samples = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(iterations):
            x = inputs[i % n]
            t0 = clock()
            fn(x)
            if sync is not None:
                sync()
            samples[i] = clock() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples / 1e6


# --------------------------------------------------------------------------------------------- inputs


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"|"fp16"|"bf16"`` (or a torch dtype, or an alias like ``"float16"``) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def random_inputs(
    shape: Sequence[int],
    n: int,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[torch.Tensor]:
    """``n`` independent standard-normal tensors of ``shape`` (drawn in fp32 on the CPU, then cast and moved)."""
    if n < 1:
        raise ValueError(f"random_inputs needs n >= 1, got {n}")
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(n):
        x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
        out.append(x.to(device=device, dtype=torch_dtype(dtype)))
    return out


class Runner:
    """A module made ready once for timing on a backend; ``samples(iterations, warmup)`` times it.

    Preparing (copy, cast, ONNX export and session, ``torch.compile``, CUDA-graph capture) happens in the
    constructor and on the first call, so a caller can time many prepared modules in interleaved rounds:
    a short slow spell of the machine (another tenant, a frequency change) then hits one round of each
    module rather than every call of one module (see ``measure_interleaved``).
    """

    def __init__(self, module: torch.nn.Module, input_shape: Sequence[int], *, backend: str,
                 device: str | torch.device = "cpu", threads: int, dtype: str | torch.dtype = "fp32",
                 n_inputs: int = 4, seed: int = 0, mode: str | None = None, provider: str | None = None):
        self.mode, self.provider = runtime(backend, device, mode, provider)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        tdtype = torch_dtype(dtype)
        if backend == "onnxruntime" and tdtype not in _ORT_ELEMENT_TYPES:
            raise ValueError(f"backend onnxruntime supports fp32 and fp16, not {dtype}; use --backend torch for bf16")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.backend, self.device, self.threads, self._warm = backend, device, int(threads), False
        if backend == "torch" and device.type == "cpu":
            keep_heap()  # see hwnas.latency.measure.allocator: torch eager's per-call mmaps otherwise dominate
        module = copy.deepcopy(module).eval().to(device=device, dtype=tdtype)
        inputs = random_inputs(input_shape, n_inputs, dtype=tdtype, device=device, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # inputs and weights are in place before anything runs
        if backend == "onnxruntime":
            onnx_bytes = export_onnx_bytes(module, inputs[0])
            del module
            session = ort_session(onnx_bytes, device=device, threads=threads, provider=self.provider,
                                  fp16=tdtype == torch.float16)
            self._fn, self._inputs, self._sync = _ort_timing_fn(session, inputs, device)
            self._session = session
        else:
            self._module, self._inputs = module, inputs
            self._sync = torch.cuda.synchronize if device.type == "cuda" else None
            self._fn = None  # built on the first call, inside inference_mode and the thread setting

    def samples(self, iterations: int, warmup: int = 0) -> np.ndarray:
        """``iterations`` per-call times in ms after ``warmup`` untimed calls (at least 3 on the first
        call of a compiled module, which compiles it)."""
        if self.backend == "onnxruntime":
            return sample_callable(self._fn, self._inputs, warmup=warmup, iterations=iterations, sync=self._sync)
        saved_threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                if self._fn is None:
                    self._fn = _torch_runner(self._module, self._inputs[0], self.mode)
                if not self._warm and self.mode == "compile":
                    warmup = max(warmup, 3)
                self._warm = True
                return sample_callable(self._fn, self._inputs, warmup=warmup, iterations=iterations, sync=self._sync)
        finally:
            torch.set_num_threads(saved_threads)


class CallRunner:
    """A ``Runner`` for something already prepared: ``fn`` called on ``inputs`` (rotated), ``sync``
    inside the timed region -- so a single session can be timed in rounds by ``measure_interleaved``."""

    def __init__(self, fn: Callable[[Any], Any], inputs: list, sync: Callable[[], Any] | None = None):
        self.fn, self.inputs, self.sync = fn, inputs, sync

    def samples(self, iterations: int, warmup: int = 0) -> np.ndarray:
        return sample_callable(self.fn, self.inputs, warmup=warmup, iterations=iterations, sync=self.sync)


def measure_interleaved(runners: Sequence[Runner | CallRunner], *, warmup: int, iterations: int, rounds: int,
                        min_round_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """``summarize`` stats per runner of ``iterations`` timed calls (at least), taken in ``rounds``
    interleaved rounds: each round times every runner for ``ceil(iterations / rounds)`` calls after
    untimed ones (``warmup`` in the first round, ``min(warmup, 3)`` later, to re-warm the caches the
    other runners used). A round shorter than ``min_round_s`` is followed by a pause to fill it, so the
    rounds are spread in time. The samples of all rounds are pooled: the median then ignores a slow
    spell of the machine that hits fewer than half of the rounds, where one burst of calls would take
    it whole. Round ``r`` starts at runner ``r * n // rounds`` and wraps around, so a runner's place in
    the round (after which other runners, how far into the round) changes from round to round.
    ``progress(done, total)`` counts runner-rounds."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_round = -(-int(iterations) // rounds)
    pooled: list[list[np.ndarray]] = [[] for _ in runners]
    total, done = rounds * len(runners), 0
    n = len(runners)
    for r in range(rounds):
        started = time.perf_counter()
        shift = r * n // rounds  # each runner at another point of each round: no runner always first or last
        for i in [*range(shift, n), *range(shift)]:
            pooled[i].append(runners[i].samples(per_round, warmup if r == 0 else min(warmup, 3)))
            done += 1
            if progress is not None:
                progress(done, total)
        spare = min_round_s - (time.perf_counter() - started)
        if spare > 0 and r + 1 < rounds:
            time.sleep(spare)
    return [summarize(np.concatenate(p)) for p in pooled]


def measure_module(
    module: torch.nn.Module,
    input_shape: Sequence[int],
    *,
    backend: str,
    device: str | torch.device = "cpu",
    threads: int,
    warmup: int = 10,
    iterations: int = 50,
    dtype: str | torch.dtype = "fp32",
    n_inputs: int = 4,
    seed: int = 0,
    mode: str | None = None,
    provider: str | None = None,
) -> dict:
    """Latency of ``module`` on one input of ``input_shape`` (batch included) as ``summarize`` stats in ms.

    The caller's module is not modified (a copy is cast and moved). ``backend`` is ``"torch"`` (run as
    ``mode``) or ``"onnxruntime"`` (fp32/fp16 only, on ``provider``); see ``runtime``. ``threads`` is the
    CPU thread count (torch intra-op threads, ORT intra-op threads).
    """
    runner = Runner(module, input_shape, backend=backend, device=device, threads=threads, dtype=dtype,
                    n_inputs=n_inputs, seed=seed, mode=mode, provider=provider)
    return summarize(runner.samples(iterations, warmup))
