"""LPIPS: a learned perceptual distance on unit-normalised deep features (Zhang et al., CVPR 2018).

    d(x, x0) = sum_l mean_{h,w} sum_c v_{l,c} * (yhat^l_{c,h,w} - yhat0^l_{c,h,w})^2

where yhat^l are the activations of trunk layer l, unit-normalised over channels at every location, and
v_l >= 0 are the per-channel weights of layer l's linear head (a bias-free 1x1 convolution).

The module is written from the paper and the reference's documented behaviour; its outputs equal the
PyPI ``lpips`` package's to 1e-6 when both use the same trunk and heads (see tests). What differs from the
reference, on purpose:

* the input range is explicit and checked (``normalize=True`` for [0, 1] input, else [-1, 1]);
* heads load strictly with an explicit key map and must be non-negative (the reference's
  ``strict=False`` silently leaves random heads when keys do not match);
* trunks use torchvision's ``weights=`` API and never start a download: missing ImageNet weights are a
  clear error that says where to put the file, and ``trunk="random"`` is an explicit option;
* small batches of the two images go through the trunk in one batched pass (same numbers, fewer calls).
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common.checkpoint import load_export, save_safetensors
from common.data import DatasetNotFoundError

NETS = ("alex", "vgg", "squeeze")
VERSIONS = ("0.0", "0.1")
EPS_NORM = 1e-10
"""Added to the channel norm before dividing, as in the reference."""


@dataclass(frozen=True)
class TrunkSpec:
    """Where LPIPS taps a torchvision ``features`` stack: the index of the last module of each block."""

    builder: str  # torchvision.models constructor name
    weights_enum: str  # torchvision.models weights enum name
    tap_ends: tuple[int, ...]
    channels: tuple[int, ...]


TRUNKS: dict[str, TrunkSpec] = {
    # AlexNet: relu1 .. relu5 (features[0:2], [2:5], [5:8], [8:10], [10:12]).
    "alex": TrunkSpec("alexnet", "AlexNet_Weights", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    # VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    "vgg": TrunkSpec("vgg16", "VGG16_Weights", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
    # SqueezeNet 1.1: 7 taps (relu1, fire3, fire5, fire7, fire8, fire9, fire10 in torchvision's indexing).
    "squeeze": TrunkSpec("squeezenet1_1", "SqueezeNet1_1_Weights", (1, 4, 7, 9, 10, 11, 12),
                         (64, 128, 256, 384, 384, 512, 512)),
}


TRUNK_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
"""Smallest height/width each trunk takes (what :func:`min_input_size` computes; a test checks both against
torch itself): AlexNet's stride-4 11x11 convolution and two 3x3 poolings, VGG16's four poolings before relu5_3,
SqueezeNet's stride-2 convolution and three ceil-mode poolings."""


def python_option(value: str) -> str:
    """How the Python API spells the trunk option in a hint (``trunk='random'``)."""
    return f"trunk={value!r}"


def cli_option(value: str) -> str:
    """How ``python -m lpips_metric.compare`` spells it (``--trunk random``)."""
    return f"--trunk {value}"


def hydra_option(value: str) -> str:
    """How ``python -m lpips_metric.train`` spells it (``model.trunk=random``)."""
    return f"model.trunk={value}"


class TrunkWeightsNotFoundError(DatasetNotFoundError):
    """ImageNet weights for a trunk are not on disk (and nothing here may download them).

    A :class:`common.data.DatasetNotFoundError` (hence a FileNotFoundError), so Hydra shells report it as one
    clear line like any other missing input. The message names the trunk option in Python syntax; a
    command line re-renders it in its own (:meth:`hint`: ``--trunk random`` for ``compare``,
    ``model.trunk=random`` for ``train``)."""

    def __init__(self, template: str):
        self.template = template  # "{trunk:VALUE}" marks each mention of the trunk option
        super().__init__(self.hint(python_option))

    def hint(self, option=python_option) -> str:
        """The message with every trunk option written by ``option(value)``."""
        return re.sub(r"\{trunk:([^}]*)\}", lambda m: option(m[1]), self.template)


class HeadLoadError(RuntimeError):
    """A head checkpoint does not match the model (keys, shapes) or holds negative weights."""


class InputRangeError(ValueError):
    """An input tensor lies outside the value range the caller declared."""


class NonFiniteInputError(InputRangeError):
    """An input tensor holds NaN or infinite values (its distance would be NaN; torchmetrics rejects them too)."""


