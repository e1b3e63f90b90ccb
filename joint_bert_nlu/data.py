"""ATIS / SNIPS in the Goo et al. (2018) layout: reading, label vocabularies and sub-token alignment.

A split folder holds three line-aligned files: ``seq.in`` (whitespace-separated words), ``seq.out``
(one BIO tag per word) and ``label`` (one intent per sentence). The dataset folder may also hold
``intent_label.txt`` (``UNK`` first) and ``slot_label.txt`` (``PAD``, ``UNK`` first); without them the
vocabularies are built from the training split in the same way.

Alignment follows the paper: every word is WordPiece-tokenised, the slot head reads the first
sub-token of each word, and all other positions ([CLS], [SEP], continuation pieces, padding) are left
out of the loss and of scoring. The encoded example therefore carries ``word_index`` (the position of
each word's first sub-token) instead of a label per sub-token; the model gathers those positions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.data import DataFormatError, dataset_path

PAD_LABEL = "PAD"
UNK_LABEL = "UNK"
MULTI_INTENT_SEP = "#"
"""ATIS joins co-occurring intents with '#' (``atis_flight#atis_airfare``)."""
IGNORE_INDEX = -100
"""Slot label of padded or truncated word positions (never enters the loss)."""

DATASET_SOURCE = "github.com/monologg/JointBERT (data/atis, data/snips) @ 00324f60"
DATASETS = {"atis": "ATIS", "snips": "SNIPS"}
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class NLUExample:
    """One sentence: its words, one BIO tag per word (original strings) and its intent string."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str


@dataclass
class LabelVocab:
    """Intent and slot label maps. Index 0 of ``intents`` is UNK; indices 0, 1 of ``slots`` are PAD, UNK.

    Labels outside the vocabulary (seen only in dev/test) map to UNK for training-side tensors, as in the
    reference implementation; scoring always uses the original strings (see ``evaluate``).
    """

    intents: list[str]
    slots: list[str]
    _intent_ids: dict[str, int] = field(init=False, repr=False)
    _slot_ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        if not self.intents or self.intents[0] != UNK_LABEL:
            raise ValueError(f"intent vocabulary must start with {UNK_LABEL!r}, got {self.intents[:1]}")
        if self.slots[:2] != [PAD_LABEL, UNK_LABEL]:
            raise ValueError(f"slot vocabulary must start with {PAD_LABEL!r}, {UNK_LABEL!r}, got {self.slots[:2]}")
        for name, labels in (("intent", self.intents), ("slot", self.slots)):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            if dupes:
                raise ValueError(f"duplicate {name} labels: {dupes}")
        self._intent_ids = {label: i for i, label in enumerate(self.intents)}
        self._slot_ids = {label: i for i, label in enumerate(self.slots)}

    @property
    def num_intents(self) -> int:
        return len(self.intents)

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def intent_id(self, intent: str) -> int:
        return self._intent_ids.get(intent, 0)

    def slot_id(self, tag: str) -> int:
        return self._slot_ids.get(tag, 1)

    @classmethod
    def from_examples(cls, examples: Iterable[NLUExample]) -> LabelVocab:
        """UNK + sorted intents; PAD, UNK + slot tags (O first, then sorted) seen in ``examples``."""
        examples = list(examples)
        intents = sorted({ex.intent for ex in examples})
        tags = {t for ex in examples for t in ex.tags}
        slots = (["O"] if "O" in tags else []) + sorted(tags - {"O"})
        return cls([UNK_LABEL] + intents, [PAD_LABEL, UNK_LABEL] + slots)

    @classmethod
    def from_files(cls, intent_file: str | os.PathLike, slot_file: str | os.PathLike) -> LabelVocab:
        intents = _read_label_file(intent_file)
        slots = _read_label_file(slot_file)
        try:
            return cls(intents, slots)
        except ValueError as e:
            raise DataFormatError(intent_file if "intent" in str(e) else slot_file, str(e)) from None

    def multi_label(self) -> LabelVocab:
        """The vocabulary of the multi-label intent mode: UNK + every atomic intent, sorted.

        ``atis_flight#atis_airfare`` becomes the two labels ``atis_flight`` and ``atis_airfare``.
        """
        atoms = sorted({a for intent in self.intents[1:] for a in intent.split(MULTI_INTENT_SEP)})
        return LabelVocab([UNK_LABEL] + atoms, list(self.slots))

    def intent_multi_hot(self, intent: str) -> list[float]:
        """Multi-label target: 1 for each '#'-separated atom (unseen atoms set the UNK position)."""
        target = [0.0] * self.num_intents
        for atom in intent.split(MULTI_INTENT_SEP):
            target[self.intent_id(atom)] = 1.0
        return target

    def to_dict(self) -> dict[str, list[str]]:
        return {"intents": list(self.intents), "slots": list(self.slots)}


def _read_label_file(path: str | os.PathLike) -> list[str]:
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    for i, label in enumerate(labels, 1):
        if not label or " " in label:
            raise DataFormatError(path, f"label line is empty or contains a space: {label!r}", line=i)
    return labels


def read_split(split_dir: str | os.PathLike) -> list[NLUExample]:
    """Read ``seq.in``, ``seq.out`` and ``label`` from one split folder.

    Raises ``DataFormatError`` naming the file and line when the files have different line counts, a
    line is empty, or a line's word and tag counts differ.
    """
    split_dir = Path(split_dir)
    files = {name: split_dir / name for name in ("seq.in", "seq.out", "label")}
    for path in files.values():
        if not path.is_file():
            raise DataFormatError(path, "missing file (a split folder needs seq.in, seq.out and label)")
    lines = {name: path.read_text(encoding="utf-8").splitlines() for name, path in files.items()}
    counts = {name: len(v) for name, v in lines.items()}
    if len(set(counts.values())) != 1:
        raise DataFormatError(split_dir, f"seq.in, seq.out and label have different line counts: {counts}")
    examples = []
    for i, (text, tag_line, intent) in enumerate(zip(lines["seq.in"], lines["seq.out"], lines["label"]), 1):
        words, tags, intent = text.split(), tag_line.split(), intent.strip()
        if not words:
            raise DataFormatError(files["seq.in"], "empty sentence", line=i)
        if len(words) != len(tags):
            raise DataFormatError(
                files["seq.out"], f"{len(tags)} tags for {len(words)} words in seq.in "
                f"(words: {' '.join(words)!r}; tags: {' '.join(tags)!r})", line=i)
        if not intent or " " in intent:
            raise DataFormatError(files["label"], f"intent must be one non-empty token, got {intent!r}", line=i)
        examples.append(NLUExample(tuple(words), tuple(tags), intent))
    return examples


@dataclass
class NLUDataset:
    """The three splits of one dataset and its label vocabulary."""

    name: str
    vocab: LabelVocab
    splits: dict[str, list[NLUExample]]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 splits: Sequence[str] = SPLITS) -> NLUDataset:
    """Load ``nlu/<name>`` (atis or snips, or any folder in the same layout) from the data root.

    ``name`` may also be a path to a dataset folder of your own (it must contain ``train/``).
    """
    if name not in DATASETS and Path(name).is_dir():
        root = Path(name)
    else:
        root = dataset_path(DATASETS.get(name, name), Path("nlu") / name, source=DATASET_SOURCE,
                            data_dir=data_dir)
    loaded = {s: read_split(root / s) for s in splits}
    intent_file, slot_file = root / "intent_label.txt", root / "slot_label.txt"
    train = loaded["train"] if "train" in loaded else read_split(root / "train")
    if intent_file.is_file() and slot_file.is_file():
        vocab = LabelVocab.from_files(intent_file, slot_file)
        _check_covers(vocab.intents, {ex.intent for ex in train}, intent_file)
        _check_covers(vocab.slots, {t for ex in train for t in ex.tags}, slot_file)
    else:
        vocab = LabelVocab.from_examples(train)
    return NLUDataset(Path(root).name, vocab, loaded)


def _check_covers(labels: list[str], needed: set[str], path: Path) -> None:
    """Training labels must all be in the label file (UNK is for dev/test labels only)."""
    missing = sorted(needed - set(labels))
    if missing:
        raise DataFormatError(path, f"{len(missing)} labels of the train split are missing: {missing[:10]}")


# --------------------------------------------------------------------------------------------------
# Sub-token alignment


def align_words(tokenizer, words: Sequence[str], max_length: int = 50) -> dict[str, list[int]]:
    """Tokenise ``words`` and find the first sub-token of each word.

    Returns ``input_ids``, ``attention_mask`` and ``word_index`` (one position per kept word). A word
    whose tokenisation is empty (a zero-width or control character, say) is replaced by the tokenizer's
    unknown token, so every word keeps a slot position. Sequences longer than ``max_length`` sub-tokens
    (with [CLS] and [SEP]) are truncated; words whose first sub-token falls off the end are dropped from
    ``word_index`` (so ``len(word_index) <= len(words)``) and are predicted ``O`` at decode time.
    """
    if not tokenizer.is_fast:
        raise TypeError("a fast tokenizer is required (word_ids() gives the word-to-sub-token alignment)")
    words = list(words)
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    covered = {w for w in enc.word_ids() if w is not None}
    empty = [i for i, w in enumerate(words) if i not in covered and _tokenizes_empty(tokenizer, w)]
    if empty:  # the reference implementation does the same substitution
        for i in empty:
            words[i] = tokenizer.unk_token
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    word_index, seen = [], set()
    for pos, w in enumerate(enc.word_ids()):
        if w is not None and w not in seen:
            seen.add(w)
            word_index.append(pos)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]),
            "word_index": word_index}


def _tokenizes_empty(tokenizer, word: str) -> bool:
    return len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 0


def encode_example(tokenizer, example: NLUExample, vocab: LabelVocab, max_length: int = 50,
                   multi_label: bool = False) -> dict:
    """Model features of one example (lists, padded later by :func:`collate`).

    ``intent_label`` is a class id, or with ``multi_label`` a multi-hot list over ``vocab.intents``.
    """
    feats = align_words(tokenizer, example.words, max_length)
    n = len(feats["word_index"])
    feats["slot_labels"] = [vocab.slot_id(t) for t in example.tags[:n]]
    feats["intent_label"] = vocab.intent_multi_hot(example.intent) if multi_label else vocab.intent_id(example.intent)
    return feats


class EncodedDataset(torch.utils.data.Dataset):
    """Examples encoded once up front (ATIS: ~1 s); nothing is cached on disk."""

    def __init__(self, examples: Sequence[NLUExample], tokenizer, vocab: LabelVocab, max_length: int = 50,
                 multi_label: bool = False):
        self.examples = list(examples)
        self.features = [encode_example(tokenizer, ex, vocab, max_length, multi_label) for ex in self.examples]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def lengths(self) -> list[int]:
        """Sub-token count of each example (what a batch pads to)."""
        return [len(f["input_ids"]) for f in self.features]


def collate(features: Sequence[dict], pad_token_id: int = 0, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence (``pad_to`` forces a fixed length, e.g. 50 for paper parity).

    Word-level fields are padded to the batch's largest word count: ``word_index`` with 0 (a valid
    position, masked by ``word_mask``), ``slot_labels`` with ``IGNORE_INDEX``.
    """
    seq_len = max(len(f["input_ids"]) for f in features)
    if pad_to is not None:
        seq_len = max(seq_len, pad_to)
    n_words = max(1, max(len(f["word_index"]) for f in features))
    batch = {
        "input_ids": torch.full((len(features), seq_len), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(features), seq_len, dtype=torch.long),
        "word_index": torch.zeros(len(features), n_words, dtype=torch.long),
        "word_mask": torch.zeros(len(features), n_words, dtype=torch.bool),
    }
    has_labels = "slot_labels" in features[0]
    if has_labels:
        batch["slot_labels"] = torch.full((len(features), n_words), IGNORE_INDEX, dtype=torch.long)
        multi_hot = isinstance(features[0]["intent_label"], list)
        batch["intent_label"] = torch.tensor([f["intent_label"] for f in features],
                                             dtype=torch.float if multi_hot else torch.long)
    for i, f in enumerate(features):
        n, w = len(f["input_ids"]), len(f["word_index"])
        batch["input_ids"][i, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][i, :n] = torch.tensor(f["attention_mask"])
        batch["word_index"][i, :w] = torch.tensor(f["word_index"], dtype=torch.long)
        batch["word_mask"][i, :w] = True
        if has_labels:
            batch["slot_labels"][i, :w] = torch.tensor(f["slot_labels"], dtype=torch.long)
    return batch


# --------------------------------------------------------------------------------------------------
# Span annotations -> BIO (for users labelling their own data, e.g. exported from doccano)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace words of ``text`` (the format of seq.in) and their character offsets."""
    words, offsets, pos = [], [], 0
    for word in text.split():
        start = text.index(word, pos)
        words.append(word)
        offsets.append((start, start + len(word)))
        pos = start + len(word)
    return words, offsets


def spans_to_example(text: str, spans: Sequence[tuple[int, int, str]], intent: str) -> NLUExample:
    """Turn character spans ``(start, end, slot)`` over ``text`` into a whitespace-word BIO example.

    A word belongs to a span when it overlaps it; the first such word gets ``B-slot``, the rest
    ``I-slot``. Overlapping spans, or spans that cut a word in two, raise ``ValueError``.
    """
    words, offsets = split_words(text)
    tags = ["O"] * len(words)
    for start, end, slot in sorted(spans):
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span ({start}, {end}, {slot!r}) is outside the text of length {len(text)}")
        inside = [i for i, (ws, we) in enumerate(offsets) if ws < end and we > start]
        if not inside:
            raise ValueError(f"span ({start}, {end}, {slot!r}) covers no word of {text!r}")
        for i in inside:
            ws, we = offsets[i]
            if ws < start or we > end:
                raise ValueError(f"span ({start}, {end}, {slot!r}) cuts the word {words[i]!r} in two")
            if tags[i] != "O":
                raise ValueError(f"span ({start}, {end}, {slot!r}) overlaps another span at {words[i]!r}")
        tags[inside[0]] = f"B-{slot}"
        for i in inside[1:]:
            tags[i] = f"I-{slot}"
    return NLUExample(tuple(words), tuple(tags), intent)


def write_split(examples: Iterable[NLUExample], split_dir: str | os.PathLike) -> Path:
    """Write examples as ``seq.in`` / ``seq.out`` / ``label`` (the format :func:`read_split` reads)."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    examples = list(examples)
    (split_dir / "seq.in").write_text("".join(" ".join(e.words) + "\n" for e in examples), encoding="utf-8")
    (split_dir / "seq.out").write_text("".join(" ".join(e.tags) + "\n" for e in examples), encoding="utf-8")
    (split_dir / "label").write_text("".join(e.intent + "\n" for e in examples), encoding="utf-8")
    return split_dir
