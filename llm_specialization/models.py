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
    from transformers import AutoTokenizer

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return LM(load_gguf_model(path, dtype), tok, "SmolLM2-135M-Instruct (Q4_1 dequantized)")


def load_gguf_model(path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM from a GGUF file, dequantized by transformers to a trainable ``dtype`` model (eval mode)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found")
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()


def tiny_llama(tokenizer=None, hidden: int = 64, layers: int = 2, seed: int = 0, init_std: float = 0.02) -> LM:
    """A random LLaMA with SmolLM2's architecture shape (GQA, SwiGLU, tied embeddings), for tests.

    Uses SmolLM2's tokenizer when given one, else a byte-level toy tokenizer over 259 ids. ``init_std``: the
    weights' initial standard deviation (transformers' 0.02 gives a random tiny model near-uniform logits,
    bounded by |E|^2; a larger one gives the sharper attention and logits a pretrained model has).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or ByteTokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      initializer_range=init_std)
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

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False,
                            **_):
        """ChatML, the layout of SmolLM2's template (without its default system message)."""
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        text += "<|im_start|>assistant\n" if add_generation_prompt else ""
        return self.encode(text) if tokenize else text


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
        """Texts whose truncated token ids are the same get the very same row (that of their first
        occurrence): the last bits of a row depend on the batch it was padded in (up to ~2e-7), so without
        this two copies of a document would rank against each other by rounding noise (R8's training
        split holds 49 such groups, 3 of them with different labels)."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(nn.functional.normalize(pooled, dim=-1).cpu())
        if not out:
            return torch.empty(0, 384)
        emb = torch.cat(out)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length).input_ids
        first: dict[tuple, int] = {}
        source = torch.tensor([first.setdefault(tuple(row), i) for i, row in enumerate(ids)])
        return emb[source]


class MemoEncoder:
    """An encoder whose ``encode`` remembers its last results by input: R0's references and R3's retrieval
    embed the same 5,501 training documents (about 7 min on a CPU), once per run with this."""

    def __init__(self, encoder):
        self.encoder, self.memo = encoder, {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        import hashlib

        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        if key not in self.memo:
            self.memo[key] = self.encoder.encode(texts)
        return self.memo[key]


def exact_top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine/inner-product nearest neighbours by one matrix product: (scores, indices), (Q, k), most
    similar first. Equal scores are ranked by key index, smaller first (a stable sort; ``topk`` leaves the
    order of ties to the kernel), and identical key rows get bit-identical scores (the product is taken with
    the distinct rows only), so duplicate keys always tie exactly and are ranked the same way every run."""
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    sims = (queries @ unique.T)[:, inverse]
    scores, order = sims.sort(dim=-1, descending=True, stable=True)
    k = min(k, keys.shape[0])
    return scores[:, :k], order[:, :k]


# ----------------------------------------------------------------------------------------- save / load
def file_sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_lm(lm: LM, folder, base_file=None) -> None:
    """Save a (fine-tuned or dequantized) LM as safetensors plus its tokenizer when it has one.

    transformers cannot write GGUF, so the weights go to safetensors; ``base_file`` (the GGUF the weights
    came from) is recorded with its sha256 in ``lm_source.json``.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = lm.model
    if getattr(model, "hf_quantizer", None) is not None:  # loaded from GGUF: a plain copy is serializable
        from transformers import AutoModelForCausalLM

        cfg = model.config.__class__.from_dict(
            {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
        plain = AutoModelForCausalLM.from_config(cfg, dtype=next(model.parameters()).dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    model.save_pretrained(folder, safe_serialization=True)
    if hasattr(lm.tokenizer, "save_pretrained"):
        lm.tokenizer.save_pretrained(folder)
    source = {"name": lm.name, "tokenizer": "saved" if hasattr(lm.tokenizer, "save_pretrained") else "byte"}
    if base_file is not None:
        source.update(base_file=Path(base_file).name, base_sha256=file_sha256(base_file))
    (folder / "lm_source.json").write_text(json.dumps(source, indent=2))


def load_saved_lm(folder, dtype: torch.dtype = torch.float32) -> LM:
    """Inverse of :func:`save_lm` (local files only)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta_path = folder / "lm_source.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a folder written by save_lm (no lm_source.json)")
    meta = json.loads(meta_path.read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
    tok = (ByteTokenizer() if meta["tokenizer"] == "byte"
           else AutoTokenizer.from_pretrained(folder, local_files_only=True))
    return LM(model, tok, meta["name"])


# ----------------------------------------------------------------------------------------- reference forward
@torch.no_grad()
def gguf_reference_logits(path, input_ids: list[int]) -> torch.Tensor:
    """A LLaMA forward written directly over the GGUF tensors (dequantized by the ``gguf`` package), with no
    transformers code: the reference the loader is checked against. Returns (T, V) fp32 logits.

    llama.cpp's converter permutes the q/k rows so that RoPE rotates adjacent pairs (2i, 2i+1); this forward
    uses that layout as stored (transformers un-permutes on load and rotates halves instead).
    """
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))

    def field(name):
        f = reader.fields[name]
        return f.parts[f.data[0]].tolist()[0]

    tensors = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(
            tuple(reversed([int(s) for s in t.shape])))
    n_layers, n_heads = field("llama.block_count"), field("llama.attention.head_count")
    n_kv, eps = field("llama.attention.head_count_kv"), field("llama.attention.layer_norm_rms_epsilon")
    theta = field("llama.rope.freq_base")
    emb = tensors["token_embd.weight"]  # (V, d)
    d = emb.shape[1]
    hd = d // n_heads
    T = len(input_ids)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]  # (T, hd/2)
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(x):  # (H, T, hd), adjacent pairs
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    causal = torch.full((T, T), float("-inf")).triu(1)
    x = emb[torch.tensor(input_ids)]
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, tensors[p + "attn_norm.weight"])
        q = (h @ tensors[p + "attn_q.weight"].T).view(T, n_heads, hd).transpose(0, 1)
        k = (h @ tensors[p + "attn_k.weight"].T).view(T, n_kv, hd).transpose(0, 1)
        v = (h @ tensors[p + "attn_v.weight"].T).view(T, n_kv, hd).transpose(0, 1)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(n_heads // n_kv, 0), v.repeat_interleave(n_heads // n_kv, 0)
        att = ((q @ k.transpose(1, 2)) / hd ** 0.5 + causal).softmax(-1)
        x = x + (att @ v).transpose(0, 1).reshape(T, d) @ tensors[p + "attn_output.weight"].T
        h = rms(x, tensors[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ tensors[p + "ffn_gate.weight"].T)
        x = x + (gate * (h @ tensors[p + "ffn_up.weight"].T)) @ tensors[p + "ffn_down.weight"].T
    x = rms(x, tensors["output_norm.weight"])
    head = tensors.get("output.weight", emb)  # tied embeddings when there is no output tensor
    return x @ head.T


def pad_lm_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (token ids, labels) rows into a causal-LM batch; labels are -100 where no loss is taken."""
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss(model, batch) -> torch.Tensor:
    """The causal-LM cross-entropy on the labelled tokens (transformers shifts the labels)."""
    return model(**batch).loss
