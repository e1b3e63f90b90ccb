"""Reproduce: one baseline per supervision type, same network / data / budget, one table.

    python -m label_efficient_seg.reproduce --profile smoke        # seconds: synthetic shapes (tests)
    python -m label_efficient_seg.reproduce --profile quick        # minutes: real data, tiny budgets
    python -m label_efficient_seg.reproduce --profile budget       # ~0.4 CPU-hours: the learning curve only
    python -m label_efficient_seg.reproduce --profile full         # ~14 CPU-hours: the mandatory rows, 3 seeds
    python -m label_efficient_seg.reproduce --profile full_extra   # the other rows, 3 seeds, same budget

``full`` first trains CamVid full supervision for ``BUDGET_HORIZON`` steps, scored on CamVid *val*
every ``BUDGET_EVAL_EVERY`` steps (the learning curve), and picks the step budget of every row from it
with the rule of :func:`choose_budget` (fixed before any result was seen; README "Protocol"). The rows
are then independent trainings launched as ONE Hydra multirun (``common.launch.multirun``,
``--jobs`` single-threaded runs at a time, default 2). Each run lives in
``runs/reproduce/label_efficient_seg/<profile>/<row>_s<seed>`` and resumes there (``--fresh`` starts
over); the learning curve lives in ``.../budget_curve`` and the rows of ``full`` / ``full_extra`` in
``.../full_rows_<budget>``, shared by the two profiles (``--fresh`` leaves both alone). Every row is a
mean over seeds with its 95% t-interval; every claim is a paired difference over seeds
(``Row.from_paired``) with a verdict by the rule of :func:`verdict`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from common.config import LoggerConfig, TrainerConfig
from common.launch import finished_with, multirun
from common.logging import get_logger, read_jsonl
from common.reproduce import ProfileContext, ReproReport, Row, run_profiles

from .experiment import DataConfig, MethodConfig, ModelConfig, OptimConfig, load_splits, run_experiment
from .plots import example_grid, learning_curve_plot, percent_of_full_bars

log = get_logger("label_efficient_seg.reproduce")

# the qualitative trends the survey reports for each supervision type (its tables were not retrieved)
SURVEY_TREND = {
    "full": "upper bound",
    "subset": "lower bound of semi-supervision",
    "fixmatch": "semi-sup. closes much of the subset->full gap",
    "mean_teacher": "semi-sup. closes part of the gap",
    "cps": "semi-sup. closes much of the gap",
    "cam": "tags: CAM pseudo-masks far below full",
    "boxinst": "boxes: near full (pairwise prior)",
    "filled_boxes": "box = mask: below BoxInst",
    "scribbles": "scribbles: close to full",
    "scribbles_pce": "partial CE only: below + pairwise",
    "points": "points: well below full",
    "points_pce": "points without pairwise: lower",
    "noisy_ce": "CE overfits noise",
    "noisy_gce": "robust loss > CE under noise",
    "source_only": "DA lower bound",
    "source_only_adabn": "target BN statistics alone (AdaBN): part of the DA gap",
    "minent": "MinEnt > source-only",
    "oracle": "DA upper bound",
    "iic": "unsupervised: far below full",
    "kmeans": "non-learned reference",
}


@dataclass
class Plan:
    """One row: a label, a data config, a method config, and the row it is a percentage of."""

    label: str
    data: DataConfig
    method: MethodConfig
    reference: str
    trend_key: str
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass(frozen=True)
class Claim:
    """A contrast the survey predicts: ``better - worse`` should be > 0 (paired over seeds)."""

    better: str
    worse: str
    says: str


# every "holds / does not hold" line of the README is one of these, read off its paired difference
CLAIMS = [
    Claim("camvid/full", "camvid/subset_1_8", "full masks beat 1/8 of them (the gap semi-supervision closes)"),
    Claim("camvid/fixmatch_1_8", "camvid/subset_1_8", "FixMatch's unlabelled images add to 1/8 labels"),
    Claim("camvid/mean_teacher_1_8", "camvid/subset_1_8", "Mean Teacher's unlabelled images add to 1/8 labels"),
    Claim("camvid/cps_1_8", "camvid/subset_1_8", "CPS's unlabelled images add to 1/8 labels"),
    Claim("camvid/scribbles", "camvid/scribbles_pce", "the pairwise colour term helps scribbles"),
    Claim("dsb/points", "dsb/points_pce", "the pairwise colour term helps points"),
    Claim("camvid/noisy_medium_gce", "camvid/noisy_medium_ce", "GCE beats CE under medium mask noise"),
    Claim("camvid_day2dusk/minent", "camvid_day2dusk/source_only", "MinEnt beats source-only (day -> dusk)"),
    Claim("kvasir2cvc/minent", "kvasir2cvc/source_only", "MinEnt beats source-only (Kvasir -> CVC)"),
    Claim("camvid_day2dusk/minent", "camvid_day2dusk/source_only_adabn",
          "MinEnt beats source-only with target BN statistics (day -> dusk): more than BN statistics"),
    Claim("kvasir2cvc/minent", "kvasir2cvc/source_only_adabn",
          "MinEnt beats source-only with target BN statistics (Kvasir -> CVC): more than BN statistics"),
    Claim("camvid_day2dusk/oracle", "camvid_day2dusk/source_only", "target labels beat source-only (day -> dusk)"),
    Claim("kvasir2cvc/oracle", "kvasir2cvc/source_only", "target labels beat source-only (Kvasir -> CVC)"),
    # rows of full_extra
    Claim("kvasir/boxinst", "kvasir/filled_boxes", "BoxInst beats box = mask"),
    Claim("camvid/fixmatch_1_4", "camvid/subset_1_4", "FixMatch's unlabelled images add to 1/4 labels"),
    Claim("camvid/noisy_high_gce", "camvid/noisy_high_ce", "GCE beats CE under high mask noise"),
]

# the mandatory rows: all in `full`
MANDATORY = ["camvid/full", "camvid/subset_1_8", "camvid/fixmatch_1_8", "camvid/mean_teacher_1_8", "camvid/cps_1_8",
             "camvid/scribbles", "camvid/scribbles_pce", "dsb/points", "dsb/points_pce", "camvid/noisy_medium_ce",
             "camvid/noisy_medium_gce", "camvid_day2dusk/source_only", "camvid_day2dusk/minent",
             "camvid_day2dusk/oracle", "kvasir2cvc/source_only", "kvasir2cvc/minent", "kvasir2cvc/oracle"]

# The budget rule (fixed before the curve was run): CamVid full supervision is trained for BUDGET_HORIZON
# steps and scored on CamVid val every BUDGET_EVAL_EVERY steps; the budget is the smallest candidate whose
# val mIoU reaches BUDGET_FRACTION of the curve's best, else the largest candidate (CPU-limited: with the
# mandatory rows x 3 seeds it is what fits ~15 CPU-hours, README "Protocol").
BUDGET_HORIZON = 3200
BUDGET_EVAL_EVERY = 200
BUDGET_CANDIDATES = (400, 800, 1200, 1600)
BUDGET_FRACTION = 0.95
EVALS_PER_RUN = 8


def choose_budget(curve: list[tuple[int, float]], candidates=BUDGET_CANDIDATES, fraction: float = BUDGET_FRACTION
                  ) -> tuple[int, str]:
    """The step budget from a learning curve ``[(step, val score), ...]`` and the reason in words."""
    if not curve:
        raise ValueError("empty learning curve")
    at = dict(curve)
    best_step, best = max(curve, key=lambda sv: sv[1])
    for c in candidates:
        if c in at and at[c] >= fraction * best:
            return c, (f"val score {at[c]:.3f} at step {c} >= {fraction:.0%} of the curve's best {best:.3f} "
                       f"(step {best_step})")
    c = candidates[-1]
    return c, (f"no candidate reaches {fraction:.0%} of the curve's best {best:.3f} (step {best_step}); "
               f"val score {at.get(c, float('nan')):.3f} at {c}: CPU-limited budget")


def verdict(row: Row) -> str:
    """The rule every claim is read with: 'holds' when the 95% CI of the paired difference lies above 0,
    'does not hold' when it lies below 0, 'inconclusive' when it contains 0; one seed gives no verdict."""
    if row.ci_low is None or row.ci_high is None:
        return "single run, no verdict"
    if row.ci_low > 0:
        return "holds"
    if row.ci_high < 0:
        return "does not hold (reversed)"
    return "inconclusive (CI contains 0)"


def _plans(kind: str, data: dict[str, DataConfig], seeds: list[int]) -> list[Plan]:
    """The row list of a profile; ``data`` maps camvid / kvasir / dsb (or shapes stand-ins) to configs."""
    def P(label, d, m, ref, key=None, **kw):
        dc = data[d]
        if m in ("source_only", "minent", "oracle") and dc.target is None:
            dc = replace(dc, target="cvc" if dc.dataset == "kvasir" else
                         "camvid_dusk" if dc.dataset == "camvid" else "shifted")
        return Plan(label, dc, MethodConfig(name=m, **kw), ref, key or m, list(seeds))

    cam, kv, dsb = "camvid", "kvasir", "dsb"
    if kind == "smoke":
        return [P("camvid/full", cam, "full", "camvid/full"),
                P("camvid/scribbles", cam, "scribbles", "camvid/full"),
                P("camvid/scribbles_pce", cam, "scribbles", "camvid/full", "scribbles_pce", pairwise_weight=0.0),
                P("kvasir/boxinst", kv, "boxinst", "kvasir/full"),
                P("kvasir/full", kv, "full", "kvasir/full"),
                P("camvid/iic", cam, "iic", "camvid/full"),
                P("camvid/cam_tags", cam, "cam", "camvid/full", tag_crop=16)]
    if kind == "quick":
        return [P("camvid/full", cam, "full", "camvid/full"),
                P("camvid/subset_1_8", cam, "subset", "camvid/full", labelled_fraction=0.125),
                P("camvid/fixmatch_1_8", cam, "fixmatch", "camvid/full", labelled_fraction=0.125),
                P("camvid/scribbles", cam, "scribbles", "camvid/full"),
                P("camvid/noisy_medium_gce", cam, "noisy", "camvid/full", "noisy_gce", loss="gce"),
                P("kvasir/full", kv, "full", "kvasir/full"),
                P("kvasir/boxinst", kv, "boxinst", "kvasir/full"),
                P("dsb/points", dsb, "points", "dsb/full"),
                P("dsb/full", dsb, "full", "dsb/full")]
    mandatory = [
        P("camvid/full", cam, "full", "camvid/full"),
        P("camvid/subset_1_8", cam, "subset", "camvid/full", labelled_fraction=0.125),
        P("camvid/fixmatch_1_8", cam, "fixmatch", "camvid/full", labelled_fraction=0.125),
        P("camvid/mean_teacher_1_8", cam, "mean_teacher", "camvid/full", labelled_fraction=0.125),
        P("camvid/cps_1_8", cam, "cps", "camvid/full", labelled_fraction=0.125),
        P("camvid/scribbles", cam, "scribbles", "camvid/full"),
        P("camvid/scribbles_pce", cam, "scribbles", "camvid/full", "scribbles_pce", pairwise_weight=0.0),
        P("camvid/noisy_medium_ce", cam, "noisy", "camvid/full", "noisy_ce", loss="ce"),
        P("camvid/noisy_medium_gce", cam, "noisy", "camvid/full", "noisy_gce", loss="gce"),
        P("dsb/full", dsb, "full", "dsb/full"),
        P("dsb/points", dsb, "points", "dsb/full"),
        P("dsb/points_pce", dsb, "points", "dsb/full", "points_pce", pairwise_weight=0.0),
        P("camvid_day2dusk/source_only", cam, "source_only", "camvid_day2dusk/oracle"),
        P("camvid_day2dusk/minent", cam, "minent", "camvid_day2dusk/oracle"),
        P("camvid_day2dusk/oracle", cam, "oracle", "camvid_day2dusk/oracle"),
        P("kvasir2cvc/source_only", kv, "source_only", "kvasir2cvc/oracle"),
        P("kvasir2cvc/minent", kv, "minent", "kvasir2cvc/oracle"),
        P("kvasir2cvc/oracle", kv, "oracle", "kvasir2cvc/oracle"),
    ]
    if kind == "full":
        return mandatory
    if kind == "full_extra":
        return [
            P("camvid/full", cam, "full", "camvid/full"),  # the reference of every CamVid percentage
            P("kvasir/full", kv, "full", "kvasir/full"),
            P("kvasir/boxinst", kv, "boxinst", "kvasir/full"),
            P("kvasir/filled_boxes", kv, "filled_boxes", "kvasir/full"),
            P("dsb/full", dsb, "full", "dsb/full"),
            P("dsb/boxinst", dsb, "boxinst", "dsb/full"),
            P("camvid/subset_1_4", cam, "subset", "camvid/full", labelled_fraction=0.25),
            P("camvid/fixmatch_1_4", cam, "fixmatch", "camvid/full", labelled_fraction=0.25),
            P("camvid/noisy_high_ce", cam, "noisy", "camvid/full", "noisy_ce", loss="ce", noise_level="high"),
            P("camvid/noisy_high_gce", cam, "noisy", "camvid/full", "noisy_gce", loss="gce", noise_level="high"),
            P("camvid/cam_tags", cam, "cam", "camvid/full"),
            P("kvasir/cam_tags", kv, "cam", "kvasir/full"),
            P("camvid/iic", cam, "iic", "camvid/full"),
        ]
    raise ValueError(f"unknown profile {kind!r}")


def _profile_settings(profile: str) -> dict[str, Any]:
    if profile == "smoke":
        shapes3 = DataConfig(dataset="shapes", crop=24, shapes_n=12, shapes_size=24, shapes_classes=3)
        shapes2 = replace(shapes3, shapes_classes=2)
        return {"data": {"camvid": shapes3, "kvasir": shapes2, "dsb": shapes2},
                "model": ModelConfig(base=4, depth=2), "optim": OptimConfig(lr=1e-2),
                "trainer": TrainerConfig(max_epochs=1, batch_size=6, progress_bar=False, monitor="score",
                                         log_every_steps=1),
                "seeds": [0], "kmeans": False, "launch": "inline", "budget": None}
    if profile == "quick":
        return {"data": {"camvid": DataConfig("camvid", crop=64, train_limit=96, eval_limit=16),
                         "kvasir": DataConfig("kvasir", size=96, crop=64, train_limit=96, eval_limit=16),
                         "dsb": DataConfig("dsb", crop=64, eval_limit=13)},
                "model": ModelConfig(base=8, depth=4), "optim": OptimConfig(),
                "trainer": TrainerConfig(max_epochs=None, max_steps=20, batch_size=8, monitor="score",
                                         eval_every_steps=20, progress_bar=False),
                "seeds": [0], "kmeans": True, "launch": "multirun", "budget": None}
    # full / full_extra: the same budget for every row (max_steps from the learning curve), 3 seeds
    return {"data": {"camvid": DataConfig("camvid"), "kvasir": DataConfig("kvasir", crop=112),
                     "dsb": DataConfig("dsb")},
            "model": ModelConfig(base=8, depth=4), "optim": OptimConfig(),
            "trainer": TrainerConfig(max_epochs=None, max_steps=None, batch_size=8, monitor="score",
                                     progress_bar=False),
            "seeds": [0, 1, 2], "kmeans": profile == "full", "launch": "multirun", "budget": "curve"}


# ----------------------------------------------------------------------------- launching runs

def _value(v: Any) -> str:
    """A Hydra override value for a config field."""
    if v is None:
        return "null"
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _group_overrides(group: str, cfg: Any) -> list[str]:
    return [f"{group}.{f.name}={_value(getattr(cfg, f.name))}" for f in fields(cfg)]


def train_overrides(plan: Plan, seed: int, st: dict, tc: TrainerConfig, run_name: str, work_dir: Path,
                    data_dir: str | None) -> list[str]:
    """The ``python -m label_efficient_seg.train`` overrides of one row and seed: every field of the row's
    configs spelled out, so the shell trains exactly what the in-process plan describes."""
    dataset = _value(plan.data.dataset)
    out = [f"data={dataset if dataset in ('camvid', 'kvasir', 'dsb', 'shapes') else 'camvid'}",
           f"method={_value(plan.method.name)}",
           *_group_overrides("data", plan.data), *_group_overrides("method", plan.method),
           *_group_overrides("model", st["model"]), *_group_overrides("optim", st["optim"]),
           f"trainer.seed={seed}", f"trainer.max_epochs={_value(tc.max_epochs)}",
           f"trainer.max_steps={_value(tc.max_steps)}", f"trainer.batch_size={tc.batch_size}",
           f"trainer.eval_every_steps={_value(tc.eval_every_steps)}",
           f"trainer.checkpoint_every_steps={_value(tc.checkpoint_every_steps)}", "trainer.monitor=score",
           "trainer.progress_bar=false", f"name={run_name}", f"paths.output_dir={work_dir}", "resume=auto"]
    if data_dir is not None:
        out.append(f"paths.data_dir={data_dir}")
    return out


def _run_name(label: str, seed: int) -> str:
    return f"{label.replace('/', '__')}_s{seed}"


def _done(run_dir: Path, tc: TrainerConfig) -> bool:
    f = run_dir / "final_metrics.json"
    if not f.is_file():
        return False
    return tc.max_steps is None or json.loads(f.read_text()).get("steps") == tc.max_steps


def _train_all(jobs: list[tuple[Plan, int]], st: dict, tc_of, ctx: ProfileContext, n_jobs: int) -> None:
    """Every unfinished (row, seed) as ONE Hydra multirun, ``n_jobs`` single-threaded runs at a time; each
    run keeps its directory ``<work_dir>/<row>_s<seed>`` so a rerun continues it (``resume=auto``). A run
    that finished under other settings (``common.launch.finished_with``) is launched again, not reused."""
    runs = []
    for p, s in jobs:  # a finished run is skipped only under the settings its overrides compose to now
        ov = train_overrides(p, s, st, tc_of(p, s), _run_name(p.label, s), ctx.work_dir, ctx.data_dir)
        run_dir = ctx.work_dir / _run_name(p.label, s)
        if not (_done(run_dir, tc_of(p, s)) and finished_with(run_dir, "label_efficient_seg.train", ov,
                                                               "final_metrics.json")):
            runs.append(ov)
    if not runs:
        return
    log.info("training %d runs, %d at a time (log: %s)", len(runs), n_jobs, ctx.work_dir / "multirun.log")
    multirun("label_efficient_seg.train", runs, sweep_dir=ctx.work_dir, subdir="${name}", launcher="local",
             n_jobs=n_jobs, log_path=ctx.work_dir / "multirun.log",
             env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))


def _load_result(run_dir: Path) -> dict:
    res = json.loads((run_dir / "final_metrics.json").read_text())
    ex = run_dir / "example.npz"
    if ex.is_file():
        z = np.load(ex)
        res["example"] = {"image": z["image"], "gt": z["gt"], "weak": z["weak"] if "weak" in z else None,
                          "pred": z["pred"], "num_classes": int(z["num_classes"])}
    return res


def learning_curve(ctx: ProfileContext, st: dict) -> tuple[list[tuple[int, float]], dict]:
    """CamVid full supervision for BUDGET_HORIZON steps, scored on CamVid val every BUDGET_EVAL_EVERY
    steps (seed ``ctx.seed``); its directory is shared by the profiles that need it. Returns the curve
    ``[(step, val mIoU)]`` and the run's final metrics (its test score is never read)."""
    plan = Plan("budget/camvid_full_curve", st["data"]["camvid"], MethodConfig(name="full"), "", "full", [ctx.seed])
    tc = replace(st["trainer"], max_steps=BUDGET_HORIZON, eval_every_steps=BUDGET_EVAL_EVERY,
                 checkpoint_every_steps=BUDGET_EVAL_EVERY, seed=ctx.seed)
    shared = replace(ctx, work_dir=ctx.work_dir.parent / "budget_curve")
    shared.work_dir.mkdir(parents=True, exist_ok=True)
    _train_all([(plan, ctx.seed)], st, lambda p, s: tc, shared, 1)
    run_dir = shared.work_dir / _run_name(plan.label, ctx.seed)
    curve = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if "val/score" in row:
            curve[int(row["step"])] = float(row["val/score"])
    return sorted(curve.items()), json.loads((run_dir / "final_metrics.json").read_text())


