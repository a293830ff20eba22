"""Methods side by side: the same space, data, seed, search budget and latency target for every method,
each derived architecture trained from scratch the same way, exported and measured, beside a
random-search baseline of random architectures under the same target trained the same way.

``compare`` writes into its directory (and, killed, resumes there: finished entries are kept, an
unfinished search resumes from its checkpoint): one run directory per method (``<method>/``, the search's own,
with ``train/`` and ``model.onnx`` inside), ``random-<i>/`` per random architecture, and the report:
``report.csv`` (one row per entry), ``report.md`` (the table and what it shows) and
``accuracy_vs_latency.png``. Every number in it is measured in this run:

- search seconds: wall time of the search (profiling excluded: the table is shared);
- step cost: median time of 5 weight steps of the method's supernet on one training batch (after 2
  untimed), next to 5 training steps of the derived child and of the space's largest child on the same
  batch; memory: bytes autograd saves for backward in one such step (``hwnas.memory``), which is what
  grows with the candidates a step evaluates;
- predicted latency from the table, measured latency of the exported ONNX model (ONNX Runtime on this
  CPU, the table's statistic), test accuracy after ``train_epochs`` epochs from scratch, parameters and
  multiply-accumulates at the deploy shape.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.exporting import ArchSource, export
from hwnas.fsio import atomic_write_text
from hwnas.memory import activation_bytes
from hwnas.api import build_search
from hwnas.objective import LOWER_FRACTION
from hwnas.searching import NullProgress, Search, SearchConfig
from hwnas.selection import RandomSelector
from hwnas.spaces import Arch
from hwnas.spaces.builder import build_child, count_params
from hwnas.strategies import get_strategy
from hwnas.training import train_child

log = logging.getLogger("hwnas.compare")

FIELDS = ["entry", "method", "search_s", "step_ms", "child_step_ms", "largest_step_ms", "step_mib", "child_mib",
          "largest_mib", "predicted_ms", "measured_ms", "compensated_ms", "machine_factor",
          "measured_vs_predicted", "target_ms", "test_acc",
          "params", "macs", "normal_skip_share", "arch"]


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: ["proxyless", "fbnet", "spnas"])
    space: str = "spnas"
    latency_target: str = "50%"
    epochs: int = 16
    warmup_epochs: int = 8
    batch_size: int = 32
    train_epochs: int = 10
    random_archs: int = 3
    seed: int = 0
    data: str = "digits"
    data_root: str | None = None
    config: dict = field(default_factory=dict)
    device: str = "cpu"
    # every method's own architecture learning rate times this: a short search on small data takes few
    # architecture steps (digits: ~25 an epoch at batch 32, where DARTS on CIFAR-10 takes ~20k in all), and
    # at the papers' rates the alphas barely leave uniform (measurements: docs/measurements.md, 'Architecture
    # learning rate on a short search')
    arch_lr_scale: float = 1.0


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def conv(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total


class _NoUpdate:
    """An optimizer that clears gradients and updates nothing: a weight step timed without moving weights."""

    def __init__(self, params):
        self.params, self.param_groups = list(params), [{"lr": 0.0}]

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    def step(self):
        pass


def _median_ms(step, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def step_costs(search: Search, tokens: list[str]) -> dict:
    """Time and saved-for-backward bytes of one weight step of the method's supernet, of the derived
    child and of the space's largest child, on the same training batch (see the module docstring)."""
    x, y = next(iter(search.train_loader))
    x, y = x.to(search.device), y.to(search.device)
    s = search.strategy
    s.supernet.train()

    if hasattr(s, "sample_weight_path"):  # a gradient method: its weight path, forward, backward
        def supernet_step():
            s.sample_weight_path()
            loss = F.cross_entropy(s.supernet(x), y)
            loss.backward()
            s.supernet.zero_grad(set_to_none=True)
            return loss
    else:  # a sampling method: its own weight step (FairNAS: m paths), without the optimizer's update
        frozen = _NoUpdate(s.weight_parameters())

        def supernet_step():
            out = s.weight_step((x, y), frozen)
            s.supernet.zero_grad(set_to_none=True)
            return out

    def child_step(model):
        def step():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss
        return step

    largest = search.latency.extremes()[1][1] if search.latency is not None else [max(c) for c in s.supernet.choices]
    children = {}
    for name, layers in (("child", tokens), ("largest", largest)):
        model = build_child(Arch(search.cfg.space, search.deploy_config, layers), resolution=search.data.resolution)
        children[name] = child_step(model.to(search.device).train())
    mib = lambda fn: activation_bytes(fn) / 2**20  # noqa: E731
    return {"step_ms": _median_ms(supernet_step), "child_step_ms": _median_ms(children["child"]),
            "largest_step_ms": _median_ms(children["largest"]), "step_mib": mib(supernet_step),
            "child_mib": mib(children["child"]), "largest_mib": mib(children["largest"])}


