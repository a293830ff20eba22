"""How glibc's heap regime changes torch eager CPU latency, and whether blocks add up to networks.

For ``--n`` random architectures of a space (spread over its latency range by the shipped torch table),
each network is timed whole (``--iterations`` calls after 10 warm-up calls; p10/p50/p90) and then block
by block in place (forward hooks on the network's top-level children, the same number of calls; the
per-child p10s and p50s summed). Run it twice, once with ``HWNAS_KEEP_HEAP=0`` (glibc's defaults) and
once without (hwnas's kept heap, ``hwnas/latency/measure/allocator.py``), each in its own process since the
setting is process-wide::

    HWNAS_KEEP_HEAP=0 python tools/torch_heap_effect.py --space proxyless
    python tools/torch_heap_effect.py --space proxyless

Prints one JSON line per network and a summary line: the whole network's p10 and its p50/p10 spread, and
the in-place sum of p10s over the whole network's p10 (1.0: the blocks add up).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from hwnas.latency.measure.allocator import heap_regime
from hwnas.latency.measure.timing import Runner, summarize
from hwnas.latency.predictor import LatencyModel
from hwnas.latency.table import LatencyTable
from hwnas.latency.validation import sample_archs
from hwnas.spaces import Arch, get_space
from hwnas.spaces.builder import build_child


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--table", default=None, help="default: the shipped torch table of the space")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=60)
    args = ap.parse_args()
    path = args.table or f"latency_tables/cpu-amd-epyc-2t/torch/{args.space}-r224-b1-fp32.csv"
    table = LatencyTable.load(path)
    space = get_space(args.space)
    config = dict(table.meta.get("config") or {})
    res = int(table.meta["resolution"])
    model = LatencyModel(table, space, config, calibrated=False)
    archs = sample_archs(space, config, args.n, 0, sampling="spread", model=model)
    rows = []
    for tokens in archs:
        runner = Runner(build_child(Arch(args.space, config, tokens)), (1, 3, res, res), backend="torch",
                        threads=args.threads)
        whole = summarize(runner.samples(args.iterations, 10))
        net, times = runner._module, {}

        def pre(m, _inputs):
            m._hwnas_t0 = time.perf_counter_ns()

        def post(m, _inputs, _output):
            times.setdefault(id(m), []).append((time.perf_counter_ns() - m._hwnas_t0) / 1e6)

        hooks = [h for m in net.children() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        torch.set_num_threads(args.threads)
        with torch.inference_mode():
            for k in range(10 + args.iterations):
                net(runner._inputs[k % len(runner._inputs)])
        for h in hooks:
            h.remove()
        in_place = {q: sum(float(np.percentile(v[10:], int(q[1:]))) for v in times.values()) for q in ("p10", "p50")}
        row = {"predicted_sum_ms": model.of_tokens(tokens), "whole_p10": whole["p10"], "whole_p50": whole["p50"],
               "whole_p90": whole["p90"], "in_place_sum_p10": in_place["p10"], "in_place_sum_p50": in_place["p50"]}
        rows.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    spread = np.array([r["whole_p50"] / r["whole_p10"] for r in rows])
    adds = np.array([r["in_place_sum_p10"] / r["whole_p10"] for r in rows])
    print(json.dumps({"heap": heap_regime(), "space": args.space, "threads": args.threads, "networks": len(rows),
                      "mean_whole_p10_ms": round(float(np.mean([r["whole_p10"] for r in rows])), 3),
                      "p50_over_p10": [round(float(spread.min()), 3), round(float(spread.max()), 3)],
                      "in_place_sum_over_whole": [round(float(adds.min()), 3), round(float(adds.max()), 3)]}))


if __name__ == "__main__":
    main()
