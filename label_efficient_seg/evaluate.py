"""Evaluation of a network (or of label maps) on a split, and the non-learned k-means reference.

Multi-class scores come from one confusion matrix over the split (void ignored); binary tasks add
per-image mDice / mIoU and the pooled Dice; nuclei add object F1 at IoU 0.5 and AJI on the connected
components of the predicted foreground; unsupervised networks are scored after Hungarian matching of
clusters to classes over the whole split.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage as ndi

from common.distributed import gather_shards, shard

from . import metrics as M
from .data import SegSet, to_tensor_image
from .losses import rgb_to_lab


@torch.no_grad()
def predict_logits(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[C, H, W]`` logits of one uint8 RGB image at its full size (the network pads internally)."""
    x = to_tensor_image(image).unsqueeze(0).to(device)
    return model(x)[0].float().cpu()


@torch.no_grad()
def adapt_bn_statistics(model: nn.Module, images: list[np.ndarray], device: torch.device | str = "cpu",
                        batch_size: int = 8, max_images: int = 128) -> nn.Module:
    """AdaBN (Li et al. 2016): a copy of ``model`` whose BatchNorm running statistics are re-estimated on
    ``images`` alone (at most ``max_images``, spread evenly; whole images, no augmentation). Each layer's
    statistics become the average of its batch statistics over batches of same-sized images (momentum
    None). The weights are untouched, and so is ``model``: the training run never sees this copy."""
    adapted = copy.deepcopy(model)
    bns = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not images:
        return adapted.eval()
    if len(images) > max_images:
        images = [images[i] for i in np.unique(np.linspace(0, len(images) - 1, max_images).round().astype(int))]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    adapted.train()
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for img in images:
        by_shape.setdefault(img.shape, []).append(img)
    for group in by_shape.values():
        for k in range(0, len(group), batch_size):
            adapted(torch.stack([to_tensor_image(im) for im in group[k:k + batch_size]]).to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return adapted.eval()


def predicted_instances(fg: np.ndarray) -> np.ndarray:
    """Instances as 8-connected components of the predicted foreground (no watershed split)."""
    lab, _ = ndi.label(fg.astype(bool), structure=np.ones((3, 3), dtype=bool))
    return lab


@torch.no_grad()
def evaluate_model(model: nn.Module, ds: SegSet, device: torch.device | str = "cpu",
                   num_clusters: int | None = None, max_images: int | None = None,
                   keep_predictions: int = 0, sharded: bool = False) -> dict:
    """Scores of ``model`` on ``ds``; with ``num_clusters`` the outputs are clusters (Hungarian-matched).

    Returns a flat dict of floats (plus ``"predictions"``: the first ``keep_predictions`` label maps).
    ``sharded=True`` (every rank of a torchrun job calls it): each rank predicts its share of the images
    (``common.distributed.shard``), the label maps are gathered in image order, and every rank scores them
    all, so the scores equal a single process's exactly.
    """
    was_training = model.training
    model.eval()
    n = len(ds) if max_images is None else min(max_images, len(ds))
    k = num_clusters or ds.num_classes
    order = list(range(n))
    mine = shard(order) if sharded else order
    # int16 maps: what travels between ranks (classes and clusters are few; argmax indices, no rounding)
    maps = [predict_logits(model, ds.images[i], device).argmax(0).to(torch.int16).numpy() for i in mine]
    if sharded:
        maps = gather_shards(maps, n)
    conf = torch.zeros(ds.num_classes, k, dtype=torch.int64)
    meter = M.SegMeter(ds.num_classes) if num_clusters is None else None
    f1s, ajis, preds = [], [], []
    for i, pred_map in enumerate(maps):
        pred = torch.from_numpy(pred_map).long()
        target = torch.from_numpy(ds.masks[i])
        if meter is not None:
            meter.update(pred[None], target[None])
        else:
            conf += M.confusion_matrix(pred, target, ds.num_classes, num_pred_classes=k)
        if ds.instances is not None and ds.num_classes == 2 and num_clusters is None:
            pinst = predicted_instances(pred.numpy() == 1)
            f1s.append(M.object_f1(ds.instances[i], pinst)["f1"])
            ajis.append(M.aggregated_jaccard_index(ds.instances[i], pinst))
        if i < keep_predictions:
            preds.append(pred.numpy())
    model.train(was_training)
    if meter is not None:
        out = meter.compute()
    else:
        scores, mapping = M.hungarian_scores(conf)
        out = scores.as_dict()
        preds = [mapping[p].clip(min=0) for p in preds]  # show clusters in their matched class colours
    if f1s:
        out["object_f1"] = float(np.mean(f1s))
        out["aji"] = float(np.mean(ajis))
    out["predictions"] = preds
    return out


def evaluate_label_maps(maps: list[np.ndarray], ds: SegSet, ignore_unlabelled: bool = True) -> dict:
    """Quality of pseudo-labels / weak labels against the ground truth: mIoU over the pixels that carry a
    label (``ignore_unlabelled``) and the labelled share (coverage)."""
    meter = M.SegMeter(ds.num_classes)
    labelled = total = 0
    for m, gt in zip(maps, ds.masks):
        gt = gt.copy()
        keep = m != M.IGNORE_INDEX
        if ignore_unlabelled:
            gt[~keep] = M.IGNORE_INDEX
        pred = np.where(keep, m, 0)
        meter.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
        labelled += int(keep.sum())
        total += keep.size
    out = {k: v for k, v in meter.compute().items() if k in ("miou", "pixel_acc", "mdice")}
    out["coverage"] = labelled / max(total, 1)
    return out


def kmeans_segmentation(ds: SegSet, k: int, seed: int = 0, sample_per_image: int = 2000,
                        xy_weight: float = 1.0) -> dict:
    """The required non-learned reference of the unsupervised row: one k-means over per-pixel
    (L*, a*, b*, x, y) features (x, y scaled to [0, 100] like L*, times ``xy_weight``), fitted on pixels
    sampled from every image, then every pixel assigned; scored with Hungarian matching over the split."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)

    def feats(img: np.ndarray) -> np.ndarray:
        lab = rgb_to_lab(to_tensor_image(img)[None])[0].permute(1, 2, 0).numpy()
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        xy = np.stack([yy / max(h - 1, 1), xx / max(w - 1, 1)], -1) * 100 * xy_weight
        return np.concatenate([lab, xy], -1).reshape(-1, 5)

    sample = []
    for img in ds.images:
        f = feats(img)
        sample.append(f[rng.choice(len(f), size=min(sample_per_image, len(f)), replace=False)])
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit(np.concatenate(sample))
    conf = torch.zeros(ds.num_classes, k, dtype=torch.int64)
    for img, gt in zip(ds.images, ds.masks):
        pred = km.predict(feats(img)).reshape(gt.shape)
        conf += M.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), ds.num_classes,
                                   num_pred_classes=k)
    scores, _ = M.hungarian_scores(conf)
    return scores.as_dict()
