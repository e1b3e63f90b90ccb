"""The teacher as a real masked-language model: MLM adaptation of the whole encoder, its learning curve,
and the gate that stage I waits for.

all-MiniLM-L6-v2 ships no MLM head and was tuned as a contrastive sentence encoder: a head trained on its
frozen encoder learns to copy the input (52% at unchanged positions) while it fills 6.7% of real [MASK]
positions (issue 24). So the whole encoder, E_t and the decoder tied to it are trained with V_t-only MLM on
the package's corpus, in chunks of ``eval_every`` steps, until the held-out accuracy at real [MASK]
positions reaches ``gate`` (25%), the curve flattens, or ``max_steps`` are spent. A folder that already holds
an MLM head (``pipeline.teacher_dir``: any BERT pre-trained with MLM) skips the head-only warm-up, and one
that already passes the gate is not trained at all.

Layout under ``work_dir/teacher``: ``head/`` and ``adapt/`` (Trainer runs), ``curve.json`` (every
evaluation, written after each chunk, so a killed run resumes with its curve), ``teacher.json`` (the final
record: curve, baselines, gate decision, speed) and ``teacher_mlm/`` (the adapted teacher as a BERT folder
with its MLM head), written only once the adaptation has stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_write
from common.logging import get_logger

from .config import MixedMLMOptions, TeacherOptions
from .mixed import EncodedText, MixedVocabCodec
from .model import MixedVocabMLM, quiet_transformers
from .pretrain import EVAL_BATCH, eval_mixed_mlm, train_mixed_teacher, with_overrides

log = get_logger("vocab_distill.teacher")

GATE_METRIC = "acc_mask"
"""The gate looks at real [MASK] positions only: unchanged positions reward copying the input, and random
ones are a tenth of the targets."""


def load_teacher_with_head_info(model_dir: str | Path):
    """``(BertForMaskedLM, has_mlm_head)``: whether the folder held the MLM transform (MiniLM does not; a
    BERT pre-trained with MLM does). The decoder is tied to E_t either way."""
    from transformers import BertForMaskedLM

    with quiet_transformers():
        model, info = BertForMaskedLM.from_pretrained(str(model_dir), local_files_only=True,
                                                      output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k.startswith("cls.predictions")]
    return model, not missing


def most_frequent_token(encs: Sequence[EncodedText], special_ids: set[int]) -> int:
    """The V_t token that occurs most often in the training segments (the frequency baseline's answer)."""
    counts = np.bincount(np.concatenate([e.t_ids for e in encs if len(e.t_ids)]).astype(np.int64))
    for i in special_ids:
        if i < len(counts):
            counts[i] = 0
    return int(counts.argmax())


def constant_after_warmup(warmup_steps: int):
    """A ``scheduler_fn`` for the Trainer: linear warm-up, then the base learning rate for good. The total
    does not enter, so a run continued with a larger budget keeps the schedule it had."""

    def build(optimizer, total_steps: int):
        del total_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))

    return build


def gate_decision(points: Sequence[dict], opts: TeacherOptions) -> str | None:
    """Whether the adaptation stops after the last point of its curve, and why.

    ``points`` are the evaluations in order (before training, after the head warm-up, then one per chunk),
    each with ``acc_mask`` and ``adapt_step``. Returns None (keep adapting), ``"passed"`` (the last point is
    at or above the gate and we stop: at once with ``stop_at_gate``, else when the curve flattens or the budget
    ends), ``"flattened"`` (below the gate, and the last ``patience`` points gained less than ``min_delta``
    on the best point before them) or ``"budget"`` (below the gate after ``max_steps``)."""
    accs = [p[GATE_METRIC] for p in points]
    passed = accs[-1] >= opts.gate
    if passed and opts.stop_at_gate:
        return "passed"
    if points[-1]["adapt_step"] >= opts.max_steps:
        return "passed" if passed else "budget"
    k = opts.patience
    if k > 0 and len(accs) > k and max(accs[-k:]) < max(accs[:-k]) + opts.min_delta:
        return "passed" if passed else "flattened"
    return None


def speed_and_projection(points: Sequence[dict], gate: float) -> dict:
    """Adaptation speed (steps per CPU-second, CPU time of this process and its threads) and, when the
    curve rises (at least three adaptation points), a log-linear extrapolation of the steps and CPU-hours
    to the gate.

    The extrapolation fits acc_mask = a + b ln(step) to the adaptation points (learning curves of this
    kind are roughly straight in log steps before they bend down), so it is an optimistic guess, not a
    promise: a curve that bends earlier needs more, or never gets there."""
    chunks = [p for p in points if p.get("phase") == "adapt" and p.get("chunk_cpu_seconds")]
    out: dict = {}
    if chunks:
        steps = sum(p["chunk_steps"] for p in chunks)
        cpu = sum(p["chunk_cpu_seconds"] for p in chunks)
        wall = sum(p["chunk_wall_seconds"] for p in chunks)
        out |= {"steps_timed": steps, "steps_per_cpu_second": steps / cpu, "cpu_seconds_per_step": cpu / steps,
                "wall_seconds_per_step": wall / steps}
    adapt = [p for p in points if p.get("phase") == "adapt" and p["adapt_step"] > 0]
    if len(adapt) >= 3 and gate > 0:
        x = np.log([p["adapt_step"] for p in adapt])
        y = np.array([p[GATE_METRIC] for p in adapt])
        slope, intercept = np.polyfit(x, y, 1)
        out |= {"loglinear_slope_per_e": float(slope), "loglinear_intercept": float(intercept)}
        if slope > 0:
            steps_to_gate = math.exp((gate - intercept) / slope)
            out["extrapolated_steps_to_gate"] = steps_to_gate
            if "cpu_seconds_per_step" in out:
                out["extrapolated_cpu_hours_to_gate"] = steps_to_gate * out["cpu_seconds_per_step"] / 3600
    return out