# ----------------------------------------------------------------------------- the profile

def budget_rows(ctx: ProfileContext, st: dict, profile: str) -> tuple[int, list[Row], dict, Path]:
    """Run (or reuse) the learning curve and choose the step budget: rows, extra and plot for a report."""
    curve, curve_run = learning_curve(ctx, st)
    steps, reason = choose_budget(curve)
    rows = [Row("step budget of every row (from the CamVid full learning curve on val)", steps, unit="steps",
                split="val", paper_note="chosen by a fixed rule, README 'Protocol'", note=reason)]
    at = dict(curve)
    for c in sorted(set(BUDGET_CANDIDATES) | {BUDGET_HORIZON}):
        if c in at:
            rows.append(Row(f"learning curve: camvid/full val mIoU at step {c} of {BUDGET_HORIZON}", at[c], unit="miou",
                            split="val (CamVid val, 101)", note=f"seed {ctx.seed}, poly decay over {BUDGET_HORIZON} steps"))
    extra = {"curve": curve, "budget": steps, "reason": reason,
             "curve_train_wall_seconds": curve_run.get("train_wall_seconds"),
             "curve_seconds_per_step": (curve_run.get("train_wall_seconds") or 0) / BUDGET_HORIZON}
    plot = learning_curve_plot(curve, steps, ctx.out_dir / f"learning_curve_{profile}.png")
    return steps, rows, extra, plot


