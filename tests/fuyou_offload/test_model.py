"""The decoder: golden values, exact parity with transformers' LLaMA, parameter counts."""

from __future__ import annotations

import pytest
import torch

from fuyou_offload.model import GPTConfig, from_transformers, init_gpt


def test_golden_loss_and_logits_of_the_tiny_model(tiny_cfg):
    m = init_gpt(tiny_cfg, 0)
    t = torch.arange(34).reshape(2, 17) % 64
    with torch.no_grad():
        assert m.loss(t[:, :-1], t[:, 1:]).item() == pytest.approx(4.160019874572754, abs=1e-5)
        assert m(t[:, :-1])[0, 0, :3].tolist() == pytest.approx([0.32356691, 0.08061902, 0.11876556], abs=1e-5)
    assert tiny_cfg.num_params() == sum(p.numel() for p in m.parameters()) == 25312


@pytest.mark.parametrize("tie", [True, False])
def test_matches_transformers_llama_exactly(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=tie, rope_theta=1e4, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(c).eval()
    ours = from_transformers(hf)
    assert ours.cfg.tie_embeddings is tie and ours.cfg.kv_heads == 2
    t = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(t), hf(t).logits, rtol=0, atol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="do not divide"):
        GPTConfig(hidden=30, heads=4)


def test_unit_by_unit_init_equals_the_whole_model_init(tiny_cfg):
    from fuyou_offload.model import init_gpt_units

    sd = init_gpt(tiny_cfg, 3).state_dict()
    units = dict(init_gpt_units(tiny_cfg, 3))
    assert list(units) == ["ends"] + [f"block{i}" for i in range(tiny_cfg.layers)]
    ends = torch.cat([sd[k].reshape(-1) for k in sd if k.startswith("ends.")])
    block1 = torch.cat([sd[k].reshape(-1) for k in sd if k.startswith("blocks.1.")])
    assert torch.equal(units["ends"], ends) and torch.equal(units["block1"], block1)
