"""Benchmarks (side by side with ``common.bench``): k-NN queries/s against the reference's BallTree with a
Python-callable cosine metric, tree-sampling rate per process and its scaling, featurization rate.

    python -m synthesis_pathways.bench --queries 200 --attempts 400
    python -m synthesis_pathways.bench --rxn-device cuda     # paper-width rxn net throughput (GPU check)

Numbers depend on the load of the machine; the reference's rate (about 58 trees/s for a plain
single-process sampler on pool A) was measured on an idle core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from common.bench import compare, format_bytes, peak_rss_bytes, ratio

from .chem import mol_from_smiles, morgan_bits
from .featurize import FeatureConfig, Featurizer
from .knn import CosineKNN
from .sampling import sample_shard, sample_to_disk
from .space import ReactionSpace, plain_slot_matches


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    # the reference's metric: a Python callable evaluated by BallTree for every pair it visits
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 - float(a @ b) / (na * nb) if na > 0 and nb > 0 else 1.0


def knn_benchmark(space: ReactionSpace, *, emb_bits: int = 256, n_queries: int = 100, repeats: int = 3,
                  seed: int = 0) -> dict:
    from sklearn.neighbors import BallTree

    emb = np.stack([morgan_bits(b, 2, emb_bits) for b in space.blocks])
    rng = np.random.default_rng(seed)
    # queries shaped like rt1 outputs: noisy versions of real block embeddings
    queries = np.clip(emb[rng.integers(len(emb), size=n_queries)] + rng.normal(0, 0.2, (n_queries, emb_bits)), 0, 1)
    queries = queries.astype(np.float32)
    knn = CosineKNN(emb)
    t0 = time.perf_counter()
    tree = BallTree(emb, metric=_cosine_distance)
    build_seconds = time.perf_counter() - t0

    def ours_loop():  # one query at a time, as the decoder does
        return [knn.query(q, k=1)[0] for q in queries]

    def ours_batch():
        return knn.query(queries, k=1)[:, 0]

    def reference():
        return [int(tree.query(q[None, :], k=1)[1][0, 0]) for q in queries]

    agree = np.mean([
        abs(knn.similarities(q)[0, a] - knn.similarities(q)[0, b]) < 1e-6
        for q, a, b in zip(queries, ours_batch(), reference())])
    timings = compare({"ours_loop": ours_loop, "ours_batch": ours_batch, "balltree_callable": reference},
                      warmup=1, repeats=repeats, items_per_call=n_queries)
    return {"n_blocks": len(emb), "n_queries": n_queries, "same_similarity_as_reference": float(agree),
            "balltree_build_seconds": build_seconds,
            **{f"{k}_qps": n_queries / t.median for k, t in timings.items()},
            "speedup_loop_vs_balltree": ratio(timings, "ours_loop", "balltree_callable"),
            "speedup_batch_vs_balltree": ratio(timings, "ours_batch", "balltree_callable")}


def sampling_benchmark(space: ReactionSpace, *, attempts: int = 400, workers: int = 2, seed: int = 0) -> dict:
    """Attempts per CPU-second of one process (time.process_time, robust to other load) and the wall
    rate of ``workers`` processes against one, on the same shards."""
    t_cpu = time.process_time()
    t0 = time.perf_counter()
    trees, stats = sample_shard(space, seed, 10_000, attempts)
    cpu = time.process_time() - t_cpu
    wall1 = time.perf_counter() - t0
    out = {"attempts": attempts, "attempts_per_cpu_second": attempts / cpu,
           "sampled_trees_per_cpu_second": stats.sampled / cpu, "success_rate": stats.sampled / attempts,
           "qed_pass_rate": stats.kept / max(stats.sampled, 1), "depth1_share": stats.depths.get(1, 0) / max(stats.sampled, 1),
           "single_process_wall_rate": attempts / wall1}
    if workers > 1:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            sample_to_disk(space, Path(d) / "w", attempts=attempts, seed=seed, shard_size=max(attempts // (4 * workers), 1),
                           workers=workers, progress=False)
            out[f"wall_rate_{workers}_workers"] = attempts / (time.perf_counter() - t0)
        out["scaling"] = out[f"wall_rate_{workers}_workers"] / out["single_process_wall_rate"]
    return out


def matching_side_by_side(space: ReactionSpace, *, attempts: int = 300, repeats: int = 3, shard: int = 20_000) -> dict:
    """Single-process sampling with our two-stage slot matching against the reference's way (every slot,
    exact query) on the same shard: identical trees (checked), interleaved, caches emptied per call."""
    def call(name: str, plain: bool):
        def run():
            mol_from_smiles.cache_clear()
            s = ReactionSpace(space.templates, space.blocks, matches=space.matches)
            if plain:
                s._matcher = partial(plain_slot_matches, space.templates)
            trees[name] = [t.to_json() for t in sample_shard(s, 0, shard, attempts)[0]]
        return run

    trees: dict[str, list[str]] = {}
    t = compare({"two_stage": call("two_stage", False), "plain": call("plain", True)}, warmup=1,
                repeats=repeats, items_per_call=attempts)
    return {"attempts": attempts, "same_trees": trees["two_stage"] == trees["plain"],
            "two_stage_attempts_per_s": t["two_stage"].throughput, "plain_attempts_per_s": t["plain"].throughput,
            "speedup": ratio(t, "two_stage", "plain")}


def featurize_benchmark(space: ReactionSpace, trees, feat: FeatureConfig) -> dict:
    f = Featurizer(feat, space.bimolecular_mask())
    from .chem import morgan_on_bits

    morgan_on_bits.cache_clear()  # measure fingerprinting too, not only the cache
    t0 = time.perf_counter()
    data = f.featurize(trees)
    dt = time.perf_counter() - t0
    return {"trees": len(trees), "steps": len(data), "trees_per_second": len(trees) / dt, "steps_per_second": len(data) / dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthesis_pathways.bench")
    p.add_argument("--blocks", default="enamine_1913")
    p.add_argument("--templates", default="hb")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--attempts", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    p.add_argument("--rxn-device", default=None,
                   help="only run the paper-width rxn training-throughput check on this device (e.g. cuda)")
    args = p.parse_args(argv)
    if args.rxn_device:
        import torch

        if args.rxn_device.startswith("cuda") and not torch.cuda.is_available():
            p.error(f"--rxn-device {args.rxn_device}: no CUDA device is visible on this machine")
        res = {p: rxn_throughput(args.rxn_device, precision=p) for p in ("fp32", "bf16")}
        print(json.dumps(res, indent=1))
        return 0
    from .pipeline import load_space

    t0 = time.perf_counter()
    space = load_space(args.templates, args.blocks)
    res = {"match_seconds": time.perf_counter() - t0,
           "knn": knn_benchmark(space, n_queries=args.queries),
           "sampling": sampling_benchmark(space, attempts=args.attempts, workers=args.workers),
           "matching_side_by_side": matching_side_by_side(space, attempts=min(args.attempts, 300))}
    trees, _ = sample_shard(space, 0, 0, min(args.attempts, 300))
    res["featurize"] = featurize_benchmark(space, trees, FeatureConfig())
    res["peak_rss"] = format_bytes(peak_rss_bytes())
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def rxn_throughput(device: str = "cuda", *, batch_size: int = 64, steps: int = 50, precision: str = "fp32") -> dict:
    """Training throughput of the paper-width rxn net (16,384 -> 3,000 x4 -> 91, 76M parameters) on
    random sparse-like inputs: the optional GPU check of the issue (rows per second, peak memory)."""
    import torch

    from common.bench import cuda_peak_bytes

    from .model import MLP

    torch.manual_seed(0)
    model = MLP(16384, 3000, 91).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = (torch.rand(batch_size, 16384, device=device) < 0.02).float()
    y = torch.randint(0, 91, (batch_size,), device=device)
    ctx = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" \
        else torch.autocast(device_type=torch.device(device).type, enabled=False)

    def step():
        with ctx:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": device, "precision": precision, "batch_size": batch_size, "rows_per_second": steps * batch_size / dt,
            "seconds_per_step": dt / steps, "cuda_peak": format_bytes(cuda_peak_bytes()) if device.startswith("cuda") else None}


if __name__ == "__main__":
    raise SystemExit(main())
