"""A SYNTHETIC BAPPS-format set: real image patches, graded distortions, judgments simulated from severity.

BAPPS (the paper's human-judgment set) is not available here, so this writes the same folder layout from
real photographs under ``../shared/data/segmentation`` (CamVid street scenes, Kvasir endoscopy, DSB
microscopy) with distortions of declared severity s in [0, 1]. THE JUDGMENTS ARE NOT HUMAN: each of r
simulated raters prefers p1 with probability sigmoid(k (s0 - s1)) (2AFC), or answers "same" with
probability sigmoid(k (tau - s)) (JND). Severity scales are arbitrary across distortion types, so the
mixed-type splits carry label noise by construction; ``within`` holds triplets whose two distortions share
a type (an ordering sanity check). Never compare scores on this set with the paper's BAPPS numbers.

Train patches come from CamVid train images; val/JND patches from CamVid test, Kvasir-SEG and DSB2018
(disjoint sources). Val split names mirror BAPPS's but hold distortion families that imitate them
("superres": down/up-sampling, "deblur": blur then sharpening, "color": colour shifts, "frameinterp":
ghosting blends of shifted copies); they are not real algorithm outputs.

    python -m lpips_metric.synthetic --out data/bapps_synthetic --train 20000 --val 1000 --jnd 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage

from common.data import dataset_path

PATCH = 64
SYNTHETIC_NOTE = "SYNTHETIC judgments simulated from distortion severity, not human judgments"

# ------------------------------------------------------------------------------------------ distortions
# Each takes an H x W x 3 float image in [0, 1], a severity s in [0, 1] and a numpy Generator; s = 0 is
# (nearly) the identity and s = 1 a strong distortion. Random parameters (direction, sign) come from rng.


def _u8(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8))


def _f(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32) / 255


def blur(x, s, rng):
    return ndimage.gaussian_filter(x, sigma=(0.1 + 2.5 * s, 0.1 + 2.5 * s, 0), mode="reflect")


def noise(x, s, rng):
    return x + rng.normal(0, 0.2 * s, x.shape).astype(np.float32)


def jpeg(x, s, rng):
    buf = io.BytesIO()
    _u8(x).save(buf, format="JPEG", quality=int(round(95 - 90 * s)))
    return _f(Image.open(buf).convert("RGB"))


def contrast(x, s, rng):
    factor = 1 + (0.8 * s if rng.random() < 0.5 else -0.7 * s)
    return (x - x.mean()) * factor + x.mean()


def brightness(x, s, rng):
    return x + rng.choice([-1, 1]) * 0.35 * s


def saturation(x, s, rng):
    factor = 1 + rng.choice([-1, 1]) * 0.9 * s
    return _f(ImageEnhance.Color(_u8(x)).enhance(factor))


def downup(x, s, rng):
    h, w = x.shape[:2]
    f = 1 + 4 * s
    small = _u8(x).resize((max(4, int(w / f)), max(4, int(h / f))), Image.BILINEAR)
    method = [Image.NEAREST, Image.BILINEAR, Image.BICUBIC][rng.integers(3)]
    return _f(small.resize((w, h), method))


def translate(x, s, rng):
    shift = rng.normal(0, 1, 2)
    shift = shift / (np.linalg.norm(shift) + 1e-8) * 5 * s
    return ndimage.shift(x, (shift[0], shift[1], 0), order=1, mode="reflect")


def warp(x, s, rng):
    h, w = x.shape[:2]
    field = ndimage.gaussian_filter(rng.normal(0, 1, (2, h, w)), sigma=(0, 6, 6))
    field = field / (np.abs(field).max() + 1e-8) * 4 * s
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + field[0], xx + field[1]]
    return np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)], -1)


def random_cnn(x, s, rng):
    """A random two-layer conv net's output blended in with weight s (the "cnn" family)."""
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3))
    w2 = rng.normal(0, 0.4, (3, 8, 3, 3))
    hid = np.maximum(np.stack([sum(ndimage.correlate(x[..., c], w1[o, c], mode="reflect") for c in range(3))
                               for o in range(8)], -1), 0)
    out = np.stack([sum(ndimage.correlate(hid[..., c], w2[o, c], mode="reflect") for c in range(8))
                    for o in range(3)], -1)
    out = (out - out.mean()) / (out.std() + 1e-6) * x.std() + x.mean()
    return (1 - 0.8 * s) * x + 0.8 * s * out


def deblur_like(x, s, rng):
    """Blur, then an unsharp mask that undoes part of it: residual blur plus ringing grows with s."""
    b = ndimage.gaussian_filter(x, sigma=(0.5 + 2 * s, 0.5 + 2 * s, 0), mode="reflect")
    b2 = ndimage.gaussian_filter(b, sigma=(1, 1, 0), mode="reflect")
    return b + (1.5 - s) * (b - b2)


