"""Figures of the reproduce reports: the image / ground truth / weak label / prediction grid per method,
and a bar chart of each method's score as a percentage of full supervision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import IGNORE_INDEX

# CamVid's SegNet colours for the 11 classes; binary tasks use blue / white; ignore (unlabelled) is black
CAMVID_COLOURS = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                           [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
                           [0, 128, 192]], dtype=np.uint8)
BINARY_COLOURS = np.array([[50, 60, 150], [255, 255, 255]], dtype=np.uint8)
IGNORE_COLOUR = np.array([15, 15, 15], dtype=np.uint8)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (PNG, 90 dpi, parents created) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def colourize(label: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB image of a label map (ignore = grey; classes beyond the palette cycle through it)."""
    pal = BINARY_COLOURS if num_classes == 2 else CAMVID_COLOURS
    out = pal[np.where(label == IGNORE_INDEX, 0, label) % len(pal)].copy()
    out[label == IGNORE_INDEX] = IGNORE_COLOUR
    return out


def example_grid(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """One row per method: ``{"name", "image", "gt", "weak", "pred", "num_classes"}`` (weak may be None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["image", "ground truth", "weak label", "prediction"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        k = row["num_classes"]
        panels = [row["image"], colourize(row["gt"], k),
                  colourize(row["weak"], k) if row.get("weak") is not None else np.full_like(row["image"], 15),
                  colourize(row["pred"], k)]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(row["name"], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def percent_of_full_bars(names: list[str], percents: list[float], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), percents, color="#4a7ab5")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(100, color="k", lw=0.8, ls="--")
    ax.set_xlabel("% of full supervision (same network, data, budget)")
    ax.invert_yaxis()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def learning_curve_plot(curve: list[tuple[int, float]], budget: int, path: str | Path) -> Path:
    """Validation score against training steps (the budget's learning curve), with the chosen budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    steps, vals = zip(*curve) if curve else ((), ())
    ax.plot(steps, vals, marker="o", ms=3)
    ax.axvline(budget, color="k", lw=0.8, ls="--", label=f"budget {budget} steps")
    ax.set_xlabel("optimizer step (batch 8)")
    ax.set_ylabel("CamVid val mIoU")
    ax.set_title("camvid/full learning curve on validation", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
