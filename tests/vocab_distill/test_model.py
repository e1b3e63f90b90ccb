"""Two-softmax routing, shared projections, parameter counts and the export round trip."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM, BertModel, BertTokenizerFast

from tests.vocab_distill.toy import STUDENT_VOCAB, TEACHER_VOCAB, tiny_teacher_config, write_vocabs
from vocab_distill.mixed import IGNORE_INDEX
from vocab_distill.model import (
    PROJECTION_FAMILIES,
    MixedVocabMLM,
    SharedProjection,
    bert_param_count,
    init_student_from_stage1,
    logit_kd_loss,
    save_bert_folder,
    student_config,
    tensor_family,
)

NT, NS = len(TEACHER_VOCAB), len(STUDENT_VOCAB)


@pytest.fixture()
def mixed():
    torch.manual_seed(0)
    return MixedVocabMLM(BertForMaskedLM(tiny_teacher_config()), NS, student_dim=8).eval()


def test_two_softmax_routing_matches_hand_computation(mixed):
    ids = torch.tensor([[3, NT + 10, 7, NT + 20, 12, 4]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1] = NT + 11  # a V_s target
    labels[0, 2] = 8  # a V_t target
    labels[0, 3] = NT + 6  # a V_s target
    out = mixed.mlm_loss(ids, torch.ones_like(ids), labels)
    h = mixed.hidden_states(ids, torch.ones_like(ids))[0]
    lt, ls = mixed.two_softmax_logits(h)
    want = (F.cross_entropy(ls[1], torch.tensor(11), reduction="sum")
            + F.cross_entropy(lt[2], torch.tensor(8), reduction="sum")
            + F.cross_entropy(ls[3], torch.tensor(6), reduction="sum")) / 3
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert (out.n_teacher, out.n_student) == (1, 2)
    assert lt.shape[-1] == NT and ls.shape[-1] == NS


def test_student_head_does_not_touch_teacher_targets(mixed):
    ids = torch.tensor([[3, 7, 9, 4]])
    labels = torch.tensor([[IGNORE_INDEX, 8, 10, IGNORE_INDEX]])  # teacher targets only
    loss = mixed.mlm_loss(ids, torch.ones_like(ids), labels).loss
    loss.backward()
    assert mixed.student_bias.grad is None or float(mixed.student_bias.grad.abs().sum()) == 0.0
    assert float(mixed.teacher.cls.predictions.bias.grad.abs().sum()) > 0


def test_softmaxes_are_tied_to_their_own_tables(mixed):
    dec = mixed.teacher.cls.predictions.decoder
    assert dec.weight is mixed.teacher_embeddings.weight  # teacher softmax tied to E_t
    assert dec.weight.data_ptr() != mixed.student_embeddings.weight.data_ptr()
    assert mixed.student_embeddings.weight.shape == (NS, 8)


def test_student_ids_are_embedded_through_the_projection(mixed):
    ids = torch.tensor([[NT + 3]])
    want = mixed.embed_up(mixed.student_embeddings.weight[3])
    assert torch.allclose(mixed.embed(ids)[0, 0], want)
    assert torch.allclose(mixed.embed(torch.tensor([[3]]))[0, 0], mixed.teacher_embeddings.weight[3])


@pytest.mark.parametrize("hidden,layers", [(48, 6), (96, 6), (192, 6), (96, 12), (8, 2)])
def test_param_count_matches_the_formula(hidden, layers):
    cfg = student_config(4928 if hidden > 8 else NS, hidden, layers)
    if hidden > 96 or layers > 6:  # avoid building the largest models in the fast suite
        return
    model = BertModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == bert_param_count(cfg.vocab_size, hidden, layers)


def test_param_count_golden_values():
    # the paper note's table (vocabulary 4,928, 512 positions, pooler, no MLM head)
    assert bert_param_count(4928, 96, 6) == 1_202_976
    assert round(bert_param_count(4928, 48, 6) / 1e6, 2) == 0.43
    assert round(bert_param_count(4928, 192, 6) / 1e6, 2) == 3.75
    assert round(bert_param_count(30522, 384, 6) / 1e6, 1) == 22.7  # MiniLM
    assert bert_param_count(4928, 96, 6) * 4 < 7e6  # the hidden-96 student is under 7 MB in fp32
    assert student_config(4928, 96, 6).num_attention_heads == 6


@pytest.fixture()
def pair():
    torch.manual_seed(0)
    teacher = BertModel(tiny_teacher_config(hidden=32, layers=2), add_pooling_layer=False)
    student = BertModel(student_config(NS, 8, 2, max_positions=64), add_pooling_layer=False)
    proj = SharedProjection(teacher.config, student.config)
    return teacher, student, proj


def test_projection_shapes(pair):
    teacher, student, proj = pair
    names = []
    for name, family, wt, ws, types in proj.pairs(teacher, student):
        names.append(name)
        assert family in PROJECTION_FAMILIES and family not in ("bias", "norm")  # matrices only by default
        assert proj.project_down(wt, types).shape == ws.shape
        assert proj.project_up(ws, types).shape == wt.shape
    assert proj.down["h"].shape == (32, 8) and proj.down["f"].shape == (128, 32)
    assert len(names) == 2 * 6  # Q, K, V, attention output, FFN in, FFN out per layer
    assert "layer1.intermediate.dense.weight" in names
    everything = SharedProjection(teacher.config, student.config, biases=True, norms=True)
    families = [f for _, f, *_ in everything.pairs(teacher, student)]
    assert len(families) == 2 * 16  # + 6 biases + 2 LayerNorms x (gain, shift) per layer
    assert families.count("bias") == 2 * 6 and families.count("norm") == 2 * 4


def _constant_pair(scales: dict[str, float], bias_value: float = 0.0):
    """Teacher 2 x 32, student 2 x 8; every weight matrix of family k is the constant scales[k] (biases and
    LayerNorms set to ``bias_value``); projections are truncations [I; 0], so U^T W U is W's top-left block."""
    torch.manual_seed(0)
    teacher = BertModel(tiny_teacher_config(hidden=32, layers=2), add_pooling_layer=False)
    student = BertModel(student_config(NS, 8, 2, max_positions=64), add_pooling_layer=False)
    with torch.no_grad():
        for name, p in teacher.encoder.named_parameters():
            family = tensor_family(name.split(".", 2)[2])
            p.fill_(scales[family] if family in scales else bias_value)
        for p in student.encoder.parameters():
            p.zero_()
    return teacher, student


