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
from .data import read_molecules
from .featurize import FeatureConfig, Featurizer
from .knn import CosineKNN
from .pipeline import load_space
from .sampling import sample_shard, sample_to_disk
from .space import ReactionSpace, plain_slot_matches

BENCH_RUN = "runs/synthesis_pathways_bench"
"""Scratch run folder of the benchmarks (its cache/ keeps the pools' match matrices between calls)."""


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


# ---------------------------------------------------------------------------------------------------
# Planner throughput: a file in one process against one process per target


def plan_throughput(targets: list[str], run_dir: str, *, policy: str = "model", data_dir=None) -> dict:
    """Targets per second of ``plan --input FILE`` (one process: the model, the pool and RDKit load once)
    against ``plan SMILES`` started once per target (what a user scripting the old CLI paid), same targets,
    same options; wall-clock per process (each is single-threaded)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if data_dir:
        env["PAPERS_DATA_DIR"] = str(data_dir)
    import resource

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    base = [sys.executable, "-m", "synthesis_pathways.plan", "--run-dir", str(run_dir), "--policy", policy]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "targets.smi"
        f.write_text("\n".join(targets) + "\n")
        t0, c0 = time.perf_counter(), children_cpu()
        r = subprocess.run(base + ["--input", str(f)], capture_output=True, text=True, env=env, check=True)
        file_s, file_cpu = time.perf_counter() - t0, children_cpu() - c0
        records = [json.loads(line) for line in r.stdout.splitlines()]
    t0, c0 = time.perf_counter(), children_cpu()
    for t in targets:
        subprocess.run(base + [t], capture_output=True, text=True, env=env)  # exit 1 = a target not planned
    each_s, each_cpu = time.perf_counter() - t0, children_cpu() - c0
    planning = sum(rec["seconds"] or 0.0 for rec in records)
    return {"targets": len(targets), "file_one_process_s": file_s, "one_process_per_target_s": each_s,
            "file_targets_per_s": len(targets) / file_s, "per_process_targets_per_s": len(targets) / each_s,
            "file_targets_per_cpu_s": len(targets) / file_cpu, "per_process_targets_per_cpu_s": len(targets) / each_cpu,
            "speedup": each_s / file_s, "speedup_cpu": each_cpu / file_cpu, "planning_s_in_file_run": planning,
            "statuses": {s: sum(rec["status"] == s for rec in records) for s in {rec["status"] for rec in records}}}


# ---------------------------------------------------------------------------------------------------
# CPU-hour estimate of a reproduce profile from small measured runs


class _CPU:
    """``with _CPU() as c: ...`` then ``c.s``: the process CPU-seconds of the block (robust to other load)."""

    def __enter__(self):
        self.t0 = time.process_time()
        return self

    def __exit__(self, *exc):
        self.s = time.process_time() - self.t0


def train_costs(feat: FeatureConfig, hidden: dict, steps, n_templates: int, ranker, *, batches: int = 20,
                batch_size: int = 64, threads: int = 1) -> dict:
    """CPU-seconds per training row (forward, backward, Adam step, batches densified as the trainer does) and
    per validation row (forward + the k-NN ranks for rt1/rt2) of each net at the given widths."""
    import torch

    from .featurize import SparseRowDataset, network_data
    from .model import MLP, loss_fn_for, validate

    torch.set_num_threads(threads)
    out = {}
    for net in ("act", "rt1", "rxn", "rt2"):
        data = network_data(steps, net, n_templates)
        if len(data) < 2:
            continue
        ds = SparseRowDataset(data)
        model = MLP(feat.input_dim(net, n_templates), hidden[net], feat.output_dim(net, n_templates))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = loss_fn_for(net)
        rng = np.random.default_rng(0)

        with _CPU() as train_cpu:
            for _ in range(batches):
                batch = ds.collate(rng.integers(0, len(ds), size=batch_size).tolist())
                res = loss_fn(model, batch)
                loss = res["loss"] if isinstance(res, dict) else res
                opt.zero_grad()
                loss.backward()
                opt.step()
        with _CPU() as eval_cpu:
            validate(model, data, net, ranker=ranker if net in ("rt1", "rt2") else None)
        out[net] = {"train_cpu_per_row": train_cpu.s / (batches * batch_size), "eval_cpu_per_row": eval_cpu.s / len(data),
                    "parameters": sum(p.numel() for p in model.parameters())}
    return out


def estimate_profile(profile: str = "full", *, data_dir=None, cache_dir=None, sample_attempts: int = 300,
                     assumed_epochs: dict | None = None, decode_targets: int = 10, model_dir=None,
                     train_batches: int = 20) -> dict:
    """Measure, on small runs, the rates a reproduce profile's stages depend on (sampling attempts and kept
    trees per CPU-second per pool, featurization, CPU-s per training and validation row of each net at the
    profile's widths, decoding CPU-s per target), and scale them to the profile's sizes. Epoch counts are
    not knowable before the run: ``assumed_epochs`` (per net, per learning rate, including the patience
    epochs) is an input, printed with the estimate."""
    from .decode import PlanOptions, build_decoder
    from .featurize import Featurizer
    from .model import SynNetModel, model_file
    from .pipeline import block_ranker
    from .reproduce import POOLS, _profiles, compose_training

    prof = _profiles()[profile]
    epochs = {"act": 30, "rt1": 60, "rxn": 25, "rt2": 60} | (assumed_epochs or {})
    model = SynNetModel.load(model_file(model_dir)) if model_dir else None
    pools = {}
    for pool in prof.pools:
        pipe, trainer = compose_training(prof.experiment, POOLS[pool], data_dir=data_dir)
        with _CPU() as match_cpu:
            space = load_space(pipe.templates, pipe.blocks, blocks_column=pipe.blocks_column, data_dir=data_dir,
                               cache_dir=cache_dir, filter_blocks=pipe.filter_blocks)
        with _CPU() as sample_cpu:
            trees, _ = sample_shard(space, 0, 50_000, sample_attempts)
        featurizer = Featurizer(pipe.feat, space.bimolecular_mask(), space.partner_slot)
        with _CPU() as feat_cpu:
            steps = featurizer.featurize(trees)
        ranker = block_ranker(space, pipe.feat)
        costs = train_costs(pipe.feat, pipe.hidden, steps, space.n_templates, ranker, batches=train_batches,
                            threads=trainer.num_threads or 1)
        kept_per_attempt = len(trees) / sample_attempts
        n_trees = pipe.attempts * kept_per_attempt
        from .featurize import network_data

        rows_per_tree = {net: len(network_data(steps, net, space.n_templates)) / max(len(trees), 1) for net in costs}
        split = pipe.split
        grid = len(pipe.lr_grid) or 1
        train = {}
        for net, c in costs.items():
            tr_rows, va_rows = n_trees * split[0] * rows_per_tree[net], n_trees * split[1] * rows_per_tree[net]
            per_epoch = tr_rows * c["train_cpu_per_row"] + va_rows * c["eval_cpu_per_row"]
            train[net] = {"rows": [int(tr_rows), int(va_rows)], "cpu_s_per_epoch": per_epoch,
                          "epochs_assumed_per_lr": epochs[net], "lrs": grid, "cpu_s": per_epoch * epochs[net] * grid}
        # decoding: the model if given, else untrained nets at the profile's widths (tree lengths differ)
        if model is None:
            import torch

            from .model import NetConfig, build_networks

            torch.manual_seed(0)
            model = SynNetModel(build_networks(pipe.feat, space.n_templates, NetConfig(pipe.hidden)), pipe.feat,
                                space.n_templates, NetConfig(pipe.hidden)).eval()
            decode_model = "untrained nets at the profile's widths"
        else:
            decode_model = str(model_dir)
        decoder = build_decoder(space, model)
        in_dist = [t.root for t in trees[:decode_targets]]
        ood = read_molecules("chembl_10k", data_dir=data_dir, limit=decode_targets).smiles
        per_target = {}
        for kind, targets in (("roots", in_dist), ("chembl", ood)):
            for name, opts in (("rollouts3", PlanOptions(beam=3)), ("rollouts6", PlanOptions(beam=3, target_nn=3)),
                               ("beam_search", prof.beam_search), ("rollout1", PlanOptions(beam=1))):
                with _CPU() as cpu:
                    for t in targets:
                        decoder.plan(t, options=opts)
                per_target[f"{kind}_{name}"] = cpu.s / max(len(targets), 1)
        ev = {
            "test_sets": prof.n_heldout * per_target["roots_rollouts3"]
            + (prof.n_chemprojector + prof.n_chembl + prof.n_zinc) * per_target["chembl_rollouts3"],
            "seen_roots": prof.n_seen * per_target["roots_rollouts3"],
            "random_baseline": 4 * prof.n_random_baseline * per_target["chembl_rollouts3"],
            "validation_options": prof.n_valid * per_target["roots_rollouts6"]
            + prof.n_chembl_valid * per_target["chembl_rollouts6"]
            + prof.n_beam_search * (per_target["roots_beam_search"] + per_target["chembl_beam_search"]),
        }
        ga = 0.0
        if pool in prof.ga_pools:
            for g in prof.ga.values():  # ~1.6 decodes per oracle call in the last full run (2,592 / 1,602)
                calls = g.get("max_oracle_calls") or g["generations"] * g["offspring"]
                ga += 1.6 * calls * per_target["chembl_rollout1"]
        stages = {"match": match_cpu.s, "sampling": pipe.attempts / sample_attempts * sample_cpu.s,
                  "featurize": n_trees / max(len(trees), 1) * feat_cpu.s, "training": sum(v["cpu_s"] for v in train.values()),
                  "evaluation": sum(ev.values()), "ga": ga}
        pools[pool] = {"attempts": pipe.attempts, "kept_per_attempt": kept_per_attempt, "trees": int(n_trees),
                       "attempts_per_cpu_s": sample_attempts / sample_cpu.s, "train": train, "train_costs": costs,
                       "decode_cpu_s_per_target": per_target, "decode_model": decode_model, "evaluation": ev,
                       "stages_cpu_s": stages, "cpu_hours": sum(stages.values()) / 3600}
    return {"profile": profile, "assumed_epochs_per_lr": epochs, "pools": pools,
            "cpu_hours": sum(p["cpu_hours"] for p in pools.values()),
            "note": "CPU-seconds (process time) measured on small runs and scaled linearly; epochs are assumed"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthesis_pathways.bench")
    p.add_argument("--blocks", default="enamine_1913")
    p.add_argument("--templates", default="hb")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--attempts", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    p.add_argument("--estimate", default=None, metavar="PROFILE",
                   help="only estimate a reproduce profile's CPU-hours from small measured runs (e.g. full)")
    p.add_argument("--model-dir", default=None, help="--estimate: a trained run to time decoding with")
    p.add_argument("--epochs", default=None, help="--estimate: assumed epochs per lr, e.g. act=30,rt1=60")
    p.add_argument("--plan-throughput", type=int, default=0, metavar="N",
                   help="only time the planner on the first N ChEMBL 1k targets: a file in one process vs one "
                        "process per target (--model-dir: the trained run; without it, the random policy)")
    p.add_argument("--rxn-device", default=None,
                   help="only run the paper-width rxn training-throughput check on this device (e.g. cuda)")
    args = p.parse_args(argv)
    if args.estimate:
        epochs = {k: int(v) for k, v in (kv.split("=") for kv in args.epochs.split(","))} if args.epochs else None
        res = estimate_profile(args.estimate, sample_attempts=args.attempts, assumed_epochs=epochs,
                               model_dir=args.model_dir, cache_dir=f"{BENCH_RUN}/cache")
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    if args.plan_throughput:
        targets = read_molecules("chembl_1k", limit=args.plan_throughput).smiles
        res = plan_throughput(targets, args.model_dir or BENCH_RUN,
                              policy="model" if args.model_dir else "random")
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    if args.rxn_device:
        import torch

        if args.rxn_device.startswith("cuda") and not torch.cuda.is_available():
            p.error(f"--rxn-device {args.rxn_device}: no CUDA device is visible on this machine")
        res = {p: rxn_throughput(args.rxn_device, precision=p) for p in ("fp32", "bf16")}
        print(json.dumps(res, indent=1))
        return 0
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
