"""Timing done right: warm-up, rotating random inputs, per-call clocks, sync inside the timed region.

``sample_callable`` is the one timing loop (``time_callable`` summarizes it); a ``Runner`` prepares an
``nn.Module`` once on a backend and times it with that loop, in one burst (``measure_module``) or in
interleaved rounds beside others (``measure_interleaved``):

- ``"torch"``: eager, ``eval()`` + ``torch.inference_mode()``, ``torch.set_num_threads(threads)`` on CPU
  (restored afterwards) with glibc's heap kept (``hwnas.latency.allocator.keep_heap``),
  ``torch.cuda.synchronize()`` inside the timed region on CUDA.
  ``mode`` picks how torch runs it: ``"eager"``; ``"compile"`` (``torch.compile``, compiled during the
  warm-up); ``"cudagraph"`` (CUDA only: the forward captured once in a CUDA graph on a static input,
  each timed call copies the input in and replays the graph).
- ``"onnxruntime"``: the module is exported to ONNX in memory (``export_onnx_bytes``: the dynamo exporter,
  falling back to the TorchScript one only if it raises) and run by an ``InferenceSession``
  (``ort_session``: ORT_ENABLE_ALL, ``threads`` intra-op threads, one inter-op thread, sequential,
  no spinning) on the execution ``provider`` ``"cpu"``, ``"cuda"`` or ``"tensorrt"``. On CUDA the inputs are
  bound on the device with IO binding, so host copies are not timed.

``runtime(backend, device, mode, provider)`` checks a combination and fills in the defaults;
``runtime_label`` names it in table paths (``torch``, ``torch-compile``, ``onnxruntime-tensorrt``...).

Every result is ``summarize(samples_ms)``: count, mean, std, p10, p50, p90 in milliseconds.
Inputs are random normal tensors (``random_inputs``), never zeros.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.latency.allocator import keep_heap

__all__ = [
    "BACKENDS",
    "MODES",
    "PROVIDERS",
    "DTYPES",
    "runtime",
    "runtime_label",
    "summarize",
    "time_callable",
    "random_inputs",
    "torch_dtype",
    "export_onnx_bytes",
    "ort_session",
    "ort_provider",
    "measure_module",
    "Runner",
    "CallRunner",
    "measure_interleaved",
    "sample_callable",
]

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch")
MODES = ("eager", "compile", "cudagraph")  # torch only
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

# Loggers of the exporter stack that narrate every pass at INFO/DEBUG.
_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


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


# --------------------------------------------------------------------------------------------- ONNX


@contextlib.contextmanager
def _quiet_exporter():
    """Swallow the exporter's stdout narration, warnings and INFO logs (kept at DEBUG); exceptions pass."""
    stdout = io.StringIO()
    caught: list = []
    saved_levels = {}
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        saved_levels[name] = logger.level
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
            warnings.simplefilter("always")
            yield
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if log.isEnabledFor(logging.DEBUG):
            text = stdout.getvalue().strip()
            if text:
                log.debug("onnx exporter output:\n%s", text)
            for w in caught:
                log.debug("onnx exporter warning: %s: %s", w.category.__name__, w.message)


def _export_has_dynamo_flag() -> bool:
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def export_onnx_bytes(module: torch.nn.Module, example_input: torch.Tensor, *, opset: int | None = None) -> bytes:
    """Export ``module`` (put in eval mode) on ``example_input`` to a serialized ONNX ModelProto.

    Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9); if it
    raises (or on a torch without it), logs a warning and retries with the TorchScript exporter. If both
    fail, raises a RuntimeError naming both errors.
    """
    module.eval()
    args = (example_input,)
    try:
        with _quiet_exporter(), torch.no_grad():
            kwargs = {"dynamo": True, "verbose": False}
            if opset is not None:
                kwargs["opset_version"] = opset
            program = torch.onnx.export(module, args, **kwargs)
        return program.model_proto.SerializeToString()
    except Exception as dynamo_error:  # noqa: BLE001 - any exporter failure triggers the fallback
        log.warning(
            "dynamo ONNX exporter failed for %s (%s); falling back to the TorchScript exporter",
            type(module).__name__, _first_line(dynamo_error),
        )
        buffer = io.BytesIO()
        try:
            with _quiet_exporter(), torch.no_grad():
                legacy = {"dynamo": False} if _export_has_dynamo_flag() else {}
                torch.onnx.export(
                    module, args, buffer, verbose=False, **legacy,
                    opset_version=opset or 17, input_names=["input"], output_names=["output"],
                    do_constant_folding=True,
                )
        except Exception as fallback_error:
            raise RuntimeError(
                f"ONNX export of {type(module).__name__} failed with both exporters: "
                f"dynamo: {_first_line(dynamo_error)}; TorchScript: {_first_line(fallback_error)}"
            ) from fallback_error
        return buffer.getvalue()


