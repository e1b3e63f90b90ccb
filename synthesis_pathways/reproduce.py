"""Reproduce SynNet's planning and design numbers at the scale this machine allows.

    python -m synthesis_pathways.reproduce --profile smoke    # seconds (tests)
    python -m synthesis_pathways.reproduce --profile quick    # a few CPU-minutes
    python -m synthesis_pathways.reproduce --profile full     # hours; resumable (rerun the same command)

Every profile: sample -> featurize -> fit the four nets (resumable pipeline in the work dir), then plan
held-out sampled roots, ChemProjector test targets and ChEMBL targets with the trained model and with
a random-policy decoder; quick/full add property correlations, the GA and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import TrainerConfig
from common.reproduce import ProfileContext, ReproReport, Row, run_profiles

from .data import read_molecules, read_routes
from .decode import build_decoder
from .evaluate import (
    mean_reciprocal_rank,
    nearest_block_similarity,
    plan_targets,
    property_correlations,
    recovery_by_depth,
    summarize,
)
from .featurize import StepData, network_data
from .knn import CosineKNN
from .model import SynNetModel, model_file, paper_parameter_counts, validate
from .pipeline import PipelineConfig, load_space, load_trees, run_pipeline

PROPERTY_NAMES = {"qed": "QED", "logp": "logP", "mw": "MW", "sa": "SA"}
PAPER = {"reachable": (0.510, 0.759), "chembl": (0.045, 0.423),
         "zinc": (0.190, 0.623)}  # ZINC: the CS-433 reproduction with the released checkpoints
CAVEATS = """\
- Pool A (1,913 Enamine blocks) contains every block of the ChemProjector test routes, so results on
  those routes are optimistic; our "held-out" set is roots of our own sampled trees (the paper's
  reachable set is the same kind of set, from a 150k-block Enamine pool and 600k sampled trees).
- Tree counts, network widths, fingerprint sizes, target counts and GA budgets all differ from the
  paper (see the table rows); paper numbers are shown beside ours, not as reproduced.
- "similarity (all)" counts failures as 0 (the paper's definition); "similarity (unrecovered,
  finished)" is what SynNet's evaluation script prints.
