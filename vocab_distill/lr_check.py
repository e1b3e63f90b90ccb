"""Fine-tune one exported model at several learning rates with the pipeline's recipe (AdamW, 10 % warmup,
linear decay, batch 32, the same train subset), to tell a student that cannot learn a task from one that
the fine-tuning learning rate failed:

    python -m vocab_distill.lr_check runs/reproduce/vocab_distill/full/stage2_dual_proj_d192/export \
        --task sst2 --lrs 1e-3 3e-4 1e-4 --seeds 0

Each run goes to ``<out>/<task>/lr<lr>_seed<seed>`` (resumable) and the table to ``<out>/lr_check.json``. A
diagnostic, not a model selection: SST-2 reports dev, so picking the best learning rate here would tune on
the reported split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.config import TrainerConfig

from .finetune import TASKS, finetune


def lr_check(model_dir: str | Path, task: str, lrs: list[float], seeds: list[int], out: str | Path, *,
             epochs: int = 2, train_limit: int | None = 10_000, batch_size: int = 32, max_len: int = 64,
             num_threads: int = 1, data_dir=None, eval_limit: int | None = None,
             progress_bar: bool = True) -> list[dict]:
    """Rows ``{lr, seed, dev_acc[, test_acc]}``, one per learning rate and seed."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    data = TASKS[task](data_dir, train_limit=train_limit, eval_limit=eval_limit)
    rows = []
    for lr in lrs:
        for seed in seeds:
            cfg = TrainerConfig(seed=seed, max_epochs=epochs, batch_size=batch_size, num_threads=num_threads,
                                progress_bar=progress_bar)
            run_dir = Path(out) / task / f"lr{lr:g}_seed{seed}"
            rows.append({"lr": lr, "seed": seed, **finetune(model_dir, data, cfg, run_dir, lr=lr, max_len=max_len,
                                                            resume="auto")})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "lr_check.json").write_text(json.dumps({"model_dir": str(model_dir), "task": task, "rows": rows},
                                                        indent=1))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="an exported model folder (config.json, model.safetensors, vocab.txt)")
    ap.add_argument("--task", default="sst2", choices=sorted(TASKS))
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/vocab_distill_lr_check")
    a = ap.parse_args(argv)
    if not (Path(a.model_dir) / "config.json").is_file():
        raise SystemExit(f"{a.model_dir}: no config.json; pass an exported model folder (…/export)")
    rows = lr_check(a.model_dir, a.task, a.lrs, a.seeds, a.out, epochs=a.epochs, train_limit=a.train_limit,
                    num_threads=a.threads)
    metric = "test_acc" if "test_acc" in rows[0] else "dev_acc"
    print(f"| lr | seed | {metric} |\n|---|---|---|")
    for r in rows:
        print(f"| {r['lr']:g} | {r['seed']} | {100 * r[metric]:.2f} |")


if __name__ == "__main__":
    main()
