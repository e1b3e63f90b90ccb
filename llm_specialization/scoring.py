"""Scoring candidate continuations with a causal LM: the primitive behind every prompting rung.

score(c | prompt) = sum_t log p(c_t | prompt, c_<t). The prompt runs once; its KV cache is repeated for
all candidates, which then run as one right-padded batch (the candidates never see each other).
Prompts that all begin with the same tokens (few-shot demonstrations: about 3/4 of each R2 prompt) share
that part's KV cache too (:func:`shared_prefix`): it runs once, and each prompt runs only its own tail.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CandidateScores:
    total: torch.Tensor  # (C,) summed log-probability of each candidate
    n_tokens: torch.Tensor  # (C,) candidate lengths in tokens

    @property
    def mean(self) -> torch.Tensor:  # length-normalised
        return self.total / self.n_tokens


@dataclass
class SharedPrefix:
    ids: list[int]  # the token ids every prompt starts with
    cache: Any  # their KV cache (copied before each use: a forward pass appends to it)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


@torch.no_grad()
def shared_prefix(model, prompt_ids: list[list[int]], min_tokens: int = 16) -> SharedPrefix | None:
    """The KV cache of the longest token prefix common to all prompts, or None if shorter than
    ``min_tokens``. Found on token ids, not text, so a merge across the text boundary cannot make a
    cached prefix differ from how the whole prompt tokenizes; each prompt keeps at least one own token."""
    if not prompt_ids:
        return None
    first, n = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    for p in prompt_ids[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    if n < min_tokens:
        return None
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([first[:n]], device=device), use_cache=True)
    return SharedPrefix(first[:n], out.cache)


@torch.no_grad()
def score_candidates(model, tokenizer, prompt: str | list[int], candidates: list[str] | list[list[int]],
                     prefix: SharedPrefix | None = None) -> CandidateScores:
    """Log-likelihood of each candidate after ``prompt``, with one prompt forward pass (KV cache);
    with ``prefix`` (a :func:`shared_prefix` the prompt starts with) only the prompt's tail runs."""
    p_ids = prompt if isinstance(prompt, list) else _ids(tokenizer, prompt)
    c_ids = [c if isinstance(c, list) else _ids(tokenizer, c) for c in candidates]
    if not p_ids or any(len(c) == 0 for c in c_ids):
        raise ValueError("prompt and every candidate must tokenize to at least one token")
    device = next(model.parameters()).device
    k = len(prefix.ids) if prefix is not None else 0
    if prefix is not None and len(p_ids) > k and p_ids[:k] == prefix.ids:
        out = model(input_ids=torch.tensor([p_ids[k:]], device=device), cache=copy.deepcopy(prefix.cache),
                    position_ids=torch.arange(k, len(p_ids), device=device).unsqueeze(0), use_cache=True)
    else:
        out = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True)
    return _score_after_prompt(model, tokenizer, out, len(p_ids), c_ids)


@torch.no_grad()
def score_candidates_soft_prompt(peft_model, tokenizer, prompt: list[int], candidates: list[list[int]]
                                 ) -> CandidateScores:
    """:func:`score_candidates` for a PEFT prompt-tuning model: its virtual token embeddings go first and
    the prompt after them run once through the base model (what PEFT's forward does), then the candidates
    share that cache. PEFT's own forward would prepend the virtual tokens again on the cached call."""
    if not prompt or any(len(c) == 0 for c in candidates):
        raise ValueError("prompt and every candidate must tokenize to at least one token")
    base = peft_model.get_base_model()
    embed = base.get_input_embeddings()
    device = embed.weight.device
    virtual = peft_model.get_prompt(batch_size=1).to(device=device, dtype=embed.weight.dtype)  # (1, V, H)
    inputs = torch.cat([virtual, embed(torch.tensor([prompt], device=device))], dim=1)  # (1, V + P, H)
    out = base(inputs_embeds=inputs, use_cache=True)
    return _score_after_prompt(base, tokenizer, out, inputs.shape[1], candidates)


def _score_after_prompt(model, tokenizer, out, P: int, c_ids: list[list[int]]) -> CandidateScores:
    """The candidates after a prompt of P positions whose forward output (logits, cache) is ``out``."""
    device = next(model.parameters()).device
    first = out.logits[0, -1].float().log_softmax(-1)  # (V,): distribution of every candidate's first token
    n, longest = len(c_ids), max(len(c) for c in c_ids)
    totals = torch.stack([first[c[0]] for c in c_ids]).cpu()
    lengths = torch.tensor([len(c) for c in c_ids], dtype=torch.float32)
    if longest == 1:
        return CandidateScores(totals, lengths)
    cache = out.cache
    cache.batch_repeat_interleave(n)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((n, longest), pad, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for i, c in enumerate(c_ids):
        tokens[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1
    attn = torch.cat([torch.ones((n, P), dtype=torch.long), mask], dim=1).to(device)
    pos = (P + torch.arange(longest)).unsqueeze(0).expand(n, -1).to(device)
    logits = model(input_ids=tokens.to(device), attention_mask=attn, position_ids=pos,
                   cache=cache, use_cache=True).logits.float()  # (n, L, V)
    logp = logits[:, :-1].log_softmax(-1).cpu()  # position j predicts token j+1
    nxt = tokens[:, 1:]
    tok_lp = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
    return CandidateScores(totals + tok_lp.sum(1), lengths)


@torch.no_grad()
def score_candidates_naive(model, tokenizer, prompt: str | list[int], candidates: list[str] | list[list[int]]
                           ) -> CandidateScores:
    """Reference: one full forward of prompt + candidate per candidate (slow, obviously right). Works for
    any wrapped model: positions a PEFT soft prompt puts first are dropped from the logits."""
    p_ids = prompt if isinstance(prompt, list) else _ids(tokenizer, prompt)
    device = next(model.parameters()).device
    totals, lengths = [], []
    for cand in candidates:
        c_ids = cand if isinstance(cand, list) else _ids(tokenizer, cand)
        ids = torch.tensor([p_ids + c_ids], device=device)
        logp = model(input_ids=ids).logits[0, -ids.shape[1]:].float().log_softmax(-1).cpu()
        P = len(p_ids)
        totals.append(sum(float(logp[P - 1 + j, t]) for j, t in enumerate(c_ids)))
        lengths.append(len(c_ids))
    return CandidateScores(torch.tensor(totals), torch.tensor(lengths, dtype=torch.float32))
