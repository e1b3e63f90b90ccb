"""A linear-chain CRF over word-level tag sequences (the "Joint BERT + CRF" variant).

Written here rather than taken from pytorch-crf (last release 2019) because the project's CRF must
see only real words: emissions are gathered at each word's first sub-token and packed to the left,
so the mask is a prefix mask and the tag set holds only real BIO tags (no PAD, no UNK). Scores:

    s(x, y) = start[y_1] + sum_n E[n, y_n] + sum_{n>1} A[y_{n-1}, y_n] + end[y_N]
    -log p(y | x) = logsumexp_y' s(x, y') - s(x, y)

The partition function uses the forward algorithm and decoding uses Viterbi, both in log space.
Tests compare both against brute-force enumeration.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearChainCRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        # Small uniform init as in common CRF implementations: starts close to independent softmax.
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(f"emissions must be [batch, words, {self.num_tags}], got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match emissions {tuple(emissions.shape[:2])}")
        mask = mask.bool()
        # Packed to the left: once a position is masked, every later one is too.
        if mask.size(1) > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("mask must be left-packed (real words first, then padding)")
        return mask

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z(x) per sentence, shape [batch]; rows with no words give 0."""
        mask = self._check(emissions, mask)
        emissions = emissions.float()
        score = self.start + emissions[:, 0]  # [B, K]
        for t in range(1, emissions.size(1)):
            step = torch.logsumexp(score.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            score = torch.where(mask[:, t].unsqueeze(1), step, score)
        log_z = torch.logsumexp(score + self.end, dim=1)
        return torch.where(mask[:, 0], log_z, torch.zeros_like(log_z))

    def sequence_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """s(x, y) per sentence, shape [batch]; tags at masked positions are ignored."""
        mask = self._check(emissions, mask)
        emissions = emissions.float()
        tags = torch.where(mask, tags, torch.zeros_like(tags))
        if ((tags < 0) | (tags >= self.num_tags)).any():
            raise ValueError(f"tags at real word positions must lie in [0, {self.num_tags})")
        maskf = mask.float()
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
        score = (emit * maskf).sum(1) + self.start[tags[:, 0]]
        if tags.size(1) > 1:
            trans = self.transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
            score = score + (trans * maskf[:, 1:]).sum(1)
        lengths = mask.long().sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        score = score + self.end[last]
        return torch.where(mask[:, 0], score, torch.zeros_like(score))

    def neg_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) per sentence, shape [batch] (0 for rows with no words)."""
        return self.log_partition(emissions, mask) - self.sequence_score(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the highest-scoring tag sequence of each sentence (length = its word count)."""
        mask = self._check(emissions, mask)
        emissions = emissions.float()
        batch, n_words, _ = emissions.shape
        score = self.start + emissions[:, 0]
        backpointers = []
        for t in range(1, n_words):
            cand = score.unsqueeze(2) + self.transitions  # [B, K_prev, K]
            best, idx = cand.max(dim=1)
            step = best + emissions[:, t]
            keep = mask[:, t].unsqueeze(1)
            score = torch.where(keep, step, score)
            # Where the position is padding, point each tag at itself so backtracking passes through.
            identity = torch.arange(self.num_tags, device=idx.device).expand_as(idx)
            backpointers.append(torch.where(keep, idx, identity))
        score = score + self.end
        lengths = mask.long().sum(1).tolist()
        best_last = score.argmax(dim=1)
        paths = []
        for b in range(batch):
            if lengths[b] == 0:
                paths.append([])
                continue
            tag = int(best_last[b])
            path = [tag]
            for t in range(lengths[b] - 1, 0, -1):
                tag = int(backpointers[t - 1][b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths
