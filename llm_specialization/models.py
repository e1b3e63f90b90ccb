"""The models: SmolLM2-135M-Instruct from its shipped GGUF file, tiny random LLaMAs for tests, and the
MiniLM sentence encoder used as retriever."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.pretrained import minilm_path, smollm2_gguf_path


@dataclass
class LM:
    """A causal LM and its tokenizer; ``name`` says which weights (reported beside every number)."""

    model: nn.Module
    tokenizer: object
    name: str


def load_smollm2(dtype: torch.dtype = torch.float32) -> LM:
    """SmolLM2-135M-Instruct, dequantized from Q4_1 GGUF to a trainable model (about 20 s on CPU).

    The weights are the dequantized Q4_1 ones, not the original bf16 checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.eval()
    return LM(model, tok, "SmolLM2-135M-Instruct (Q4_1 dequantized)")


def tiny_llama(tokenizer=None, hidden: int = 64, layers: int = 2, seed: int = 0) -> LM:
    """A random LLaMA with SmolLM2's architecture shape (GQA, SwiGLU, tied embeddings), for tests.

    Uses SmolLM2's tokenizer when given one, else a byte-level toy tokenizer over 259 ids.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or ByteTokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return LM(model, tokenizer, f"tiny random LLaMA (h={hidden}, L={layers})")


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258; 0 pad, 1 bos, 2 eos. Enough of the tokenizer API for the tests."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    padding_side = "right"

    def __len__(self) -> int:
        return 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(self, text, add_special_tokens: bool = False, **_):
        if isinstance(text, str):
            return _Enc(self.encode(text, add_special_tokens))
        return _Enc([self.encode(t, add_special_tokens) for t in text])

    def decode(self, ids) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


@dataclass
class _Enc:
    input_ids: list


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over real tokens, then L2 normalisation
    (the recipe of the package's sentence-transformers modules)."""

    def __init__(self, path=None, max_length: int = 256, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_length, self.device = max_length, device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:  # (N, 384), unit rows
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 384)


def exact_top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine/inner-product nearest neighbours by one matrix product: (scores, indices), (Q, k)."""
    sims = queries @ keys.T
    return sims.topk(min(k, keys.shape[0]), dim=-1)
