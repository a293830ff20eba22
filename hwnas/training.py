"""Train a derived architecture from scratch and report its test accuracy: the honest number a
search is judged by (supernet accuracy only ranks candidates).

Defaults are the space's (``Space.train_defaults``; every one overridable):

- chain spaces (ProxylessNAS / FBNet / Single-Path): SGD, Nesterov momentum 0.9, lr 0.05, weight decay
  4e-5, cosine schedule, no clipping (the MobileNetV2-style recipe of those papers, shortened);
- the DARTS cell space: the DARTS evaluation recipe (Liu et al. 2019, Sec. 3.3 / A.2: SGD momentum 0.9,
  lr 0.025 cosine, weight decay 3e-4, gradient norm clipped at 5, drop-path probability ramped linearly
  from 0 to the configured ``drop_path`` over the epochs, auxiliary loss weight 0.4 when enabled).
  Without the clip the 20-cell network's first epoch diverges at lr 0.05 (measurements:
  docs/measurements.md, 'DARTS training without gradient clipping').
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import load_data, make_loaders
from hwnas.spaces import Arch, atomic_write_text
from hwnas.spaces.builder import build_child, count_params

log = logging.getLogger("hwnas.train")


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_settings(arch: Arch, *, lr: float | None = None, weight_decay: float | None = None,
                   grad_clip: float | None = None) -> dict:
    """The recipe ``train_child`` uses for ``arch``: its space's ``train_defaults`` with the given overrides
    (``grad_clip=0`` turns clipping off)."""
    out = dict(arch.space_obj.train_defaults)
    for key, value in (("lr", lr), ("weight_decay", weight_decay), ("grad_clip", grad_clip)):
        if value is None:
            continue
        if not np.isfinite(value) or value < 0 or (key == "lr" and value == 0):
            raise ValueError(f"{key}={value!r}: must be a finite number {'> 0' if key == 'lr' else '>= 0'}")
        out[key] = float(value)
    if out["grad_clip"] == 0:
        out["grad_clip"] = None
    return out


def train_child(arch: Arch, out_dir: str | os.PathLike, *, data: str = "digits", data_root: str | None = None,
                epochs: int = 10, batch_size: int = 64, lr: float | None = None, weight_decay: float | None = None,
                grad_clip: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
                resolution: int | None = None, progress=None) -> dict:
    """Train ``arch`` (at the data's resolution, deploy strides adapted) and write ``trained.pt``,
    ``train_metrics.csv`` and ``train.json`` into ``out_dir``. Returns the final figures.

    ``lr``, ``weight_decay`` and ``grad_clip`` default to the space's recipe (``train_settings``);
    ``resolution`` to the data's own (32 for digits and CIFAR)."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be at least 1")
    recipe = train_settings(arch, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip)
    torch.manual_seed(seed)
    device = torch.device(device)
    splits = load_data(data, root=data_root, seed=seed, resolution=resolution)
    if arch.config["num_classes"] != splits.num_classes:
        arch = arch.with_config(num_classes=splits.num_classes)
    model = build_child(arch, resolution=splits.resolution).to(device)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0.9, weight_decay=recipe["weight_decay"],
                          nesterov=recipe["nesterov"])
    final_drop_path = float(getattr(model, "drop_path_prob", 0.0))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress(total=epochs * len(train_loader), desc="train") if progress else None
    rows, started = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        if final_drop_path:  # DARTS's ramp: drop_path * epoch / epochs
            model.drop_path_prob = final_drop_path * epoch / epochs
        losses = []
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            aux = getattr(model, "aux_logits", None)  # the DARTS evaluation network's auxiliary head
            if aux is not None:
                loss = loss + model.auxiliary_weight * F.cross_entropy(aux, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            opt.step()
            losses.append(float(loss.detach()))
            if bar:
                bar.update(1)
        sched.step()
        rows.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                     "val_acc": accuracy(model, val_loader, device)})
        log.info("train epoch %d/%d loss %.3f val acc %.3f", epoch + 1, epochs, rows[-1]["train_loss"], rows[-1]["val_acc"])
    if bar:
        bar.close()
    with open(out / "train_metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp = out / ".trained.pt.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out / "trained.pt")
    result = {"arch": arch.layers, "data": data, "epochs": epochs, "params": count_params(model),
              "val_acc": rows[-1]["val_acc"], "test_acc": accuracy(model, test_loader, device),
              "seconds": time.perf_counter() - started, "seed": seed, "batch_size": batch_size,
              "resolution": splits.resolution, **recipe}
    atomic_write_text(out / "train.json", json.dumps(result, indent=2) + "\n")
    return result