def _point(model: MixedVocabMLM, codec: MixedVocabCodec, eval_encs, frequent_id: int, mask_prob: float,
           **extra) -> dict:
    model.eval()
    metrics = eval_mixed_mlm(model, codec, eval_encs, p=0.0, batch_size=EVAL_BATCH, mask_prob=mask_prob,
                             sharded=True, frequent_id=frequent_id)
    model.train()
    return extra | metrics


def adapt_teacher(model: MixedVocabMLM, has_head: bool, codec: MixedVocabCodec, train_encs: Sequence[EncodedText],
                  eval_encs: Sequence[EncodedText], trainer_cfg, run_dir: str | Path, opts: TeacherOptions, *,
                  batch_size: int, checkpoint_every: int | None = None, logger_cfg=None,
                  write=True) -> dict:
    """Adapt ``model`` (in place) until the gate decides; returns the record ``teacher.json`` holds.

    Resumable: the curve is on disk after every chunk and each phase continues from its own checkpoints
    (``resume=auto`` inside; the pipeline checks resume=never at its level). ``write=False`` on torchrun ranks
    other than 0."""
    run_dir = Path(run_dir)
    curve_path = run_dir / "curve.json"
    state = json.loads(curve_path.read_text()) if curve_path.is_file() else {"points": []}
    points: list[dict] = state["points"]
    frequent_id = most_frequent_token(train_encs, codec.special_ids)
    mixed_opts = MixedMLMOptions(lr_teacher=opts.lr, lr_new=opts.lr_head, mask_prob=opts.mask_prob,
                                 weight_decay=opts.weight_decay, group_by_length=opts.group_by_length)
    schedule = constant_after_warmup(opts.warmup_steps)

    def save_curve():
        if write:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(curve_path, lambda f: f.write(json.dumps({"points": points}, indent=1).encode()))

    def fit(phase: str, steps: int):
        cfg = with_overrides(trainer_cfg, max_epochs=None, max_steps=steps, batch_size=batch_size,
                             eval_every_steps=None, checkpoint_every_steps=checkpoint_every, monitor=None,
                             early_stopping_patience=None, find_unused_parameters=True)
        return train_mixed_teacher(model, codec, train_encs, None, cfg, run_dir / phase,
                                   stage="stage0" if phase == "head" else "stage0_adapt", opts=mixed_opts,
                                   resume="auto", logger_cfg=logger_cfg, scheduler_fn=schedule)

    if not points:
        points.append(_point(model, codec, eval_encs, frequent_id, opts.mask_prob, phase="before", adapt_step=0,
                             head_step=0))
        save_curve()
    head_steps = 0 if has_head else opts.head_steps
    if head_steps > 0:
        fit("head", head_steps)  # returns at once, restoring its weights, when the phase is already done
        if not any(p["phase"] == "head" for p in points):
            points.append(_point(model, codec, eval_encs, frequent_id, opts.mask_prob, phase="head",
                                 adapt_step=0, head_step=head_steps))
            save_curve()
    while (decision := gate_decision(points, opts)) is None:
        target = min(points[-1]["adapt_step"] + opts.eval_every, opts.max_steps)
        t_cpu, t_wall = time.process_time(), time.time()
        result = fit("adapt", target)
        cpu, wall = time.process_time() - t_cpu, time.time() - t_wall
        done_before = points[-1]["adapt_step"]
        points.append(_point(model, codec, eval_encs, frequent_id, opts.mask_prob, phase="adapt",
                             adapt_step=result.step, head_step=head_steps, chunk_steps=result.step - done_before,
                             chunk_cpu_seconds=cpu, chunk_wall_seconds=wall))
        log.info("teacher adaptation step %d: [MASK] acc %.4f (gate %.2f), loss %.3f, %.2f CPU-s/step",
                 result.step, points[-1][GATE_METRIC], opts.gate, points[-1]["mlm_loss"],
                 cpu / max(result.step - done_before, 1))
        save_curve()
    last = points[-1]
    return {"decision": decision, "gate_passed": decision == "passed", "gate": opts.gate,
            "gate_metric": GATE_METRIC, "final": last, "curve": points, "has_mlm_head": has_head,
            "frequent_token_id": frequent_id, "frequent_token": codec.teacher_tok.id_to_token(frequent_id),
            "speed": speed_and_projection(points, opts.gate)}


def curve_table(record: dict) -> str:
    """The learning curve as a Markdown table: [MASK] / random / unchanged accuracy beside the baselines."""
    lines = ["| phase | head steps | adapt steps | MLM loss | [MASK] | random | unchanged | all | copy (all) "
             "| frequency (all) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in record["curve"]:
        lines.append(f"| {p['phase']} | {p['head_step']} | {p['adapt_step']} | {p['mlm_loss']:.3f} "
                     f"| {100 * p['acc_mask']:.2f} | {100 * p['acc_random']:.2f} | {100 * p['acc_unchanged']:.2f} "
                     f"| {100 * p['acc']:.2f} | {100 * p['copy_acc']:.2f} | {100 * p.get('freq_acc', 0.0):.2f} |")
    return "\n".join(lines)
