"""Figures users look at: class balance, learning curves, confusion matrices (PNG, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, pipelines and servers have no display
import matplotlib.pyplot as plt


def class_balance(counts: dict[str, dict[str, int]], out: str | Path, title: str = "Class balance") -> Path:
    """Grouped bars of images per class for each split; log scale shows the rare classes."""
    out = Path(out)
    splits = list(counts)
    classes = list(next(iter(counts.values())))
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, split in enumerate(splits):
        xs = [i + k * width for i in range(len(classes))]
        bars = ax.bar(
            xs,
            [counts[split][c] for c in classes],
            width,
            label=f"{split} (n={sum(counts[split].values())})",
        )
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(classes))], classes, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("images (log scale)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
