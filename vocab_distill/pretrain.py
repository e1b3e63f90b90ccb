"""The pre-training stages on the common Trainer: the teacher's MLM head and adaptation (driven by
``teacher.py``), stage I (mixed-vocabulary teacher), stage II (student with shared projections) and the
student baselines (scratch, logit KD, TinyBERT-style hidden-state KD).

Every stage is one ``common.trainer.Trainer.fit`` in its own run directory, so ``resume="auto"`` continues
any stage exactly. The dataset is the list of pre-encoded segments; a batch is a tensor of their indices
and the loss function segments (stage I: with the ramped mixing probability) and masks it. The mixing
schedule position lives in a buffer of the model, so it is checkpointed with the weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import BertForMaskedLM

from common.config import TrainerConfig
from common.distributed import gather_shards, shard
from common.schedules import warmup_linear_decay
from common.trainer import FitResult, Trainer

from .config import MixedMLMOptions, StudentOptions
from .mixed import (
    IGNORE_INDEX,
    POSITION_KINDS,
    EncodedText,
    MixedVocabCodec,
    StudentCodec,
    mask_tokens,
    mask_tokens_with_kinds,
    mix_probability,
    mixed_vocab_ranges,
)
from .model import MixedVocabMLM, SharedProjection, logit_kd_loss, set_encoder_trainable

EVAL_BATCH = 64
"""Held-out MLM batches have a fixed size: the masking draw depends on batch shapes, so a fixed size keeps
evaluations of different runs and stages on exactly the same masked tokens."""


class IndexDataset(Dataset):
    """Items are the indices 0..n-1; the loss function looks the segments up."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def index_collate(items: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(items), dtype=torch.long)


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)


def total_micro_batches(trainer_cfg, n_items: int) -> int:
    """Micro-batches the Trainer will run (what the mixing ramp is measured in)."""
    per_epoch = math.ceil(n_items / trainer_cfg.batch_size)
    limits = []
    if trainer_cfg.max_epochs:
        limits.append(trainer_cfg.max_epochs * per_epoch)
    if trainer_cfg.max_steps:
        limits.append(trainer_cfg.max_steps * trainer_cfg.grad_accum_steps)
    return min(limits)


def with_overrides(trainer_cfg, **overrides) -> TrainerConfig:
    """A ``TrainerConfig`` copy of ``trainer_cfg`` (a dataclass or an OmegaConf node) with ``overrides``."""
    if not dataclasses.is_dataclass(trainer_cfg):
        from common.hydra_utils import to_dataclass

        trainer_cfg = to_dataclass(trainer_cfg, TrainerConfig)
    return dataclasses.replace(trainer_cfg, **overrides)


# ----------------------------------------------------------------------------- evaluation


def _per_batch(batches: list, score, sharded: bool) -> list:
    """``[score(b) for b in batches]``; ``sharded``: each rank of a torchrun job scores its share and every
    rank gets all results in batch order (the batches themselves, masking draws included, are built on
    every rank exactly as in one process, so the sums below are the single-process sums)."""
    if not sharded:
        return [score(b) for b in batches]
    return gather_shards([score(b) for b in shard(batches)], len(batches))


def kind_counts(kinds: torch.Tensor, correct: torch.Tensor) -> dict[str, tuple[int, int]]:
    """``{kind: (n, correct)}`` over selected positions (``kinds``/``correct`` flattened, one per target)."""
    return {name: (int((kinds == k).sum()), int(((kinds == k) & correct).sum()))
            for name, k in POSITION_KINDS.items()}


def add_kind_accuracies(metrics: dict, counts: dict[str, list[int]], prefix: str = "acc_") -> dict:
    """``acc_mask``, ``acc_random``, ``acc_unchanged`` (and ``n_mask`` ...) from summed ``{kind: [n, correct]}``."""
    for name, (n, c) in counts.items():
        metrics[f"{prefix}{name}"] = c / max(n, 1)
        metrics[f"n_{name}"] = n
    return metrics


