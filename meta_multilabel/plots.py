"""Plots of the learned policies (against label frequency and hierarchy depth) and of the reward curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meta_multilabel.data import label_depths  # noqa: E402


def plot_policies(task, weights, thresholds, path: str | Path, title: str = "") -> Path:
    """Per-label w_j and τ_j against training frequency (log scale), coloured by hierarchy depth."""
    counts = np.maximum(task.train_counts, 1)
    depth = np.array(label_depths(task.label_names))
    panels = [("threshold τ_j", np.asarray(thresholds))]
    if weights is not None:
        panels.insert(0, ("weight w_j", np.asarray(weights)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels):
        sc = ax.scatter(counts, values, c=depth, cmap="viridis", s=18)
        ax.set_xscale("log")
        ax.set_xlabel("training positives of the label")
        ax.set_ylabel(label)
        if depth.max() > 1:
            fig.colorbar(sc, ax=ax, label="hierarchy depth")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_rewards(history: list[dict], path: str | Path) -> Path:
    """Reward, baseline and the D_meta selection score per episode."""
    ep = [h["episode"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [h["reward"] for h in history], label="reward (mean)", lw=0.8)
    ax.plot(ep, [h["baseline"] for h in history], label="baseline", lw=1.2)
    ax.plot(ep, [h["meta/select_score"] for h in history], label="D_meta score at μ^τ", lw=1.2)
    ax.set_xlabel("episode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
