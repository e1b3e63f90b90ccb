"""CPU cost of a pipeline configuration before it runs: ``python -m vocab_distill.estimate [overrides ...]``
(default ``experiment=full``), e.g. ``python -m vocab_distill.estimate experiment=full model=h96``.

It builds the real corpus and models of the configuration and times a few optimizer steps of every kind the
run will take (the teacher's MLM adaptation, stage I per width, each student method per width, fine-tuning
of each model, an evaluation pass), in CPU seconds of this process (``time.process_time``: all its threads),
then multiplies by the steps the configuration asks for. The teacher's adaptation has no fixed length (it
stops at its gate): it is counted at ``teacher.max_steps``, its upper bound, and a measured learning curve
(``--teacher-steps``) can replace it. Fine-tuning is counted at its upper bound (every reported run trains
to the last epoch). Timings on shared cores are inflated by the other processes: read them as an upper
estimate, and rerun on idle cores for a figure to rely on.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertForMaskedLM, BertForSequenceClassification

from common.trainer import length_grouped_batches

from .mixed import aligned_batch, mask_tokens, mixed_vocab_ranges
from .model import MixedVocabMLM, load_teacher_mlm, student_config
from .pretrain import HiddenStateDistiller, StudentDistiller


def _cpu_per_step(step, batches: list, warmup: int = 1) -> float:
    """Mean CPU seconds of ``step(batch)`` over ``batches`` (the first ``warmup`` not counted)."""
    for b in batches[:warmup]:
        step(b)
    t = time.process_time()
    for b in batches[warmup:]:
        step(b)
    return (time.process_time() - t) / max(1, len(batches) - warmup)


def _sgd_step(model, loss_of):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        opt.step()

    return step


def _grouped(encs, lengths, batch_size: int, n: int, seed: int = 0) -> list[list]:
    """``n`` batches as the pipeline's length-grouped epoch makes them (``common.trainer.length_grouped_batches``),
    drawn at random from one epoch so their lengths are representative."""
    order = list(range(len(encs)))
    random.Random(seed).shuffle(order)
    batches = length_grouped_batches(order, lengths, batch_size, torch.Generator().manual_seed(seed))
    picks = random.Random(seed + 1).sample(batches, min(n, len(batches)))
    return [[encs[i] for i in b] for b in picks]


def measure(pipe, steps: int = 4) -> dict:
    """CPU seconds per optimizer step of every stage of ``pipe``'s configuration (data prepared)."""
    pc, bs = pipe.pc, pipe.pc.pretrain_batch_size
    torch.manual_seed(0)
    t_lengths = [len(e.t_ids) for e in pipe.train_mixed]
    mixed_batches = _grouped(pipe.train_mixed, t_lengths, bs, steps + 1)
    ranges = mixed_vocab_ranges(pipe.codec)
    out: dict = {"steps_timed": steps}

    def mixed_loss(model, p):
        def loss(encs):
            b = pipe.codec.batch(encs, p)
            ids, labels = mask_tokens(b["input_ids"], b["special_mask"], mask_id=pipe.codec.mask_id,
                                      vocab_ranges=ranges)
            return model(ids, b["attention_mask"], labels).loss
        return loss

    teacher = MixedVocabMLM(load_teacher_mlm(pipe.teacher_dir), pipe.student_tok.get_vocab_size(), 8).train()
    out["teacher_adapt"] = _cpu_per_step(_sgd_step(teacher, mixed_loss(teacher, 0.0)), mixed_batches)
    with torch.no_grad():
        teacher.eval()
        out["teacher_eval_per_segment"] = _cpu_per_step(lambda encs: mixed_loss(teacher, 0.0)(encs),
                                                        mixed_batches) / bs
    s_lengths = [len(e.s_ids) for e in pipe.train_mixed]
    s_batches = _grouped(pipe.train_mixed, s_lengths, bs, steps + 1)
    s_train, _ = pipe._encoded(pipe.s_codec)
    t_train, _ = pipe._encoded(pipe.t_codec)
    s_plain = _grouped(s_train, [len(e) for e in s_train], bs, steps + 1)
    t_plain = _grouped(t_train, [len(e) for e in t_train], bs, steps + 1)
    layers = pc.student_layers or teacher.teacher.config.num_hidden_layers
    for width in pc.widths:
        m1 = MixedVocabMLM(load_teacher_mlm(pipe.teacher_dir), pipe.student_tok.get_vocab_size(), width).train()
        out[f"stage1_d{width}"] = _cpu_per_step(_sgd_step(m1, mixed_loss(m1, pipe.mixed_opts.p_max)), mixed_batches)
        del m1
        for method in pc.methods:
            vocab = pipe.t_codec.vocab_size if method == "logit_kd" else pipe.s_codec.vocab_size
            student = BertForMaskedLM(student_config(vocab, width, layers))
            t = load_teacher_mlm(pipe.teacher_dir)
            if method in ("dual_proj", "proj_only"):
                dist = StudentDistiller(student, t, projection=pipe._projection(t.config, student.config))
            elif method == "logit_kd":
                dist = StudentDistiller(student, t, kd_weight=pc.kd_weight)
            elif method == "hidden_kd":
                dist = HiddenStateDistiller(student, t)
            else:
                dist = StudentDistiller(student)
            dist.train()
            if method == "hidden_kd":
                batches = s_batches
                make = lambda encs: aligned_batch(pipe.codec, pipe.s_codec, encs)  # noqa: E731
            else:
                codec = pipe.t_codec if method == "logit_kd" else pipe.s_codec
                batches = t_plain if method == "logit_kd" else s_plain
                make = lambda encs, c=codec: c.masked_batch(encs)  # noqa: E731
            loss = lambda encs, d=dist, mk=make: d(**{k: v for k, v in mk(encs).items() if k != "kinds"})["loss"]  # noqa: E731
            out[f"stage2_{method}_d{width}"] = _cpu_per_step(_sgd_step(dist, loss), batches)
    # fine-tuning: steps of batch finetune_batch_size on each task's own training sentences (their lengths
    # set the cost: SST-2 phrases and SNIPS utterances are far shorter than corpus segments)
    from .finetune import load_task

    ft_models = {"teacher": None} | {f"student_d{w}": w for w in pc.widths}
    for task in pc.tasks:
        data = load_task(task, pipe.data_dir, tune_size=pc.finetune_tune_size, train_limit=pc.finetune_train_limit)
        out[f"train_size_{task}"] = len(data.train)
        sample = [t for t, _ in random.Random(0).sample(data.train, min(len(data.train), 32 * (steps + 1)))]
        for name, width in ft_models.items():
            if width is None:
                model = BertForSequenceClassification.from_pretrained(str(pipe.teacher_dir), num_labels=2)
                tok_codec = pipe.t_codec
            else:
                model = BertForSequenceClassification(student_config(pipe.s_codec.vocab_size, width, layers))
                tok_codec = pipe.s_codec
            encs = [tok_codec.encode(s)[: pc.finetune_max_len - 2] for s in sample]
            batches = [encs[i: i + pc.finetune_batch_size] for i in range(0, len(encs), pc.finetune_batch_size)]

            def ft_loss(encs, m=model, c=tok_codec):
                b = c.batch(encs)
                return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         labels=torch.zeros(len(encs), dtype=torch.long)).loss

            out[f"finetune_{task}_{name}"] = _cpu_per_step(_sgd_step(model.train(), ft_loss), batches)
    return out


