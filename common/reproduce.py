"""The reproduce framework: per-package profiles and the repository-wide index.

A package's ``<pkg>/reproduce.py`` is::

    from common.reproduce import ReproReport, Row, run_profiles

    def smoke(ctx): ...  # returns ReproReport
    def quick(ctx): ...
    def full(ctx): ...

    if __name__ == "__main__":
        run_profiles("<pkg>", {"smoke": smoke, "quick": quick, "full": full})

and ``python -m <pkg>.reproduce --profile quick`` writes ``reports/<pkg>/report.md`` and
``results.json`` (plus ``report.<profile>.md`` / ``results.<profile>.json``, so a later quick run never
hides a full one). ``python -m common.reproduce [--only PKG ...] [--profile quick]`` runs the packages'
profiles in subprocesses and writes ``reports/index.md``: one row per package with the paper's headline
claim, our number and the status.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.runinfo import git_commit, hardware_summary

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PackageInfo:
    name: str
    paper: str
    claim: str
    paper_number: str


# One row per package of the index: what the paper claims and the number we compare against.
PACKAGES: list[PackageInfo] = [
    PackageInfo("fuyou_offload", "Fuyou (Liao et al. 2024)",
                "fine-tunes models far larger than host RAM by overlapping SSD I/O, CPU Adam and compute "
                "(ours: bit-exact to AdamW with clipping; capacity under a host budget)",
                "13B: 156 TFLOPS vs ZeRO-Infinity 45 (RTX 4090)"),
    PackageInfo("scpo_rl", "SCPO (Kuang et al. 2022)",
                "state-conservative SAC keeps its return under changed dynamics (mass/friction): "
                "robustness-grid average, SCPO vs SAC",
                "returns per grid cell: not retrieved"),
    PackageInfo("synthesis_pathways", "SynNet (Gao et al. 2022)",
                "synthetic-tree decoding recovers reachable molecules",
                "recovery 51.0% / avg. similarity 0.759 (reachable set)"),
    PackageInfo("vocab_distill", "Zhao et al. 2021 (mixed-vocabulary training)",
                "BERT compressed >60x to <7 MB with a minor drop",
                "SST-2 82.2 at H=48, |V|=4,928 (secondary source)"),
    PackageInfo("meta_multilabel", "Wu et al. 2019 (learning to learn and predict)",
                "meta-learned per-label weights and thresholds beat fixed policies",
                "tables not retrieved"),
    PackageInfo("joint_bert_nlu", "Joint BERT (Chen et al. 2019)",
                "one BERT, two heads: joint intent and slot filling",
                "SNIPS intent 98.6 / slot F1 97.0; ATIS 97.5 / 96.1"),
    PackageInfo("lpips_metric", "LPIPS (Zhang et al. 2018)",
                "deep features calibrated on 2AFC judgments agree with humans better than L2/SSIM",
                "BAPPS 2AFC: AlexNet-lin ~69.8 vs L2 ~63 (recalled)"),
    PackageInfo("label_efficient_seg", "Label-efficient segmentation survey (Shen et al. 2023)",
                "weak/partial labels close much of the gap to full supervision (headline: CamVid FixMatch at 1/8 "
                "labels, % of full supervision on the same data)",
                "survey tables not retrieved (context numbers only)"),
    PackageInfo("llm_specialization", "LLM domain-specialization / knowledge / personalization surveys",
                "retrieval, prompting and parameter-efficient tuning each buy accuracy at different cost",
                "kNN-LM WikiText-103 ppl 18.65 -> 16.12; TALLRec AUC 67-72"),
]


# ----------------------------------------------------------------------------- per-package reports
@dataclass
class Row:
    """One line of a results table: our number beside the paper's."""

    metric: str
    ours: Any
    paper: Any = None
    note: str = ""


@dataclass
class ReproReport:
    rows: list[Row]
    headline: Row | None = None
    plots: list[str | Path] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProfileContext:
    """What a profile function gets: where to write, where to read, which seed."""

    pkg: str
    profile: str
    out_dir: Path  # reports/<pkg>: report, results and plots
    work_dir: Path  # runs/reproduce/<pkg>/<profile>: checkpoints and logs (resumable)
    data_dir: str | None = None
    seed: int = 0
    resume: str = "auto"
    jobs: int | None = None  # processes for profiles that run several trainings at once; None: the profile's own


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def cell(value: Any) -> str:
    """A markdown table cell: formatted, with literal pipes escaped (|V| would split the row)."""
    return fmt(value).replace("|", "\\|")


