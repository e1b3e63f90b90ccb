"""Golden metric values on hand-made sequences (seqeval default, conlleval-compatible mode)."""

from __future__ import annotations

import pytest

from joint_bert_nlu.evaluate import compute_metrics, intent_accuracy, sentence_accuracy, slot_scores


def test_exact_match_is_perfect():
    gold = [["B-city", "I-city", "O"], ["O", "B-time"]]
    assert slot_scores(gold, gold) == {"slot_precision": 1.0, "slot_recall": 1.0, "slot_f1": 1.0}


def test_hand_counted_chunks():
    # gold chunks: city(0-1), time(3), city(0)            -> 3
    # pred chunks: city(0),   time(3), city(0)            -> 3; correct: time(3), city(0) of sentence 2
    gold = [["B-city", "I-city", "O", "B-time"], ["B-city"]]
    pred = [["B-city", "O", "O", "B-time"], ["B-city"]]
    s = slot_scores(gold, pred)
    assert s["slot_precision"] == pytest.approx(2 / 3) and s["slot_recall"] == pytest.approx(2 / 3)
    assert s["slot_f1"] == pytest.approx(2 / 3)


def test_conlleval_i_after_o_starts_a_chunk():
    # conlleval: an I-X after O opens a chunk X; it matches a gold B-X over the same word.
    gold = [["O", "B-city", "I-city"]]
    pred = [["O", "I-city", "I-city"]]
    assert slot_scores(gold, pred)["slot_f1"] == 1.0


def test_conlleval_type_switch_splits_chunks():
    # pred B-city I-time = chunks city(0) and time(1); gold is one city chunk over both words.
    gold = [["B-city", "I-city"]]
    pred = [["B-city", "I-time"]]
    s = slot_scores(gold, pred)
    assert (s["slot_precision"], s["slot_recall"], s["slot_f1"]) == (0.0, 0.0, 0.0)
    pred2 = [["B-city", "I-city"], ["I-time", "O"]]
    gold2 = [["B-city", "I-city"], ["B-time", "O"]]
    assert slot_scores(gold2, pred2)["slot_f1"] == 1.0


def test_unseen_gold_tag_is_an_ordinary_missed_chunk():
    # A gold tag the model cannot know (unseen in train) counts as one missed chunk, nothing more.
    gold = [["B-flight", "O", "B-city"]]
    pred = [["O", "O", "B-city"]]
    s = slot_scores(gold, pred)
    assert s["slot_precision"] == 1.0 and s["slot_recall"] == 0.5


def test_intent_and_sentence_accuracy_with_gold_unk():
    gold_i = ["book", "atis_day_name", "greet"]  # atis_day_name is unseen in training: always wrong
    pred_i = ["book", "UNK", "greet"]
    gold_t = [["O", "B-city"], ["O"], ["O"]]
    pred_t = [["O", "B-city"], ["O"], ["B-city"]]
    assert intent_accuracy(gold_i, pred_i) == pytest.approx(2 / 3)
    assert sentence_accuracy(gold_i, pred_i, gold_t, pred_t) == pytest.approx(1 / 3)
    m = compute_metrics(gold_i, pred_i, gold_t, pred_t)
    assert m["sentence_acc"] == pytest.approx(1 / 3) and m["intent_acc"] == pytest.approx(2 / 3)


def test_sentence_accuracy_is_tag_level():
    # Same chunks (I- after O and B- parse alike) but different tags: the frame counts as wrong.
    assert sentence_accuracy(["a"], ["a"], [["O", "B-x"]], [["O", "I-x"]]) == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sentence 0"):
        slot_scores([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="gold vs"):
        intent_accuracy(["a"], [])


def test_multi_label_mode_compares_intent_sets():
    gold, pred = ["a#b", "a#b", "c"], ["b#a", "a", "c"]
    assert intent_accuracy(gold, pred) == pytest.approx(1 / 3)  # atomic classes: exact strings
    assert intent_accuracy(gold, pred, multi_label=True) == pytest.approx(2 / 3)
    tags = [["O"], ["O"], ["O"]]
    assert sentence_accuracy(gold, pred, tags, tags, multi_label=True) == pytest.approx(2 / 3)
