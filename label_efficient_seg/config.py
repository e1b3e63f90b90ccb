"""Typed configs of ``label_efficient_seg`` (the library's dataclasses and the Hydra schemas, in one place).

``DataConfig``, ``MethodConfig``, ``ModelConfig`` and ``OptimConfig`` are what
:func:`label_efficient_seg.experiment.run_experiment` takes; the Hydra shell's groups ``data``, ``method``,
``model`` and ``optim`` are typed by them (``schema/label_efficient_seg/<group>``) and the whole composed
config by :class:`SegConfig` (``schema/label_efficient_seg/config``). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import auto

from omegaconf import MISSING

from common.schema import Choice, RootConfig, register


class Dataset(Choice):
    camvid = auto()
    kvasir = auto()
    cvc = auto()
    dsb = auto()
    shapes = auto()
    """Synthetic shapes (tests and smoke runs)."""


class DAVal(Choice):
    """Where domain-adaptation runs select their checkpoint."""

    target = auto()
    """A labelled target validation split, disjoint from the target training and test images."""
    source = auto()
    """The source validation split (strict unsupervised DA: no target label at all)."""


class Method(Choice):
    """The survey's baselines (``label_efficient_seg.experiment.METHODS`` describes each)."""

    full = auto()
    subset = auto()
    fixmatch = auto()
    mean_teacher = auto()
    cps = auto()
    cam = auto()
    boxinst = auto()
    filled_boxes = auto()
    scribbles = auto()
    points = auto()
    noisy = auto()
    source_only = auto()
    minent = auto()
    oracle = auto()
    iic = auto()


class Loss(Choice):
    """Loss on (noisy) masks."""

    ce = auto()
    gce = auto()
    """Generalised cross-entropy (q = gce_q)."""
    sce = auto()
    """Symmetric cross-entropy (sce_alpha CE + sce_beta reverse CE)."""


class NoiseLevel(Choice):
    low = auto()
    medium = auto()
    high = auto()


class RampShape(Choice):
    """How the weight of a consistency / pairwise term grows from 0 to 1 once it starts."""

    linear = auto()
    """t (BoxInst's warm-up factor)."""
    sigmoid = auto()
    """exp(-5 (1 - t)^2) (Laine & Aila 2017; the ramp of Mean Teacher and of common CPS code)."""


class TestBN(Choice):
    """Which BatchNorm statistics a model is evaluated with (validation and test)."""

    trained = auto()
    """The running statistics accumulated in training (source batches only for source_only / minent)."""
    target = auto()
    """Re-estimated on the unlabelled target training images before every evaluation (AdaBN)."""


class PointExpansion(Choice):
    """Extra labels derived from the clicks of point supervision (binary tasks with instances)."""

    none = auto()
    """Only the clicks."""
    voronoi = auto()
    """The edges of the Voronoi partition of the object clicks are labelled background (Qu et al. 2019)."""


class ClickMode(Choice):
    centroid = auto()
    """The object pixel nearest to its centroid."""
    random = auto()
    """A uniformly random interior pixel."""


@dataclass
class DataConfig:
    """The ``data`` group: which dataset, its split and the training crops."""

    dataset: Dataset = Dataset.camvid
    """camvid | kvasir | cvc | dsb | shapes (synthetic, for tests and smoke runs)."""
    size: int = 128
    """Side to which polyp images are resized (256 on disk)."""
    crop: int = 128
    """Training crop side (CamVid 240x180 -> 128x128 crops; full images at evaluation)."""
    scale_min: float = 0.75
    """Smallest random rescale of a training image before cropping."""
    scale_max: float = 1.25
    """Largest random rescale of a training image before cropping."""
    train_limit: int | None = None
    """Keep only the first N training images (smoke / quick profiles)."""
    eval_limit: int | None = None
    """Evaluate on the first N images of the validation / test split."""
    split_seed: int = 0
    """Seed of the fixed train/val/test split of the polyp sets and of the DSB folds."""
    fold: int = 0
    """DSB2018 5-fold cross-validation fold."""
    val_fraction: float = 0.15
    """Validation carved from the training images where the evaluated domain has no validation split:
    DSB2018 (seeded, from the four training folds) and the CamVid dusk target (the last frames of
    0001TP's training sequence in time order; its test frames come after them)."""
    da_val: DAVal = DAVal.target
    """Domain adaptation: select checkpoints on the target validation split (target) or the source
    validation split (source)."""
    target: str | None = None
    """Domain adaptation target: cvc (from kvasir) or camvid_dusk (from CamVid day sequences); for shapes
    any value turns on the synthetic domain shift. null: the method's default target."""
    shapes_n: int = 48
    """Synthetic shapes: training images."""
    shapes_size: int = 32
    """Synthetic shapes: image side."""
    shapes_classes: int = 3
    """Synthetic shapes: classes, background included."""


