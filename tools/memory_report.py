"""Memory of one ProxylessNAS weight step vs the sampled child vs evaluating every candidate.

Prints the bytes autograd saves for backward (hwnas.memory.activation_bytes) for one training step
of each, at the search's real shapes. On CUDA it also reports the allocator's peak.

    python tools/memory_report.py --space proxyless --batch 64 --resolution 32
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from hwnas.memory import activation_bytes, peak_cuda_bytes
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import get_strategy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    space = get_space(args.space)
    cfg = space.resolve_config({"num_classes": args.num_classes, "width_mult": args.width_mult})
    s = get_strategy("proxyless").build(space, cfg, args.resolution, args.num_classes).to(dev)
    s.sample_weight_path()
    tokens = [op.tokens[op.active] for op in s.supernet.mixed]
    child = build_child(Arch(space.name, cfg, tokens), resolution=args.resolution).to(dev)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=dev)
    y = torch.randint(0, args.num_classes, (args.batch,), device=dev)
    net = s.supernet

    def supernet_step():
        F.cross_entropy(net(x), y).backward()

    def child_step():
        F.cross_entropy(child(x), y).backward()

    def all_paths_step():
        h = net.first(net.stem(x))
        for op in net.mixed:
            h = sum(op.path(j, h) for j in range(len(op))) / len(op)
        F.cross_entropy(net.classifier(net.head(h)), y).backward()

    n_cand = sum(len(op) for op in net.mixed) / len(net.mixed)
    rows = []
    for name, fn in [("proxyless weight step (1 path)", supernet_step), ("sampled child", child_step),
                     (f"all candidates (mean {n_cand:.1f}/layer)", all_paths_step)]:
        act = activation_bytes(lambda fn=fn: fn())
        peak = peak_cuda_bytes(fn, dev) if dev.type == "cuda" else None
        rows.append((name, act, peak))
    print(f"space {space.name}, batch {args.batch}, {args.resolution}x{args.resolution}, width {args.width_mult}, "
          f"device {dev}; child: {' '.join(tokens)}")
    base = rows[1][1]
    for name, act, peak in rows:
        extra = f", CUDA peak {peak / 2**20:.1f} MiB" if peak is not None else ""
        print(f"{name:<34} saved for backward {act / 2**20:8.1f} MiB  ({act / base:.2f}x child){extra}")


if __name__ == "__main__":
    main()
