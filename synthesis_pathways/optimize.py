"""Synthesizable molecular design with the GA (Hydra shell).

    python -m synthesis_pathways.optimize objective=qed
    python -m synthesis_pathways.optimize objective=plogp ga.generations=30 resume=auto

The model and the GA state are loaded as plain weights, never unpickled; ``trust_checkpoint=true`` allows
it for files you made yourself that hold other objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers paths/logger/run_layout)
from common.checkpoint import ResumeError
from common.hydra_utils import report_user_errors, run_dir_from, to_dataclass

from .data import read_molecules
from .decode import build_decoder
from .ga import GAConfig, GeneticOptimizer, random_genomes, seed_genomes
from .model import SynNetModel, model_file
from .oracles import get_oracle
from .pipeline import space_for_run


def run_optimize(cfg: DictConfig, run_dir: Path) -> dict:
    model_dir = Path(cfg.model_dir)
    model = SynNetModel.load(model_file(model_dir)) if cfg.policy == "model" else None
    run_cfg = {}
    if (model_dir / "pipeline.json").exists():
        run_cfg = json.loads((model_dir / "pipeline.json").read_text()).get("config", {})
    space = space_for_run(run_cfg, data_dir=cfg.paths.data_dir, cache_dir=model_dir / "cache")
    decoder = build_decoder(space, model, policy=cfg.policy, seed=cfg.ga.seed)
    ga_cfg = to_dataclass(cfg.ga, GAConfig)
    nbits = decoder.featurizer.cfg.nbits
    rng = np.random.default_rng(ga_cfg.seed)
    if cfg.seeds == "random":
        seeds, seed_smiles = random_genomes(cfg.n_seeds, nbits, rng), []
    else:
        pool = read_molecules(cfg.seeds, data_dir=cfg.paths.data_dir, limit=20_000).smiles
        seed_smiles = [pool[i] for i in rng.choice(len(pool), min(cfg.n_seeds, len(pool)), replace=False)]
        seeds = seed_genomes(seed_smiles, nbits, decoder.featurizer.cfg.radius)
    state = run_dir / "ga_state.pt"
    if cfg.resume == "never" and state.exists():
        raise ResumeError(f"{run_dir} already holds a GA state; pass resume=auto to continue it, or choose another name")
    result = GeneticOptimizer(decoder, get_oracle(cfg.objective), ga_cfg).run(
        seeds, run_dir=run_dir, resume=cfg.resume != "never", progress_bar=cfg.progress_bar)
    out = {"objective": cfg.objective, **result.summary(), "top": result.best(10),
           "seed_smiles": seed_smiles}
    (run_dir / "ga_result.json").write_text(json.dumps(out, indent=1))
    return out


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="optimize")
@report_user_errors
def main(cfg: DictConfig) -> None:
    out = run_optimize(cfg, run_dir_from(cfg))
    budget = f" of a budget of {out['budget']}" if out["budget"] else ""
    print(f"{out['objective']}: top-1 {out['top1']:.3f}, top-10 {out['top10']:.3f}, top-100 {out['top100']:.3f} "
          f"(over all {out['oracle_calls']} oracle calls{budget}), top-10 AUC {out['auc_top10']:.3f}; "
          f"seeds {out['seed_mean']:.3f} ± {out['seed_std']:.3f}; {out['generations']} generations")
    for smi, score in out["top"][:5]:
        print(f"  {score:.3f}  {smi}")


if __name__ == "__main__":
    main()
