"""Typed configs of ``vocab_distill`` (the library's option dataclasses and the Hydra schemas, in one place).

``PipelineConfig`` (root key ``pipeline``; the ``model`` group writes its ``widths``), ``MixedMLMOptions``
(``stage1``) and ``StudentOptions`` (``stage2``) are what :class:`vocab_distill.pipeline.Pipeline` takes; the
whole composed config is :class:`VocabDistillConfig`, registered as ``schema/vocab_distill/config``.
No torch or transformers import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto

from common.schema import Choice, RootConfig, register


class Source(Choice):
    """Corpus sources of the pre-training segments."""

    reuters = auto()
    sst2 = auto()
    atis = auto()
    snips = auto()


class StudentMethod(Choice):
    """How a student is trained (``vocab_distill.pipeline.STUDENT_METHODS`` explains each)."""

    dual_proj = auto()
    """Stage I + stage II (the paper)."""
    scratch = auto()
    """The same student, MLM only."""
    logit_kd = auto()
    """The teacher's vocabulary, MLM + logit distillation."""
    mix_only = auto()
    """Ablation: E_s from stage I, MLM only."""
    proj_only = auto()
    """Ablation: random E_s, projections of the stage-0 teacher."""


class Schedule(Choice):
    two_stage = auto()
    """v2: stage I, then stage II."""
    joint = auto()
    """v1: teacher and student trained together, E_s shared."""


class Direction(Choice):
    """Which projection loss: teacher -> student (down), student -> teacher (up), or their sum."""

    down = auto()
    up = auto()
    both = auto()


class ProjectionInit(Choice):
    orthogonal = auto()
    """Orthonormal columns: U^T W U starts as a faithful compression of W."""
    normal = auto()


class Task(Choice):
    """Fine-tuning tasks (``vocab_distill.finetune.TASKS``)."""

    sst2 = auto()
    snips_intent = auto()


