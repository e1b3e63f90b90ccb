"""``python -m vocab_distill.reproduce --profile smoke|quick|full``: the pipeline at a chosen scale, with
our numbers beside the paper's in ``reports/vocab_distill/report.md``.

The profiles are the Hydra experiment files ``conf/experiment/{smoke,quick,full}.yaml`` (one source of truth
with ``python -m vocab_distill.train experiment=...``). Checkpoints go to ``runs/reproduce/vocab_distill/<profile>``
and an interrupted run continues where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from common.config import register_configs
from common.reproduce import ProfileContext, ReproReport, Row, run_profiles

from .config import BASELINES
from .evaluate import BERT_BASE_PARAMS

CONF_DIR = Path(__file__).resolve().parent / "conf"

# Secondary-source numbers (see ../shared/papers/vocab_distill.md): quoted only with their labels.
PAPER = {
    "size": "< 7 MB, > 60x smaller than BERT-base (v1 abstract)",
    "match": "94% (5K vs 30K vocabulary; v1, quoted by a survey)",
    "sst2": "82.2 (H=48, |V|=4,928; survey quoting v1) / 84.7 (5.6M params, GLUE test; KroneckerBERT table)",
    "sst2_teacher": "93.5 (BERT-base teacher in the paper; ours is MiniLM)",
    "snips": "v2 SNIPS table not retrieved",
}
PAPER_NUMBER = {"sst2": 82.2, "sst2_teacher": 93.5}  # the first number of each PAPER text above
PAPER_MATCH = 94.0


def compose_profile(profile: str, ctx: ProfileContext):
    register_configs()  # the shared groups (trainer, paths, logger), also when nothing else imported them yet
    overrides = [f"experiment={profile}", f"trainer.seed={ctx.seed}", f"resume={ctx.resume}"]
    if ctx.data_dir:
        overrides.append(f"paths.data_dir={ctx.data_dir}")
    if ctx.jobs:  # one process: --jobs caps its torch threads (e.g. --jobs 1 beside another run)
        overrides.append(f"trainer.num_threads={ctx.jobs}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _pct(x):
    return None if x is None else round(100 * x, 2)


TASK_METRIC = {"sst2": "SST-2 acc. (%)", "snips_intent": "SNIPS intent acc. (%)"}


def _acc_row(ft: dict, model: str, task: str, paper: float | None, paper_note: str) -> Row | None:
    """Fine-tuning accuracy (%) over seeds on the reported split: mean and 95% CI (common.stats)."""
    r = ft.get(model, {}).get(task)
    if r is None:
        return None
    sel = f"lr {r['selected_lr']:g}, epoch {r['selected_epoch']} chosen on the tuning split" if "selected_lr" in r else ""
    return Row.from_seeds(f"{model}: {TASK_METRIC.get(task, task)}", [100 * x for x in r["runs"]], unit="%",
                          split=r.get("split", "dev" if task == "sst2" else "test"), paper=paper,
                          paper_note=paper_note, higher_is_better=True, note=sel)


def _items_row(metric: str, correct: int, n: int, **kw) -> Row:
    """A rate over held-out positions with its bootstrap CI (positions of one segment are not independent,
    so the interval is somewhat narrow)."""
    if n == 0:
        return Row(metric, None, unit="%", note="no such position in the held-out draw", **kw)
    return Row.from_items(metric, [100.0] * correct + [0.0] * (n - correct), unit="%", **kw)


def teacher_rows(t: dict) -> list[Row]:
    """The teacher's gate, its accuracy by position kind beside the copy and frequency baselines, and the
    adaptation's speed."""
    f, split = t["final"], "held-out corpus segments"
    rows = [_items_row("teacher: held-out acc. at real [MASK] positions (%)", round(f["acc_mask"] * f["n_mask"]),
                       f["n_mask"], split=split,
                       paper_note=f"gate: >= {100 * t['gate']:.0f}% before stage I (a trained BERT-base fills about "
                                  "half; not a paper number)",
                       higher_is_better=True, note=f"after {f['head_step']} head-only + {f['adapt_step']} unfrozen "
                                                    f"MLM steps; decision: {t['decision']}"),
            Row("teacher gate passed", bool(t["gate_passed"]), split=split,
                note=f"{t['decision']}: [MASK] acc. {100 * f['acc_mask']:.2f}% vs gate {100 * t['gate']:.0f}%")]
    for kind, what in (("random", "randomly replaced"), ("unchanged", "unchanged")):
        rows.append(_items_row(f"teacher: held-out acc. at {what} positions (%)",
                               round(f[f"acc_{kind}"] * f[f"n_{kind}"]), f[f"n_{kind}"], split=split,
                               higher_is_better=True))
    rows.append(Row("teacher: held-out acc. at all selected positions (%)", _pct(f["acc"]), unit="%", split=split))
    for kind in ("mask", "random", "unchanged"):
        rows.append(Row(f"copy-the-input baseline at {kind} positions (%)", _pct(f[f"copy_acc_{kind}"]), unit="%",
                        split=split))
    if "freq_acc" in f:
        rows += [Row(f"frequency baseline ('{t.get('frequent_token')}') at all selected positions (%)",
                     _pct(f["freq_acc"]), unit="%", split=split),
                 Row(f"frequency baseline ('{t.get('frequent_token')}') at [MASK] positions (%)",
                     _pct(f["freq_acc_mask"]), unit="%", split=split)]
    sp = t.get("speed", {})
    if "steps_per_cpu_second" in sp:
        rows.append(Row("teacher adaptation: steps per CPU-second", sp["steps_per_cpu_second"], unit="steps/CPU-s",
                        kind="timing", note=f"over {sp['steps_timed']} timed steps; shared cores"))
    if "extrapolated_cpu_hours_to_gate" in sp:
        rows.append(Row("teacher adaptation: CPU-hours to the gate (log-linear extrapolation)",
                        sp["extrapolated_cpu_hours_to_gate"], unit="CPU-h", kind="timing",
                        note=f"{sp['extrapolated_steps_to_gate']:.0f} steps; a fit to the curve, not a measurement"))
    return rows


