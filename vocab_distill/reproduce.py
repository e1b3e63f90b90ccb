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


def _acc_row(ft: dict, model: str, task: str, metric: str, split: str, paper: float | None,
             paper_note: str) -> Row | None:
    """Fine-tuning accuracy (%) over seeds: mean and 95% CI (common.stats) from the per-seed runs."""
    r = ft.get(model, {}).get(task)
    if r is None:
        return None
    return Row.from_seeds(f"{model}: {metric}", [100 * x for x in r["runs"]], unit="%", split=split, paper=paper,
                          paper_note=paper_note, higher_is_better=True)


def build_report(results: dict, profile: str, out_dir: Path) -> ReproReport:
    ft, sizes, stages = results["finetune"], results["size_speed"], results["stages"]
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
    s0 = stages.get("stage0")
    if s0:
        rows += [Row(f"teacher masked-token acc. {k} stage 0 (%)", _pct(s0[k]["acc"]), unit="%",
                     split="held-out corpus segments",
                     note="MiniLM ships no MLM head; held-out corpus, V_t only; head-only, then unfrozen")
                 for k in ("before", "after_head", "after_adapt") if k in s0]
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
        for task, split, metric in (("sst2", "dev", "SST-2 dev acc. (%)"),
                                    ("snips_intent", "test", "SNIPS intent test acc. (%)")):
            key = "sst2_teacher" if (task == "sst2" and name == "teacher") else ("sst2" if task == "sst2" else "snips")
            shown = name.startswith(("dual_proj", "joint", "teacher"))
            row = _acc_row(ft, name, task, metric, split, PAPER_NUMBER.get(key) if shown else None,
                           PAPER[key] if shown else "")
            if row is not None:
                rows.append(row)
    verdicts = []
    for width in pc["widths"]:
        ours = f"joint_d{width}" if f"joint_d{width}" in ft else f"dual_proj_d{width}"
        for task in pc["tasks"]:
            if ours not in ft:
                continue
            base = {m: ft[f"{m}_d{width}"][task]["mean"] for m in ("scratch", "logit_kd") if f"{m}_d{width}" in ft}
            if not base:
                continue
            mine = ft[ours][task]["mean"]
            beats = all(mine > v for v in base.values())
            detail = ", ".join(f"{m} {100 * v:.2f}" for m, v in base.items())
            verdicts.append(Row(f"d={width} {task}: {ours.rsplit('_', 1)[0]} beats both same-size baselines?", beats,
                                split="dev" if task == "sst2" else "test", paper_note="yes (paper's claim)",
                                note=f"{100 * mine:.2f} vs {detail} (means over seeds)"))
    rows += verdicts

    headline = None
    h96 = sizes.get("dual_proj_d96") or sizes.get("joint_d96")
    if h96:
        headline = Row("hidden-96 student, fp32 MB", h96["fp32_bytes"] / 1e6, unit="MB", paper=7.0,
                       paper_note=PAPER["size"], higher_is_better=False,
                       note=f"{BERT_BASE_PARAMS / h96['params']:.0f}x smaller than BERT-base; 6 layers, "
                            f"|V_s|={results['vocab']['student_vocab_size']}; profile {profile}")
    plots = [p for p in [_plot(ft, sizes, out_dir, profile)] if p]
    notes = (f"Profile `{profile}`. Teacher: {'a random tiny BERT (smoke: plumbing only)' if pc['tiny_teacher'] else 'all-MiniLM-L6-v2 (22.7M) — the paper used BERT-base/large'}. "
             "Accuracies are means over fine-tuning seeds (± the 95% t-interval when more than one). SST-2 is reported on dev "
             "(last epoch, no dev-based selection); SNIPS on test with the checkpoint of best dev accuracy. "
             "Latency/throughput: all encoders timed interleaved in one process on shared CPU cores, so they are "
             "provisional. The secondary-source paper numbers come from a BERT-base teacher and a Wikipedia-scale "
             "corpus; they are context, not a target this machine can reach.")
    return ReproReport(rows=rows, headline=headline, plots=plots, notes=notes, extra={"results": results})


def _plot(ft: dict, sizes: dict, out_dir: Path, profile: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    tasks = sorted({t for m in ft.values() for t in m})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, s in sizes.items():
            if task not in ft.get(name, {}):
                continue
            r = ft[name][task]
            ax.errorbar(s["params"], 100 * r["mean"], yerr=100 * r["std"], fmt="o", capsize=3)
            ax.annotate(name, (s["params"], 100 * r["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if task == "sst2":
            ax.scatter([5.6e6], [84.7], marker="x", color="gray")
            ax.annotate("paper, 5.6M (secondary src.)", (5.6e6, 84.7), fontsize=7, color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("encoder parameters")
        ax.set_ylabel(f"{task} accuracy (%)")
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