- Timings were taken on 2 cores shared with other jobs: provisional.
"""


@dataclass
class Profile:
    pipeline: PipelineConfig
    trainer: TrainerConfig
    n_heldout: int = 20
    n_chemprojector: int = 20
    n_chembl: int = 0
    n_zinc: int = 0  # the first n molecules of zinc250k.txt.gz
    n_random_baseline: int = 20
    beam: int = 3
    ga: dict = field(default_factory=dict)  # objective -> GA settings; empty: no GA
    bench: bool = False


def _profiles() -> dict[str, Profile]:
    return {
        "smoke": Profile(
            PipelineConfig(attempts=160, shard_size=40, nbits=256, emb_bits=64,
                           hidden={"act": 32, "rt1": 32, "rxn": 32, "rt2": 32}, lr=1e-3),
            TrainerConfig(max_epochs=1, batch_size=32, progress_bar=False, log_every_steps=20),
            n_heldout=10, n_chemprojector=10, n_chembl=0, n_zinc=3, n_random_baseline=10, beam=1),
        "quick": Profile(
            PipelineConfig(attempts=2000, shard_size=250, nbits=1024, emb_bits=256,
                           hidden={"act": 256, "rt1": 256, "rxn": 512, "rt2": 512}, lr=3e-4),
            TrainerConfig(max_epochs=15, batch_size=64, early_stopping_patience=3, progress_bar=False,
                          log_every_steps=50),
            n_heldout=40, n_chemprojector=40, n_chembl=30, n_random_baseline=30, beam=3,
            ga={"qed": {"population": 16, "offspring": 32, "generations": 4, "n_seeds": 16}}, bench=True),
        "full": Profile(
            PipelineConfig(attempts=120_000, shard_size=500, workers=2, nbits=2048, emb_bits=256,
                           hidden={"act": 512, "rt1": 512, "rxn": 1024, "rt2": 1024}, lr=3e-4),
            TrainerConfig(max_epochs=30, batch_size=64, early_stopping_patience=3, progress_bar=True,
                          log_every_steps=200),
            n_heldout=1000, n_chemprojector=1000, n_chembl=1000, n_zinc=1000, n_random_baseline=200, beam=3,
            ga={"qed": {"population": 32, "offspring": 128, "generations": 20, "n_seeds": 32},
                "plogp": {"population": 32, "offspring": 128, "generations": 20, "n_seeds": 32}}, bench=True),
    }


def _evaluate_set(name, decoder, targets, work, beam, progress_bar, decoder_key: dict):
    return plan_targets(decoder, targets, beam=beam, progress_bar=progress_bar, desc=f"planning {name}",
                        cache_path=work / f"plan_{name}.jsonl", cache_params=decoder_key)


def _plot_similarities(sets: dict[str, list], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, results in sets.items():
        ax.hist([r.similarity for r in results], bins=20, range=(0, 1), alpha=0.5, label=name)
    ax.set_xlabel("Tanimoto(best node, target), failures = 0")
    ax.set_ylabel("targets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(ctx: ProfileContext, prof: Profile) -> ReproReport:
    work = ctx.work_dir
    pipe_dir = work / "train"
    trainer = dataclasses.replace(prof.trainer, seed=ctx.seed)
    if ctx.jobs:  # sampling processes; the trees do not depend on how many produce them
        prof = dataclasses.replace(prof, pipeline=dataclasses.replace(prof.pipeline, workers=ctx.jobs))
    info = run_pipeline(prof.pipeline, pipe_dir, trainer_cfg=trainer, data_dir=ctx.data_dir,
                        resume="auto" if ctx.resume != "never" else "never", progress=prof.trainer.progress_bar)
    model = SynNetModel.load(model_file(pipe_dir))
    space = load_space(prof.pipeline.templates, prof.pipeline.blocks, data_dir=ctx.data_dir, cache_dir=pipe_dir / "cache")
    decoder = build_decoder(space, model)
    random_decoder = build_decoder(space, None, policy="random", seed=ctx.seed)
    pb = prof.trainer.progress_bar

    heldout = [t.root for t in load_trees(pipe_dir, "test")][: prof.n_heldout]
    routes, _ = read_routes("chemprojector_routes", data_dir=ctx.data_dir)
    routes = routes[: prof.n_chemprojector]
    sets = {"heldout": heldout, "chemprojector": [r.target for r in routes]}
    if prof.n_chembl:
        sets["chembl"] = read_molecules("chembl_1k", data_dir=ctx.data_dir).smiles[: prof.n_chembl]
    if prof.n_zinc:
        sets["zinc"] = read_molecules("zinc250k", data_dir=ctx.data_dir, limit=prof.n_zinc).smiles
    # planned targets are kept as they finish, keyed by the model file and the policy (a retrained model
    # or another seed plans again)
    model_key = {"model_sha1": hashlib.sha1(model_file(pipe_dir).read_bytes()).hexdigest()}
    random_key = {"policy": "random", "seed": ctx.seed}
    results = {name: _evaluate_set(name, decoder, t, work, prof.beam, pb, model_key) for name, t in sets.items() if t}
    summaries = {name: summarize(r) for name, r in results.items()}
    baseline = {name: summarize(_evaluate_set(f"{name}_random", random_decoder, t[: prof.n_random_baseline], work,
                                              prof.beam, pb, random_key))
                for name, t in sets.items() if t}
    # answering with the closest single block, no reaction: what the pool alone gives each target
    nearest = {name: nearest_block_similarity([r.target for r in res], space.blocks) for name, res in results.items()}

    # per-net test metrics (act/rxn accuracy, rt1 MSE and MRR)
    test_steps = StepData.load(pipe_dir / "features" / "test.npz")
    net_metrics = {}
    for net in ("act", "rxn", "rt1", "rt2"):
        d = network_data(test_steps, net, space.n_templates, rt2_keep_unimolecular=prof.pipeline.rt2_keep_unimolecular)
        if len(d):
            net_metrics[net] = validate(model.nets[net], d, net)
    rt1 = network_data(test_steps, "rt1", space.n_templates)
    mrr = math.nan
    if len(rt1):
        import torch

        emb = np.stack([_bits(decoder.featurizer.emb(b), model.feat.emb_bits) for b in space.blocks])
        with torch.no_grad():
            pred = model.nets["rt1"](torch.from_numpy(rt1.x.toarray())).numpy()
        knn = CosineKNN(emb)
        true_idx = np.array([_match_row(knn.unit, row) for row in rt1.y])
        ok = true_idx >= 0
        mrr = mean_reciprocal_rank(pred[ok], true_idx[ok], knn) if ok.any() else math.nan

    rows: list[Row] = []
    h = summaries.get("heldout", {})
    head_kw = dict(unit="fraction", split="heldout", paper=PAPER["reachable"][0], higher_is_better=True,
                   note=f"n={h.get('n')}, profile {ctx.profile}; paper: 69,548 reachable targets")
    headline = (Row.from_items("recovery, held-out sampled roots (Tanimoto = 1)",
                               [r.recovered_fp for r in results["heldout"]], **head_kw)
                if results.get("heldout") else Row("recovery, held-out sampled roots (Tanimoto = 1)", None, **head_kw))
    for name, s in summaries.items():
        paper = {"heldout": PAPER["reachable"], "chembl": PAPER["chembl"], "zinc": PAPER["zinc"]}.get(name, (None, None))
        res = results[name]
        frac = dict(unit="fraction", split=name)
        rows += [
            Row.from_items(f"{name}: recovery (fingerprint)", [r.recovered_fp for r in res], paper=paper[0],
                           note=f"n={s['n']}", higher_is_better=True, **frac),
            Row.from_items(f"{name}: recovery (canonical SMILES)", [r.recovered_smiles for r in res],
                           note="stricter than the paper's", higher_is_better=True, **frac),
            Row.from_items(f"{name}: mean similarity (all, failures = 0)", [r.similarity for r in res],
                           paper=paper[1], higher_is_better=True, unit="Tanimoto", split=name),
            Row(f"{name}: mean similarity (unrecovered, finished)", s["similarity_unrecovered_finished"],
                unit="Tanimoto", split=name, note="what SynNet's script prints"),
            Row(f"{name}: unfinished", s["unfinished"], higher_is_better=False, **frac),
            Row(f"{name}: seconds per target (beam {prof.beam})", s["seconds_per_target"], unit="s", split=name,
                note="shared cores", kind="timing"),
        ]
        if name in baseline:
            b = baseline[name]
            rows += [Row(f"{name}: random policy recovery", b["recovery_fp"], note=f"baseline, n={b['n']}", **frac),
                     Row(f"{name}: random policy similarity", b["similarity_all"], unit="Tanimoto", split=name,
                         note=f"baseline, n={b['n']}")]
        ours_sim = np.array([r.similarity for r in res])
        rows += [Row.from_items(f"{name}: nearest single block, similarity", nearest[name].tolist(), unit="Tanimoto",
                                split=name,
                                note=f"no reaction; the planner's answer is closer on "
                                     f"{np.mean(ours_sim > nearest[name] + 1e-9):.0%} of targets, farther on "
                                     f"{np.mean(ours_sim < nearest[name] - 1e-9):.0%}")]
    if "chemprojector" in results:
        by_depth = recovery_by_depth(results["chemprojector"], [r.n_reactions for r in routes])
        rows += [Row(f"chemprojector: recovery at route depth {k}", v, unit="fraction", split="chemprojector",
                     note="depth = reactions in the ground-truth route") for k, v in by_depth.items()]
    for net, m in net_metrics.items():
        key = "accuracy" if "accuracy" in m else "mse"
        rows.append(Row(f"{net} test {key}", m[key], split="test", higher_is_better=key == "accuracy",
                        note=f"{info['fit'][net]['parameters']:,} parameters"))
    rows.append(Row("rt1 mean reciprocal rank (test Add steps)", mrr, split="test",
                    note=f"over {len(space.blocks)} blocks"))
    ours_params = sum(v["parameters"] for v in info["fit"].values())
    rows.append(Row("parameters (4 nets)", ours_params, unit="parameters",
                    paper=sum(paper_parameter_counts(space.n_templates).values()),
                    note=f"state {prof.pipeline.nbits} bits, widths {prof.pipeline.hidden}"))
    s = info.get("sample", {})
    sample_note = f"success {s.get('success_rate', 0):.2f}, QED pass {s.get('qed_pass_rate', 0):.2f}"
    rows += [Row("sampled trees kept", s.get("kept"), unit="trees", note=sample_note),
             Row("sampled tree attempts", s.get("attempts"), unit="attempts", paper=600_000, note=sample_note)]

    plots = [_plot_similarities(results, ctx.out_dir / f"similarity_{ctx.profile}.png")]
    extra = {"summaries": summaries, "random_baseline": baseline,
             "nearest_block_similarity": {k: float(v.mean()) for k, v in nearest.items()}, "net_metrics": net_metrics, "pipeline": info}

    if prof.n_chembl and "chembl" in results:
        corr = property_correlations(results["chembl"])
        rows += [Row(f"chembl: target/answer property correlation, {PROPERTY_NAMES[k]}", corr[k], unit="r",
                     split="chembl", paper_note="0.03-0.28", note="paper Figure 4 (secondary source)")
                 for k in PROPERTY_NAMES]
        extra["chembl_correlations"] = corr
    if "heldout" in results and prof.n_chembl:
        corr = property_correlations(results["heldout"])
        rows += [Row(f"held-out: target/answer property correlation, {PROPERTY_NAMES[k]}", corr[k], unit="r",
                     split="heldout", paper_note="0.60-0.70", note="paper Figure 4, reachable set (secondary source)")
                 for k in PROPERTY_NAMES]

    for objective, g in prof.ga.items():
        ga = _run_ga(ctx, decoder, objective, g, work, progress_bar=pb)
        paper = {"qed": {"top1": 0.948, "top10": 0.948, "top100": 0.947}}.get(objective, {})
        ga_note = (f"pop {g['population']}, offspring {g['offspring']}, {ga['generations']} gens, "
                   f"{ga['oracle_calls']} oracle calls; seed population {ga['seed_mean']:.3f} mean, "
                   f"{ga['seed_std']:.3f} sd")
        rows += [Row(f"GA {objective}: {k.replace('top', 'top-')}", ga[k], unit=objective, paper=paper.get(k),
                     note=ga_note, higher_is_better=True) for k in ("top1", "top10", "top100")]
        extra[f"ga_{objective}"] = ga

    if prof.bench:
        from .bench import knn_benchmark, sampling_benchmark

        kb = knn_benchmark(space, emb_bits=model.feat.emb_bits, n_queries=100)
        sb = sampling_benchmark(space, attempts=200, workers=1)
        knn_note = (f"x{kb['speedup_loop_vs_balltree']:.0f}; same similarity on "
                    f"{kb['same_similarity_as_reference']:.0%}")
        rows += [Row("k-NN queries/s, ours (one at a time)", kb["ours_loop_qps"], unit="queries/s", note=knn_note,
                     kind="timing"),
                 Row("k-NN queries/s, BallTree(callable cosine)", kb["balltree_callable_qps"], unit="queries/s",
                     note=knn_note, kind="timing"),
                 Row("sampling attempts per CPU-second (1 process)", sb["attempts_per_cpu_second"], unit="attempts/s",
                     paper_note="about 58 trees/s", kind="timing",
                     note=f"{sb['sampled_trees_per_cpu_second']:.1f} successful trees per CPU-second")]
        extra["bench"] = {"knn": kb, "sampling": sb}

    return ReproReport(rows=rows, headline=headline, plots=plots, notes=CAVEATS, extra=extra)


def _bits(onbits, n):
    v = np.zeros(n, dtype=np.float32)
    v[list(onbits)] = 1.0
    return v


def _match_row(unit: np.ndarray, target_bits: np.ndarray) -> int:
    """Index of the block whose embedding equals ``target_bits`` (-1 if none)."""
    norm = np.linalg.norm(target_bits)
    if norm == 0:
        return -1
    sims = unit @ (target_bits / norm)
    i = int(np.argmax(sims))
    return i if sims[i] > 1 - 1e-6 else -1


def _run_ga(ctx: ProfileContext, decoder, objective: str, g: dict, work: Path, progress_bar: bool = False) -> dict:
    from .ga import GAConfig, GeneticOptimizer, seed_genomes
    from .oracles import get_oracle

    rng = np.random.default_rng(ctx.seed)
    pool = read_molecules("zinc250k", data_dir=ctx.data_dir, limit=20_000).smiles
    seeds = [pool[i] for i in rng.choice(len(pool), g["n_seeds"], replace=False)]
    cfg = GAConfig(population=g["population"], offspring=g["offspring"], generations=g["generations"], seed=ctx.seed)
    ga_dir = work / f"ga_{objective}"
    ga_dir.mkdir(parents=True, exist_ok=True)
    result = GeneticOptimizer(decoder, get_oracle(objective), cfg).run(
        seed_genomes(seeds, decoder.featurizer.cfg.nbits), run_dir=ga_dir, resume=ctx.resume != "never",
        progress_bar=progress_bar)
    return result.summary() | {"top": list(zip(result.top_smiles[:5], result.top_scores[:5]))}


def smoke(ctx: ProfileContext) -> ReproReport:
    return run(ctx, _profiles()["smoke"])


def quick(ctx: ProfileContext) -> ReproReport:
    return run(ctx, _profiles()["quick"])


def full(ctx: ProfileContext) -> ReproReport:
    return run(ctx, _profiles()["full"])


def main(argv: list[str] | None = None):
    return run_profiles("synthesis_pathways", {"smoke": smoke, "quick": quick, "full": full}, argv=argv)


if __name__ == "__main__":
    main()
