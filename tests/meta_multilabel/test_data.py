"""Readers, splits and their bad-input errors (the real corpora are small enough to read in seconds)."""

import json

import numpy as np
import pytest

from common.data import DataFormatError, DatasetNotFoundError, dataset_path
from meta_multilabel.data import (
    SPLIT_DIR,
    TypingFileStats,
    label_depths,
    label_parents,
    load_split_file,
    make_document_split,
    meta_split,
    read_reuters,
    read_typing,
    read_typing_jsonl,
    synthetic_corpus,
)


def _shared(name, rel):
    try:
        return dataset_path(name, rel, source="../shared/data")
    except DatasetNotFoundError as e:  # a machine without the data: the readers are still tested below
        pytest.skip(str(e))


def test_reuters_apte_mod_counts():
    corpus = read_reuters(_shared("Reuters-21578", "reuters21578/reuters.tar.gz"))
    assert corpus.num_labels == 90
    assert len(corpus.splits["train"]) == 7769 and len(corpus.splits["test"]) == 3019
    assert corpus.splits["train"].Y.sum(1).mean() == pytest.approx(1.234, abs=1e-3)
    assert (corpus.splits["train"].Y.sum(0) > 0).all() and (corpus.splits["test"].Y.sum(0) > 0).all()


def test_bbn_counts_and_document_split():
    path = _shared("BBN", "entity_typing/bbn/bbn.json")
    stats = TypingFileStats()
    mentions, _ = read_typing_jsonl(path, stats)
    assert stats.mention_records == 13766 and stats.unlocated == 484 and len(mentions) == 13282
    corpus = read_typing(path, split_file=SPLIT_DIR / "bbn_split.json")
    assert corpus.num_labels == 48
    docs = {k: set(v.groups) for k, v in corpus.splits.items()}
    assert not (docs["train"] & docs["dev"]) and not (docs["train"] & docs["test"]) and not (docs["dev"] & docs["test"])
    assert sum(len(d) for d in docs.values()) == 459
    assert sum(len(v) for v in corpus.splits.values()) == 13282
    # the committed split is the one the code draws with seed 0
    spec = load_split_file(SPLIT_DIR / "bbn_split.json")
    assert spec == make_document_split([m.fileid for m in mentions], seed=0)


def test_label_hierarchy_helpers():
    names = ["/A", "/A/B", "/C", "flat"]
    assert label_parents(names) == [-1, 0, -1, -1]
    assert label_depths(names) == [1, 2, 1, 1]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"tokens": ["New", "York", "is", "big"], "senid": 0, "fileid": "D1",
        "mentions": [{"start": 0, "end": 2, "labels": ["/GPE/CITY", "/GPE"]}]}


@pytest.mark.parametrize("bad,match", [
    ("{not json", "invalid JSON"),
    ({"tokens": ["a"], "mentions": [{"start": 0, "end": 3, "labels": ["/X"]}]}, "outside the 1 tokens"),
    ({"tokens": ["a"], "mentions": [{"start": 0, "end": 1, "labels": []}]}, "non-empty list"),
    ({"mentions": []}, "'tokens'"),
])
def test_typing_reader_rejects_bad_lines_naming_file_and_line(tmp_path, bad, match):
    path = _write_jsonl(tmp_path / "t.json", [GOOD, bad])
    with pytest.raises(DataFormatError, match=match) as err:
        read_typing_jsonl(path)
    assert err.value.line == 2 and err.value.path == path


def test_typing_reader_skips_unlocated_mentions(tmp_path):
    row = dict(GOOD, mentions=GOOD["mentions"] + [{"start": -1, "end": -1, "labels": ["/GPE"]}])
    stats = TypingFileStats()
    ms, labels = read_typing_jsonl(_write_jsonl(tmp_path / "t.json", [row]), stats)
    assert len(ms) == 1 and stats.unlocated == 1 and labels == [["/GPE", "/GPE/CITY"]]
    assert ms[0].mention_text == "New York" and ms[0].context_text == "is big"