@dataclass
class PipelineConfig:
    """Root key ``pipeline``: the corpus, the vocabularies, every stage's budget and the fine-tuning."""

    teacher_dir: str | None = None
    """A local BERT folder (null: the offline all-MiniLM-L6-v2)."""
    tiny_teacher: bool = False
    """A random 2 x 32 BERT over the teacher's vocabulary instead of the real teacher (smoke runs only)."""
    sources: list[Source] = field(default_factory=lambda: list(Source))
    """Corpus sources: reuters, sst2, atis, snips."""
    limit_per_source: int | None = None
    """Read at most this many documents/sentences per corpus source (null: all)."""
    max_words: int = 64
    """Corpus segments hold at most this many whitespace words."""
    max_len: int = 128
    """Sequence length in tokens, [CLS] and [SEP] included."""
    max_train_segments: int | None = None
    """Cap on the pre-training segments (after dedup and shuffling; null: all)."""
    n_eval_segments: int = 500
    """Held-out corpus segments for the MLM evaluations."""
    student_vocab_size: int = 4928
    """Size of the student's WordPiece vocabulary V_s."""
    vocab_min_frequency: int = 2
    """Minimum frequency of a V_s piece."""
    widths: list[int] = field(default_factory=lambda: [48, 96, 192])
    """Student hidden widths (the ``model`` group sets them)."""
    student_layers: int | None = None
    """null: the teacher's depth (the method pairs layer l with layer l)."""
    methods: list[StudentMethod] = field(default_factory=lambda: list(StudentMethod))
    """Students to train per width."""
    pretrain_batch_size: int = 64
    """Segments per pre-training batch."""
    stage0_steps: int = 200
    """Head-only MLM steps (encoder frozen)."""
    stage0_adapt_steps: int = 100
    """Then unfrozen V_t-only MLM steps (0: none)."""
    stage1_steps: int = 1000
    """Stage I (mixed-vocabulary MLM) steps."""
    stage2_steps: int = 2000
    """Stage II (student) steps, also of each baseline student."""
    eval_every_steps: int | None = None
    """Evaluate every N pre-training steps (null: at the end of each stage)."""
    checkpoint_every_steps: int | None = 100
    """Checkpoint every N pre-training steps (null: at the end of each stage)."""
    schedule: Schedule = Schedule.two_stage
    """two_stage (v2: stage I, then stage II) or joint (v1: teacher and student trained together, E_s shared;
    runs stage1_steps steps)."""
    alpha: float = 1.0
    """Weight of the projection loss."""
    direction: Direction = Direction.down
    """Projection loss: down, up or both."""
    projection_init: ProjectionInit = ProjectionInit.orthogonal
    """Initial projections: orthogonal or normal."""
    projection_vectors: bool = True
    """Also project biases and LayerNorm vectors (one-sided); false: weight matrices only."""
    kd_weight: float = 0.5
    """logit_kd: weight of the distillation term."""
    kd_temperature: float = 2.0
    """logit_kd: softmax temperature."""
    tasks: list[Task] = field(default_factory=lambda: [Task.sst2, Task.snips_intent])
    """Fine-tuning tasks."""
    finetune_teacher: bool = True
    """Also fine-tune the teacher (the reference row)."""
    finetune_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Fine-tuning seeds of every student."""
    finetune_teacher_seeds: list[int] | None = None
    """Seeds for the teacher (null: finetune_seeds); the teacher costs ~20x a student per fine-tuning run."""
    finetune_epochs: int = 3
    """Fine-tuning epochs (best dev epoch is scored on test)."""
    finetune_max_steps: int | None = None
    """Cap on the fine-tuning steps (smoke runs; null: none)."""
    finetune_batch_size: int = 32
    """Fine-tuning batch size."""
    finetune_train_limit: int | None = 20000
    """Fixed train subset for every model (the paper note's 20k SST-2 sentences; null: all)."""
    finetune_max_len: int = 64
    """Fine-tuning sequence length."""
    finetune_eval_limit: int | None = None
    """Cap on dev/test sentences (smoke runs; null: all)."""
    lr_finetune_teacher: float = 5e-5
    """Fine-tuning learning rate of the teacher."""
    lr_finetune_student: float = 1e-3
    """Fine-tuning learning rate of the students."""
    speed_repeats: int = 20
    """Repeats of the inference-speed measurement."""


@dataclass
class MixedMLMOptions:
    """Root key ``stage1``: stage 0 / stage I options (paper-note defaults; the paper leaves all of them open)."""

    lr_teacher: float = 5e-5
    """AdamW learning rate of the pre-trained teacher encoder and E_t."""
    lr_new: float = 1e-3
    """AdamW learning rate of the new parameters: E_s, P_e, Q, the MLM transform and biases."""
    p_max: float = 0.5
    """Final probability that a word is segmented with V_s."""
    ramp_fraction: float = 0.5
    """Share of stage I over which p rises linearly from 0 to p_max."""
    mask_prob: float = 0.15
    """MLM masking probability."""
    eval_p: float = 0.5
    """Mixing probability of the held-out evaluation (fixed, so evaluations are comparable)."""
    warmup_fraction: float = 0.06
    """Share of the steps with a linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    group_by_length: bool = False
    """Batch segments of similar V_t length together (``common.trainer.length_grouped_batches``): the
    corpus mixes ~85-token Reuters segments with ~20-token sentences, so random batches are mostly padding."""


@dataclass
class StudentOptions:
    """Root key ``stage2``: stage II and the student baselines."""

    lr: float = 5e-4
    """AdamW learning rate of the student (and of the projections)."""
    mask_prob: float = 0.15
    """MLM masking probability."""
    warmup_fraction: float = 0.06
    """Share of the steps with a linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    group_by_length: bool = False
    """Batch segments of similar length together (see ``MixedMLMOptions.group_by_length``)."""


@dataclass
class VocabDistillConfig(RootConfig):
    """``python -m vocab_distill.train``: the shared keys plus ``pipeline``, ``stage1`` and ``stage2``."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The pipeline (group ``model`` sets its ``widths``)."""
    stage1: MixedMLMOptions = field(default_factory=MixedMLMOptions)
    """Stage 0 and stage I."""
    stage2: StudentOptions = field(default_factory=StudentOptions)
    """Stage II and the student baselines."""


# The `model` group is `# @package pipeline` (it sets pipeline.widths), so its schema is the pipeline's.
register("vocab_distill", VocabDistillConfig, {"model": PipelineConfig})