@torch.no_grad()
def eval_mixed_mlm(model: MixedVocabMLM, codec: MixedVocabCodec, encs: Sequence[EncodedText], *, p: float,
                   batch_size: int = 64, mask_prob: float = 0.15, seed: int = 1234,
                   sharded: bool = False, frequent_id: int | None = None) -> dict[str, float]:
    """Held-out masked-token loss and accuracy per vocabulary and per position kind ([MASK], random,
    unchanged), with a fixed mixing and masking draw (``sharded``: the batches are dealt to the ranks of a
    torchrun job, see ``_per_batch``). Beside them, on the same positions, two baselines that know nothing
    of context: ``copy_acc_*`` predicts the input token, ``freq_acc_*`` always predicts ``frequent_id`` (the
    most frequent training token; given only when known)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    batches = []
    for i in range(0, len(encs), batch_size):
        b = codec.batch(encs[i : i + batch_size], p, generator=g)
        ids, labels, kinds = mask_tokens_with_kinds(b["input_ids"], b["special_mask"], mask_id=codec.mask_id,
                                                    vocab_ranges=mixed_vocab_ranges(codec), mask_prob=mask_prob,
                                                    generator=g)
        batches.append((ids, b["attention_mask"], labels, kinds))

    def score(batch):
        ids, mask, labels, kinds = batch
        out = model.mlm_loss(ids.to(dev), mask.to(dev), labels.to(dev))
        sel = labels != IGNORE_INDEX
        y, k = labels[sel], kinds[sel]
        right = out.predictions.cpu() == y
        copy = ids[sel] == y
        freq = y == frequent_id if frequent_id is not None else torch.zeros_like(right)
        return (float(out.loss), out.n_teacher, out.n_student, out.correct_teacher, out.correct_student,
                kind_counts(k, right), kind_counts(k, copy), kind_counts(k, freq))

    loss_sum = n_t = n_s = c_t = c_s = 0.0
    per_kind = {name: {kind: [0, 0] for kind in POSITION_KINDS} for name in ("model", "copy", "freq")}
    for loss, bt, bs, ct, cs, *kc in _per_batch(batches, score, sharded):
        loss_sum += loss * (bt + bs)
        n_t, n_s, c_t, c_s = n_t + bt, n_s + bs, c_t + ct, c_s + cs
        for name, counts in zip(("model", "copy", "freq"), kc):
            for kind, (n, c) in counts.items():
                per_kind[name][kind][0] += n
                per_kind[name][kind][1] += c
    n = max(n_t + n_s, 1)
    out = {"mlm_loss": loss_sum / n, "acc": (c_t + c_s) / n, "acc_teacher_vocab": c_t / max(n_t, 1),
           "acc_student_vocab": c_s / max(n_s, 1), "share_student_targets": n_s / n}
    add_kind_accuracies(out, per_kind["model"])
    add_kind_accuracies(out, per_kind["copy"], "copy_acc_")
    out["copy_acc"] = sum(c for _, c in per_kind["copy"].values()) / n
    if frequent_id is not None:
        add_kind_accuracies(out, per_kind["freq"], "freq_acc_")
        out["freq_acc"] = sum(c for _, c in per_kind["freq"].values()) / n
    return out


@torch.no_grad()
def eval_student_mlm(student: BertForMaskedLM, codec: StudentCodec, encs: Sequence, *, batch_size: int = 64,
                     mask_prob: float = 0.15, seed: int = 1234, sharded: bool = False) -> dict[str, float]:
    """Held-out masked-token loss and accuracy of a single-vocabulary MLM (``sharded``: see ``_per_batch``)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(student.parameters()).device
    batches = [codec.masked_batch(encs[i : i + batch_size], mask_prob, generator=g)
               for i in range(0, len(encs), batch_size)]

    def score(b):
        y = b["labels"].to(dev)
        sel = y != IGNORE_INDEX
        if not bool(sel.any()):
            return None
        logits = student(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        right = (logits[sel].argmax(-1) == y[sel]).cpu()
        return (float(nn.functional.cross_entropy(logits[sel].float(), y[sel], reduction="sum")),
                float(right.sum()), float(sel.sum()), kind_counts(b["kinds"][sel.cpu()], right))

    loss_sum = correct = total = 0.0
    per_kind = {kind: [0, 0] for kind in POSITION_KINDS}
    for r in _per_batch(batches, score, sharded):
        if r is not None:
            loss_sum, correct, total = loss_sum + r[0], correct + r[1], total + r[2]
            for kind, (n, c) in r[3].items():
                per_kind[kind][0] += n
                per_kind[kind][1] += c
    return add_kind_accuracies({"mlm_loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}, per_kind)


# ----------------------------------------------------------------------------- stage 0 and stage I


def train_mixed_teacher(model: MixedVocabMLM, codec: MixedVocabCodec, train_encs: Sequence[EncodedText],
                        eval_encs: Sequence[EncodedText] | None, trainer_cfg, run_dir: str | Path, *, stage: str,
                        opts: MixedMLMOptions | None = None, resume: str = "never", logger_cfg=None,
                        config=None, scheduler_fn=None) -> FitResult:
    """Stage 0 (``stage="stage0"``): V_t-only MLM with the encoder frozen, training the MLM transform and
    the output bias of the head MiniLM lacks. ``stage="stage0_adapt"``: the same V_t-only MLM with the
    encoder unfrozen (the short adaptation of a sentence encoder to MLM). Stage I (``stage="stage1"``):
    everything trainable, each word segmented with V_s with the ramped probability, two softmaxes.
    ``eval_encs=None``: no evaluation inside the fit (the teacher's adaptation evaluates between its chunks);
    ``scheduler_fn``: instead of warm-up + linear decay over the run."""
    if stage not in ("stage0", "stage0_adapt", "stage1"):
        raise ValueError(f"stage must be stage0, stage0_adapt or stage1, got {stage!r}")
    opts = opts or MixedMLMOptions()
    set_encoder_trainable(model, stage != "stage0")
    total_micro = total_micro_batches(trainer_cfg, len(train_encs))
    ranges = mixed_vocab_ranges(codec)

    def p_at(step: int) -> float:
        if stage != "stage1":
            return 0.0
        return mix_probability(step, total_micro, opts.p_max, opts.ramp_fraction)

    def loss_fn(net, idx):
        m = _unwrap(net)
        p = p_at(int(m.mix_step))
        m.mix_step += 1
        b = codec.batch([train_encs[i] for i in idx.tolist()], p)
        ids, labels = mask_tokens(b["input_ids"], b["special_mask"], mask_id=codec.mask_id, vocab_ranges=ranges,
                                  mask_prob=opts.mask_prob)
        dev = idx.device
        out = net(ids.to(dev), b["attention_mask"].to(dev), labels.to(dev))
        n = max(out.n_teacher + out.n_student, 1)
        return {"loss": out.loss, "p_student": p, "share_student_targets": out.n_student / n,
                "acc": (out.correct_teacher + out.correct_student) / n}

    def optimizer_fn(m: MixedVocabMLM):
        new_ids = {id(p) for p in m.teacher.cls.parameters()} | {
            id(p) for mod in (m.student_embeddings, m.embed_up, m.student_down) for p in mod.parameters()
        } | {id(m.student_bias)}
        new_ids.discard(id(m.teacher_embeddings.weight))  # the teacher decoder is tied to E_t: a teacher weight
        trainable = [p for p in m.parameters() if p.requires_grad]
        old = [p for p in trainable if id(p) not in new_ids]
        new = [p for p in trainable if id(p) in new_ids]
        groups = [{"params": new, "lr": opts.lr_new}]
        if old:
            groups.append({"params": old, "lr": opts.lr_teacher})
        return torch.optim.AdamW(groups, weight_decay=opts.weight_decay)

    eval_p = opts.eval_p if stage == "stage1" else 0.0
    eval_fn = None if eval_encs is None else (
        lambda m: eval_mixed_mlm(m, codec, eval_encs, p=eval_p, batch_size=EVAL_BATCH, mask_prob=opts.mask_prob,
                                 sharded=True))
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    return trainer.fit(model, IndexDataset(len(train_encs)), loss_fn, optimizer_fn=optimizer_fn,
                       scheduler_fn=scheduler_fn or warmup_linear_decay(opts.warmup_fraction),
                       collate_fn=index_collate,
                       lengths=segment_lengths(train_encs) if opts.group_by_length else None,
                       eval_fn=eval_fn, eval_sharded=True)


# ----------------------------------------------------------------------------- stage II and the baselines


class StudentDistiller(nn.Module):
    """A student MLM plus what it learns from: shared projections of a frozen teacher (stage II), the
    teacher's logits (KD baseline) or nothing (scratch baseline).

    Loss: ``(1 - kd_weight) MLM + kd_weight KD + alpha L_proj`` (kd_weight = 0 without KD). The teacher is a
    constant: frozen, always in eval mode.
    """

    def __init__(self, student: BertForMaskedLM, teacher: BertForMaskedLM | None = None, *,
                 projection: SharedProjection | None = None, alpha: float = 1.0, direction: str = "down",
                 kd_weight: float = 0.0, temperature: float = 2.0):
        super().__init__()
        if projection is not None and teacher is None:
            raise ValueError("shared projections need a teacher")
        if kd_weight > 0:
            if teacher is None:
                raise ValueError("logit KD needs a teacher")
            if teacher.config.vocab_size != student.config.vocab_size:
                raise ValueError("logit KD needs teacher and student to share a vocabulary")
        self.student, self.teacher, self.projection = student, teacher, projection
        self.alpha, self.direction, self.kd_weight, self.temperature = alpha, direction, kd_weight, temperature
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, input_ids, attention_mask, labels, **_) -> dict[str, torch.Tensor]:
        # Logits only at the masked positions: the full-vocabulary softmax at every position would dominate
        # the cost of a small student (and of the teacher in the KD baseline).
        sel = labels != IGNORE_INDEX
        y = labels[sel]
        h = self.student.bert(input_ids=input_ids, attention_mask=attention_mask)[0][sel]
        logits = self.student.cls(h)
        mlm = nn.functional.cross_entropy(logits.float(), y) if y.numel() else logits.sum() * 0
        out = {"mlm": mlm}
        loss = mlm
        if self.kd_weight > 0:
            with torch.no_grad():
                ht = self.teacher.bert(input_ids=input_ids, attention_mask=attention_mask)[0][sel]
                t_logits = self.teacher.cls(ht)
            loss = logit_kd_loss(logits, t_logits, y, self.temperature, self.kd_weight)
            out["kd_total"] = loss
        if self.projection is not None and self.alpha > 0:
            proj, shares = self.projection.loss_and_shares(self.teacher.bert, self.student.bert, self.direction)
            out["proj"] = proj
            out |= {f"proj_share_{family}": torch.tensor(share) for family, share in shares.items()}
            loss = loss + self.alpha * proj
        out["loss"] = loss
        return out


class HiddenStateDistiller(nn.Module):
    """The TinyBERT-style baseline (Jiao et al. 2020, general distillation): the student learns the teacher's
    intermediate hidden states (through a learnt map W_h, embeddings output included) and attention maps,
    besides its own MLM loss. Student layer l is paired with teacher layer (l + 1) T / S (TinyBERT's uniform
    map; equal depths pair l with l).

    Two deviations, because the student reads V_s and the teacher V_t, so token positions do not line up:
    both are compared per word (``mixed.aligned_batch``: pieces averaged per word, attention averaged over a
    word's query pieces and summed over its key pieces); and attention maps are averaged over heads (the
    student has d/16 heads, the teacher 12) and compared by KL divergence over the word units. The hidden
    term is a relative error (divided by the teacher's mean square per layer) so that its scale does not
    depend on the teacher. The teacher reads the clean V_t text; the student its masked V_s text (one
    forward serves both its MLM and the distillation terms)."""

    def __init__(self, student: BertForMaskedLM, teacher: BertForMaskedLM, *, hidden_weight: float = 1.0,
                 attention_weight: float = 1.0):
        super().__init__()
        s_layers, t_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        if t_layers % s_layers:
            raise ValueError(f"TinyBERT's uniform layer map needs the teacher's {t_layers} layers to be a multiple "
                             f"of the student's {s_layers}")
        self.student, self.teacher = student, teacher
        self.layer_map = [0] + [(i + 1) * t_layers // s_layers for i in range(s_layers)]  # hidden_states index
        self.fit_dense = nn.Linear(student.config.hidden_size, teacher.config.hidden_size)  # W_h
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        for model in (student, teacher):
            model.set_attn_implementation("eager")  # attention probabilities are returned by eager attention only
        teacher.requires_grad_(False)
        teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    @staticmethod
    def word_attention(probs: torch.Tensor, pool: torch.Tensor, unit_mask: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention ([B, heads, L, L]) between word units ([B, U, U]), rows renormalised
        over the real units."""
        a = pool @ probs.float().mean(1) @ (pool > 0).float().transpose(1, 2)
        a = a * unit_mask.unsqueeze(1)
        return a / a.sum(-1, keepdim=True).clamp_min(1e-12)

    def forward(self, input_ids, attention_mask, labels, teacher_input_ids, teacher_attention_mask, t_pool, s_pool,
                unit_mask, **_) -> dict[str, torch.Tensor]:
        so = self.student.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                               output_attentions=True)
        sel = labels != IGNORE_INDEX
        logits = self.student.cls(so.last_hidden_state[sel])
        mlm = nn.functional.cross_entropy(logits.float(), labels[sel]) if bool(sel.any()) else logits.sum() * 0
        with torch.no_grad():
            to = self.teacher.bert(input_ids=teacher_input_ids, attention_mask=teacher_attention_mask,
                                   output_hidden_states=True, output_attentions=True)
        valid = unit_mask.float()
        hidden = []
        for ls, lt in enumerate(self.layer_map):
            hs = self.fit_dense(s_pool @ so.hidden_states[ls])
            ht = t_pool @ to.hidden_states[lt].float()
            err = ((hs - ht) ** 2).sum(-1) * valid
            hidden.append(err.sum() / ((ht**2).sum(-1) * valid).sum().clamp_min(1e-12))
        attention = []
        for ls, lt in enumerate(self.layer_map[1:]):
            a_s = self.word_attention(so.attentions[ls], s_pool, unit_mask)
            a_t = self.word_attention(to.attentions[lt - 1], t_pool, unit_mask)
            kl = (a_t * (a_t.clamp_min(1e-12).log() - a_s.clamp_min(1e-12).log())).sum(-1) * valid
            attention.append(kl.sum() / valid.sum())
        hidden_loss, attention_loss = torch.stack(hidden).mean(), torch.stack(attention).mean()
        loss = mlm + self.hidden_weight * hidden_loss + self.attention_weight * attention_loss
        return {"loss": loss, "mlm": mlm, "hidden": hidden_loss, "attention": attention_loss}


def segment_lengths(encs: Sequence) -> list[int]:
    """Token count of each encoded segment (``EncodedText``: its V_t pieces; a student array: its length)."""
    return [len(e.t_ids) if isinstance(e, EncodedText) else len(e) for e in encs]


def train_student(distiller: nn.Module, codec: StudentCodec, train_encs: Sequence, eval_encs: Sequence,
                  trainer_cfg, run_dir: str | Path, *, opts: StudentOptions | None = None,
                  resume: str = "never", logger_cfg=None, config=None, make_batch=None,
                  lengths: Sequence[int] | None = None) -> FitResult:
    """Stage II (or a baseline): single-vocabulary MLM on ``codec``'s segmentation plus the distiller's terms.

    ``make_batch(items)`` builds a training batch from ``train_encs`` items (default: ``codec.masked_batch``;
    the hidden-state baseline pairs each segment's two segmentations); ``eval_encs`` are ``codec``'s encodings
    of the held-out segments and ``lengths`` the training items' lengths (default: ``segment_lengths``)."""
    opts = opts or StudentOptions()
    make_batch = make_batch or (lambda items: codec.masked_batch(items, opts.mask_prob))

    def loss_fn(net, idx):
        b = make_batch([train_encs[i] for i in idx.tolist()])
        dev = idx.device
        out = net(**{k: v.to(dev) for k, v in b.items() if k != "kinds"})
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    if opts.group_by_length and lengths is None:
        lengths = segment_lengths(train_encs)
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    return trainer.fit(
        distiller, IndexDataset(len(train_encs)), loss_fn,
        optimizer_fn=lambda m: torch.optim.AdamW(m.trainable_parameters(), lr=opts.lr, weight_decay=opts.weight_decay),
        scheduler_fn=warmup_linear_decay(opts.warmup_fraction), collate_fn=index_collate,
        lengths=lengths if opts.group_by_length else None,
        eval_fn=lambda m: eval_student_mlm(m.student, codec, eval_encs,
                                           batch_size=EVAL_BATCH,
                                           mask_prob=opts.mask_prob, sharded=True),
        eval_sharded=True)


# ----------------------------------------------------------------------------- v1: joint schedule


class JointDualTraining(nn.Module):
    """v1's simultaneous schedule: the mixed-vocabulary teacher and the student train together.

    The student's input (and tied output) embedding table *is* the teacher's E_s (one shared Parameter), so
    the student vocabulary is aligned by the teacher's two-softmax MLM while the student learns its own MLM
    and the shared projections. Loss: ``L_MLM^mixed(teacher) + L_MLM^s(student) + alpha L_proj`` (the
    projection loss treats the teacher's weights as constants, as in stage II).
    """

    def __init__(self, mixed: MixedVocabMLM, student: BertForMaskedLM, projection: SharedProjection, *,
                 alpha: float = 1.0, direction: str = "down"):
        super().__init__()
        if student.config.hidden_size != mixed.student_embeddings.embedding_dim:
            raise ValueError("the student width must equal the width of the teacher's E_s")
        self.mixed, self.student, self.projection = mixed, student, projection
        self.alpha, self.direction = alpha, direction
        # share E_s: the student's word embeddings and its tied MLM decoder use the teacher's table
        student.bert.embeddings.word_embeddings.weight = mixed.student_embeddings.weight
        student.cls.predictions.decoder.weight = mixed.student_embeddings.weight

    def forward(self, mixed_batch: dict, student_batch: dict) -> dict[str, torch.Tensor]:
        t = self.mixed(mixed_batch["input_ids"], mixed_batch["attention_mask"], mixed_batch["labels"])
        s = self.student(input_ids=student_batch["input_ids"], attention_mask=student_batch["attention_mask"],
                         labels=student_batch["labels"]).loss
        proj = self.projection.loss(self.mixed.teacher.bert, self.student.bert, self.direction)
        loss = t.loss + s + self.alpha * proj
        n = max(t.n_teacher + t.n_student, 1)
        return {"loss": loss, "teacher_mlm": t.loss.detach(), "student_mlm": s.detach(), "proj": proj.detach(),
                "share_student_targets": t.n_student / n}


def train_joint(model: JointDualTraining, codec: MixedVocabCodec, s_codec: StudentCodec,
                train_encs: Sequence[EncodedText], train_s: Sequence, eval_s: Sequence, trainer_cfg,
                run_dir: str | Path, *, opts: MixedMLMOptions | None = None, student_lr: float = 5e-4,
                resume: str = "never", logger_cfg=None, config=None) -> FitResult:
    """The joint (v1) schedule on the common Trainer: each batch of segments is fed mixed to the teacher
    (ramped p, two softmaxes) and V_s-only to the student."""
    opts = opts or MixedMLMOptions()
    total_micro = total_micro_batches(trainer_cfg, len(train_encs))
    ranges = mixed_vocab_ranges(codec)

    def loss_fn(net, idx):
        m = _unwrap(net)
        p = mix_probability(int(m.mixed.mix_step), total_micro, opts.p_max, opts.ramp_fraction)
        m.mixed.mix_step += 1
        rows = idx.tolist()
        b = codec.batch([train_encs[i] for i in rows], p)
        ids, labels = mask_tokens(b["input_ids"], b["special_mask"], mask_id=codec.mask_id, vocab_ranges=ranges,
                                  mask_prob=opts.mask_prob)
        sb = s_codec.masked_batch([train_s[i] for i in rows], opts.mask_prob)
        dev = idx.device
        mixed = {"input_ids": ids.to(dev), "attention_mask": b["attention_mask"].to(dev), "labels": labels.to(dev)}
        out = net(mixed, {k: v.to(dev) for k, v in sb.items()})
        return out | {"p_student": p}

    def optimizer_fn(m: JointDualTraining):
        teacher_ids = {id(p) for p in m.mixed.teacher.bert.parameters()}
        old = [p for p in m.parameters() if id(p) in teacher_ids]
        new = [p for p in m.parameters() if id(p) not in teacher_ids]
        return torch.optim.AdamW([{"params": old, "lr": opts.lr_teacher}, {"params": new, "lr": student_lr}],
                                 weight_decay=opts.weight_decay)

    set_encoder_trainable(model.mixed, True)
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    return trainer.fit(model, IndexDataset(len(train_encs)), loss_fn, optimizer_fn=optimizer_fn,
                       scheduler_fn=warmup_linear_decay(opts.warmup_fraction), collate_fn=index_collate,
                       lengths=segment_lengths(train_encs) if opts.group_by_length else None,
                       eval_fn=lambda m: eval_student_mlm(m.student, s_codec, eval_s,
                                                          batch_size=EVAL_BATCH,
                                                          mask_prob=opts.mask_prob, sharded=True),
                       eval_sharded=True)