def comparison_rows(ft: dict, widths, tasks) -> list[Row]:
    """dual_proj (or joint) minus each same-size baseline, paired by seed (percentage points), and a verdict
    per width and task: 'beats' only when every paired 95% interval lies above 0."""
    rows = []
    for width in widths:
        ours = f"joint_d{width}" if f"joint_d{width}" in ft else f"dual_proj_d{width}"
        for task in tasks:
            if task not in ft.get(ours, {}):
                continue
            mine = ft[ours][task]
            diffs = []
            for base in BASELINES:
                other = ft.get(f"{base}_d{width}", {}).get(task)
                if other is None:
                    continue
                if other.get("seeds", None) != mine.get("seeds", None):
                    continue  # not paired
                row = Row.from_paired(f"d={width} {task}: {ours.rsplit('_', 1)[0]} − {base} (pp)",
                                      [100 * x for x in mine["runs"]], [100 * x for x in other["runs"]], unit="pp",
                                      split=mine.get("split", ""), higher_is_better=True,
                                      note="paired by fine-tuning seed; t-interval, sign-flip permutation p")
                rows.append(row)
                diffs.append(row)
            if not diffs:
                continue
            if len(mine["runs"]) < 3:
                rows.append(Row(f"d={width} {task}: verdict", None, note="fewer than 3 seeds: no verdict"))
                continue
            beats = all(r.ci_low is not None and r.ci_low > 0 for r in diffs)
            loses = [r.metric.split(" − ")[1].split(" ")[0] for r in diffs if r.ci_high is not None and r.ci_high < 0]
            rows.append(Row(f"d={width} {task}: {ours.rsplit('_', 1)[0]} beats every same-size baseline?", beats,
                            split=mine.get("split", ""), paper_note="yes (paper's claim)",
                            note=("worse than " + ", ".join(loses) + " (paired CI below 0)") if loses else
                                 ("every paired CI above 0" if beats else "no paired CI excludes 0 on both sides")))
    return rows


