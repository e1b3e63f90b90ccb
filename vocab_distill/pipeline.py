"""The whole experiment, stage by stage, resumable: corpus -> V_s -> teacher MLM adaptation and its gate ->
stage I -> stage II and the baselines -> exports -> fine-tuning (selection on a split carved from train, then
the reported seeds) -> size/speed table. Used by ``train.py`` (Hydra) and ``reproduce.py``.

Layout of ``work_dir``::

    vocab/student_vocab.txt
    teacher/ head/, adapt/ (Trainer runs), curve.json, teacher.json, teacher_mlm/ (the adapted MLM teacher)
    stage1_d{d}/ (Trainer run) + export/                 mixed-vocabulary teacher and E_s for width d
    stage2_{method}_d{d}/ (Trainer run) + export/        students: dual_proj, scratch, logit_kd, hidden_kd
    finetune/{model}/{task}/select_lr{lr}/ (trials) + selection.json
    finetune/{model}/{task}/seed{s}/ (Trainer run) + result.json + export/ (the classifier folder)
    results.json

If the teacher does not reach ``teacher.gate`` at real [MASK] positions, the pipeline stops after the teacher
(``results["teacher"]["gate_passed"] = False``): no student is trained and no verdict can be drawn.

A finished stage leaves its ``export`` folder or ``result.json``; a rerun skips it. An unfinished one
continues from its last checkpoint when ``resume="auto"``.

Under ``torchrun`` every rank runs the whole pipeline (each stage's training is DDP, each evaluation is
sharded); rank 0 alone writes, and every rank waits for it (``_on_rank0``) before reading what it wrote.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import BertForMaskedLM, BertModel

from common.bench import peak_rss_bytes
from common.checkpoint import ResumeError, load_export, save_safetensors
from common.distributed import barrier, broadcast_object, is_main_process
from common.logging import get_logger

from .config import PipelineConfig, TeacherOptions
from .corpus import build_corpus, read_nlu_intents, read_sst2
from .evaluate import compression_ratios, size_report, speed_table
from .finetune import TASKS, choose, drop_checkpoints, finetune, load_task
from .mixed import MixedVocabCodec, StudentCodec, aligned_batch
from .model import (
    MixedVocabMLM,
    SharedProjection,
    load_encoder,
    load_teacher_mlm,
    make_tiny_teacher,
    save_bert_folder,
    student_config,
)
from .pretrain import (
    HiddenStateDistiller,
    JointDualTraining,
    MixedMLMOptions,
    StudentDistiller,
    StudentOptions,
    eval_mixed_mlm,
    train_joint,
    train_mixed_teacher,
    train_student,
    with_overrides,
)
from .teacher import adapt_teacher, load_teacher_with_head_info
from .vocab import (
    load_teacher_wordpiece,
    load_wordpiece,
    save_vocab_txt,
    segmentation_match_rate,
    teacher_model_path,
    train_student_wordpiece,
)

log = get_logger("vocab_distill")

STUDENT_METHODS = ("dual_proj", "scratch", "logit_kd", "hidden_kd", "mix_only", "proj_only")
"""dual_proj: stage I + stage II (the paper); scratch: same student, MLM only; logit_kd: student of the
same width with the teacher's vocabulary, MLM + logit distillation from the adapted teacher; hidden_kd: the
same student as dual_proj (V_s), MLM + TinyBERT-style hidden-state and attention distillation from the adapted
teacher. Ablations: mix_only: E_s from stage I, MLM only (alpha = 0); proj_only: random E_s, projections of the
adapted teacher."""
NEEDS_STAGE1 = ("dual_proj", "mix_only")


STUDENT_EMBEDDINGS = "student_embeddings.safetensors"
"""Stage I's student table E_s inside its export folder (+ .json); no pickle."""


