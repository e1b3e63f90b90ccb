"""Size, compression and side-by-side speed measurement on tiny models."""

import pytest
from transformers import BertModel

from vocab_distill.evaluate import (
    BERT_BASE_PARAMS,
    MINILM_PARAMS,
    compression_ratios,
    size_report,
    speed_table,
)
from vocab_distill.model import bert_param_count, student_config


@pytest.fixture(scope="module")
def tiny():
    return {"a": BertModel(student_config(500, 32, 2, max_positions=64)),
            "b": BertModel(student_config(2000, 32, 2, max_positions=64))}


def test_size_report_counts_and_bytes(tiny):
    r = size_report(tiny["a"])
    assert r.params == bert_param_count(500, 32, 2, max_positions=64)
    assert r.embedding_params == (500 + 64 + 2) * 32
    assert 4 * r.params <= r.fp32_bytes < 4 * r.params + 200_000  # fp32 weights plus serialisation overhead
    assert r.int8_bytes < r.fp32_bytes  # Linear weights become int8; embeddings stay fp32
    assert 0 < r.embedding_share < 1


def test_compression_ratios():
    ratios = compression_ratios(1_100_000)
    assert ratios["x_vs_bert_base"] == pytest.approx(BERT_BASE_PARAMS / 1_100_000)
    assert ratios["x_vs_teacher"] == pytest.approx(MINILM_PARAMS / 1_100_000)


def test_speed_table_times_every_model(tiny):
    table = speed_table(tiny, seq_len=8, throughput_batch=4, repeats=2, warmup=1)
    assert set(table) == {"a", "b"}
    for row in table.values():
        assert row["latency_ms"] > 0 and row["throughput_per_s"] > 0