def _table(rows: list[Row]) -> str:
    lines = ["| metric | paper | ours | note |", "|---|---|---|---|"]
    lines += [f"| {cell(r.metric)} | {cell(r.paper)} | {cell(r.ours)} | {cell(r.note)} |" for r in rows]
    return "\n".join(lines)


def render_report(pkg: str, profile: str, report: ReproReport, meta: dict[str, Any], out_dir: Path) -> str:
    parts = [f"# {pkg}: reproduction report (profile `{profile}`)", "",
             f"- Command: `{meta['command']}`",
             f"- Date: {meta['date']}",
             f"- Hardware: {meta['hardware']}",
             f"- Commit: {meta['commit']}{' (uncommitted changes)' if meta.get('dirty') else ''}",
             f"- Wall-clock: {meta['wall_seconds']:.1f} s", ""]
    if report.headline is not None:
        parts += ["## Headline", "", _table([report.headline]), ""]
    parts += ["## Results", "", _table(report.rows), ""]
    if report.plots:
        parts += ["## Plots", ""]
        for p in report.plots:
            rel = os.path.relpath(Path(p).resolve(), out_dir.resolve())
            parts.append(f"![{Path(p).stem}]({rel})")
        parts.append("")
    if report.notes:
        parts += ["## Notes", "", report.notes.strip(), ""]
    return "\n".join(parts)


