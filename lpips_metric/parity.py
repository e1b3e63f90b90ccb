"""Parity with the PyPI ``lpips`` package, per output kind: ``python -m lpips_metric.parity``.

    python -m lpips_metric.parity                               # random trunks, 3 nets x 2 versions, 2 sizes x 2 batches
    python -m lpips_metric.parity --trunk imagenet --nets alex  # the real trunk, when its weights are cached

Both models share one trunk (the package's own layers, random unless ``--trunk imagenet``) and load the
official heads, so any difference comes from the distance computation itself. For each net and version it
prints the largest absolute difference of the scalar distances, the per-layer terms, the spatial maps and
the ``normalize=True`` path, and d(x, x), over the sizes and batch sizes given; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

KINDS = ("scalar", "per_layer", "spatial", "normalize", "self")


def parity(net: str, version: str, sizes=((37, 53), (257, 129)), batches=(1, 7), pretrained: bool = False,
           seed: int = 0) -> dict[str, float]:
    """Largest |ours - lpips| per output kind for one net and version (see the module docstring)."""
    import lpips as reference
    import torch

    from common.checkpoint import load_export

    from .model import LPIPS, official_head_path

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference.LPIPS(net=net, version=version, pnet_rand=not pretrained, verbose=False).eval()
    ref.load_state_dict(load_export(official_head_path(net, version)), strict=False)  # weights only
    trunk = torch.nn.Sequential(*[m for k in range(1, ref.net.N_slices + 1) for m in getattr(ref.net, f"slice{k}")])
    ours = LPIPS(net, version, trunk=trunk)
    worst = dict.fromkeys(KINDS, 0.0)

    def track(kind, a, b):
        worst[kind] = max(worst[kind], float((a - b).abs().max()))

    for h, w in sizes:
        for n in batches:
            g = torch.Generator().manual_seed(seed + h + n)
            x = torch.rand(n, 3, h, w, generator=g) * 2 - 1
            y = (x + 0.3 * torch.randn(n, 3, h, w, generator=g)).clamp(-1, 1)
            with torch.no_grad():
                d_ref, layers_ref = ref(x, y, retPerLayer=True)
                d, layers = ours(x, y, ret_per_layer=True)
                track("scalar", d, d_ref)
                for a, b in zip(layers, layers_ref):
                    track("per_layer", a, b)
                ref.spatial = True
                try:
                    track("spatial", ours(x, y, spatial=True), ref(x, y))
                finally:
                    ref.spatial = False
                track("normalize", ours((x + 1) / 2, (y + 1) / 2, normalize=True),
                      ref((x + 1) / 2, (y + 1) / 2, normalize=True))
                track("self", ours(x, x), torch.zeros_like(d))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lpips_metric.parity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["alex", "squeeze", "vgg"], choices=["alex", "squeeze", "vgg"])
    ap.add_argument("--versions", nargs="+", default=["0.1", "0.0"], choices=["0.1", "0.0"])
    ap.add_argument("--sizes", nargs="+", default=["37x53", "257x129"], help="H x W, e.g. 37x53")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 7])
    ap.add_argument("--trunk", choices=["random", "imagenet"], default="random")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    results = {}
    for net in args.nets:
        for version in args.versions:
            worst = parity(net, version, sizes, args.batches, pretrained=args.trunk == "imagenet")
            results[f"{net} v{version}"] = worst
            print(f"{net:8s} v{version}  " + "  ".join(f"{k} {v:.1e}" for k, v in worst.items()), flush=True)
    overall = {k: max(r[k] for r in results.values()) for k in KINDS}
    print("max      " + "  ".join(f"{k} {v:.1e}" for k, v in overall.items()))
    if args.out is not None:
        args.out.write_text(json.dumps({"sizes": args.sizes, "batches": args.batches, "trunk": args.trunk,
                                        "results": results, "max": overall}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
