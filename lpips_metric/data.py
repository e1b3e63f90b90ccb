"""BAPPS-format readers: 2AFC triplets (ref, p0, p1, judge) and JND pairs (p0, p1, same).

Layout (Zhang et al.'s BAPPS, and our synthetic stand-in written by :mod:`lpips_metric.synthetic`)::

    <root>/2afc/{train,val}/<split>/{ref,p0,p1}/<id>.png   judge/<id>.npy   (fraction preferring p1)
    <root>/jnd/val/<split>/{p0,p1}/<id>.png                same/<id>.npy    (fraction answering "same")

Files are paired by stem (``ref/000123.png`` with ``p0/000123.png``, ``judge/000123.npy``...), never by
the position in independently sorted listings, and a missing partner is an error naming it. Images are
resized to ``load_size`` (64 for the reference) with antialiased bilinear resampling and returned as
3 x H x W float tensors in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from common.data import DataFormatError, DatasetNotFoundError

BAPPS_SOURCE = ("https://github.com/richzhang/PerceptualSimilarity (scripts/download_dataset.sh), or "
                "`python -m lpips_metric.synthetic` for the synthetic stand-in")
TWOAFC_TRAIN_SPLITS = ("traditional", "cnn", "mix")
TWOAFC_VAL_SPLITS = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
JND_VAL_SPLITS = ("traditional", "cnn")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def load_image(path: str | os.PathLike, load_size: int | None = None) -> torch.Tensor:
    """An RGB image as a 3 x H x W float tensor in [0, 1], resized to load_size x load_size if given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if load_size is not None and im.size != (load_size, load_size):
                im = im.resize((load_size, load_size), Image.BILINEAR, reducing_gap=None)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataFormatError(path, f"unreadable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def load_fraction(path: Path) -> float:
    """A judge/same ``.npy`` file: one fraction in [0, 1]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataFormatError(path, f"unreadable .npy ({type(e).__name__}: {e})") from e
    if arr.size != 1:
        raise DataFormatError(path, f"expected one value, found shape {arr.shape}")
    value = float(arr.reshape(-1)[0])
    if not (0.0 <= value <= 1.0):
        raise DataFormatError(path, f"judgment {value} is not a fraction in [0, 1]")
    return value


def _stems(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetNotFoundError(f"BAPPS folder {folder} is missing. Get BAPPS from {BAPPS_SOURCE}.")
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in exts:
            if p.stem in out:
                raise DataFormatError(p, f"two files with stem {p.stem!r} in {folder}")
            out[p.stem] = p
    return out


def _paired(root: Path, image_dirs: Sequence[str], value_dir: str) -> list[tuple[str, dict[str, Path]]]:
    """Stem-matched entries across the folders of one split; any unmatched file is an error."""
    tables = {d: _stems(root / d, IMAGE_EXTS) for d in image_dirs}
    tables[value_dir] = _stems(root / value_dir, (".npy",))
    first = tables[image_dirs[0]]
    if not first:
        raise DataFormatError(root / image_dirs[0], "no images found")
    stems = set(first)
    for name, table in tables.items():
        if set(table) != stems:
            missing = sorted(stems - set(table))[:3]
            extra = sorted(set(table) - stems)[:3]
            raise DataFormatError(root / name, f"files do not pair up with {image_dirs[0]}/ by name: "
                                               f"missing {missing}, unexpected {extra}")
    return [(s, {name: table[s] for name, table in tables.items()}) for s in sorted(stems)]


class TwoAFCDataset(Dataset):
    """One BAPPS 2AFC split folder (``.../2afc/val/traditional``). Items: ref, p0, p1 (3 x S x S), judge (1,)."""

    def __init__(self, root: str | os.PathLike, load_size: int | None = 64, preload: bool = False):
        self.root, self.load_size = Path(root), load_size
        self.entries = _paired(self.root, ("ref", "p0", "p1"), "judge")
        self.judges = torch.tensor([load_fraction(f["judge"]) for _, f in self.entries], dtype=torch.float32)
        self._cache = [self._images(i) for i in range(len(self))] if preload else None

    def __len__(self) -> int:
        return len(self.entries)

    def _images(self, i: int) -> dict[str, torch.Tensor]:
        files = self.entries[i][1]
        imgs = {k: load_image(files[k], self.load_size) for k in ("ref", "p0", "p1")}
        shapes = {tuple(v.shape) for v in imgs.values()}
        if len(shapes) != 1:
            raise DataFormatError(files["ref"], f"ref/p0/p1 sizes differ: {sorted(shapes)}")
        return imgs

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        imgs = self._cache[i] if self._cache is not None else self._images(i)
        return {**imgs, "judge": self.judges[i : i + 1]}


class JNDDataset(Dataset):
    """One BAPPS JND split folder (``.../jnd/val/cnn``). Items: p0, p1 (3 x S x S), same (1,)."""

    def __init__(self, root: str | os.PathLike, load_size: int | None = 64, preload: bool = False):
        self.root, self.load_size = Path(root), load_size
        self.entries = _paired(self.root, ("p0", "p1"), "same")
        self.sames = torch.tensor([load_fraction(f["same"]) for _, f in self.entries], dtype=torch.float32)
        self._cache = [self._images(i) for i in range(len(self))] if preload else None

    def __len__(self) -> int:
        return len(self.entries)

    def _images(self, i: int) -> dict[str, torch.Tensor]:
        files = self.entries[i][1]
        return {k: load_image(files[k], self.load_size) for k in ("p0", "p1")}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        imgs = self._cache[i] if self._cache is not None else self._images(i)
        return {**imgs, "same": self.sames[i : i + 1]}


def split_dir(root: str | os.PathLike, kind: str, phase: str, split: str) -> Path:
    """``<root>/<kind>/<phase>/<split>`` with a clear error if it is absent (kind: 2afc | jnd)."""
    if kind not in ("2afc", "jnd"):
        raise ValueError(f"dataset kind {kind!r}: expected 2afc or jnd")
    path = Path(root) / kind / phase / split
    if not path.is_dir():
        raise DatasetNotFoundError(f"BAPPS split {kind}/{phase}/{split} not found at {path}. "
                                   f"Get BAPPS from {BAPPS_SOURCE}.")
    return path


def twoafc_splits(root, phase: str, splits: Sequence[str], load_size: int | None = 64,
                  preload: bool = False) -> dict[str, TwoAFCDataset]:
    return {s: TwoAFCDataset(split_dir(root, "2afc", phase, s), load_size, preload) for s in splits}


def jnd_splits(root, splits: Sequence[str], load_size: int | None = 64,
               preload: bool = False) -> dict[str, JNDDataset]:
    return {s: JNDDataset(split_dir(root, "jnd", "val", s), load_size, preload) for s in splits}


def twoafc_train_set(root, splits: Sequence[str], load_size: int | None = 64, preload: bool = False) -> Dataset:
    """The training triplets: the concatenation of the given train splits (reference: traditional+cnn+mix)."""
    return ConcatDataset(list(twoafc_splits(root, "train", splits, load_size, preload).values()))
