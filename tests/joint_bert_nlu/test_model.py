"""Joint model: loss masking and reductions, decode constraints, save/load, batching invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions as EncOut

from joint_bert_nlu.data import IGNORE_INDEX, EncodedDataset, LabelVocab, NLUExample, collate
from joint_bert_nlu.evaluate import predict_encoded
from joint_bert_nlu.inference import JointNLUPredictor, load_joint_model, save_joint_model
from joint_bert_nlu.model import JointBertConfig, JointBertModel

from .helpers import VOCAB, synthetic_examples, tiny_model, tokenizer


class FixedEncoder(torch.nn.Module):
    """Stands in for BERT: returns a given hidden-state tensor."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids, attention_mask):
        return EncOut(last_hidden_state=self.hidden, pooler_output=self.hidden[:, 0])


def _batch(n=4):
    exs = synthetic_examples(n, seed=3)
    return collate(EncodedDataset(exs, tokenizer(), VOCAB).features), exs


@pytest.mark.parametrize("use_crf", [False, True])
def test_slot_loss_ignores_every_non_first_subtoken_position(use_crf):
    model = tiny_model(use_crf)
    batch = collate(EncodedDataset([NLUExample(("book", "antidisestablishmentarianism", "to", "oslo"),
                                                ("O", "B-city", "O", "B-city"), "book"),
                                    NLUExample(("hi",), ("O",), "greet")], tokenizer(), VOCAB).features)
    torch.manual_seed(1)
    hidden = torch.randn(*batch["input_ids"].shape, 32)
    model.encoder = FixedEncoder(hidden)
    base = model(**batch)
    used = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for b in range(2):
        used[b, batch["word_index"][b][batch["word_mask"][b]]] = True
    perturbed = hidden.clone()
    perturbed[~used] += 50 * torch.randn_like(perturbed[~used])  # [CLS] row 0 changes too: intent only
    model.encoder = FixedEncoder(perturbed)
    out = model(**batch)
    torch.testing.assert_close(out.slot_loss, base.slot_loss)
    # ... while a first sub-token does matter
    perturbed[0, batch["word_index"][0, 1]] += 5.0
    model.encoder = FixedEncoder(perturbed)
    assert not torch.allclose(model(**batch).slot_loss, base.slot_loss)


def test_softmax_loss_golden_value():
    model = tiny_model(slot_loss_reduction="token_mean")
    logits = torch.tensor([[[0.0, 0, 2, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0]],
                           [[0.0, 0, 0, 0, 0, 0, 3], [9, 9, 9, 9, 9, 9, 9]]])
    labels = torch.tensor([[2, 3], [6, IGNORE_INDEX]])
    mask = torch.tensor([[True, True], [True, False]])
    ce = [-F.log_softmax(logits[0, 0], -1)[2], -F.log_softmax(logits[0, 1], -1)[3], -F.log_softmax(logits[1, 0], -1)[6]]
    torch.testing.assert_close(model.slot_loss(logits, labels, mask), sum(ce) / 3)
    model.config.slot_loss_reduction = "sentence_sum"
    torch.testing.assert_close(model.slot_loss(logits, labels, mask), sum(ce) / 2)


@pytest.mark.parametrize("use_crf", [False, True])
def test_sentence_sum_equals_token_mean_times_words_per_sentence(use_crf):
    batch, _ = _batch(6)
    a = tiny_model(use_crf, slot_loss_reduction="token_mean")
    b = tiny_model(use_crf, slot_loss_reduction="sentence_sum")
    b.load_state_dict(a.state_dict())
    n_words, n_sent = batch["word_mask"].sum(), batch["word_mask"].size(0)
    torch.testing.assert_close(b(**batch).slot_loss * n_sent, a(**batch).slot_loss * n_words)
    out = a(**batch)
    torch.testing.assert_close(out.loss, out.intent_loss + out.slot_loss)


