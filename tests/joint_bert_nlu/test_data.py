"""Reading the seq.in / seq.out / label format, label maps, and word-to-sub-token alignment."""

from __future__ import annotations

import pytest

from common.data import DataFormatError, DatasetNotFoundError
from joint_bert_nlu.data import (
    IGNORE_INDEX,
    EncodedDataset,
    LabelVocab,
    NLUExample,
    align_words,
    collate,
    encode_example,
    load_dataset,
    read_split,
    spans_to_example,
    write_split,
)

from .helpers import VOCAB, tokenizer


def _write(split_dir, seq_in, seq_out, label):
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "seq.in").write_text(seq_in)
    (split_dir / "seq.out").write_text(seq_out)
    (split_dir / "label").write_text(label)
    return split_dir


def test_read_split_strips_trailing_spaces(tmp_path):
    d = _write(tmp_path / "train", "play jazz \nhi\n", "O B-genre \nO\n", "PlayMusic\ngreet\n")
    exs = read_split(d)
    assert exs == [NLUExample(("play", "jazz"), ("O", "B-genre"), "PlayMusic"),
                   NLUExample(("hi",), ("O",), "greet")]


def test_word_tag_count_mismatch_names_file_and_line(tmp_path):
    d = _write(tmp_path / "train", "a b\nc d e\n", "O O\nO O\n", "x\ny\n")
    with pytest.raises(DataFormatError) as e:
        read_split(d)
    assert e.value.line == 2 and e.value.path.name == "seq.out"
    assert "2 tags for 3 words" in str(e.value) and "seq.out:2" in str(e.value)


@pytest.mark.parametrize("seq_in, seq_out, label, problem", [
    ("a\nb\n", "O\n", "x\ny\n", "different line counts"),
    ("a\n\n", "O\n\n", "x\ny\n", "empty sentence"),
    ("a\nb\n", "O\nO\n", "x\ntwo words\n", "intent must be one non-empty token"),
])
def test_malformed_splits(tmp_path, seq_in, seq_out, label, problem):
    d = _write(tmp_path / "train", seq_in, seq_out, label)
    with pytest.raises(DataFormatError, match=problem):
        read_split(d)


def test_missing_file_and_missing_dataset(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataFormatError, match="missing file"):
        read_split(tmp_path / "train")
    with pytest.raises(DatasetNotFoundError, match="nlu/no_such_set"):
        load_dataset("no_such_set", data_dir=tmp_path)


def test_unseen_labels_map_to_unk():
    assert VOCAB.intent_id("book") == 1 and VOCAB.intent_id("atis_day_name") == 0
    assert VOCAB.slot_id("B-city") == 3 and VOCAB.slot_id("B-never_seen") == 1
    with pytest.raises(ValueError, match="must start with"):
        LabelVocab(["book"], ["PAD", "UNK"])


def test_vocab_from_examples_and_label_file_check(tmp_path):
    exs = [NLUExample(("a", "b"), ("B-x", "O"), "i2"), NLUExample(("c",), ("B-a",), "i1#i3")]
    v = LabelVocab.from_examples(exs)
    assert v.intents == ["UNK", "i1#i3", "i2"]  # multi-intents are atomic classes
    assert v.slots == ["PAD", "UNK", "O", "B-a", "B-x"]
    write_split(exs, tmp_path / "train")
    (tmp_path / "intent_label.txt").write_text("UNK\ni2\n")
    (tmp_path / "slot_label.txt").write_text("PAD\nUNK\nO\nB-a\nB-x\n")
    with pytest.raises(DataFormatError, match="intent_label.txt.*missing: \\['i1#i3'\\]"):
        load_dataset(str(tmp_path), splits=("train",))


def test_real_atis_and_snips_sizes():
    atis, snips = load_dataset("atis"), load_dataset("snips")
    assert {k: len(v) for k, v in atis.splits.items()} == {"train": 4478, "dev": 500, "test": 893}
    assert {k: len(v) for k, v in snips.splits.items()} == {"train": 13084, "dev": 700, "test": 700}
    assert (atis.vocab.num_intents, atis.vocab.num_slots) == (22, 122)
    assert (snips.vocab.num_intents, snips.vocab.num_slots) == (8, 74)
    assert "atis_flight#atis_airfare" in atis.vocab.intents
    unseen = [ex.intent for ex in atis.splits["test"] if atis.vocab.intent_id(ex.intent) == 0]
    assert len(unseen) == 5  # the ATIS intent-accuracy ceiling is 888/893


def test_alignment_first_subtoken_of_each_word():
    tok = tokenizer()
    words = ["book", "antidisestablishmentarianism", "to", "zürich"]
    feats = align_words(tok, words)
    pieces = tok.convert_ids_to_tokens(feats["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    first = [pieces[i] for i in feats["word_index"]]
    assert first == ["book", "anti", "to", "zurich"]
    assert feats["word_index"] == [1, 2, 10, 11]  # the long word spans 8 pieces: positions 2..9


def test_alignment_unknown_and_empty_words_get_unk():
    tok = tokenizer()
    words = ["hi", "\u200b", "😀", "there"]  # zero-width space tokenises to nothing; emoji to [UNK]
    feats = align_words(tok, words)
    pieces = tok.convert_ids_to_tokens(feats["input_ids"])
    assert len(feats["word_index"]) == 4
    assert [pieces[i] for i in feats["word_index"]] == ["hi", "[UNK]", "[UNK]", "there"]


def test_alignment_truncation_drops_words_past_max_length():
    tok = tokenizer()
    words = ["flight"] * 60
    feats = align_words(tok, words, max_length=50)
    assert len(feats["input_ids"]) == 50 and len(feats["word_index"]) == 48
    ex = NLUExample(tuple(words), tuple(["O"] * 60), "book")
    enc = encode_example(tok, ex, VOCAB, max_length=50)
    assert len(enc["slot_labels"]) == 48


def test_collate_pads_dynamically_and_masks_words():
    tok = tokenizer()
    exs = [NLUExample(("book", "boston"), ("O", "B-city"), "book"), NLUExample(("hi",), ("O",), "greet")]
    batch = collate(EncodedDataset(exs, tok, VOCAB).features)
    assert batch["input_ids"].shape == (2, 4)  # [CLS] book boston [SEP]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["word_mask"].tolist() == [[True, True], [True, False]]
    assert batch["slot_labels"].tolist() == [[2, 3], [2, IGNORE_INDEX]]
    assert batch["intent_label"].tolist() == [1, 2]
    fixed = collate(EncodedDataset(exs, tok, VOCAB).features, pad_to=50)
    assert fixed["input_ids"].shape == (2, 50)


def test_spans_to_bio():
    ex = spans_to_example("fly to new york at noon", [(7, 15, "city"), (19, 23, "time")], "book")
    assert ex.tags == ("O", "O", "B-city", "I-city", "O", "B-time")
    with pytest.raises(ValueError, match="cuts the word"):
        spans_to_example("fly to newyork", [(7, 10, "city")], "book")
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_example("fly to new york", [(7, 15, "city"), (11, 15, "state")], "book")
