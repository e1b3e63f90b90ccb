"""Mixed-vocabulary segmentation and masking (stage I), and the single-vocabulary case (stage II, baselines).

Id space. V_s and V_t ids overlap numerically, so every token carries its vocabulary in its id: a V_t token
keeps its id ``t`` in [0, |V_t|), a V_s token ``s`` becomes ``|V_t| + s``. Special tokens ([CLS], [SEP],
[PAD], [MASK]) are always the teacher's. One integer tensor thus says both *which* token and *which
vocabulary*, and the embedding lookup and the two-softmax loss route on ``id >= |V_t|``.

Each sequence is pre-encoded once with both vocabularies (per word: its V_t pieces and its V_s pieces); a
batch then only draws, per word, which segmentation to use (probability ``p`` for V_s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from .vocab import first_regular_id, group_by_word, pretokenize

IGNORE_INDEX = -100


def mix_probability(step: int, total_steps: int, p_max: float = 0.5, ramp_fraction: float = 0.5) -> float:
    """Probability of segmenting a word with V_s at ``step``: linear 0 -> p_max over the first
    ``ramp_fraction`` of ``total_steps``, then constant (project default; the paper only says 'ramped up')."""
    if not 0.0 <= p_max <= 1.0:
        raise ValueError(f"p_max must be in [0, 1], got {p_max}")
    ramp = ramp_fraction * total_steps
    if ramp <= 0:
        return p_max
    return p_max * min(1.0, max(step, 0) / ramp)


@dataclass
class EncodedText:
    """One text segment, segmented word by word with each vocabulary (flat ids + word offsets)."""

    t_ids: np.ndarray  # int32, V_t pieces of all words, concatenated
    t_off: np.ndarray  # int32, n_words + 1 offsets into t_ids
    s_ids: np.ndarray  # int32, V_s pieces (student-local ids, no offset)
    s_off: np.ndarray

    @property
    def n_words(self) -> int:
        return len(self.t_off) - 1


def _flat(pieces: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(pieces) + 1, dtype=np.int32)
    off[1:] = np.cumsum([len(p) for p in pieces])
    ids = np.fromiter((i for p in pieces for i in p), dtype=np.int32, count=int(off[-1]))
    return ids, off


class MixedVocabCodec:
    """Segments text with V_t, V_s or a per-word random mix of the two, into the shared id space.

    Args:
        teacher_tok, student_tok: WordPiece tokenizers with identical normalisation (see ``vocab``).
            ``student_tok`` may be None for teacher-only use (stage 0, the logit-KD baseline).
        max_len: sequence length including [CLS] and [SEP]; longer sequences are truncated.
    """

    def __init__(self, teacher_tok: Tokenizer, student_tok: Tokenizer | None, max_len: int = 128):
        self.teacher_tok, self.student_tok, self.max_len = teacher_tok, student_tok, max_len
        self.n_teacher = teacher_tok.get_vocab_size()
        self.n_student = student_tok.get_vocab_size() if student_tok is not None else 0
        ids = {t: teacher_tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")}
        if None in ids.values():
            raise ValueError(f"teacher vocabulary lacks special tokens: {ids}")
        self.pad_id, self.cls_id, self.sep_id = ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]
        self.mask_id, self.unk_id = ids["[MASK]"], ids["[UNK]"]
        self.special_ids = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}
        self.teacher_random_low = first_regular_id(teacher_tok)
        self.student_random_low = first_regular_id(student_tok) if student_tok is not None else 0

    @property
    def total_vocab(self) -> int:
        return self.n_teacher + self.n_student

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str) -> EncodedText:
        words = pretokenize(self.teacher_tok, text)
        et = self.teacher_tok.encode(words, is_pretokenized=True, add_special_tokens=False) if words else None
        t_pieces = group_by_word(et.ids, et.word_ids, len(words)) if et else []
        if self.student_tok is not None and words:
            es = self.student_tok.encode(words, is_pretokenized=True, add_special_tokens=False)
            s_pieces = group_by_word(es.ids, es.word_ids, len(words))
        else:
            s_pieces = [[] for _ in words]
        return EncodedText(*_flat(t_pieces), *_flat(s_pieces))

    def encode_all(self, texts: Sequence[str]) -> list[EncodedText]:
        return [self.encode(t) for t in texts]

    # -- mixing -----------------------------------------------------------------------------------
    def mix(self, enc: EncodedText, use_student: np.ndarray | Sequence[bool]) -> list[int]:
        """Token ids (shared space, no [CLS]/[SEP]) with word w taken from V_s where ``use_student[w]``."""
        out: list[int] = []
        for w in range(enc.n_words):
            if use_student[w]:
                out.extend(int(i) + self.n_teacher for i in enc.s_ids[enc.s_off[w] : enc.s_off[w + 1]])
            else:
                out.extend(int(i) for i in enc.t_ids[enc.t_off[w] : enc.t_off[w + 1]])
        return out

    def batch(self, encs: Sequence[EncodedText], p_student: float,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Pad a batch of sequences, each word segmented with V_s with probability ``p_student``.

        Returns ``input_ids`` (shared id space), ``attention_mask`` and ``special_mask`` (1 on
        [CLS]/[SEP]/[PAD], which are never masked).
        """
        if p_student > 0 and self.student_tok is None:
            raise ValueError("p_student > 0 needs a student vocabulary")
        seqs = []
        for enc in encs:
            if p_student <= 0.0:
                choose = np.zeros(enc.n_words, dtype=bool)
            elif p_student >= 1.0:
                choose = np.ones(enc.n_words, dtype=bool)
            else:
                choose = (torch.rand(enc.n_words, generator=generator) < p_student).numpy()
            ids = self.mix(enc, choose)[: self.max_len - 2]
            seqs.append([self.cls_id, *ids, self.sep_id])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention[i, : len(s)] = 1
        special = (input_ids == self.pad_id) | (input_ids == self.cls_id) | (input_ids == self.sep_id)
        return {"input_ids": input_ids, "attention_mask": attention, "special_mask": special}

    def decode_words(self, ids: Sequence[int]) -> list[str]:
        """Rebuild the words of a mixed id sequence (pieces of either vocabulary, '##' joins)."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i in self.special_ids:
                continue
            tok = (self.student_tok.id_to_token(i - self.n_teacher) if i >= self.n_teacher
                   else self.teacher_tok.id_to_token(i))
            if tok.startswith("##") and words:
                words[-1] += tok[2:]
            else:
                words.append(tok)
        return words


KEPT, MASKED, RANDOM, UNCHANGED = 0, 1, 2, 3
"""Position kinds of BERT's 80/10/10 rule (``mask_tokens_with_kinds``): not selected, replaced by [MASK],
replaced by a random token, selected but left unchanged. Accuracy differs wildly between them (a model that
copies its input scores 100% at UNCHANGED positions and 0% at MASKED ones), so the teacher's gate and the
report look at them apart."""
POSITION_KINDS = {"mask": MASKED, "random": RANDOM, "unchanged": UNCHANGED}


def mask_tokens_with_kinds(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    mask_id: int,
    vocab_ranges: Sequence[tuple[int, int, int]],
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking where a random replacement stays inside the replaced token's vocabulary.

    Args:
        vocab_ranges: one ``(start, end, random_low)`` per vocabulary in the id space: tokens with
            ``start <= id < end`` belong to it, and their random replacements are drawn uniformly from
            ``[random_low, end)`` (``random_low`` skips special/unused entries).
    Returns:
        ``(masked_input_ids, labels, kinds)``; labels hold the original id at selected positions, -100
        elsewhere; kinds is MASKED / RANDOM / UNCHANGED at selected positions and KEPT elsewhere (a random
        draw that happens to give back the original token still counts as RANDOM).
    """
    ids = input_ids.clone()
    labels = input_ids.clone()
    prob = torch.full(ids.shape, mask_prob)
    prob.masked_fill_(special_mask.bool().cpu(), 0.0)
    selected = torch.bernoulli(prob, generator=generator).bool().to(ids.device)
    labels[~selected] = IGNORE_INDEX

    r = torch.rand(ids.shape, generator=generator).to(ids.device)
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)  # the remaining 10% keep the original token
    ids[to_mask] = mask_id
    u = torch.rand(ids.shape, generator=generator, dtype=torch.float64).to(ids.device)
    for start, end, low in vocab_ranges:
        in_vocab = to_random & (input_ids >= start) & (input_ids < end)
        repl = (low + (u * (end - low)).long()).clamp(max=end - 1)
        ids[in_vocab] = repl[in_vocab]
    kinds = torch.full(ids.shape, KEPT, dtype=torch.long, device=ids.device)
    kinds[selected] = UNCHANGED
    kinds[to_mask] = MASKED
    kinds[to_random] = RANDOM
    return ids, labels, kinds


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_tokens_with_kinds`` without the kinds: ``(masked_input_ids, labels)`` (the same draws)."""
    ids, labels, _ = mask_tokens_with_kinds(input_ids, special_mask, **kw)
    return ids, labels


def mixed_vocab_ranges(codec: MixedVocabCodec) -> list[tuple[int, int, int]]:
    """The (start, end, random_low) ranges of V_t and V_s in the shared id space."""
    ranges = [(0, codec.n_teacher, codec.teacher_random_low)]
    if codec.n_student:
        ranges.append((codec.n_teacher, codec.total_vocab, codec.n_teacher + codec.student_random_low))
    return ranges


class StudentCodec:
    """Single-vocabulary segmentation and masking, for the stage-II student and the baselines."""

    def __init__(self, tok: Tokenizer, max_len: int = 128):
        self.tok, self.max_len = tok, max_len
        self.vocab_size = tok.get_vocab_size()
        self.pad_id, self.cls_id = tok.token_to_id("[PAD]"), tok.token_to_id("[CLS]")
        self.sep_id, self.mask_id = tok.token_to_id("[SEP]"), tok.token_to_id("[MASK]")
        self.random_low = first_regular_id(tok)

    def encode(self, text: str) -> np.ndarray:
        words = pretokenize(self.tok, text)
        ids = self.tok.encode(words, is_pretokenized=True, add_special_tokens=False).ids if words else []
        return np.asarray(ids[: self.max_len - 2], dtype=np.int32)

    def encode_all(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def batch(self, encs: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        width = max(len(e) for e in encs) + 2
        input_ids = torch.full((len(encs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            s = [self.cls_id, *e.tolist(), self.sep_id]
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention[i, : len(s)] = 1
        special = (input_ids == self.pad_id) | (input_ids == self.cls_id) | (input_ids == self.sep_id)
        return {"input_ids": input_ids, "attention_mask": attention, "special_mask": special}

    def masked_batch(self, encs: Sequence[np.ndarray], mask_prob: float = 0.15,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        b = self.batch(encs)
        ids, labels, kinds = mask_tokens_with_kinds(b["input_ids"], b["special_mask"], mask_id=self.mask_id,
                                                    vocab_ranges=[(0, self.vocab_size, self.random_low)],
                                                    mask_prob=mask_prob, generator=generator)
        return {"input_ids": ids, "attention_mask": b["attention_mask"], "labels": labels, "kinds": kinds}


def aligned_batch(codec: MixedVocabCodec, s_codec: StudentCodec, encs: Sequence[EncodedText], mask_prob: float = 0.15,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One batch for hidden-state distillation between two vocabularies: each segment segmented with V_t
    (the teacher's input, unmasked) and with V_s (the student's input, masked for its MLM loss), and the
    word alignment between the two.

    The units are [CLS] and every word that both truncated sequences hold whole; ``t_pool`` / ``s_pool``
    ([B, U, L_t] / [B, U, L_s]) average the pieces of each unit, so ``pool @ hidden`` gives one vector per
    word in either model, and ``unit_mask`` ([B, U]) marks the real units (TinyBERT matches token positions,
    which two vocabularies do not share)."""
    if s_codec.cls_id != s_codec.tok.token_to_id("[CLS]"):  # pragma: no cover - StudentCodec invariant
        raise ValueError("student codec without [CLS]")
    limit = codec.max_len - 2
    t_seqs, s_seqs, units = [], [], []
    for enc in encs:
        t = [int(i) for i in enc.t_ids[:limit]]
        s = [int(i) for i in enc.s_ids[:limit]]
        words = [w for w in range(enc.n_words) if enc.t_off[w + 1] <= limit and enc.s_off[w + 1] <= limit]
        t_seqs.append([codec.cls_id, *t, codec.sep_id])
        s_seqs.append(np.asarray(s, dtype=np.int32))
        units.append([(0, 1, 0, 1)] + [(1 + int(enc.t_off[w]), 1 + int(enc.t_off[w + 1]),
                                        1 + int(enc.s_off[w]), 1 + int(enc.s_off[w + 1])) for w in words])
    n_units = max(len(u) for u in units)
    width_t = max(len(x) for x in t_seqs)
    t_ids = torch.full((len(encs), width_t), codec.pad_id, dtype=torch.long)
    t_mask = torch.zeros_like(t_ids)
    for i, x in enumerate(t_seqs):
        t_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        t_mask[i, : len(x)] = 1
    student = s_codec.masked_batch(s_seqs, mask_prob, generator=generator)
    width_s = student["input_ids"].shape[1]
    t_pool = torch.zeros(len(encs), n_units, width_t)
    s_pool = torch.zeros(len(encs), n_units, width_s)
    unit_mask = torch.zeros(len(encs), n_units, dtype=torch.bool)
    for i, us in enumerate(units):
        for u, (t0, t1, s0, s1) in enumerate(us):
            t_pool[i, u, t0:t1] = 1.0 / (t1 - t0)
            s_pool[i, u, s0:s1] = 1.0 / (s1 - s0)
            unit_mask[i, u] = True
    return {**student, "teacher_input_ids": t_ids, "teacher_attention_mask": t_mask, "t_pool": t_pool,
            "s_pool": s_pool, "unit_mask": unit_mask}
