"""The TinyBERT-style baseline across two vocabularies: word alignment of the two segmentations, word-level
attention, the layer map, and a student that learns the teacher's hidden states on a toy corpus."""

import pytest
import torch
from transformers import BertForMaskedLM

from common.config import TrainerConfig
from tests.vocab_distill.toy import CORPUS, STUDENT_VOCAB, tiny_teacher_config, write_vocabs
from vocab_distill.config import StudentOptions
from vocab_distill.mixed import IGNORE_INDEX, MixedVocabCodec, StudentCodec, aligned_batch
from vocab_distill.model import student_config
from vocab_distill.pretrain import HiddenStateDistiller, eval_student_mlm, train_student
from vocab_distill.vocab import load_wordpiece


@pytest.fixture()
def codecs(tmp_path):
    t, s = write_vocabs(tmp_path)
    codec = MixedVocabCodec(load_wordpiece(t), load_wordpiece(s), max_len=32)
    return codec, StudentCodec(codec.student_tok, max_len=32)


def _word(tok, ids):
    return "".join(tok.id_to_token(int(i)).removeprefix("##") for i in ids)


@pytest.mark.parametrize("max_len", [32, 9])
def test_aligned_batch_pairs_the_same_words(codecs, max_len):
    codec, s_codec = codecs
    codec.max_len = s_codec.max_len = max_len
    b = aligned_batch(codec, s_codec, codec.encode_all(CORPUS), 0.3, generator=torch.Generator().manual_seed(0))
    s_orig = torch.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])  # undo the masking
    n_units = 0
    for i, text in enumerate(CORPUS):
        words = text.split()
        for u in range(1, int(b["unit_mask"][i].sum())):
            t_pos = b["t_pool"][i, u].nonzero().flatten()
            s_pos = b["s_pool"][i, u].nonzero().flatten()
            t_word = _word(codec.teacher_tok, b["teacher_input_ids"][i, t_pos])
            assert t_word == _word(codec.student_tok, s_orig[i, s_pos]) == words[u - 1]
            assert b["t_pool"][i, u].sum().item() == pytest.approx(1.0)
            n_units += 1
        assert b["t_pool"][i, 0, 0] == 1 and b["s_pool"][i, 0, 0] == 1  # unit 0 is [CLS]
    full = sum(len(t.split()) for t in CORPUS)
    assert n_units == full if max_len == 32 else 0 < n_units < full  # truncation keeps whole words only


def test_layer_map_and_word_attention(codecs):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_teacher_config(layers=4))
    student = BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 2, max_positions=64))
    assert HiddenStateDistiller(student, teacher).layer_map == [0, 2, 4]  # TinyBERT's uniform map
    with pytest.raises(ValueError, match="multiple"):
        HiddenStateDistiller(BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 3, max_positions=64)), teacher)
    probs = torch.rand(2, 3, 5, 5).softmax(-1)
    pool = torch.zeros(2, 3, 5)
    pool[:, 0, 0], pool[:, 1, 1:3], pool[:, 2, 3] = 1.0, 0.5, 1.0
    mask = torch.tensor([[True, True, True], [True, True, False]])
    a = HiddenStateDistiller.word_attention(probs, pool, mask)
    assert torch.allclose(a.sum(-1), torch.ones(2, 3)) and bool((a[1, :, 2] == 0).all())


def test_hidden_kd_student_learns_the_teacher_states(codecs, tmp_path):
    codec, s_codec = codecs
    encs = codec.encode_all(CORPUS * 16)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_teacher_config())
    student = BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 2, max_positions=64))
    dist = HiddenStateDistiller(student, teacher)
    batch = aligned_batch(codec, s_codec, encs[:16], 0.15, generator=torch.Generator().manual_seed(0))
    args = {k: v for k, v in batch.items() if k != "kinds"}
    with torch.no_grad():
        before = dist.eval()(**args)
    held = s_codec.encode_all(CORPUS * 4)
    cfg = TrainerConfig(max_epochs=None, max_steps=60, batch_size=16, log_every_steps=10, progress_bar=False)
    fit = train_student(dist, s_codec, encs, held, cfg, tmp_path / "hkd", opts=StudentOptions(lr=3e-3),
                        make_batch=lambda items: aligned_batch(codec, s_codec, items, 0.15),
                        lengths=[len(e.s_ids) for e in encs])
    with torch.no_grad():
        after = dist.eval()(**args)
    assert after["hidden"] < 0.7 * before["hidden"] and after["attention"] < before["attention"]
    assert fit.last_metrics["mlm_loss"] < eval_student_mlm(BertForMaskedLM(student.config), s_codec, held)["mlm_loss"]
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