class InputSizeError(ValueError):
    """The images are smaller than the trunk can take (its last tap would be empty)."""


# --------------------------------------------------------------------------------------------- trunks


def _check_net(net: str) -> TrunkSpec:
    if net not in TRUNKS:
        raise ValueError(f"net={net!r}: expected one of {NETS}")
    return TRUNKS[net]


def trunk_cache_path(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``net``'s trunk (``$TORCH_HOME/hub/checkpoints``)."""
    spec = _check_net(net)
    weights = getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def imagenet_trunk_available(net: str) -> bool:
    return trunk_cache_path(net).is_file()


def build_trunk(net: str, trunk: str | os.PathLike = "imagenet", *,
                trust: bool | None = None) -> nn.Sequential:
    """torchvision ``features`` of ``net``, cut after the last LPIPS tap.

    Args:
        net: alex, vgg or squeeze.
        trunk: ``"imagenet"`` (torchvision's ImageNet weights, which must already be in torch's hub cache;
            no download is ever started), ``"random"`` (torchvision's default initialisation under the
            current torch seed), or the path of a ``.safetensors`` or ``.pth`` file holding a torchvision
            state dict of the whole classifier (keys ``features.*``) or of the features only.
        trust: a ``.pth`` file is loaded as plain weights (``weights_only``), never unpickled, unless
            ``trust=True`` (see :func:`common.checkpoint.load_checkpoint`).
    """
    spec = _check_net(net)
    ctor = getattr(torchvision.models, spec.builder)
    trunk = str(trunk)
    if trunk == "random":
        model = ctor(weights=None)
    elif trunk == "imagenet":
        path = trunk_cache_path(net)
        if not path.is_file():
            raise TrunkWeightsNotFoundError(
                f"ImageNet weights for the {net} trunk are not available offline: looked for {path}. "
                f"Provide them by copying {path.name} (from {_weights_url(net)}) into {path.parent} "
                f"(torchvision's cache, $TORCH_HOME/hub/checkpoints), or pass {{trunk:/path/to/{path.name}}}. "
                "For tests and calibration experiments without them use {trunk:random}."
            )
        # The file is cached, so the weights= API loads it without any network access.
        model = ctor(weights=getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1)
    else:
        path = Path(trunk).expanduser()
        if not path.is_file():
            raise TrunkWeightsNotFoundError(f"trunk weights file {path} does not exist (set by {{trunk:{path}}})")
        model = ctor(weights=None)
        state = load_export(path, trust=trust)
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise TrunkWeightsNotFoundError(f"{path} is not a state dict of tensors")
        if any(k.startswith("features.") for k in state):
            model.load_state_dict(state, strict=False)  # classifier keys may be absent; features checked below
            missing = [k for k in model.features.state_dict() if f"features.{k}" not in state]
        else:
            missing = [k for k in model.features.state_dict() if k not in state]
            model.features.load_state_dict(state, strict=False)
        if missing:
            raise TrunkWeightsNotFoundError(f"{path} lacks trunk keys {missing[:4]}... for net={net}")
    return nn.Sequential(*list(model.features.children())[: spec.tap_ends[-1] + 1])


def _weights_url(net: str) -> str:
    return getattr(torchvision.models, TRUNKS[net].weights_enum).IMAGENET1K_V1.url


# ------------------------------------------------------------------------------------------ the metric


class ScalingLayer(nn.Module):
    """Version 0.1's input normalisation: ImageNet mean/std re-expressed for [-1, 1] input."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


def unit_normalize(feat: torch.Tensor, eps: float = EPS_NORM) -> torch.Tensor:
    """Divide every spatial location's channel vector by its L2 norm (+eps)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def official_head_path(net: str, version: str = "0.1") -> Path:
    """The head file shipped by the PyPI ``lpips`` package (``weights/v{version}/{net}.pth``)."""
    import importlib.util

    _check_net(net)
    if version not in VERSIONS:
        raise ValueError(f"version={version!r}: expected one of {VERSIONS}")
    found = importlib.util.find_spec("lpips")
    if found is None or found.origin is None:
        raise HeadLoadError("the official LPIPS heads come from the PyPI package `lpips`: pip install lpips")
    return Path(found.origin).parent / "weights" / f"v{version}" / f"{net}.pth"


class LPIPS(nn.Module):
    """The LPIPS distance as a module.

    Args:
        net: trunk, one of alex | vgg | squeeze.
        version: "0.1" (with :class:`ScalingLayer`) or "0.0" (the arXiv-v1 release without it; it has its
            own heads).
        trunk: "imagenet" | "random" | path (see :func:`build_trunk`), or an already built ``nn.Sequential``
            (used as is, shared, e.g. by the parity tests and the benchmark).
        heads: "official" (the ``lpips`` package's calibrated heads for ``net`` and ``version``),
            "random" (PyTorch's default conv initialisation clamped to >= 0: the start of training), or the
            path of a head file (the official key layout ``lin{l}.model.1.weight`` or ours ``heads.{l}.weight``,
            or a full checkpoint of this module). Ignored when ``lpips=False``.
        lpips: False gives the uncalibrated baseline (every channel weight 1).
        spatial: return an N x 1 x H x W distance map (each layer's map bilinearly upsampled) instead of N x 1 x 1 x 1.
        dropout: probability of the dropout in front of each head in training mode (reference: 0.5).
        tune_trunk: make the trunk trainable (variants "tune" and "scratch").
    """

    def __init__(self, net: str = "alex", version: str = "0.1", *, trunk: str | os.PathLike | nn.Module = "imagenet",
                 heads: str | os.PathLike | None = "official", lpips: bool = True, spatial: bool = False,
                 dropout: float = 0.0, tune_trunk: bool = False):
        super().__init__()
        spec = _check_net(net)
        if version not in VERSIONS:
            raise ValueError(f"version={version!r}: expected one of {VERSIONS}")
        self.net_name, self.version, self.use_heads, self.spatial = net, version, lpips, spatial
        self.channels = spec.channels
        self.tap_ends = spec.tap_ends
        self.scaling = ScalingLayer() if version == "0.1" else None
        self.trunk = trunk if isinstance(trunk, nn.Module) else build_trunk(net, trunk)
        self.trunk.requires_grad_(tune_trunk)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec.channels) if lpips else None
        if lpips:
            if heads in (None, "random"):
                clamp_heads_(self)
            else:
                load_heads(self, heads)
        self.eval()

    # ---- pieces, public so that training code can reuse them
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at every tap, for an already range-mapped batch in [-1, 1]."""
        if self.scaling is not None:
            x = self.scaling(x)
        taps, k = [], 0
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i == self.tap_ends[k]:
                taps.append(x)
                k += 1
        return taps

    def layer_diffs(self, feats0: Sequence[torch.Tensor], feats1: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """D^l = (unit(y0^l) - unit(y1^l))^2, one N x C_l x H_l x W_l tensor per layer."""
        return [(unit_normalize(a) - unit_normalize(b)).pow(2) for a, b in zip(feats0, feats1)]

    def weigh(self, diffs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the heads (or the plain channel sum of the baseline): one N x 1 x H_l x W_l map per layer."""
        if self.heads is None:
            return [d.sum(dim=1, keepdim=True) for d in diffs]
        return [head(self.dropout(d)) for head, d in zip(self.heads, diffs)]

    @property
    def min_size(self) -> int:
        """The smallest height and width this trunk takes (:func:`min_input_size`)."""
        if getattr(self, "_min_size", None) is None:
            self._min_size = min_input_size(self.trunk)
        return self._min_size

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, *, normalize: bool = False,
                ret_per_layer: bool = False, spatial: bool | None = None, check_range: bool = True,
                check_finite: bool = True, reduction: str = "none"):
        """Distance between two image batches.

        Args:
            in0, in1: N x C x H x W (or C x H x W) tensors of equal shape, C = 3 (RGB) or 1 (grayscale, replicated
                to 3 channels), H and W at least :attr:`min_size`. Values in [-1, 1], or in [0, 1] with
                ``normalize=True``.
            normalize: the inputs are in [0, 1] and are mapped by x -> 2x - 1.
            ret_per_layer: also return the list of per-layer terms (they sum to the distance).
            spatial: override the module's ``spatial`` setting for this call.
            check_range: verify the value range (raises :class:`InputRangeError`; in [-1, 1] mode warns when
                a batch looks like [0, 1]). Switch off only for inputs produced by code you trust.
            check_finite: reject NaN and infinite inputs (:class:`NonFiniteInputError`) instead of returning NaN.
                Each check costs one device synchronisation; a training loss may switch it (and
                ``check_range``) off.
            reduction: ``"none"`` (one distance per image pair), ``"mean"`` or ``"sum"`` over the batch (a 0-dim
                tensor; with ``spatial`` an H x W map), applied to the per-layer terms alike.
        Returns:
            N x 1 x 1 x 1 distances (N x 1 x H x W with spatial), reduced as asked, and the per-layer list if asked.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
        in0, in1 = prepare_pair(in0, in1, normalize=normalize, check_range=check_range, check_finite=check_finite)
        if min(in0.shape[2:]) < self.min_size:
            raise InputSizeError(
                f"LPIPS(net={self.net_name!r}) needs images of at least {self.min_size} x {self.min_size} pixels "
                f"(smaller ones leave its last trunk layer empty); got {in0.shape[2]} x {in0.shape[3]} (H x W). "
                "Upsample both images first, or use a net with a smaller limit "
                f"({', '.join(f'{n}: {TRUNK_MIN_SIZE[n]}' for n in NETS)})")
        n = in0.shape[0]
        if n * in0.shape[2] * in0.shape[3] <= JOINT_PASS_MAX_PIXELS:
            # small inputs: one batched trunk pass over both images amortises per-call overhead
            feats = self.features(torch.cat([in0, in1], dim=0))
            feats0, feats1 = [f[:n] for f in feats], [f[n:] for f in feats]
        else:  # large inputs: two passes keep the activations (and cache footprint) half as big
            feats0, feats1 = self.features(in0), self.features(in1)
        per_layer = self.weigh(self.layer_diffs(feats0, feats1))
        spatial = self.spatial if spatial is None else spatial
        if spatial:
            size = in0.shape[2:]
            per_layer = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in per_layer]
        else:
            per_layer = [m.mean(dim=(2, 3), keepdim=True) for m in per_layer]
        total = per_layer[0]
        for term in per_layer[1:]:
            total = total + term
        if reduction != "none":
            total, per_layer = reduce_batch(total, reduction), [reduce_batch(t, reduction) for t in per_layer]
        return (total, per_layer) if ret_per_layer else total


REDUCTIONS = ("none", "mean", "sum")


def reduce_batch(d: torch.Tensor, reduction: str) -> torch.Tensor:
    """N x 1 x h x w -> mean or sum over the N image pairs: a 0-dim tensor for h = w = 1, else an h x w map."""
    r = d.mean(dim=0) if reduction == "mean" else d.sum(dim=0)
    return r.reshape(()) if r.shape[-2:] == (1, 1) else r[0]


def min_input_size(trunk: nn.Module) -> int:
    """The smallest side s such that an s x s image leaves every layer of ``trunk`` a non-empty output.

    Walks the top-level layers with the output-size formulas of ``Conv2d`` and ``MaxPool2d`` / ``AvgPool2d``
    (``ceil_mode`` included, with PyTorch's rule that the last window must start inside the input); other
    layers (ReLU, SqueezeNet's Fire: 1x1 and padded 3x3 convolutions) keep the size."""
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    def out_size(s: int) -> int:
        for m in trunk.children() if isinstance(trunk, nn.Sequential) else [trunk]:
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                k, st, pad = pair(m.kernel_size)[0], pair(m.stride)[0], pair(m.padding)[0]
                dil = pair(getattr(m, "dilation", 1))[0]
                span = s + 2 * pad - dil * (k - 1) - 1
                if getattr(m, "ceil_mode", False):  # a window may overhang the end if it starts inside
                    o = math.ceil(span / st) + 1
                    if (o - 1) * st >= s + pad:
                        o -= 1
                else:
                    o = span // st + 1 if span >= 0 else 0
                s = o
                if s < 1:
                    return 0
        return s

    for side in range(1, 4097):
        if out_size(side) >= 1:
            return side
    raise ValueError("no input size up to 4096 fits this trunk")


def prepare_pair(in0: torch.Tensor, in1: torch.Tensor, *, normalize: bool, check_range: bool = True,
                 check_finite: bool = True):
    """Validate shapes, finiteness and value range, replicate grayscale, and map to [-1, 1]."""
    if not (torch.is_tensor(in0) and torch.is_tensor(in1)):
        raise TypeError("LPIPS expects two torch tensors")
    if in0.shape != in1.shape:
        raise ValueError(f"LPIPS compares images of equal shape; got {tuple(in0.shape)} and {tuple(in1.shape)}"
                         " (resize one of them first)")
    if in0.dim() == 3:
        in0, in1 = in0.unsqueeze(0), in1.unsqueeze(0)
    if in0.dim() != 4 or in0.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS expects N x 3 x H x W (or N x 1 x H x W grayscale) tensors; got {tuple(in0.shape)}")
    if not in0.is_floating_point():
        raise TypeError(f"LPIPS expects floating-point tensors; got {in0.dtype} (convert uint8 with x / 255 and "
                        "normalize=True)")
    if check_finite:
        _check_finite(in0, "in0")
        _check_finite(in1, "in1")
    if check_range:
        _check_range(in0, normalize, "in0")
        _check_range(in1, normalize, "in1")
    if in0.shape[1] == 1:
        in0, in1 = in0.expand(-1, 3, -1, -1), in1.expand(-1, 3, -1, -1)
    if normalize:
        in0, in1 = 2 * in0 - 1, 2 * in1 - 1
    return in0, in1


def _check_finite(x: torch.Tensor, name: str) -> None:
    x = x.detach()
    if torch.isfinite(x).all():
        return
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise NonFiniteInputError(
        f"{name} holds {n_nan} NaN and {n_inf} infinite value(s) of {x.numel()}: its LPIPS would be NaN. Fix the "
        "input (check_finite=False skips this check, e.g. inside a training loss)")


JOINT_PASS_MAX_PIXELS = 32 * 64 * 64
"""Batches up to this many pixels per image set go through the trunk in one pass (see LPIPS.forward)."""

RANGE_TOL = 1e-4
"""Slack on the range bounds, for values that went through float rounding."""


def _check_range(x: torch.Tensor, normalize: bool, name: str) -> None:
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if normalize:
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise InputRangeError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}] but normalize=True declares [0, 1] input; "
                "pass [-1, 1] input with normalize=False, or rescale")
        return
    if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
        hint = " (looks like [0, 255]: divide by 255 and pass normalize=True)" if hi > 2 else ""
        raise InputRangeError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but LPIPS expects [-1, 1] (normalize=False){hint}")
    if lo >= 0 and hi <= 1 and hi > 0:
        warnings.warn(
            f"{name} lies in [0, 1] ([{lo:.3g}, {hi:.3g}]) while normalize=False expects [-1, 1]; if the images "
            "are [0, 1] images pass normalize=True, or the distances will be wrong", stacklevel=4)


