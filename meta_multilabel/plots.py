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
    if depth.max() > 1:
        plot_hierarchy(task, weights, thresholds, Path(path).with_name(Path(path).stem + "_hierarchy.png"), title)
    return Path(path)


def plot_hierarchy(task, weights, thresholds, path: str | Path, title: str = "") -> Path:
    """τ_j (and w_j) per type in hierarchy pre-order (each parent followed by its children, marked "·"), so a parent's policy can be read beside its subtypes'."""
    parents = task.parents
    children: dict[int, list[int]] = {}
    for j, p in enumerate(parents):
        children.setdefault(p, []).append(j)
    order: list[int] = []

    def visit(p: int) -> None:
        for c in sorted(children.get(p, []), key=lambda j: task.label_names[j]):
            order.append(c)
            visit(c)

    visit(-1)
    depth = np.array(label_depths(task.label_names))
    names = [("· " * (depth[j] - 1)) + task.label_names[j].rsplit("/", 1)[-1] for j in order]
    panels = [("threshold τ_j", np.asarray(thresholds))] + ([("weight w_j", np.asarray(weights))] if weights else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.22 * len(order) + 1.5), squeeze=False,
                             sharey=True)
    colours = plt.cm.viridis((depth[order] - 1) / max(1, depth.max() - 1))
    for ax, (label, values) in zip(axes[0], panels):
        ax.barh(np.arange(len(order)), values[order], color=colours)
        ax.set_xlabel(label)
    axes[0][0].invert_yaxis()  # shared y axis: invert once, so the walk reads top to bottom
    axes[0][0].set_yticks(np.arange(len(order)), names, fontsize=7)
    fig.suptitle(f"{title}: policies along the type hierarchy (parents dark, children light)", fontsize=9)
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