@dataclass
class MethodConfig:
    """The ``method`` group: the baseline and its hyperparameters (each method reads its own)."""

    name: Method = Method.full
    """One of METHODS."""
    labelled_fraction: float = 1.0
    """Fraction of training images with masks (subset and semi-supervised methods: 1/8 by default)."""
    loss: Loss = Loss.ce
    """Noisy labels: ce | gce | sce."""
    gce_q: float = 0.7
    """GCE exponent q."""
    sce_alpha: float = 0.1
    """SCE weight of the cross-entropy term."""
    sce_beta: float = 1.0
    """SCE weight of the reverse cross-entropy term."""
    noise_level: NoiseLevel = NoiseLevel.medium
    """Synthetic mask noise of method=noisy: low | medium | high."""
    pairwise_weight: float = 1.0
    """BoxInst / points / scribbles: weight of the pairwise colour-affinity term."""
    pairwise_threshold: float = 0.3
    """Colour similarity above which neighbouring pixels are pulled to the same label."""
    warmup_fraction: float | None = None
    """Pairwise / consistency terms ramp from 0 to full weight over this fraction of the training steps
    (null: the method's default, ``experiment.RAMP_DEFAULTS``)."""
    ramp_start_fraction: float | None = None
    """The pairwise / consistency term is off before this fraction of training (a supervised warm-up;
    null: the method's default)."""
    ramp_shape: RampShape | None = None
    """linear | sigmoid ramp of the pairwise / consistency weight (null: the method's default)."""
    balance_classes: bool = True
    """Scribbles / points: class-balanced partial CE (inverse frequency of each class among the labelled
    pixels of the training split), so 21 foreground clicks do not outvote one background click."""
    scribble_erosion: int = 3
    """Scribbles: erosion radius of the simulated strokes."""
    scribble_drop: float = 0.0
    """Scribbles: fraction of objects left without a stroke."""
    click_mode: ClickMode = ClickMode.centroid
    """Points: where the simulated click lands (centroid | random)."""
    n_background_clicks: int | None = None
    """Points: a fixed number of background clicks per image (null: background_click_ratio)."""
    background_click_ratio: float = 1.0
    """Points: background clicks per object click in each image (at least one), when
    n_background_clicks is null."""
    point_expansion: PointExpansion = PointExpansion.voronoi
    """Points on a binary task: none | voronoi (Voronoi edges of the object clicks labelled background)."""
    tau: float = 0.95
    """FixMatch confidence threshold (from-scratch runs may need a lower one; a deviation if changed)."""
    ema_alpha: float = 0.99
    """Mean teacher: EMA decay of the teacher."""
    consistency_weight: float = 10.0
    """Mean teacher: weight of the consistency loss."""
    cps_weight: float = 1.5
    """CPS: weight of the cross pseudo-supervision loss."""
    entropy_weight: float = 0.001
    """MinEnt: weight of the target entropy."""
    test_bn: TestBN | None = None
    """BatchNorm statistics at evaluation: trained | target (null: target for minent, trained otherwise;
    source_only also reports its test score with target statistics as ``test_adabn``)."""
    tag_crop: int = 96
    """CAM: crop side of the image-tag classifier."""
    tag_min_fraction: float = 0.01
    """CAM: a class is tagged when it covers at least this fraction of the image."""
    cam_fg: float = 0.3
    """CAM: activation above which a pixel becomes a foreground pseudo-label."""
    cam_bg: float = 0.05
    """CAM: activation below which a pixel becomes background."""
    cam_classifier_epochs: int | None = None
    """Epochs of the CAM classifier (null: the trainer's max_epochs)."""
    overcluster_factor: int = 4
    """IIC: clusters of the over-clustering head, as a multiple of the classes."""
    iic_displacement: int = 1
    """IIC: pixel displacement between the paired views."""


@dataclass
class ModelConfig:
    """The ``model`` group: the U-Net."""

    base: int = 16
    """Channels of the first level (doubling at each level down)."""
    depth: int = 4
    """Down / up levels."""


@dataclass
class OptimConfig:
    """The ``optim`` group: Adam with poly decay."""

    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """Adam weight decay."""
    poly_power: float = 0.9
    """The rate is lr (1 - step / total)^poly_power."""


@dataclass
class SegConfig(RootConfig):
    """``python -m label_efficient_seg.train``: the shared keys plus the four groups."""

    data: DataConfig = MISSING
    """Group ``data``: camvid | kvasir | dsb | shapes."""
    method: MethodConfig = MISSING
    """Group ``method``: one file per baseline."""
    model: ModelConfig = MISSING
    """Group ``model``: unet."""
    optim: OptimConfig = MISSING
    """Group ``optim``: adam."""


register("label_efficient_seg", SegConfig,
         {"data": DataConfig, "method": MethodConfig, "model": ModelConfig, "optim": OptimConfig})
