"""Time single blocks of a space in many spaced rounds and show how their statistics move between rounds:
why two profiles of one table can disagree on a row's median while agreeing on its p10.

    python tools/block_modes.py --space proxyless --backend onnxruntime --threads 1 "k5e3:96>96:s1:r14:relu6"

Each block: 30 rounds of 100 calls (3 untimed first), 1 s apart. Prints the pooled p10/p50/p90, the spread
of the per-round p10 and p50, a histogram of all calls (1st-99th percentile), and the p50/p10 of six
windows of 5 consecutive rounds (what one 5-round profile of the block would read at different times).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hwnas.latency.measure.timing import Runner
from hwnas.latency.tables import space_blocks
from hwnas.spaces import get_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("signatures", nargs="+")
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    space = get_space(args.space)
    blocks = {b.signature: b for b in space_blocks(space, space.resolve_config({"resolution": args.resolution}))}
    for sig in args.signatures:
        if sig not in blocks:
            raise SystemExit(f"block_modes: no block {sig!r} in space {args.space!r} at {args.resolution}")
        b = blocks[sig]
        r = Runner(b.build(), b.input_shape, backend=args.backend, device="cpu", threads=args.threads)
        r.samples(50, warmup=20)
        rounds = []
        for _ in range(args.rounds):
            rounds.append(r.samples(args.calls, warmup=3))
            time.sleep(1.0)
        calls = np.concatenate(rounds)
        p10s = [np.percentile(x, 10) for x in rounds]
        p50s = [np.percentile(x, 50) for x in rounds]
        print(sig)
        print(f"  all {len(calls)} calls: p10 {np.percentile(calls, 10):.4f} p50 {np.percentile(calls, 50):.4f} "
              f"p90 {np.percentile(calls, 90):.4f} ms")
        print(f"  per round p10: {min(p10s):.4f}-{max(p10s):.4f} (spread {max(p10s) / min(p10s) - 1:+.1%}); "
              f"p50: {min(p50s):.4f}-{max(p50s):.4f} (spread {max(p50s) / min(p50s) - 1:+.1%})")
        h, e = np.histogram(calls, bins=12, range=(np.percentile(calls, 1), np.percentile(calls, 99)))
        print(f"  histogram {e[0]:.3f}..{e[-1]:.3f} ms, 12 bins: {' '.join(str(x) for x in h)}")
        windows = [np.concatenate(rounds[k:k + 5]) for k in range(0, len(rounds) - 4, 5)]
        print(f"  5-round windows: p50 {' '.join(f'{np.percentile(w, 50):.4f}' for w in windows)}; "
              f"p10 {' '.join(f'{np.percentile(w, 10):.4f}' for w in windows)}")


if __name__ == "__main__":
    main()