# ------------------------------------------------------------------------------------------------ heads


def _official_key(layer: int) -> str:
    return f"lin{layer}.model.1.weight"


def head_state(model: LPIPS) -> dict[str, torch.Tensor]:
    """Our head layout: ``heads.{l}.weight`` -> 1 x C_l x 1 x 1."""
    if model.heads is None:
        raise HeadLoadError("this LPIPS model has no heads (lpips=False)")
    state = {f"heads.{i}.weight": h.weight.detach().cpu().clone() for i, h in enumerate(model.heads)}
    return state


def save_heads(model: LPIPS, path: str | os.PathLike, **config) -> Path:
    """Write the heads as ``path`` (``.safetensors``) + ``<stem>.json`` (net, version and ``config``):
    no pickle, so a head file can be shared and loaded by anyone without running code."""
    return save_safetensors(path, {"heads": head_state(model), "net": str(model.net_name),
                                   "version": str(model.version), **config})


def load_heads(model: LPIPS, source: str | os.PathLike, *, trust: bool | None = None) -> LPIPS:
    """Load head weights strictly: every layer present, exact shapes, no stray keys, all weights >= 0.

    ``source``: "official", a ``.safetensors`` export of :func:`save_heads`, or a ``.pth`` (the official
    layout, our older head files, a training checkpoint). A ``.pth`` is loaded as plain weights, never
    unpickled, unless ``trust=True``: head files are what people download from others.
    """
    if model.heads is None:
        raise HeadLoadError("cannot load heads into an lpips=False (baseline) model")
    path = official_head_path(model.net_name, model.version) if str(source) == "official" else Path(source)
    if not path.is_file():
        raise HeadLoadError(f"head file {path} does not exist")
    raw = load_export(path, trust=trust)
    if not isinstance(raw, dict):
        raise HeadLoadError(f"{path} holds a {type(raw).__name__}, not a dict of head weights")
    if "heads" in raw and isinstance(raw["heads"], dict):
        if raw.get("net", model.net_name) != model.net_name or raw.get("version", model.version) != model.version:
            raise HeadLoadError(f"{path} holds heads for net={raw.get('net')} v{raw.get('version')}, "
                                f"not net={model.net_name} v{model.version}")
        raw = raw["heads"]
    elif "model" in raw and isinstance(raw["model"], dict):
        raw = {k: v for k, v in raw["model"].items() if k.startswith("heads.")}
    n = len(model.heads)
    ours = {f"heads.{i}.weight" for i in range(n)}
    official = {_official_key(i) for i in range(n)}
    keys = set(raw)
    if keys == ours:
        mapping = {f"heads.{i}.weight": i for i in range(n)}
    elif keys == official:
        mapping = {_official_key(i): i for i in range(n)}
    else:
        raise HeadLoadError(
            f"{path}: head keys do not match net={model.net_name} ({n} layers). Expected "
            f"{sorted(official)} or {sorted(ours)}; got {sorted(keys)}")
    with torch.no_grad():
        for key, i in mapping.items():
            w, target = raw[key], model.heads[i].weight
            if tuple(w.shape) != tuple(target.shape):
                raise HeadLoadError(f"{path}: {key} has shape {tuple(w.shape)}, expected {tuple(target.shape)}")
            if (w < 0).any():
                raise HeadLoadError(f"{path}: {key} has negative weights; LPIPS heads must be >= 0")
            target.copy_(w)
    return model


