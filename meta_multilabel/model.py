"""Base classifiers, the weighted cross-entropy (training policy) and the GRU meta-learner.

The base classifier is any ``nn.Module`` mapping a batch of features to logits (n, L): the meta-learner
only sees its predicted probabilities. Built-ins take dense or sparse (TF-IDF) feature batches.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------ base classifiers


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` for a dense or a sparse COO/CSR batch (TF-IDF rows stay sparse)."""
    if x.is_sparse or x.layout == torch.sparse_csr:
        return torch.sparse.mm(x, layer.weight.t()) + layer.bias
    return layer(x)


class LinearHead(nn.Module):
    """Logistic regression per label on fixed features."""

    def __init__(self, in_dim: int, num_labels: int):
        super().__init__()
        self.out = nn.Linear(in_dim, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.out)


class MLPHead(nn.Module):
    """One hidden ReLU layer (256 by default) with dropout, then one logit per label."""

    def __init__(self, in_dim: int, num_labels: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.relu(_linear(x, self.hidden))))


class CNNText(nn.Module):
    """A from-scratch text CNN (Kim 2014 style) over token ids (``features.kind=tokens``): embeddings,
    parallel 1-D convolutions of widths 3/4/5 with ReLU and max-over-time pooling, dropout, one logit per
    label. ``in_dim`` is the vocabulary size; id 0 is padding."""

    def __init__(self, in_dim: int, num_labels: int, hidden: int = 128, dropout: float = 0.1, emb_dim: int = 64,
                 widths: Sequence[int] = (3, 4, 5)):
        super().__init__()
        self.emb = nn.Embedding(in_dim, emb_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, hidden, w, padding=w // 2) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden * len(widths), num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype.is_floating_point or ids.is_sparse:
            raise TypeError("CNNText takes token ids: use features=tokens")
        x = self.emb(ids).transpose(1, 2)  # (B, E, T)
        mask = (ids != 0)[:, None, :]
        pooled = [F.relu(conv(x))[..., : ids.shape[1]].masked_fill(~mask, 0).amax(-1) for conv in self.convs]
        return self.out(self.drop(torch.cat(pooled, 1)))


CLASSIFIERS = {"linear": LinearHead, "mlp": MLPHead, "cnn": CNNText}


def build_classifier(name: str, in_dim: int, num_labels: int, **kwargs) -> nn.Module:
    """A built-in head (``linear``, ``mlp``) or any ``package.module:Class`` taking (in_dim, num_labels)."""
    if name in CLASSIFIERS:
        return CLASSIFIERS[name](in_dim, num_labels, **kwargs)
    if ":" in name:
        module, cls = name.split(":", 1)
        return getattr(importlib.import_module(module), cls)(in_dim, num_labels, **kwargs)
    raise ValueError(f"unknown classifier {name!r}: use one of {sorted(CLASSIFIERS)} or 'module:Class'")


# ------------------------------------------------------------------------------ training policy


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                 mode: str = "label") -> torch.Tensor:
    """L(θ; w) = −(1/|B|) Σ_i Σ_j w_j [y_ij log p_ij + (1 − y_ij) log(1 − p_ij)].

    ``mode="label"`` scales the whole term of label j by w_j; ``mode="pos"`` scales only its positive
    part (PyTorch's ``pos_weight``). ``weights=None`` is the uniform loss (w = 1). Summed over labels and
    averaged over the batch, so label j's gradient does not shrink as L grows.
    """
    targets = targets.to(logits.dtype)
    # torch's fused kernel with a summed reduction: no (B, L) intermediate (see meta_multilabel.bench).
    if weights is None:
        total = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    elif mode == "label":
        total = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")
    elif mode == "pos":
        total = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="sum")
    else:
        raise ValueError(f"weight mode must be 'label' or 'pos', got {mode!r}")
    return total / logits.shape[0]


def inverse_frequency_weights(Y_train, cap: float = 50.0) -> torch.Tensor:
    """B4: ``pos_weight_j = neg_j / pos_j`` capped at ``cap`` (labels without positives get ``cap``)."""
    Y = torch.as_tensor(Y_train, dtype=torch.float64)
    pos = Y.sum(0)
    neg = Y.shape[0] - pos
    w = torch.where(pos > 0, neg / pos.clamp(min=1), torch.full_like(pos, cap))
    return w.clamp(max=cap).float()


# --------------------------------------------------------------------------------- meta-learner

STATE_DIM = 6
"""Per-label state s_j: prevalence, mean p on positives, mean p on negatives, F1 at τ_j, prev w_j/w_max, prev τ_j."""


