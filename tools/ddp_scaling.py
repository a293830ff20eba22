"""Scaling of the one-shot searches under torchrun: what each rank sends per step (from the parameter counts),
and, measured on this machine, epoch time and samples/s of the same search on 1 and 2 ranks.

Bytes per step, fp32, for each one-shot method on its default space and config (10 classes):

- the weight step: DDP all-reduces every parameter's gradient in its buckets, unused ones included (with
  ``find_unused_parameters`` it marks them ready and reduces their zeros), so ``4 P_w`` bytes a step, whichever
  path ran; fairnas runs m backward passes a step, each synchronized: ``m x 4 P_w``;
- the architecture step: ``4 P_a`` (the architecture gradients averaged); DARTS's second order adds two
  weight-sized averages (the unrolled gradient and the Hessian-vector product's ``v``); ENAS averages one
  number (its reward);
- cross-rank BatchNorm: per BN layer on the path, ``2C + 1`` floats forward and the same backward; counted over
  every BN of the supernet (an upper bound: a path runs only its own).

A ring all-reduce of B bytes moves ``2 (N - 1) / N x B`` bytes through each link; the table gives that time at
450 GB/s (NVLink 4, within a node) and 12.5 GB/s (100 Gb/s InfiniBand or Ethernet, between nodes).

    python tools/ddp_scaling.py --out bench/results/cpu-intel-xeon-2t/ddp-scaling.md [--no-measure]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from hwnas.strategies import get_strategy

METHODS = ["proxyless", "fbnet", "spnas", "spos", "fairnas", "oneshot", "enas", "darts", "pcdarts", "gdas", "pdarts"]
LINKS = {"NVLink 450 GB/s": 450e9, "100 Gb/s network": 12.5e9}


def counts(method: str) -> dict:
    from hwnas.spaces import get_space

    cls = get_strategy(method)
    space = get_space(cls.default_space)
    cfg = space.resolve_config({"num_classes": 10})
    s = cls.build(space, cfg, 32, 10)
    p_w = sum(p.numel() for p in s.weight_parameters())
    p_a = sum(p.numel() for p in s.arch_parameters()) if hasattr(s, "arch_parameters") else 0
    bn = sum(2 * m.num_features + 1 for m in s.supernet.modules() if isinstance(m, torch.nn.BatchNorm2d))
    opts = {**getattr(cls, "defaults", {}), **getattr(s, "options", {})}
    m = max(len(d.choices) for d in s.decisions) if method == "fairnas" else 1
    weight = m * 4 * p_w
    arch = 8 if method == "enas" else 4 * p_a
    if method in ("darts", "pdarts") and opts.get("order") == 2:
        arch += 2 * 4 * p_w
    return {"method": method, "space": space.name, "P_w": p_w, "P_a": p_a, "paths": m,
            "weight_bytes": weight, "arch_bytes": arch, "bn_bytes": 2 * 4 * bn * m,
            "total": weight + arch + 2 * 4 * bn * m}


def measure(nproc: int, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // nproc), "HWNAS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "hwnas",
           "search", "--method", "proxyless", "--latency-target", "50%", "--epochs", "2", "--warmup-epochs", "1",
           "--no-profile", "--runs", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    run = next(p for p in out.iterdir() if (p / "metrics.csv").exists())
    return list(csv.DictReader(open(run / "metrics.csv")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-measure", action="store_true")
    args = ap.parse_args()
    lines = ["# All-reduce bytes per search step, by method (tools/ddp_scaling.py)", "",
             "fp32; default space and config of each method, 10 classes. Ring all-reduce time per step at N ranks "
             "is about 2(N-1)/N x bytes / link bandwidth.", "",
             "| method | space | weights P_w | arch P_a | paths/step | weight step MB | arch step MB | BN MB (bound) | "
             + " | ".join(f"ms at N=8, {k}" for k in LINKS) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(LINKS)]
    for method in METHODS:
        try:
            c = counts(method)
        except Exception as e:  # noqa: BLE001 - a method that needs another space's data shape: say so, go on
            lines.append(f"| {method} | - | ({type(e).__name__}: {e}) |")
            continue
        t = [2 * 7 / 8 * c["total"] / bw * 1e3 for bw in LINKS.values()]
        lines.append(f"| {method} | {c['space']} | {c['P_w']:,} | {c['P_a']:,} | {c['paths']} | "
                     f"{c['weight_bytes'] / 1e6:.2f} | {c['arch_bytes'] / 1e6:.4f} | {c['bn_bytes'] / 1e6:.3f} | "
                     + " | ".join(f"{x:.3f}" for x in t) + " |")
    if not args.no_measure:
        lines += ["", "## Measured: proxyless, default space, digits, batch 32 global (the default), 2 epochs (1 warm-up), "
                  "torchrun on this machine's 2 cores (OMP threads 2 for 1 rank, 1 per rank for 2)", "",
                  "| ranks | epoch | phase | seconds | train samples/s |", "|---|---|---|---|---|"]
        from hwnas.data import load_data

        n_train = len(load_data("digits", seed=0, resolution=32).train)
        for nproc in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                for row in measure(nproc, Path(tmp)):
                    s = float(row["seconds"])
                    lines.append(f"| {nproc} | {row['epoch']} | {row['phase']} | {s:.1f} | {n_train / s:.0f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
