"""Benchmark: what each supervision type costs per training step on the same network and batch, and our
confusion-matrix metric against torchmetrics.

    python -m label_efficient_seg.bench                     # 8 x 96^2 batch, base-8 U-Net, 5 repeats
    python -m label_efficient_seg.bench --size 128 --base 16 --out reports/label_efficient_seg

Step times are measured side by side (``common.bench.compare``: warm-up, interleaved repeats, median) and
reported as ratios to the fully supervised step, so background load hits every method alike. Peak RSS is
measured per method after resetting VmHWM (Linux): the peak one step adds above the resident baseline
(the first step of each method also allocates its optimizer state).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common.bench import compare, current_rss_bytes, format_bytes, peak_rss_bytes, reset_peak_rss, time_fn
from common.runinfo import hardware_summary

from . import data as D
from . import methods as Mth
from .experiment import MethodConfig, ModelConfig, _objective, build_model
from .metrics import confusion_matrix


def _batch(method: str, size: int, batch: int, num_classes: int, seed: int = 0) -> dict:
    """A collated training batch of synthetic shapes carrying the weak label this method reads."""
    ds = D.synthetic_shapes(batch, size, num_classes, seed=seed, max_shapes=4)
    kind = {"boxinst": "boxes", "scribbles": "scribbles", "points": "points", "noisy_gce": "noisy"}.get(method, "full")
    weak = D.make_weak_labels(ds, kind, seed)
    items = [D.SegDataset(ds, weak, crop=None, augment=False, tags=True)[i] for i in range(batch)]
    b = torch.utils.data.default_collate(items)
    b["u_image"] = b["image"].flip(0)
    b["u_valid"] = b["valid"]
    return b


METHODS = ["full", "scribbles", "points", "boxinst", "noisy_gce", "fixmatch", "mean_teacher", "cps", "minent",
           "iic", "cam_classifier"]


def _step_fn(method: str, size: int, batch: int, base: int):
    binary = method in ("boxinst", "points", "minent")
    c = 2 if binary else 3
    name = {"noisy_gce": "noisy", "cam_classifier": "full"}.get(method, method)
    mc = MethodConfig(name=name, loss="gce" if method == "noisy_gce" else "ce")
    torch.manual_seed(0)
    model = build_model(mc, ModelConfig(base=base, depth=4), c)
    obj = Mth.TagClassifier() if method == "cam_classifier" else _objective(mc, Mth.Ramp())  # every term on: the cost of a full step
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    b = _batch(method, size, batch, c)
    model.train()

    def step():
        out = obj(model, b)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    return step


def run(size: int = 96, batch: int = 8, base: int = 8, repeats: int = 5, methods=None) -> dict:
    methods = list(methods or METHODS)
    steps = {m: _step_fn(m, size, batch, base) for m in methods}
    memory = {}
    for m, fn in steps.items():
        reset_peak_rss()
        before = current_rss_bytes()
        fn()
        memory[m] = max(0, peak_rss_bytes() - before)  # memory one step adds above the resident baseline
    timings = compare(steps, warmup=1, repeats=repeats, items_per_call=batch)
    ref = timings["full"].median if "full" in timings else None
    rows = {m: {"step_s": t.median, "images_per_s": t.throughput,
                "ratio_to_full": (t.median / ref) if ref else None, "peak_rss": memory[m]}
            for m, t in timings.items()}
    # metric: dataset-level confusion matrix, ours (bincount) vs torchmetrics, on CamVid-sized label maps
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 11, (16, 180, 240), generator=g)
    pred = torch.randint(0, 11, (16, 180, 240), generator=g)
    metric = {"ours_s": time_fn(lambda: confusion_matrix(pred, target, 11), repeats=repeats).median}
    try:
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        t = compare({"ours": lambda: confusion_matrix(pred, target, 11),
                     "torchmetrics": lambda: multiclass_confusion_matrix(pred, target, 11, ignore_index=255)},
                    repeats=repeats)
        metric = {"ours_s": t["ours"].median, "torchmetrics_s": t["torchmetrics"].median,
                  "speedup": t["torchmetrics"].median / t["ours"].median}
    except ImportError:
        pass
    return {"size": size, "batch": batch, "base": base, "repeats": repeats, "hardware": hardware_summary(),
            "threads": torch.get_num_threads(), "steps": rows, "confusion_matrix_16x180x240": metric}


def to_markdown(res: dict) -> str:
    lines = [f"Training step, batch {res['batch']} x {res['size']}^2, U-Net base {res['base']} depth 4, "
             f"{res['threads']} thread(s), median of {res['repeats']} interleaved repeats; {res['hardware']}.", "",
             "| method | step (s) | images/s | time vs full supervision | peak RSS added by a step |", "|---|---|---|---|---|"]
    for m, r in res["steps"].items():
        ratio = f"{r['ratio_to_full']:.2f}x" if r["ratio_to_full"] else "—"
        lines.append(f"| {m} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {ratio} | {format_bytes(r['peak_rss'])} |")
    cm = res["confusion_matrix_16x180x240"]
    lines += ["", "Confusion matrix over 16 CamVid-sized maps (691k px): ours "
              f"{cm['ours_s'] * 1e3:.1f} ms" + (f", torchmetrics {cm['torchmetrics_s'] * 1e3:.1f} ms "
                                                f"(ours {cm['speedup']:.2f}x faster)" if "torchmetrics_s" in cm else "")]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m label_efficient_seg.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=None, choices=METHODS)
    ap.add_argument("--out", default="reports/label_efficient_seg")
    args = ap.parse_args(argv)
    res = run(args.size, args.batch, args.base, args.repeats, args.methods)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / "bench.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
