"""The planner over a file or stdin: one JSON record per input line, errors as records, standardization,
out-of-scope flags, images only when asked."""

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from synthesis_pathways.plan import main, scope_problems, standardize

BAD_LINES = [
    "O=C(NCCO)c1ccccc1 benzamide",  # fine, with a name
    "",  # empty line
    "C1CC",  # invalid SMILES (unclosed ring)
    "CC(=O)Nc1ccc(O)cc1.Cl",  # a salt: planned as its largest fragment
    "N.N.Cl[Pt]Cl",  # a metal complex: out of scope (platinum)
    "C" * 400,  # a 400-carbon chain: out of scope (size)
    "CC(=O)[O-].[Na+]",  # a carboxylate salt: stripped and neutralized
]


@pytest.fixture()
def run_dir(tmp_path, space):
    """A run folder holding only pool A's match cache (the random policy needs no model)."""
    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    src = Path(space._cache_file) if getattr(space, "_cache_file", None) else None
    if src is not None and src.exists():
        shutil.copy(src, run / "cache" / src.name)
    return run


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_file_of_bad_lines_gives_one_record_each(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # images would land here if written by default
    f = tmp_path / "targets.smi"
    f.write_text("\n".join(BAD_LINES) + "\n")
    assert main(["--input", str(f), "--policy", "random", "--run-dir", str(run_dir)]) == 0
    recs = _records(capsys.readouterr().out)
    assert [r["line"] for r in recs] == list(range(1, len(BAD_LINES) + 1))
    ok, empty, invalid, salt, metal, chain, acetate = recs
    assert ok["name"] == "benzamide" and ok["status"] in ("ok", "no_route") and ok["smiles"] == "O=C(NCCO)c1ccccc1"
    assert empty["status"] == "error" and empty["error"] == "empty line"
    assert invalid["status"] == "error" and "invalid SMILES" in invalid["error"]
    assert salt["smiles"] == "CC(=O)Nc1ccc(O)cc1" and "stripped Cl" in salt["standardization"][0]
    assert salt["status"] in ("ok", "no_route") and not salt["out_of_scope"]
    assert metal["status"] == "out_of_scope" and "Pt" in metal["error"] and metal["answer"] is None
    assert chain["status"] == "out_of_scope" and "400 heavy atoms" in chain["error"]
    assert acetate["smiles"] == "CC(=O)O" and any("neutralized" in c for c in acetate["standardization"])
    assert all(r["image"] is None for r in recs) and not list(tmp_path.glob("*.png"))
    for r in recs:
        if r["status"] == "ok":  # the route makes the answer (or the answer is a block, bought as is)
            assert r["answer_is_block"] or r["route"][-1]["product"] == r["answer"]


def test_stdin_output_file_and_images(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"O=C(Nc1ccccc1)c1ccco1\n\nCCO\n")))
    out = tmp_path / "routes.jsonl"
    assert main(["--input", "-", "--policy", "random", "--run-dir", str(run_dir), "--output", str(out),
                 "--image", "--out-dir", str(tmp_path / "img")]) == 0
    recs = _records(out.read_text())
    assert len(recs) == 3 and recs[1]["status"] == "error"
    for r in recs:
        if r["status"] == "ok":
            assert r["image"] == str(tmp_path / "img" / f"route_{r['line']}.png") and Path(r["image"]).exists()


def test_keep_as_given_plans_the_mixture_flagged(run_dir, capsys):
    assert main(["CC(=O)Nc1ccc(O)cc1.Cl", "--jsonl", "--keep-as-given", "--policy", "random",
                 "--run-dir", str(run_dir)]) == 1  # out of scope (a mixture), and it was the only target
    rec = _records(capsys.readouterr().out)[0]
    assert rec["smiles"] == "CC(=O)Nc1ccc(O)cc1.Cl" and rec["status"] == "out_of_scope" and "mixture" in rec["error"]


def test_unreadable_input_is_the_only_failure(run_dir, tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.smi"), "--policy", "random", "--run-dir", str(run_dir)]) == 1
    assert "cannot read --input" in capsys.readouterr().err
    bad = tmp_path / "latin1.smi"
    bad.write_bytes(b"CCO caf\xe9\n")
    assert main(["--input", str(bad), "--policy", "random", "--run-dir", str(run_dir)]) == 1
    assert "cannot read --input" in capsys.readouterr().err


def test_standardize_and_scope():
    assert standardize("[Na+].O=C([O-])c1ccccc1").smiles == "O=C(O)c1ccccc1"
    assert standardize("N.N.Cl[Pt]Cl").smiles == "[Cl][Pt][Cl]"  # heavy atoms decide, not NH3's hydrogens
    assert standardize("[Na+].O=C([O-])c1ccccc1", keep_as_given=True).smiles == "O=C([O-])c1ccccc1.[Na+]"
    elements = {"C", "N", "O", "Cl"}
    assert scope_problems("CCO", elements, 70) == []
    assert "Pt" in scope_problems("Cl[Pt]Cl", elements, 70)[0]
    assert "heavy atoms" in scope_problems("C" * 71, elements, 70)[0]
