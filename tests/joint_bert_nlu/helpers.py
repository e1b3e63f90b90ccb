"""Shared fixtures for the joint_bert_nlu tests: tokenizer, tiny models, a synthetic dataset."""

from __future__ import annotations

import random
from functools import lru_cache

from joint_bert_nlu.data import LabelVocab, NLUExample, write_split
from joint_bert_nlu.model import JointBertModel, minilm_path


@lru_cache(maxsize=1)
def tokenizer():
    """MiniLM's fast WordPiece tokenizer (vocabulary files only, no weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


VOCAB = LabelVocab(["UNK", "book", "greet"],
                   ["PAD", "UNK", "O", "B-city", "I-city", "B-time", "I-time"])


def tiny_model(use_crf=False, seed=0, **options) -> JointBertModel:
    import torch

    torch.manual_seed(seed)
    return JointBertModel.from_encoder("tiny-random", VOCAB, use_crf=use_crf, **options).eval()


CITIES = [["boston"], ["denver"], ["new", "york"], ["san", "francisco"], ["paris"], ["tokyo"],
          ["los", "angeles"], ["oslo"]]
TIMES = [["noon"], ["seven", "pm"], ["midnight"], ["nine", "am"]]


def synthetic_examples(n: int, seed: int) -> list[NLUExample]:
    """A solvable toy task: 'book' sentences name a city and a time, 'greet' sentences name nothing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            city, time = rng.choice(CITIES), rng.choice(TIMES)
            words = ["book", "a", "flight", "to", *city, "at", *time]
            tags = ["O"] * 4 + ["B-city"] + ["I-city"] * (len(city) - 1) + ["O"] + \
                ["B-time"] + ["I-time"] * (len(time) - 1)
            intent = "book"
        else:
            words = rng.choice([["hello", "there"], ["hi"], ["good", "morning", "friend"], ["hey", "you"]])
            tags, intent = ["O"] * len(words), "greet"
        out.append(NLUExample(tuple(words), tuple(tags), intent))
    return out


def write_synthetic_dataset(root, n_train=96, n_eval=32):
    for split, n, seed in (("train", n_train, 0), ("dev", n_eval, 1), ("test", n_eval, 2)):
        write_split(synthetic_examples(n, seed), root / split)
    return root
