"""The fine-tuning protocol (tuning split carved from train, selection of learning rate and epoch, reported runs
on the selected schedule), a user's labelled test file, the exported classifier and the predict CLI."""

import io
import json

import pytest
import torch
from transformers import BertForSequenceClassification

from common.checkpoint import load_checkpoint
from common.config import TrainerConfig
from common.data import DataFormatError
from tests.vocab_distill.toy import write_vocabs
from vocab_distill.finetune import SST2_LABELS, TaskData, carve_tune_split, choose, finetune, load_task
from vocab_distill.model import make_tiny_teacher
from vocab_distill.predict import load, predict
from vocab_distill.predict import main as predict_main

POS = ["the cat sat on the mat .", "a big red cat ran .", "the cat ran on a mat .", "a cat sat ."]
NEG = ["the dog sat on the mat .", "a big red dog ran .", "the dog ran on a mat .", "a dog sat ."]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    teacher_vocab, _ = write_vocabs(tmp)
    return make_tiny_teacher(tmp / "bert", teacher_vocab, hidden=16, layers=1)


def _task():
    rows = [(t, 1) for t in POS] + [(t, 0) for t in NEG]
    return TaskData("sst2", SST2_LABELS, rows * 4, rows, rows, "toy test")


def _cfg(seed=0):
    return TrainerConfig(seed=seed, batch_size=8, max_epochs=2, log_every_steps=1, progress_bar=False,
                         keep_last_checkpoints=4)


def test_carve_tune_split_is_seeded_disjoint_and_deduplicated():
    rows = [(f"s{i}", i % 2) for i in range(100)] + [("dup", 1)] * 50
    train, tune = carve_tune_split(rows, tune_size=20, train_limit=60)
    assert len(train) == 60 and (train, tune) == carve_tune_split(rows, tune_size=20, train_limit=60)
    assert not {t for t, _ in tune} & {t for t, _ in train}  # the duplicated row stays out of tune
    assert len(tune) < 20  # ... so the tuning split lost the copies of "dup" the training subset holds
    with pytest.raises(ValueError, match="no training rows"):
        carve_tune_split(rows[:5], tune_size=5, train_limit=None)


def test_choose_takes_the_best_tuning_accuracy_with_fixed_tie_rules():
    assert choose({1e-4: [0.5, 0.7, 0.6], 1e-3: [0.65, 0.68, 0.69]}) == (1e-4, 2, 0.7)
    assert choose({1e-4: [0.7, 0.7], 3e-4: [0.7, 0.6]}) == (1e-4, 1, 0.7)  # earlier epoch, then smaller lr
    with pytest.raises(ValueError):
        choose({1e-4: []})


def test_reported_run_stops_at_the_selected_epoch_of_the_same_schedule(bert, tmp_path):
    """A reported run at (lr, epoch 1) of a 2-epoch schedule ends with the trial's own epoch-1 weights."""
    task = _task()
    trial = finetune(bert, task, _cfg(), tmp_path / "trial", lr=1e-3, epochs=2, max_len=16)
    assert len(trial["tune_acc_by_epoch"]) == 2 and "test_acc" not in trial
    run = finetune(bert, task, _cfg(), tmp_path / "run", lr=1e-3, epochs=2, stop_epoch=1, max_len=16,
                   score_test=True, export_dir=tmp_path / "export")
    assert run["tune_acc"] == trial["tune_acc_by_epoch"][0] and run["test_n"] == len(task.test)
    steps_per_epoch = len(task.train) // 8
    epoch1 = load_checkpoint(tmp_path / "trial" / "checkpoints" / f"step_{steps_per_epoch}.pt")["model"]
    exported = BertForSequenceClassification.from_pretrained(tmp_path / "export").state_dict()
    for k, v in epoch1.items():
        assert torch.equal(v, exported[k]), k
    # a run with its own 1-epoch schedule (decay to 0 within the epoch) is a different model
    own = finetune(bert, task, _cfg(), tmp_path / "own", lr=1e-3, epochs=1, max_len=16, export_dir=tmp_path / "own_x")
    assert own["epochs"] == 1
    other = BertForSequenceClassification.from_pretrained(tmp_path / "own_x").state_dict()
    assert not torch.equal(other["classifier.weight"], exported["classifier.weight"])