def _truncation(proj):
    with torch.no_grad():
        for p in (*proj.down.values(), *proj.up.values()):
            p.zero_()
            p[: p.shape[1]].copy_(torch.eye(p.shape[1]))
    return proj


MATRIX_SCALES = {"query": 1e-3, "key": 1.0, "value": 10.0, "attn_out": 0.5, "ffn_in": 100.0, "ffn_out": 3.0}


def test_projection_loss_golden_values_per_tensor_normalised():
    """Golden values: a zero student against the truncated teacher has relative error exactly 1 in every
    tensor whatever its scale (six scales over five decades), half the projected teacher 0.25; each family's
    share is its tensor count over the total (1/6); biases and LayerNorms (set huge) do not enter by default."""
    teacher, student = _constant_pair(MATRIX_SCALES, bias_value=1e6)
    proj = _truncation(SharedProjection(teacher.config, student.config))
    loss, shares = proj.loss_and_shares(teacher, student, "down")
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    assert set(shares) == set(MATRIX_SCALES) and all(v == pytest.approx(1 / 6) for v in shares.values())
    assert proj.loss(teacher, student, "up").item() == pytest.approx(1.0, rel=1e-6)  # V W^s V^T = 0
    proj.copy_projected_teacher(teacher, student)
    with torch.no_grad():
        for p in student.encoder.parameters():
            p.mul_(0.5)
    assert proj.loss(teacher, student, "down").item() == pytest.approx(0.25, rel=1e-6)
    # the un-normalised sum (the old loss): the largest family is everything
    raw = _truncation(SharedProjection(teacher.config, student.config, normalize=False))
    _, raw_shares = raw.loss_and_shares(teacher, student, "down")
    assert raw_shares["ffn_in"] > 0.98 and raw_shares["query"] < 1e-9


