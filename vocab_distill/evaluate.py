"""Size, compression and CPU speed of the teacher, the students and the baselines.

Sizes are of the encoder (``BertModel``: embeddings, layers, pooler), the part that a downstream model
keeps. int8 is torch's dynamic quantization (``quantize_dynamic`` on ``nn.Linear``): the Linear weights
become int8, embeddings and LayerNorms stay fp32, so for small-vocabulary students the embedding table
bounds how much int8 saves. Latency and throughput of all models are measured side by side, interleaved
(``common.bench.compare``), in one process.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from common.bench import compare

BERT_BASE_PARAMS = 110_000_000
"""BERT-base as the paper counts it (the 12 x 768 encoder with its 30,522 vocabulary; 109.5M exactly)."""
MINILM_PARAMS = 22_713_216
"""all-MiniLM-L6-v2's BertModel (6 x 384, 30,522 vocabulary, pooler) as shipped."""


@dataclass
class SizeReport:
    params: int
    embedding_params: int
    fp32_bytes: int
    int8_bytes: int

    @property
    def embedding_share(self) -> float:
        return self.embedding_params / self.params

    def as_dict(self) -> dict:
        return asdict(self) | {"embedding_share": self.embedding_share}


def serialized_bytes(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: the size on disk of the weights."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return len(buf.getvalue())


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantized copy (Linear layers only; CPU inference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the eager quantization API but still ships it
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear},
                                                      dtype=torch.qint8)


def size_report(encoder: nn.Module) -> SizeReport:
    """Parameters (all, and the word/position/type embedding tables) and fp32/int8 bytes of an encoder."""
    params = sum(p.numel() for p in encoder.parameters())
    emb = getattr(encoder, "embeddings", None)
    emb_params = sum(p.numel() for n, p in emb.named_parameters() if "LayerNorm" not in n) if emb else 0
    return SizeReport(params, emb_params, serialized_bytes(encoder), serialized_bytes(quantize_int8(encoder)))


def compression_ratios(params: int, teacher_params: int = MINILM_PARAMS) -> dict[str, float]:
    return {"x_vs_teacher": teacher_params / params, "x_vs_bert_base": BERT_BASE_PARAMS / params}


def speed_table(encoders: dict[str, nn.Module], *, seq_len: int = 32, throughput_batch: int = 32,
                repeats: int = 20, warmup: int = 2, vocab_floor: int = 1000) -> dict[str, dict[str, float]]:
    """CPU latency (batch 1) and throughput (sentences/s at ``throughput_batch``), all models interleaved.

    Inputs are random ids below each model's vocabulary size (the cost does not depend on which ids)."""
    g = torch.Generator().manual_seed(0)
    single, batched = {}, {}
    for name, enc in encoders.items():
        enc.eval()
        vocab = enc.config.vocab_size
        x1 = torch.randint(min(vocab_floor, vocab - 1), vocab, (1, seq_len), generator=g)
        xb = torch.randint(min(vocab_floor, vocab - 1), vocab, (throughput_batch, seq_len), generator=g)
        single[name] = (lambda e=enc, x=x1: _infer(e, x))
        batched[name] = (lambda e=enc, x=xb: _infer(e, x))
    lat = compare(single, warmup=warmup, repeats=repeats, items_per_call=1)
    thr = compare(batched, warmup=warmup, repeats=max(3, repeats // 4), items_per_call=throughput_batch)
    return {n: {"latency_ms": lat[n].median * 1e3, "throughput_per_s": thr[n].throughput} for n in encoders}


@torch.inference_mode()
def _infer(encoder: nn.Module, ids: torch.Tensor):
    return encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
