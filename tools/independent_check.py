"""Hold a table's calibrated predictions against networks timed the way a user times a deployed model:
each network alone in a fresh Python process, after the validation, with architectures the validation
never sampled (another seed, uniform or spread sampling).

    python tools/independent_check.py --table latency_tables/<dev>/torch/proxyless-r224-b1-fp32.csv -n 12

Each network is built and timed by a child process (``--one``): ``measure_interleaved`` on that network
alone (warm-up 10, 100 calls in 5 rounds of >= 1 s), read at the table's statistic; torch CPU processes
keep glibc's heap as the table's profile did (``hwnas.latency.measure.allocator``). Prints one line per network
and the share within +-5% / +-10% and the mean error. With --no-references the parent does nothing else;
by default it also times the table's reference networks (in the same child, after the network) so the
figure can be read against the machine's drift since the validation.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np


def _one(table_path: str, tokens: list[str], references: bool) -> dict:
    import torch

    from hwnas.latency.drift import measure_drift
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.measure.timing import Runner, measure_interleaved
    from hwnas.latency.validation import table_runtime
    from hwnas.spaces import Arch, get_space
    from hwnas.spaces.builder import build_child

    table = LatencyTable.load(table_path)
    meta = table.meta
    space = get_space(meta["space"])
    config = space.resolve_config({**(meta.get("config") or {}), "resolution": meta["resolution"]})
    mode, provider = table_runtime(meta)
    threads, res, stat = int(meta.get("threads", 1)), int(meta["resolution"]), table.statistic
    torch.set_num_threads(threads)

    def runner(net):
        return Runner(net, (1, 3, res, res), backend=meta["backend"], device="cpu", threads=threads,
                      dtype=meta.get("dtype", "fp32"), mode=mode, provider=provider)

    alone = measure_interleaved([runner(build_child(Arch(space.name, config, tokens)))], warmup=10, iterations=100,
                                rounds=5, min_round_s=1.0)[0][stat]
    out = {"measured_ms": alone}
    if references and (meta.get("calibration") or {}).get("references"):
        out["drift"] = measure_drift(table, iterations=50)["factor"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", required=True)
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1000, help="sampling seed (validations use 0)")
    ap.add_argument("--sampling", default="uniform", choices=["uniform", "spread"])
    ap.add_argument("--no-references", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args.table, args.one.split(" "), not args.no_references)))
        return

    from hwnas.latency.predictor import LatencyModel
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.validation import sample_archs
    from hwnas.spaces import get_space

    table = LatencyTable.load(args.table)
    space = get_space(table.meta["space"])
    config = space.resolve_config({**(table.meta.get("config") or {}), "resolution": table.meta["resolution"]})
    model = LatencyModel(table, space, config)
    archs = sample_archs(space, config, args.n, args.seed, sampling=args.sampling,
                         model=LatencyModel(table, space, config, calibrated=False))
    errors, comp = [], []
    print(f"{'pred ms':>8} {'meas ms':>8} {'meas/pred':>9} {'drift':>6} {'comp/pred':>9}  architecture")
    for tokens in archs:
        cmd = [sys.executable, __file__, "--table", args.table, "--one", " ".join(tokens)]
        if args.no_references:
            cmd.append("--no-references")
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        pred = model.of_tokens(tokens)
        err = res["measured_ms"] / pred - 1
        errors.append(err)
        drift = res.get("drift")
        c = (res["measured_ms"] / drift) / pred - 1 if drift else float("nan")
        comp.append(c)
        print(f"{pred:8.3f} {res['measured_ms']:8.3f} {err:+9.1%} {drift or float('nan'):6.3f} {c:+9.1%}  {' '.join(tokens)}",
              flush=True)
    e, c = np.abs(np.array(errors)), np.abs(np.array(comp))
    print(f"raw: {np.mean(e <= 0.05):.0%} within +-5%, {np.mean(e <= 0.10):.0%} within +-10%, mean error "
          f"{np.mean(errors):+.1%} ({len(errors)} networks, each alone in a fresh process)")
    if np.all(np.isfinite(c)):
        print(f"drift-compensated: {np.mean(c <= 0.05):.0%} within +-5%, {np.mean(c <= 0.10):.0%} within +-10%, "
              f"mean error {np.mean(comp):+.1%}")


if __name__ == "__main__":
    main()