def write_report(pkg: str, profile: str, report: ReproReport, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_report(pkg, profile, report, meta, out_dir)
    results = {"package": pkg, "profile": profile, **meta,
               "headline": asdict(report.headline) if report.headline else None,
               "rows": [asdict(r) for r in report.rows], "plots": [str(p) for p in report.plots],
               "extra": report.extra}
    text = json.dumps(results, indent=2, default=str)
    for suffix in ("", f".{profile}"):
        (out_dir / f"report{suffix}.md").write_text(md)
        (out_dir / f"results{suffix}.json").write_text(text)
    return out_dir / "report.md"


def run_profiles(pkg: str, profiles: dict[str, Callable[[ProfileContext], ReproReport]],
                 argv: list[str] | None = None) -> Path:
    """The command line of ``<pkg>/reproduce.py``: run one profile and write its report."""
    ap = argparse.ArgumentParser(prog=f"python -m {pkg}.reproduce",
                                 description=f"Reproduce {pkg}'s paper numbers at a chosen scale.")
    ap.add_argument("--profile", choices=sorted(profiles), default="quick",
                    help="smoke: seconds (tests); quick: minutes; full: the largest run this machine allows")
    ap.add_argument("--reports-dir", default="reports", help="reports go to <reports-dir>/<pkg>/")
    ap.add_argument("--work-dir", default=None, help="checkpoints and logs (default runs/reproduce/<pkg>/<profile>)")
    ap.add_argument("--data-dir", default=None, help="data root (default: $PAPERS_DATA_DIR, ./data, ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="ignore checkpoints of an earlier run of this profile")
    ap.add_argument("--jobs", type=int, default=None,
                    help="cores the profile may use: processes for profiles that train or sample several things "
                         "at once, torch threads for single-process ones (default: the profile's own, at most "
                         "2 here); results do not depend on it")
    args = ap.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    ctx = ProfileContext(pkg=pkg, profile=args.profile, out_dir=Path(args.reports_dir) / pkg,
                         work_dir=Path(args.work_dir or f"runs/reproduce/{pkg}/{args.profile}"),
                         data_dir=args.data_dir, seed=args.seed, resume="never" if args.fresh else "auto",
                         jobs=args.jobs)
    if args.fresh and ctx.work_dir.exists():
        import shutil

        shutil.rmtree(ctx.work_dir)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    git = git_commit()  # the code that runs: recorded before the (possibly hours-long) profile starts
    t0 = time.time()
    report = profiles[args.profile](ctx)
    meta = {"command": " ".join(["python -m", f"{pkg}.reproduce"] + [shlex.quote(a) for a in (argv or sys.argv[1:])]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware_summary(),
            "commit": git["commit"], "dirty": git["dirty"], "wall_seconds": time.time() - t0}
    path = write_report(pkg, args.profile, report, ctx.out_dir, meta)
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- the index
def package_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None and importlib.util.find_spec(f"{name}.reproduce") is not None


def run_package(name: str, profile: str, reports_dir: Path, data_dir: str | None,
                timeout: float | None) -> dict[str, Any]:
    """Run one package's profile in a subprocess; read back its results.json."""
    cmd = [sys.executable, "-m", f"{name}.reproduce", "--profile", profile, "--reports-dir", str(reports_dir)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, cwd=REPO_ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    row: dict[str, Any] = {"status": "ok" if rc == 0 else f"failed ({rc})", "seconds": time.time() - t0}
    results = reports_dir / name / f"results.{profile}.json"
    if rc == 0 and results.exists():
        data = json.loads(results.read_text())
        row["headline"] = data.get("headline")
    return row


def _headline_text(head: dict[str, Any] | None, absent: str) -> str:
    """``metric: ours`` of a results.json headline, or ``absent`` when it has none."""
    return f"{head.get('metric', '')}: {fmt(head.get('ours'))}" if head else absent


def _full_cell(name: str, reports_dir: Path) -> str:
    """The headline of the package's last ``full`` run, linked to its report; '—' if it has none."""
    results = reports_dir / name / "results.full.json"
    if not results.exists():
        return "—"
    ours = _headline_text(json.loads(results.read_text()).get("headline"), "see report")
    return f"{cell(ours)} ([report]({name}/report.full.md))"


def write_index(rows: dict[str, dict[str, Any]], profile: str, reports_dir: Path) -> Path:
    lines = [f"# Reproduction index (profile `{profile}`)", "",
             f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')} · Hardware: {hardware_summary()}",
             "", "| package | paper | headline claim | paper's number | our number | status | report | our number, `full` |",
             "|---|---|---|---|---|---|---|---|"]
    for info in PACKAGES:
        r = rows.get(info.name)
        if r is None:
            continue
        ours = _headline_text(r.get("headline"), "—")
        report = f"[report]({info.name}/report.{profile}.md)" if r["status"] == "ok" else ""
        seconds = f" ({r['seconds']:.0f} s)" if "seconds" in r else ""
        lines.append(f"| `{info.name}` | {cell(info.paper)} | {cell(info.claim)} | {cell(info.paper_number)} | "
                     f"{cell(ours)} | {r['status']}{seconds} | {report} | {_full_cell(info.name, reports_dir)} |")
    lines.append("")
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / "index.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    names = [p.name for p in PACKAGES]
    ap = argparse.ArgumentParser(prog="python -m common.reproduce",
                                 description="Run every package's reproduce profile and write reports/index.md.")
    ap.add_argument("--only", nargs="+", choices=names, metavar="PKG", help=f"subset of {names}")
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    ap.add_argument("--reports-dir", default=str(REPO_ROOT / "reports"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per package (default: none)")
    ap.add_argument("--index-only", action="store_true",
                    help="run nothing: rebuild reports/index.md from the results.<profile>.json already there")
    args = ap.parse_args(argv)
    reports_dir = Path(args.reports_dir)
    rows: dict[str, dict[str, Any]] = {}
    for name in args.only or names:
        if args.index_only:
            results = reports_dir / name / f"results.{args.profile}.json"
            data = json.loads(results.read_text()) if results.exists() else None
            rows[name] = ({"status": "ok", "seconds": data.get("wall_seconds", 0.0), "headline": data.get("headline")}
                          if data else {"status": "not run" if package_exists(name) else "not implemented"})
            continue
        if not package_exists(name):
            rows[name] = {"status": "not implemented"}
            print(f"[{name}] not implemented")
            continue
        print(f"[{name}] running profile {args.profile} ...", flush=True)
        rows[name] = run_package(name, args.profile, reports_dir, args.data_dir, args.timeout)
        print(f"[{name}] {rows[name]['status']} in {rows[name]['seconds']:.0f} s", flush=True)
        pending = {n: {"status": "pending"} for n in (args.only or names) if n not in rows}
        write_index({**rows, **pending}, args.profile, reports_dir)  # readable while the others still run
    path = write_index(rows, args.profile, reports_dir)
    print(f"wrote {path}")
    return 1 if any(r["status"].startswith("failed") for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
