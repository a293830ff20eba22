"""The strategy-agnostic search loop: epochs, train/val alternation, run directory, checkpoints, resume.

A run directory holds::

    config.json         the resolved search config (written once, never overwritten)
    log.txt             the log
    metrics.csv         one row per epoch
    arch_history.jsonl  the derived architecture and per-layer probabilities after every epoch
    checkpoint.pt       strategy (supernet + architecture parameters), optimizers, RNG; written atomically
    arch.json           the final derived architecture (written at the end)
    child.pt            the derived child's weights inherited from the supernet
    summary.json        the final figures

``resume(run_dir)`` continues a killed run from its last completed epoch.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import load_data, make_loaders
from hwnas.latency.constraint import check_target, most_probable_cell_within, most_probable_within, parse_target
from hwnas.latency.penalty import LatencyModel
from hwnas.spaces import Arch, atomic_write_text, get_space
from hwnas.strategies import get_strategy

log = logging.getLogger("hwnas.search")

LOWER_FRACTION = 0.9  # a binding target is met in [0.9 T, T]


@dataclass
class SearchConfig:
    method: str = "proxyless"
    space: str = "proxyless"
    data: str = "digits"
    data_root: str | None = None
    seed: int = 0
    epochs: int = 16
    warmup_epochs: int = 8
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_every: int = 1
    device: str = "cpu"
    latency_target: str | None = None
    config: dict = field(default_factory=dict)  # skeleton overrides (width_mult, resolution, ...)
    options: dict = field(default_factory=dict)  # method options (arch_lr, loss, loss_params, ...)
    table: str | None = None  # the latency table path (recorded; loaded by the caller)
    table_device: str | None = None  # the device the table was profiled on (slug)
    train_resolution: int | None = None  # proxy input size for the search (default: the data's, digits 32)
    # this machine's speed now / at the table's validation (hwnas.latency.drift): an absolute target is
    # divided by it onto the table's scale; "auto" measures it at the start (and records the figure)
    machine_factor: float | str | None = None

    def validate(self) -> None:
        if self.epochs < 1 or self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup-epochs < epochs (got {self.epochs}, {self.warmup_epochs})")
        if self.batch_size < 1 or self.arch_every < 1:
            raise ValueError("batch size and --arch-every must be positive")
        f = self.machine_factor
        if f is not None and f != "auto":
            try:
                ok = np.isfinite(float(f)) and float(f) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"--machine-factor {f!r}: give a positive number (this machine's speed now / at the "
                                 "table's validation, from `hwnas latency drift`) or auto")


class NullProgress:
    def __init__(self, *a, **k): ...
    def update(self, n=1): ...
    def set_postfix(self, **k): ...
    def close(self): ...


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader, device, batches: int = 8) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches (cumulative
    average, train mode, no gradients). A path inside a supernet is trained under inputs produced by
    many other paths, and its running statistics lag fast-moving weights: evaluating it without
    recalibration measures stale statistics, not the path (SPOS and OFA recalibrate for the same
    reason)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def evaluate_path(strategy, tokens: list[str], loader, device, calibration_loader=None) -> float:
    """Top-1 accuracy of one child inside the supernet, its BN statistics recalibrated first on
    ``calibration_loader`` (training data) when given."""
    strategy.set_eval_path(tokens)
    if calibration_loader is not None:
        recalibrate_bn(strategy.supernet, calibration_loader, device)
    strategy.supernet.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((strategy.supernet(x).argmax(1) == y).sum())
        total += len(y)
    strategy.supernet.train()
    return correct / max(total, 1)


class Search:
    """One search run. ``table`` is a LatencyTable of the deploy shape, a callable
    ``(space, deploy_config) -> LatencyTable | None`` that finds or profiles one once the data's class
    count is known, or None (accuracy only)."""

    def __init__(self, cfg: SearchConfig, run_dir: str | os.PathLike, table=None, progress=NullProgress):
        cfg.validate()
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.device = torch.device(cfg.device)
        _seed_all(cfg.seed)
        self.data = load_data(cfg.data, root=cfg.data_root, seed=cfg.seed, resolution=cfg.train_resolution)
        self.space = get_space(cfg.space)
        self.deploy_config = self.space.resolve_config({**cfg.config, "num_classes": self.data.num_classes})
        if callable(table):
            table = table(self.space, self.deploy_config)
        self.latency = LatencyModel(table, self.space, self.deploy_config) if table is not None else None
        self.target_ms, self.binds = None, False
        self.machine_factor = None
        if self.latency is not None:
            (fast, self.fastest), (slow, self.slowest) = self.latency.extremes()
            self.range_ms = (fast, slow)
            self.target_ms = parse_target(cfg.latency_target, fast, slow)
            self.machine_factor = self._machine_factor(table)
            cal = (getattr(table, "meta", None) or {}).get("calibration") or {}
            if self.machine_factor is None and cal.get("references") and cal.get("date"):
                log.info("the table's predictions describe this machine as it ran at its validation (%s); "
                         "`hwnas latency drift --table %s` measures how it runs now", cal["date"][:10],
                         getattr(table, "path", "T"))
            if self.machine_factor is not None and self.target_ms is not None \
                    and not str(cfg.latency_target).strip().endswith("%"):
                log.info("target %.3f ms on this machine now = %.3f ms on the table's scale (machine factor %.3f)",
                         self.target_ms, self.target_ms / self.machine_factor, self.machine_factor)
                self.target_ms /= self.machine_factor
            self.binds = check_target(self.target_ms, fast, slow, f" {cfg.space!r} on this table")
        elif cfg.latency_target is not None:
            raise ValueError("a latency target needs a latency table")
        strategy_cls = get_strategy(cfg.method)
        self.strategy = strategy_cls.build(self.space, self.deploy_config, self.data.resolution, self.data.num_classes,
                                           latency=self.latency, target_ms=self.target_ms if self.binds else None,
                                           **cfg.options).to(self.device)
        self.strategy.num_epochs = cfg.epochs
        self._make_weight_optimizer()
        self.train_loader, self.val_loader, self.test_loader = make_loaders(self.data, cfg.batch_size, seed=cfg.seed)
        self.epoch = 0
        self.history: list[dict] = []

    def _machine_factor(self, table) -> float | None:
        """The configured machine factor; ``auto`` times the table's reference networks now
        (``hwnas.latency.drift``) and records the figure in the config, so a resumed run keeps its target."""
        f = self.cfg.machine_factor
        if f is None:
            return None
        if f == "auto":
            from hwnas.latency.drift import measure_drift

            d = measure_drift(table)
            log.info("machine factor %.3f: the table's reference networks run %s x their latency at validation",
                     d["factor"], " / ".join(f"{r:.2f}" for r in d["ratios"]))
            self.cfg.machine_factor = f = d["factor"]
        return float(f)

    def _make_weight_optimizer(self) -> None:
        """SGD on the supernet's weights with a cosine schedule to the end of the run (made again when a
        strategy replaces its supernet, e.g. P-DARTS's next stage: the schedule then spans the epochs left)."""
        cfg = self.cfg
        self.w_opt = torch.optim.SGD(self.strategy.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, nesterov=True)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=max(1, cfg.epochs - getattr(self, "epoch", 0)))

    # -- run directory -------------------------------------------------------------------------
    def describe_target(self) -> str:
        if self.latency is None:
            return "no latency table: searching for accuracy alone"
        lo, hi = self.range_ms
        rng = f"space {self.cfg.space!r} spans {lo:.2f}-{hi:.2f} ms on this table"
        if self.target_ms is None:
            return f"no latency target: searching for accuracy alone ({rng})"
        if not self.binds:
            return (f"latency target {self.target_ms:.2f} ms does not bind: every architecture is faster "
                    f"({rng}); searching for accuracy alone")
        now = (f" on the table's scale, {self.target_ms * self.machine_factor:.2f} ms on this machine now"
               if self.machine_factor is not None else "")
        return f"latency target {self.target_ms:.2f} ms{now} ({rng}); derived architecture kept in " \
               f"[{LOWER_FRACTION * self.target_ms:.2f}, {self.target_ms:.2f}] ms"

    def _write_config(self) -> None:
        path = self.run_dir / "config.json"
        if not path.exists():
            resolved = {**asdict(self.cfg), "deploy_config": self.deploy_config, "target_ms": self.target_ms,
                        "target_binds": self.binds, "range_ms": getattr(self, "range_ms", None),
                        "train_resolution": self.data.resolution, "num_classes": self.data.num_classes,
                        # every option the method ran with, defaults included: a resume rebuilds the same
                        # supernet even after a default changes (proxyless's weights=shared, 2026-11-28)
                        "method_options": dict(self.strategy.options), "torch": torch.__version__}
            atomic_write_text(path, json.dumps(resolved, indent=2) + "\n")

    def save_checkpoint(self) -> None:
        state = {"epoch": self.epoch, "structure": self.strategy.structure(), "strategy": self.strategy.state_dict(),
                 "arch_opt": self.strategy.arch_optimizer_state(), "w_opt": self.w_opt.state_dict(),
                 "sched": self.sched.state_dict(), "history": self.history,
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
        tmp = self.run_dir / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / "checkpoint.pt")

    def load_checkpoint(self) -> None:
        state = torch.load(self.run_dir / "checkpoint.pt", map_location=self.device, weights_only=False)
        self.epoch = state["epoch"]
        if self.strategy.restore_structure(state.get("structure")):
            self._make_weight_optimizer()
        try:
            self.strategy.load_state_dict(state["strategy"])
        except RuntimeError as e:
            lines = str(e).strip().splitlines()  # "Error(s) in loading state_dict ...:", then the mismatches
            first = lines[min(1, len(lines) - 1)].strip()[:200]
            raise ValueError(f"{self.run_dir}/checkpoint.pt does not fit the supernet built from its config.json "
                             f"(another hwnas version, or a method option not recorded there: {first}); for a "
                             f"proxyless run from before 2026-11-28 resume with --opt weights=separate") from None
        self.strategy.load_arch_optimizer_state(state["arch_opt"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch, self.history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if (self.run_dir / "checkpoint.pt").exists():
            self.load_checkpoint()
            log.info("resuming %s at epoch %d/%d", self.run_dir, self.epoch, self.cfg.epochs)
        log.info(self.describe_target())
        started = time.perf_counter()
        steps = len(self.train_loader)
        bar = self.progress(total=(self.cfg.epochs - self.epoch) * steps, desc=f"search {self.cfg.method}")
        try:
            while self.epoch < self.cfg.epochs:
                self._epoch(bar)
        finally:
            bar.close()
        return self.finish(time.perf_counter() - started)

    def _epoch(self, bar) -> None:
        cfg, s = self.cfg, self.strategy
        search_arch = self.epoch >= cfg.warmup_epochs
        val_iter = iter(self.val_loader)
        t0, losses, correct, seen, arch_metrics = time.perf_counter(), [], 0, 0, []
        if s.on_epoch_start(self.epoch):
            log.info("%s replaced its supernet at epoch %d: new weight optimizer", cfg.method, self.epoch + 1)
            self._make_weight_optimizer()
        s.supernet.train()
        for step, (x, y) in enumerate(self.train_loader):
            x, y = x.to(self.device), y.to(self.device)
            s.sample_weight_path()
            logits = s.supernet(x)
            loss = F.cross_entropy(logits, y)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.w_opt.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if search_arch and step % cfg.arch_every == 0:
                s.weight_lr = self.w_opt.param_groups[0]["lr"]
                s.last_train_batch = (x, y)
                try:
                    xv, yv = next(val_iter)
                except StopIteration:
                    val_iter = iter(self.val_loader)
                    xv, yv = next(val_iter)
                arch_metrics.append(s.arch_step(xv.to(self.device), yv.to(self.device)))
            bar.update(1)
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{np.mean(losses):.3f}")
        self.sched.step()
        tokens = s.derive()
        row = {"epoch": self.epoch + 1, "phase": "search" if search_arch else "warmup",
               "train_loss": float(np.mean(losses)), "train_acc": correct / max(seen, 1),
               "val_acc_argmax": evaluate_path(s, tokens, self.val_loader, self.device, self.train_loader),
               "lr": self.w_opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if arch_metrics:
            for k in arch_metrics[0]:
                row[k] = float(np.mean([m[k] for m in arch_metrics]))
        if self.latency is not None:
            row["argmax_latency_ms"] = self.latency.of_tokens(tokens)
            row["expected_latency_ms"] = float(s.expected_latency().detach())
        self.epoch += 1
        self.history.append(row)
        self._append_metrics(row)
        entry = {"epoch": self.epoch, "layers": tokens,
                 "probs": [np.exp(lp).round(4).tolist() for lp in s.log_probabilities()]}
        if getattr(self.space, "kind", "chain") == "cell":
            entry["genotype"] = self.space.describe(tokens)
            log.info("genotype after epoch %d: %s", self.epoch, entry["genotype"])
        with open(self.run_dir / "arch_history.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.save_checkpoint()
        lat = f" argmax {row['argmax_latency_ms']:.2f} ms" if "argmax_latency_ms" in row else ""
        log.info("epoch %d/%d %s loss %.3f train acc %.3f val acc (argmax path) %.3f%s [%.1fs]", self.epoch,
                 cfg.epochs, row["phase"], row["train_loss"], row["train_acc"], row["val_acc_argmax"], lat,
                 row["seconds"])

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        fields = ["epoch", "phase", "train_loss", "train_acc", "val_acc_argmax", "lr", "seconds",
                  "arch_loss", "arch_ce", "expected_latency_ms", "argmax_latency_ms", "latency_multiplier",
                  "temperature"]
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    # -- derivation --------------------------------------------------------------------------------
    def derive(self) -> list[str]:
        """The most probable architecture; with a binding target, the most probable one whose
        predicted latency lies in [0.9 T, T] (hwnas.latency.constraint)."""
        tokens = self.strategy.derive()
        if not self.binds:
            return tokens
        lat = [self.latency.layer(i).cpu().numpy() for i in range(self.latency.num_layers)]
        if self.latency.groups is not None:
            def within(lp):
                idx = most_probable_cell_within(lp, lat, self.latency.fixed_ms, LOWER_FRACTION * self.target_ms,
                                                self.target_ms, self.latency.groups, keep=self.latency.keep)
                return [c[j] for c, j in zip(self.latency.choices, idx)]
            limit = getattr(self.strategy, "limit_skips", None)  # P-DARTS: at most 2 skip-connects, target or not
            return limit(self.strategy.log_probabilities(), within) if limit else within(self.strategy.log_probabilities())
        idx = most_probable_within(self.strategy.log_probabilities(), lat, self.latency.fixed_ms,
                                   LOWER_FRACTION * self.target_ms, self.target_ms)
        return [c[j] for c, j in zip(self.latency.choices, idx)]

    def finish(self, seconds: float) -> dict:
        tokens = self.derive()
        arch = Arch(self.cfg.space, self.deploy_config, tokens)
        val_acc = evaluate_path(self.strategy, tokens, self.val_loader, self.device, self.train_loader)
        predicted = self.latency.of_tokens(tokens) if self.latency is not None else None
        arch.meta = {"provenance": {"method": self.cfg.method, "run_dir": str(self.run_dir), "data": self.cfg.data,
                                    "seed": self.cfg.seed, "table": self.cfg.table, "table_device": self.cfg.table_device,
                                    "predicted_latency_ms": predicted, "target_ms": self.target_ms,
                                    "supernet_val_acc": val_acc}}
        arch.save(self.run_dir / "arch.json")
        child_state = self.strategy.supernet.child_state_dict(tokens)
        if child_state is not None:  # a cell space's derived network is trained from scratch
            tmp = self.run_dir / ".child.pt.tmp"
            torch.save(child_state, tmp)
            os.replace(tmp, self.run_dir / "child.pt")
        plot_arch_history(self.run_dir)
        summary = {"arch": tokens, "predicted_latency_ms": predicted, "target_ms": self.target_ms,
                   "machine_factor": self.machine_factor,
                   "predicted_now_ms": predicted * self.machine_factor if predicted and self.machine_factor else None,
                   "target_binds": self.binds, "range_ms": getattr(self, "range_ms", None),
                   "supernet_val_acc": val_acc, "epochs": self.epoch, "search_seconds": seconds,
                   "run_dir": str(self.run_dir)}
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def plot_arch_history(run_dir: str | os.PathLike) -> Path | None:
    """``alpha_evolution.png``: every decision's candidate probabilities per epoch (from
    arch_history.jsonl), one small panel per layer / edge. None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; the data is in arch_history.jsonl
        return None
    run_dir = Path(run_dir)
    path = run_dir / "arch_history.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    space = get_space(cfg.get("space", "proxyless"))
    if getattr(space, "kind", "chain") == "cell":
        names = [e.name for e in space.decisions()]
        choices = [e.choices for e in space.decisions()]
    else:
        plan = space.plan(cfg.get("deploy_config") or {})
        names = [f"layer {i}" for i in range(len(plan.layers))]
        choices = [p.choices for p in plan.layers]
    n = len(rows[0]["probs"])
    cols = 7 if n > 14 else min(n, 5)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 1.9 * nrows), sharex=True, sharey=True, squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for i in range(n):
        ax = axes[i // cols][i % cols]
        for j in range(len(rows[0]["probs"][i])):
            ax.plot(epochs, [r["probs"][i][j] for r in rows], label=choices[i][j] if i < len(choices) else str(j))
        ax.set_title(names[i] if i < len(names) else str(i), fontsize=7)
        ax.tick_params(labelsize=6)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=7)
    fig.suptitle(f"{cfg.get('method', '')}: candidate probabilities per epoch", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = run_dir / "alpha_evolution.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def new_run_dir(root: str | os.PathLike, method: str, space: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{method}-{space}"
    i = 1
    while path.exists():
        path = Path(root) / f"{stamp}-{method}-{space}-{i}"
        i += 1
    return path


def latest_run(root: str | os.PathLike) -> Path | None:
    """The most recent run directory under ``root`` holding an arch.json."""
    runs = [p for p in Path(root).glob("*/arch.json")] if Path(root).is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).parent if runs else None


def load_search_config(run_dir: str | os.PathLike) -> SearchConfig:
    d = json.loads((Path(run_dir) / "config.json").read_text())
    if isinstance(d.get("method_options"), dict):  # resolved at the start: defaults of that day included
        d["options"] = d["method_options"]
    return SearchConfig(**{k: v for k, v in d.items() if k in SearchConfig.__dataclass_fields__})