def load_student_embeddings(stage1_dir: Path) -> torch.Tensor:
    """E_s from a stage-I export: ``student_embeddings.safetensors``, or an older run's
    ``student_embeddings.pt`` (a bare tensor, read as plain weights, never unpickled)."""
    new, old = stage1_dir / STUDENT_EMBEDDINGS, stage1_dir / "student_embeddings.pt"
    if old.is_file() and not new.is_file():
        return load_export(old)
    return load_export(new)["weight"]


def _json_dump(path: Path, obj) -> None:
    """Write ``obj`` as JSON (rank 0 only: the other ranks of a torchrun job hold the same object)."""
    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))


def _exists(path: Path) -> bool:
    """``path.exists()`` as rank 0 sees it, on every rank: ranks that saw a file rank 0 is writing differently
    would part ways (one skipping a stage the other trains)."""
    return broadcast_object(path.exists())


def _on_rank0(write) -> None:
    """``write()`` on rank 0, then every rank waits for it: what a stage exports, the next one loads."""
    if is_main_process():
        write()
    barrier()


def _stage_cfg(base, steps: int, batch_size: int, pc: PipelineConfig, **extra):
    return with_overrides(base, max_epochs=None, max_steps=steps, batch_size=batch_size,
                          eval_every_steps=pc.eval_every_steps, checkpoint_every_steps=pc.checkpoint_every_steps,
                          monitor=None, early_stopping_patience=None, **extra)


# Mixed-vocabulary stages use a data-dependent set of parameters: the teacher's adaptation never touches E_s,
# P_e, Q, c_s, and in stage I a batch without V_s (or V_t) targets leaves that softmax unused; DDP must be told
# (a parameter unused on every rank keeps no gradient, as in one process, so AdamW leaves it alone there too).
MIXED_DDP = {"find_unused_parameters": True}