def test_split_files_and_separate_split_paths(tmp_path):
    rows = [dict(GOOD, fileid=f"D{i}") for i in range(10)]
    path = _write_jsonl(tmp_path / "all.json", rows)
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["D1"], "dev": ["D1"], "test": []}))
    with pytest.raises(DataFormatError, match="more than one split"):
        load_split_file(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"train": ["D1"], "dev": [], "test": []}))
    with pytest.raises(DataFormatError, match="in no split"):
        read_typing(path, split_file=partial)
    drawn = read_typing(path, split_seed=3)
    assert sum(len(v) for v in drawn.splits.values()) == 10
    sep = read_typing(split_paths={"train": path, "test": _write_jsonl(tmp_path / "te.json", [GOOD])})
    assert len(sep.splits["train"]) == 10 and len(sep.splits["test"]) == 1


def test_reuters_reader_errors(tmp_path):
    root = tmp_path / "reuters"
    (root / "training").mkdir(parents=True)
    (root / "training" / "1").write_text("doc one")
    (root / "cats.txt").write_text("training/1 earn\ntraining/2 acq\n")
    with pytest.raises(DataFormatError, match="missing from the corpus"):
        read_reuters(root)
    (root / "cats.txt").write_text("training/1 earn\n")
    corpus = read_reuters(root)
    assert corpus.label_names == ["earn"] and corpus.splits["train"].Y.tolist() == [[1]]


def test_meta_split_is_fixed_and_disjoint():
    a_tr, a_me = meta_split(100, 0.1, seed=0)
    b_tr, b_me = meta_split(100, 0.1, seed=0)
    assert a_me.tolist() == b_me.tolist() and len(a_me) == 10 and not set(a_tr) & set(a_me)
    groups = [f"d{i // 5}" for i in range(100)]
    tr, me = meta_split(100, 0.1, seed=0, groups=groups)
    assert not {groups[i] for i in tr} & {groups[i] for i in me}


def test_synthetic_planted_label_is_rare_subset_of_label0():
    corpus, X = synthetic_corpus(n_samples=400, seed=0)
    Y = corpus.splits["train"].Y
    assert X.shape == (400, 20) and corpus.label_names[-1] == "planted"
    assert np.all(Y[:, -1] <= Y[:, 0]) and 0 < Y[:, -1].mean() < Y[:, 0].mean()


def _typing_rows(n_docs: int, prefix: str) -> str:
    rows = [{"tokens": ["In", "Paris", "today"], "senid": 0, "fileid": f"{prefix}{d}",
             "mentions": [{"start": 1, "end": 2, "labels": ["/GPE", "/GPE/CITY"] if d % 2 else ["/ORGANIZATION"]}]}
            for d in range(n_docs)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_typing_reader_train_dev_test_folder(tmp_path):
    """Issue 28: the common train/dev/test JSON-lines layout is read from a folder (.json or .jsonl); a missing
    split is one clear error naming the folder and the file it expected (it was a bare KeyError: 'train')."""
    from common.data import DataFormatError
    from meta_multilabel.data import read_typing

    for split, n in (("train", 6), ("dev", 2), ("test", 3)):
        (tmp_path / f"{split}.jsonl").write_text(_typing_rows(n, split))
    corpus = read_typing(tmp_path, name="toy")
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 6, "dev": 2, "test": 3}
    assert corpus.label_names == ["/GPE", "/GPE/CITY", "/ORGANIZATION"]
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(DataFormatError, match=r"no test split: expected test.json or test.jsonl") as err:
        read_typing(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataFormatError, match="no train split"):
        read_typing(split_paths={"dev": tmp_path / "dev.jsonl", "test": tmp_path / "train.jsonl"})


def test_typing_folder_missing_split_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    import sys

    from meta_multilabel import train

    for split in ("train", "dev"):
        (tmp_path / f"{split}.json").write_text(_typing_rows(4, split))
    monkeypatch.setattr(sys, "argv", ["train", "data=typing", f"data.path={tmp_path}", "features=tfidf",
                                      f"paths.output_dir={tmp_path / 'runs'}", "name=t", "trainer.progress_bar=false"])
    with pytest.raises(SystemExit) as exc:
        train.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "no test split: expected test.json or test.jsonl" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