def random_archs_in_window(search: Search, n: int, seed: int) -> list[list[str]]:
    """``n`` distinct architectures of random search in the target's window ``[0.9 T, T]``
    (``hwnas.selection.RandomSelector``: random per-decision scores, then the best-scoring architecture in
    the window, the derivation every method uses); fewer if 50 n proposals hold fewer distinct ones."""
    selector = RandomSelector(search.space, search.deploy_config, seed, latency=search.latency,
                              window=(search.target.lower_ms, search.target_ms), mode="window")
    out, seen = [], set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        tokens = selector.ask()
        if tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            out.append(tokens)
    return out


def _scaled_arch_lr(method: str, scale: float) -> dict:
    """``{"arch_lr": default * scale}`` for a method with an architecture learning rate, else ``{}``."""
    default = get_strategy(method).defaults.get("arch_lr")
    return {"arch_lr": default * scale} if scale != 1.0 and default is not None else {}


def _finish_entry(row: dict, arch: Arch, run_dir: Path, cfg: CompareConfig, table, threads: int) -> dict:
    """Train from scratch, export, measure: the figures every entry shares."""
    trained = train_child(arch, run_dir / "train", data=cfg.data, data_root=cfg.data_root, epochs=cfg.train_epochs,
                          seed=cfg.seed, device=cfg.device)
    src = ArchSource(arch, str(run_dir), None, run_dir / "train" / "trained.pt")
    rep = export(src, run_dir / "model.onnx", threads=threads, table=table, iterations=100)
    stat = getattr(table, "statistic", "p50")
    res = arch.config["resolution"]
    row.update({"test_acc": trained["test_acc"], "params": trained["params"],
                "macs": count_macs(build_child(arch), (1, 3, res, res)), "predicted_ms": rep.predicted_ms,
                "measured_ms": rep.measured_ms[stat], "compensated_ms": rep.compensated_ms,
                "machine_factor": rep.machine_factor, "measurement_notes": rep.notes,
                "arch": arch.space_obj.describe(arch.layers), **arch.space_obj.figures(arch.layers)})
    # against the prediction: the measurement on the machine the table describes (drift-compensated by the
    # table's reference networks) where it has them, else the raw measurement
    held = rep.compensated_ms if rep.compensated_ms is not None else row["measured_ms"]
    row["measured_vs_predicted"] = held / row["predicted_ms"] - 1 if row["predicted_ms"] else None
    return row


def _check_resume(out: Path, cfg: CompareConfig) -> None:
    """A compare directory resumes only the settings it was started with (its finished entries were
    searched and trained with them); keys an older compare.json lacks read as their defaults."""
    path = out / "compare.json"
    if not path.exists():
        return
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON object expected, found {type(stored).__name__}")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the settings to resume ({e})") from None
    had = {**asdict(CompareConfig()), **stored}
    now = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as stored
    diff = [k for k in now if had.get(k) != now[k]]
    if diff:
        raise ValueError(f"{out} was started with other settings ({', '.join(f'{k} {had.get(k)!r} -> {now[k]!r}' for k in diff)}); "
                         f"resume it with the same flags or pass another --out")