@pytest.mark.parametrize("use_crf", [False, True])
def test_decode_never_predicts_pad_or_unk(use_crf):
    model = tiny_model(use_crf)
    with torch.no_grad():  # make PAD, UNK (slots) and UNK (intent) the largest logits everywhere
        model.slot_head.bias[:2] = 100.0
        model.intent_head.bias[0] = 100.0
    batch, _ = _batch(4)
    intents, conf, slots = model.decode(**batch)
    assert "UNK" not in intents and set(intents) <= set(VOCAB.intents) and all(s >= 2 for path in slots for s in path)
    assert [len(p) for p in slots] == batch["word_mask"].sum(1).tolist()
    assert all(0 < c <= 1 for c in conf)


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="intent_input"):
        JointBertConfig(intent_input="mean")
    with pytest.raises(ValueError, match="slot_loss_reduction"):
        JointBertConfig(slot_loss_reduction="sum")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        JointBertModel.from_encoder("/no/such/encoder", VOCAB)


@pytest.mark.parametrize("use_crf,intent_input", [(False, "cls"), (True, "pooler")])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, use_crf, intent_input):
    model = tiny_model(use_crf, intent_input=intent_input)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the init, so a re-init would show
    save_joint_model(model, tokenizer(), tmp_path / "m")
    loaded, tok = load_joint_model(tmp_path / "m")
    assert loaded.config.architectures == ["JointBertModel"]
    assert loaded.vocab == model.vocab and loaded.config.use_crf == use_crf
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    texts = ["book a flight to new york at seven pm", "hello there", "book a flight to oslo at noon"]
    assert JointNLUPredictor(model, tokenizer())(texts) == JointNLUPredictor(loaded, tok)(texts)


def test_batched_prediction_equals_one_by_one():
    model = tiny_model()
    exs = synthetic_examples(12, seed=5)
    ds = EncodedDataset(exs, tokenizer(), VOCAB)
    batched = predict_encoded(model, ds, batch_size=12)
    single = predict_encoded(model, ds, batch_size=1)
    assert batched.intents == single.intents and batched.tags == single.tags
    assert batched.confidences == pytest.approx(single.confidences, abs=1e-5)


def test_predictor_spans_and_empty_input():
    model = tiny_model()
    out = JointNLUPredictor(model, tokenizer())(["  fly  to oslo ", ""])
    first = out[0]
    assert len(first["tags"]) == 3 and first["intent"] in VOCAB.intents[1:]
    for span in first["slots"]:
        assert first["text"][span["start"]:span["end"]] == span["value"]
    from joint_bert_nlu.inference import EMPTY_INPUT

    assert out[1] == {"text": "", "error": EMPTY_INPUT}


def test_multi_label_intent_mode():
    """a#b = {a, b}: multi-hot targets, summed BCE, thresholded decoding that is never empty or UNK."""
    vocab = LabelVocab(["UNK", "a", "a#b", "c"], VOCAB.slots).multi_label()
    assert vocab.intents == ["UNK", "a", "b", "c"]
    assert vocab.intent_multi_hot("b#a") == [0.0, 1.0, 1.0, 0.0]
    assert vocab.intent_multi_hot("a#zzz") == [1.0, 1.0, 0.0, 0.0]  # unseen atom -> UNK position
    model = JointBertModel.from_encoder("tiny-random", vocab, intent_mode="multi_label").eval()
    logits = torch.tensor([[9.0, 2.0, 1.0, -3.0], [9.0, -5.0, -4.0, -1.0]])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 2
    torch.testing.assert_close(model.intent_loss(logits, target), expected)
    intents, conf = model.predict_intents(logits)
    assert intents == ["a#b", "c"]  # row 2: nothing above 0.5, so the most probable (UNK excluded)
    assert conf[0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    exs = [NLUExample(("fly", "to", "oslo"), ("O", "O", "B-city"), "b#a")]
    batch = collate(EncodedDataset(exs, tokenizer(), vocab, multi_label=True).features)
    assert batch["intent_label"].tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert model(**batch).loss.isfinite()