class Pipeline:
    def __init__(self, pc: PipelineConfig, trainer_cfg, work_dir: str | Path, *, mixed: MixedMLMOptions,
                 student: StudentOptions, teacher: TeacherOptions | None = None, data_dir=None,
                 resume: str = "auto", logger_cfg=None):
        if pc.schedule not in ("two_stage", "joint"):
            raise ValueError(f"pipeline.schedule must be two_stage or joint, got {pc.schedule!r}")
        unknown = set(pc.methods) - set(STUDENT_METHODS)
        if unknown:
            raise ValueError(f"unknown student methods {sorted(unknown)}; choose from {STUDENT_METHODS}")
        bad_tasks = set(pc.test_files) - set(TASKS)
        if bad_tasks:
            raise ValueError(f"pipeline.test_files: unknown tasks {sorted(bad_tasks)}; choose from {list(TASKS)}")
        self.pc, self.base, self.work = pc, trainer_cfg, Path(work_dir)
        self.mixed_opts, self.student_opts = mixed, student
        self.teacher_opts = teacher or TeacherOptions()
        self.data_dir, self.resume, self.logger_cfg = data_dir, resume, logger_cfg
        if resume == "auto" and (self.work / "stage0").is_dir():
            raise ResumeError(f"{self.work} holds a run of the pipeline before issue 24 (a stage0/ folder): its "
                              "stage exports came from a teacher without the MLM gate and must not be reused. "
                              "Start fresh under another name=... (reproduce: --fresh).")
        self.teacher_dir = Path(pc.teacher_dir) if pc.teacher_dir else teacher_model_path()
        if pc.teacher_dir and not (self.teacher_dir / "config.json").is_file():
            raise FileNotFoundError(f"pipeline.teacher_dir={pc.teacher_dir}: no config.json there (a BERT folder "
                                    "with config.json, model.safetensors and vocab.txt)")
        if pc.tiny_teacher:
            tiny = self.work / "tiny_teacher"
            if not _exists(tiny):
                _on_rank0(lambda: make_tiny_teacher(tiny, self.teacher_dir / "vocab.txt", seed=trainer_cfg.seed))
            self.teacher_dir = tiny
        self.results: dict = {"stages": {}}
        self._encoding_cache: dict[int, tuple[list, list]] = {}
        self._check_resume()
        if is_main_process():
            self.work.mkdir(parents=True, exist_ok=True)

    def _check_resume(self) -> None:
        """resume=never refuses a work directory that already holds stage outputs; auto continues it.
        A checkpoint path makes no sense for a multi-stage pipeline (each stage has its own)."""
        if self.resume not in ("never", "auto"):
            raise ResumeError(f"resume={self.resume}: this multi-stage pipeline resumes with resume=auto "
                              "(every stage continues from its own newest checkpoint)")
        if self.resume == "never" and self.work.is_dir():
            done = sorted(p.name for p in self.work.iterdir()
                          if p.name.startswith(("stage", "finetune", "vocab", "teacher")) and p.name != "tiny_teacher")
            if done:
                raise ResumeError(f"{self.work} already holds a run ({', '.join(done[:4])}...). Continue it with "
                                  "resume=auto, or start fresh under another name=... (or delete the folder).")

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        pc = self.pc
        t0 = time.time()
        segments, stats = build_corpus(pc.sources, data_dir=self.data_dir, max_words=pc.max_words,
                                       limit_per_source=pc.limit_per_source)
        random.Random(0).shuffle(segments)
        n_eval = min(pc.n_eval_segments, max(1, len(segments) // 10))
        self.eval_texts, train_texts = segments[:n_eval], segments[n_eval:]
        if pc.max_train_segments:
            train_texts = train_texts[: pc.max_train_segments]
        self.train_texts = train_texts
        log.info("corpus: %s", stats.summary())

        self.teacher_tok = load_teacher_wordpiece(self.teacher_dir)
        vocab_file = self.work / "vocab" / "student_vocab.txt"
        if not _exists(vocab_file):
            _on_rank0(lambda: save_vocab_txt(
                train_student_wordpiece(segments[n_eval:], pc.student_vocab_size, pc.vocab_min_frequency),
                vocab_file))
        self.student_vocab_file = vocab_file
        self.student_tok = load_wordpiece(vocab_file)

        # Segmentation agreement on held-out task text (SST-2 dev, SNIPS test), never trained on.
        held_out = [t for t, _ in read_sst2("dev", self.data_dir)] + \
                   [t for t, _ in read_nlu_intents("snips", "test", self.data_dir)]
        m = segmentation_match_rate(self.teacher_tok, self.student_tok, held_out)
        mc = segmentation_match_rate(self.teacher_tok, self.student_tok, self.eval_texts)  # held-out corpus
        self.results["corpus"] = {"summary": stats.summary(), "segments": stats.total_segments,
                                  "words": stats.total_words, "train_segments": len(train_texts),
                                  "eval_segments": n_eval, "per_source_words": stats.words_kept}
        self.results["vocab"] = {"student_vocab_size": self.student_tok.get_vocab_size(),
                                 "word_match_rate": m.word_match_rate, "token_match_rate": m.token_match_rate,
                                 "corpus_word_match_rate": mc.word_match_rate,
                                 "corpus_token_match_rate": mc.token_match_rate,
                                 "heldout_words": m.words, "teacher_tokens": m.teacher_tokens,
                                 "student_tokens": m.student_tokens}
        self.codec = MixedVocabCodec(self.teacher_tok, self.student_tok, pc.max_len)
        self.train_mixed = self.codec.encode_all(train_texts)
        self.eval_mixed = self.codec.encode_all(self.eval_texts)
        self.s_codec = StudentCodec(self.student_tok, pc.max_len)
        self.t_codec = StudentCodec(self.teacher_tok, pc.max_len)
        n_tokens_t = sum(len(e.t_ids) for e in self.train_mixed)
        n_tokens_s = sum(len(e.s_ids) for e in self.train_mixed)
        self.results["corpus"].update(train_teacher_tokens=n_tokens_t, train_student_tokens=n_tokens_s)
        self.results["stages"]["data"] = {"seconds": time.time() - t0}
        log.info("data ready: %d train segments (%d V_t / %d V_s tokens), V_s word match %.3f",
                 len(train_texts), n_tokens_t, n_tokens_s, m.word_match_rate)

    # ------------------------------------------------------------------ the teacher and its gate
    def teacher(self) -> Path:
        """Adapt the whole teacher to MLM until the gate decides (``vocab_distill.teacher``); the record
        (learning curve, position kinds, baselines, speed, decision) goes to ``results["teacher"]``. Returns
        the adapted teacher's folder, written only once the adaptation has stopped."""
        out_dir = self.work / "teacher"
        out = out_dir / "teacher_mlm"
        record_path = out_dir / "teacher.json"
        if _exists(record_path) and _exists(out):
            self.results["teacher"] = json.loads(record_path.read_text())
            return out
        t0 = time.time()
        torch.manual_seed(self.base.seed)
        bert, has_head = load_teacher_with_head_info(self.teacher_dir)
        model = MixedVocabMLM(bert, self.student_tok.get_vocab_size(), 8)
        record = adapt_teacher(model, has_head, self.codec, self.train_mixed, self.eval_mixed, self.base, out_dir,
                               self.teacher_opts, batch_size=self.pc.pretrain_batch_size,
                               checkpoint_every=self.pc.checkpoint_every_steps, logger_cfg=self.logger_cfg,
                               write=is_main_process())
        record["seconds"] = time.time() - t0

        def export():
            model.teacher.save_pretrained(out)
            _json_dump(record_path, record)

        _on_rank0(export)
        self.results["teacher"] = record
        return out

    # ------------------------------------------------------------------ stage I
    def stage1(self, width: int, teacher0: Path) -> Path:
        out = self.work / f"stage1_d{width}" / "export"
        key = f"stage1_d{width}"
        if _exists(out):
            self.results["stages"][key] = json.loads((out / "stage1.json").read_text())
            return out
        t0 = time.time()
        torch.manual_seed(self.base.seed)
        model = MixedVocabMLM(load_teacher_mlm(teacher0), self.student_tok.get_vocab_size(), width)
        cfg = _stage_cfg(self.base, self.pc.stage1_steps, self.pc.pretrain_batch_size, self.pc, **MIXED_DDP)
        fit = train_mixed_teacher(model, self.codec, self.train_mixed, self.eval_mixed, cfg, out.parent,
                                  stage="stage1", opts=self.mixed_opts, resume=self.resume,
                                  logger_cfg=self.logger_cfg)
        model.eval()
        metrics = {f"p{p}": eval_mixed_mlm(model, self.codec, self.eval_mixed, p=p, sharded=True)
                   for p in (0.0, 0.5, 1.0)}
        info = {"heldout": metrics, "steps": fit.step, "seconds": time.time() - t0}

        def export():
            model.teacher.save_pretrained(out / "teacher")
            save_safetensors(out / STUDENT_EMBEDDINGS, {"weight": model.student_embeddings.weight})
            _json_dump(out / "stage1.json", info)

        _on_rank0(export)
        self.results["stages"][key] = info
        return out

    # ------------------------------------------------------------------ stage II and baselines
    def _projection(self, teacher_config, student_config) -> SharedProjection:
        pc = self.pc
        return SharedProjection(teacher_config, student_config, init=pc.projection_init,
                                biases=pc.projection_biases, norms=pc.projection_norms,
                                normalize=pc.projection_normalize)

    def student(self, method: str, width: int, teacher0: Path, stage1_dir: Path | None) -> Path:
        out = self.work / f"stage2_{method}_d{width}" / "export"
        key = f"stage2_{method}_d{width}"
        if _exists(out):
            self.results["stages"][key] = json.loads((out / "stage2.json").read_text())
            return out
        t0 = time.time()
        torch.manual_seed(self.base.seed)
        teacher_cfg = BertModel.config_class.from_pretrained(str(teacher0))
        layers = self.pc.student_layers or teacher_cfg.num_hidden_layers
        codec, vocab_file = self.s_codec, self.student_vocab_file
        train_items, make_batch, lengths = None, None, None

        def new_student(vocab_size: int) -> BertForMaskedLM:
            return BertForMaskedLM(student_config(vocab_size, width, layers,
                                                  max_positions=teacher_cfg.max_position_embeddings))

        if method in ("dual_proj", "mix_only", "proj_only"):
            student = new_student(codec.vocab_size)
            if method in NEEDS_STAGE1:  # the student table learnt inside the teacher in stage I
                with torch.no_grad():
                    student.bert.embeddings.word_embeddings.weight.copy_(
                        load_student_embeddings(stage1_dir))
            if method == "mix_only":
                distiller = StudentDistiller(student)
            else:  # projections of the stage-I teacher (dual_proj) or of the adapted teacher (proj_only)
                teacher = load_teacher_mlm(stage1_dir / "teacher" if method == "dual_proj" else teacher0)
                distiller = StudentDistiller(student, teacher, projection=self._projection(teacher.config,
                                                                                            student.config),
                                             alpha=self.pc.alpha, direction=self.pc.direction)
        elif method == "scratch":
            student = new_student(codec.vocab_size)
            distiller = StudentDistiller(student)
        elif method == "hidden_kd":  # V_s student, word-aligned hidden states and attention of the teacher
            student = new_student(codec.vocab_size)
            distiller = HiddenStateDistiller(student, load_teacher_mlm(teacher0),
                                             hidden_weight=self.pc.hidden_kd_weight,
                                             attention_weight=self.pc.attention_kd_weight)
            train_items = self.train_mixed
            lengths = [len(e.s_ids) for e in self.train_mixed]
            mask_prob = self.student_opts.mask_prob
            make_batch = lambda items: aligned_batch(self.codec, self.s_codec, items, mask_prob)  # noqa: E731
        else:  # logit_kd: the teacher's vocabulary and segmentation
            codec = self.t_codec
            vocab_file = self.teacher_dir / "vocab.txt"
            teacher = load_teacher_mlm(teacher0)
            student = new_student(codec.vocab_size)
            distiller = StudentDistiller(student, teacher, kd_weight=self.pc.kd_weight,
                                         temperature=self.pc.kd_temperature)
        train, held = self._encoded(codec)
        # one projection direction (down or up) leaves the other direction's matrices without gradients
        unused = getattr(distiller, "projection", None) is not None and self.pc.direction != "both"
        cfg = _stage_cfg(self.base, self.pc.stage2_steps, self.pc.pretrain_batch_size, self.pc,
                         **(MIXED_DDP if unused else {}))
        fit = train_student(distiller, codec, train_items if train_items is not None else train, held, cfg,
                            out.parent, opts=self.student_opts, resume=self.resume, logger_cfg=self.logger_cfg,
                            make_batch=make_batch, lengths=lengths)
        info = {"heldout": fit.last_metrics, "steps": fit.step, "seconds": time.time() - t0,
                "vocab": codec.vocab_size}

        def export():
            save_bert_folder(student.cpu().eval(), vocab_file, out)
            _json_dump(out / "stage2.json", info)

        _on_rank0(export)
        self.results["stages"][key] = info
        return out

    def _encoded(self, codec: StudentCodec) -> tuple[list, list]:
        """Train and held-out segments in ``codec``'s vocabulary, encoded once per pipeline run."""
        if id(codec) not in self._encoding_cache:
            self._encoding_cache[id(codec)] = (codec.encode_all(self.train_texts), codec.encode_all(self.eval_texts))
        return self._encoding_cache[id(codec)]

    # ------------------------------------------------------------------ v1 joint schedule
    def joint(self, width: int, teacher0: Path) -> Path:
        """v1: mixed-vocabulary teacher and student trained together, E_s shared (replaces stage I + II)."""
        out = self.work / f"joint_d{width}" / "export"
        key = f"joint_d{width}"
        if _exists(out):
            self.results["stages"][key] = json.loads((out / "joint.json").read_text())
            return out
        t0 = time.time()
        torch.manual_seed(self.base.seed)
        mixed = MixedVocabMLM(load_teacher_mlm(teacher0), self.student_tok.get_vocab_size(), width)
        layers = self.pc.student_layers or mixed.teacher.config.num_hidden_layers
        student = BertForMaskedLM(student_config(self.s_codec.vocab_size, width, layers,
                                                 max_positions=mixed.teacher.config.max_position_embeddings))
        proj = self._projection(mixed.teacher.config, student.config)
        model = JointDualTraining(mixed, student, proj, alpha=self.pc.alpha, direction=self.pc.direction)
        cfg = _stage_cfg(self.base, self.pc.stage1_steps, self.pc.pretrain_batch_size, self.pc, **MIXED_DDP)
        train_s, held_s = self._encoded(self.s_codec)
        fit = train_joint(model, self.codec, self.s_codec, self.train_mixed, train_s, held_s, cfg, out.parent,
                          opts=self.mixed_opts, student_lr=self.student_opts.lr, resume=self.resume,
                          logger_cfg=self.logger_cfg)
        info = {"heldout": fit.last_metrics, "steps": fit.step, "seconds": time.time() - t0}

        def export():
            save_bert_folder(student.cpu().eval(), self.student_vocab_file, out)
            _json_dump(out / "joint.json", info)

        _on_rank0(export)
        self.results["stages"][key] = info
        return out

    # ------------------------------------------------------------------ downstream
    def _ft_cfg(self, seed: int):
        return with_overrides(self.base, seed=seed, max_epochs=self.pc.finetune_epochs,
                              max_steps=self.pc.finetune_max_steps, batch_size=self.pc.finetune_batch_size,
                              eval_every_steps=None, checkpoint_every_steps=None, early_stopping_patience=None)

    def select(self, name: str, folder: Path, task, lrs: list[float]) -> dict:
        """The selection trials of one model on one task (same grid size and epochs for every model) and
        the (learning rate, epoch) they choose on the tuning split."""
        pc = self.pc
        base = self.work / "finetune" / name / task.name
        done = base / "selection.json"
        if _exists(done):
            return json.loads(done.read_text())
        trials = {}
        for lr in lrs:
            run_dir = base / f"select_lr{lr:g}"
            result_file = run_dir / "result.json"
            if _exists(result_file):
                r = json.loads(result_file.read_text())
            else:
                r = finetune(folder, task, self._ft_cfg(pc.finetune_select_seed), run_dir, lr=lr,
                             epochs=pc.finetune_epochs, max_len=pc.finetune_max_len, resume=self.resume,
                             logger_cfg=self.logger_cfg)
                _json_dump(result_file, r)
                drop_checkpoints(run_dir)
            trials[lr] = r["tune_acc_by_epoch"]
        lr, epoch, acc = choose(trials)
        selection = {"lr": lr, "epoch": epoch, "tune_acc": acc, "trials": {f"{k:g}": v for k, v in trials.items()},
                     "select_seed": pc.finetune_select_seed, "tune_n": len(task.tune)}
        _json_dump(done, selection)
        return selection

    def finetune_all(self, models: dict[str, Path]) -> dict:
        pc = self.pc
        tasks = {t: load_task(t, self.data_dir, tune_size=pc.finetune_tune_size, train_limit=pc.finetune_train_limit,
                              eval_limit=pc.finetune_eval_limit, test_path=pc.test_files.get(t))
                 for t in pc.tasks}
        scores: dict = {}
        for name, folder in models.items():
            is_teacher = name == "teacher"
            lrs = pc.finetune_lrs_teacher if is_teacher else pc.finetune_lrs_student
            seeds = pc.finetune_teacher_seeds if is_teacher and pc.finetune_teacher_seeds else pc.finetune_seeds
            for tname, task in tasks.items():
                sel = self.select(name, folder, task, lrs)
                runs = []
                for seed in seeds:
                    run_dir = self.work / "finetune" / name / tname / f"seed{seed}"
                    done = run_dir / "result.json"
                    if _exists(done):
                        runs.append(json.loads(done.read_text()))
                        continue
                    r = finetune(folder, task, self._ft_cfg(seed), run_dir, lr=sel["lr"], epochs=pc.finetune_epochs,
                                 stop_epoch=sel["epoch"], max_len=pc.finetune_max_len, score_test=True,
                                 export_dir=run_dir / "export", resume=self.resume, logger_cfg=self.logger_cfg)
                    _json_dump(done, r)
                    drop_checkpoints(run_dir)
                    runs.append(r)
                scores.setdefault(name, {})[tname] = {
                    "metric": "test_acc", "split": task.test_split, "test_n": len(task.test), "seeds": list(seeds),
                    "runs": [r["test_acc"] for r in runs], "tune_runs": [r["tune_acc"] for r in runs],
                    "selected_lr": sel["lr"], "selected_epoch": sel["epoch"], "selection": sel,
                    "exports": [str(self.work / "finetune" / name / tname / f"seed{s}" / "export") for s in seeds]}
        return scores

    def sizes_and_speed(self, models: dict[str, Path]) -> dict:
        encoders = {name: load_encoder(folder).eval() for name, folder in models.items()}
        teacher_params = sum(p.numel() for p in encoders["teacher"].parameters()) if "teacher" in encoders else None
        table = {}
        for name, enc in encoders.items():
            size = size_report(enc)
            table[name] = size.as_dict() | compression_ratios(size.params, teacher_params or size.params)
        speed = speed_table(encoders, repeats=self.pc.speed_repeats)
        for name in table:
            table[name].update(speed[name])
        return table

    # ------------------------------------------------------------------ all
    def _finish(self, t0: float) -> dict:
        self.results["config"] = asdict(self.pc)
        self.results["teacher_options"] = asdict(self.teacher_opts)
        self.results["wall_seconds"] = time.time() - t0
        self.results["peak_rss_bytes"] = peak_rss_bytes()
        _json_dump(self.work / "results.json", self.results)
        return self.results

    def run(self) -> dict:
        t0 = time.time()
        self.prepare_data()
        teacher0 = self.teacher()
        record = self.results["teacher"]
        if self.pc.only_teacher or not record["gate_passed"]:
            if not record["gate_passed"]:
                log.warning("the teacher stopped at %.2f%% [MASK] accuracy (%s), below the %.0f%% gate: no student is "
                            "trained and no verdict is drawn", 100 * record["final"]["acc_mask"], record["decision"],
                            100 * record["gate"])
            self.results["finetune"], self.results["size_speed"] = {}, {}
            return self._finish(t0)
        models: dict[str, Path] = {"teacher": teacher0}
        for width in self.pc.widths:
            methods = list(self.pc.methods)
            if self.pc.schedule == "joint" and "dual_proj" in methods:  # v1: one joint run replaces I + II
                methods.remove("dual_proj")
                models[f"joint_d{width}"] = self.joint(width, teacher0)
            s1 = self.stage1(width, teacher0) if set(NEEDS_STAGE1) & set(methods) else None
            for method in methods:
                models[f"{method}_d{width}"] = self.student(method, width, teacher0, s1)
        self.results["models"] = {k: str(v) for k, v in models.items()}
        ft_models = models if self.pc.finetune_teacher else {k: v for k, v in models.items() if k != "teacher"}
        self.results["finetune"] = self.finetune_all(ft_models)
        # timed on rank 0 alone (the others wait for its table): ranks timing at once would slow each other
        self.results["size_speed"] = broadcast_object(self.sizes_and_speed(models) if is_main_process() else None)
        return self._finish(t0)
