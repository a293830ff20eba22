"""Which runtime times a network: a backend (``BACKENDS``: torch or ONNX Runtime) and, for torch, a
``mode`` (``MODES``), for ONNX Runtime an execution ``provider`` (``hwnas.onnx.PROVIDERS``).

``runtime(backend, device, mode, provider)`` checks a combination and fills in the defaults;
``runtime_label`` names it in table paths (``torch``, ``torch-compile``, ``onnxruntime-tensorrt``...).
``_torch_runner`` is what one timed call of a torch ``mode`` runs: the module itself (``"eager"``),
``torch.compile`` of it (``"compile"``, compiled during the warm-up), or (``"cudagraph"``, CUDA only) the
forward captured once in a CUDA graph on a static input, each timed call copying the input in and
replaying the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hwnas.onnx import check_provider

__all__ = ["BACKENDS", "MODES", "runtime", "runtime_label"]

BACKENDS = ("onnxruntime", "torch")
MODES = ("eager", "compile", "cudagraph")  # torch only


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
    return None, check_provider(device, provider)


def runtime_label(backend: str, mode: str | None = None, provider: str | None = None) -> str:
    """The runtime's name in table paths: ``torch``, ``torch-compile``, ``torch-cudagraph``,
    ``onnxruntime`` (the device's own provider: CPU or CUDA), ``onnxruntime-tensorrt``."""
    if backend == "torch":
        return "torch" if mode in (None, "eager") else f"torch-{mode}"
    return "onnxruntime-tensorrt" if provider == "tensorrt" else "onnxruntime"


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
