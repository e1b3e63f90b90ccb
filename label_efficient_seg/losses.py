"""Losses of the baselines, each a plain function of tensors (no model, no config).

Shapes: ``logits`` ``[B, C, H, W]``; label maps ``[B, H, W]`` (long, ``IGNORE_INDEX`` = unlabelled/void);
images ``[B, 3, H, W]`` RGB in [0, 1]. Binary tasks use two logits: the foreground probability
``softmax(l)[1] = sigmoid(l1 - l0)``, so BCE on ``l1 - l0`` and CE on the two logits are the same loss and
BoxInst's sigmoid formulas carry over exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .metrics import IGNORE_INDEX


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")


# ----------------------------------------------------------------------------- supervised

def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE over labelled pixels only; exactly 0 (with a gradient path) when no pixel is labelled,
    where ``F.cross_entropy(..., reduction="mean")`` would return NaN."""
    _check_logits_target(logits, target)
    valid = target != ignore_index
    per_pixel = F.cross_entropy(logits, target.masked_fill(~valid, 0), weight=weight, reduction="none")
    if weight is not None:
        w = weight[target.masked_fill(~valid, 0)] * valid
        return (per_pixel * valid).sum() / w.sum().clamp_min(1e-12)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   eps: float = 1.0) -> torch.Tensor:
    """Binary soft Dice on the foreground probability (per image, averaged), ignored pixels dropped."""
    _check_logits_target(logits, target)
    valid = (target != ignore_index).float()
    p = logits.softmax(1)[:, 1] * valid
    t = (target == 1).float() * valid
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                    dice_weight: float | None = None) -> torch.Tensor:
    """The full-supervision loss: CE with ignore; binary tasks (C = 2) add soft Dice (weight 1 default)."""
    loss = partial_cross_entropy(logits, target, ignore_index)
    if dice_weight is None:
        dice_weight = 1.0 if logits.shape[1] == 2 else 0.0
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, target, ignore_index)
    return loss


# ----------------------------------------------------------------------------- noisy labels

