"""One training objective per supervision type, as ``loss_fn(model, batch)`` callables for
``common.trainer.Trainer``.

Batches are dicts built by :mod:`label_efficient_seg.data`: ``image`` ``[B,3,H,W]`` in [0,1], ``mask`` (dense
ground truth, read only by full supervision and by diagnostics), ``weak`` (the label map a method is
entitled to: noisy mask, box map, scribbles, points, ...), ``valid`` (0 on padding), ``tags``, and for
semi-supervised / domain adaptation ``u_image`` (unlabelled or target images).

Every objective returns a dict with ``loss`` plus diagnostics that the trainer logs (confident-pixel ratio,
selected-pair count, warm-up factor, ...). Step-dependent schedules (warm-ups, EMA) read the model's
``loss_calls`` buffer, which :func:`attach_step_counter` adds, so they resume exactly from a checkpoint.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses as L
from .metrics import IGNORE_INDEX
from .model import ClusterNet, DualNet, MeanTeacher


def attach_step_counter(model: nn.Module) -> nn.Module:
    """Register ``loss_calls`` (number of training micro-batches seen) as a buffer of ``model``."""
    if not hasattr(model, "loss_calls"):
        model.register_buffer("loss_calls", torch.zeros((), dtype=torch.long))
    return model


def _core(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (itself otherwise). Only buffers and no-grad parts
    are reached through it: every forward with gradients goes through ``model(...)``, or DDP would not
    average its gradients across ranks."""
    return getattr(model, "module", model)


def _tick(model: nn.Module) -> int:
    """Advance the model's step counter and return the value before this call."""
    core = _core(model)
    t = int(core.loss_calls)
    core.loss_calls += 1
    return t


def _valid(batch: dict) -> torch.Tensor:
    v = batch.get("valid")
    return torch.ones_like(batch["image"][:, 0], dtype=torch.bool) if v is None else v == 1


def ramp(step: int, warmup_steps: int) -> float:
    """Linear warm-up factor in [0, 1] (1 when ``warmup_steps`` <= 0): BoxInst's ``min(iter / warmup, 1)``."""
    return ramp_weight(step, 0, warmup_steps, "linear")


def ramp_weight(step: int, start: int, length: int, shape: str = "linear") -> float:
    """The weight schedule of a consistency or pairwise term: 0 before ``start`` (a supervised warm-up),
    then from ``t = (step - start) / length`` either ``t`` (linear, BoxInst) or ``exp(-5 (1 - t)^2)``
    (sigmoid, Laine & Aila 2017: Mean Teacher's ramp, also common in CPS code), and 1 from
    ``start + length`` on. ``length <= 0``: a step from 0 to 1 at ``start``."""
    shape = getattr(shape, "value", shape)
    if shape not in ("linear", "sigmoid"):
        raise ValueError(f"unknown ramp shape {shape!r} (linear | sigmoid)")
    if step < start:
        return 0.0
    if length <= 0:
        return 1.0
    t = min(1.0, (step - start) / length)
    return t if shape == "linear" else math.exp(-5.0 * (1.0 - t) ** 2)


@dataclass(frozen=True)
class Ramp:
    """A weight schedule in optimizer steps (see :func:`ramp_weight`)."""

    start: int = 0
    length: int = 0
    shape: str = "linear"

    def __call__(self, step: int) -> float:
        return ramp_weight(step, self.start, self.length, self.shape)


