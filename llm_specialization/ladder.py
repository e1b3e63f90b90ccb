"""The domain-specialization access ladder (Ling et al.'s taxonomy) on R8 topic classification.

Every rung predicts the class whose verbalizer the LM scores highest after the prompt; they differ in
what they may touch: nothing (R1 zero-shot, R2 few-shot), a retriever (R3 retrieval-augmented ICL), a
soft prompt (R4 prompt tuning), low-rank adapters (R5 LoRA) or every weight (R6 full fine-tuning). R0 are
classical references that never see the LM.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from common.bench import peak_rss_bytes
from common.checkpoint import resumable_map
from llm_specialization.data import R8, R8_VERBALIZERS, Example
from llm_specialization.models import exact_top_k, lm_loss, pad_lm_batch
from llm_specialization.scoring import score_candidates, score_candidates_soft_prompt, shared_prefix

INSTRUCTION = ("Classify the news article into one of these topics: earnings, acquisition, crude oil, trade, "
               "foreign exchange, interest rates, shipping, grain.\n\n")


@dataclass
class RungResult:
    """One rung scored once on the test documents: one scoring variant, one demonstration draw or seed."""

    rung: str
    accuracy: float
    macro_f1: float
    trainable_params: int = 0
    train_seconds: float = 0.0
    infer_ms_per_example: float = 0.0
    peak_rss_gib: float = 0.0
    extra: dict = field(default_factory=dict)
    variant: str = "raw"  # scoring: raw (summed log-likelihood), length-normalised, calibrated
    draw: int = 0  # the demonstration draw (R2/R3) or training seed (R4-R6)
    n_train: int = 0  # training documents (R4-R6)
    lr: float | None = None  # learning rate (R4-R6)
    correct: list[int] = field(default_factory=list)  # 0/1 per test document, in test order
    pred_counts: dict = field(default_factory=dict)  # label -> how often it was predicted (label bias)


def metrics(gold: list[str], pred: list[str], labels: list[str]) -> tuple[float, float]:
    return (float(accuracy_score(gold, pred)),
            float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)))


def scored(rung: str, gold: list[str], pred: list[str], labels: list[str], **kw) -> RungResult:
    """A RungResult with the metrics, per-document correctness and prediction counts of ``pred``."""
    return RungResult(rung, *metrics(gold, pred, labels), correct=[int(g == p) for g, p in zip(gold, pred)],
                      pred_counts={lab: pred.count(lab) for lab in labels}, **kw)


def truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False).input_ids[:max_tokens]
    return tokenizer.decode(ids)


def article_block(tokenizer, ex: Example, max_tokens: int) -> str:
    return f"Article: {truncate(tokenizer, ex.text, max_tokens)}\nTopic:"


def demo_block(tokenizer, ex: Example, max_tokens: int) -> str:
    return f"{article_block(tokenizer, ex, max_tokens)} {R8_VERBALIZERS[ex.label]}\n\n"


PROMPT_FORMATS = ("plain", "chat")


def candidates(labels: list[str], fmt: str = "plain") -> list[str]:
    """The verbalizers as continuations: after "Topic:" with a leading space (plain), or as the whole
    assistant answer (chat)."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, not {fmt!r}")
    return [(" " if fmt == "plain" else "") + R8_VERBALIZERS[lab] for lab in labels]


def render(tokenizer, demos: list[Example], article: Example | str, fmt: str = "plain", demo_tokens: int = 48,
           max_tokens: int = 128) -> str:
    """The prompt up to the answer: the instruction, the demonstrations (oldest first) and the article.

    plain: one text, "Article: ...\nTopic: <label>" per demonstration (what the trained rungs see too).
    chat: the tokenizer's chat template (ChatML for SmolLM2), as one prompts an Instruct model: the
    instruction as the system message, each demonstration a user turn (the article) answered by an
    assistant turn (the label), the article a last user turn, then the generation prompt. ``article`` may be
    raw text (the content-free inputs of calibration)."""
    text = article if isinstance(article, str) else truncate(tokenizer, article.text, max_tokens)
    if fmt == "plain":
        return (INSTRUCTION + "".join(demo_block(tokenizer, d, demo_tokens) for d in demos)
                + f"Article: {text}\nTopic:")
    if fmt != "chat":
        raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, not {fmt!r}")
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("prompt format chat needs a tokenizer with a chat template")
    messages = [{"role": "system", "content": INSTRUCTION.strip()}]
    for d in demos:
        messages += [{"role": "user", "content": f"Article: {truncate(tokenizer, d.text, demo_tokens)}"},
                     {"role": "assistant", "content": R8_VERBALIZERS[d.label]}]
    messages.append({"role": "user", "content": f"Article: {text}"})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------- R0
