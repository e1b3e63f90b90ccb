"""Readers for the two multi-label tasks, their splits, and the synthetic task of the tests.

* Reuters-21578 ApteMod in the NLTK corpus layout (``cats.txt`` lines ``training/<id> cat1 cat2 ...``),
  read from the ``.tar.gz`` or from an unpacked folder. Any corpus in that layout works.
* Entity typing in the JSON-lines layout of BBN / AFET / PLE (``tokens``, ``mentions[{start, end,
  labels}]``, ``senid``, ``fileid``; ``end`` exclusive). A single file is split by ``fileid`` (document)
  into train/dev/test with a committed split file; separate train/dev/test files work as well.

Every malformed line raises :class:`common.data.DataFormatError` naming the file, the line and the problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.corpora import read_reuters as read_reuters_docs
from common.data import DataFormatError

BBN_SOURCE = "TowerZhang/MZET Data/BBN (https://github.com/TowerZhang/MZET), or ../shared/data/entity_typing/bbn"

SPLIT_DIR = Path(__file__).resolve().parent / "splits"


@dataclass
class Mention:
    """One entity mention: the sentence tokens, the span [start, end) and its document."""

    tokens: list[str]
    start: int
    end: int
    fileid: str
    senid: int

    @property
    def mention_text(self) -> str:
        return " ".join(self.tokens[self.start:self.end])

    @property
    def context_text(self) -> str:
        return " ".join(self.tokens[: self.start] + self.tokens[self.end:])

    @property
    def sentence_text(self) -> str:
        return " ".join(self.tokens)


@dataclass
class LabelledSplit:
    """Items (document strings or :class:`Mention`) with their gold label indicator matrix."""

    items: list[Any]
    Y: np.ndarray  # (n, L) uint8
    ids: list[str]
    groups: list[str] = field(default_factory=list)  # document id per item (typing); empty for Reuters

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int]) -> LabelledSplit:
        idx = list(idx)
        return LabelledSplit(
            items=[self.items[i] for i in idx],
            Y=self.Y[idx],
            ids=[self.ids[i] for i in idx],
            groups=[self.groups[i] for i in idx] if self.groups else [],
        )


@dataclass
class MultiLabelCorpus:
    """A multi-label corpus: named splits over one label set (``dev`` may be absent)."""

    name: str
    task: str  # "text" (Reuters-style metrics) or "typing" (strict / loose metrics)
    label_names: list[str]
    splits: dict[str, LabelledSplit]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def parents(self) -> list[int]:
        """Index of each label's parent in a ``/A/B`` hierarchy, -1 for roots (or flat labels)."""
        return label_parents(self.label_names)


def label_parents(label_names: Sequence[str]) -> list[int]:
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for n in label_names:
        if n.startswith("/") and n.count("/") > 1:
            out.append(index.get(n.rsplit("/", 1)[0], -1))
        else:
            out.append(-1)
    return out


def label_depths(label_names: Sequence[str]) -> list[int]:
    """Depth in the type hierarchy (``/A`` is 1, ``/A/B`` is 2); 1 for flat label sets."""
    return [max(1, n.count("/")) if n.startswith("/") else 1 for n in label_names]


def indicator_matrix(label_lists: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(label_names)}
    Y = np.zeros((len(label_lists), len(label_names)), dtype=np.uint8)
    for r, labels in enumerate(label_lists):
        for lab in labels:
            Y[r, index[lab]] = 1
    return Y


# ----------------------------------------------------------------------------------------- Reuters


def read_reuters(path: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                 name: str = "reuters") -> MultiLabelCorpus:
    """Reuters-21578 ApteMod (or any NLTK-layout corpus) as ``train`` / ``test`` splits.

    Reading and validation are the shared :func:`common.corpora.read_reuters` (archive or folder; bad
    ``cats.txt`` lines raise ``DataFormatError`` with the line). The label set is the sorted union over
    both splits: 90 categories for ApteMod.
    """
    docs = read_reuters_docs(path, data_dir=data_dir)
    label_names = sorted({c for d in docs for c in d.categories})
    splits = {}
    for split in ("train", "test"):
        part = [d for d in docs if d.split == split]
        if part:
            splits[split] = LabelledSplit(items=[d.text for d in part],
                                          Y=indicator_matrix([d.categories for d in part], label_names),
                                          ids=[d.fileid for d in part])
    return MultiLabelCorpus(name=name, task="text", label_names=label_names, splits=splits)


# ----------------------------------------------------------------------------------- entity typing


@dataclass
class TypingFileStats:
    """Counts from reading one typing file: every mention record, and those without a token span."""

    mention_records: int = 0
    unlocated: int = 0


