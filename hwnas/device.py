"""Which device to run on, and how to name it.

``resolve_device`` turns a ``--device`` string into a ``torch.device`` (or a one-line ``DeviceError``);
``device_slug`` names the hardware a latency table belongs to (the directory under ``latency_tables/``);
``device_info`` is the provenance recorded in a table's sidecar.

A CPU slug includes the thread count (``cpu-intel-xeon-platinum-8375c-2t``): latency on a CPU depends on it
as much as on the model. A GPU slug is the device name (``nvidia-h100-80gb-hbm3``).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess

import torch

__all__ = ["DeviceError", "resolve_device", "device_slug", "device_info", "cpu_model_name"]

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(ValueError):
    """A requested device does not exist on this machine (one-line message)."""


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda:0`` when CUDA is available, else ``cpu``; ``"cpu"``; ``"cuda"``/``"cuda:N"``.

    Raises ``DeviceError`` for an unknown spec, for CUDA on a machine without it, or for N out of range.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text in ("cpu", "cpu:0"):
        return torch.device("cpu")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise DeviceError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {text} requested but this machine has no CUDA device "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"--device {text} requested but this machine has {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1}); use --device cuda:0"
        )
    return torch.device("cuda", index)


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's marketing name: /proc/cpuinfo "model name", else platform.processor(), else the machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _slugify(text: str) -> str:
    text = text.lower()
    text = re.sub(r"\((r|tm|c)\)", " ", text)  # Intel(R) Xeon(R) -> intel xeon
    text = re.sub(r"@.*$", " ", text)  # "@ 2.90GHz": the clock is not part of the model
    text = re.sub(r"\b(cpu|processor)\b", " ", text)
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug or "unknown"


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def device_slug(device: torch.device | str, threads: int | None = None) -> str:
    """Filesystem-safe name of the hardware (``[a-z0-9-]+``).

    CPU: ``cpu-<model>-<threads>t`` (threads default to ``torch.get_num_threads()``);
    CUDA: the device name, e.g. ``nvidia-h100-80gb-hbm3``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _slugify(torch.cuda.get_device_name(_cuda_index(device)))
    if device.type != "cpu":
        return _slugify(device.type)
    threads = torch.get_num_threads() if threads is None else int(threads)
    return f"cpu-{_slugify(cpu_model_name())}-{threads}t"


@functools.lru_cache(maxsize=1)
def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def device_info(device: torch.device | str, threads: int | None = None) -> dict:
    """Provenance of a device as a JSON-able dict: name, slug and what the numbers depend on."""
    device = torch.device(device)
    info: dict = {"type": device.type, "slug": device_slug(device, threads)}
    if device.type == "cuda":
        index = _cuda_index(device)
        props = torch.cuda.get_device_properties(index)
        info.update(
            name=torch.cuda.get_device_name(index),
            index=index,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda_version=torch.version.cuda,
            driver=_nvidia_driver(),
        )
    else:
        try:
            usable = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = os.cpu_count()
        info.update(
            name=cpu_model_name(),
            cpu_count=os.cpu_count(),
            usable_cpus=usable,
            threads=torch.get_num_threads() if threads is None else int(threads),
        )
    info.update(machine=platform.machine(), platform=platform.platform())
    return info
