"""Plan routes to molecules with a trained model: one target on the command line, or a file / stdin of
targets in one process (the model and the block pool are loaded once).

    python -m synthesis_pathways.plan "CC(C)(C)OC(=O)N1CCC(C(=O)NCc2ccccc2)CC1" --run-dir runs/synthesis_pathways
    python -m synthesis_pathways.plan --input targets.smi --run-dir runs/synthesis_pathways > routes.jsonl
    cat targets.smi | python -m synthesis_pathways.plan --input - --image --out-dir routes/
    python -m synthesis_pathways.plan SMILES --policy random       # the random-policy baseline, no model

With ``--input`` the output is JSON lines, exactly one record per input line (first whitespace token =
SMILES, the rest of the line = name), in input order; a line that cannot be planned (empty, invalid
SMILES, out of scope) is a record with its ``status`` and ``error``, and the exit status is 0. Only an
unreadable input (missing file, not UTF-8) or a missing model exits non-zero. With SMILES arguments the
routes are printed as text and the exit status is 1 when a target could not be planned at all (an
error or out of scope), for scripts that plan one molecule per call.

Targets are standardized with RDKit before planning unless ``--keep-as-given``: the largest fragment by
heavy atoms is kept (salts, solvents and counter-ions stripped) and charges are neutralized where a
neutral form exists. A target is *out of scope*, and not planned unless ``--plan-out-of-scope``, when it
holds an element no building block or template can supply, is larger than ``--max-heavy-atoms``, or is
still a mixture. Route images are written only with ``--image``, into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .chem import canonical_smiles, mol_from_smiles, quiet_rdkit

MAX_HEAVY_ATOMS = 70
"""Default size limit: ChEMBL/ZINC drug-like targets are far below it (the ChEMBL 1k set's largest has
~60 heavy atoms); a 60-mer peptide or a 400-carbon chain is far above it."""


@dataclass
class Standardized:
    smiles: str | None
    changes: list[str] = field(default_factory=list)
    error: str | None = None


def standardize(smiles: str, *, keep_as_given: bool = False) -> Standardized:
    """Canonical SMILES of the largest fragment (by heavy atoms), neutralized; ``keep_as_given`` only
    canonicalizes. ``changes`` says what was done, ``error`` why nothing could be."""
    from rdkit import Chem

    if not smiles:
        return Standardized(None, error="empty line")
    mol = mol_from_smiles(smiles)
    if mol is None:
        return Standardized(None, error=f"invalid SMILES {smiles!r}")
    if keep_as_given:
        return Standardized(Chem.MolToSmiles(mol))
    with quiet_rdkit():  # the standardizer logs every step to stderr
        return _standardize(mol)


def _standardize(mol) -> Standardized:
    from rdkit import Chem
    from rdkit.Chem.MolStandardize import rdMolStandardize

    changes = []
    frags = Chem.GetMolFrags(mol, asMols=True)
    if len(frags) > 1:
        params = rdMolStandardize.CleanupParameters()
        params.largestFragmentChooserCountHeavyAtomsOnly = True
        kept = rdMolStandardize.LargestFragmentChooser(params).choose(mol)
        kept_smiles = Chem.MolToSmiles(kept)
        dropped = [Chem.MolToSmiles(f) for f in frags]
        if kept_smiles in dropped:
            dropped.remove(kept_smiles)
        changes.append(f"kept the largest fragment, stripped {'.'.join(dropped)}")
        mol = kept
    before = canonical_smiles(Chem.MolToSmiles(mol))
    after = canonical_smiles(Chem.MolToSmiles(rdMolStandardize.Uncharger().uncharge(mol)))
    if after is None:  # cannot happen for a sanitized molecule; keep the fragment as it is
        after = before
    if after != before:
        changes.append(f"neutralized {before} -> {after}")
    return Standardized(after, changes)


def scope_problems(smiles: str, elements: set[str], max_heavy_atoms: int) -> list[str]:
    """Why the planner cannot make this molecule from its pool and templates ([] when in scope)."""
    mol = mol_from_smiles(smiles)
    problems = []
    outside = sorted({a.GetSymbol() for a in mol.GetAtoms()} - elements)
    if outside:
        problems.append(f"element(s) {', '.join(outside)} in no building block or template "
                        f"(they supply {', '.join(sorted(elements))})")
    heavy = mol.GetNumHeavyAtoms()
    if heavy > max_heavy_atoms:
        problems.append(f"{heavy} heavy atoms, more than --max-heavy-atoms {max_heavy_atoms}")
    if "." in smiles:
        problems.append("a mixture of several molecules (standardize, or plan each)")
    return problems


def draw_route(tree, path: str | Path, target: str | None = None, answer: str | None = None) -> Path:
    """A grid image: the target (if given), then every reaction's reactants and product in order (or the
    answer alone when it is a building block)."""
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
    if not tree.reactions and answer is not None:
        mols.append(mol_from_smiles(answer))
        legends.append("answer: building block")
    img = Draw.MolsToGridImage(mols, molsPerRow=3, subImgSize=(260, 220), legends=legends)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def route_steps(tree) -> list[dict]:
    from .syntree import ACTION_NAMES

    return [{"action": ACTION_NAMES[s.action], "template": s.template,
             "reactants": [r for r in (s.reactant1, s.reactant2) if r is not None], "product": s.product}
            for s in tree.reactions]


class Planner:
    """Everything loaded once: the model, the pool, the decoder; :meth:`record` plans one input line."""

    def __init__(self, decoder, options, *, keep_as_given: bool = False, max_heavy_atoms: int = MAX_HEAVY_ATOMS,
                 plan_out_of_scope: bool = False, image_dir: Path | None = None):
        self.decoder, self.options = decoder, options
        self.keep_as_given, self.max_heavy_atoms = keep_as_given, max_heavy_atoms
        self.plan_out_of_scope, self.image_dir = plan_out_of_scope, image_dir
        self.elements = decoder.space.elements()

    def record(self, line: str, lineno: int) -> dict:
        parts = line.strip().split(None, 1)  # SMILES, then an optional name
        raw, name = (parts + ["", ""])[:2] if parts else ("", "")
        rec = {"line": lineno, "input": raw, "name": name.strip() or None, "smiles": None, "status": "error",
               "error": None, "standardization": [], "out_of_scope": [], "answer": None, "similarity": None,
               "recovered": None, "answer_is_block": None, "route": None, "seconds": None, "image": None}
        std = standardize(raw, keep_as_given=self.keep_as_given)
        if std.smiles is None:
            rec["error"] = std.error
            return rec
        rec["smiles"], rec["standardization"] = std.smiles, std.changes
        rec["out_of_scope"] = scope_problems(std.smiles, self.elements, self.max_heavy_atoms)
        if rec["out_of_scope"] and not self.plan_out_of_scope:
            rec["status"] = "out_of_scope"
            rec["error"] = "; ".join(rec["out_of_scope"])
            return rec
        t0 = time.perf_counter()
        result = self.decoder.plan(std.smiles, options=self.options)
        rec["seconds"] = round(time.perf_counter() - t0, 4)
        if not result.finished:
            rec["status"], rec["similarity"], rec["error"] = "no_route", 0.0, "no decoded tree ended (similarity 0)"
            return rec
        rec |= {"status": "ok", "answer": result.best, "similarity": round(result.similarity, 4),
                "recovered": result.best == std.smiles, "answer_is_block": result.answer_is_block,
                "route": route_steps(result.tree)}
        if self.image_dir is not None:
            rec["image"] = str(draw_route(result.tree, self.image_dir / f"route_{lineno}.png", std.smiles, result.best))
        rec["_result"] = result
        return rec


def print_text(rec: dict, templates, out) -> None:
    """A human-readable block for one record (the command line with SMILES arguments)."""
    print(f"target: {rec['smiles'] or rec['input']}", file=out)
    for change in rec["standardization"]:
        print(f"  standardized: {change}", file=out)
    if rec["status"] != "ok":
        print(f"  {rec['status']}: {rec['error']}", file=out)
        return
    r = rec["_result"]
    kind = "recovered" if rec["recovered"] else "analog"
    print(f"answer: {rec['answer']}  (Tanimoto {rec['similarity']:.3f}, {kind}, {r.source} k={r.k}, "
          f"{rec['seconds']:.2f} s)", file=out)
    if rec["answer_is_block"]:
        print(f"{rec['answer']}  [building block: bought, no reaction]", file=out)
    else:
        print(r.tree.pretty(templates), file=out)
    if rec["image"]:
        print(f"image: {rec['image']}", file=out)


def _read_lines(path: str) -> list[str]:
    """Lines of the input file or stdin ('-'); raises OSError/UnicodeDecodeError when unreadable."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        data = Path(path).read_bytes()
    return data.decode("utf-8").splitlines()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthesis_pathways.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("smiles", nargs="*", help="target molecules (or use --input)")
    p.add_argument("--input", "-i", default=None, help="file of targets, one per line ('-': stdin); JSON lines out")
    p.add_argument("--output", "-o", default=None, help="write the records here instead of stdout")
    p.add_argument("--jsonl", action="store_true", help="JSON lines also for SMILES given as arguments")
    p.add_argument("--run-dir", default="runs/synthesis_pathways",
                   help="training run holding model.safetensors (or an older model.pt)")
    p.add_argument("--policy", choices=["model", "random"], default="model")
    p.add_argument("--beam", type=int, default=3, help="first-reactant rollouts k = 1..beam")
    p.add_argument("--protocol", choices=["ours", "reference"], default="ours",
                   help="how the rollouts' answer is chosen (see synthesis_pathways.decode)")
    p.add_argument("--target-nn", type=int, default=0,
                   help="extra rollouts starting from the target's j most similar blocks")
    p.add_argument("--search", choices=["rollouts", "beam"], default="rollouts",
                   help="greedy rollouts (the paper) or a beam search over all four decisions")
    p.add_argument("--width", type=int, default=3, help="beam search: partial trees kept per step")
    p.add_argument("--keep-as-given", action="store_true",
                   help="plan the SMILES as given (no fragment stripping or neutralization)")
    p.add_argument("--max-heavy-atoms", type=int, default=MAX_HEAVY_ATOMS)
    p.add_argument("--plan-out-of-scope", action="store_true", help="plan out-of-scope targets anyway (flagged)")
    p.add_argument("--image", action="store_true", help="draw each route into --out-dir")
    p.add_argument("--out-dir", default="plan_routes", help="folder for the route images")
    p.add_argument("--templates", default=None, help="template file or key (default: the run's)")
    p.add_argument("--blocks", default=None, help="building-block file or key (default: the run's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle an older model.pt that is not plain weights (this can run code in "
                        "it): only for a run you made yourself")
    args = p.parse_args(argv)
    if bool(args.smiles) == bool(args.input):
        p.error("give target SMILES as arguments or --input FILE ('-' for stdin), not both")

    if args.input is not None:  # read everything first: an unreadable input fails before any loading
        try:
            lines = _read_lines(args.input)
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read --input {args.input}: {e}", file=sys.stderr)
            return 1
    else:
        lines = list(args.smiles)

    from common.checkpoint import CheckpointReadError, checkpoint_trust
    from common.data import DataFormatError, DatasetNotFoundError

    from .decode import PlanOptions, build_decoder
    from .model import SynNetModel, model_file
    from .pipeline import space_for_run

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
    try:
        options = PlanOptions(beam=args.beam, protocol=args.protocol, target_nn=args.target_nn, search=args.search,
                              width=args.width)
        space = space_for_run(run_cfg, data_dir=args.data_dir, cache_dir=run_dir / "cache" if run_dir.exists() else None,
                              templates=args.templates, blocks=args.blocks)
    except (ValueError, DatasetNotFoundError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    planner = Planner(build_decoder(space, model, policy=args.policy, seed=args.seed), options,
                      keep_as_given=args.keep_as_given, max_heavy_atoms=args.max_heavy_atoms,
                      plan_out_of_scope=args.plan_out_of_scope, image_dir=Path(args.out_dir) if args.image else None)
    as_json = args.input is not None or args.jsonl
    out = open(args.output, "w") if args.output else sys.stdout
    failed = 0
    try:
        for lineno, line in enumerate(lines, start=1):
            rec = planner.record(line, lineno)
            failed += rec["status"] in ("error", "out_of_scope")
            if as_json:
                rec.pop("_result", None)
                out.write(json.dumps(rec) + "\n")
                out.flush()
            else:
                print_text(rec, space.templates, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failed and args.input is None else 0


if __name__ == "__main__":
    sys.exit(main())