def read_typing_jsonl(
    path: str | os.PathLike, stats: TypingFileStats | None = None
) -> tuple[list[Mention], list[list[str]]]:
    """Read one entity-typing JSON-lines file into mentions and their label lists.

    Mentions with the span ``[-1, -1)`` are *unlocated*: in BBN they are entities inside a token
    ("Paris-based"), 484 of the 13,766 records. They have no span to encode, so they are skipped and
    counted in ``stats``; any other span outside the sentence is an error.
    """
    path = Path(path)
    stats = stats if stats is not None else TypingFileStats()
    mentions: list[Mention] = []
    labels: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON ({e.msg})", line=lineno) from None
            if not isinstance(rec, dict):
                raise DataFormatError(path, "a line must be a JSON object", line=lineno)
            for key in ("tokens", "mentions"):
                if not isinstance(rec.get(key), list):
                    raise DataFormatError(path, f"missing or non-list field {key!r}", line=lineno)
            tokens = rec["tokens"]
            if not all(isinstance(t, str) for t in tokens):
                raise DataFormatError(path, "'tokens' must be a list of strings", line=lineno)
            fileid = str(rec.get("fileid", f"line{lineno}"))
            senid = int(rec.get("senid", lineno))
            for k, m in enumerate(rec["mentions"]):
                if not isinstance(m, dict):
                    raise DataFormatError(path, f"mention {k} is not an object", line=lineno)
                start, end, labs = m.get("start"), m.get("end"), m.get("labels")
                stats.mention_records += 1
                if start == -1 and end == -1:
                    stats.unlocated += 1
                    continue
                if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(tokens)):
                    raise DataFormatError(
                        path, f"mention {k}: span [{start}, {end}) outside the {len(tokens)} tokens "
                              "(end is exclusive)", line=lineno)
                if not isinstance(labs, list) or not labs or not all(isinstance(x, str) and x for x in labs):
                    raise DataFormatError(path, f"mention {k}: 'labels' must be a non-empty list of strings",
                                          line=lineno)
                mentions.append(Mention(tokens=tokens, start=start, end=end, fileid=fileid, senid=senid))
                labels.append(sorted(set(labs)))
    if not mentions:
        raise DataFormatError(path, "no mentions in file")
    return mentions, labels


