"""Loss curve PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(steps: list[dict[str, Any]], epochs: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Per-step training loss, per-epoch train/val loss, grad norm on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    if steps:
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8, alpha=0.6, label="train (step)")
        ax2.plot([s["step"] for s in steps], [s["grad_norm"] for s in steps], lw=0.8, color="gray")
    if epochs:
        x = [e["step"] for e in epochs]
        ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="train (epoch)")
        ax.plot(x, [e["val_loss"] for e in epochs], "s-", label="val (epoch)")
        for e in epochs:
            if e.get("checkpoint") and not e.get("pruned"):
                ax.annotate(f"ep{e['epoch']}", (e["step"], e["val_loss"]), fontsize=7)
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title(title)
    ax2.set_ylabel("grad norm")
    ax2.set_xlabel("optimizer step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
