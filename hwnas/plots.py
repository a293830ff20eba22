"""Plots of a run directory; a convenience beside the data they are drawn from (matplotlib optional)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from hwnas.runs import run_config
from hwnas.spaces import get_space


def plot_arch_history(run_dir: str | os.PathLike) -> Path | None:
    """``alpha_evolution.png``: every decision's candidate probabilities per epoch (from
    arch_history.jsonl), one small panel per decision. None if matplotlib is missing or the strategy
    recorded no probabilities."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; the data is in arch_history.jsonl
        return None
    run_dir = Path(run_dir)
    path = run_dir / "arch_history.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or "probs" not in rows[0]:
        return None
    cfg = run_config(run_dir)
    decisions = get_space(cfg.get("space", "proxyless")).decisions(cfg.get("deploy_config") or {})
    names, choices = [d.name for d in decisions], [d.choices for d in decisions]
    n = len(rows[0]["probs"])
    cols = 7 if n > 14 else min(n, 5)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 1.9 * nrows), sharex=True, sharey=True, squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for i in range(n):
        ax = axes[i // cols][i % cols]
        for j in range(len(rows[0]["probs"][i])):
            ax.plot(epochs, [r["probs"][i][j] for r in rows], label=choices[i][j] if i < len(choices) else str(j))
        ax.set_title(names[i] if i < len(names) else str(i), fontsize=7)
        ax.tick_params(labelsize=6)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=7)
    fig.suptitle(f"{cfg.get('method', '')}: candidate probabilities per epoch", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = run_dir / "alpha_evolution.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
