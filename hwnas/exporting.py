"""Arch -> child nn.Module -> ONNX -> checks -> measured latency beside the table's prediction.

The exported ONNX model needs nothing from hwnas: it is the plain child network (hwnas.spaces.builder)
exported by torch's ONNX exporter, checked by ``onnx.checker`` and compared with torch through ONNX
Runtime on random inputs (``check_agreement``: within 1e-4 relative of torch, or, for a network whose own
float32 round-off is larger than that, no further from torch's float64 output than twice torch's float32 is).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hwnas.latency.measure.timing import CallRunner, Runner, measure_interleaved, random_inputs
from hwnas.latency.reference import machine_factor, reference_networks, unusable
from hwnas.onnx import export_onnx_bytes, ort_session
from hwnas.spaces import Arch, ArchError
from hwnas.spaces.builder import build_child, count_params
from hwnas.spaces.presets import PRESETS
from hwnas.spaces.cell_presets import CELL_PRESETS
from hwnas.spaces.dense_presets import DENSE_PRESETS, arch_from_net_config

log = logging.getLogger("hwnas.export")

RTOL = 1e-4


class ExportError(RuntimeError):
    """The exported model failed a check; the message says which and by how much."""


def check_agreement(want, got, reference=None) -> tuple[float, float, str | None]:
    """Whether ONNX Runtime's outputs ``got`` agree with torch's float32 outputs ``want`` (lists of arrays,
    one per input); returns ``(max_abs, relative, note)`` or raises ``ExportError``.

    Agreement is ``max|got - want| <= RTOL * max|want|``. A deep network can round off more than that in
    float32 on its own: a DenseNAS child of 30 MBConv layers searched one epoch differs from its float64 self by
    1.3e-3 relative in torch, and ORT, accumulating in another order, differed from torch by 1.7e-3. So where
    the first test fails, ``reference`` (a callable giving torch's float64 outputs, computed only then) decides:
    ORT agrees if it is no further from float64 than ``max(RTOL, 2 x torch's own float32 error)``; the note says
    so. A wrong export (an op, a padding, a weight) is off by far more than round-off and is still refused."""
    max_abs = _max_abs_diff(got, want)
    rel = max_abs / _scale(want)
    if rel <= RTOL:
        return max_abs, rel, None
    msg = f"ONNX Runtime and torch disagree: max abs diff {max_abs:.3g} ({rel:.3g} relative > {RTOL:g})"
    if reference is None:
        raise ExportError(msg)
    exact = reference()
    torch_err, ort_err = _max_abs_diff(want, exact) / _scale(exact), _max_abs_diff(got, exact) / _scale(exact)
    bound = max(RTOL, 2.0 * torch_err)
    if ort_err > bound:
        raise ExportError(f"{msg}, and ORT is {ort_err:.3g} from torch's float64 output where torch's float32 "
                          f"is {torch_err:.3g} (allowed {bound:.3g})")
    return max_abs, rel, (f"ORT vs torch {rel:.2e} relative is float32 round-off: against torch in float64 ORT is "
                          f"{ort_err:.2e} off and torch's own float32 {torch_err:.2e}")


def _max_abs_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _scale(outputs) -> float:
    return max(max(float(np.abs(o).max()) for o in outputs), 1e-12)


@dataclass
class ArchSource:
    """An Arch and where it came from (a run directory's weights travel with it)."""

    arch: Arch
    origin: str
    run_dir: Path | None = None
    weights: Path | None = None


def resolve_arch(spec: str) -> ArchSource:
    """A run directory, an arch.json file, or a preset name -> ArchSource."""
    path = Path(spec)
    if path.is_dir():
        arch_file = path / "arch.json"
        if not arch_file.exists():
            raise ArchError(f"run directory {path} has no arch.json (is the search finished? resume it with "
                            f"`hwnas search --resume {path}`)")
        weights = next((path / w for w in ("trained.pt", "child.pt") if (path / w).exists()), None)
        return ArchSource(Arch.load(arch_file), str(path), path, weights)
    text = path.read_text(errors="replace") if path.is_file() and path.suffix != ".json" else ""
    if text.lstrip().startswith("[["):
        # a DenseNAS net_config file as the released code writes it (hwnas.spaces.dense_presets)
        return ArchSource(Arch.from_dict(arch_from_net_config(text), str(path)), str(path))
    if path.suffix == ".json" or path.exists():
        return ArchSource(Arch.load(path), str(path))
    presets = {**PRESETS, **CELL_PRESETS, **DENSE_PRESETS}
    if spec in presets:
        return ArchSource(Arch.from_dict(presets[spec], f"preset {spec}"), f"preset {spec}")
    raise ArchError(f"--arch {spec!r} is not a run directory, an arch.json file, a DenseNAS net_config or a preset "
                    f"(presets: {', '.join(presets)})")


@dataclass
class ExportReport:
    onnx_path: str
    params: int
    input_shape: tuple[int, ...]
    max_abs_diff: float
    rel_diff: float
    weights: str | None
    measured_ms: dict | None = None
    predicted_ms: float | None = None
    table: str | None = None
    statistic: str | None = None  # the table's: the one the prediction is of
    notes: list[str] = field(default_factory=list)
    machine_factor: float | None = None  # reference networks now / at the table's validation (median)
    reference_ratios: list[float] | None = None
    compensated_ms: float | None = None  # measured (table's statistic) / machine_factor

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _references(table, threads: int, batch: int, resolution: int, report: ExportReport) -> list:
    """``(runner, latency at validation)`` of the table's reference networks at the table's deploy shape,
    or ``[]`` with a note saying why the model is measured alone."""
    why = unusable(table, backend="onnxruntime", provider="CPUExecutionProvider", threads=threads, batch=batch,
                   resolution=resolution)
    if not why:
        shape = (int(table.meta.get("batch", 1)), 3, int(table.meta["resolution"]), int(table.meta["resolution"]))
        try:
            return [(Runner(net, shape, backend="onnxruntime", device="cpu", threads=threads, provider="cpu"), ms)
                    for net, ms in reference_networks(table)]
        except (ValueError, RuntimeError, KeyError) as e:  # a stale or malformed reference must not cost the export
            why = f"the table's reference networks could not be rebuilt ({str(e).splitlines()[0]})"
    report.notes.append(f"measured alone, no drift compensation: {why}")
    log.warning("export: %s", report.notes[-1])
    return []


def build_for_export(src: ArchSource) -> torch.nn.Module:
    model = build_child(src.arch)
    if src.weights is not None:
        state = torch.load(src.weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(f"weights {src.weights} do not fit {src.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def export(src: ArchSource, onnx_path: str | os.PathLike, *, batch: int = 1, threads: int = 1,
           measure: bool = True, table=None, warmup: int = 10, iterations: int = 50,
           rounds: int = 5, references: bool = True) -> ExportReport:
    """Export ``src`` to ``onnx_path`` at its deploy shape, check it, and measure it with ORT (CPU).

    With a ``table`` whose calibration carries reference networks (``hwnas.latency.reference``) and was
    validated on ONNX Runtime's CPU provider at the same threads and batch, the model is timed in the same
    rounds as those networks rebuilt, and ``compensated_ms`` is its measured latency (the table's
    statistic) divided by the machine's drift since the validation (``machine_factor``): the figure to
    hold against the prediction. ``references=False`` measures the model alone."""
    import onnx

    model = build_for_export(src)
    res = src.arch.config["resolution"]
    shape = (batch, 3, res, res)
    inputs = random_inputs(shape, 3, seed=1)
    data = export_onnx_bytes(model, inputs[0])
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(f".{onnx_path.name}.tmp")
    tmp.write_bytes(data)
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:  # noqa: BLE001 - report the checker's complaint on one line
        tmp.unlink()
        raise ExportError(f"onnx.checker rejected the exported model: {str(e).splitlines()[0]}") from None
    session = ort_session(data, device="cpu", threads=threads)
    name = session.get_inputs()[0].name
    with torch.no_grad():
        want = [model(x).numpy() for x in inputs]
    got = [session.run(None, {name: x.numpy()})[0] for x in inputs]

    def in_float64():
        exact = copy.deepcopy(model).double()
        with torch.no_grad():
            return [exact(x.double()).numpy() for x in inputs]

    try:
        max_abs, rel, note = check_agreement(want, got, in_float64)
    except ExportError:
        tmp.unlink()
        raise
    os.replace(tmp, onnx_path)
    report = ExportReport(str(onnx_path), count_params(model), shape, max_abs, rel,
                          str(src.weights) if src.weights else None)
    if note:  # the CLI prints the report's notes
        report.notes.append(note)
    if measure:
        arrays = [x.numpy() for x in inputs]
        # in rounds of >= 1 s, like the table's rows: a slow spell of the machine cannot take the whole figure
        runners = [CallRunner(lambda a: session.run(None, {name: a}), arrays)]
        refs = _references(table, threads, batch, res, report) if table is not None and references else []
        runners += [runner for runner, _ in refs]
        measured = measure_interleaved(runners, warmup=warmup, iterations=iterations, rounds=rounds,
                                       min_round_s=1.0 if rounds > 1 else 0.0)
        report.measured_ms = measured[0]
        if refs:
            stat = getattr(table, "statistic", "p50")
            now, then = [m[stat] for m in measured[1:]], [ms for _, ms in refs]
            report.reference_ratios = [n / t for n, t in zip(now, then, strict=True)]
            report.machine_factor = machine_factor(now, then)
            report.compensated_ms = report.measured_ms[stat] / report.machine_factor
    if table is not None:
        from hwnas.latency.predictor import LatencyModel

        report.predicted_ms = LatencyModel(table, src.arch.space_obj, src.arch.config).of_tokens(src.arch.layers)
        report.table = table.name if getattr(table, "path", None) else None
        report.statistic = getattr(table, "statistic", None)
    if src.run_dir is not None:
        from hwnas.spaces import atomic_write_text

        atomic_write_text(src.run_dir / "export.json", json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return report
