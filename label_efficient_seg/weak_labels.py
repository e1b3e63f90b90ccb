"""Weak labels derived from dense masks by documented, seeded procedures.

Every generator takes a numpy label map (``H x W``; class ids, ``IGNORE_INDEX`` = void) and, where it
draws random numbers, an ``np.random.Generator``, so a (seed, image index) pair always yields the same weak
label. Sparse labels (scribbles, points) are returned as *partial label maps*: the class on annotated
pixels and ``IGNORE_INDEX`` everywhere else, which is exactly what partial cross-entropy consumes.

Annotation costs (seconds per image, recalled from the literature the survey cites and not verified here;
written beside the results only to order the label types by cost):
full polygon masks ~ 239 s/image on VOC-like scenes (Bearman et al. 2016), image tags ~ 20 s, points
~ 22 s, scribbles ~ 30-35 s (Lin et al. 2016), boxes ~ 7 s per object (Papadopoulos et al. 2017).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology, segmentation, transform

from .metrics import IGNORE_INDEX

# seconds per image (boxes: per object) reported in the cited annotation studies; see module docstring
ANNOTATION_SECONDS = {
    "full": 239.0, "tags": 20.0, "points": 22.1, "scribbles": 32.5, "boxes_per_object": 7.0,
    "none": 0.0, "noisy": 239.0,
}


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H x W), got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"a label map must hold integers, got dtype {mask.dtype}")
    return mask


def _components(mask: np.ndarray, ignore_index: int = IGNORE_INDEX, classes=None):
    """Yield (class, boolean component) for every 8-connected region of one class (void excluded)."""
    structure = np.ones((3, 3), dtype=bool)
    for c in np.unique(mask):
        if c == ignore_index or (classes is not None and c not in classes):
            continue
        lab, n = ndi.label(mask == c, structure=structure)
        for k in range(1, n + 1):
            yield int(c), lab == k


# ----------------------------------------------------------------------------- tags

def image_tags(mask: np.ndarray, num_classes: int, min_fraction: float = 0.01,
               ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Multi-hot tags: class c is present when it covers >= ``min_fraction`` of the (non-void) pixels.

    Called on training *crops* (crop-level tags), because whole CamVid images contain nearly every class.
    """
    mask = _check_mask(mask)
    valid = mask != ignore_index
    n = max(int(valid.sum()), 1)
    counts = np.bincount(mask[valid].ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return (counts / n >= min_fraction).astype(np.float32) * (counts > 0)


# ----------------------------------------------------------------------------- boxes

def tight_boxes(instances: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Tight boxes ``(y0, x0, y1, x1)`` (inclusive) of every instance id > 0 of an instance map."""
    instances = _check_mask(instances)
    boxes = []
    for sl in ndi.find_objects(instances.astype(np.int64)):
        if sl is not None:
            boxes.append((sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1))
    return boxes


def foreground_instances(mask: np.ndarray, foreground: int = 1) -> np.ndarray:
    """Instance map of a binary mask: 8-connected components of ``mask == foreground``."""
    lab, _ = ndi.label(_check_mask(mask) == foreground, structure=np.ones((3, 3), dtype=bool))
    return lab


def boxes_to_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """Union of the boxes as a {0,1} uint8 map (1 inside any box)."""
    out = np.zeros(shape, dtype=np.uint8)
    h, w = shape
    for y0, x0, y1, x1 in boxes:
        y0, x0 = max(int(y0), 0), max(int(x0), 0)
        y1, x1 = min(int(y1), h - 1), min(int(x1), w - 1)
        if y1 >= y0 and x1 >= x0:
            out[y0:y1 + 1, x0:x1 + 1] = 1
    return out


def rescale_box(box_xyxy, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Kvasir's ``xmin, ymin, xmax, ymax`` in original pixels -> ``(y0, x0, y1, x1)`` in the resized image.

    Pixel-edge convention: [xmin, xmax] covers edges xmin .. xmax, scaled by to/from, floor/ceil outwards.
    """
    xmin, ymin, xmax, ymax = box_xyxy
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    y0, x0 = int(np.floor(ymin * sy)), int(np.floor(xmin * sx))
    y1, x1 = int(np.ceil(ymax * sy)) - 1, int(np.ceil(xmax * sx)) - 1
    return (max(y0, 0), max(x0, 0), min(y1, to_hw[0] - 1), min(x1, to_hw[1] - 1))


# ----------------------------------------------------------------------------- scribbles

def scribbles(mask: np.ndarray, rng: np.random.Generator, erosion_radius: int = 3,
              drop_fraction: float = 0.0, min_area: int = 10,
              ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Skeleton scribbles: erode every class component by ``erosion_radius`` then skeletonize it.

    Components smaller than ``min_area`` get no stroke; when erosion empties a component the radius is
    halved until something is left (so thin objects such as poles keep a stroke). A fraction
    ``drop_fraction`` of the strokes is dropped at random. Void is never scribbled, and every scribbled
    pixel lies inside its own region, since erosion and skeletonization only remove pixels.
    """
    mask = _check_mask(mask)
    out = np.full(mask.shape, ignore_index, dtype=np.int64)
    for c, comp in _components(mask, ignore_index):
        if comp.sum() < min_area or rng.random() < drop_fraction:
            continue
        r = erosion_radius
        core = comp
        while r > 0:
            core = ndi.binary_erosion(comp, structure=morphology.disk(r), border_value=1)
            if core.any():
                break
            r //= 2
        if r == 0:
            core = comp
        stroke = morphology.skeletonize(core)
        out[stroke & comp] = c
    return out


# ----------------------------------------------------------------------------- points

def interior_point(component: np.ndarray, rng: np.random.Generator | None = None,
                   mode: str = "centroid") -> tuple[int, int]:
    """A pixel inside ``component``: the centroid when it falls inside, else the interior pixel closest
    to it (non-convex shapes), or a uniformly random interior pixel when ``mode="random"``."""
    ys, xs = np.nonzero(component)
    if len(ys) == 0:
        raise ValueError("empty component has no interior point")
    if mode == "random":
        if rng is None:
            raise ValueError("mode='random' needs an rng")
        k = int(rng.integers(len(ys)))
        return int(ys[k]), int(xs[k])
    if mode != "centroid":
        raise ValueError(f"unknown click mode {mode!r} (centroid | random)")
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(ys[k]), int(xs[k])


def point_labels(mask: np.ndarray, rng: np.random.Generator, instances: np.ndarray | None = None,
                 mode: str = "centroid", n_background: int | None = None, min_background_distance: int = 5,
                 background_class: int = 0, ignore_index: int = IGNORE_INDEX, background_ratio: float = 1.0,
                 voronoi: bool = False) -> np.ndarray:
    """One click per object plus background clicks, as a partial label map.

    Objects are the ids of ``instances`` when given (nuclei), else the class components of ``mask``
    other than the background class. Background clicks: ``n_background`` per image when given, else
    ``round(background_ratio x number of object clicks)``, at least 1 (the stated fg:bg ratio, so that a
    crowded nuclei image does not get 3 background clicks against 60 foreground ones). They are drawn
    among background pixels at least ``min_background_distance`` pixels (Euclidean) from any object;
    fewer when there is no room. ``voronoi``: the edges of the Voronoi partition of the object clicks are
    labelled background too (:func:`voronoi_edges`; Qu et al. 2019), except where a click lies.
    """
    mask = _check_mask(mask)
    out = np.full(mask.shape, ignore_index, dtype=np.int64)
    if instances is not None:
        instances = _check_mask(instances)
        if instances.shape != mask.shape:
            raise ValueError(f"instances shape {instances.shape} != mask shape {mask.shape}")
        objects = [(int(np.bincount(mask[instances == i]).argmax()), instances == i)
                   for i in np.unique(instances) if i != 0]
    else:
        classes = [c for c in np.unique(mask) if c not in (background_class, ignore_index)]
        objects = list(_components(mask, ignore_index, classes=classes))
    objmask = np.zeros(mask.shape, dtype=bool)
    clicks = []
    for c, comp in objects:
        y, x = interior_point(comp, rng, mode)
        out[y, x] = c
        clicks.append((y, x))
        objmask |= comp
    if n_background is None:
        if background_ratio < 0:
            raise ValueError(f"background_ratio must be >= 0, got {background_ratio}")
        n_background = max(1, int(round(background_ratio * len(objects))))
    if n_background > 0:
        far = ndi.distance_transform_edt(~objmask) >= min_background_distance
        far &= mask == background_class
        ys, xs = np.nonzero(far)
        if len(ys):
            pick = rng.choice(len(ys), size=min(n_background, len(ys)), replace=False)
            out[ys[pick], xs[pick]] = background_class
    if voronoi and len(clicks) >= 2:
        edges = voronoi_edges(clicks, mask.shape)
        out[edges & (out == ignore_index)] = background_class
    return out


def voronoi_edges(points: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean map of the edges of the Voronoi partition of ``points`` ((y, x) pixels): the pixels of each
    cell that touch another cell (one pixel on each side of every edge). With one click per nucleus each
    cell holds one nucleus, so its edges run between nuclei: Qu et al. (2019) label them background."""
    seeds = np.zeros(shape, dtype=np.int64)
    for k, (y, x) in enumerate(points, 1):
        seeds[y, x] = k
    if len(points) < 2:
        return np.zeros(shape, dtype=bool)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    return segmentation.find_boundaries(cells, mode="inner")


# ----------------------------------------------------------------------------- noisy masks

NOISE_LEVELS = {
    # r_max: per-object dilation/erosion radius; jitter: max affine shift (px) / rotation (deg);
    # flip: fraction of SLIC superpixels given a wrong class
    "low": {"r_max": 2, "jitter": 1.0, "flip": 0.02},
    "medium": {"r_max": 4, "jitter": 2.0, "flip": 0.05},
    "high": {"r_max": 8, "jitter": 4.0, "flip": 0.10},
}


def dilate_erode_objects(mask: np.ndarray, rng: np.random.Generator, r_max: int,
                         ignore_index: int = IGNORE_INDEX, background_class: int | None = None) -> np.ndarray:
    """Dilate or erode each object (class component) by a random radius r in 1..r_max.

    Dilation paints the object's class over its neighbourhood (void included); erosion hands the removed
    pixels to the nearest label outside the object. With ``background_class`` set (binary tasks) only the
    non-background components are changed.
    """
    mask = _check_mask(mask)
    out = mask.copy()
    if r_max < 1:
        return out
    classes = None if background_class is None else [c for c in np.unique(mask) if c != background_class]
    for c, comp in _components(mask, ignore_index, classes=classes):
        r = int(rng.integers(1, r_max + 1))
        if rng.random() < 0.5:
            out[ndi.binary_dilation(comp, structure=morphology.disk(r))] = c
        else:
            kept = ndi.binary_erosion(comp, structure=morphology.disk(r), border_value=1)
            removed = comp & ~kept
            if removed.any():
                outside = ~comp
                if not outside.any():
                    continue
                _, (iy, ix) = ndi.distance_transform_edt(~outside, return_indices=True)
                out[removed] = mask[iy[removed], ix[removed]]
    return out


def boundary_jitter(mask: np.ndarray, rng: np.random.Generator, magnitude: float) -> np.ndarray:
    """Warp the whole label map by a small random affine transform (nearest neighbour, edges replicated):
    shift up to ``magnitude`` px, rotation up to ``magnitude`` degrees, scale up to 1 +- magnitude/100."""
    mask = _check_mask(mask)
    if magnitude <= 0:
        return mask.copy()
    h, w = mask.shape
    angle = np.deg2rad(rng.uniform(-magnitude, magnitude))
    scale = 1 + rng.uniform(-magnitude, magnitude) / 100
    shift = rng.uniform(-magnitude, magnitude, size=2)
    center = np.array([w / 2, h / 2])
    tf = (transform.SimilarityTransform(translation=-center)
          + transform.SimilarityTransform(scale=scale, rotation=angle)
          + transform.SimilarityTransform(translation=center + shift))
    warped = transform.warp(mask.astype(np.float64), tf.inverse, order=0, mode="edge", preserve_range=True)
    return warped.round().astype(mask.dtype)


def superpixel_flips(mask: np.ndarray, image: np.ndarray, rng: np.random.Generator, fraction: float,
                     num_classes: int, n_segments: int = 200, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Give a fraction of SLIC superpixels a wrong class (uniform over the other classes; void kept)."""
    mask = _check_mask(mask)
    out = mask.copy()
    if fraction <= 0:
        return out
    sp = segmentation.slic(image, n_segments=n_segments, compactness=10, start_label=0,
                           channel_axis=-1 if image.ndim == 3 else None)
    ids = np.unique(sp)
    chosen = rng.choice(ids, size=max(1, int(round(fraction * len(ids)))), replace=False)
    for s in chosen:
        region = (sp == s) & (mask != ignore_index)
        if not region.any():
            continue
        cur = int(np.bincount(mask[region]).argmax())
        new = int(rng.integers(num_classes - 1))
        out[region] = new + (new >= cur)
    return out


def noisy_mask(mask: np.ndarray, image: np.ndarray, rng: np.random.Generator, level: str, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The three noise models chained at one level (low | medium | high): objects dilated/eroded, the
    boundary jittered, then superpixels flipped. Applied to training masks only."""
    if level not in NOISE_LEVELS:
        raise ValueError(f"unknown noise level {level!r}; choose one of {sorted(NOISE_LEVELS)}")
    p = NOISE_LEVELS[level]
    bg = 0 if num_classes == 2 else None
    out = dilate_erode_objects(mask, rng, p["r_max"], ignore_index, background_class=bg)
    out = boundary_jitter(out, rng, p["jitter"])
    return superpixel_flips(out, image, rng, p["flip"], num_classes, ignore_index=ignore_index)


# ----------------------------------------------------------------------------- splits

def labelled_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``round(n * fraction)`` (at least 1) images."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(n * fraction)))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])
