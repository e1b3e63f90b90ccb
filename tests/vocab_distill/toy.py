"""Toy vocabulary pair and tiny BERT configs shared by the vocab_distill tests (no real weights)."""

from __future__ import annotations

import string
from pathlib import Path

from transformers import BertConfig

SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red", "##s", "##at", "##og", "."]
TEACHER_VOCAB = SPECIALS + WORDS + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
# The student knows letters only: every word is spelled out, so the two segmentations differ.
STUDENT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(string.ascii_lowercase) + \
    ["##" + c for c in string.ascii_lowercase]

CORPUS = ["the cat sat on the mat .", "a big red dog ran .", "the dog sat on a mat .", "cats and dogs ran ."]


def write_vocabs(tmp_path: Path) -> tuple[Path, Path]:
    t, s = tmp_path / "teacher_vocab.txt", tmp_path / "student_vocab.txt"
    t.write_text("\n".join(TEACHER_VOCAB) + "\n")
    s.write_text("\n".join(STUDENT_VOCAB) + "\n")
    return t, s


def tiny_teacher_config(vocab_size: int = len(TEACHER_VOCAB), hidden: int = 32, layers: int = 2) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=4 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