def reference_rungs(r8: R8, test: list[Example], encoder=None, k: int = 8) -> list[RungResult]:
    """Majority class, TF-IDF + logistic regression, and (with an encoder) MiniLM + LR and MiniLM k-NN."""
    gold = [e.label for e in test]
    train_y = [e.label for e in r8.train]
    out = []
    counts = Counter(train_y)
    majority = min(r8.labels, key=lambda lab: (-counts[lab], r8.labels.index(lab)))  # ties: first label
    out.append(scored("R0 majority", gold, [majority] * len(test), r8.labels))
    t0 = time.time()
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    x_train = vec.fit_transform([e.text for e in r8.train])
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, train_y)
    train_s = time.time() - t0
    t0 = time.time()
    pred = list(clf.predict(vec.transform([e.text for e in test])))
    out.append(scored("R0 TF-IDF + LR", gold, pred, r8.labels, trainable_params=int(clf.coef_.size + clf.intercept_.size),
                      train_seconds=train_s, infer_ms_per_example=1000 * (time.time() - t0) / len(test)))
    if encoder is not None:
        t0 = time.time()
        e_train = encoder.encode([e.text for e in r8.train])
        e_test = encoder.encode([e.text for e in test])
        embed_s = time.time() - t0
        lr = LogisticRegression(max_iter=2000).fit(e_train.numpy(), train_y)
        out.append(scored("R0 MiniLM + LR", gold, list(lr.predict(e_test.numpy())), r8.labels,
                          trainable_params=int(lr.coef_.size + lr.intercept_.size), train_seconds=embed_s))
        votes = knn_vote(e_test, e_train, train_y, r8.labels, k)
        out.append(scored(f"R0 MiniLM {k}-NN vote", gold, votes, r8.labels))
    return out


def knn_vote(e_query: torch.Tensor, e_train: torch.Tensor, train_y: list[str], labels: list[str], k: int = 8
             ) -> list[str]:
    """Majority vote of the k nearest training documents by cosine (:func:`exact_top_k`: equal similarities
    go to the earlier training document). A tie in votes goes to the label whose voters have the larger
    summed similarity, then to the label first in ``labels`` (sorted codes). The rule is fixed so that a run
    never depends on the process: ``max(set(votes), key=votes.count)``, used before, broke a 4-4 tie by the
    order of a set of strings, i.e. by the process's string-hash seed."""
    scores, index = exact_top_k(e_query, e_train, k)
    out = []
    for sims, row in zip(scores.tolist(), index.tolist()):
        count: Counter = Counter()
        total: dict[str, float] = {}
        for s, j in zip(sims, row):
            count[train_y[j]] += 1
            total[train_y[j]] = total.get(train_y[j], 0.0) + s
        out.append(min(count, key=lambda lab: (-count[lab], -total[lab], labels.index(lab))))
    return out


# ----------------------------------------------------------------------------------------- R1-R3
def _timed(fn, items, desc: str, show_progress: bool, cache: tuple | None, row: str) -> list[dict]:
    """``{row: fn(item), "ms": ...}`` per item. ``cache=(path, params)`` keeps each row as it is made
    (:func:`common.checkpoint.resumable_map`), so an 800-document rung cut short continues mid-way; the
    row's field is part of the key, so rows of another kind are never read back."""
    def one(item):
        t0 = time.perf_counter()
        value = fn(item)
        return {row: value, "ms": 1000 * (time.perf_counter() - t0)}

    path, params = cache if cache is not None else (None, None)
    params = {**params, "row": row} if params is not None else None
    return resumable_map(one, items, path, params, desc=desc, show_progress=show_progress, unit="doc")


def _mean_ms(rows: list[dict]) -> float:
    return float(np.mean([r["ms"] for r in rows])) if rows else 0.0


def candidate_ids(tokenizer, labels: list[str], fmt: str = "plain") -> list[list[int]]:
    return [list(tokenizer(c, add_special_tokens=False).input_ids) for c in candidates(labels, fmt)]


