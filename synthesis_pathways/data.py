"""Readers for the synthesis data: templates, building-block pools, routes and target lists.

Every reader finds its file through ``common.data.dataset_path`` when given a dataset key, or takes a
path. A file that is structurally wrong (missing column, unparsable template, malformed route token)
raises ``DataFormatError`` naming the file and line. An *invalid SMILES* is not fatal: it is reported
with file and line, counted in ``skipped`` and left out; every other row is kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.data import DataFormatError, DatasetNotFoundError, dataset_path
from common.logging import get_logger

from .chem import Template, canonical_smiles, mol_from_smiles, quiet_rdkit

log = get_logger(__name__)

CHEMPROJECTOR = "https://github.com/luost26/ChemProjector (data/synthesis_planning/)"
SOURCES = {
    # key: (relative path under the data root, human name, where to get it)
    "hb": ("synthesis/templates/hb.txt", "Hartenfeller-Button templates",
           "https://github.com/wenhao-gao/SynNet (data/assets/reaction-templates/hb.txt)"),
    "synformer": ("synthesis/templates/synformer_comprehensive.txt", "SynFormer templates",
                  "https://github.com/wenhao-gao/synformer (data/rxn_templates/comprehensive.txt)"),
    "enamine_1913": ("synthesis/building_blocks/enamine_us_subset_1913.smi", "Enamine 1,913-block subset",
                     CHEMPROJECTOR + " test_building_blocks.smi"),
    "wuxi": ("synthesis/building_blocks/wuxi_galaxi.csv", "WuXi GalaXi building blocks",
             "https://github.com/swansonk14/SyntheMol (synthemol/resources/wuxi/building_blocks.csv)"),
    "chemprojector_routes": ("synthesis/routes/chemprojector_test_synthesis.csv", "ChemProjector test routes",
                             CHEMPROJECTOR + " test_synthesis.csv"),
    "chembl_1k": ("synthesis/targets/chembl_1k.csv", "ChEMBL 1k targets", CHEMPROJECTOR + " test_chembl.csv"),
    "chembl_10k": ("synthesis/targets/chembl_10k.txt", "ChEMBL 10k targets",
                   "https://github.com/wenhao-gao/mol_opt (main/mars/data/chembl_10k.txt)"),
    "enamine_real_1k": ("synthesis/targets/enamine_real_1k.csv", "Enamine REAL 1k targets",
                        CHEMPROJECTOR + " enamine_smiles_1k.csv"),
    "zinc250k": ("synthesis/targets/zinc250k.txt.gz", "ZINC 250k",
                 "https://github.com/wenhao-gao/mol_opt (data/zinc.txt.gz)"),
}


def resolve(path_or_key: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """A known dataset key (see ``SOURCES``) resolved under the data root, or a path taken as is."""
    if isinstance(path_or_key, str) and path_or_key in SOURCES:
        rel, name, source = SOURCES[path_or_key]
        return dataset_path(name, rel, source=source, data_dir=data_dir)
    path = Path(path_or_key)
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file (and not one of the dataset keys {sorted(SOURCES)})")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


# ---------------------------------------------------------------------------------------------------
# Templates


def load_templates(path_or_key: str | os.PathLike = "hb", data_dir=None) -> list[Template]:
    """One reaction SMARTS per non-empty line; template k is the k-th non-empty line (0-based)."""
    path = resolve(path_or_key, data_dir)
    templates: list[Template] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            smarts = line.strip()
            if not smarts:
                continue
            try:
                with quiet_rdkit():
                    templates.append(Template(smarts, index=len(templates)))
            except ValueError as e:
                raise DataFormatError(path, f"bad reaction template: {e}", line=lineno) from None
    if not templates:
        raise DataFormatError(path, "no templates in file")
    return templates


# ---------------------------------------------------------------------------------------------------
# Molecule lists


@dataclass
class Skipped:
    path: str
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.text!r}"


@dataclass
class MoleculeList:
    """Canonical SMILES read from a file, with the source line of each and the skipped entries."""

    path: str
    smiles: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.smiles)

    def report(self) -> str:
        return f"{self.path}: {len(self.smiles)} molecules read, {len(self.skipped)} invalid SMILES skipped"


def _smiles_column(header: list[str], column: str | None, path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    wanted = [column.lower()] if column else ["smiles", "smi", "canonical_smiles"]
    for name in wanted:
        if name in lowered:
            return lowered.index(name)
    raise DataFormatError(path, f"no SMILES column (looked for {wanted}; header is {header})", line=1)


def _iter_raw_smiles(path: Path, column: str | None) -> Iterator[tuple[int, str]]:
    """(line number, raw SMILES) for .csv/.tsv (header row, SMILES column), .sdf and one-per-line text."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".sdf"):
        yield from _iter_sdf(path)
        return
    with _open_text(path) as f:
        if name.endswith((".csv", ".tsv")):
            reader = csv.reader(f, delimiter="\t" if name.endswith(".tsv") else ",")
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, "empty file (expected a header row)")
            col = _smiles_column(header, column, path)
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if col >= len(row):
                    raise DataFormatError(path, f"row has {len(row)} columns, SMILES column is {col + 1}",
                                          line=lineno)
                yield lineno, row[col].strip()
        else:  # .smi / .txt: first whitespace-separated token; '#' lines are comments
            for lineno, line in enumerate(f, start=1):
                text = line.strip()
                if text and not text.startswith("#"):
                    yield lineno, text.split()[0]


