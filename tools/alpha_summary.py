"""Summarize how far a cell-space search moved its alphas: per method run directory (arch_history.jsonl, last
epoch) the mean largest op probability per edge, the entropy over the ops left, p(skip_connect) on the normal
cell's edges, and the skip share of the paper's top-2 derivation without a latency constraint.

    python tools/alpha_summary.py RUN_ROOT darts pcdarts gdas pdarts
"""
import json, sys, numpy as np
root = sys.argv[1]
from hwnas.spaces.cell import derive_genotype
from hwnas.spaces.cell_ops import OPS
print("| method | epoch | mean largest p (uniform 0.125) | mean entropy / log(ops left) | normal edges: mean p(skip) / p(sep_conv_3x3) | normal edges whose top op is skip | unconstrained top-2 skip share |")
print("|---|---|---|---|---|---|---|")
for m in sys.argv[2:]:
    lines = [json.loads(l) for l in open(f"{root}/{m}/arch_history.jsonl")]
    last = lines[-1]
    W = [np.array(p, float) for p in last["probs"]]  # pcdarts: softmax(alpha) x its edge weight (beta)
    P = [w / w.sum() for w in W]
    normal = P[:14]
    full = [p for p in P if len(p) == 8]
    ent = np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() / np.log((p > 0).sum()) for p in P])
    top = np.mean([p.max() for p in P])
    if len(normal[0]) == 8:
        skip = np.mean([p[OPS.index('skip_connect')] for p in normal]); sep = np.mean([p[OPS.index('sep_conv_3x3')] for p in normal])
        topskip = sum(int(np.argmax(p) == OPS.index('skip_connect')) for p in normal)
    else:
        skip = sep = float("nan"); topskip = "-"
    # the paper's derivation (hwnas.spaces.cell.derive_genotype) on the logged weights: for pcdarts they are
    # softmax(alpha) x edge weight, so their log is the log-probability plus the edge's log weight
    normal_edges = []
    if len(W) == 28 and all(len(w) == 8 for w in W):
        with np.errstate(divide="ignore"):
            normal_edges = [t for t in derive_genotype([np.log(w) for w in W])[:14] if t != "none"]
    share = f"{sum(e == 'skip_connect' for e in normal_edges) / len(normal_edges):.0%}" if len(normal_edges) == 8 else "-"
    print(f"| {m} | {last['epoch']} | {top:.3f} | {ent:.3f} | {skip:.3f} / {sep:.3f} | {topskip} of 14 | {share} |")