def color_shift(x, s, rng):
    cast = rng.normal(0, 1, 3)
    cast = cast / (np.linalg.norm(cast) + 1e-8) * 0.25 * s
    return saturation(x + cast, s * 0.5, rng)


def ghosting(x, s, rng):
    d = 1 + 6 * s
    ang = rng.uniform(0, 2 * np.pi)
    dy, dx = d * np.sin(ang), d * np.cos(ang)
    a = ndimage.shift(x, (dy / 2, dx / 2, 0), order=1, mode="reflect")
    b = ndimage.shift(x, (-dy / 2, -dx / 2, 0), order=1, mode="reflect")
    return 0.5 * a + 0.5 * b


Distortion = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
FAMILIES: dict[str, dict[str, Distortion]] = {
    "traditional": {"blur": blur, "noise": noise, "jpeg": jpeg, "contrast": contrast, "brightness": brightness,
                    "saturation": saturation, "downup": downup, "translate": translate, "warp": warp},
    "cnn": {"random_cnn": random_cnn},
    "superres": {"downup": downup},
    "deblur": {"deblur": deblur_like},
    "color": {"color": color_shift, "saturation": saturation},
    "frameinterp": {"ghosting": ghosting, "warp": warp},
}
FAMILIES["mix"] = {**FAMILIES["traditional"], **FAMILIES["cnn"]}
FAMILIES["within"] = FAMILIES["traditional"]  # same type for p0 and p1, see make_triplet