def _iter_sdf(path: Path) -> Iterator[tuple[int, str]]:
    """Building-block extraction from a supplier SDF (e.g. Enamine stock): one record per molecule."""
    from rdkit import Chem

    with quiet_rdkit():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for i, mol in enumerate(Chem.ForwardSDMolSupplier(fh)):
                # the record index stands in for the line number (RDKit does not expose it)
                yield i + 1, ("" if mol is None else Chem.MolToSmiles(mol)) or f"<unparsable record {i + 1}>"


def read_molecules(path_or_key: str | os.PathLike, *, column: str | None = None, data_dir=None,
                   unique: bool = False, limit: int | None = None) -> MoleculeList:
    """Read canonical SMILES from a file; invalid SMILES are logged (file:line), counted and skipped."""
    path = resolve(path_or_key, data_dir)
    out = MoleculeList(str(path))
    seen: set[str] = set()
    for lineno, raw in _iter_raw_smiles(path, column):
        canon = canonical_smiles(raw)
        if canon is None:
            out.skipped.append(Skipped(str(path), lineno, raw, "invalid SMILES"))
            log.warning("%s:%d: invalid SMILES skipped: %r", path, lineno, raw)
            continue
        if unique and canon in seen:
            continue
        seen.add(canon)
        out.smiles.append(canon)
        out.lines.append(lineno)
        if limit is not None and len(out.smiles) >= limit:
            break
    if out.skipped:
        log.warning("%s", out.report())
    return out


def load_building_blocks(path_or_key: str | os.PathLike = "enamine_1913", *, column: str | None = None,
                         data_dir=None) -> MoleculeList:
    """A building-block pool: canonical, deduplicated (first occurrence kept), invalid SMILES skipped."""
    return read_molecules(path_or_key, column=column, data_dir=data_dir, unique=True)


# ---------------------------------------------------------------------------------------------------
# Routes in postfix notation (ChemProjector): "bbA;bbB;R69;bbC;R24"


@dataclass
class Route:
    target: str
    tokens: list[str | int]  # SMILES (canonical) of building blocks, or int template indices
    line: int

    @property
    def n_reactions(self) -> int:
        return sum(isinstance(t, int) for t in self.tokens)


def parse_route(text: str) -> list[str | int]:
    """Split a postfix route; 'Rk' becomes template index k, everything else stays a SMILES string."""
    tokens: list[str | int] = []
    for tok in text.strip().split(";"):
        tok = tok.strip()
        if not tok:
            raise ValueError("empty token")
        if tok[0] == "R" and tok[1:].isdigit():
            tokens.append(int(tok[1:]))
        else:
            tokens.append(tok)
    return tokens


def read_routes(path_or_key: str | os.PathLike = "chemprojector_routes", data_dir=None,
                ) -> tuple[list[Route], list[Skipped]]:
    """Targets with postfix routes (columns ``smiles,synthesis``); bad SMILES rows are skipped and returned."""
    path = resolve(path_or_key, data_dir)
    routes: list[Route] = []
    skipped: list[Skipped] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"smiles", "synthesis"} <= set(reader.fieldnames):
            raise DataFormatError(path, f"expected columns smiles,synthesis; got {reader.fieldnames}", line=1)
        for row in reader:
            lineno = reader.line_num
            target = canonical_smiles((row["smiles"] or "").strip())
            if target is None:
                skipped.append(Skipped(str(path), lineno, row["smiles"], "invalid target SMILES"))
                continue
            try:
                tokens = parse_route(row["synthesis"] or "")
            except ValueError as e:
                raise DataFormatError(path, f"malformed route ({e}): {row['synthesis']!r}", line=lineno) from None
            bad = next((t for t in tokens if isinstance(t, str) and mol_from_smiles(t) is None), None)
            if bad is not None:
                skipped.append(Skipped(str(path), lineno, bad, "invalid building-block SMILES in route"))
                continue
            routes.append(Route(target, [t if isinstance(t, int) else canonical_smiles(t) for t in tokens],
                                lineno))
    for s in skipped:
        log.warning("%s", s)
    return routes, skipped
