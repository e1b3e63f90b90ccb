"""Offline MLM corpus and the two downstream tasks, read from the shared data root.

The MLM corpus is built from the *training* splits only (Reuters-21578 training documents, SST-2 train
sentences, ATIS and SNIPS train utterances); every dev/test split used for evaluation is excluded. Text is
cleaned (whitespace collapsed), cut into segments of at most ``max_words`` whitespace words, and
deduplicated case-insensitively (SST-2 train is phrase-level and full of near-duplicates).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.corpora import read_reuters
from common.data import DataFormatError, dataset_path

SST2_SOURCE = "GLUE SST-2 (https://gluebenchmark.com/tasks), as glue/sst2/{train,dev}.tsv"
NLU_SOURCE = "monologg/JointBERT data/{atis,snips} (https://github.com/monologg/JointBERT)"

ALL_SOURCES = ("reuters", "sst2", "atis", "snips")

_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Unescape HTML entities (Reuters writes ``&lt;``), collapse whitespace runs (Reuters wraps lines and
    indents paragraphs) and strip the ends."""
    return _WS.sub(" ", html.unescape(text)).strip()


def split_words(text: str, max_words: int) -> list[str]:
    """Cut a cleaned text into consecutive segments of at most ``max_words`` whitespace words."""
    words = text.split(" ")
    return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words) if words[i]]


# ----------------------------------------------------------------------------- raw readers


def read_reuters_training(data_dir=None, limit: int | None = None) -> Iterator[str]:
    """Yield the raw text of the Reuters-21578 ApteMod *training* documents in file-id order (test documents
    are skipped); reading and validation are the shared :func:`common.corpora.read_reuters`."""
    docs = read_reuters(data_dir=data_dir, splits=("train",))
    yield from (d.text for d in docs[:limit])


def read_sst2(split: str = "train", data_dir=None, limit: int | None = None) -> list[tuple[str, int]]:
    """GLUE SST-2 as (sentence, label) pairs (the first ``limit`` rows if given); the file is
    ``label<TAB>sentence`` with a header row."""
    if split not in ("train", "dev"):
        raise ValueError(f"SST-2 split must be train or dev (GLUE's test labels are not public; evaluate a "
                         f"labelled file with read_sst2_file), got {split!r}")
    path = dataset_path("SST-2", f"glue/sst2/{split}.tsv", source=SST2_SOURCE, data_dir=data_dir)
    return read_sst2_file(path, limit=limit)


def read_sst2_file(path: str | Path, limit: int | None = None) -> list[tuple[str, int]]:
    """A labelled SST-2-style file (GLUE's train/dev layout): a header ``label<TAB>sentence``, then one
    ``0|1<TAB>sentence`` a line. A user's own test set goes through here (``pipeline.test_files``,
    ``python -m vocab_distill.predict --test-file``)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "no such file (an SST-2-style TSV: header 'label<TAB>sentence')")
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if len(header) != 2 or header[0] != "label":
            raise DataFormatError(path, f"expected a header 'label<TAB>sentence', got {header!r}", line=1)
        for lineno, line in enumerate(f, start=2):
            if limit is not None and len(rows) >= limit:
                break
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataFormatError(path, f"expected 2 tab-separated columns, got {len(parts)}", line=lineno)
            if parts[0] not in ("0", "1"):
                raise DataFormatError(path, f"label must be 0 or 1, got {parts[0]!r}", line=lineno)
            text = clean_text(parts[1])
            if not text:
                raise DataFormatError(path, "empty sentence", line=lineno)
            rows.append((text, int(parts[0])))
    if not rows:
        raise DataFormatError(path, "no labelled rows after the header")
    return rows


def read_nlu_intents(dataset: str = "snips", split: str = "train", data_dir=None) -> list[tuple[str, str]]:
    """ATIS/SNIPS utterances with their intent label, from ``seq.in`` and ``label`` (one line each)."""
    if dataset not in ("snips", "atis") or split not in ("train", "dev", "test"):
        raise ValueError(f"unknown NLU dataset/split {dataset}/{split}")
    folder = dataset_path(dataset.upper(), f"nlu/{dataset}/{split}", source=NLU_SOURCE, data_dir=data_dir)
    return read_intent_folder(folder)


def read_intent_folder(folder: str | Path) -> list[tuple[str, str]]:
    """A SNIPS-style folder: ``seq.in`` (one utterance a line) and ``label`` (its intent, same line)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "no such folder (a SNIPS-style folder holds seq.in and label)")
    seq_path, label_path = folder / "seq.in", folder / "label"
    for p in (seq_path, label_path):
        if not p.is_file():
            raise DataFormatError(p, f"missing file (the folder {folder} needs seq.in and label)")
    texts = seq_path.read_text(encoding="utf-8").splitlines()
    labels = label_path.read_text(encoding="utf-8").splitlines()
    if len(texts) != len(labels):
        raise DataFormatError(label_path, f"{len(labels)} labels for {len(texts)} utterances in {seq_path}")
    out = []
    for i, (t, lab) in enumerate(zip(texts, labels), start=1):
        t, lab = clean_text(t), lab.strip()
        if not t or not lab:
            raise DataFormatError(seq_path if not t else label_path, "empty utterance or label", line=i)
        out.append((t, lab))
    if not out:
        raise DataFormatError(seq_path, "no utterances")
    return out