def build_report(results: dict, profile: str, out_dir: Path) -> ReproReport:
    ft, sizes, stages = results.get("finetune", {}), results.get("size_speed", {}), results["stages"]
    pc = results["config"]
    voc = results["vocab"]
    held = "held-out SST-2 dev + SNIPS test text"
    rows = [
        Row("MLM corpus words", results["corpus"]["words"], unit="words", paper_note="Wikipedia + BooksCorpus",
            note="offline corpus: Reuters train, SST-2 train, ATIS/SNIPS train"),
        Row("MLM corpus train segments", results["corpus"]["train_segments"], unit="segments"),
        Row("V_s size", voc["student_vocab_size"], unit="tokens", paper=4928),
        Row("V_t tokens in words V_s segments identically (%)", _pct(voc["token_match_rate"]), unit="%", split=held,
            paper=PAPER_MATCH, paper_note=PAPER["match"]),
        Row("words segmented identically (%)", _pct(voc["word_match_rate"]), unit="%", split=held),
        Row("V_t tokens segmented identically, held-out corpus segments (%)", _pct(voc["corpus_token_match_rate"]),
            unit="%", split="held-out corpus segments", paper=PAPER_MATCH, paper_note=PAPER["match"],
            note="corpus segments held out from V_s training"),
        Row("words segmented identically, held-out corpus segments (%)", _pct(voc["corpus_word_match_rate"]),
            unit="%", split="held-out corpus segments", note="corpus segments held out from V_s training"),
    ]
    teacher = results.get("teacher")
    plots = []
    if teacher:
        rows += teacher_rows(teacher)
        plots.append(_plot_teacher(teacher, out_dir, profile))
    gate_ok = bool(teacher and teacher["gate_passed"])
    for width in pc["widths"]:
        s1 = stages.get(f"stage1_d{width}")
        if s1:
            h = s1["heldout"]["p0.5"]
            note = f"at p=1 (student vocabulary only): {_pct(s1['heldout']['p1.0']['acc'])}"
            rows += [Row(f"stage I (d={width}) held-out acc. V_t targets at p=0.5 (%)", _pct(h["acc_teacher_vocab"]),
                         unit="%", split="held-out corpus segments", note=note),
                     Row(f"stage I (d={width}) held-out acc. V_s targets at p=0.5 (%)", _pct(h["acc_student_vocab"]),
                         unit="%", split="held-out corpus segments", note=note)]
    for name, s in sizes.items():
        ours = name.startswith(("dual_proj", "joint"))
        emb = f"embeddings {100 * s['embedding_share']:.0f}% of params"
        rows += [Row(f"{name}: params", s["params"], unit="parameters", note=emb),
                 Row(f"{name}: fp32 MB", s["fp32_bytes"] / 1e6, unit="MB", paper_note=PAPER["size"] if ours else "",
                     higher_is_better=False),
                 Row(f"{name}: int8 MB", s["int8_bytes"] / 1e6, unit="MB", higher_is_better=False),
                 Row(f"{name}: compression vs MiniLM (x)", s["x_vs_teacher"], unit="x"),
                 Row(f"{name}: compression vs BERT-base (x)", s["x_vs_bert_base"], unit="x",
                     paper_note="> 60 (vs BERT-base)" if ours else ""),
                 Row(f"{name}: CPU latency b=1 (ms)", s["latency_ms"], unit="ms", kind="timing",
                     note="32 tokens, side by side", higher_is_better=False),
                 Row(f"{name}: CPU throughput b=32 (sent/s)", s["throughput_per_s"], unit="sentences/s",
                     kind="timing", note="32 tokens, side by side")]
        for task in ("sst2", "snips_intent"):
            key = "sst2_teacher" if (task == "sst2" and name == "teacher") else ("sst2" if task == "sst2" else "snips")
            shown = name.startswith(("dual_proj", "joint", "teacher"))
            row = _acc_row(ft, name, task, PAPER_NUMBER.get(key) if shown else None, PAPER[key] if shown else "")
            if row is not None:
                rows.append(row)
    if gate_ok:
        rows += comparison_rows(ft, pc["widths"], pc["tasks"])

    headline = None
    h96 = sizes.get("dual_proj_d96") or sizes.get("joint_d96")
    if h96:
        headline = Row("hidden-96 student, fp32 MB", h96["fp32_bytes"] / 1e6, unit="MB", paper=7.0,
                       paper_note=PAPER["size"], higher_is_better=False,
                       note=f"{BERT_BASE_PARAMS / h96['params']:.0f}x smaller than BERT-base; 6 layers, "
                            f"|V_s|={results['vocab']['student_vocab_size']}; profile {profile}")
    elif teacher:
        headline = teacher_rows(teacher)[0]
    plots += [p for p in [_plot(ft, sizes, out_dir, profile)] if p]
    teacher_name = "a random tiny BERT (smoke: plumbing only)" if pc["tiny_teacher"] else (
        pc.get("teacher_dir") or "all-MiniLM-L6-v2 (22.7M) — the paper used BERT-base/large")
    gate_note = ""
    if teacher and not gate_ok:
        gate_note = (f"**The teacher did not pass its gate** ({teacher['decision']}: {100 * teacher['final']['acc_mask']:.2f}% "
                     f"at real [MASK] positions against {100 * teacher['gate']:.0f}%). No student was trained and no "
                     "verdict about the method can be drawn: the teacher is the limit. ")
    notes = (gate_note + f"Profile `{profile}`. Teacher: {teacher_name}, adapted to MLM (learning curve in "
             "`teacher_curve.<profile>.png`). Fine-tuning: the learning rate and epoch of every model are chosen on "
             "a split carved from train with the same trial budget; the reported split (SST-2: GLUE dev; SNIPS: "
             "test; or a user's file) is scored once per seed. Accuracies are means over seeds ± the 95% "
             "t-interval; differences are paired by seed. Latency/throughput: all encoders timed interleaved in "
             "one process on shared CPU cores, so they are provisional. The secondary-source paper numbers come "
             "from a BERT-base teacher and a Wikipedia-scale corpus; they are context, not a target this machine "
             "can reach.")
    return ReproReport(rows=rows, headline=headline, plots=[p for p in plots if p], notes=notes,
                       extra={"results": results})


