"""Step cost and activation memory of the sampling methods (spos, fairnas, enas, oneshot) beside the plain
children they train, in one run: same space, width, data shape and batch.

Setting: the proxyless space at width 0.5, 32x32 inputs, batch 32, 10 classes (digits' shape), the search
loop's SGD (lr 0.05, momentum 0.9, Nesterov, weight decay 4e-5) on both sides. ``--paths`` fixed random
paths; for each, every kind of step is timed round-robin (``--repeats`` rounds, medians) so that the
machine's drift hits them alike:

- child: forward + backward + SGD of the plain child network of the path (``build_child``);
- spos (shared / separate weights): the strategy's ``weight_step`` with its sampled path fixed to that path;
- fairnas: one ``weight_step`` (its m paths fixed), against the sum of the m plain children's steps;
- enas: the shared-weight step (the controller's sample included) against the child of the path it
  sampled; the controller step (``arch_step``: sample, reward on a validation batch, REINFORCE, Adam) with
  and without the reward's forward pass;
- oneshot: one ``weight_step`` (every candidate summed, path dropout at its final rate), against a child.

Memory: bytes autograd saves for backward in one step (``hwnas.memory.activation_bytes``), spos (shared and
separate) against the child of the same path.

    python tools/sampling_step_cost.py --out bench/results/cpu-intel-xeon-2t/sampling-step-cost.md
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hwnas.memory import activation_bytes
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child
from hwnas.strategies import enas as enas_mod
from hwnas.strategies import get_strategy

CFG = {"width_mult": 0.5, "num_classes": 10}


def sgd(params):
    return torch.optim.SGD(list(params), lr=0.05, momentum=0.9, weight_decay=4e-5, nesterov=True)


def child_step(tokens, x, y):
    model = build_child(Arch("proxyless", get_space("proxyless").resolve_config(CFG), tokens), resolution=32).train()
    opt = sgd(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def strategy(method, **opts):
    sp = get_space("proxyless")
    s = get_strategy(method).build(sp, sp.resolve_config(CFG), 32, 10, **opts)
    s.supernet.train()
    return s, sgd(s.weight_parameters())


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    xv, yv = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    spos_sh, opt_sh = strategy("spos", weights="shared")
    spos_sep, opt_sep = strategy("spos", weights="separate")
    fair, opt_fair = strategy("fairnas", weights="shared")
    en, opt_en = strategy("enas", weights="shared")
    one, opt_one = strategy("oneshot")
    one.num_epochs, one.steps_per_epoch, one.epoch, one.step_in_epoch = 1, 1, 0, 0  # the final rate
    rng = random.Random(0)
    paths = [spos_sh.space.sample(rng, spos_sh.config) for _ in range(args.paths)]
    results = {k: [] for k in ("child", "spos_shared", "spos_separate", "fairnas", "fairnas_children", "enas_weight",
                               "enas_child", "enas_controller", "enas_controller_no_reward", "oneshot")}
    memory = []
    for tokens in paths:
        child = child_step(tokens, x, y)
        spos_sh.sample_path = spos_sep.sample_path = (lambda t=tokens: t)
        fair_paths = fair.fair_paths()
        fair.fair_paths = lambda p=fair_paths: p
        fair_children = [child_step(p, x, y) for p in fair_paths]
        en_tokens = en.sample_tokens()
        en.sample_path = lambda t=en_tokens: t
        en_child = child_step(en_tokens, x, y)
        kinds = {
            "child": child,
            "spos_shared": lambda: spos_sh.weight_step((x, y), opt_sh),
            "spos_separate": lambda: spos_sep.weight_step((x, y), opt_sep),
            "fairnas": lambda: fair.weight_step((x, y), opt_fair),
            "fairnas_children": lambda: [c() for c in fair_children],
            "enas_weight": lambda: (en.sample_tokens(), en.weight_step((x, y), opt_en)),
            "enas_child": en_child,
            "enas_controller": lambda: en.arch_step(xv, yv),
            "oneshot": lambda: one.weight_step((x, y), opt_one),
        }
        for fn in kinds.values():  # warm-up
            fn()
        per = {k: [] for k in kinds}
        per["enas_controller_no_reward"] = []
        real = enas_mod.batch_statistics_accuracy
        for _ in range(args.repeats):
            for k, fn in kinds.items():
                per[k].append(timed(fn))
            enas_mod.batch_statistics_accuracy = lambda model, a, b: 0.5
            try:
                per["enas_controller_no_reward"].append(timed(lambda: en.arch_step(xv, yv)))
            finally:
                enas_mod.batch_statistics_accuracy = real
        for k, v in per.items():
            results[k].append(statistics.median(v))
        memory.append({
            "child": activation_bytes(lambda: _fwd_bwd_child(tokens, x, y)),
            "spos_shared": activation_bytes(lambda: spos_sh.weight_step((x, y), opt_sh)),
            "spos_separate": activation_bytes(lambda: spos_sep.weight_step((x, y), opt_sep)),
        })
    med = {k: statistics.mean(v) for k, v in results.items()}
    m = len(fair.fair_paths())
    ratios = {
        "spos_shared / child": med["spos_shared"] / med["child"],
        "spos_separate / child": med["spos_separate"] / med["child"],
        f"fairnas / sum of its m={m} children": med["fairnas"] / med["fairnas_children"],
        "enas weight step / its child": med["enas_weight"] / med["enas_child"],
        "enas controller step / child": med["enas_controller"] / med["enas_child"],
        "enas controller step without the reward forward / child": med["enas_controller_no_reward"] / med["enas_child"],
        "oneshot / child": med["oneshot"] / med["child"],
        "spos_shared memory / child": statistics.mean(r["spos_shared"] / r["child"] for r in memory),
        "spos_separate memory / child": statistics.mean(r["spos_separate"] / r["child"] for r in memory),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Sampling methods: weight-step cost and memory beside their children", "",
             f"proxyless width 0.5, 32x32, batch 32, 10 classes; {args.threads} threads; {args.paths} random paths, "
             f"{args.repeats} round-robin rounds each (median per path, mean over paths). "
             f"`python tools/sampling_step_cost.py --out {out}`; torch {torch.__version__}.", "",
             "| step | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in med.items()]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    lines += ["", "Memory (MiB saved for backward, per path): " + "; ".join(
        f"child {r['child'] / 2**20:.1f}, spos shared {r['spos_shared'] / 2**20:.1f}, separate "
        f"{r['spos_separate'] / 2**20:.1f}" for r in memory)]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"ms": med, "ratios": ratios, "memory": memory}, indent=2) + "\n")
    print("\n".join(lines))


def _fwd_bwd_child(tokens, x, y):
    model = build_child(Arch("proxyless", get_space("proxyless").resolve_config(CFG), tokens), resolution=32).train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


if __name__ == "__main__":
    main()