# ----------------------------------------------------------------------------- the MLM corpus


@dataclass
class CorpusStats:
    """What the corpus reader produced, per source: segments and whitespace words, before/after dedup."""

    segments_in: dict[str, int] = field(default_factory=dict)
    segments_kept: dict[str, int] = field(default_factory=dict)
    words_kept: dict[str, int] = field(default_factory=dict)

    @property
    def total_segments(self) -> int:
        return sum(self.segments_kept.values())

    @property
    def total_words(self) -> int:
        return sum(self.words_kept.values())

    def summary(self) -> str:
        parts = [f"{s}: {self.segments_kept[s]:,} segments / {self.words_kept[s]:,} words "
                 f"({self.segments_in[s] - self.segments_kept[s]:,} duplicates dropped)" for s in self.segments_kept]
        return "; ".join(parts) + f". Total {self.total_segments:,} segments, {self.total_words:,} words."


def _source_texts(source: str, data_dir, limit: int | None) -> Iterable[str]:
    if source == "reuters":
        return read_reuters_training(data_dir, limit=limit)
    if source == "sst2":
        return [t for t, _ in read_sst2("train", data_dir, limit=limit)]
    if source in ("atis", "snips"):
        rows = read_nlu_intents(source, "train", data_dir)
        return [t for t, _ in (rows[:limit] if limit else rows)]
    raise ValueError(f"unknown corpus source {source!r}; choose from {ALL_SOURCES}")


def build_corpus(
    sources: Iterable[str] = ALL_SOURCES,
    *,
    data_dir=None,
    max_words: int = 64,
    limit_per_source: int | None = None,
) -> tuple[list[str], CorpusStats]:
    """The cleaned, deduplicated MLM corpus (a list of text segments) and the counts of what it holds.

    ``limit_per_source`` caps the number of documents/sentences read from each source (smoke runs).
    """
    seen: set[str] = set()
    segments: list[str] = []
    stats = CorpusStats()
    for source in sources:
        n_in = n_kept = n_words = 0
        for raw in _source_texts(source, data_dir, limit_per_source):
            for seg in split_words(clean_text(raw), max_words):
                n_in += 1
                key = seg.lower()
                if key in seen:
                    continue
                seen.add(key)
                segments.append(seg)
                n_kept += 1
                n_words += seg.count(" ") + 1
        stats.segments_in[source], stats.segments_kept[source], stats.words_kept[source] = n_in, n_kept, n_words
    return segments, stats


def read_text_files(paths: Iterable[str | Path], max_words: int = 64) -> Iterator[str]:
    """Stream segments from plain-text files of any size (one document or paragraph a line)."""
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                text = clean_text(line)
                if text:
                    yield from split_words(text, max_words)
