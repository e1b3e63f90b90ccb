"""Data of the comparisons: R8 topic classification from Reuters-21578 (the domain task).

R8 = ApteMod documents with exactly one category among the ten most frequent; wheat and corn never occur
alone, leaving 8 classes (5,501 train / 2,189 test here). Each class is predicted through a verbalizer,
a short natural phrase the LM can score.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass

from common.corpora import read_reuters

R8_VERBALIZERS = {
    "earn": "earnings", "acq": "acquisition", "crude": "crude oil", "trade": "trade",
    "money-fx": "foreign exchange", "interest": "interest rates", "ship": "shipping", "grain": "grain",
}


@dataclass(frozen=True)
class Example:
    fileid: str
    text: str
    label: str


@dataclass
class R8:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    labels: list[str]  # sorted category codes

    def label_index(self, label: str) -> int:
        return self.labels.index(label)


def clean(text: str) -> str:
    """Collapse whitespace; the title line stays first."""
    return " ".join(text.split())


def _stratified_take(examples: list[Example], fraction: float | None, count: int | None, seed: int
                     ) -> tuple[list[Example], list[Example]]:
    """Split into (taken, rest), stratified by label, deterministic for a seed."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    labels = sorted(by_label)
    want = {lab: len(by_label[lab]) * (fraction if fraction is not None else count / len(examples))
            for lab in labels}
    k = {lab: max(1, int(want[lab])) for lab in labels}
    target = round(sum(want.values()))
    for lab in sorted(labels, key=lambda lab: want[lab] - int(want[lab]), reverse=True):
        if sum(k.values()) >= target:  # largest remainders get the leftover slots: exactly `target`
            break
        k[lab] += 1
    taken: list[Example] = []
    for label in labels:
        group = sorted(by_label[label], key=lambda e: e.fileid)
        rng.shuffle(group)
        taken += group[: k[label]]
    taken_ids = {e.fileid for e in taken}
    return taken, [e for e in examples if e.fileid not in taken_ids]


def load_r8(data_dir=None, dev_fraction: float = 0.1, seed: int = 0) -> R8:
    docs = read_reuters(data_dir=data_dir)
    top10 = [c for c, _ in Counter(c for d in docs if d.split == "train" for c in d.categories).most_common(10)]
    single = [d for d in docs if len(d.categories) == 1 and d.categories[0] in top10]
    labels = sorted({d.categories[0] for d in single})
    train_all = [Example(d.fileid, clean(d.text), d.categories[0]) for d in single if d.split == "train"]
    test = [Example(d.fileid, clean(d.text), d.categories[0]) for d in single if d.split == "test"]
    dev, train = _stratified_take(train_all, dev_fraction, None, seed)
    return R8(train=train, dev=dev, test=test, labels=labels)


def fixed_test_subset(r8: R8, n: int = 800, seed: int = 0) -> list[Example]:
    """The fixed stratified test subset used for the LLM rungs on CPU (same ids for every rung)."""
    subset, _ = _stratified_take(r8.test, None, n, seed)
    return sorted(subset, key=lambda e: e.fileid)


def fixed_dev_subset(r8: R8, n: int = 96, seed: int = 0) -> list[Example]:
    """The reduced dev set that selects checkpoints and learning rates (stratified like the test subset): a
    dev pass costs about 0.8 s per document on a CPU, and the trained rungs evaluate on it several times."""
    subset, _ = _stratified_take(r8.dev, None, min(n, len(r8.dev)), seed)
    return sorted(subset, key=lambda e: e.fileid)


def balanced_sample(examples: list[Example], per_class: int, seed: int) -> list[Example]:
    """Up to ``per_class`` examples of every label (all of a smaller class), seeded."""
    rng = random.Random(seed)
    out = []
    for label in sorted({e.label for e in examples}):
        group = sorted((e for e in examples if e.label == label), key=lambda e: e.fileid)
        rng.shuffle(group)
        out += group[:per_class]
    return out


def ids_hash(examples: list[Example]) -> str:
    """Short hash of the document ids, reported beside results so subsets are comparable."""
    return hashlib.sha256("\n".join(e.fileid for e in examples).encode()).hexdigest()[:12]
