"""Command line: LPIPS distance between two images, or between same-named images of two folders.

    python -m lpips_metric.compare img0.png img1.png [--net alex] [--version 0.1] [--spatial map.png]
    python -m lpips_metric.compare dir0/ dir1/ [--out distances.csv]

Images are read as 8-bit RGB, scaled to [0, 1] (the [0, 1] -> [-1, 1] mapping is done by the metric), and must
have equal sizes. The trunk needs torchvision's ImageNet weights in its cache (see the error message if they
are missing); ``--trunk random`` runs without them, for testing only. Print the version you used (v0.1 is the
default and the one to report).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch, torchvision and the model are imported in main() after the arguments are parsed: --help stays instant.


def _save_map(dist_map: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, dist_map.squeeze().cpu().numpy(), cmap="viridis")


def _pairs(dir0: Path, dir1: Path) -> list[tuple[Path, Path]]:
    from .data import IMAGE_EXTS

    files0 = {p.name: p for p in dir0.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    files1 = {p.name: p for p in dir1.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    common = sorted(set(files0) & set(files1))
    if not common:
        raise SystemExit(f"error: no same-named images in {dir0} and {dir1}")
    lonely = sorted(set(files0) ^ set(files1))
    if lonely:
        print(f"warning: {len(lonely)} file(s) without a partner skipped: {lonely[:5]}", file=sys.stderr)
    return [(files0[n], files1[n]) for n in common]


def _distance(metric, a: Path, b: Path, spatial: bool):
    import torch

    from .data import load_image
    from .model import InputSizeError

    x, y = load_image(a).unsqueeze(0), load_image(b).unsqueeze(0)
    if x.shape != y.shape:
        raise SystemExit(f"error: {a} is {tuple(x.shape[2:])} but {b} is {tuple(y.shape[2:])} (H, W); LPIPS "
                         "compares images of equal size: resize one first")
    try:
        with torch.no_grad():
            return metric(x, y, normalize=True, spatial=spatial)
    except InputSizeError as e:
        raise SystemExit(f"error: {a}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lpips_metric.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path0", type=Path, help="image or folder")
    ap.add_argument("path1", type=Path, help="image or folder (same-named files are paired)")
    ap.add_argument("--net", default="alex", choices=["alex", "vgg", "squeeze"])
    ap.add_argument("--version", default="0.1", choices=["0.1", "0.0"])
    ap.add_argument("--trunk", default="imagenet",
                    help="imagenet (cached torchvision weights), random, or a .safetensors/.pth state dict")
    ap.add_argument("--heads", default="official", help="official (lpips package), or a head file we trained")
    ap.add_argument("--spatial", type=Path, default=None, help="write the distance map of an image pair here")
    ap.add_argument("--out", type=Path, default=None, help="folder mode: write name,distance rows to this CSV")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="fully unpickle a .pth head/trunk file that is not plain weights (this can run code "
                         "in it): only for files you made yourself")
    args = ap.parse_args(argv)

    from common.checkpoint import CheckpointReadError, checkpoint_trust

    from .model import LPIPS, HeadLoadError, TrunkWeightsNotFoundError, cli_option

    try:
        with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
            metric = LPIPS(args.net, args.version, trunk=args.trunk, heads=args.heads)
    except TrunkWeightsNotFoundError as e:
        print(f"error: {e.hint(cli_option)}", file=sys.stderr)  # the hint in this command line's syntax
        return 2
    except (HeadLoadError, CheckpointReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.trunk == "random":
        print("warning: random trunk: distances are for testing only, not a perceptual metric", file=sys.stderr)

    if args.path0.is_dir() and args.path1.is_dir():
        rows = [(a.name, float(_distance(metric, a, b, False))) for a, b in _pairs(args.path0, args.path1)]
        for name, d in rows:
            print(f"{name}\t{d:.6f}")
        if args.out is not None:
            with open(args.out, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["name", f"lpips_{args.net}_v{args.version}"])
                writer.writerows((n, f"{d:.6f}") for n, d in rows)
        return 0
    for p in (args.path0, args.path1):
        if not p.is_file():
            print(f"error: {p} is not an image file (give two images or two folders)", file=sys.stderr)
            return 2
    if args.spatial is not None:
        dist_map = _distance(metric, args.path0, args.path1, True)
        _save_map(dist_map, args.spatial)
        print(f"distance map (mean {float(dist_map.mean()):.6f}) written to {args.spatial}")
    d = float(_distance(metric, args.path0, args.path1, False))
    print(f"LPIPS ({args.net}, v{args.version}): {d:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
