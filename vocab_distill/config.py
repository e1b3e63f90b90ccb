"""Typed configs of ``vocab_distill`` (the library's option dataclasses and the Hydra schemas, in one place).

``PipelineConfig`` (root key ``pipeline``; the ``model`` group writes its ``widths``), ``TeacherOptions``
(``teacher``: the teacher's MLM adaptation and its gate), ``MixedMLMOptions`` (``stage1``) and
``StudentOptions`` (``stage2``) are what :class:`vocab_distill.pipeline.Pipeline` takes; the
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
    hidden_kd = auto()
    """The same student (V_s), MLM + TinyBERT-style hidden-state and attention distillation."""
    mix_only = auto()
    """Ablation: E_s from stage I, MLM only."""
    proj_only = auto()
    """Ablation: random E_s, projections of the stage-0 teacher."""


BASELINES = ("scratch", "logit_kd", "hidden_kd")
"""The same-size students dual_proj is compared with, paired over fine-tuning seeds."""


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
    """A local BERT folder (null: the offline all-MiniLM-L6-v2). A folder with an MLM head (``cls.predictions``)
    skips the head-only warm-up; the teacher still has to pass ``teacher.gate``."""
    tiny_teacher: bool = False
    """A random 2 x 32 BERT over the teacher's vocabulary instead of the real teacher (smoke runs only)."""
    only_teacher: bool = False
    """Stop after the teacher's adaptation (its learning curve, speed and gate), e.g. to measure it."""
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
    """Held-out corpus segments for the MLM evaluations (the teacher's gate among them)."""
    student_vocab_size: int = 4928
    """Size of the student's WordPiece vocabulary V_s."""
    vocab_min_frequency: int = 2
    """Minimum frequency of a V_s piece."""
    widths: list[int] = field(default_factory=lambda: [48, 96, 192])
    """Student hidden widths (the ``model`` group sets them)."""
    student_layers: int | None = None
    """null: the teacher's depth (the method pairs layer l with layer l)."""
    methods: list[StudentMethod] = field(
        default_factory=lambda: [StudentMethod.dual_proj, StudentMethod.scratch, StudentMethod.logit_kd,
                                 StudentMethod.hidden_kd])
    """Students to train per width."""
    pretrain_batch_size: int = 64
    """Segments per pre-training batch (teacher adaptation, stage I, stage II)."""
    stage1_steps: int = 1000
    """Stage I (mixed-vocabulary MLM) steps."""
    stage2_steps: int = 2000
    """Stage II (student) steps, also of each baseline student."""
    eval_every_steps: int | None = None
    """Evaluate every N stage-I/II steps (null: at the end of each stage)."""
    checkpoint_every_steps: int | None = 100
    """Checkpoint every N pre-training steps (null: at the end of each stage)."""
    schedule: Schedule = Schedule.two_stage
    """two_stage (v2: stage I, then stage II) or joint (v1: teacher and student trained together, E_s shared;
    runs stage1_steps steps)."""
    alpha: float = 1.0
    """Weight of the projection loss (a mean of per-tensor relative errors when projection_normalize)."""
    direction: Direction = Direction.down
    """Projection loss: down, up or both."""
    projection_init: ProjectionInit = ProjectionInit.orthogonal
    """Initial projections: orthogonal or normal."""
    projection_biases: bool = False
    """Also project the Linear biases (one-sided). Off: the paper projects weight matrices."""
    projection_norms: bool = False
    """Also project the LayerNorm gains and shifts (one-sided). Off: projected all-positive gains come out
    with random signs."""
    projection_normalize: bool = True
    """Divide each tensor's term by the teacher tensor's mean square and average over tensors (no family
    dominates); false: the plain sum of mean squared errors."""
    kd_weight: float = 0.5
    """logit_kd: weight of the distillation term."""
    kd_temperature: float = 2.0
    """logit_kd: softmax temperature."""
    hidden_kd_weight: float = 1.0
    """hidden_kd: weight of the hidden-state term (relative MSE per layer, embeddings included, word-aligned)."""
    attention_kd_weight: float = 1.0
    """hidden_kd: weight of the attention term (KL of head-averaged, word-level attention per layer)."""
    tasks: list[Task] = field(default_factory=lambda: [Task.sst2, Task.snips_intent])
    """Fine-tuning tasks."""
    test_files: dict[str, str] = field(default_factory=dict)
    """Replace a task's reported test set with a user's labelled data: ``{sst2: file.tsv}`` (label<TAB>sentence
    with a header row, as GLUE's train/dev) or ``{snips_intent: folder}`` (seq.in + label, one line each)."""
    finetune_teacher: bool = True
    """Also fine-tune the teacher (the reference row)."""
    finetune_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the reported fine-tuning runs of every student (at the selected learning rate and epoch)."""
    finetune_teacher_seeds: list[int] | None = None
    """Seeds for the teacher (null: finetune_seeds); the teacher costs ~20x a student per fine-tuning run."""
    finetune_select_seed: int = 1000
    """Seed of the selection trials (apart from the reported seeds, so a lucky trial is not reported)."""
    finetune_tune_size: int = 1000
    """Sentences carved from train (seeded, disjoint from the training subset) to choose the learning rate
    and epoch; the reported split (SST-2: GLUE dev; SNIPS: test) is never used to choose anything."""
    finetune_epochs: int = 3
    """Epochs of each selection trial; the selected epoch (1..finetune_epochs) is where the reported runs,
    on the same schedule, stop."""
    finetune_lrs_student: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    """Learning rates tried for every student (the same trial budget for every method and width)."""
    finetune_lrs_teacher: list[float] = field(default_factory=lambda: [2e-5, 5e-5, 1e-4])
    """Learning rates tried for the teacher."""
    finetune_max_steps: int | None = None
    """Cap on the fine-tuning steps (smoke runs; null: none)."""
    finetune_batch_size: int = 32
    """Fine-tuning batch size."""
    finetune_train_limit: int | None = 20000
    """Fixed train subset for every model, drawn after the tuning split (null: the rest of train)."""
    finetune_max_len: int = 64
    """Fine-tuning sequence length."""
    finetune_eval_limit: int | None = None
    """Cap on tuning/test sentences (smoke runs; null: all)."""
    speed_repeats: int = 20
    """Repeats of the inference-speed measurement."""


@dataclass
class TeacherOptions:
    """Root key ``teacher``: the MLM adaptation of the whole teacher and the gate before stage I.

    The adaptation is V_t-only MLM with everything trainable (encoder, E_t and the decoder tied to it, the
    MLM transform), run in chunks of ``eval_every`` steps on a constant learning rate after warm-up, so a
    larger ``max_steps`` continues a finished run (``resume=auto``). After each chunk the held-out accuracy at
    real [MASK] positions decides: at least ``gate`` -> stage I may start; no gain of ``min_delta`` over the
    last ``patience`` evaluations, or ``max_steps`` spent, below the gate -> the pipeline stops and reports
    the curve (no verdict about the method)."""

    head_steps: int = 200
    """Head-only warm-up steps (encoder frozen) for a teacher without an MLM head (MiniLM); 0: none."""
    max_steps: int = 4000
    """Budget of unfrozen adaptation steps."""
    eval_every: int = 250
    """Held-out evaluation (and gate check) every N adaptation steps: the learning curve's points."""
    lr: float = 3e-4
    """AdamW learning rate of the encoder and E_t (and so of the tied decoder); 3e-4 beat 1e-4 on the
    held-out segments in two short probes (README "The teacher")."""
    lr_head: float = 1e-3
    """AdamW learning rate of the MLM transform and output bias."""
    warmup_steps: int = 100
    """Linear warm-up steps of each phase, then a constant learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    mask_prob: float = 0.15
    """MLM masking probability (80/10/10)."""
    gate: float = 0.25
    """Held-out accuracy at real [MASK] positions the teacher must reach before stage I (0: no gate)."""
    stop_at_gate: bool = True
    """Stop adapting as soon as the gate is passed (false: until it flattens or max_steps)."""
    patience: int = 4
    """The curve has flattened when the last ``patience`` evaluations gained less than min_delta on the best
    before them."""
    min_delta: float = 0.005
    """Smallest gain in [MASK] accuracy that counts as progress."""
    group_by_length: bool = True
    """Batch segments of similar length together (see ``MixedMLMOptions.group_by_length``)."""


@dataclass
class MixedMLMOptions:
    """Root key ``stage1``: stage I options (paper-note defaults; the paper leaves all of them open)."""

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
    """``python -m vocab_distill.train``: the shared keys plus ``pipeline``, ``teacher``, ``stage1`` and
    ``stage2``."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The pipeline (group ``model`` sets its ``widths``)."""
    teacher: TeacherOptions = field(default_factory=TeacherOptions)
    """The teacher's MLM adaptation and its gate."""
    stage1: MixedMLMOptions = field(default_factory=MixedMLMOptions)
    """Stage 0 and stage I."""
    stage2: StudentOptions = field(default_factory=StudentOptions)
    """Stage II and the student baselines."""


# The `model` group is `# @package pipeline` (it sets pipeline.widths), so its schema is the pipeline's.
register("vocab_distill", VocabDistillConfig, {"model": PipelineConfig})