def runtime(backend: str, device: str | torch.device, mode: str | None = None,
            provider: str | None = None) -> tuple[str | None, str | None]:
    """``(mode, provider)`` for a backend on a device, defaults filled in, impossible pairs refused.

    torch: ``mode`` in ``MODES`` (default ``"eager"``; ``"cudagraph"`` needs a CUDA device), no provider.
    onnxruntime: ``provider`` in ``PROVIDERS`` (default ``"cuda"`` on a CUDA device, else ``"cpu"``;
    ``"cuda"``/``"tensorrt"`` need a CUDA device, ``"cpu"`` a CPU one), no mode.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if provider is not None:
            raise ValueError(f"--provider {provider} is for --backend onnxruntime; torch runs on the device itself")
        mode = mode or "eager"
        if mode not in MODES:
            raise ValueError(f"unknown torch mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "cudagraph" and device.type != "cuda":
            raise ValueError("--mode cudagraph needs a CUDA device (CUDA graphs do not exist on the CPU)")
        return mode, None
    if mode not in (None, "eager"):
        raise ValueError(f"--mode {mode} is for --backend torch; ONNX Runtime has providers (--provider)")
    provider = provider or ("cuda" if device.type == "cuda" else "cpu")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown onnxruntime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if (provider == "cpu") != (device.type == "cpu"):
        raise ValueError(f"--provider {provider} does not run on --device {device}: "
                         + ("use --device cuda:N" if provider != "cpu" else "use --device cpu"))
    return None, provider


def runtime_label(backend: str, mode: str | None = None, provider: str | None = None) -> str:
    """The runtime's name in table paths: ``torch``, ``torch-compile``, ``torch-cudagraph``,
    ``onnxruntime`` (the device's own provider: CPU or CUDA), ``onnxruntime-tensorrt``."""
    if backend == "torch":
        return "torch" if mode in (None, "eager") else f"torch-{mode}"
    return "onnxruntime-tensorrt" if provider == "tensorrt" else "onnxruntime"


def ort_provider(device: str | torch.device, provider: str | None = None) -> str:
    """The ONNX Runtime execution provider's full name for ``provider`` (default: the device's own)."""
    _, key = runtime("onnxruntime", device, provider=provider)
    return PROVIDERS[key]


def ort_session(onnx_bytes_or_path: bytes | str | Path, *, device: str | torch.device = "cpu", threads: int = 1,
                provider: str | None = None, fp16: bool = False):
    """An ``onnxruntime.InferenceSession`` set up for latency measurement.

    ORT_ENABLE_ALL, ``intra_op_num_threads=threads``, one inter-op thread, sequential execution, and
    spinning off (``session.intra_op.allow_spinning = "0"``: spinning workers otherwise keep burning CPU
    after a run and slow whatever runs next). On a CUDA device the requested provider (CUDA, or TensorRT
    with CUDA behind it for the nodes TensorRT does not take) must really be used: ORT silently falls back
    to the CPU when its CUDA libraries fail to load, and that is an error here.
    """
    import onnxruntime as ort

    device = torch.device(device)
    if threads < 1:
        raise ValueError(f"ort_session needs threads >= 1, got {threads}")
    provider = ort_provider(device, provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; ORT warns about every Cast/fallback otherwise

    if provider != "CPUExecutionProvider":
        if provider not in ort.get_available_providers():
            raise RuntimeError(
                f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu"
                f"{' and TensorRT' if 'Tensorrt' in provider else ''}); "
                f"available: {', '.join(ort.get_available_providers())}"
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        if provider == "TensorrtExecutionProvider":
            providers.insert(0, ("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": bool(fp16)}))
    else:
        providers = ["CPUExecutionProvider"]

    model = onnx_bytes_or_path if isinstance(onnx_bytes_or_path, bytes) else str(onnx_bytes_or_path)
    session = ort.InferenceSession(model, options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(
            f"onnxruntime could not start {provider} (it fell back to {session.get_providers()[0]}); "
            "check the CUDA/cuDNN libraries onnxruntime-gpu needs"
        )
    return session


_ORT_ELEMENT_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def _ort_timing_fn(session, inputs: list[torch.Tensor], device: torch.device):
    """(fn, prepared inputs, sync) that run ``session`` on each input without timing host copies on CUDA."""
    (input_meta,) = session.get_inputs()
    if device.type != "cuda":
        arrays = [x.detach().cpu().numpy() for x in inputs]
        output_names = [o.name for o in session.get_outputs()]
        return (lambda a: session.run(output_names, {input_meta.name: a})), arrays, None

    bindings = []
    for x in inputs:
        x = x.contiguous()
        binding = session.io_binding()
        binding.bind_input(
            input_meta.name, "cuda", device.index, _ORT_ELEMENT_TYPES[x.dtype], tuple(x.shape), x.data_ptr()
        )
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", device.index)
        bindings.append((binding, x))  # keep x alive: ORT holds a raw pointer to it
    return (lambda b: session.run_with_iobinding(b[0])), bindings, torch.cuda.synchronize


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
            keep_heap()  # see hwnas.latency.allocator: torch eager's per-call mmaps otherwise dominate
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


def _torch_runner(module: torch.nn.Module, example: torch.Tensor, mode: str) -> Callable[[torch.Tensor], Any]:
    """What one timed call runs for a torch ``mode`` (called under ``inference_mode``)."""
    if mode == "eager":
        return module
    if mode == "compile":
        return torch.compile(module, dynamic=False)  # compiled by the first warm-up call
    # cudagraph: warm up on a side stream (lazy init, cuDNN autotuning), capture once, replay per call.
    static = example.clone()
    stream = torch.cuda.Stream(device=example.device)
    stream.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(static)
    torch.cuda.current_stream(example.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(static)

    def replay(x: torch.Tensor) -> None:
        static.copy_(x)
        graph.replay()

    return replay
