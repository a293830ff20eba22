"""Step cost of the relaxed methods against a child step and against the candidates' floor, and the
activation memory of DARTS vs PC-DARTS on the cell space.

Step cost (the setting NNI 3.0 reported 18.4x / 21.1x a child step for DARTS / Gumbel DARTS in):
proxyless space at width 0.5, 32x32, batch 32. Every figure is a median over ``--repeats`` timed runs,
all of one kind interleaved round-robin with the others so the machine's drift hits them alike.

- child step: forward + backward + SGD of one plain child network (the mean over ``--children`` random
  children of the space).
- floor: every candidate layer alone (at its input shape), forward + backward, summed over the layers
  and candidates, plus the fixed parts (stem, first block, head, classifier): what any step that runs
  every candidate must at least cost.
- weight step of a method: ``sample_weight_path``, forward, backward, SGD (the search loop's step); arch
  step: the method's ``arch_step`` on another batch; iteration: both (the loop runs one of each).

Memory: bytes autograd saves for backward (``hwnas.memory.activation_bytes``) in one weight step of the
cell-space search network (C=16, 8 cells) at ``--mem-batch`` (64), DARTS vs PC-DARTS (K=4).

    python tools/darts_step_cost.py --out bench/results/cpu-amd-epyc-2t/darts-step-cost.md
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from hwnas.memory import activation_bytes
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import get_strategy

METHODS = ["darts", "darts-2nd", "pcdarts", "gdas"]


def _timer(fn):
    def run():
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return run


def floor_steps(space, cfg, batch: int, res: int) -> list:
    """One callable per candidate layer and fixed part: forward + backward of that module alone."""
    plan = space.plan(cfg, res)
    steps = []

    def make(module, shape):
        module.train()
        x = torch.randn(batch, *shape, requires_grad=True)

        def step():
            out = module(x)
            out.float().sum().backward()
            module.zero_grad(set_to_none=True)
            x.grad = None
        return step

    for part in plan.fixed:
        shape = (part.cin,) if part.kind == "classifier" else (part.cin, part.in_res, part.in_res)
        steps.append(make(space.make_module(part, None, cfg), shape))
    for part in plan.layers:
        for token in part.choices:
            steps.append(make(space.make_module(part, token, cfg), (part.cin, part.in_res, part.in_res)))
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width-mult", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--children", type=int, default=3)
    ap.add_argument("--mem-batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    space = get_space("proxyless")
    cfg = space.resolve_config({"width_mult": args.width_mult, "num_classes": 10})
    res, b = args.resolution, args.batch
    x1, y1 = torch.randn(b, 3, res, res), torch.randint(0, 10, (b,))
    x2, y2 = torch.randn(b, 3, res, res), torch.randint(0, 10, (b,))

    timers: dict[str, object] = {}
    plan = space.plan(cfg, res)
    for c in range(args.children):
        tokens = [random.choice(p.choices) for p in plan.layers]
        net = build_child(Arch("proxyless", cfg, tokens), resolution=res).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def child_step(net=net, opt=opt):
            loss = F.cross_entropy(net(x1), y1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        timers[f"child{c}"] = _timer(child_step)
    floor = floor_steps(space, cfg, b, res)
    timers["floor"] = _timer(lambda: [s() for s in floor])
    for name in METHODS:
        for fused in (True, False):
            method = "darts" if name == "darts-2nd" else name
            opts = {"fused": fused, **({"order": 2} if name == "darts-2nd" else {})}
            s = get_strategy(method).build(space, cfg, res, 10, **opts)
            s.num_epochs = 10
            s.on_epoch_start(0)
            s.last_train_batch, s.weight_lr = (x1, y1), 0.025
            opt = torch.optim.SGD(s.weight_parameters(), lr=0.01, momentum=0.9)

            def weight_step(s=s, opt=opt):
                s.sample_weight_path()
                loss = F.cross_entropy(s.supernet(x1), y1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            tag = f"{name}{'' if fused else ' --no-fused'}"
            timers[f"{tag}|weight"] = _timer(weight_step)
            timers[f"{tag}|arch"] = _timer(lambda s=s: s.arch_step(x2, y2))
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for fn in timers.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for k, fn in timers.items():
            samples[k].append(fn())
    med = {k: statistics.median(v) for k, v in samples.items()}
    child = statistics.mean(med[f"child{c}"] for c in range(args.children))
    floor_ms = med["floor"]
    lines = [f"# Step cost of the relaxed methods ({space.name} space, width {args.width_mult}, {res}x{res}, "
             f"batch {b}, {torch.get_num_threads()} threads, median of {args.repeats})", "",
             f"- one child step (forward + backward + SGD, mean of {args.children} random children): {child:.1f} ms",
             f"- floor (every candidate layer alone, forward + backward, summed, plus fixed parts): {floor_ms:.1f} ms "
             f"= {floor_ms / child:.2f}x a child step", "",
             "| method | weight step ms | x child | x floor | arch step ms | iteration (weight + arch) ms | x child | x floor |",
             "|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        for fused in (True, False):
            tag = f"{name}{'' if fused else ' --no-fused'}"
            w, a = med[f"{tag}|weight"], med[f"{tag}|arch"]
            lines.append(f"| {tag} | {w:.1f} | {w / child:.2f} | {w / floor_ms:.2f} | {a:.1f} | {w + a:.1f} | "
                         f"{(w + a) / child:.2f} | {(w + a) / floor_ms:.2f} |")
    lines += ["", "On a CPU `mixed_op_sum` / `partial_channel_mix` dispatch to their torch references (Triton runs "
              "on CUDA), so fused and --no-fused run the same code here; their gap is the machine's noise."]

    cell = get_space("darts")
    ccfg = cell.resolve_config({})
    xm, ym = torch.randn(args.mem_batch, 3, 32, 32), torch.randint(0, 10, (args.mem_batch,))
    mem = {}
    for method in ("darts", "pcdarts"):
        s = get_strategy(method).build(cell, ccfg, 32, 10)
        s.sample_weight_path()
        mem[method] = activation_bytes(lambda s=s: F.cross_entropy(s.supernet(xm), ym).backward())
    lines += ["", f"# Activation memory of one weight step, cell space search network (C=16, 8 cells), batch "
              f"{args.mem_batch}, 32x32 (bytes saved for backward)", "",
              f"- darts: {mem['darts'] / 2**20:.1f} MiB", f"- pcdarts (K=4): {mem['pcdarts'] / 2**20:.1f} MiB "
              f"= {mem['pcdarts'] / mem['darts']:.2f}x darts"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
