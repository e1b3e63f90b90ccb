"""Raw text -> the word sequence the model was trained on (no torch: the predictor's first step).

The training files are already normalised, and each data set in its own way: both are lower case; SNIPS
writes contractions as two words with the apostrophe removed ("what s the weather", "i m") while ATIS
keeps them ("what's", "i'm"); neither holds a "?" or a "," and ATIS keeps "." only on abbreviations such as
"st.". A user's "What's the weather this weekend?" must reach a SNIPS model as ``what s the weather this
weekend``, or the tokenizer sees pieces ("'", "?") it was never trained on and the slot value swallows the
question mark. So the rules are read off the training split (:meth:`TextNormalizer.from_examples`), saved
in the model's ``config.json`` and applied by the predictor:

* ``lowercase``: when no training word holds an upper-case letter;
* ``split_apostrophes``: when no training word holds an ASCII apostrophe, ``'`` and ``’`` separate words
  (SNIPS); otherwise ``’`` is written ``'`` (ATIS);
* edge punctuation (Unicode category P*) is stripped from a word's start and end, one character at a time,
  until the word is one the training split holds with that punctuation (``keep_words``: "st.", "&") or its
  edge character is one that ends (starts) at least ``MIN_DISTINCT_WORDS`` distinct training words
  (``keep_trailing``: SNIPS's ":" of 230 titles such as "halo:"), or none is left; a word of punctuation
  only ("?") disappears.

Every word keeps its character offsets into the original text, so slot values are cut from what the user
typed ("this weekend", without the "?").
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

APOSTROPHES = "'\u2019"  # ASCII and the typographic right single quotation mark
_WORD = re.compile(r"\S+")
MIN_DISTINCT_WORDS = 10
"""An edge punctuation character is part of the training convention when this many distinct words have it."""


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


@dataclass
class TextNormalizer:
    """Rules that turn raw text into training-style words (see the module docstring)."""

    lowercase: bool = True
    """Lower-case every word (the training text has no upper-case letter)."""
    split_apostrophes: bool = False
    """Apostrophes separate words ("what's" -> "what", "s"), as in SNIPS; else "’" becomes "'" (ATIS)."""
    keep_words: list[str] = field(default_factory=list)
    """Training words that begin or end with punctuation; these keep it ("st.", "mouse:", "&")."""
    keep_leading: str = ""
    """Punctuation characters kept at the start of any word (they start many training words)."""
    keep_trailing: str = ""
    """Punctuation characters kept at the end of any word (SNIPS: ":")."""

    @classmethod
    def from_examples(cls, examples: Iterable) -> TextNormalizer:
        """The rules of a training split (objects with a ``words`` sequence, e.g. ``NLUExample``)."""
        words = {w for ex in examples for w in ex.words}
        lowercase = not any(ch.isupper() for w in words for ch in w)
        split = not any("'" in w for w in words)
        keep = sorted(w for w in words if _is_punct(w[0]) or _is_punct(w[-1]))
        lead = Counter(w[0] for w in words if len(w) > 1 and _is_punct(w[0]))
        trail = Counter(w[-1] for w in words if len(w) > 1 and _is_punct(w[-1]))
        return cls(lowercase=lowercase, split_apostrophes=split, keep_words=keep,
                   keep_leading="".join(sorted(c for c, n in lead.items() if n >= MIN_DISTINCT_WORDS)),
                   keep_trailing="".join(sorted(c for c, n in trail.items() if n >= MIN_DISTINCT_WORDS)))

    @classmethod
    def default(cls) -> TextNormalizer:
        """For model folders saved before the rules were stored: lower case, edge punctuation stripped."""
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> TextNormalizer:
        return cls.default() if d is None else cls(**d)

    def words(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """The normalised words of ``text`` and their ``(start, end)`` character offsets in ``text``."""
        keep = set(self.keep_words)
        words, offsets = [], []
        for m in _WORD.finditer(text):
            for piece, start in self._pieces(m.group(), m.start()):
                word, start, end = self._strip(piece, start, keep)
                if word:
                    words.append(word)
                    offsets.append((start, end))
        return words, offsets

    def normalize(self, text: str) -> str:
        """The normalised text as one string (words joined by single spaces)."""
        return " ".join(self.words(text)[0])

    # ----------------------------------------------------------------------------------------------
    def _pieces(self, token: str, start: int) -> list[tuple[str, int]]:
        if not self.split_apostrophes:
            return [(token.replace("\u2019", "'"), start)]
        pieces, pos = [], 0
        for part in re.split(f"[{APOSTROPHES}]", token):
            if part:
                pieces.append((part, start + pos))
            pos += len(part) + 1
        return pieces

    def _strip(self, piece: str, start: int, keep: set[str]) -> tuple[str, int, int]:
        end = start + len(piece)
        word = piece.lower() if self.lowercase else piece
        if len(word) != len(piece):  # a lower-case form of another length (rare: "İ"): offsets stay whole
            return word, start, end
        while word and word not in keep:
            if _is_punct(word[-1]) and not (len(word) > 1 and word[-1] in self.keep_trailing):
                word, end = word[:-1], end - 1
            elif _is_punct(word[0]) and not (len(word) > 1 and word[0] in self.keep_leading):
                word, start = word[1:], start + 1
            else:
                break
        return word, start, end
