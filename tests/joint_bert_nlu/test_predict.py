"""The predict CLI and predictor as a new user meets them (issue #27, item 2): one record per input line,
errors for empty input, \\r, truncation, punctuation, the training text's normalisation, an out-of-domain
signal, --json, and a clear error for an incomplete model folder."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from joint_bert_nlu import predict
from joint_bert_nlu.inference import JointNLUPredictor, TruncationWarning, save_joint_model
from joint_bert_nlu.text import TextNormalizer

from .helpers import tiny_model, tokenizer

SNIPS_RULES = TextNormalizer(lowercase=True, split_apostrophes=True, keep_trailing=":").to_dict()
ATIS_RULES = TextNormalizer(lowercase=True, split_apostrophes=False, keep_words=["st."]).to_dict()


def _model(rules=SNIPS_RULES, ood=None, all_city=False):
    model = tiny_model()
    model.config.text_normalization = rules
    model.config.ood = ood
    if all_city:  # every word B-city, so each word is a span of its own: values show the word boundaries
        with torch.no_grad():
            model.slot_head.bias[3] = 100.0
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    save_joint_model(_model(ood={"score": "msp", "threshold": 0.0, "ood_dataset": "atis"}), tokenizer(), out)
    return str(out)


def _run(capsys, monkeypatch, args, stdin=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = predict.main(args)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_one_record_per_stdin_line_blank_lines_are_error_records(model_dir, capsys, monkeypatch):
    rc, lines, err = _run(capsys, monkeypatch, ["--model", model_dir, "--json"],
                          "list flights\n\nfrom boston\n   \n")
    records = [json.loads(x) for x in lines]
    assert len(records) == 4 and rc == 1
    assert [r["text"] for r in records] == ["list flights", "", "from boston", "   "]
    assert "error" in records[1] and "error" in records[3] and "intent" not in records[1]
    assert records[0]["intent"] and records[2]["intent"]
    assert "2 of 4 inputs had no words (input 2, 4)" in err


def test_empty_argument_is_an_error_and_a_nonzero_exit(model_dir, capsys, monkeypatch):
    rc, lines, err = _run(capsys, monkeypatch, ["--model", model_dir, "--json", "play jazz", ""])
    assert rc == 1 and len(lines) == 2 and json.loads(lines[1]) == {"text": "", "error": predict_error()}
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--json", "play jazz"])
    assert rc == 0 and len(lines) == 1


def predict_error():
    from joint_bert_nlu.inference import EMPTY_INPUT

    return EMPTY_INPUT


def test_trailing_carriage_return_is_removed(model_dir, capsys, monkeypatch):
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--json"], "book a flight\r\nhi\r\n")
    assert rc == 0 and [json.loads(x)["text"] for x in lines] == ["book a flight", "hi"]


def test_long_input_is_flagged_and_warned_not_silently_cut(model_dir, capsys, monkeypatch):
    text = " ".join(["boston"] * 243)
    rc, lines, err = _run(capsys, monkeypatch, ["--model", model_dir, "--json", text])
    record = json.loads(lines[0])
    assert rc == 0 and record["truncated"] == {"words_read": 48, "words": 243} and len(record["tags"]) == 243
    assert "input 1: 243 words exceed the model's 50 sub-tokens; only the first 48 were read" in err
    # --max-length reads more (the tiny encoder has 128 positions) and refuses more than the encoder has
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--json", "--max-length", "128", text])
    assert json.loads(lines[0])["truncated"]["words_read"] == 126
    rc, lines, err = _run(capsys, monkeypatch, ["--model", model_dir, "--max-length", "1000", text])
    assert rc == 1 and lines == [] and err.strip() == "error: max_length 1000 exceeds the encoder's 128 positions"
    with pytest.warns(TruncationWarning, match="only the first 48 words were read"):
        JointNLUPredictor(_model(), tokenizer())([text])


def test_punctuation_stays_out_of_slot_values():
    text = "Book a table for this weekend? Thanks!"
    record = JointNLUPredictor(_model(all_city=True), tokenizer())([text])[0]
    assert record["words"] == ["book", "a", "table", "for", "this", "weekend", "thanks"]
    assert [s["value"] for s in record["slots"]] == ["Book", "a", "table", "for", "this", "weekend", "Thanks"]
    for s in record["slots"]:
        assert text[s["start"]:s["end"]] == s["value"]


def test_text_is_normalised_like_the_training_data():
    snips = JointNLUPredictor(_model(SNIPS_RULES), tokenizer())(["What's the weather"])[0]
    atis = JointNLUPredictor(_model(ATIS_RULES), tokenizer())(["What\u2019s the fare to St. Louis?"])[0]
    assert snips["words"] == ["what", "s", "the", "weather"]  # SNIPS's seq.in: "what s the weather ..."
    assert atis["words"] == ["what's", "the", "fare", "to", "st.", "louis"]  # ATIS keeps "what's" and "st."
    # The same words reach the model as from the training text itself: identical predictions.
    same = JointNLUPredictor(_model(SNIPS_RULES), tokenizer())(["what s the weather"])[0]
    assert (same["intent"], same["tags"], same["confidence"]) == (snips["intent"], snips["tags"], snips["confidence"])


def test_rules_read_off_the_real_training_splits_reproduce_their_text():
    from joint_bert_nlu.data import load_dataset

    for name, split_apostrophes in (("atis", False), ("snips", True)):
        ds = load_dataset(name)
        rules = TextNormalizer.from_examples(ds.splits["train"])
        assert rules.lowercase and rules.split_apostrophes == split_apostrophes
        for split in ("dev", "test"):
            changed = [e for e in ds.splits[split] if rules.words(" ".join(e.words))[0] != list(e.words)]
            assert len(changed) <= 1, (name, split, changed[:3])  # SNIPS: one "…" and one "awards/"
    assert rules.words("What's the weather this weekend?")[0] == ["what", "s", "the", "weather", "this", "weekend"]


def test_out_of_domain_score_and_threshold(model_dir, capsys, monkeypatch):
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--json", "播放周杰伦的歌"])
    record = json.loads(lines[0])
    assert record["in_domain"] is True and 0 < record["ood_score"] <= 1  # threshold 0.0 in the fixture
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--json", "--ood-threshold", "1.01", "play"])
    assert json.loads(lines[0])["in_domain"] is False
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "--ood-threshold", "1.01", "play"])
    assert lines[0].split("\t")[2] == "OUT-OF-DOMAIN"
    model = _model(ood={"score": "energy", "threshold": 1e9})
    energy = JointNLUPredictor(model, tokenizer())(["play"])[0]
    from joint_bert_nlu.data import align_words, collate

    batch = collate([align_words(tokenizer(), ["play"])])
    intent_logits, _ = model.logits(batch["input_ids"], batch["attention_mask"], batch["word_index"])
    assert energy["in_domain"] is False  # the negative energy: logsumexp over the intents, UNK left out
    assert energy["ood_score"] == pytest.approx(float(torch.logsumexp(intent_logits[0, 1:], -1)), abs=1e-5)
    assert JointNLUPredictor(_model(), tokenizer())(["play"])[0]["in_domain"] is None  # no threshold stored


def test_default_output_is_one_text_line_per_input(model_dir, capsys, monkeypatch):
    rc, lines, _ = _run(capsys, monkeypatch, ["--model", model_dir, "fly to oslo", "", "hi"])
    assert rc == 1 and len(lines) == 3 and lines[1].startswith("ERROR\t")
    intent, conf, domain, _slots = lines[0].split("\t")
    assert intent in ("book", "greet") and 0 < float(conf) <= 1 and domain == "in-domain"


def test_incomplete_model_folder_is_one_clear_line(tmp_path, model_dir, capsys, monkeypatch):
    import shutil

    (tmp_path / "only_config").mkdir()
    shutil.copy(f"{model_dir}/config.json", tmp_path / "only_config" / "config.json")
    rc, lines, err = _run(capsys, monkeypatch, ["--model", str(tmp_path / "only_config"), "hi"])
    assert rc == 1 and lines == [] and len(err.strip().splitlines()) == 1
    assert "lacks tokenizer_config.json; model.safetensors or" in err and "Traceback" not in err
    rc, _, err = _run(capsys, monkeypatch, ["--model", str(tmp_path / "nothing"), "hi"])
    assert rc == 1 and "does not exist" in err


# ------------------------------------------------------------------------------------- ood (joint_bert_nlu.ood)
def test_youden_threshold_and_auroc_hand_cases():
    from joint_bert_nlu import ood

    # in-domain 0.9, 0.8, 0.4; out-of-domain 0.5, 0.3. Thresholds: 0.8 -> TPR 2/3, FPR 0 (J 0.667);
    # 0.5 -> 2/3, 1/2; 0.4 -> 1, 1/2 (J 0.5). Best 0.8.
    assert ood.youden_threshold([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx((0.8, 2 / 3, 0.0))
    # a tie in J keeps the lower threshold: in {2, 1}, out {1.5}: t=2 -> (1/2, 0); t=1 -> (1, 1): J 0.5 vs 0
    assert ood.youden_threshold([2.0, 1.0], [1.5]) == pytest.approx((2.0, 0.5, 0.0))
    assert ood.youden_threshold([1.0, 3.0], [0.0, 2.0]) == pytest.approx((1.0, 1.0, 0.5))  # J 0.5 at 1 and 3
    assert ood.auroc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)  # pairs won: 2 + 2 + 1 of 6
    assert ood.auroc([1.0], [1.0]) == pytest.approx(0.5)
    cal = ood.calibrate({"msp": [0.9, 0.8, 0.4], "energy": [1, 2, 3]}, {"msp": [0.5, 0.3], "energy": [4, 5]}, "x")
    assert cal["score"] == "msp" and cal["threshold"] == pytest.approx(0.8) and cal["dev"]["auroc"]["energy"] == 0
    test = ood.evaluate(cal, {"msp": [0.85, 0.7], "energy": [1, 1]}, {"msp": [0.81, 0.2], "energy": [0, 0]})
    assert test["tpr"] == 0.5 and test["fpr"] == 0.5 and test["auroc"]["energy"] == 1.0


def test_training_stores_rules_threshold_and_per_sentence_correctness(tmp_path):
    from common.config import TrainerConfig
    from joint_bert_nlu.data import NLUExample, write_split
    from joint_bert_nlu.training import DataOptions, ModelOptions, OptimOptions, train_joint

    from .helpers import write_synthetic_dataset

    toy = write_synthetic_dataset(tmp_path / "toy", n_train=32, n_eval=16)
    music = [NLUExample(("play", "some", song), ("O", "O", "O"), "music") for song in ("jazz", "rock", "pop")]
    for split in ("train", "dev", "test"):
        write_split(music, tmp_path / "music" / split)
    cfg = TrainerConfig(seed=0, device="cpu", max_epochs=1, batch_size=16, progress_bar=False)
    res = train_joint(cfg, tmp_path / "run", ModelOptions(encoder="tiny-random"),
                      DataOptions(dataset=str(toy), ood_dataset=str(tmp_path / "music")), OptimOptions(lr=1e-3))
    assert res["ood"]["ood_dataset"] == "music" and res["ood"]["dev"]["n_in"] == 16
    assert res["ood"]["dev"]["n_out"] == 3 and set(res["ood"]["test"]["auroc"]) == {"msp", "energy"}
    for split in ("dev", "test"):
        items = res["per_sentence"][split]
        assert sum(items["sentence"]) / 16 == pytest.approx(res[split]["sentence_acc"])
        assert sum(items["intent"]) / 16 == pytest.approx(res[split]["intent_acc"])
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["ood"]["threshold"] == res["ood"]["threshold"] and config["text_normalization"]["lowercase"]
    # a data set of one's own has no out-of-domain set unless one is named
    res = train_joint(cfg, tmp_path / "run2", ModelOptions(encoder="tiny-random"), DataOptions(dataset=str(toy)),
                      OptimOptions(lr=1e-3))
    assert "ood" not in res
