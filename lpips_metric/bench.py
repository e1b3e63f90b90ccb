"""Side-by-side benchmark against the PyPI ``lpips`` package, same random trunk and same official heads.

    python -m lpips_metric.bench                         # alex + squeeze, batch 1 and 32, 64 and 256 px
    python -m lpips_metric.bench --nets alex vgg squeeze --repeats 5 --out reports/lpips_metric/bench.json

For every (net, batch, size): max |ours - reference| over the batch (must be <= 1e-6), and image pairs per
second of each implementation, timed interleaved (``common.bench.compare``: warm-up, median of repeats)
under ``torch.no_grad``. Peak RSS growth of one call of each is reported separately. Run it alone: the
numbers are only meaningful when nothing else shares the cores.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from common.bench import compare, current_rss_bytes, format_bytes, peak_rss_bytes, reset_peak_rss
from common.runinfo import hardware_summary

from .model import LPIPS, official_head_path


def _reference(net: str):
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()


def _ours_sharing(ref, net: str) -> LPIPS:
    slices = [getattr(ref.net, f"slice{k}") for k in range(1, ref.net.N_slices + 1)]
    trunk = torch.nn.Sequential(*[m for s in slices for m in s])
    return LPIPS(net, "0.1", trunk=trunk, heads=official_head_path(net, "0.1"))


def _peak_growth(fn) -> int | None:
    if not reset_peak_rss():
        return None
    base = current_rss_bytes()
    fn()
    return peak_rss_bytes() - base


@torch.no_grad()
def _measure(ours, ref, x, y, repeats: int):
    """(max |diff|, interleaved timings, peak-RSS growth of ours, of the reference) for one input pair."""
    err = float((ours(x, y) - ref(x, y)).abs().max())
    timings = compare({"ours": lambda: ours(x, y), "lpips": lambda: ref(x, y)}, warmup=1, repeats=repeats,
                      items_per_call=x.shape[0])
    return err, timings, _peak_growth(lambda: ours(x, y)), _peak_growth(lambda: ref(x, y))


def bench(nets=("alex", "squeeze"), batches=(1, 32), sizes=(64, 256), repeats: int = 3, seed: int = 0) -> list[dict]:
    rows = []
    for net in nets:
        torch.manual_seed(seed)
        ref = _reference(net)
        ours = _ours_sharing(ref, net)
        for size in sizes:
            for batch in batches:
                g = torch.Generator().manual_seed(seed)
                x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
                y = (x + 0.3 * torch.randn(batch, 3, size, size, generator=g)).clamp(-1, 1)
                err, timings, mem_ours, mem_ref = _measure(ours, ref, x, y, repeats)
                row = {"net": net, "size": size, "batch": batch, "max_abs_diff": err,
                       "ours_pairs_per_s": timings["ours"].throughput, "lpips_pairs_per_s": timings["lpips"].throughput,
                       "speedup": timings["lpips"].median / timings["ours"].median,
                       "ours_peak_rss_growth": mem_ours, "lpips_peak_rss_growth": mem_ref}
                rows.append(row)
                print(f"{net:8s} {size:4d}px batch {batch:3d}: |diff| {err:.1e}  ours {row['ours_pairs_per_s']:8.1f}/s"
                      f"  lpips {row['lpips_pairs_per_s']:8.1f}/s  x{row['speedup']:.2f}  peak RSS +"
                      f"{format_bytes(mem_ours)} vs +{format_bytes(mem_ref)}", flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| net | size | batch | max abs diff | ours pairs/s | lpips pairs/s | ours/lpips speed | peak RSS growth ours / lpips |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['size']} | {r['batch']} | {r['max_abs_diff']:.1e} | {r['ours_pairs_per_s']:.1f} "
                     f"| {r['lpips_pairs_per_s']:.1f} | {r['speedup']:.2f} | {format_bytes(r['ours_peak_rss_growth'])}"
                     f" / {format_bytes(r['lpips_peak_rss_growth'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=["alex", "squeeze"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write rows + hardware as JSON (and a .md table)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = bench(a.nets, a.batches, a.sizes, a.repeats)
    print(to_markdown(rows))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"hardware": hardware_summary(), "threads": a.threads, "rows": rows}, indent=1))
        a.out.with_suffix(".md").write_text(to_markdown(rows) + "\n")


if __name__ == "__main__":
    main()
