"""Reproduce the paper's comparison at a chosen scale: ``python -m meta_multilabel.reproduce --profile P``.

Each profile runs every (data set, method, seed) cell into ``<work_dir>/<data>/<method>/seed<k>`` (resumable:
a finished cell is read back from its ``results.json``, an unfinished one continues from its checkpoint),
then writes ``report.md`` with mean and 95% CI over seeds (common.stats) and the paired comparison of M
against B2 (per-label thresholds tuned on D_meta), the strongest non-learned baseline.

The paper's result tables were not retrieved (see the README): the paper column says so on every row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from common.logging import MetricLogger, get_logger
from common.progress import progress
from common.reproduce import ProfileContext, ReproReport, Row, run_profiles
from meta_multilabel.meta import ClassifierConfig, MetaConfig
from meta_multilabel.pipeline import DataConfig, FeaturesConfig, prepare_task, run_method, write_results
from meta_multilabel.plots import plot_policies, plot_rewards

log = get_logger(__name__)

PAPER = "not retrieved"
METHOD_NAMES = {"uniform": ["B1", "B2", "B3"], "inverse_freq": ["B4"], "meta": ["M"], "meta_w": ["M-w"],
                "meta_tau": ["M-tau"]}
TEXT_METRICS = ("micro_f1", "macro_f1", "hamming_loss", "empty_rate", "macro_f1_tail")
TYPING_METRICS = ("strict_acc", "loose_macro_f1", "loose_micro_f1", "empty_rate")


@dataclass
class DatasetPlan:
    data: DataConfig
    features: FeaturesConfig
    classifier: ClassifierConfig
    meta: MetaConfig


@dataclass
class Plan:
    datasets: dict[str, DatasetPlan]
    methods: list[str]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    tensorboard: bool = True


def _reuters(**data) -> DataConfig:
    return DataConfig(format="reuters", name="reuters", path="reuters21578/reuters.tar.gz", **data)


def _bbn(**data) -> DataConfig:
    return DataConfig(format="typing", name="bbn", path="entity_typing/bbn/bbn.json", split_file="bbn_split.json",
                      **data)


def smoke_plan(seed: int) -> Plan:
    tiny_meta = MetaConfig(episodes=3, inner_epochs=1, warmup_epochs=1, hidden=16, label_dim=8)
    return Plan(
        datasets={"reuters": DatasetPlan(_reuters(max_train=300, max_test=200), FeaturesConfig(max_features=2000),
                                         ClassifierConfig(lr=0.05, epochs=2), tiny_meta)},
        methods=["uniform", "meta"], seeds=[seed], tensorboard=False,
        notes=["smoke: 300 Reuters training documents, 2 epochs, 3 meta-episodes; numbers are meaningless."])


def _matched(meta: MetaConfig, lr: float = 0.05, patience: int | None = None) -> ClassifierConfig:
    """Baselines get as many classifier epochs as the meta loop trains (warm-up + episodes × K), with the
    best epoch on D_meta kept, so a gain of M is not just longer training."""
    return ClassifierConfig(lr=lr, epochs=meta.warmup_epochs + meta.episodes * meta.inner_epochs, patience=patience)


def quick_plan(seed: int) -> Plan:
    meta = MetaConfig(episodes=30, inner_epochs=1, warmup_epochs=5)
    clf = _matched(meta)
    return Plan(datasets={"reuters": DatasetPlan(_reuters(), FeaturesConfig(), clf, meta)},
                methods=["uniform", "inverse_freq", "meta_tau", "meta"], seeds=[seed],
                notes=["quick: full Reuters with TF-IDF features, 30 meta-episodes of one inner epoch (warm start "
                       "after 5 uniform epochs), baselines trained for the same 35 epochs (best epoch on D_meta "
                       "kept), one seed."])


def full_plan(seed: int) -> Plan:
    meta = MetaConfig(episodes=200, inner_epochs=3, warmup_epochs=5)
    clf = _matched(meta, patience=30)
    return Plan(
        datasets={"reuters": DatasetPlan(_reuters(), FeaturesConfig(), clf, meta),
                  "bbn": DatasetPlan(_bbn(), FeaturesConfig(), clf, replace(meta, label_order="hierarchy"))},
        methods=["uniform", "inverse_freq", "meta_w", "meta_tau", "meta"], seeds=[seed, seed + 1, seed + 2],
        notes=["full: Reuters and BBN with TF-IDF features, 200 meta-episodes of 3 inner epochs after 5 warm-up "
               "epochs, baselines trained for up to the same 605 epochs (best epoch on D_meta kept, stopped after 30 "
               "epochs without improvement), 3 seeds."])


def full_minilm_plan(seed: int) -> Plan:
    plan = full_plan(seed)
    for d in plan.datasets.values():
        d.features = FeaturesConfig(kind="minilm")
    plan.notes = ["full_minilm: as full, on frozen all-MiniLM-L6-v2 features (the paper note's project default)."]
    return plan


# ------------------------------------------------------------------------------------- running


def run_plan(ctx: ProfileContext, plan: Plan) -> ReproReport:
    cells: dict[tuple[str, str], list[dict]] = {}
    histories: dict[str, list[dict]] = {}
    plots: list[Path] = []
    tasks = {}
    # the cells train silently (progress_bar=False inside); this bar and one log line per cell show the run
    bar = progress(total=len(plan.datasets) * len(plan.methods) * len(plan.seeds), desc="cells", unit="cell")
    for dname, dplan in plan.datasets.items():
        dplan.features = replace(dplan.features, cache_dir=str(ctx.work_dir / "feature_cache"))
        task = prepare_task(dplan.data, dplan.features, data_dir=ctx.data_dir, progress_bar=False)
        tasks[dname] = task
        for method in plan.methods:
            for seed in plan.seeds:
                run_dir = ctx.work_dir / dname / method / f"seed{seed}"
                done = run_dir / "results.json"
                if done.exists() and ctx.resume != "never":
                    payload = json.loads(done.read_text())
                    results = payload["results"]
                    history = payload.get("history")
                else:
                    t0 = time.time()
                    with MetricLogger(run_dir, tensorboard=plan.tensorboard) as logger:
                        out = run_method(task, method, dplan.classifier, dplan.meta, run_dir, seed=seed,
                                         resume=ctx.resume, logger=logger, progress_bar=False)
                    history = out.get("_history")
                    write_results(run_dir, task, out, {"method": method, "seed": seed, "history": history})
                    results = {k: v for k, v in out.items() if not k.startswith("_")}
                    log.info("%s/%s seed %d done in %.0f s", dname, method, seed, time.time() - t0)
                bar.update(1)
                bar.set_postfix_str(f"{dname}/{method} seed {seed}")
                for name, res in results.items():
                    cells.setdefault((dname, name), []).append(res)
                if history and seed == plan.seeds[0]:
                    histories[f"{dname}/{method}"] = history
                    plots.append(plot_rewards(history, ctx.out_dir / f"reward_{dname}_{method}_{ctx.profile}.png"))
                    name = METHOD_NAMES[method][0]
                    plots.append(plot_policies(task, results[name].get("weights"), results[name]["thresholds"],
                                               ctx.out_dir / f"policies_{dname}_{method}_{ctx.profile}.png",
                                               title=f"{dname} {name} (seed {seed})"))
    bar.close()
    return _report(plan, tasks, cells, plots)


LOWER_IS_BETTER = {"hamming_loss", "empty_rate"}


def _report(plan: Plan, tasks, cells, plots) -> ReproReport:
    rows: list[Row] = []
    headline = None
    extra: dict = {"cells": {f"{d}/{m}": [r["test"] for r in res] for (d, m), res in cells.items()}}
    for dname, task in tasks.items():
        metrics = TEXT_METRICS if task.task == "text" else TYPING_METRICS + ("micro_f1",)
        main = "micro_f1" if task.task == "text" else "loose_micro_f1"
        floor = float(np.mean(task.Y["test"]))
        for method in plan.methods:
            for name in METHOD_NAMES[method]:
                res = cells.get((dname, name))
                if not res:
                    continue
                for metric in metrics:
                    note = f"all-zero floor {floor:.4f}" if metric == "hamming_loss" else ""
                    rows.append(Row.from_seeds(f"{dname} {name} {metric} (test)", [r["test"][metric] for r in res],
                                               unit="fraction", split="test", paper_note=PAPER, note=note,
                                               higher_is_better=metric not in LOWER_IS_BETTER))
                for variant, label in (("test_at_least_one", "at least one label"),
                                       ("test_closed_under_parents", "closed under parents")):
                    if all(variant in r for r in res):
                        rows.append(Row.from_seeds(f"{dname} {name} {main} (test, {label})",
                                                   [r[variant][main] for r in res], unit="fraction", split="test",
                                                   paper_note=PAPER, note="reported apart", higher_is_better=True))
        if cells.get((dname, "M")) and cells.get((dname, "B2")):
            m = np.array([r["test"][main] for r in cells[(dname, "M")]])
            b2 = np.array([r["test"][main] for r in cells[(dname, "B2")]])
            b1 = np.array([r["test"][main] for r in cells[(dname, "B1")]])
            n = min(len(m), len(b2))
            wins = int((m[:n] - b2[:n] > 0).sum())
            row = Row.from_paired(f"{dname}: M − B2 {main} (test, paired over seeds)", m[:n].tolist(), b2[:n].tolist(),
                                  unit="fraction", split="test", paper_note=PAPER, higher_is_better=True,
                                  note=f"M beats B2 in {wins}/{n} seeds; M − B1 = {np.mean(m[:n] - b1[:n]):+.4f}; "
                                       "p: exact sign-flip permutation test")
            rows.append(row)
            headline = headline or row
    notes = "\n".join(f"- {n}" for n in plan.notes + [
        "Rewards: label_f1 (per-label F1 on D_meta with per-label baselines), GRU over labels, 8 threshold draws "
        "per episode; see the README for every inferred setting.",
        "macro-F1 uses zero_division = 0; typing predictions are not closed under parents.",
        "Paper numbers: the paper's tables were not retrieved, so no row has a paper value.",
    ])
    return ReproReport(rows=rows, headline=headline, plots=plots, notes=notes, extra=extra)


def smoke(ctx: ProfileContext) -> ReproReport:
    return run_plan(ctx, smoke_plan(ctx.seed))


def quick(ctx: ProfileContext) -> ReproReport:
    return run_plan(ctx, quick_plan(ctx.seed))


def full(ctx: ProfileContext) -> ReproReport:
    return run_plan(ctx, full_plan(ctx.seed))


def full_minilm(ctx: ProfileContext) -> ReproReport:
    return run_plan(ctx, full_minilm_plan(ctx.seed))


def main(argv: list[str] | None = None) -> Path:
    return run_profiles("meta_multilabel", {"smoke": smoke, "quick": quick, "full": full,
                                            "full_minilm": full_minilm}, argv=argv)


if __name__ == "__main__":
    main()
