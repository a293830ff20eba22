"""Train a derived architecture from scratch and report its test accuracy: the honest number a
search is judged by (supernet accuracy only ranks candidates)."""
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


def train_child(arch: Arch, out_dir: str | os.PathLike, *, data: str = "digits", data_root: str | None = None,
                epochs: int = 10, batch_size: int = 64, lr: float = 0.05, weight_decay: float = 4e-5,
                seed: int = 0, device: str | torch.device = "cpu", progress=None) -> dict:
    """Train ``arch`` (at the data's resolution, deploy strides adapted) and write ``trained.pt``,
    ``train_metrics.csv`` and ``train.json`` into ``out_dir``. Returns the final figures."""
    torch.manual_seed(seed)
    device = torch.device(device)
    splits = load_data(data, root=data_root, seed=seed)
    if arch.config["num_classes"] != splits.num_classes:
        arch = arch.with_config(num_classes=splits.num_classes)
    model = build_child(arch, resolution=splits.resolution).to(device)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress(total=epochs * len(train_loader), desc="train") if progress else None
    rows, started = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            aux = getattr(model, "aux_logits", None)  # the DARTS evaluation network's auxiliary head
            if aux is not None:
                loss = loss + model.auxiliary_weight * F.cross_entropy(aux, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
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
              "seconds": time.perf_counter() - started, "seed": seed}
    atomic_write_text(out / "train.json", json.dumps(result, indent=2) + "\n")
    return result
