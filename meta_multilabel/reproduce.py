"""Reproduce the paper's comparison at a chosen scale: ``python -m meta_multilabel.reproduce --profile P``.

Each profile runs every (data set, method, seed) cell as one run of ``python -m meta_multilabel.train`` in
``<work_dir>/<data>/<method>/seed<k>``: the overrides select the config group files and set only the fields
the plan changes (:func:`dataset_overrides`, composing to the plan's configs exactly), and the unfinished cells
go out as ONE Hydra multirun (``common.launch.multirun``, joblib, ``--jobs`` at a time, default 2, one thread
each, output in ``<work_dir>/multirun.log``). Resumable: a cell is read back from its ``results.json`` when it
finished under the settings its overrides compose to now (``common.launch.finished_with``), otherwise it goes
back to the multirun and continues from its checkpoint (``resume=auto``); a cell of an earlier ``PROTOCOL`` is
refused. Each corpus is read and featurised once in this process first (the report needs it; MiniLM features
are encoded into ``<work_dir>/feature_cache`` here, and the cells only read them). Then it writes
``report.md`` with mean and 95% CI over seeds (common.stats) and the paired comparisons of M against B2
(per-label thresholds tuned on D_meta) and B3 (one threshold tuned on D_meta), the strongest non-learned
baselines (``Row.from_paired``: t-interval of the per-seed differences, exact sign-flip p).

The paper's result tables were not retrieved (see the README): the paper column says so on every row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from common.logging import get_logger
from common.reproduce import ProfileContext, ReproReport, Row, run_profiles
from meta_multilabel.meta import ClassifierConfig, MetaConfig
from meta_multilabel.pipeline import PROTOCOL, DataConfig, FeaturesConfig, prepare_task
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

TRAIN = "meta_multilabel.train"
"""The Hydra app every cell runs (``python -m meta_multilabel.train``, one run of a Hydra multirun)."""
CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = {"data": DataConfig, "features": FeaturesConfig, "classifier": ClassifierConfig, "meta": MetaConfig}


def cell_name(dname: str, method: str, seed: int) -> str:
    """The cell's run directory under the work dir (``name=...`` of its run)."""
    return f"{dname}/{method}/seed{seed}"


