"""Mixed segmentation, the ramp, and vocabulary-respecting masking, on a toy vocabulary pair."""

import numpy as np
import pytest
import torch

from tests.vocab_distill.toy import CORPUS, write_vocabs
from vocab_distill.mixed import (
    IGNORE_INDEX,
    MixedVocabCodec,
    StudentCodec,
    mask_tokens,
    mix_probability,
    mixed_vocab_ranges,
)
from vocab_distill.vocab import load_wordpiece, pretokenize, segmentation_match_rate


@pytest.fixture()
def codec(tmp_path):
    t, s = write_vocabs(tmp_path)
    return MixedVocabCodec(load_wordpiece(t), load_wordpiece(s), max_len=64)


def test_p0_is_teacher_and_p1_is_student_segmentation(codec):
    encs = codec.encode_all(CORPUS)
    t0 = codec.batch(encs, 0.0)
    t1 = codec.batch(encs, 1.0)
    for i, text in enumerate(CORPUS):
        want_t = codec.teacher_tok.encode(text, add_special_tokens=False).ids
        want_s = codec.student_tok.encode(text, add_special_tokens=False).ids
        n = int(t0["attention_mask"][i].sum())
        assert t0["input_ids"][i, 1 : n - 1].tolist() == want_t
        m = int(t1["attention_mask"][i].sum())
        assert (t1["input_ids"][i, 1 : m - 1] - codec.n_teacher).tolist() == want_s
    # golden: "the cat" -> teacher whole words, student letters (offset by |V_t|)
    assert codec.teacher_tok.encode("the cat", add_special_tokens=False).tokens == ["the", "cat"]
    assert codec.student_tok.encode("cat", add_special_tokens=False).tokens == ["c", "##a", "##t"]


def test_any_mix_maps_back_to_the_same_words(codec):
    encs = codec.encode_all(CORPUS)
    g = torch.Generator().manual_seed(0)
    for p in (0.0, 0.3, 0.5, 1.0):
        for _ in range(5):
            b = codec.batch(encs, p, generator=g)
            for i, text in enumerate(CORPUS):
                ids = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
                assert codec.decode_words(ids) == pretokenize(codec.teacher_tok, text)


def test_mixing_uses_both_vocabularies_at_intermediate_p(codec):
    encs = codec.encode_all(CORPUS * 20)
    b = codec.batch(encs, 0.5, generator=torch.Generator().manual_seed(1))
    real = b["attention_mask"].bool() & ~b["special_mask"]
    share_student = float((b["input_ids"][real] >= codec.n_teacher).float().mean())
    assert 0.3 < share_student < 0.9  # student pieces are longer, so their token share exceeds p


def test_ramp_is_monotone_and_reaches_p_max():
    ps = [mix_probability(s, 100, p_max=0.5, ramp_fraction=0.5) for s in range(0, 101)]
    assert ps[0] == 0.0 and ps[25] == pytest.approx(0.25) and ps[50] == 0.5 and ps[100] == 0.5
    assert all(b >= a for a, b in zip(ps, ps[1:]))
    with pytest.raises(ValueError):
        mix_probability(1, 10, p_max=1.5)


def test_random_replacements_stay_in_their_own_vocabulary(codec):
    encs = codec.encode_all(CORPUS * 50)
    b = codec.batch(encs, 0.5, generator=torch.Generator().manual_seed(2))
    ranges = mixed_vocab_ranges(codec)
    ids, labels = mask_tokens(b["input_ids"], b["special_mask"], mask_id=codec.mask_id, vocab_ranges=ranges,
                              mask_prob=1.0, generator=torch.Generator().manual_seed(3))
    orig = b["input_ids"]
    replaced = (labels != IGNORE_INDEX) & (ids != codec.mask_id) & (ids != orig)
    assert int(replaced.sum()) > 50
    for start, end, low in ranges:
        from_this = replaced & (orig >= start) & (orig < end)
        assert bool(((ids[from_this] >= low) & (ids[from_this] < end)).all())
    # 80/10/10 proportions among selected tokens
    sel = labels != IGNORE_INDEX
    frac_mask = float((ids[sel] == codec.mask_id).float().mean())
    assert 0.72 < frac_mask < 0.88
    # special tokens are never selected and keep their ids
    assert bool((labels[b["special_mask"]] == IGNORE_INDEX).all())
    assert torch.equal(ids[b["special_mask"]], orig[b["special_mask"]])


def test_teacher_random_range_skips_unused_slots(codec):
    # toy teacher vocab has [unused0] at id 1: replacements start after the bracketed tokens
    assert codec.teacher_random_low == 6
    assert codec.student_random_low == 5


def test_student_codec_masked_batch(tmp_path):
    _, s = write_vocabs(tmp_path)
    sc = StudentCodec(load_wordpiece(s), max_len=8)
    encs = sc.encode_all(CORPUS)
    assert max(len(e) for e in encs) <= 6  # truncated to max_len - 2
    b = sc.masked_batch(encs, generator=torch.Generator().manual_seed(0))
    assert b["input_ids"].shape == b["labels"].shape and b["input_ids"][0, 0] == sc.cls_id


def test_match_rate_golden(codec):
    m = segmentation_match_rate(codec.teacher_tok, codec.student_tok, ["a cat ."])
    # "a" and "." are one piece in both vocabularies; "cat" is 1 teacher piece vs 3 student pieces
    assert (m.words, m.words_matching, m.teacher_tokens, m.student_tokens) == (3, 2, 3, 5)
    assert m.token_match_rate == pytest.approx(2 / 3)


def test_encoded_text_is_compact(codec):
    e = codec.encode("the cats")
    assert e.t_ids.dtype == np.int32 and e.n_words == 2
    assert [codec.teacher_tok.id_to_token(int(i)) for i in e.t_ids] == ["the", "cat", "##s"]