@contextmanager
def frozen_bn_statistics(model: nn.Module):
    """Inside: BatchNorm layers still normalise with the batch's own statistics (train mode) but leave
    their running statistics untouched (momentum 0). The target forward of domain adaptation runs in it,
    so the running statistics stay those of the source batches and target images are normalised by target
    statistics, never by a batch mixing the two domains (domain-specific BN, Chang et al. 2019)."""
    bns = [m for m in _core(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


# ----------------------------------------------------------------------------- photometric views

def strong_photometric(x: torch.Tensor, p_jitter: float = 0.8, p_grey: float = 0.2, p_blur: float = 0.5
                       ) -> torch.Tensor:
    """UniMatch's strong colour view, per image: colour jitter (brightness, contrast, saturation 0.5),
    random greyscale, Gaussian blur (sigma 0.1-2). Geometry is unchanged so pixels stay aligned."""
    out = []
    for img in x:
        if torch.rand(()) < p_jitter:
            b, c, s = (1 + (torch.rand(3) - 0.5)).tolist()
            img = img * b
            mean = img.mean()
            img = (img - mean) * c + mean
            grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
            img = (img - grey) * s + grey
        if torch.rand(()) < p_grey:
            img = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand(3, -1, -1)
        if torch.rand(()) < p_blur:
            sigma = float(0.1 + 1.9 * torch.rand(()))
            r = 2
            k = torch.exp(-torch.arange(-r, r + 1, dtype=img.dtype, device=img.device) ** 2 / (2 * sigma ** 2))
            k = k / k.sum()
            img = F.conv2d(F.pad(img[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
            img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def cutmix_boxes(b: int, h: int, w: int, p: float = 0.5, device=None) -> torch.Tensor:
    """``[B, H, W]`` bool CutMix boxes (UniMatch: area 2-40 %, aspect 0.3-3.3, applied with prob. p)."""
    out = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    for i in range(b):
        if torch.rand(()) >= p:
            continue
        area = float(0.02 + 0.38 * torch.rand(())) * h * w
        ratio = math.exp(float(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand(())))
        ch, cw = min(h, int(math.sqrt(area / ratio))), min(w, int(math.sqrt(area * ratio)))
        y = int(torch.randint(h - ch + 1, ()))
        x = int(torch.randint(w - cw + 1, ()))
        out[i, y:y + ch, x:x + cw] = True
    return out


# ----------------------------------------------------------------------------- objectives

class Supervised:
    """CE (+ Dice for binary) on ``batch[target_key]``: full supervision on the masks, the labelled-subset
    lower bound, filled boxes as masks, source-only DA, and clean/noisy CE; ``loss`` chooses the robust
    alternatives for noisy labels: ``ce`` | ``gce`` (q) | ``sce`` (alpha, beta)."""

    def __init__(self, target_key: str = "weak", loss: str = "ce", q: float = 0.7, alpha: float = 0.1,
                 beta: float = 1.0):
        if loss not in ("ce", "gce", "sce"):
            raise ValueError(f"unknown supervised loss {loss!r} (ce | gce | sce)")
        self.target_key, self.loss, self.q, self.alpha, self.beta = target_key, loss, q, alpha, beta

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        logits = model(batch["image"])
        y = batch[self.target_key]
        if self.loss == "gce":
            loss = L.generalized_ce(logits, y, self.q)
        elif self.loss == "sce":
            loss = L.symmetric_ce(logits, y, self.alpha, self.beta)
        else:
            loss = L.supervised_loss(logits, y)
        return {"loss": loss}


class PartialCEPairwise:
    """Scribbles and points: partial CE on the annotated pixels of ``weak`` (class-balanced when
    ``class_weight`` is given) plus ``pairwise_weight x ramp(step)`` times the colour-gated pairwise term
    over all (non-padding) pixels. The ramp keeps the pairwise term off until partial CE has fitted the
    labels: at full weight from the start it pulls a near-chance network to one constant class, which the
    pairwise term alone prefers (a constant map has no label change between similar pixels).
    ``pairwise_weight = 0`` is the partial-CE-only ablation."""

    def __init__(self, pairwise_weight: float = 1.0, threshold: float = 0.3, kernel_size: int = 3,
                 dilation: int = 2, warmup_steps: int = 0, ramp: Ramp | None = None,
                 class_weight: torch.Tensor | None = None):
        self.w, self.threshold, self.k, self.d = pairwise_weight, threshold, kernel_size, dilation
        self.ramp = ramp if ramp is not None else Ramp(0, warmup_steps, "linear")
        self.class_weight = class_weight

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        step = _tick(model)
        logits = model(batch["image"])
        cw = None if self.class_weight is None else self.class_weight.to(logits.device, logits.dtype)
        pce = L.partial_cross_entropy(logits, batch["weak"], weight=cw)
        out = {"loss_pce": pce.detach()}
        loss = pce
        if self.w > 0:
            f = self.ramp(step)
            out["warmup"] = f
            if f > 0:
                sim = L.color_similarity(batch["image"], self.k, self.d)
                pair, n = L.pairwise_affinity_loss(logits, sim, self.threshold, _valid(batch), self.k, self.d)
                loss = loss + self.w * f * pair
                out.update(loss_pair=pair.detach(), pairs=n)
        out["loss"] = loss
        return out


class BoxSupervision:
    """BoxInst losses on a binary network (``weak``: 1 inside a box, 0 outside, IGNORE on padding)."""

    def __init__(self, pairwise_weight: float = 1.0, threshold: float = 0.3, kernel_size: int = 3,
                 dilation: int = 2, warmup_steps: int = 100, ramp: Ramp | None = None):
        self.w, self.threshold, self.k, self.d = pairwise_weight, threshold, kernel_size, dilation
        self.ramp = ramp if ramp is not None else Ramp(0, warmup_steps, "linear")

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        step = _tick(model)
        logits = model(batch["image"])
        valid = batch["weak"] != IGNORE_INDEX  # padding from the crop is neither box nor background
        box = batch["weak"].masked_fill(~valid, 0)
        sim = L.color_similarity(batch["image"], self.k, self.d)
        return L.boxinst_loss(logits, box, sim, self.ramp(step), self.w, self.threshold, self.k,
                              self.d, valid=valid)


class TagClassifier:
    """Stage 1 of CAM: multi-label BCE of the network's image logits (GAP of pixel logits) on crop tags."""

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        logits = model(batch["image"], output="image")
        return {"loss": F.binary_cross_entropy_with_logits(logits, batch["tags"])}


class FixMatch:
    """FixMatch-style pixel pseudo-labels (UniMatch's ``fixmatch.py``): weak-view argmax pseudo-labels kept
    where the confidence >= tau, a strong colour view with CutMix whose mixed region takes the partner's
    pseudo-label, ``L = (L_x + L_u) / 2``; the CutMix partner is the batch rolled by one (see README)."""

    def __init__(self, threshold: float = 0.95, cutmix_p: float = 0.5):
        self.tau, self.cutmix_p = threshold, cutmix_p

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        x, y, u_w = batch["image"], batch["weak"], batch["u_image"]
        b = x.shape[0]
        logits = model(torch.cat([x, u_w]))
        loss_x = L.supervised_loss(logits[:b], y)
        with torch.no_grad():
            prob = logits[b:].detach().softmax(1)
            conf, pseudo = prob.max(1)
        valid = batch["u_valid"] == 1 if "u_valid" in batch else torch.ones_like(conf, dtype=torch.bool)
        u_s = strong_photometric(u_w)
        box = cutmix_boxes(b, *u_w.shape[-2:], self.cutmix_p, u_w.device)
        roll = lambda t: t.roll(1, 0)
        u_s = torch.where(box.unsqueeze(1), roll(u_s), u_s)
        pseudo = torch.where(box, roll(pseudo), pseudo)
        conf = torch.where(box, roll(conf), conf)
        valid = torch.where(box, roll(valid), valid)
        loss_u, ratio = L.confident_pseudo_label_loss(model(u_s), pseudo, conf, self.tau, valid)
        out = {"loss": (loss_x + loss_u) / 2, "loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
               "confident_ratio": ratio}
        if "u_mask" in batch:  # diagnostic: how right the confident pseudo-labels are
            m = (conf >= self.tau) & valid & (batch["u_mask"] != IGNORE_INDEX)
            if m.any():
                out["pseudo_acc"] = (pseudo[m] == batch["u_mask"][m]).float().mean()
        return out


class MeanTeacherObjective:
    """Mean Teacher: supervised loss of the student plus ``weight`` (ramped) times the softmax MSE between
    the student on a strong colour view and the EMA teacher on the weak view of the unlabelled images."""

    def __init__(self, weight: float = 10.0, alpha: float = 0.99, warmup_steps: int = 0, ramp: Ramp | None = None):
        self.weight, self.alpha = weight, alpha
        self.ramp = ramp if ramp is not None else Ramp(0, warmup_steps, "sigmoid")

    def __call__(self, model: MeanTeacher, batch: dict) -> dict:
        step = _tick(model)
        if step > 0:  # fold in the optimizer step taken since the last call
            _core(model).update_teacher(self.alpha)
        x, y, u = batch["image"], batch["weak"], batch["u_image"]
        loss_x = L.supervised_loss(model(x), y)  # training mode: the student
        with torch.no_grad():
            t_logits = _core(model).teacher(u)
        loss_c = L.softmax_mse(model(strong_photometric(u)), t_logits)
        f = self.ramp(step)
        return {"loss": loss_x + self.weight * f * loss_c, "loss_x": loss_x.detach(),
                "loss_cons": loss_c.detach(), "warmup": f}


class CrossPseudoSupervision:
    """CPS: both networks supervised on the labelled batch, and each trained on the other's hard
    pseudo-labels on labelled and unlabelled images, weighted by ``weight`` (1.5 in the CPS paper) times
    ``ramp(step)``. Without the ramp two from-scratch networks at chance agree fastest on one class
    everywhere, and the cross pseudo-labels lock that collapse in before the labels can act."""

    def __init__(self, weight: float = 1.5, ramp: Ramp | None = None):
        self.weight = weight
        self.ramp = ramp if ramp is not None else Ramp()

    def __call__(self, model: DualNet, batch: dict) -> dict:
        step = _tick(model)
        x, y, u = batch["image"], batch["weak"], batch["u_image"]
        b = x.shape[0]
        both = torch.cat([x, u])
        la, lb = model(both, both=True)
        loss_x = L.supervised_loss(la[:b], y) + L.supervised_loss(lb[:b], y)
        loss_cps = L.cross_pseudo_supervision(la, lb)
        f = self.ramp(step)
        return {"loss": loss_x + self.weight * f * loss_cps, "loss_x": loss_x.detach(),
                "loss_cps": loss_cps.detach(), "warmup": f}


class EntropyMinimization:
    """MinEnt (ADVENT): supervised loss on the source batch + ``weight`` x normalised target entropy.

    Source and target go through the network in separate forward passes, as in ADVENT's code, so no
    BatchNorm batch ever mixes the domains; the target pass leaves the running statistics alone
    (:func:`frozen_bn_statistics`), which therefore hold source statistics only. Evaluate with
    ``test_bn=target`` to normalise target images with target statistics (see ``experiment``)."""

    def __init__(self, weight: float = 0.001):
        self.weight = weight

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        x, y, t = batch["image"], batch["weak"], batch["u_image"]
        loss_s = L.supervised_loss(model(x), y)
        with frozen_bn_statistics(model):
            logits_t = model(t)
        valid = batch["u_valid"] == 1 if "u_valid" in batch else None
        ent = L.normalized_entropy(logits_t, valid)
        return {"loss": loss_s + self.weight * ent, "loss_src": loss_s.detach(), "entropy_tgt": ent.detach()}


class IIC:
    """IIC for segmentation: the second view is a strong colour view, horizontally flipped with prob. 0.5
    (the flip is undone on its outputs so pixels align); mutual information of the main head (K clusters)
    and of the over-clustering head, summed every step, with pairs up to ``displacement`` pixels apart."""

    def __init__(self, displacement: int = 1):
        self.displacement = displacement

    def __call__(self, model: ClusterNet, batch: dict) -> dict:
        x = batch["image"]
        flip = bool(torch.rand(()) < 0.5)
        x2 = strong_photometric(x)
        if flip:
            x2 = x2.flip(-1)
        a1, o1 = model(x, both_heads=True)
        a2, o2 = model(x2, both_heads=True)
        if flip:
            a2, o2 = a2.flip(-1), o2.flip(-1)
        loss_a = L.iic_loss(a1.softmax(1), a2.softmax(1), self.displacement)
        loss_o = L.iic_loss(o1.softmax(1), o2.softmax(1), self.displacement)
        return {"loss": loss_a + loss_o, "mi_main": -loss_a.detach(), "mi_over": -loss_o.detach()}