def budget(ctx: ProfileContext) -> ReproReport:
    """The learning curve alone (the first stage of ``full`` / ``full_extra``, which reuse its run)."""
    st = _profile_settings("full")
    steps, rows, extra, plot = budget_rows(ctx, st, "budget")
    head = rows[0]
    return ReproReport(rows, headline=head, plots=[plot], extra={"budget": extra},
                       notes=f"CamVid full supervision, U-Net base {st['model'].base}, batch {st['trainer'].batch_size}, "
                             f"{BUDGET_HORIZON} steps, CamVid val every {BUDGET_EVAL_EVERY} steps; candidates "
                             f"{list(BUDGET_CANDIDATES)}, rule: the smallest reaching {BUDGET_FRACTION:.0%} of the "
                             "curve's best val mIoU, else the largest. No test score is read.")


def run_profile(ctx: ProfileContext, profile: str) -> ReproReport:
    st = _profile_settings(profile)
    plans = _plans(profile, st["data"], [ctx.seed + s for s in st["seeds"]])
    budget_rows_, budget_extra, plots = [], {}, []
    if st["budget"] == "curve":
        steps, budget_rows_, budget_extra, plot = budget_rows(ctx, st, profile)
        every = max(1, steps // EVALS_PER_RUN)
        st["trainer"] = replace(st["trainer"], max_steps=steps, eval_every_steps=every, checkpoint_every_steps=every)
        plots.append(plot)
        # full and full_extra share their runs (camvid/full, dsb/full are in both): one folder per budget
        ctx = replace(ctx, work_dir=ctx.work_dir.parent / f"full_rows_{steps}")
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
    results = _train_rows(ctx, profile, st, plans)
    report = _report(ctx, profile, st, plans, results)
    report.rows = budget_rows_ + report.rows
    report.plots = plots + report.plots
    if budget_extra:
        report.extra["budget"] = budget_extra
    return report


def _train_rows(ctx: ProfileContext, profile: str, st: dict, plans: list[Plan]) -> dict[str, list[dict]]:
    jobs = [(p, s) for p in plans for s in p.seeds]
    tc_of = lambda p, s: replace(st["trainer"], seed=s)
    if st["launch"] == "multirun":
        _train_all(jobs, st, tc_of, ctx, ctx.jobs or 2)
    results: dict[str, list[dict]] = {}
    for plan, seed in jobs:
        run_dir = ctx.work_dir / _run_name(plan.label, seed)
        if st["launch"] == "multirun":
            res = _load_result(run_dir)
        else:
            log.info("running %s (seed %d) in %s", plan.label, seed, run_dir)
            res = run_experiment(plan.data, plan.method, st["model"], st["optim"], tc_of(plan, seed), run_dir,
                                 logger_cfg=LoggerConfig(tensorboard=profile != "smoke"), resume=ctx.resume,
                                 data_dir=ctx.data_dir)
        results.setdefault(plan.label, []).append(res)
    return results


def _report(ctx: ProfileContext, profile: str, st: dict, plans: list[Plan], results: dict[str, list[dict]]
            ) -> ReproReport:
    rows, extra, bars, examples = [], {}, ([], []), []
    for plan in plans:
        runs = results[plan.label]
        if "example" in runs[0]:
            examples.append({"name": plan.label, **runs[0]["example"]})
        scores = np.array([r["score"] for r in runs])
        ref = results.get(plan.reference)
        ref_score = np.mean([r["score"] for r in ref]) if ref else 0.0
        pct = 100 * scores.mean() / ref_score if ref_score > 0 else float("nan")
        r0 = runs[0]
        sp = r0.get("splits", {})
        note = [f"{r0['score_name']}", f"{pct:.0f}% of {plan.reference}" if ref else "no reference row"]
        if "labelled_pixel_share" in r0:
            note.append(f"labelled px {100 * r0['labelled_pixel_share']:.2f}%")
        if "pseudo_mask_quality_train" in r0:
            note.append(f"pseudo-mask mIoU {r0['pseudo_mask_quality_train']['miou']:.3f} "
                        f"(coverage {r0['pseudo_mask_quality_train']['coverage']:.2f})")
        if "object_f1" in r0["test"]:
            f1 = np.mean([r["test"]["object_f1"] for r in runs])
            aji = np.mean([r["test"]["aji"] for r in runs])
            note.append(f"F1@0.5 {f1:.3f}, AJI {aji:.3f} (mean over seeds)")
        if r0.get("test_bn") == "target":
            note.append("BN statistics re-estimated on target images")
        note.append(f"selected on: {sp.get('selection', '?')}; test: {sp.get('test', '?')}")
        note.append(f"annotation {r0['annotation_seconds'] / 3600:.1f} h")
        note.append(f"{r0['steps']} steps, {np.mean([r['wall_seconds'] for r in runs]):.0f} s per run")
        rows.append(Row.from_seeds(f"{plan.label} ({r0['supervision']})", scores.tolist(), unit=r0["score_name"],
                                   split="test", paper_note=SURVEY_TREND[plan.trend_key], note="; ".join(note),
                                   higher_is_better=True))
        extra[plan.label] = {"scores": scores.tolist(), "seeds": list(plan.seeds), "percent_of_reference": pct,
                             "percent_of_reference_per_seed": (100 * scores / ref_score).tolist() if ref_score > 0 else None,
                             "selection_scores": [r.get("selection_score") for r in runs],
                             "best_steps": [r.get("best_step") for r in runs],
                             "wall_seconds": [r.get("wall_seconds") for r in runs],
                             **{k: v for k, v in r0.items() if k not in ("example", "predictions")}}
        bars[0].append(plan.label)
        bars[1].append(pct)
        if "test_adabn" in r0:  # source_only: the same checkpoints scored with target BN statistics
            label = plan.label.replace("/source_only", "/source_only_adabn")
            key = r0["score_name"]
            ada = [r["test_adabn"][key] for r in runs]
            results[label] = [{"score": v, "score_name": key} for v in ada]
            rows.append(Row.from_seeds(f"{label} (source only, BN statistics re-estimated on target images)", ada,
                                       unit=key, split="test", paper_note=SURVEY_TREND["source_only_adabn"],
                                       note=f"the checkpoints of {plan.label} (selected with trained statistics); "
                                            f"test: {sp.get('test', '?')}", higher_is_better=True))
            extra[label] = {"scores": ada}
    claims = []
    for c in CLAIMS:
        if c.better in results and c.worse in results:
            a = [r["score"] for r in results[c.better]]
            b = [r["score"] for r in results[c.worse]]
            row = Row.from_paired(f"claim: {c.better} - {c.worse}", a, b, unit=results[c.better][0]["score_name"],
                                  split="test", paper_note=c.says, higher_is_better=True)
            row.note = f"{verdict(row)}; paired over seeds {list(next(p for p in plans if p.label == c.better).seeds)}"
            claims.append(row)
            extra.setdefault("claims", {})[f"{c.better} - {c.worse}"] = {"says": c.says, "verdict": verdict(row),
                                                                         "differences": row.per_seed}
    rows += claims
    if st["kmeans"]:
        from .evaluate import kmeans_segmentation

        splits = load_splits(st["data"]["camvid"], ctx.data_dir)
        km = kmeans_segmentation(splits.test, 11, seed=ctx.seed)
        rows.append(Row("camvid/kmeans (Lab, x, y), Hungarian mIoU", km["miou"], unit="miou", split="test",
                        paper_note=SURVEY_TREND["kmeans"], note=f"pixel acc {km['pixel_acc']:.3f}; no training"))
        extra["camvid/kmeans"] = km
    plots = [example_grid(examples, ctx.out_dir / f"examples_{profile}.png",
                          "first training image: image / ground truth / weak label / prediction (seed 0)"),
             percent_of_full_bars(bars[0], bars[1], ctx.out_dir / f"percent_of_full_{profile}.png")]
    headline_label = next((lab for lab in ("camvid/fixmatch_1_8", "camvid/fixmatch_1_4") if lab in results),
                          plans[1].label)
    head = next(r for r in rows if r.metric.startswith(headline_label))
    caveat = {"smoke": "smoke: synthetic shapes, 2 steps; meaningless by design. ",
              "quick": "quick: 20 steps, models still near-constant; a pipeline check, not a result. "
              }.get(profile, "")
    # per seed: the seed's score over the reference's mean score (the CI leaves out the reference's spread)
    per_seed = extra[headline_label]["percent_of_reference_per_seed"]
    kw = dict(unit="%", split="test", paper_note="survey: weak labels close much of the gap", note=caveat + head.note)
    headline = (Row.from_seeds(f"{headline_label}: score as % of full supervision on the same data", per_seed, **kw)
                if per_seed else Row(f"{headline_label}: score as % of full supervision on the same data", None, **kw))
    return ReproReport(rows, headline=headline, plots=plots, notes=_notes(profile, st), extra=extra)


def _notes(profile: str, st: dict) -> str:
    tc = st["trainer"]
    budget = f"max_steps {tc.max_steps}" if tc.max_steps else f"{tc.max_epochs} epochs"
    full = ("CamVid 367/101/233 at 240x180 with 128^2 crops (day -> dusk: source 0006R0 + 0016E5, target 0001TP), "
            "Kvasir 70/10/20 at 128^2 (112^2 crops; -> CVC-ClinicDB 70/10/20), DSB fold 0 of 5 with 8 "
            "validation images carved from the training folds, 128^2 crops")
    scale = {"smoke": "synthetic scikit-image shapes stand in for every dataset (camvid = 3-class shapes, "
                      "kvasir / dsb = binary shapes)",
             "quick": "real data at toy scale: 96 training images (64x64 crops; polyps at 96^2), 16 "
                      "evaluation images, 20 steps: a pipeline check, not a result",
             "full": full, "full_extra": full}
    return f"""
Profile `{profile}`: {scale[profile]}; U-Net base {st['model'].base}, depth {st['model'].depth}, trained from
scratch; Adam lr {st['optim'].lr}, poly decay; batch {tc.batch_size}, {budget}; seeds {st['seeds']}.

- Every checkpoint is selected on a validation split that shares no image with the test split (asserted by
  every run); each row's note names its selection and test splits. Rows: mean over seeds with the 95%
  t-interval. Claims: paired differences over seeds (same seed = same initialisation and data order) with
  their 95% t-interval and exact sign-flip p-value; verdict "holds" when the interval lies above 0, "does
  not hold" below 0, "inconclusive" when it contains 0.
- The survey publishes no numbers of its own: the "paper" column states the trend it reports for each
  supervision type. Read every row against full supervision on the same data ("% of ...").
- Training is from scratch (no pretrained encoders offline): absolute numbers sit far below published ones.
- Scribbles, points, tags, DSB boxes and label noise are synthesized from the ground truth; only the Kvasir
  boxes are real annotations. CamVid tags are crop-level (whole-image tags are nearly constant).
- CamVid test shares sequence 0001TP with train (temporally correlated frames). DSB results come from
  one cross-validation fold of the 65 stage-1 test images. No CRF post-processing.
- Annotation hours use the per-image costs in `label_efficient_seg/weak_labels.py` (ANNOTATION_SECONDS).
"""


def smoke(ctx: ProfileContext) -> ReproReport:
    return run_profile(ctx, "smoke")


def quick(ctx: ProfileContext) -> ReproReport:
    return run_profile(ctx, "quick")


def full(ctx: ProfileContext) -> ReproReport:
    return run_profile(ctx, "full")


def full_extra(ctx: ProfileContext) -> ReproReport:
    return run_profile(ctx, "full_extra")


if __name__ == "__main__":
    run_profiles("label_efficient_seg", {"smoke": smoke, "quick": quick, "budget": budget, "full": full,
                                         "full_extra": full_extra})
