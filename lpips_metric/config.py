"""Typed configs of ``lpips_metric`` (the library's dataclasses and the Hydra schemas, in one place).

``MetricTrainConfig`` and ``DataConfig`` are what :func:`lpips_metric.training.train_metric` takes; the Hydra
shell's groups ``model`` and ``data`` are typed by them (``schema/lpips_metric/<group>``) and the whole
composed config by :class:`LpipsConfig` (``schema/lpips_metric/config``). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto

from omegaconf import MISSING

from common.schema import Choice, RootConfig, register


class Net(Choice):
    """The trunk network."""

    alex = auto()
    vgg = auto()
    squeeze = auto()


class Variant(Choice):
    """The paper's three ways to train the metric."""

    lin = auto()
    """Frozen trunk; heads and G trained."""
    tune = auto()
    """ImageNet-initialised trunk trained with the heads."""
    scratch = auto()
    """Randomly initialised trunk trained with the heads."""


@dataclass
class MetricTrainConfig:
    """The ``model`` group of ``lpips_metric/conf``: what is trained and how (reference defaults)."""

    net: Net = Net.alex
    """Trunk: alex | vgg | squeeze."""
    version: str = "0.1"
    """0.1 (ScalingLayer) or 0.0."""
    variant: Variant = Variant.lin
    """lin (frozen trunk) | tune (ImageNet init, trained) | scratch (random init, trained)."""
    trunk: str = "auto"
    """Trunk weights for lin: imagenet (must be in torch's cache) | random | auto (imagenet when cached, else
    random, with a warning; the choice is logged and exported) | a .pth path. tune needs imagenet (or a path);
    scratch always starts random."""
    dropout: float = 0.5
    """Dropout before each head during training."""
    lr: float = 1e-4
    """Adam learning rate (heads, G and, for tune/scratch, the trunk)."""
    beta1: float = 0.5
    """Adam beta1 (the reference's 0.5)."""
    nepoch: int = 5
    """Epochs at the base learning rate (the reference trains nepoch + nepoch_decay epochs in total)."""
    nepoch_decay: int = 5
    """Epochs over which the rate falls by lr / nepoch_decay after each epoch."""
    rank_hidden: int = 32
    """Width of G."""

    def __post_init__(self):
        if str(self.version) not in ("0.0", "0.1"):
            raise ValueError(f"model.version={self.version}: expected 0.0 or 0.1")


@dataclass
class DataConfig:
    """The ``data`` group: a BAPPS-format root, or the synthetic stand-in written on first use."""

    root: str | None = None
    """BAPPS-format root (with 2afc/ and jnd/). null: the synthetic set in synthetic_dir."""
    synthetic_dir: str = "runs/bapps_synthetic"
    """Where the synthetic set is written/reused when root is null."""
    n_train: int = 3000
    """Synthetic 2AFC training triplets per split."""
    n_val: int = 300
    """Synthetic 2AFC validation triplets per split."""
    n_jnd: int = 300
    """Synthetic JND pairs per split."""
    synthetic_seed: int = 0
    """Seed of the synthetic set (part of its folder name)."""
    train_splits: list[str] = field(default_factory=lambda: ["traditional", "cnn", "mix"])
    """2AFC training splits (folder names under 2afc/train; the synthetic set also has ``within``)."""
    val_splits: list[str] = field(default_factory=lambda: ["traditional", "cnn", "superres", "deblur", "color",
                                                           "frameinterp"])
    """2AFC validation splits (each scored; 2afc_mean averages them)."""
    jnd_splits: list[str] = field(default_factory=lambda: ["traditional", "cnn"])
    """JND splits (mAP each; jnd_mean averages them)."""
    load_size: int = 64
    """Patches are resized to load_size x load_size."""
    preload: bool = True
    """Decode every patch once into memory (64 x 64 patches: ~12 KB each)."""


@dataclass
class LpipsConfig(RootConfig):
    """``python -m lpips_metric.train``: the shared keys plus the ``model`` and ``data`` groups."""

    model: MetricTrainConfig = MISSING
    """Group ``model``: lin | tune | scratch."""
    data: DataConfig = MISSING
    """Group ``data``: synthetic | bapps."""


register("lpips_metric", LpipsConfig, {"model": MetricTrainConfig, "data": DataConfig})