def clamp_heads_(model: LPIPS) -> None:
    """Project the head weights onto v >= 0. Only the heads: trunk 1x1 convs (SqueezeNet's Fire) stay free."""
    if model.heads is None:
        return
    with torch.no_grad():
        for head in model.heads:
            head.weight.clamp_(min=0)


# ------------------------------------------------------------------------------------------- functional


@functools.lru_cache(maxsize=8)
def _cached_model(net: str, version: str, trunk: str, heads: str, lpips: bool) -> LPIPS:
    return LPIPS(net, version, trunk=trunk, heads=heads, lpips=lpips)


def lpips(in0: torch.Tensor, in1: torch.Tensor, *, net: str = "alex", version: str = "0.1",
          normalize: bool = False, trunk: str = "imagenet", heads: str = "official", use_heads: bool = True,
          spatial: bool = False, ret_per_layer: bool = False, reduction: str = "none", check_finite: bool = True):
    """Functional LPIPS: builds (once, then caches) the model for these options and evaluates it.

    ``normalize=True`` declares [0, 1] input; otherwise input must be in [-1, 1]. Gradients flow to the inputs.
    ``reduction`` and ``check_finite``: see :meth:`LPIPS.forward`.
    """
    model = _cached_model(net, version, str(trunk), str(heads), use_heads).to(in0.device)
    return model(in0, in1, normalize=normalize, spatial=spatial, ret_per_layer=ret_per_layer, reduction=reduction,
                 check_finite=check_finite)