def _plot_teacher(t: dict, out_dir: Path, profile: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    pts = t["curve"]
    x = [p["head_step"] + p["adapt_step"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("mask", "o-"), ("random", "s--"), ("unchanged", "^:")):
        ax.plot(x, [100 * p[f"acc_{kind}"] for p in pts], style, label=f"{kind} positions")
    ax.plot(x, [100 * p.get("freq_acc_mask", 0.0) for p in pts], color="gray", lw=1, label="frequency baseline [MASK]")
    ax.axhline(100 * t["gate"], color="red", lw=1, ls="--", label=f"gate {100 * t['gate']:.0f}%")
    ax.set_xlabel("MLM steps (head-only, then unfrozen)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"teacher MLM adaptation ({profile}): {t['decision']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"teacher_curve.{profile}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot(ft: dict, sizes: dict, out_dir: Path, profile: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    from common import stats

    tasks = sorted({t for m in ft.values() for t in m})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, s in sizes.items():
            if task not in ft.get(name, {}):
                continue
            vals = [100 * v for v in ft[name][task]["runs"]]
            summ = stats.summarize(vals, "t")
            err = 0.0 if summ.ci_low is None else (summ.ci_high - summ.ci_low) / 2
            ax.errorbar(s["params"], summ.mean, yerr=err, fmt="o", capsize=3)
            ax.annotate(name, (s["params"], summ.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if task == "sst2":
            ax.scatter([5.6e6], [84.7], marker="x", color="gray")
            ax.annotate("paper, 5.6M (secondary src.)", (5.6e6, 84.7), fontsize=7, color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("encoder parameters")
        ax.set_ylabel(f"{task} accuracy (%), mean ± 95% CI")
        ax.set_title(f"{task} ({profile})")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"accuracy_vs_params.{profile}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_profile(ctx: ProfileContext) -> ReproReport:
    from .train import build_pipeline

    cfg = compose_profile(ctx.profile, ctx)
    results = build_pipeline(cfg, ctx.work_dir).run()
    return build_report(results, ctx.profile, ctx.out_dir)


def main(argv=None):
    return run_profiles("vocab_distill", {"smoke": run_profile, "quick": run_profile, "full": run_profile}, argv)


if __name__ == "__main__":
    main()
