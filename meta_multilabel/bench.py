"""What the meta-learner costs on top of plain training, measured side by side (``common.bench``).

``python -m meta_multilabel.bench [--data reuters|synthetic] [--repeats 5]`` times, interleaved:

* one classifier epoch with the uniform BCE (``torch``'s ``BCEWithLogits``: the reference) and with the
  meta-learner's per-label weighted BCE: the training policy should cost nothing;
* the meta step of one episode (label states, GRU over the labels, sampling, ``threshold_samples``
  rewards on D_meta, REINFORCE update) against that epoch: the meta-learner's overhead ratio;
* one episode checkpoint (classifier + Adam state + meta-learner + kept best model).

It reports medians, throughput (training documents per second) and peak RSS, and writes
``reports/meta_multilabel/bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.bench import compare, format_bytes, peak_rss_bytes, time_fn
from common.checkpoint import CheckpointManager, capture_rng_state
from common.runinfo import hardware_summary
from meta_multilabel.meta import (
    ClassifierConfig,
    MetaConfig,
    label_order,
    label_states,
    new_classifier,
    policy_gradient_step,
    predict_probs,
    propose_policy,
    train_epochs,
)
from meta_multilabel.model import MetaLearner
from meta_multilabel.pipeline import DataConfig, FeaturesConfig, prepare_task


def _task(name: str, data_dir: str | None):
    if name == "synthetic":
        return prepare_task(DataConfig(format="synthetic", name="synthetic"), FeaturesConfig(kind="raw"),
                            progress_bar=False)
    return prepare_task(DataConfig(), FeaturesConfig(), data_dir=data_dir, progress_bar=False)


def run_bench(data: str = "reuters", repeats: int = 5, data_dir: str | None = None) -> dict:
    torch.set_num_threads(1)
    task = _task(data, data_dir)
    clf_cfg, meta_cfg = ClassifierConfig(lr=0.05), MetaConfig()
    model, opt = new_classifier(task, clf_cfg, seed=0)
    X, Y = task.X["train"], task.Y["train"]
    Yt = torch.from_numpy(Y.astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(task.num_labels, generator=gen) * 2

    def epoch_reference():  # the plain loop with torch's BCEWithLogits (mean over labels, rescaled)
        model.train()
        perm = torch.randperm(len(X), generator=gen).numpy()
        for s in range(0, len(perm), clf_cfg.batch_size):
            idx = perm[s:s + clf_cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(X.batch(idx)), Yt[idx]) * task.num_labels
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def epoch_weighted():
        train_epochs(model, opt, X, Y, epochs=1, batch_size=clf_cfg.batch_size, generator=gen, weights=w)

    epochs = compare({"epoch, torch BCEWithLogits (reference)": epoch_reference,
                      "epoch, weighted BCE (ours)": epoch_weighted}, warmup=1, repeats=repeats,
                     items_per_call=len(X))

    meta = MetaLearner(task.num_labels, hidden=meta_cfg.hidden, label_dim=meta_cfg.label_dim)
    meta_opt = torch.optim.Adam(meta.parameters(), lr=meta_cfg.lr)
    order = torch.from_numpy(label_order("auto", task, 0).copy())
    probs_meta = predict_probs(model, task.X["meta"])
    state = {"baseline": None}

    def meta_step():
        states = label_states(probs_meta, task.Y["meta"], np.full(task.num_labels, 0.5), np.ones(task.num_labels),
                              meta_cfg.w_max)
        proposal = propose_policy(meta, states, order, meta_cfg, gen)
        _, state["baseline"], _ = policy_gradient_step(meta, meta_opt, proposal, probs_meta, task.Y["meta"],
                                                       state["baseline"], meta_cfg, gen)

    def score_meta():
        predict_probs(model, task.X["meta"])

    others = {"meta step (states, GRU, 8 rewards, update)": time_fn(meta_step, repeats=repeats),
              "D_meta scoring (forward)": time_fn(score_meta, repeats=repeats)}
    with tempfile.TemporaryDirectory() as d:
        ckpt = CheckpointManager(d, keep_last=2)
        step = {"n": 0}

        def save():
            step["n"] += 1
            ckpt.save(step["n"], {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "meta": meta.state_dict(), "meta_optimizer": meta_opt.state_dict(),
                                  "best": {"model": model.state_dict()}, "rng": capture_rng_state()})

        others["episode checkpoint (atomic save)"] = time_fn(save, repeats=repeats)
    ref = epochs["epoch, torch BCEWithLogits (reference)"].median
    rows = {name: {**t.as_dict(), "ratio_to_reference_epoch": t.median / ref} for name, t in
            {**epochs, **others}.items()}
    inner = meta_cfg.inner_epochs
    weighted_epoch = epochs["epoch, weighted BCE (ours)"].median
    meta_extra = sum(t.median for t in others.values())
    episode = inner * weighted_epoch + meta_extra
    return {"data": data, "n_train": len(X), "num_labels": task.num_labels, "feature_dim": X.dim,
            "timings": rows, "episode_seconds_estimate": episode,
            "meta_overhead_per_episode": meta_extra / (inner * weighted_epoch), "inner_epochs": inner,
            "peak_rss_bytes": peak_rss_bytes(), "hardware": hardware_summary()}


def to_markdown(res: dict) -> str:
    lines = [f"# meta_multilabel benchmark ({res['data']}: {res['n_train']} training items, {res['num_labels']} "
             f"labels, {res['feature_dim']} features)", "",
             f"Hardware: {res['hardware']}. Cores were shared with other engineers' runs: provisional numbers.", "",
             "| what | median s | items/s | × reference epoch |", "|---|---|---|---|"]
    for name, t in res["timings"].items():
        thr = f"{t['throughput_per_s']:.0f}" if t.get("throughput_per_s") else "—"
        lines.append(f"| {name} | {t['median_s']:.4f} | {thr} | {t['ratio_to_reference_epoch']:.3f} |")
    lines += ["", f"One episode (K = {res['inner_epochs']} inner epochs + meta step + scoring + checkpoint): "
                  f"≈ {res['episode_seconds_estimate']:.2f} s; the meta-learner's own work (meta step, scoring, "
                  f"checkpoint) adds {res['meta_overhead_per_episode']:.1%} to the K weighted epochs. Peak RSS {format_bytes(res['peak_rss_bytes'])}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m meta_multilabel.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["reuters", "synthetic"], default="reuters")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out-dir", default="reports/meta_multilabel")
    args = ap.parse_args(argv)
    res = run_bench(args.data, args.repeats, args.data_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(res)
    (out / "bench.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
