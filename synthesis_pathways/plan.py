"""Plan a route to a molecule with a trained model.

    python -m synthesis_pathways.plan "CC(C)(C)OC(=O)N1CCC(C(=O)NCc2ccccc2)CC1" --run-dir runs/synthesis_pathways
    python -m synthesis_pathways.plan SMILES --policy random       # the random-policy baseline, no model

Prints the route as a tree (final product on top, building blocks at the leaves), the most similar
node and its similarity, and writes an image of the route's molecules (``--image``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .chem import canonical_smiles, mol_from_smiles


def draw_route(tree, path: str | Path, target: str | None = None) -> Path:
    """A grid image: the target (if given), then every reaction's reactants and product in order."""
    from rdkit.Chem import Draw

    mols, legends = [], []
    if target is not None:
        mols.append(mol_from_smiles(target))
        legends.append("target")
    for i, s in enumerate(tree.reactions):
        for role, smi in (("reactant 1", s.reactant1), ("reactant 2", s.reactant2), (f"product (R{s.template})", s.product)):
            if smi is not None:
                mols.append(mol_from_smiles(smi))
                legends.append(f"step {i + 1}: {role}")
    img = Draw.MolsToGridImage(mols, molsPerRow=3, subImgSize=(260, 220), legends=legends)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthesis_pathways.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("smiles", help="target molecule")
    p.add_argument("--run-dir", default="runs/synthesis_pathways",
                   help="training run holding model.safetensors (or an older model.pt)")
    p.add_argument("--policy", choices=["model", "random"], default="model")
    p.add_argument("--beam", type=int, default=3, help="first-reactant beam (k = 1..beam)")
    p.add_argument("--templates", default=None, help="template file or key (default: the run's)")
    p.add_argument("--blocks", default=None, help="building-block file or key (default: the run's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image", default="route.png", help="where to write the route image ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle an older model.pt that is not plain weights (this can run code in "
                        "it): only for a run you made yourself")
    args = p.parse_args(argv)

    from common.checkpoint import CheckpointReadError, checkpoint_trust

    from .decode import build_decoder
    from .model import SynNetModel, model_file
    from .pipeline import load_space

    target = canonical_smiles(args.smiles)
    if target is None:
        print(f"error: invalid SMILES {args.smiles!r}", file=sys.stderr)
        return 1
    run_dir = Path(args.run_dir)
    run_cfg = {}
    if (run_dir / "pipeline.json").exists():
        run_cfg = json.loads((run_dir / "pipeline.json").read_text()).get("config", {})
    model = None
    if args.policy == "model":
        path = model_file(run_dir)
        if not path.exists():
            print(f"error: no trained model at {path}; train one with "
                  "`python -m synthesis_pathways.train` or pass --policy random", file=sys.stderr)
            return 1
        try:
            with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
                model = SynNetModel.load(path)
        except CheckpointReadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    space = load_space(args.templates or run_cfg.get("templates", "hb"), args.blocks or run_cfg.get("blocks", "enamine_1913"),
                       blocks_column=run_cfg.get("blocks_column"), data_dir=args.data_dir,
                       cache_dir=run_dir / "cache" if run_dir.exists() else None)
    decoder = build_decoder(space, model, policy=args.policy, seed=args.seed)
    result = decoder.plan(target, beam=args.beam)
    print(f"target: {target}")
    if not result.finished:
        print(f"no finished route (similarity 0) after {result.seconds:.2f} s")
        return 0
    print(f"answer: {result.best}  (Tanimoto {result.similarity:.3f}, "
          f"{'recovered' if result.best == target else 'analog'}, k={result.k}, {result.seconds:.2f} s)")
    print(result.tree.pretty(space.templates))
    if args.image:
        print(f"image: {draw_route(result.tree, args.image, target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
