"""Evaluators: what a selector's proposed architecture scores. ``SupernetPath`` reads it off a trained
supernet (the path's weights inherited, BatchNorm recalibrated: SPOS, Guo et al. 2020, Sec. 3.3);
``TrainFromScratch`` trains it with the ``hwnas train`` recipe. Both return a dict with ``accuracy``.

Adding an evaluator (a tabular benchmark's lookup, a predictor): subclass ``Evaluator``, implement
``evaluate(layers, seed)`` and ``settings()`` (what a resumed loop checks it still runs with).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader, device, batches: int = 8) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches (cumulative
    average, train mode, no gradients). A path inside a supernet is trained under inputs produced by
    many other paths, and its running statistics lag fast-moving weights: evaluating it without
    recalibration measures stale statistics, not the path (SPOS, Sec. 3.3, and OFA recalibrate for the
    same reason)."""
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
def evaluate_path(strategy, tokens: list[str], loader, device, calibration_loader=None,
                  calibration_batches: int = 8) -> float:
    """Top-1 accuracy of one child inside the supernet, its BN statistics recalibrated first on
    ``calibration_batches`` batches of ``calibration_loader`` (training data) when given."""
    strategy.set_eval_path(tokens)
    if calibration_loader is not None:
        recalibrate_bn(strategy.supernet, calibration_loader, device, calibration_batches)
    strategy.supernet.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((strategy.supernet(x).argmax(1) == y).sum())
        total += len(y)
    strategy.supernet.train()
    return correct / max(total, 1)


class Evaluator(ABC):
    """Scores one architecture (see the module docstring)."""

    @abstractmethod
    def evaluate(self, layers: list[str], seed: int) -> dict:
        """``{"accuracy": float, ...}`` of the architecture ``layers``; ``seed`` fixes any randomness."""

    @abstractmethod
    def settings(self) -> dict:
        """What this evaluator runs with (JSON), recorded with the trials."""


class SupernetPath(Evaluator):
    """A path of a trained supernet (through its strategy's ``set_eval_path``), BN recalibrated on
    ``calibration_batches`` training batches, scored on ``loader`` (validation data)."""

    def __init__(self, strategy, loader, calibration_loader, device, calibration_batches: int = 8):
        self.strategy, self.loader, self.calibration_loader = strategy, loader, calibration_loader
        self.device, self.calibration_batches = device, int(calibration_batches)

    def evaluate(self, layers: list[str], seed: int) -> dict:
        return {"accuracy": evaluate_path(self.strategy, layers, self.loader, self.device, self.calibration_loader,
                                          self.calibration_batches)}

    def settings(self) -> dict:
        return {"evaluator": "supernet_path", "calibration_batches": self.calibration_batches}


class TrainFromScratch(Evaluator):
    """The ``hwnas train`` recipe (``hwnas.training.train_child``: the space's defaults) for ``epochs``
    epochs; each trial trains into ``out_dir/trial-<hash of its tokens>``. ``accuracy`` is the validation
    accuracy (the test split stays unseen by the selection)."""

    def __init__(self, space_name: str, config: dict, out_dir, *, data: str = "digits", data_root=None,
                 epochs: int = 1, device="cpu", batch_size: int = 64):
        self.space_name, self.config, self.out_dir = space_name, config, Path(out_dir)
        self.data, self.data_root, self.epochs = data, data_root, int(epochs)
        self.device, self.batch_size = device, int(batch_size)

    def evaluate(self, layers: list[str], seed: int) -> dict:
        from hwnas.spaces import Arch
        from hwnas.training import train_child

        key = hashlib.sha1(" ".join(layers).encode()).hexdigest()[:10]
        r = train_child(Arch(self.space_name, self.config, list(layers)), self.out_dir / f"trial-{key}",
                        data=self.data, data_root=self.data_root, epochs=self.epochs, seed=seed, device=self.device,
                        batch_size=self.batch_size)
        return {"accuracy": r["val_acc"], "test_acc": r["test_acc"], "params": r["params"]}

    def settings(self) -> dict:
        return {"evaluator": "train_from_scratch", "epochs": self.epochs, "data": self.data,
                "batch_size": self.batch_size}