def distort(x: np.ndarray, name: str, s: float, rng: np.random.Generator) -> np.ndarray:
    family = next(f for f in FAMILIES.values() if name in f)
    return np.clip(family[name](x, s, rng), 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------ judgments


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def simulate_2afc(s0: float, s1: float, raters: int, k: float, rng) -> float:
    """Fraction of r simulated raters who judge p1 closer: each with P = sigmoid(k (s0 - s1))."""
    return float(rng.binomial(raters, sigmoid(k * (s0 - s1))) / raters)


def simulate_jnd(s: float, raters: int, k: float, tau: float, rng) -> float:
    """Fraction answering "same": each with P = sigmoid(k (tau - s)); exactly identical pairs get 1."""
    if s == 0:
        return 1.0
    return float(rng.binomial(raters, sigmoid(k * (tau - s))) / raters)


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class SourcePool:
    """Real photographs to cut patches from."""

    paths: list[Path]

    def patch(self, rng: np.random.Generator) -> np.ndarray:
        path = self.paths[rng.integers(len(self.paths))]
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = int(rng.integers(PATCH, min(w, h, 2 * PATCH) + 1))  # crop, then scale to 64: some zoom variety
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = im.crop((x0, y0, x0 + side, y0 + side))
            if side != PATCH:
                crop = crop.resize((PATCH, PATCH), Image.BILINEAR, reducing_gap=None)
        return _f(crop)


def source_pools(data_dir: str | None = None) -> dict[str, SourcePool]:
    """train: CamVid train; val: CamVid test + Kvasir-SEG + DSB2018 (disjoint from train)."""
    camvid = dataset_path("CamVid", "segmentation/camvid", source="see ../shared/data/SOURCES.md", data_dir=data_dir)
    kvasir = dataset_path("Kvasir-SEG", "segmentation/kvasir_seg/images", source="see SOURCES.md", data_dir=data_dir)
    dsb = dataset_path("DSB2018", "segmentation/dsb2018_stage1_test/images", source="see SOURCES.md",
                       data_dir=data_dir)
    imgs = lambda d: sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    train = imgs(camvid / "train")
    val = imgs(camvid / "test") + imgs(kvasir) + imgs(dsb)
    return {"train": SourcePool(train), "val": SourcePool(val)}


# ----------------------------------------------------------------------------------------------- writers


def _save_png(x: np.ndarray, path: Path) -> None:
    _u8(x).save(path, format="PNG", compress_level=1)


def make_triplet(pool: SourcePool, family: str, rng, raters: int, k: float):
    """(ref, p0, p1, h, meta) for one triplet of the given family."""
    ref = pool.patch(rng)
    names = list(FAMILIES[family])
    t0 = names[rng.integers(len(names))]
    t1 = t0 if family == "within" else names[rng.integers(len(names))]
    s0, s1 = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
    p0, p1 = distort(ref, t0, s0, rng), distort(ref, t1, s1, rng)
    h = simulate_2afc(s0, s1, raters, k, rng)
    return ref, p0, p1, h, {"t0": t0, "s0": s0, "t1": t1, "s1": s1}


def write_2afc_split(out: Path, pool: SourcePool, family: str, n: int, *, raters: int, k: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder = out
    for sub in ("ref", "p0", "p1", "judge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(n):
        ref, p0, p1, h, m = make_triplet(pool, family, rng, raters, k)
        stem = f"{i:06d}"
        _save_png(ref, folder / "ref" / f"{stem}.png")
        _save_png(p0, folder / "p0" / f"{stem}.png")
        _save_png(p1, folder / "p1" / f"{stem}.png")
        np.save(folder / "judge" / f"{stem}.npy", np.array([h], dtype=np.float32))
        meta.append({"id": stem, **m, "judge": h})
    (folder / "meta.json").write_text(json.dumps({"note": SYNTHETIC_NOTE, "family": family, "raters": raters,
                                                  "k": k, "seed": seed, "triplets": meta}))
    return folder


def write_jnd_split(out: Path, pool: SourcePool, family: str, n: int, *, raters: int, k: float, tau: float,
                    seed: int, identical_fraction: float = 0.1) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("p0", "p1", "same"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = list(FAMILIES[family])
    meta = []
    for i in range(n):
        ref = pool.patch(rng)
        if rng.random() < identical_fraction:
            t, s, p1 = "identical", 0.0, ref
        else:
            t, s = names[rng.integers(len(names))], float(rng.uniform(0, 0.6))
            p1 = distort(ref, t, s, rng)
        same = simulate_jnd(s, raters, k, tau, rng)
        stem = f"{i:06d}"
        _save_png(ref, out / "p0" / f"{stem}.png")
        _save_png(p1, out / "p1" / f"{stem}.png")
        np.save(out / "same" / f"{stem}.npy", np.array([same], dtype=np.float32))
        meta.append({"id": stem, "type": t, "s": s, "same": same})
    (out / "meta.json").write_text(json.dumps({"note": SYNTHETIC_NOTE, "family": family, "raters": raters, "k": k,
                                               "tau": tau, "seed": seed, "pairs": meta}))
    return out


TRAIN_SPLITS = ("traditional", "cnn", "mix")
VAL_SPLITS = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp", "within")
JND_SPLITS = ("traditional", "cnn")


def generate(out: str | os.PathLike, *, n_train: int, n_val: int, n_jnd: int, seed: int = 0, k: float = 8.0,
             tau: float = 0.15, data_dir: str | None = None, train_splits=TRAIN_SPLITS, val_splits=VAL_SPLITS,
             jnd_splits=JND_SPLITS) -> Path:
    """Write the whole synthetic set under ``out`` (n_train triplets spread over the train splits).

    Deterministic for a given seed; a finished set (``DONE`` marker with the same arguments) is reused.
    """
    out = Path(out)
    args = {"n_train": n_train, "n_val": n_val, "n_jnd": n_jnd, "seed": seed, "k": k, "tau": tau,
            "train": list(train_splits), "val": list(val_splits), "jnd": list(jnd_splits)}
    marker = out / "DONE.json"
    if marker.is_file() and json.loads(marker.read_text()) == args:
        return out
    pools = source_pools(data_dir)
    per_train = max(1, n_train // max(1, len(train_splits)))
    for j, split in enumerate(train_splits):
        write_2afc_split(out / "2afc" / "train" / split, pools["train"], split, per_train, raters=2, k=k,
                         seed=seed * 1000 + j)
    for j, split in enumerate(val_splits):
        write_2afc_split(out / "2afc" / "val" / split, pools["val"], split, n_val, raters=5, k=k,
                         seed=seed * 1000 + 100 + j)
    for j, split in enumerate(jnd_splits):
        write_jnd_split(out / "jnd" / "val" / split, pools["val"], split, n_jnd, raters=3, k=k, tau=tau,
                        seed=seed * 1000 + 200 + j)
    (out / "README.txt").write_text(f"{SYNTHETIC_NOTE}.\nWritten by lpips_metric.synthetic with {args}.\n")
    marker.write_text(json.dumps(args))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write a SYNTHETIC BAPPS-format set (judgments from severity).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=20000, help="train triplets, spread over traditional/cnn/mix")
    ap.add_argument("--val", type=int, default=1000, help="triplets per val split")
    ap.add_argument("--jnd", type=int, default=1000, help="pairs per JND split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    path = generate(a.out, n_train=a.train, n_val=a.val, n_jnd=a.jnd, seed=a.seed, data_dir=a.data_dir)
    print(f"wrote {path} ({SYNTHETIC_NOTE})")


if __name__ == "__main__":
    main()