def test_exported_classifier_round_trip_and_predict_cli(bert, tmp_path, capsys, monkeypatch):
    task = _task()
    finetune(bert, task, _cfg(), tmp_path / "run", lr=3e-3, epochs=2, max_len=16, score_test=True,
             export_dir=tmp_path / "export")
    export = tmp_path / "export"
    assert {"config.json", "model.safetensors", "vocab.txt", "finetune.json"} <= {p.name for p in export.iterdir()}
    model, tok, labels = load(export)
    assert labels == SST2_LABELS and model.config.label2id == {"negative": 0, "positive": 1}
    texts = POS[:2] + [""] + NEG[:1]
    records = list(predict(model, tok, labels, texts, batch_size=2))
    assert len(records) == 4 and records[2] == {"label": None, "score": None}
    enc = tok(POS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = BertForSequenceClassification.from_pretrained(export)(**enc).logits.softmax(-1)
    assert [r["label"] for r in records[:2]] == [labels[int(i)] for i in probs.argmax(-1)]
    assert records[0]["score"] == pytest.approx(float(probs[0].max()), abs=1e-5)

    # the CLI: one JSON record per input line, from a file and from stdin
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(texts) + "\n")
    assert predict_main([str(export), str(inputs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x) for x in lines] == records
    monkeypatch.setattr("sys.stdin", io.StringIO("a cat sat .\n"))
    assert predict_main([str(export)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    # a labelled SST-2-style file: accuracy with its bootstrap interval
    tsv = tmp_path / "test.tsv"
    tsv.write_text("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in task.test))
    assert predict_main([str(export), "--test-file", str(tsv)]) == 0
    scored = json.loads(capsys.readouterr().out)
    want = sum(r["label"] == labels[y] for r, (_, y) in zip(predict(model, tok, labels, [t for t, _ in task.test]),
                                                          task.test)) / len(task.test)
    assert scored["n"] == len(task.test) and scored["accuracy"] == pytest.approx(want)
    assert scored["ci95_low"] <= scored["accuracy"] <= scored["ci95_high"]

    # bad inputs: one line, exit 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tsentence\n0\ta film\n")
    assert predict_main([str(export), "--test-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label<TAB>sentence" in err[0] and str(bad) in err[0]
    assert predict_main([str(tmp_path / "nowhere")]) == 2
    assert "not an exported classifier" in capsys.readouterr().err


def test_user_test_files_replace_the_reported_split(tmp_path):
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("label\tsentence\n1\ta gripping , funny film\n0\ta dull mess\n")
    sst2 = load_task("sst2", tune_size=100, train_limit=500, test_path=tsv)
    assert sst2.test == [("a gripping , funny film", 1), ("a dull mess", 0)]
    assert sst2.test_split == f"user file {tsv}" and len(sst2.train) == 500 and 0 < len(sst2.tune) <= 100
    default = load_task("sst2", tune_size=100, train_limit=500)
    assert default.test_split == "GLUE SST-2 dev" and len(default.test) == 872
    assert not {t for t, _ in default.tune} & {t for t, _ in default.train}

    folder = tmp_path / "snips"
    folder.mkdir()
    (folder / "seq.in").write_text("play some jazz\nwill it rain\n")
    (folder / "label").write_text("PlayMusic\nGetWeather\n")
    snips = load_task("snips_intent", tune_size=100, test_path=folder)
    assert [snips.labels[y] for _, y in snips.test] == ["PlayMusic", "GetWeather"]
    (folder / "label").write_text("PlayMusic\nOrderPizza\n")
    with pytest.raises(DataFormatError, match="OrderPizza"):
        load_task("snips_intent", tune_size=100, test_path=folder)
    with pytest.raises(DataFormatError, match="no such file"):
        load_task("sst2", tune_size=100, test_path=tmp_path / "missing.tsv")
