"""ONNX export and ONNX Runtime sessions set up for latency measurement.

``export_onnx_bytes`` exports a module to ONNX in memory (the dynamo exporter, falling back to the
TorchScript one only if it raises, with the exporters' narration kept at DEBUG); ``ort_session`` opens an
``InferenceSession`` (ORT_ENABLE_ALL, ``threads`` intra-op threads, one inter-op thread, sequential, no
spinning) on the execution provider ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (``PROVIDERS``); on CUDA the
inputs are bound on the device with IO binding (``_ort_timing_fn``), so host copies are not timed.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["PROVIDERS", "check_provider", "export_onnx_bytes", "ort_provider", "ort_session"]

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}

# Loggers of the exporter stack that narrate every pass at INFO/DEBUG.
_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


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


def check_provider(device: str | torch.device, provider: str | None = None) -> str:
    """``provider`` (a key of ``PROVIDERS``; default ``"cuda"`` on a CUDA device, else ``"cpu"``), refused
    when unknown or when it does not run on ``device`` (``"cuda"``/``"tensorrt"`` need a CUDA device,
    ``"cpu"`` a CPU one)."""
    device = torch.device(device)
    provider = provider or ("cuda" if device.type == "cuda" else "cpu")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown onnxruntime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if (provider == "cpu") != (device.type == "cpu"):
        raise ValueError(f"--provider {provider} does not run on --device {device}: "
                         + ("use --device cuda:N" if provider != "cpu" else "use --device cpu"))
    return provider


def ort_provider(device: str | torch.device, provider: str | None = None) -> str:
    """The ONNX Runtime execution provider's full name for ``provider`` (default: the device's own)."""
    return PROVIDERS[check_provider(device, provider)]


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
