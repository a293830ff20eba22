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

from hwnas.data import DataSplits, make_loaders
from hwnas.distributed import Distributed, cpu_state, step_rng
from hwnas.latency.predictor import LatencyModel
from hwnas.objective import Target, parse_machine_factor
from hwnas.plots import plot_arch_history
from hwnas.runs import atomic_torch_save, atomic_write_text
from hwnas.selection.evaluate import evaluate_path
from hwnas.spaces import Arch
from hwnas.spaces.base import Space
from hwnas.strategies import DeriveContext, get_strategy

log = logging.getLogger("hwnas.search")


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
    table_overlay: str | None = None  # the user's overlay of that (shipped) table, if rows were profiled on top
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
        parse_machine_factor(self.machine_factor)


@dataclass
class SearchInputs:
    """What a ``Search`` is built from, resolved beforehand (``hwnas.api.prepare_search``): the data, the
    space and its deploy config, the latency model (None: accuracy alone) and the target."""

    data: DataSplits
    space: Space
    deploy_config: dict
    latency: LatencyModel | None = None
    target: Target = field(default_factory=Target)


class NullProgress:
    def __init__(self, *a, **k): ...
    def update(self, n=1): ...
    def set_postfix(self, **k): ...
    def close(self): ...


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Search:
    """One search run of ``cfg`` into ``run_dir`` on ``inputs`` (``hwnas.api.build_search`` resolves
    them from a config and a table). It never profiles or times anything: the latency model and the
    target arrive resolved."""

    def __init__(self, cfg: SearchConfig, run_dir: str | os.PathLike, inputs: SearchInputs, progress=NullProgress,
                 dist: Distributed | None = None):
        cfg.validate()
        self.dist = dist or Distributed(device=torch.device(cfg.device))
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) does not divide among "
                             f"{self.dist.world_size} ranks")
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.progress = progress if self.dist.is_main else NullProgress
        self.device = self.dist.device if self.dist.device is not None else torch.device(cfg.device)
        self.data, self.space, self.deploy_config = inputs.data, inputs.space, inputs.deploy_config
        self.latency, self.target = inputs.latency, inputs.target
        _seed_all(cfg.seed)  # the supernet's initialization does not depend on what was profiled before
        strategy_cls = get_strategy(cfg.method)
        self.strategy = strategy_cls.build(self.space, self.deploy_config, self.data.resolution, self.data.num_classes,
                                           latency=self.latency, target_ms=self.target.binding_ms,
                                           **cfg.options).to(self.device)
        self.strategy.num_epochs = cfg.epochs
        self._distribute()
        self._make_weight_optimizer()
        # evaluation and derivation read whole batches; the steps read this rank's slices of batches drawn
        # from a shuffle of their own (evaluating never moves the steps' data order: 1 rank == N ranks)
        self.train_loader, self.val_loader, self.test_loader = make_loaders(self.data, cfg.batch_size, seed=cfg.seed)
        step_train, step_val, _ = make_loaders(self.data, cfg.batch_size, seed=cfg.seed)
        self.step_train_loader, self.step_val_loader = self.dist.shard(step_train), self.dist.shard(step_val)
        self.strategy.steps_per_epoch = len(self.step_train_loader)
        self.epoch = 0
        self.history: list[dict] = []

    # the resolved target, as the rest of the package reads it
    @property
    def target_ms(self) -> float | None:
        return self.target.target_ms

    @property
    def binds(self) -> bool:
        return self.target.binds

    @property
    def range_ms(self) -> tuple[float, float] | None:
        return self.target.range_ms

    @property
    def machine_factor(self) -> float | None:
        return self.target.machine_factor

    def _distribute(self) -> None:
        """Under torchrun: the supernet inside DDP with cross-rank BatchNorm, the strategy told its process
        group (``hwnas.distributed``); again whenever a strategy replaces its supernet."""
        if self.dist.active:
            self.strategy.distributed = self.dist
            self.strategy.attach_ddp(self.dist.wrap(self.strategy.supernet))

    def _make_weight_optimizer(self) -> None:
        """The strategy's weight optimizer (SGD unless its paper says otherwise) with a cosine schedule to the end
        of the run (made again when a strategy replaces its supernet, e.g. P-DARTS's next stage: the schedule
        then spans the epochs left)."""
        cfg = self.cfg
        self.w_opt = self.strategy.make_weight_optimizer(cfg.lr, cfg.momentum, cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=max(1, cfg.epochs - getattr(self, "epoch", 0)))

    # -- run directory -------------------------------------------------------------------------
    def describe_target(self) -> str:
        return self.target.describe(self.cfg.space)

    def _write_config(self) -> None:
        path = self.run_dir / "config.json"
        if not path.exists():
            resolved = {**asdict(self.cfg), "deploy_config": self.deploy_config, "target_ms": self.target_ms,
                        "target_binds": self.binds, "range_ms": self.range_ms,
                        "train_resolution": self.data.resolution, "num_classes": self.data.num_classes,
                        # every option the method ran with, defaults included: a resume rebuilds the same
                        # supernet even after a default changes (proxyless's weights=shared: docs/measurements.md,
                        # 'Shared ProxylessNAS weights (a changed default)')
                        "method_options": dict(self.strategy.options), "torch": torch.__version__}
            atomic_write_text(path, json.dumps(resolved, indent=2) + "\n")

    def _state(self, rng: bool = True) -> dict:
        state = {"epoch": self.epoch, "structure": self.strategy.structure(), "strategy": self.strategy.state_dict(),
                 "arch_opt": self.strategy.arch_optimizer_state(), "w_opt": self.w_opt.state_dict(),
                 "sched": self.sched.state_dict(), "history": self.history}
        if rng:
            state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        return state

    def save_checkpoint(self) -> None:
        atomic_torch_save(self._state(), self.run_dir / "checkpoint.pt")

    def load_checkpoint(self, state: dict | None = None) -> None:
        """Continue from ``state`` (default: RUN/checkpoint.pt; under torchrun rank 0 reads it and the
        others receive it)."""
        if state is None:
            state = torch.load(self.run_dir / "checkpoint.pt", map_location=self.device, weights_only=False)
        self.epoch = state["epoch"]
        if self.strategy.restore_structure(state.get("structure")):
            self._distribute()
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
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Train, derive, write the run directory; the summary (None on a rank other than 0 under torchrun:
        rank 0 derives and writes alone)."""
        state = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if (self.run_dir / "checkpoint.pt").exists():
                state = torch.load(self.run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        if self.dist.active:  # every rank starts from rank 0's state: a checkpoint, or its initialization
            state = self.dist.broadcast(cpu_state(state if state is not None else self._state(rng=False)))
        if state is not None:
            self.load_checkpoint(state)
            if "rng" in state:
                log.info("resuming %s at epoch %d/%d", self.run_dir, self.epoch, self.cfg.epochs)
        log.info(self.describe_target())
        if self.dist.active:
            log.info("torchrun: %d ranks (%s), global batch %d (%d a rank)", self.dist.world_size, self.dist.backend,
                     self.cfg.batch_size, self.cfg.batch_size // self.dist.world_size)
        started = time.perf_counter()
        steps = len(self.step_train_loader)
        bar = self.progress(total=(self.cfg.epochs - self.epoch) * steps, desc=f"search {self.cfg.method}")
        try:
            while self.epoch < self.cfg.epochs:
                self._epoch(bar)
        finally:
            bar.close()
        if self.dist.active:  # training is over: rank 0 derives alone (no collective may wait on the others)
            self.dist.barrier()
            self.dist.close()
            self.strategy.distributed = None
            self.strategy.attach_ddp(None)
            if not self.dist.is_main:
                return None
        return self.finish(time.perf_counter() - started)

    def _epoch(self, bar) -> None:
        cfg, s = self.cfg, self.strategy
        search_arch = self.epoch >= cfg.warmup_epochs
        t0, losses, correct, seen, arch_metrics = time.perf_counter(), [], 0, 0, []
        if s.on_epoch_start(self.epoch):
            log.info("%s replaced its supernet at epoch %d: new weight optimizer", cfg.method, self.epoch + 1)
            if self.dist.active:  # the new stage's parameters drawn on each rank: take rank 0's
                s.load_state_dict(self.dist.broadcast(cpu_state(s.state_dict())))
            self._distribute()
            self._make_weight_optimizer()
        s.supernet.train()
        val_iter = iter(self.step_val_loader)
        first = self.epoch * s.steps_per_epoch
        for step, (x, y) in enumerate(self.step_train_loader):
            x, y = x.to(self.device), y.to(self.device)
            with step_rng(cfg.seed, first + step, 0):  # the same path on every rank (hwnas.distributed)
                out = s.weight_step((x, y), self.w_opt)
            losses.append(out["loss"])
            correct += out["correct"]
            seen += out["seen"]
            if search_arch and s.arch_steps and step % cfg.arch_every == 0:
                try:
                    xv, yv = next(val_iter)
                except StopIteration:
                    val_iter = iter(self.step_val_loader)
                    xv, yv = next(val_iter)
                with step_rng(cfg.seed, first + step, 1):
                    arch_metrics.append(s.arch_step(xv.to(self.device), yv.to(self.device)))
            bar.update(1)
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{np.mean(losses):.3f}")
        self.sched.step()
        self.dist.check_consistent(s, f"epoch {self.epoch + 1}")
        train_loss = self.dist.mean(float(np.mean(losses)))
        correct, seen = (self.dist.mean(v) * self.dist.world_size for v in (correct, seen))
        if not self.dist.is_main:  # rank 0 evaluates and records the epoch; the others go on to the next one
            self.epoch += 1
            return
        tokens = s.current_arch()
        row = {"epoch": self.epoch + 1, "phase": "search" if search_arch else "warmup",
               "train_loss": train_loss, "train_acc": correct / max(seen, 1),
               "val_acc_argmax": evaluate_path(s, tokens, self.val_loader, self.device, self.train_loader),
               "lr": self.w_opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if arch_metrics:
            for k in arch_metrics[0]:
                row[k] = float(np.mean([m[k] for m in arch_metrics]))
        if self.latency is not None:
            row["argmax_latency_ms"] = self.latency.of_tokens(tokens)
            expected = s.expected_latency()
            if expected is not None:
                row["expected_latency_ms"] = float(expected.detach())
        self.epoch += 1
        self.history.append(row)
        self._append_metrics(row)
        readable = self.space.history_record(tokens)
        entry = {"epoch": self.epoch, "layers": tokens, **s.epoch_record(), **readable}
        for key, value in readable.items():
            log.info("%s after epoch %d: %s", key, self.epoch, value)
        with open(self.run_dir / "arch_history.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.save_checkpoint()
        lat = f" {row['argmax_latency_ms']:.2f} ms" if "argmax_latency_ms" in row else ""
        log.info("epoch %d/%d %s loss %.3f train acc %.3f val acc (%s) %.3f%s [%.1fs]", self.epoch,
                 cfg.epochs, row["phase"], row["train_loss"], row["train_acc"], s.current_arch_label,
                 row["val_acc_argmax"], lat, row["seconds"])

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        fields = ["epoch", "phase", "train_loss", "train_acc", "val_acc_argmax", "lr", "seconds",
                  "arch_loss", "arch_ce", "expected_latency_ms", "argmax_latency_ms", "latency_multiplier",
                  "temperature", "reward", "entropy"]
        if not new:  # a run resumed by another version keeps the columns it started with
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None) or fields
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    # -- derivation --------------------------------------------------------------------------------
    def derive_context(self) -> DeriveContext:
        return DeriveContext(self.latency, self.target.binding_ms, self.target.lower_ms,
                             self.train_loader, self.val_loader, self.device, self.run_dir, self._trial_progress())

    def _trial_progress(self):
        """A ``progress(done, total)`` for a selection phase: a bar opened at the first call."""
        state = {}

        def callback(done, total):
            if "bar" not in state:
                state["bar"] = self.progress(total=total, desc=f"select {self.cfg.method}")
                state["bar"].update(done - 1)
            state["bar"].update(1)
            if done >= total:
                state["bar"].close()

        return callback

    def derive(self) -> list[str]:
        """The strategy's final architecture; with a binding target the most probable one whose predicted
        latency lies in [0.9 T, T] (``Strategy.derive``, ``hwnas.objective``)."""
        return self.strategy.derive(self.derive_context())

    def finish(self, seconds: float) -> dict:
        tokens = self.derive()
        arch = Arch(self.cfg.space, self.deploy_config, tokens)
        val_acc = evaluate_path(self.strategy, tokens, self.val_loader, self.device, self.train_loader)
        predicted = self.latency.of_tokens(tokens) if self.latency is not None else None
        arch.meta = {"provenance": {"method": self.cfg.method, "run_dir": str(self.run_dir), "data": self.cfg.data,
                                    "seed": self.cfg.seed, "table": self.cfg.table,
                                    "table_overlay": self.cfg.table_overlay, "table_device": self.cfg.table_device,
                                    "predicted_latency_ms": predicted, "target_ms": self.target_ms,
                                    "supernet_val_acc": val_acc}}
        arch.save(self.run_dir / "arch.json")
        child_state = self.strategy.supernet.child_state_dict(tokens)
        if child_state is not None:  # a cell space's derived network is trained from scratch
            atomic_torch_save(child_state, self.run_dir / "child.pt")
        plot_arch_history(self.run_dir)
        summary = {"arch": tokens, "predicted_latency_ms": predicted, "target_ms": self.target_ms,
                   "machine_factor": self.machine_factor,
                   "predicted_now_ms": predicted * self.machine_factor if predicted and self.machine_factor else None,
                   "target_binds": self.binds, "range_ms": self.range_ms,
                   "supernet_val_acc": val_acc, "epochs": self.epoch, "search_seconds": seconds,
                   "ranks": self.dist.world_size, "run_dir": str(self.run_dir)}
        if self.space.has_notation:
            summary["arch_string"] = self.space.arch_string(tokens)
        if getattr(self.strategy, "selection", None):
            summary["selection"] = self.strategy.selection
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def load_search_config(run_dir: str | os.PathLike) -> SearchConfig:
    d = json.loads((Path(run_dir) / "config.json").read_text())
    if isinstance(d.get("method_options"), dict):  # resolved at the start: defaults of that day included
        d["options"] = d["method_options"]
    return SearchConfig(**{k: v for k, v in d.items() if k in SearchConfig.__dataclass_fields__})