def compare(cfg: CompareConfig, out_dir: str | os.PathLike, table_for, progress=None) -> list[dict]:
    """Run every method and the random baseline into ``out_dir``; returns the report rows. ``table_for``
    is the search's table callback ``(space, deploy_config) -> LatencyTable``."""
    out = Path(out_dir)
    if not 0 < cfg.arch_lr_scale < float("inf"):
        raise ValueError(f"--arch-lr-scale {cfg.arch_lr_scale!r}: must be a positive finite number")
    _check_resume(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(asdict(cfg), indent=2) + "\n")
    tables = {}

    def table_once(space, deploy_config):
        if "t" not in tables:
            tables["t"] = table_for(space, deploy_config)
        return tables["t"]

    rows, template, reported = [], None, 0
    for method in cfg.methods:
        scfg = SearchConfig(method=method, space=cfg.space, data=cfg.data, data_root=cfg.data_root, seed=cfg.seed,
                            epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size,
                            device=cfg.device, latency_target=cfg.latency_target, config=dict(cfg.config),
                            options=_scaled_arch_lr(method, cfg.arch_lr_scale))
        search = build_search(scfg, out / method, table=table_once, progress=progress or NullProgress)
        if (out / method / "entry.json").exists():  # finished in an earlier, interrupted compare
            rows.append(json.loads((out / method / "entry.json").read_text()))
            template = template or search
            continue
        if search.target_ms is None or not search.binds:
            raise ValueError(f"compare needs a binding latency target; {cfg.latency_target!r} does not bind "
                             f"(space range {search.range_ms[0]:.2f}-{search.range_ms[1]:.2f} ms)")
        log.info("compare: searching with %s", method)
        summary = search.run()
        template = template or search
        row = {"entry": method, "method": method, "search_s": summary["search_seconds"],
               "target_ms": search.target_ms, **step_costs(search, summary["arch"])}
        arch = Arch.load(out / method / "arch.json")
        rows.append(_finish_entry(row, arch, out / method, cfg, tables["t"], _threads(tables["t"])))
        atomic_write_text(out / method / "entry.json", json.dumps(rows[-1], indent=2) + "\n")
        _write_report(rows, out, cfg)
        reported = len(rows)
    for i, tokens in enumerate(random_archs_in_window(template, cfg.random_archs, cfg.seed)):
        log.info("compare: random architecture %d/%d", i + 1, cfg.random_archs)
        arch = Arch(cfg.space, template.deploy_config, tokens)
        run_dir = out / f"random-{i}"
        if (run_dir / "entry.json").exists():
            rows.append(json.loads((run_dir / "entry.json").read_text()))
            continue
        run_dir.mkdir(exist_ok=True)
        arch.save(run_dir / "arch.json")
        row = {"entry": f"random-{i}", "method": "random", "target_ms": template.target_ms}
        rows.append(_finish_entry(row, arch, run_dir, cfg, tables["t"], _threads(tables["t"])))
        atomic_write_text(run_dir / "entry.json", json.dumps(rows[-1], indent=2) + "\n")
        _write_report(rows, out, cfg)
        reported = len(rows)
    if reported != len(rows):  # a resumed compare whose last entries were already finished
        _write_report(rows, out, cfg)
    return rows


def _threads(table) -> int:
    return int((getattr(table, "meta", None) or {}).get("threads", 1))