def score_prompts(lm, prompts: list[str], labels: list[str], desc: str = "", show_progress: bool = True,
                  cache: tuple | None = None, fmt: str = "plain") -> tuple[np.ndarray, np.ndarray, float]:
    """(N, C) summed log-likelihood of each label's verbalizer after each prompt, (C,) verbalizer lengths
    in tokens, and ms per example. A prefix all prompts share (R2's demonstrations) is run once; its cost is
    left out of the ms per example."""
    cands = candidate_ids(lm.tokenizer, labels, fmt)
    ids = [list(lm.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    prefix = shared_prefix(lm.model, ids)

    def one(i):
        return score_candidates(lm.model, lm.tokenizer, ids[i], cands, prefix).total.tolist()

    rows = _timed(one, range(len(ids)), desc, show_progress, cache, row="scores")
    totals = np.array([r["scores"] for r in rows]).reshape(len(rows), len(labels))
    return totals, np.array([len(c) for c in cands], dtype=float), _mean_ms(rows)


CONTENT_FREE = ("N/A", "[MASK]", "")


def content_free_prior(lm, demos: list[Example], labels: list[str], fmt: str = "plain",
                       demo_tokens: int = 48) -> np.ndarray:
    """Contextual calibration (Zhao et al., 2021): log of the label distribution the prompt gives when the
    article is content-free ('N/A', '[MASK]', empty; averaged), i.e. the bias of the instruction and the
    demonstrations alone (a small model copies the labels it has just seen)."""
    prompts = [render(lm.tokenizer, demos, x, fmt, demo_tokens) for x in CONTENT_FREE]
    scores, _, _ = score_prompts(lm, prompts, labels, show_progress=False, fmt=fmt)
    p = np.exp(scores - scores.max(1, keepdims=True))
    return np.log((p / p.sum(1, keepdims=True)).mean(0))


def calibrate(scores: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """argmax_y p(y|x) / p_cf(y): Zhao et al.'s diagonal W = diag(p_cf)^-1 with b = 0, in log space."""
    return scores - log_prior[None, :]


def few_shot_demos(r8: R8, draw_seed: int = 0) -> list[Example]:
    """One demonstration per class drawn from the training documents, in a random order: both the choice and
    the order come from ``draw_seed`` (R2's draws are seeds 0, 1, ...; the order matters to a small model)."""
    rng = random.Random(draw_seed)
    demos = [rng.choice(sorted((e for e in r8.train if e.label == lab), key=lambda e: e.fileid))
             for lab in r8.labels]
    rng.shuffle(demos)
    return demos


def retrieve(r8: R8, test: list[Example], encoder, k: int = 4) -> list[list[int]]:
    """The k nearest training documents of every test document by MiniLM cosine, most similar first."""
    e_train = encoder.encode([e.text for e in r8.train])
    e_test = encoder.encode([e.text for e in test])
    return exact_top_k(e_test, e_train, k)[1].tolist()


def retrieval_order(neighbours: list[int], draw: int, seed: int, doc: int) -> list[int]:
    """The demonstrations of one test document, oldest first. Draw 0 is the protocol's order, most similar
    last; draw d > 0 is a random order of the same neighbours, seeded by (seed, d, document)."""
    order = list(reversed(neighbours))
    if draw:
        random.Random(f"{seed}/{draw}/{doc}").shuffle(order)
    return order


def prompting_rung(name: str, lm, prompts: list[str], test: list[Example], labels: list[str],
                   show_progress: bool = True, cache: tuple | None = None, fmt: str = "plain",
                   calibration_demos: list[Example] | None = None, demo_tokens: int = 48, draw: int = 0
                   ) -> list[RungResult]:
    """The rung under every scoring side by side, from the same forward passes: ``raw`` (the summed
    log-likelihood of the verbalizer), ``length-normalised`` (its mean per token, which stops favouring
    one-token labels) and, given ``calibration_demos`` (the demonstrations every prompt shares, [] for R1),
    ``calibrated`` (contextual calibration of the raw scores)."""
    totals, lengths, ms = score_prompts(lm, prompts, labels, name, show_progress, cache, fmt)
    gold = [e.label for e in test]
    common = dict(infer_ms_per_example=ms, peak_rss_gib=peak_rss_bytes() / 2**30, draw=draw)
    out = []
    for variant, s in (("raw", totals), ("length-normalised", totals / lengths[None, :])):
        out.append(scored(name, gold, [labels[i] for i in s.argmax(1)], labels, variant=variant, **common))
    if calibration_demos is not None:
        prior = content_free_prior(lm, calibration_demos, labels, fmt, demo_tokens)
        calibrated = calibrate(totals, prior).argmax(1)
        out.append(scored(name, gold, [labels[i] for i in calibrated], labels, variant="calibrated",
                          extra={"content_free_prior": dict(zip(labels, np.exp(prior).round(4).tolist()))},
                          **common))
    return out


# ----------------------------------------------------------------------------------------- R4-R6
class VerbalizerDataset(torch.utils.data.Dataset):
    """(prompt + verbalizer) token ids with labels -100 everywhere but the verbalizer tokens."""

    def __init__(self, lm, examples: list[Example], max_tokens: int = 128):
        self.items = []
        for ex in examples:
            p = lm.tokenizer(INSTRUCTION + article_block(lm.tokenizer, ex, max_tokens),
                             add_special_tokens=False).input_ids
            v = lm.tokenizer(" " + R8_VERBALIZERS[ex.label], add_special_tokens=False).input_ids
            self.items.append((list(p) + list(v), [-100] * len(p) + list(v)))
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def collate(self, batch):
        return pad_lm_batch(batch, self.pad)


verbalizer_loss = lm_loss  # cross-entropy on the verbalizer tokens only (the others are labelled -100)


def adapt(lm, method: str, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
          n_virtual_tokens: int = 20, target_modules: tuple[str, ...] = ("q_proj", "v_proj")):
    """Wrap the LM for a trainable rung: prompt_tuning (PEFT), lora (PEFT) or full (every weight)."""
    if method == "full":
        for p in lm.model.parameters():
            p.requires_grad_(True)
        return lm.model
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if method == "lora":
        cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, target_modules=list(target_modules))
    elif method == "prompt_tuning":
        cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_virtual_tokens,
                                 prompt_tuning_init=PromptTuningInit.RANDOM)
    else:
        raise ValueError(f"method must be prompt_tuning, lora or full, not {method!r}")
    net = get_peft_model(lm.model, cfg)
    if method == "prompt_tuning":
        # Initialise the soft prompt from the instruction's token embeddings (PEFT's TEXT init, done here
        # because PEFT would look the tokenizer up by name on a hub).
        ids = list(lm.tokenizer(INSTRUCTION, add_special_tokens=False).input_ids)
        ids = (ids * (n_virtual_tokens // max(len(ids), 1) + 1))[:n_virtual_tokens]
        init = lm.model.get_input_embeddings().weight[torch.tensor(ids)].detach().clone()
        net.prompt_encoder["default"].embedding.weight.data.copy_(init)
    return net


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def shifts_positions(model) -> bool:
    """True for PEFT prompt learning: virtual tokens come first, so a KV cache of the bare prompt is wrong."""
    return any(getattr(c, "is_prompt_learning", False) for c in (getattr(model, "peft_config", None) or {}).values())


@torch.no_grad()
def predict_trained(model, lm, test: list[Example], labels: list[str], max_tokens: int = 128,
                    show_progress: bool = True, cache: tuple | None = None) -> tuple[list[str], float]:
    """Arg-max verbalizer after each document's prompt, with the KV-cache scorer (the prompt runs once, not
    once per candidate); a PEFT soft prompt goes through its base model with the virtual tokens first
    (:func:`score_candidates_soft_prompt`). Both equal full forwards (tests)."""
    tok = lm.tokenizer
    cand_ids = [list(tok(c, add_special_tokens=False).input_ids) for c in candidates(labels)]
    soft_prompt = shifts_positions(model)
    model.eval()

    def one(ex):
        p = list(tok(INSTRUCTION + article_block(tok, ex, max_tokens), add_special_tokens=False).input_ids)
        scores = (score_candidates_soft_prompt(model, tok, p, cand_ids) if soft_prompt
                  else score_candidates(model, tok, p, cand_ids))
        return labels[int(scores.total.argmax())]

    rows = _timed(one, test, "predict", show_progress, cache, row="pred")
    return [r["pred"] for r in rows], _mean_ms(rows)
