"""Corpus and task readers (golden counts, bad input), and the student vocabulary trainer."""

import io
import tarfile

import pytest

from common.data import DataFormatError, DatasetNotFoundError
from tests.vocab_distill.toy import write_vocabs
from vocab_distill.corpus import build_corpus, clean_text, read_nlu_intents, read_sst2, split_words
from vocab_distill.finetune import load_task
from vocab_distill.vocab import (
    SPECIAL_TOKENS,
    load_wordpiece,
    save_vocab_txt,
    segmentation_match_rate,
    train_student_wordpiece,
)


def _write_nlu(root, name, split, texts, labels):
    d = root / "nlu" / name / split
    d.mkdir(parents=True, exist_ok=True)
    (d / "seq.in").write_text("\n".join(texts) + "\n")
    (d / "label").write_text("\n".join(labels) + "\n")


@pytest.fixture()
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "glue" / "sst2").mkdir(parents=True)
    (root / "glue" / "sst2" / "train.tsv").write_text(
        "label\tsentence\n1\ta great film \n0\tA  great film\n0\tdull and slow\n")
    (root / "glue" / "sst2" / "dev.tsv").write_text("label\tcontent\n1\tfine\n")
    for name in ("snips", "atis"):
        _write_nlu(root, name, "train", ["play some jazz", "book a flight", "play some jazz"],
                   ["PlayMusic", "BookFlight", "PlayMusic"])
    _write_nlu(root, "snips", "dev", ["play rock"], ["PlayMusic"])
    _write_nlu(root, "snips", "test", ["book it"], ["BookFlight"])
    (root / "reuters21578").mkdir()
    with tarfile.open(root / "reuters21578" / "reuters.tar.gz", "w:gz") as tar:
        for name, text in [("reuters/training/1", "COCOA &lt;UP>\n  Prices rose\n  sharply ."),
                           ("reuters/test/2", "test documents are never read"),
                           ("reuters/cats.txt", "training/1 cocoa\ntest/2 earn\n")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def test_clean_and_split_golden():
    assert clean_text("  COCOA &lt;UP>\n   Prices\trose ") == "COCOA <UP> Prices rose"
    assert split_words("a b c d e", 2) == ["a b", "c d", "e"]


def test_build_corpus_counts_and_dedup(data_root):
    segs, stats = build_corpus(data_dir=data_root, max_words=3)
    assert segs[:2] == ["COCOA <UP> Prices", "rose sharply ."]
    assert "test documents" not in " ".join(segs)  # Reuters test split excluded
    assert stats.segments_in == {"reuters": 2, "sst2": 3, "atis": 3, "snips": 3}
    # SST-2 "a great film" / "A  great film" dedup case-insensitively; snips repeats atis' "play some jazz"
    assert stats.segments_kept == {"reuters": 2, "sst2": 2, "atis": 2, "snips": 0}
    assert stats.total_words == 6 + 6 + 6 and "duplicates dropped" in stats.summary()


def test_task_readers(data_root):
    assert read_sst2("dev", data_root) == [("fine", 1)]
    task = load_task("snips_intent", data_root, tune_size=1)
    assert task.labels == ["BookFlight", "PlayMusic"] and task.test == [("book it", 0)]
    assert task.test_split == "SNIPS test" and len(task.train) == 2


def test_sst2_bad_label_names_file_and_line(data_root):
    p = data_root / "glue" / "sst2" / "train.tsv"
    p.write_text("label\tsentence\n1\tok\n2\tbad label\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:3: label must be 0 or 1"):
        read_sst2("train", data_root)
    p.write_text("label\tsentence\n1\tok\textra\n")
    with pytest.raises(DataFormatError, match="2 tab-separated columns"):
        read_sst2("train", data_root)
    p.write_text("sentence\n")
    with pytest.raises(DataFormatError, match="header"):
        read_sst2("train", data_root)


def test_nlu_label_count_mismatch(data_root):
    (data_root / "nlu" / "snips" / "dev" / "label").write_text("PlayMusic\nPlayMusic\n")
    with pytest.raises(DataFormatError, match="2 labels for 1 utterances"):
        read_nlu_intents("snips", "dev", data_root)


def test_unknown_test_intent_is_an_error(data_root):
    _write_nlu(data_root, "snips", "test", ["x"], ["NewIntent"])
    with pytest.raises(DataFormatError, match="NewIntent"):
        load_task("snips_intent", data_root, tune_size=1)


def test_missing_dataset_names_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="SST-2.*gluebenchmark"):
        read_sst2("train", tmp_path)


def test_corrupt_reuters_archive(data_root):
    (data_root / "reuters21578" / "reuters.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataFormatError, match="tar"):
        build_corpus(["reuters"], data_dir=data_root)


def test_vocab_without_special_tokens_is_rejected(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("[PAD]\nhello\n")
    with pytest.raises(DataFormatError, match="special tokens"):
        load_wordpiece(p)


def test_student_vocab_training_round_trip(tmp_path):
    t_file, _ = write_vocabs(tmp_path)
    texts = ["the cat sat on the mat", "the dog sat on the cat", "cats and dogs"] * 20
    tok = train_student_wordpiece(texts, vocab_size=60, min_frequency=1)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    path = save_vocab_txt(tok, tmp_path / "student_vocab.txt")
    again = load_wordpiece(path)
    assert again.get_vocab() == tok.get_vocab()
    assert again.encode("the cat", add_special_tokens=False).tokens == tok.encode("the cat", add_special_tokens=False).tokens
    m = segmentation_match_rate(load_wordpiece(t_file), again, ["the cat sat"])
    assert m.words == 3