def plan(pipe, per_step: dict, teacher_steps: int | None = None) -> dict:
    """CPU-hours per stage: per-step costs times the steps the configuration asks for."""
    pc, t = pipe.pc, pipe.teacher_opts
    hours: dict[str, float] = {}
    n_adapt = teacher_steps if teacher_steps is not None else t.max_steps
    evals = math.ceil(n_adapt / t.eval_every) + 2
    hours["teacher adaptation"] = (n_adapt * per_step["teacher_adapt"] + t.head_steps * per_step["teacher_adapt"] * 0.4
                                   + evals * pc.n_eval_segments * per_step["teacher_eval_per_segment"]) / 3600
    for width in pc.widths:
        hours[f"stage I d={width}"] = pc.stage1_steps * per_step[f"stage1_d{width}"] / 3600
        for method in pc.methods:
            hours[f"stage II {method} d={width}"] = pc.stage2_steps * per_step[f"stage2_{method}_d{width}"] / 3600
    for task in pc.tasks:
        n_train = per_step[f"train_size_{task}"]
        steps_per_epoch = math.ceil(n_train / pc.finetune_batch_size)
        eval_share = 1.15  # tuning + test passes after each epoch, about 15% of an epoch's training here
        student_epochs = pc.finetune_epochs * (len(pc.finetune_lrs_student) + len(pc.finetune_seeds))
        for width in pc.widths:
            hours[f"fine-tune {task} students d={width}"] = (len(pc.methods) * student_epochs * steps_per_epoch
                                                            * per_step[f"finetune_{task}_student_d{width}"] * eval_share
                                                            / 3600)
        if pc.finetune_teacher:
            seeds = pc.finetune_teacher_seeds or pc.finetune_seeds
            epochs = pc.finetune_epochs * (len(pc.finetune_lrs_teacher) + len(seeds))
            hours[f"fine-tune {task} teacher"] = (epochs * steps_per_epoch * per_step[f"finetune_{task}_teacher"]
                                                  * eval_share / 3600)
    hours["total"] = sum(hours.values())
    return hours


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vocab_distill.estimate", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=full)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per stage (after one warm-up step)")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="adaptation steps to count (default: teacher.max_steps, the upper bound)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the measurement and plan as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from hydra import compose, initialize_config_dir

    from common.config import register_configs

    from .train import build_pipeline

    overrides = a.overrides or ["experiment=full"]
    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.resume = "auto"
        pipe = build_pipeline(cfg, tmp)
        pipe.prepare_data()
        per_step = measure(pipe, a.steps)
    hours = plan(pipe, per_step, a.teacher_steps)
    print(json.dumps({"overrides": overrides, "cpu_seconds_per_step": per_step}, indent=1))
    print("| stage | CPU-hours |\n|---|---|")
    for k, v in hours.items():
        print(f"| {k} | {v:.2f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"overrides": overrides, "cpu_seconds_per_step": per_step,
                                           "cpu_hours": hours}, indent=1))


if __name__ == "__main__":
    main()