def _override_value(value) -> str:
    """A Hydra override value that composes back to ``value`` (strings quoted: paths, '1', 'null' stay strings)."""
    from common.launch import quote_override

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # closed choices (Choice members) included: str subclasses
        return quote_override(str(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Hydra override for {value!r}")


def _group_option(group: str, cfg) -> str:
    """The file of ``conf/<group>/`` a cell selects: the corpus name (data), the feature kind, the classifier
    name, ``default`` (meta); the fields that differ from it are overridden one by one."""
    option = {"data": lambda c: c.name, "features": lambda c: str(c.kind), "classifier": lambda c: c.name,
              "meta": lambda c: "default"}[group](cfg)
    if not (CONF_DIR / group / f"{option}.yaml").is_file():
        raise ValueError(f"no {group} config {option!r} in {CONF_DIR / group}")
    return option


def dataset_overrides(dplan: DatasetPlan) -> list[str]:
    """The group selections and field overrides that compose to exactly ``dplan``'s four configs."""
    from common.launch import composed_config

    def differing(overrides: list[str]) -> list[tuple[str, str]]:
        composed = composed_config(TRAIN, overrides)
        return [(group, f.name) for group, cls in GROUPS.items() for f in fields(cls)
                if composed[group][f.name] != getattr(getattr(dplan, group), f.name)]

    out = [f"{g}={_group_option(g, getattr(dplan, g))}" for g in GROUPS]
    out += [f"{g}.{k}={_override_value(getattr(getattr(dplan, g), k))}" for g, k in differing(out)]
    left = differing(out)  # e.g. a dict override merged into a group file's dict with other keys
    if left:
        raise ValueError(f"overrides {out} do not compose to the plan: {['.'.join(x) for x in left]} differ")
    return out


def cell_overrides(group_overrides: list[str], dname: str, method: str, seed: int, work_dir: Path, *,
                   tensorboard: bool = True, data_dir: str | None = None, resume: str = "auto") -> list[str]:
    """The ``python -m meta_multilabel.train`` overrides of one cell: the data set's configs
    (:func:`dataset_overrides`), the method, the seed, and where it lives (``<work_dir>/<cell_name>``)."""
    out = [*group_overrides, f"method={method}", f"trainer.seed={seed}",
           f"name={_override_value(cell_name(dname, method, seed))}",
           f"paths.output_dir={_override_value(str(work_dir))}", f"resume={resume}", "trainer.progress_bar=false"]
    if not tensorboard:
        out.append("logger.tensorboard=false")
    if data_dir is not None:
        out.append(f"paths.data_dir={_override_value(str(data_dir))}")
    return out


def plan_runs(plan: Plan, work_dir: Path, *, data_dir: str | None = None,
              resume: str = "auto") -> dict[tuple[str, str, int], list[str]]:
    """The overrides of every (data set, method, seed) cell of ``plan``; points each data set's
    ``features.cache_dir`` at ``<work_dir>/feature_cache`` first (in the plan, which the parent then
    prepares with)."""
    runs = {}
    for dname, dplan in plan.datasets.items():
        dplan.features = replace(dplan.features, cache_dir=str(work_dir / "feature_cache"))
        groups = dataset_overrides(dplan)
        for method in plan.methods:
            for seed in plan.seeds:
                runs[(dname, method, seed)] = cell_overrides(groups, dname, method, seed, work_dir,
                                                             tensorboard=plan.tensorboard, data_dir=data_dir,
                                                             resume=resume)
    return runs


def _read_cell(done: Path) -> dict:
    payload = json.loads(done.read_text())
    if payload.get("protocol") != PROTOCOL:
        raise ValueError(f"{done}: a cell of an earlier protocol ({payload.get('protocol')!r}, now "
                         f"{PROTOCOL!r}); rerun the profile with --fresh")
    return payload


def run_plan(ctx: ProfileContext, plan: Plan, launcher: str = "local") -> ReproReport:
    """Every (data set, method, seed) cell as one run of ``python -m meta_multilabel.train``; the unfinished
    ones (no ``results.json``, or one written under other settings: ``common.launch.finished_with``) go out as
    ONE Hydra multirun, ``ctx.jobs or 2`` at a time with one thread each; then the report from the cells'
    ``results.json``. Each corpus is read and featurised here first: the report needs it, and MiniLM
    features are encoded once into ``<work_dir>/feature_cache``, which the cells then only read."""
    import os

    from common.launch import finished_with, multirun

    work_dir = ctx.work_dir.resolve()  # the runs start in the repository root
    data_dir = str(Path(ctx.data_dir).resolve()) if ctx.data_dir else None
    runs = plan_runs(plan, work_dir, data_dir=data_dir, resume=ctx.resume)
    tasks = {dname: prepare_task(dplan.data, dplan.features, data_dir=data_dir, progress_bar=False)
             for dname, dplan in plan.datasets.items()}
    todo = []
    for cell, overrides in runs.items():
        run_dir = work_dir / cell_name(*cell)
        if ctx.resume != "never" and (run_dir / "results.json").is_file():
            _read_cell(run_dir / "results.json")  # an earlier protocol is refused, not rerun
        if ctx.resume == "never" or not finished_with(run_dir, TRAIN, overrides, "results.json"):
            todo.append(cell)
    if todo:
        n_jobs = ctx.jobs or 2
        log.info("%d of %d cells to run: one multirun of %s, %d at a time (log: %s)", len(todo), len(runs), TRAIN,
                 n_jobs, work_dir / "multirun.log")
        t0 = time.time()
        multirun(TRAIN, [runs[c] for c in todo], sweep_dir=work_dir, subdir="${name}", launcher=launcher,
                 n_jobs=n_jobs, log_path=work_dir / "multirun.log",
                 env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
        log.info("%d cells done in %.0f s", len(todo), time.time() - t0)

    cells: dict[tuple[str, str], list[dict]] = {}
    plots: list[Path] = []
    for (dname, method, seed) in runs:
        payload = _read_cell(work_dir / cell_name(dname, method, seed) / "results.json")
        results, history = payload["results"], payload.get("history")
        for name, res in results.items():
            cells.setdefault((dname, name), []).append(res)
        if history and seed == plan.seeds[0]:
            plots.append(plot_rewards(history, ctx.out_dir / f"reward_{dname}_{method}_{ctx.profile}.png"))
            name = METHOD_NAMES[method][0]
            plots.append(plot_policies(tasks[dname], results[name].get("weights"), results[name]["thresholds"],
                                       ctx.out_dir / f"policies_{dname}_{method}_{ctx.profile}.png",
                                       title=f"{dname} {name} (seed {seed})"))
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
            note = ""
            if cells.get((dname, "B1")):
                b1 = np.array([r["test"][main] for r in cells[(dname, "B1")]])
                note = f"M − B1 = {np.mean(m[:n] - b1[:n]):+.4f}; "
            # The p printed after this note belongs to M − base; with n seeds the exact two-sided sign-flip
            # test cannot go below 2 / 2**n (0.0625 at n = 5), so say so beside it.
            note += (f"M ahead of {base} in {wins}/{n} seeds; p of M − {base}: exact sign-flip permutation test "
                     f"(smallest attainable {2 / 2 ** n:.3g})")
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