def _write_report(rows: list[dict], out: Path, cfg: CompareConfig) -> None:
    with open(out / ".report.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(out / ".report.csv.tmp", out / "report.csv")
    atomic_write_text(out / "report.md", report_markdown(rows, cfg))
    _plot(rows, out / "accuracy_vs_latency.png", cfg)


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def _measured_cell(r: dict) -> str:
    cell = _fmt(r["measured_ms"], ".3f")
    if r.get("compensated_ms") not in (None, "") and r.get("machine_factor") not in (None, ""):
        cell += f" ({float(r['compensated_ms']):.3f} at x{float(r['machine_factor']):.2f})"
    return cell


def report_markdown(rows: list[dict], cfg: CompareConfig) -> str:
    target = rows[0]["target_ms"] if rows else float("nan")
    lines = [f"# Search methods compared on `{cfg.space}` ({cfg.data}, seed {cfg.seed})", "",
             f"Latency target {cfg.latency_target} = {target:.3f} ms; search {cfg.epochs} epochs "
             f"({cfg.warmup_epochs} warm-up), batch {cfg.batch_size}"
             + (f", every method's architecture learning rate x{cfg.arch_lr_scale:g}" if cfg.arch_lr_scale != 1 else "")
             + f"; every architecture trained from scratch "
             f"for {cfg.train_epochs} epochs. Measured latency: the exported ONNX model on ONNX Runtime (CPU); in "
             f"brackets, divided by the machine's drift since the table's validation (its reference networks timed "
             f"in the same rounds, factor after the x), which is what meas/pred compares where present.", "",
             "| entry | search s | step ms (child / largest) | step MiB (child / largest) | predicted ms | "
             "measured ms | meas/pred | test acc | params | MMACs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = (f"{_fmt(r.get('step_ms'), '.1f')} ({_fmt(r.get('child_step_ms'), '.1f')} / "
                 f"{_fmt(r.get('largest_step_ms'), '.1f')})") if r.get("step_ms") else "-"
        mem = (f"{_fmt(r.get('step_mib'), '.1f')} ({_fmt(r.get('child_mib'), '.1f')} / "
               f"{_fmt(r.get('largest_mib'), '.1f')})") if r.get("step_mib") else "-"
        lines.append(f"| {r['entry']} | {_fmt(r.get('search_s'), '.0f')} | {steps} | {mem} | "
                     f"{_fmt(r['predicted_ms'], '.3f')} | {_measured_cell(r)} | "
                     f"{_fmt(r['measured_vs_predicted'], '+.1%')} | {_fmt(r['test_acc'], '.4f')} | "
                     f"{r['params']:,} | {r['macs'] / 1e6:.1f} |")
    randoms = [r["test_acc"] for r in rows if r["method"] == "random"]
    if randoms:
        med = float(np.median(randoms))
        lines += ["", f"Random baseline: median test accuracy {med:.4f} over {len(randoms)} architectures in the "
                      "same latency window."]
        for r in rows:
            if r["method"] != "random":
                verdict = "at least as accurate as" if r["test_acc"] >= med else "LESS accurate than"
                lines.append(f"- {r['entry']}: {r['test_acc']:.4f}, {verdict} the random median.")
    for r in rows:
        if r.get("normal_skip_share") is not None:
            lines.append(f"- {r['entry']}: {r['normal_skip_share']:.0%} of the normal cell's edges are skip_connect"
                         f"{' (collapsed)' if r['normal_skip_share'] >= 0.5 else ''}.")
    for r in rows:
        if r.get("step_ms") and r.get("child_step_ms"):
            lines.append(f"- {r['entry']}: weight step {r['step_ms'] / r['child_step_ms']:.2f}x the derived child's, "
                         f"{r['step_ms'] / r['largest_step_ms']:.2f}x the largest child's "
                         f"(memory {r['step_mib'] / r['child_mib']:.2f}x / {r['step_mib'] / r['largest_mib']:.2f}x).")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path, cfg: CompareConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r["measured_ms"] for r in pts], [r["test_acc"] for r in pts], s=40 if method != "random" else 20,
                   marker="o" if method != "random" else "x", label=method)
    if rows:
        t = rows[0]["target_ms"]
        ax.axvspan(LOWER_FRACTION * t, t, color="k", alpha=0.06, label="target window (predicted)")
    ax.set_xlabel("measured latency, ONNX Runtime CPU (ms)")
    ax.set_ylabel(f"test accuracy ({cfg.data}, {cfg.train_epochs} epochs from scratch)")
    ax.set_title(f"{cfg.space}: methods vs random search at {cfg.latency_target}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