# ------------------------------------------------------------------------------------- ranking network G


class RankingHead(nn.Module):
    """G: maps the distances (d0, d1) of a triplet to P(x1 judged closer), per location.

    Input channels [d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps)], eps = 0.1; three 1x1 convs with bias,
    LeakyReLU(0.2) between them, sigmoid at the end. Trained jointly with the heads, unused at test time.
    """

    def __init__(self, hidden: int = 32, eps: float = 0.1):
        super().__init__()
        self.eps = eps
        self.net = nn.Sequential(
            nn.Conv2d(5, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 1, 1), nn.Sigmoid(),
        )

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        x = torch.cat([d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)], dim=1)
        return self.net(x)


def ranking_loss(g: RankingHead, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """BCE between G(d0, d1) and h, the fraction of raters who judged x1 closer to the reference.

    (The reference passes 2h - 1 and maps it back with (j + 1) / 2; we skip the round trip.)
    """
    p = g(d0, d1)
    return F.binary_cross_entropy(p, judge.to(p.dtype).view_as(p))


def trunk_state_from_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the ``lpips`` package's trunk keys (``[net.]slice{k}.{i}.*``) to ours (``{i}.*``).

    Used to give our model exactly the trunk of a reference model (parity tests, benchmark).
    """
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "net":
            parts = parts[1:]
        if not parts or not parts[0].startswith("slice"):
            continue
        out[".".join(parts[1:])] = value
    return out