def test_projection_vectors_are_optional_and_logged_as_families():
    teacher, student = _constant_pair(MATRIX_SCALES, bias_value=2.0)
    with_vectors = _truncation(SharedProjection(teacher.config, student.config, biases=True, norms=True))
    loss, shares = with_vectors.loss_and_shares(teacher, student, "down")
    # every one of the 32 terms is a relative error of exactly 1 (constant vectors, truncated projection)
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    assert shares["bias"] == pytest.approx(12 / 32) and shares["norm"] == pytest.approx(8 / 32)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_chain_order_does_not_change_the_product():
    from vocab_distill.model import _chain

    torch.manual_seed(0)
    for shapes in [((8, 128), (128, 32), (32, 8)), ((32, 4), (4, 128), (128, 64))]:
        a, b, c = (torch.randn(*s, dtype=torch.float64) for s in shapes)
        assert torch.allclose(_chain(a, b, c), a @ b @ c)


def test_projection_loss_is_zero_for_the_projected_teacher(pair):
    teacher, student, proj = pair
    assert proj.loss(teacher, student, "down").item() > 0
    proj.copy_projected_teacher(teacher, student)
    assert proj.loss(teacher, student, "down").item() == pytest.approx(0.0, abs=1e-12)


def test_up_projection_loss_is_zero_when_teacher_is_the_lifted_student(pair):
    teacher, student, proj = pair
    with torch.no_grad():
        for _, _, wt, ws, types in proj.pairs(teacher, student):
            wt.copy_(proj.project_up(ws, types))
    assert proj.loss(teacher, student, "up").item() == pytest.approx(0.0, abs=1e-12)
    assert proj.loss(teacher, student, "both").item() > 0  # down is not zero then


def test_projection_gradients_reach_student_and_projections_not_teacher(pair):
    teacher, student, proj = pair
    proj.loss(teacher, student, "both").backward()
    assert all(p.grad is None for p in teacher.encoder.parameters())
    assert proj.down["h"].grad is not None and proj.up["f"].grad is not None
    assert student.encoder.layer[0].attention.self.query.weight.grad is not None


def test_projection_rejects_different_depths():
    with pytest.raises(ValueError, match="layers"):
        SharedProjection(tiny_teacher_config(layers=2), student_config(NS, 8, 3))


def test_logit_kd_loss_is_ce_when_teacher_equals_student():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3] = 4, 7
    kd = logit_kd_loss(logits, logits.clone(), labels, kd_weight=0.5)
    ce = F.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    assert kd.item() == pytest.approx(0.5 * ce.item(), rel=1e-6)


def test_save_load_round_trip(tmp_path, mixed):
    _, s_vocab = write_vocabs(tmp_path)
    student = BertForMaskedLM(student_config(NS, 8, 2, max_positions=64)).eval()
    init_student_from_stage1(student, mixed)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, mixed.student_embeddings.weight)
    out = save_bert_folder(student, s_vocab, tmp_path / "student")
    assert (out / "vocab.txt").read_text().split("\n")[: len(STUDENT_VOCAB)] == STUDENT_VOCAB
    tok = BertTokenizerFast.from_pretrained(out)
    enc = tok("the cat", return_tensors="pt")
    assert tok.convert_ids_to_tokens(enc["input_ids"][0]) == ["[CLS]", "t", "##h", "##e", "c", "##a", "##t", "[SEP]"]
    reloaded = BertModel.from_pretrained(out).eval()
    with torch.no_grad():
        a = student.bert(**enc).last_hidden_state
        b = reloaded(**enc).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)