class MetaLearner(nn.Module):
    """The GRU meta-learner emitting, per label, a training weight w_j and a threshold τ_j.

    ``recurrence="labels"`` (default): a GRU walks over the labels in ``order``; its input at step j is
    [label embedding e_j ; state s_j], so h_j carries what it saw of the labels before j (label
    dependencies). Means μ^w_j = w_max σ(aᵀh_j), μ^τ_j = σ(bᵀh_j).

    ``recurrence="steps"``: a GRU cell steps over meta-iterations instead; its input is the flattened
    (L × state) matrix and it emits the L-dimensional means through linear layers. Its hidden state is
    carried across episodes (detached: the policy gradient of an episode does not flow into earlier ones).

    Actions are Gaussian around the means with σ fixed (``learn_sigma=False``) or learned (log σ per
    policy), sampled and then clipped to [0, w_max] and [tau_min, tau_max]; log π is evaluated at the
    unclipped sample.
    """

    def __init__(self, num_labels: int, *, recurrence: str = "labels", hidden: int = 64, label_dim: int = 32,
                 w_max: float = 2.0, sigma_w: float = 0.2, sigma_tau: float = 0.05, learn_sigma: bool = False,
                 tau_clip: Sequence[float] = (0.01, 0.99), label_init: torch.Tensor | None = None,
                 init_tau: float = 0.5, init_w: float = 1.0):
        super().__init__()
        if recurrence not in ("labels", "steps"):
            raise ValueError(f"recurrence must be 'labels' or 'steps', got {recurrence!r}")
        self.num_labels, self.recurrence, self.w_max = num_labels, recurrence, float(w_max)
        self.tau_clip = (float(tau_clip[0]), float(tau_clip[1]))
        if recurrence == "labels":
            if label_init is not None:  # frozen name embeddings (e.g. MiniLM), projected to label_dim
                self.register_buffer("label_init", label_init.float())
                self.label_proj = nn.Linear(label_init.shape[1], label_dim)
            else:
                self.label_emb = nn.Embedding(num_labels, label_dim)
            self.gru = nn.GRU(label_dim + STATE_DIM, hidden, batch_first=True)
            self.head_w = nn.Linear(hidden, 1)
            self.head_tau = nn.Linear(hidden, 1)
        else:
            self.cell = nn.GRUCell(num_labels * STATE_DIM, hidden)
            self.head_w = nn.Linear(hidden, num_labels)
            self.head_tau = nn.Linear(hidden, num_labels)
            self.register_buffer("step_hidden", torch.zeros(1, hidden))
        # Start from the standard policy (w = init_w, τ = init_tau): zero output weights, bias at the logit.
        for head, target in ((self.head_w, init_w / self.w_max), (self.head_tau, init_tau)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, math.log(target / (1 - target)))
        log_sw, log_st = math.log(sigma_w), math.log(sigma_tau)
        if learn_sigma:
            self.log_sigma = nn.Parameter(torch.tensor([log_sw, log_st]))
        else:
            self.register_buffer("log_sigma", torch.tensor([log_sw, log_st]))

    def label_embeddings(self) -> torch.Tensor:
        if hasattr(self, "label_emb"):
            return self.label_emb.weight
        return self.label_proj(self.label_init)

    def forward(self, states: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (μ^w, μ^τ), each (L,) in label-index order, from the (L, STATE_DIM) label states."""
        if self.recurrence == "labels":
            x = torch.cat([self.label_embeddings(), states], dim=1)[order]  # walk in the chosen order
            h, _ = self.gru(x[None])
            h = h[0]
            mu_w = torch.empty(self.num_labels, device=h.device)
            mu_t = torch.empty(self.num_labels, device=h.device)
            mu_w = mu_w.index_copy(0, order, self.w_max * torch.sigmoid(self.head_w(h)[:, 0]))
            mu_t = mu_t.index_copy(0, order, torch.sigmoid(self.head_tau(h)[:, 0]))
            return mu_w, mu_t
        h = self.cell(states.reshape(1, -1), self.step_hidden)
        self._last_hidden = h.detach()
        return self.w_max * torch.sigmoid(self.head_w(h)[0]), torch.sigmoid(self.head_tau(h)[0])

    def advance(self) -> None:
        """``recurrence="steps"``: commit the hidden state of the last forward as the next step's."""
        if self.recurrence == "steps" and hasattr(self, "_last_hidden"):
            self.step_hidden.copy_(self._last_hidden)

    @property
    def sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.log_sigma.exp()
        return s[0] * torch.ones(()), s[1] * torch.ones(())

    def sample(self, mu_w: torch.Tensor, mu_t: torch.Tensor, generator: torch.Generator | None = None):
        """Raw Gaussian actions (for log π) and their clipped versions (what the classifier uses)."""
        s_w, s_t = self.sigmas
        raw_w = mu_w.detach() + s_w.detach() * torch.randn(mu_w.shape, generator=generator)
        raw_t = mu_t.detach() + s_t.detach() * torch.randn(mu_t.shape, generator=generator)
        return (raw_w, raw_t), (raw_w.clamp(0.0, self.w_max), raw_t.clamp(*self.tau_clip))

    def log_prob(self, raw_w, raw_t, mu_w, mu_t) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-label log N(w_j; μ^w_j, σ_w²) and log N(τ_j; μ^τ_j, σ_τ²), each (L,)."""
        s_w, s_t = self.sigmas
        return gaussian_log_prob(raw_w, mu_w, s_w), gaussian_log_prob(raw_t, mu_t, s_t)

    def entropy(self) -> torch.Tensor:
        """Entropy of the action distribution (constant, so no gradient, while σ is fixed)."""
        return self.num_labels * (self.log_sigma.sum() + math.log(2 * math.pi * math.e))


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return -((x - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def reinforce_loss(log_prob: torch.Tensor, advantage: torch.Tensor | float) -> torch.Tensor:
    """−Σ (R − b) log π: its gradient step raises the probability of actions that beat the baseline.

    ``advantage`` is a scalar (one reward for all labels) or a tensor shaped like ``log_prob``
    (per-label rewards with per-label baselines).
    """
    advantage = torch.as_tensor(advantage, dtype=log_prob.dtype)
    return -(advantage.detach() * log_prob).sum()
