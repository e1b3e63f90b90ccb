"""Reproduce the paper's comparison at a chosen scale: ``python -m meta_multilabel.reproduce --profile P``.

Each profile runs every (data set, method, seed) cell into ``<work_dir>/<data>/<method>/seed<k>`` (resumable:
a finished cell is read back from its ``results.json``, an unfinished one continues from its checkpoint),
then writes ``report.md`` with mean and 95% CI over seeds (common.stats) and the paired comparisons of M
against B2 (per-label thresholds tuned on D_meta) and B3 (one threshold tuned on D_meta), the strongest
non-learned baselines (``Row.from_paired``: t-interval of the per-seed differences, exact sign-flip p).

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
PROTOCOL = "issue28"
"""Stamped into every cell's results.json: cells of an earlier protocol (other model selection, B2 fallback,
no-positive labels) are refused rather than mixed in."""
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


FULL_SEEDS = 5


def full_plan(seed: int) -> Plan:
    """Reuters and BBN, each with TF-IDF features and with frozen MiniLM features (``<data>_minilm``), every
    method, 5 seeds."""
    meta = MetaConfig(episodes=200, inner_epochs=3, warmup_epochs=5)
    clf = _matched(meta, patience=30)
    bbn_meta = replace(meta, label_order="hierarchy")
    minilm = FeaturesConfig(kind="minilm")
    return Plan(
        datasets={"reuters": DatasetPlan(_reuters(), FeaturesConfig(), clf, meta),
                  "bbn": DatasetPlan(_bbn(), FeaturesConfig(), clf, bbn_meta),
                  "reuters_minilm": DatasetPlan(_reuters(), minilm, clf, meta),
                  "bbn_minilm": DatasetPlan(_bbn(), minilm, clf, bbn_meta)},
        methods=["uniform", "inverse_freq", "meta_w", "meta_tau", "meta"],
        seeds=list(range(seed, seed + FULL_SEEDS)),
        notes=["full: Reuters and BBN, each on TF-IDF features and on frozen all-MiniLM-L6-v2 features (`_minilm`: "
               "documents mean-pooled; BBN mentions [mention mean ; sentence mean]), linear head; 200 meta-episodes "
               "of 3 inner epochs after 5 warm-up epochs; baselines trained for up to the same 605 epochs, stopped "
               "after 30 epochs in which no method improved; every method keeps the epoch / episode best on D_meta "
               f"(micro-F1) under its own prediction policy; {FULL_SEEDS} seeds."])


def full_minilm_plan(seed: int) -> Plan:
    plan = full_plan(seed)
    plan.datasets = {k: v for k, v in plan.datasets.items() if k.endswith("_minilm")}
    plan.notes = ["full_minilm: the MiniLM half of full."]
    return plan


CELL_MINUTES = {("reuters", "meta"): 6.0, ("bbn", "meta"): 2.0, ("reuters", "base"): 1.5, ("bbn", "base"): 0.5}
"""Minutes of one cell in the previous full run (README: Reuters meta cell ~6 min, BBN ~2, a baseline 7-90 s),
TF-IDF features, one thread; MiniLM cells are assumed to cost the same (a dense 384/768-d head)."""
MINILM_ENCODE_MINUTES = {"reuters": 25.0, "bbn": 12.0}
"""Encoding the corpus once with frozen MiniLM, one thread: measured 2026-12-04 at 119 ms per Reuters document
(max 256 tokens) and 56 ms per BBN mention on loaded cores (21 and 12 min wall), rounded up; the paper note's
10-15 / 2 min was an underestimate."""


def estimate_cpu_hours(plan: Plan) -> float:
    """CPU-hours of a plan from the previous run's cell timings."""
    minutes = 0.0
    for dname, dplan in plan.datasets.items():
        corpus = "bbn" if dname.startswith("bbn") else "reuters"
        for method in plan.methods:
            kind = "meta" if method.startswith("meta") else "base"
            minutes += len(plan.seeds) * CELL_MINUTES[(corpus, kind)]
        if dplan.features.kind == "minilm":
            minutes += MINILM_ENCODE_MINUTES[corpus]
    return minutes / 60


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
                    if payload.get("protocol") != PROTOCOL:
                        raise ValueError(f"{done}: a cell of an earlier protocol ({payload.get('protocol')!r}, now "
                                         f"{PROTOCOL!r}); rerun the profile with --fresh")
                    results = payload["results"]
                    history = payload.get("history")
                else:
                    t0 = time.time()
                    with MetricLogger(run_dir, tensorboard=plan.tensorboard) as logger:
                        out = run_method(task, method, dplan.classifier, dplan.meta, run_dir, seed=seed,
                                         resume=ctx.resume, logger=logger, progress_bar=False)
                    history = out.get("_history")
                    write_results(run_dir, task, out, {"method": method, "seed": seed, "history": history,
                                                       "protocol": PROTOCOL})
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
        for base in ("B2", "B3"):
            if not (cells.get((dname, "M")) and cells.get((dname, base))):
                continue
            m = np.array([r["test"][main] for r in cells[(dname, "M")]])
            b = np.array([r["test"][main] for r in cells[(dname, base)]])
            n = min(len(m), len(b))
            wins = int((m[:n] - b[:n] > 0).sum())
            note = f"M ahead in {wins}/{n} seeds; p: exact sign-flip permutation test"
            if cells.get((dname, "B1")):
                b1 = np.array([r["test"][main] for r in cells[(dname, "B1")]])
                note += f"; M − B1 = {np.mean(m[:n] - b1[:n]):+.4f}"
            row = Row.from_paired(f"{dname}: M − {base} {main} (test, paired over seeds)", m[:n].tolist(),
                                  b[:n].tolist(), unit="fraction", split="test", paper_note=PAPER,
                                  higher_is_better=True, note=note)
            rows.append(row)
            if base == "B3" and headline is None:
                headline = row
        if cells.get((dname, "M")):
            episodes = [float(r["best_episode"]) for r in cells[(dname, "M")] if "best_episode" in r]
            if episodes:
                rows.append(Row.from_seeds(f"{dname} M: kept episode (D_meta selection)", episodes, unit="episode",
                                           split="meta", paper_note=PAPER, note=f"per seed: {episodes}"))
    notes = "\n".join(f"- {n}" for n in plan.notes + [
        "Rewards: label_f1 (per-label F1 on D_meta with per-label baselines), GRU over labels, 8 threshold draws "
        "per episode; labels without a D_meta positive keep τ = 0.5 and w = 1 in M, as in B2; see the README for "
        "every inferred setting.",
        "B2 keeps τ = 0.5 for a label whose F1 is 0 at every grid threshold (issue 28).",
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


PLANS = {"smoke": smoke_plan, "quick": quick_plan, "full": full_plan, "full_minilm": full_minilm_plan}


def main(argv: list[str] | None = None) -> Path | None:
    """``--estimate --profile P`` prints the CPU-hour estimate and exits; otherwise run_profiles' CLI."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--estimate" in argv:
        rest = [a for a in argv if a != "--estimate"]
        profile = rest[rest.index("--profile") + 1] if "--profile" in rest else "full"
        if profile not in PLANS:
            raise SystemExit(f"error: --profile must be one of {sorted(PLANS)}, got {profile!r}")
        plan = PLANS[profile](0)
        print(f"profile {profile}: ~{estimate_cpu_hours(plan):.1f} CPU-hours ({len(plan.datasets)} data settings x "
              f"{len(plan.methods)} method runs x {len(plan.seeds)} seeds; cell timings in meta_multilabel/reproduce.py)")
        return None
    return run_profiles("meta_multilabel", {"smoke": smoke, "quick": quick, "full": full,
                                            "full_minilm": full_minilm}, argv=argv)


if __name__ == "__main__":
    main()