def generalized_ce(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """GCE (Zhang & Sabuncu 2018): mean of (1 - p_y^q) / q; q -> 0 gives CE, q = 1 gives MAE (1 - p_y)."""
    _check_logits_target(logits, target)
    if not 0 < q <= 1:
        raise ValueError(f"GCE needs 0 < q <= 1, got {q}")
    valid = target != ignore_index
    logp_y = logits.log_softmax(1).gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
    per_pixel = (1 - torch.exp(q * logp_y)) / q
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def symmetric_ce(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
                 log_zero: float = -4.0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """SCE (Wang et al. 2019): alpha CE + beta RCE, RCE = -sum_c p_c log q_c with log 0 := ``log_zero``,
    which reduces to ``-log_zero * (1 - p_y)``."""
    _check_logits_target(logits, target)
    valid = target != ignore_index
    safe = target.masked_fill(~valid, 0)
    ce = F.cross_entropy(logits, safe, reduction="none")
    p_y = logits.softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
    rce = -log_zero * (1 - p_y)
    return ((alpha * ce + beta * rce) * valid).sum() / valid.sum().clamp_min(1)


# ----------------------------------------------------------------------------- domain adaptation

def normalized_entropy(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MinEnt (ADVENT): mean over pixels of -(1/log C) sum_c p_c log p_c, in [0, 1]; with ``valid``
    (bool ``[B, H, W]``) the mean runs over valid pixels only (crop padding is not an image)."""
    logp = logits.log_softmax(1)
    ent = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    if valid is None:
        return ent.mean()
    return (ent * valid).sum() / valid.sum().clamp_min(1)


# ----------------------------------------------------------------------------- colour affinity

def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of ``[B, 3, H, W]`` sRGB in [0, 1]; matches ``skimage.color.rgb2lab``."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = rgb.new_tensor([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / rgb.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)
    eps = 0.008856
    f = torch.where(xyz > eps, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lum = torch.where(xyz[:, 1] > eps, 116 * f[:, 1] - 16, 903.3 * xyz[:, 1])
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lum, a, b], 1)


def unfold_neighbours(x: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, K*K-1, H, W]``: each pixel's neighbours on a dilated grid, centre left out.

    Out-of-image neighbours are zeros; use :func:`neighbour_validity` to mask them.
    """
    b, c, h, w = x.shape
    pad = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=pad).view(b, c, kernel_size ** 2, h, w)
    centre = kernel_size ** 2 // 2
    return torch.cat([cols[:, :, :centre], cols[:, :, centre + 1:]], 2)


def neighbour_validity(shape_hw: tuple[int, int], kernel_size: int = 3, dilation: int = 2,
                       device=None) -> torch.Tensor:
    """``[1, K*K-1, H, W]`` float: 1 where the neighbour lies inside the image."""
    ones = torch.ones(1, 1, *shape_hw, device=device)
    return unfold_neighbours(ones, kernel_size, dilation)[:, 0]


def color_similarity(images: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """BoxInst's affinity ``S_ij = exp(-||lab_i - lab_j||_2 / 2)`` for every pixel and its dilated
    neighbours, ``[B, K*K-1, H, W]`` (0 for neighbours outside the image)."""
    lab = rgb_to_lab(images)
    diff = lab.unsqueeze(2) - unfold_neighbours(lab, kernel_size, dilation)
    sim = torch.exp(-diff.norm(dim=1) * 0.5)
    return sim * neighbour_validity(images.shape[-2:], kernel_size, dilation, images.device)


def pairwise_affinity_loss(logits: torch.Tensor, similarity: torch.Tensor, threshold: float = 0.3,
                           pixel_mask: torch.Tensor | None = None, kernel_size: int = 3,
                           dilation: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-gated pairwise term: mean of ``-log P(y_i = y_j)`` over pairs with ``S_ij >= threshold``
    (and pixel i inside ``pixel_mask`` when given; pairs leaving the image never count), where ``P(y_i = y_j) = sum_c p_ic p_jc``, computed in
    log space (log-softmax + log-sum-exp). With two classes this is BoxInst's
    ``-log(m_i m_j + (1 - m_i)(1 - m_j))``. Returns ``(loss, number of selected pairs)``; the mean divides
    by the count clamped at 1, so no selected pair gives 0, not NaN.
    """
    logp = logits.log_softmax(1)
    logp_nb = unfold_neighbours(logp, kernel_size, dilation)
    log_same = torch.logsumexp(logp.unsqueeze(2) + logp_nb, dim=1)  # [B, K*K-1, H, W]
    sel = (similarity >= threshold).float() * neighbour_validity(logits.shape[-2:], kernel_size, dilation,
                                                                   logits.device)
    if pixel_mask is not None:
        sel = sel * pixel_mask.unsqueeze(1).float()
    count = sel.sum()
    return -(log_same * sel).sum() / count.clamp_min(1), count.detach()


# ----------------------------------------------------------------------------- boxes

def dice_coefficient_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BoxInst's Dice loss per row: ``1 - 2 sum(ab) / (sum a^2 + sum b^2 + eps)`` over the last dim."""
    return 1 - 2 * (a * b).sum(-1) / ((a * a).sum(-1) + (b * b).sum(-1) + eps)


def box_projection_loss(fg_prob: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Projection term, per image: Dice(max over y of m, max over y of B) + Dice(max over x ...).

    ``fg_prob`` and ``box_mask`` are ``[N, H, W]``; returns the ``[N]`` losses. It is 0 exactly when the
    mask's projections equal the box's, e.g. for any mask tight to the box.
    """
    box_mask = box_mask.float()
    loss_x = dice_coefficient_loss(fg_prob.amax(1), box_mask.amax(1))
    loss_y = dice_coefficient_loss(fg_prob.amax(2), box_mask.amax(2))
    return loss_x + loss_y


def boxinst_loss(logits: torch.Tensor, box_mask: torch.Tensor, similarity: torch.Tensor,
                 warmup_factor: float = 1.0, pairwise_weight: float = 1.0, threshold: float = 0.3,
                 kernel_size: int = 3, dilation: int = 2, valid: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
    """BoxInst adapted to a binary semantic network (see README): background CE outside every box, the
    projection term on the union of each image's boxes, and the colour-gated pairwise term on pairs whose
    first pixel lies in a box, ramped in by ``warmup_factor``. ``valid`` (bool ``[B, H, W]``) marks real
    pixels: padding is neither box nor background."""
    if logits.shape[1] != 2:
        raise ValueError(f"boxinst_loss expects 2 logits (background, foreground), got {logits.shape[1]}")
    inside = box_mask > 0
    outside = ~inside if valid is None else (~inside & valid)
    bg_target = torch.where(outside, torch.zeros_like(box_mask, dtype=torch.long),
                            torch.full_like(box_mask, IGNORE_INDEX, dtype=torch.long))
    loss_bg = partial_cross_entropy(logits, bg_target)
    fg = logits.softmax(1)[:, 1]
    has_box = inside.flatten(1).any(1)
    loss_proj = box_projection_loss(fg[has_box], box_mask[has_box]).mean() if has_box.any() else fg.sum() * 0
    loss_pair, n_pairs = pairwise_affinity_loss(logits, similarity, threshold, inside, kernel_size, dilation)
    loss = loss_bg + loss_proj + pairwise_weight * warmup_factor * loss_pair
    return {"loss": loss, "loss_bg": loss_bg.detach(), "loss_proj": loss_proj.detach(),
            "loss_pair": loss_pair.detach(), "pairs": n_pairs, "warmup": torch.tensor(float(warmup_factor))}


# ----------------------------------------------------------------------------- semi-supervised

def confident_pseudo_label_loss(logits_strong: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                                threshold: float, valid: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch/UniMatch unlabelled loss: ``sum CE(p(u_s), y_hat) [c >= tau] [valid] / sum [valid]``.

    The denominator counts valid pixels, not confident ones (as in UniMatch). Returns the loss and the
    confident-pixel ratio among valid pixels.
    """
    if valid is None:
        valid = torch.ones_like(confidence, dtype=torch.bool)
    ce = F.cross_entropy(logits_strong, pseudo, reduction="none")
    conf_mask = (confidence >= threshold) & valid
    loss = (ce * conf_mask).sum() / valid.sum().clamp_min(1)
    ratio = conf_mask.sum().float() / valid.sum().clamp_min(1)
    return loss, ratio.detach()


def cross_pseudo_supervision(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """CPS (Chen et al. 2021): each network is trained with CE on the other's hard pseudo-labels."""
    return (F.cross_entropy(logits_a, logits_b.detach().argmax(1))
            + F.cross_entropy(logits_b, logits_a.detach().argmax(1)))


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency: mean squared difference of the class probabilities."""
    return F.mse_loss(student_logits.softmax(1), teacher_logits.detach().softmax(1))


# ----------------------------------------------------------------------------- unsupervised

def iic_joint(p1: torch.Tensor, p2: torch.Tensor, displacement: int = 0) -> torch.Tensor:
    """IIC's symmetric joint ``P[K, K]`` of two aligned posterior maps ``[B, K, H, W]``: the outer products
    of every pixel's posteriors with those of the other view at offsets up to ``displacement``, summed,
    normalised to 1 and symmetrised. Computed as one convolution (batch as input channels)."""
    if p1.shape != p2.shape:
        raise ValueError(f"views must align: {tuple(p1.shape)} vs {tuple(p2.shape)}")
    d = displacement
    joint = F.conv2d(p1.transpose(0, 1), p2.transpose(0, 1), padding=d)  # [K, K, 2d+1, 2d+1]
    joint = joint.sum((2, 3))
    joint = joint / joint.sum()
    return (joint + joint.t()) / 2


def iic_loss(p1: torch.Tensor, p2: torch.Tensor, displacement: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Negative mutual information ``-sum P_cc' [ln P_cc' - ln P_c - ln P_c']`` of :func:`iic_joint`."""
    joint = iic_joint(p1, p2, displacement).clamp_min(eps)
    pi = joint.sum(1, keepdim=True)
    pj = joint.sum(0, keepdim=True)
    return -(joint * (joint.log() - pi.log() - pj.log())).sum()


# ----------------------------------------------------------------------------- CAM

def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, out_size: tuple[int, int] | None = None
                          ) -> torch.Tensor:
    """CAM (Zhou et al. 2016): ``M_c = ReLU(sum_k w_ck f_k)``, upsampled bilinearly, divided by its max.

    ``features`` ``[B, K, h, w]``, ``weight`` ``[C, K]`` (the linear layer after global average pooling).
    Returns ``[B, C, H, W]`` in [0, 1].
    """
    cam = F.relu(torch.einsum("ck,bkhw->bchw", weight, features))
    if out_size is not None and tuple(cam.shape[-2:]) != tuple(out_size):
        cam = F.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)
    return cam / cam.flatten(2).amax(2).clamp_min(1e-5)[..., None, None]


def cam_pseudo_labels(cams: torch.Tensor, tags: torch.Tensor, fg_threshold: float = 0.3,
                      bg_threshold: float = 0.05, binary: bool = False) -> torch.Tensor:
    """Pseudo-masks from normalised CAMs of the tagged classes only.

    Multi-class: argmax over tagged classes where the max >= ``fg_threshold``, else ignore. Binary (class 1
    is the only tag that has a CAM): foreground where M >= fg_threshold, background where M <= bg_threshold
    (and everywhere in images without the tag), ignore in between.
    """
    cams = cams * tags[..., None, None]
    if binary:
        m = cams[:, 1]
        out = torch.full_like(m, IGNORE_INDEX, dtype=torch.long)
        out[m <= bg_threshold] = 0
        out[m >= fg_threshold] = 1
        return out
    best, arg = cams.max(1)
    return torch.where(best >= fg_threshold, arg, torch.full_like(arg, IGNORE_INDEX))
