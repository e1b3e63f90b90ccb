"""Run records: keep the finished runs of a long grid in git, so a grid survives a move to a new machine.

A ``reproduce.py`` grid (seeds x rows, hours of CPU) keeps one folder per run under ``runs/``, which a new
machine does not have. Its finished runs are worth keeping: their ``final_metrics.json`` is the evidence the
report is built from, and ``resolved_config.json`` lets the grid recognise them as finished under today's
settings (``common.launch.finished_with``). Checkpoints are not kept (megabytes each, and a finished run
never needs them again), nor TensorBoard's ``tb/`` (the same numbers as ``metrics.jsonl``)::

    python -m common.runrecords save    runs/reproduce/label_efficient_seg reports/label_efficient_seg/run_records
    python -m common.runrecords restore reports/label_efficient_seg/run_records runs/reproduce/label_efficient_seg

``save`` copies every finished run (a folder holding the done file, ``final_metrics.json`` by default) with
everything in it except ``checkpoints/``, ``tb/`` and files over ``--max-bytes``; an unfinished run is left out, and a
record already saved is replaced. ``restore`` copies each record back where the run folder has no done file
(a run finished here is never overwritten). The grid then skips the restored runs only if they finished
under the settings it composes now; any other is trained again, as before.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DONE_FILE = "final_metrics.json"
SKIP_DIRS = ("checkpoints", "tb")
MAX_BYTES = 2 * 1024 * 1024


def finished_runs(root: str | Path, done_file: str = DONE_FILE) -> list[Path]:
    """Every folder under ``root`` (itself included) holding ``done_file``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return sorted(p.parent for p in root.rglob(done_file) if p.is_file()
                  and not any(part in SKIP_DIRS for part in p.relative_to(root).parts))


def _copy_run(src: Path, dst: Path, max_bytes: int | None) -> list[str]:
    """Copy the files of one run folder, checkpoints, tb/ and files over ``max_bytes`` left out (returned)."""
    left_out = []
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if not f.is_file() or any(part in SKIP_DIRS for part in rel.parts):
            continue
        if max_bytes is not None and f.stat().st_size > max_bytes:
            left_out.append(f"{rel} ({f.stat().st_size} bytes)")
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst / rel)
    return left_out


def save(runs_root: str | Path, records_root: str | Path, done_file: str = DONE_FILE,
         max_bytes: int | None = MAX_BYTES) -> dict:
    """Copy every finished run under ``runs_root`` to the same relative folder under ``records_root``."""
    runs_root, records_root = Path(runs_root), Path(records_root)
    saved, left_out = [], []
    for run in finished_runs(runs_root, done_file):
        rel = run.relative_to(runs_root)
        dst = records_root / rel
        if dst.exists():
            shutil.rmtree(dst)
        saved.append(str(rel))
        left_out += [f"{rel}/{s}" for s in _copy_run(run, dst, max_bytes)]
    return {"saved": saved, "left_out": left_out}


def restore(records_root: str | Path, runs_root: str | Path, done_file: str = DONE_FILE) -> dict:
    """Copy each record back under ``runs_root`` where that run has not finished there."""
    records_root, runs_root = Path(records_root), Path(runs_root)
    restored, kept = [], []
    for rec in finished_runs(records_root, done_file):
        rel = rec.relative_to(records_root)
        dst = runs_root / rel
        if (dst / done_file).is_file():
            kept.append(str(rel))
            continue
        if dst.exists():  # an unfinished run here: the record replaces it (it got further)
            shutil.rmtree(dst)
        _copy_run(rec, dst, None)
        restored.append(str(rel))
    return {"restored": restored, "kept": kept}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.runrecords", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="copy finished runs (no checkpoints) into a records folder")
    s.add_argument("runs_root")
    s.add_argument("records_root")
    s.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="leave out files larger than this")
    r = sub.add_parser("restore", help="copy records back where the run has not finished")
    r.add_argument("records_root")
    r.add_argument("runs_root")
    for p in (s, r):
        p.add_argument("--done-file", default=DONE_FILE, help="the file a finished run holds")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "save":
            out = save(a.runs_root, a.records_root, a.done_file, a.max_bytes)
            print(f"saved {len(out['saved'])} finished runs to {a.records_root}")
            for x in out["left_out"]:
                print(f"  left out (over --max-bytes): {x}")
        else:
            out = restore(a.records_root, a.runs_root, a.done_file)
            print(f"restored {len(out['restored'])} runs to {a.runs_root}; "
                  f"{len(out['kept'])} already finished there, left alone")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