def make_document_split(fileids: Sequence[str], fractions=(0.7, 0.1, 0.2), seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the distinct document ids with ``seed`` and cut them into train/dev/test by ``fractions``."""
    docs = sorted(set(fileids))
    rng = np.random.default_rng(seed)
    order = [docs[i] for i in rng.permutation(len(docs))]
    n_train = int(round(fractions[0] * len(docs)))
    n_dev = int(round(fractions[1] * len(docs)))
    return {
        "train": sorted(order[:n_train]),
        "dev": sorted(order[n_train:n_train + n_dev]),
        "test": sorted(order[n_train + n_dev:]),
    }


def load_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON ({e.msg})") from None
    if not isinstance(spec, dict) or not {"train", "dev", "test"} <= set(spec):
        raise DataFormatError(path, "split file must map 'train', 'dev' and 'test' to lists of fileids")
    out = {k: [str(x) for x in spec[k]] for k in ("train", "dev", "test")}
    overlap = (set(out["train"]) & set(out["dev"])) | (set(out["train"]) & set(out["test"])) | (
        set(out["dev"]) & set(out["test"]))
    if overlap:
        raise DataFormatError(path, f"fileids in more than one split: {sorted(overlap)[:5]}")
    return out


TYPING_SPLITS = ("train", "dev", "test")
TYPING_SUFFIXES = (".json", ".jsonl")


def typing_split_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The train/dev/test JSON-lines files of a folder (``train.json`` or ``train.jsonl``, ...: the AFET / PLE
    layout of FIGER, OntoNotes and full BBN). ``train`` and ``test`` are required; without ``dev`` D_meta is
    held out of train. A missing split is a :class:`DataFormatError` naming the folder and the file expected."""
    folder = Path(folder)
    found = {}
    for split in TYPING_SPLITS:
        files = [folder / f"{split}{suffix}" for suffix in TYPING_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
        if len(files) > 1:
            raise DataFormatError(folder, f"both {files[0].name} and {files[1].name}: keep one {split} file")
        if files:
            found[split] = files[0]
        elif split != "dev":
            raise DataFormatError(folder, f"no {split} split: expected {split}.json or {split}.jsonl beside "
                                          f"{', '.join(sorted(p.name for p in found.values())) or 'nothing'} "
                                          "(the train/dev/test JSON-lines layout)")
    return found


def read_typing(
    path: str | os.PathLike | None = None,
    *,
    split_file: str | os.PathLike | None = None,
    split_seed: int = 0,
    split_fractions=(0.7, 0.1, 0.2),
    split_paths: dict[str, str | os.PathLike] | None = None,
    name: str = "bbn",
) -> MultiLabelCorpus:
    """Read an entity-typing corpus.

    Either one file ``path`` split by document (``fileid``) with ``split_file`` (a committed JSON of
    fileids; if it is None the split is drawn from ``split_seed``), or a folder ``path`` holding
    ``train``/``dev``/``test`` ``.json(l)`` files (:func:`typing_split_files`), or ``split_paths`` mapping
    ``train``/``dev``/``test`` to separate files (AFET / PLE layout for FIGER, OntoNotes, full BBN). With
    separate files, ``train`` and ``test`` are required and ``dev`` is optional.
    """
    if path is not None and Path(path).is_dir():
        split_paths = typing_split_files(path)
    if split_paths:
        unknown = set(split_paths) - set(TYPING_SPLITS)
        missing = [k for k in ("train", "test") if k not in split_paths]
        if unknown or missing:
            problem = (f"unknown split {sorted(unknown)[0]!r} (use train, dev, test)" if unknown
                       else f"no {missing[0]} split (split_paths needs train and test; dev is optional)")
            raise DataFormatError(next(iter(split_paths.values()), "split_paths"), problem)
        parts = {k: read_typing_jsonl(p) for k, p in split_paths.items()}
    else:
        if path is None:
            raise ValueError("read_typing needs a path or split_paths")
        mentions, labels = read_typing_jsonl(path)
        fileids = [m.fileid for m in mentions]
        if split_file is not None:
            spec = load_split_file(split_file)
            unknown = set(fileids) - set().union(*spec.values())
            if unknown:
                raise DataFormatError(split_file, f"{len(unknown)} fileids of {path} are in no split, "
                                                  f"e.g. {sorted(unknown)[:3]} (a different corpus?)")
        else:
            spec = make_document_split(fileids, split_fractions, split_seed)
        where = {fid: split for split, fids in spec.items() for fid in fids}
        parts = {}
        for split in ("train", "dev", "test"):
            idx = [i for i, fid in enumerate(fileids) if where.get(fid) == split]
            parts[split] = ([mentions[i] for i in idx], [labels[i] for i in idx])
    label_names = sorted({lab for _, labs in parts.values() for ls in labs for lab in ls})
    splits = {}
    for split, (ms, labs) in parts.items():
        if not ms:
            continue
        splits[split] = LabelledSplit(
            items=ms, Y=indicator_matrix(labs, label_names),
            ids=[f"{m.fileid}:{m.senid}:{m.start}-{m.end}" for m in ms],
            groups=[m.fileid for m in ms],
        )
    return MultiLabelCorpus(name=name, task="typing", label_names=label_names, splits=splits)


def write_split_file(path: str | os.PathLike, spec: dict[str, list[str]], note: str = "") -> None:
    Path(path).write_text(json.dumps({"note": note, **spec}, indent=1) + "\n")


# ------------------------------------------------------------------------------------- synthetic


def synthetic_corpus(
    n_samples: int = 1200,
    n_features: int = 20,
    n_classes: int = 5,
    planted_keep: float = 0.3,
    seed: int = 0,
) -> tuple[MultiLabelCorpus, np.ndarray]:
    """scikit-learn's ``make_multilabel_classification`` plus one *planted* label.

    The planted label is label 0 with only a random ``planted_keep`` share of its positives kept, so a
    calibrated classifier scores its positives around ``planted_keep`` and its best F1 threshold lies far
    below 0.5 (at 0.5 it predicts nothing). Returns the corpus (train/test, items are row indices into the
    returned feature matrix) and the features.
    """
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(
        n_samples=n_samples, n_features=n_features, n_classes=n_classes, n_labels=2,
        allow_unlabeled=True, random_state=seed,
    )
    rng = np.random.default_rng(seed + 1)
    planted = (Y[:, 0] == 1) & (rng.random(n_samples) < planted_keep)
    Y = np.concatenate([Y, planted[:, None]], axis=1).astype(np.uint8)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    names = [f"label{j}" for j in range(n_classes)] + ["planted"]
    n_test = n_samples // 4
    idx = np.arange(n_samples)
    splits = {
        "train": LabelledSplit(items=list(idx[n_test:]), Y=Y[n_test:], ids=[str(i) for i in idx[n_test:]]),
        "test": LabelledSplit(items=list(idx[:n_test]), Y=Y[:n_test], ids=[str(i) for i in idx[:n_test]]),
    }
    return MultiLabelCorpus(name="synthetic", task="text", label_names=names, splits=splits), X.astype(np.float32)


def meta_split(n: int, fraction: float, seed: int, groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of D_train and D_meta: a fixed-seed ``fraction`` of the items (of the groups, if given)."""
    rng = np.random.default_rng(seed)
    if groups:
        docs = sorted(set(groups))
        chosen = {docs[i] for i in rng.permutation(len(docs))[: max(1, int(round(fraction * len(docs))))]}
        is_meta = np.array([g in chosen for g in groups])
    else:
        is_meta = np.zeros(n, dtype=bool)
        is_meta[rng.permutation(n)[: max(1, int(round(fraction * n)))]] = True
    return np.flatnonzero(~is_meta), np.flatnonzero(is_meta)
