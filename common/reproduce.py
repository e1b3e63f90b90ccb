"""The reproduce framework: per-package profiles, numeric results, the index and the regression check.

A package's ``<pkg>/reproduce.py`` is::

    from common.reproduce import ReproReport, Row, run_profiles

    def smoke(ctx): ...  # returns ReproReport
    def quick(ctx): ...
    def full(ctx): ...

    if __name__ == "__main__":
        run_profiles("<pkg>", {"smoke": smoke, "quick": quick, "full": full})

Rows are numbers, never formatted strings: ``Row("test acc", 0.91, unit="fraction", split="test")`` for one
value, ``Row.from_seeds("test acc", [0.90, 0.91, 0.93], ...)`` for a mean over seeds (its 95% CI comes from
:mod:`common.stats` and the per-seed values are stored), ``Row.from_items`` for a bootstrap over test items,
``Row.from_paired`` for a paired difference over seeds and ``Row.from_iqm`` for RL's interquartile mean. The
markdown report formats them (``value ± half-width (n=3)`` or ``value [lo, hi] (n=...)``).

``python -m <pkg>.reproduce --profile quick`` writes ``<reports-dir>/<pkg>/report.<profile>.md`` and
``results.<profile>.json`` (schema :data:`SCHEMA_VERSION`), plus ``report.md``/``results.json`` unless that
would hide a ``full`` report. ``<reports-dir>`` defaults to the untracked ``runs/reproduce_reports``;
``--update-committed`` writes into ``reports/`` instead.

``python -m common.reproduce [--only PKG ...] [--profile quick]`` runs the packages' profiles in
subprocesses, writes ``index.md`` (paper claim, our number with its CI, status) and ends by comparing every
number with the committed ``reports/<pkg>/results.<profile>.json`` (:data:`TOLERANCES`).
``--check`` does the same into a temporary folder and exits 1 on any difference beyond tolerance: the
results regression check CI runs with ``--profile smoke``, against the reference made on the CPU model it runs
on (:func:`committed_reference`; ``--cpu-reference`` writes one where a model's numbers differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from common import stats
from common.lock import environment_status
from common.runinfo import cpu_model, git_commit, hardware_summary

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_REPORTS = REPO_ROOT / "reports"
# Where `make reproduce` and `python -m <pkg>.reproduce` write by default: ignored by git (runs/), so a
# reproduction never rewrites the committed reports.
LOCAL_REPORTS = Path("runs") / "reproduce_reports"
SCHEMA_VERSION = 2


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


# ----------------------------------------------------------------------------- numeric rows
N_KINDS = ("seeds", "items", "runs")
ROW_KINDS = ("score", "timing", "memory")


def _number(value: Any, what: str) -> float | int | None:
    """A JSON-safe number: numpy scalars become Python ones, bools become 0/1, NaN/inf become None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    raise TypeError(f"Row {what} must be a number or None, got {type(value).__name__} {value!r}: "
                    "put one number per row (text goes to note / paper_note)")


@dataclass
class Row:
    """One number of a results table, beside the paper's.

    Build rows with a value (``Row("m", 0.91, unit="fraction", split="test")``) or from the values an
    interval comes from (:meth:`from_seeds`, :meth:`from_items`, :meth:`from_paired`, :meth:`from_iqm`);
    the interval is never typed in by hand. Every field after ``value`` is keyword-only."""

    metric: str
    value: float | int | None = None
    _: KW_ONLY
    ci_low: float | None = None  # 95% interval of value; None when there is none (n = 1, or not kept)
    ci_high: float | None = None
    ci_method: str | None = None  # "t", "bootstrap" or "stratified-bootstrap-iqm" (see common.stats)
    n: int | None = None  # how many values the number summarises (seeds, test items or runs)
    n_kind: str | None = None  # "seeds", "items" or "runs"
    per_seed: list[float] | None = None  # the per-seed (per-run) values the mean and CI came from
    p_value: float | None = None  # for comparisons (from_paired): two-sided p against no difference
    unit: str = ""  # "%", "fraction", "s", "MB", "bool" (1 = yes), ...
    split: str = ""  # the data split the number comes from: "test", "dev", "heldout", ...
    paper: float | None = None  # the paper's number for this metric, when it has one
    paper_note: str = ""  # the paper's claim in words, or where its number comes from
    note: str = ""
    higher_is_better: bool | None = None
    kind: str = "score"  # "score": reproduces exactly; "timing": wall-clock derived, varies run to run;
    # "memory": derived from a measured process memory (peak RSS), which follows the torch build and allocator

    def __post_init__(self) -> None:
        if isinstance(self.value, (bool, np.bool_)) and not self.unit:
            self.unit = "bool"
        self.value = _number(self.value, "value")
        self.paper = _number(self.paper, "paper")
        self.ci_low, self.ci_high = _number(self.ci_low, "ci_low"), _number(self.ci_high, "ci_high")
        self.p_value = _number(self.p_value, "p_value")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError(f"row {self.metric!r}: ci_low and ci_high go together")
        if self.ci_low is not None and self.ci_method is None:
            raise ValueError(f"row {self.metric!r}: an interval needs its ci_method (use Row.from_seeds etc.)")
        if self.n_kind is not None and self.n_kind not in N_KINDS:
            raise ValueError(f"row {self.metric!r}: n_kind must be one of {N_KINDS}, got {self.n_kind!r}")
        if self.kind not in ROW_KINDS:
            raise ValueError(f"row {self.metric!r}: kind must be one of {ROW_KINDS}, got {self.kind!r}")
        if self.per_seed is not None:
            self.per_seed = [_number(v, "per_seed value") for v in self.per_seed]

    # -- constructors that compute the interval (common.stats), so no package formats one by hand
    @classmethod
    def from_seeds(cls, metric: str, values: Sequence[float], **kw: Any) -> Row:
        """Mean over seeds with its Student-t 95% CI (:func:`common.stats.t_interval`; none for one seed);
        the per-seed values are stored."""
        vals = [float(v) for v in values]
        s = stats.summarize(vals, "t")
        return cls(metric, s.mean, ci_low=s.ci_low, ci_high=s.ci_high, ci_method=None if s.ci_low is None else "t",
                   n=s.n, n_kind="seeds", per_seed=vals, **kw)

    @classmethod
    def from_items(cls, metric: str, values: Sequence[float], seed: int = 0, **kw: Any) -> Row:
        """Mean over the test items of one run (e.g. 0/1 correctness) with a percentile-bootstrap 95% CI
        (:func:`common.stats.bootstrap_ci`, seeded). Per-item values are not stored (there can be many)."""
        s = stats.summarize(values, "bootstrap", seed=seed)
        return cls(metric, s.mean, ci_low=s.ci_low, ci_high=s.ci_high,
                   ci_method=None if s.ci_low is None else "bootstrap", n=s.n, n_kind="items", **kw)

    @classmethod
    def from_paired(cls, metric: str, a: Sequence[float], b: Sequence[float], **kw: Any) -> Row:
        """Mean of ``a - b`` over paired seeds: t-interval of the differences and the exact sign-flip
        permutation p-value (:func:`common.stats.paired_permutation_test`); the differences are stored."""
        r = stats.paired_permutation_test(a, b)
        diffs = [float(x) - float(y) for x, y in zip(a, b)]
        return cls(metric, r.mean_diff, ci_low=r.ci_low, ci_high=r.ci_high,
                   ci_method=None if r.ci_low is None else "t", n=r.n, n_kind="seeds", per_seed=diffs,
                   p_value=r.p_value if r.n > 1 else None, **kw)

    @classmethod
    def from_iqm(cls, metric: str, scores: Any, **kw: Any) -> Row:
        """Interquartile mean of a (runs x tasks) score matrix with rliable's stratified-bootstrap 95% CI
        (:func:`common.stats.iqm_ci`); ``per_seed`` holds each run's mean over tasks."""
        m = np.asarray(scores, dtype=float)
        s = stats.iqm_ci(m)
        per_run = (m if m.ndim == 1 else m.mean(axis=1)).tolist()
        return cls(metric, s.mean, ci_low=s.ci_low, ci_high=s.ci_high,
                   ci_method=None if s.ci_low is None else s.method, n=s.n, n_kind="runs", per_seed=per_run, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = {f.name for f in dataclasses.fields(cls)} - {"_"}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"row {d.get('metric')!r}: unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items()})

    def has_ci(self) -> bool:
        return self.ci_low is not None and self.n is not None and self.n > 1


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
    out_dir: Path  # <reports-dir>/<pkg>: report, results and plots
    work_dir: Path  # runs/reproduce/<pkg>/<profile>: checkpoints and logs (resumable)
    data_dir: str | None = None
    seed: int = 0
    resume: str = "auto"
    jobs: int | None = None  # processes for profiles that run several trainings at once; None: the profile's own


# ----------------------------------------------------------------------------- formatting
def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _decimals(half: float) -> int:
    """Decimals that show two significant digits of a CI half-width (0 for half-widths >= 10)."""
    if half <= 0 or not math.isfinite(half):
        return 4
    return min(6, max(0, 1 - math.floor(math.log10(half))))


def format_value(row: Row | dict[str, Any], with_n: bool = True) -> str:
    """``0.912 ± 0.013 (n=3)`` for a t-interval, ``0.5 [0.45, 0.55] (n=1000 items)`` for a bootstrap,
    ``0.91`` for a single value; ``yes``/``no`` for unit "bool"."""
    r = row if isinstance(row, Row) else Row.from_dict(row)
    if r.value is None:
        return "—"
    if r.unit == "bool":
        return "yes" if r.value else "no"
    if not r.has_ci():
        text = fmt(r.value)
        return f"{text} (n={r.n})" if with_n and r.n else text
    n = f" (n={r.n}{'' if r.n_kind == 'seeds' else ' ' + (r.n_kind or '')})" if with_n else ""
    if r.ci_method == "t":
        half = (r.ci_high - r.ci_low) / 2
        d = _decimals(half)
        return f"{r.value:.{d}f} ± {half:.{d}f}{n}"
    d = _decimals((r.ci_high - r.ci_low) / 2)
    return f"{r.value:.{d}f} [{r.ci_low:.{d}f}, {r.ci_high:.{d}f}]{n}"


def format_paper(row: Row) -> str:
    if row.paper is None:
        return row.paper_note or "—"
    return f"{fmt(row.paper)} ({row.paper_note})" if row.paper_note else fmt(row.paper)


def cell(value: Any) -> str:
    """A markdown table cell: formatted, with literal pipes escaped (|V| would split the row)."""
    return (value if isinstance(value, str) else fmt(value)).replace("|", "\\|")


def _table(rows: list[Row]) -> str:
    lines = ["| metric | split | paper | ours | unit | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        note = r.note + (f" (p = {r.p_value:.3g})" if r.p_value is not None else "")
        unit = "" if r.unit == "bool" else r.unit
        lines.append(f"| {cell(r.metric)} | {cell(r.split)} | {cell(format_paper(r))} | {cell(format_value(r))} | "
                     f"{cell(unit)} | {cell(note.strip())} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- per-package reports
def render_report(pkg: str, profile: str, report: ReproReport, meta: dict[str, Any], out_dir: Path) -> str:
    parts = [f"# {pkg}: reproduction report (profile `{profile}`)", "",
             f"- Command: `{meta['command']}`",
             f"- Date: {meta['date']}",
             f"- Hardware: {meta['hardware']}",
             f"- Commit: {meta['commit']}{' (uncommitted changes)' if meta.get('dirty') else ''}",
             f"- Environment: {lock_line(meta)}",
             f"- Wall-clock: {meta['wall_seconds']:.1f} s", "",
             "Intervals are 95%: `± half-width` is the Student-t interval over seeds, `[lo, hi]` a bootstrap "
             "(percentile over test items, or rliable's stratified IQM over runs); n says over what.", ""]
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


def results_dict(pkg: str, profile: str, report: ReproReport, meta: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The results.<profile>.json content: schema version, run metadata, numeric rows."""
    plots = [os.path.relpath(Path(p).resolve(), out_dir.resolve()) for p in report.plots]
    return {"schema_version": SCHEMA_VERSION, "package": pkg, "profile": profile, **meta,
            "confidence": stats.CONFIDENCE,
            "headline": report.headline.to_dict() if report.headline else None,
            "rows": [r.to_dict() for r in report.rows], "plots": plots, "extra": report.extra}


def write_report(pkg: str, profile: str, report: ReproReport, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write ``report.<profile>.md`` and ``results.<profile>.json``, and the unsuffixed ``report.md`` /
    ``results.json`` copies unless the folder holds a ``full`` report that a smaller profile would hide."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_report(pkg, profile, report, meta, out_dir)
    data = results_dict(pkg, profile, report, meta, out_dir)
    errors = validate_results(data)
    if errors:
        raise ValueError(f"{pkg} {profile}: results do not follow schema {SCHEMA_VERSION}: {errors[0]}")
    text = json.dumps(data, indent=2, default=str) + "\n"
    suffixes = [f".{profile}"]
    if profile == "full" or not (out_dir / "results.full.json").exists():
        suffixes.append("")
    for suffix in suffixes:
        (out_dir / f"report{suffix}.md").write_text(md)
        (out_dir / f"results{suffix}.json").write_text(text)
    return out_dir / f"report.{profile}.md"


_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "metric": (str,), "value": (int, float, type(None)), "ci_low": (int, float, type(None)),
    "ci_high": (int, float, type(None)), "ci_method": (str, type(None)), "n": (int, type(None)),
    "n_kind": (str, type(None)), "per_seed": (list, type(None)), "p_value": (int, float, type(None)),
    "unit": (str,), "split": (str,), "paper": (int, float, type(None)), "paper_note": (str,), "note": (str,),
    "higher_is_better": (bool, type(None)), "kind": (str,)}


def validate_results(data: dict[str, Any]) -> list[str]:
    """Problems of a results.json against :data:`SCHEMA_VERSION` (empty when it is valid)."""
    errors: list[str] = []
    if data.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"]
    for key in ("package", "profile", "command", "rows"):
        if key not in data:
            errors.append(f"missing {key!r}")
    command = str(data.get("command", ""))
    if any(os.path.isabs(tok) or os.path.isabs(tok.partition("=")[2]) for tok in shlex.split(command)):
        errors.append(f"command holds an absolute path: {command}")
    rows = list(data.get("rows", [])) + ([data["headline"]] if data.get("headline") else [])
    for i, r in enumerate(rows):
        where = f"row {i} ({r.get('metric')!r})"
        missing, unknown = set(_ROW_TYPES) - set(r), set(r) - set(_ROW_TYPES)
        if missing or unknown:
            errors.append(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")
            continue
        for key, types in _ROW_TYPES.items():
            if not isinstance(r[key], types) or (isinstance(r[key], bool) and bool not in types):
                errors.append(f"{where}: {key} must be {'/'.join(t.__name__ for t in types)}, got {r[key]!r}")
        if isinstance(r["per_seed"], list) and not all(isinstance(v, (int, float)) for v in r["per_seed"]):
            errors.append(f"{where}: per_seed must hold numbers")
        if (r["ci_low"] is None) != (r["ci_high"] is None):
            errors.append(f"{where}: ci_low and ci_high go together")
        if r["ci_low"] is not None and r["value"] is not None and not r["ci_low"] <= r["value"] <= r["ci_high"] \
                and r["ci_method"] != "stratified-bootstrap-iqm":
            errors.append(f"{where}: value {r['value']} outside its interval [{r['ci_low']}, {r['ci_high']}]")
    return errors


def portable_command(pkg: str, argv: Sequence[str]) -> str:
    """The command as stored in a report: absolute paths inside the repository become relative to it, and
    paths outside it are reduced to ``<outside repo>/<name>``, so a committed report names no machine."""
    def clean(arg: str) -> str:
        prefix, sep, path = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if os.path.isabs(path):
            p = Path(path).resolve()
            try:
                path = str(p.relative_to(REPO_ROOT)) or "."
            except ValueError:
                path = f"<outside repo>/{p.name}"
        return prefix + sep + path
    return " ".join(["python -m", f"{pkg}.reproduce"] + [shlex.quote(clean(a)) for a in argv])


def run_profiles(pkg: str, profiles: dict[str, Callable[[ProfileContext], ReproReport]],
                 argv: list[str] | None = None) -> Path:
    """The command line of ``<pkg>/reproduce.py``: run one profile and write its report."""
    ap = argparse.ArgumentParser(prog=f"python -m {pkg}.reproduce",
                                 description=f"Reproduce {pkg}'s paper numbers at a chosen scale.")
    ap.add_argument("--profile", choices=sorted(profiles), default="quick",
                    help="smoke: seconds (tests); quick: minutes; full: the largest run this machine allows")
    ap.add_argument("--reports-dir", default=None,
                    help=f"reports go to <reports-dir>/<pkg>/ (default {LOCAL_REPORTS}, ignored by git)")
    ap.add_argument("--update-committed", action="store_true",
                    help="write into the committed reports/ folder instead (same as --reports-dir reports)")
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
    if args.update_committed and args.reports_dir is not None:
        ap.error("--update-committed and --reports-dir exclude each other")
    reports_dir = COMMITTED_REPORTS if args.update_committed else Path(args.reports_dir or LOCAL_REPORTS)
    ctx = ProfileContext(pkg=pkg, profile=args.profile, out_dir=reports_dir / pkg,
                         work_dir=Path(args.work_dir or f"runs/reproduce/{pkg}/{args.profile}"),
                         data_dir=args.data_dir, seed=args.seed, resume="never" if args.fresh else "auto",
                         jobs=args.jobs)
    if args.fresh and ctx.work_dir.exists():
        shutil.rmtree(ctx.work_dir)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    git = git_commit()  # the code that runs: recorded before the (possibly hours-long) profile starts
    t0 = time.time()
    report = profiles[args.profile](ctx)
    env = environment_status()
    meta = {"command": portable_command(pkg, argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware_summary(),
            "cpu": cpu_model(),  # which committed reference a --check on this machine compares with
            "commit": git["commit"], "dirty": git["dirty"], "wall_seconds": time.time() - t0,
            # the pinned environment (requirements.lock): a report made under another lock says so in --check
            "lock_sha256": env["lock_sha256"], "matches_lock": env["matches_lock"]}
    path = write_report(pkg, args.profile, report, ctx.out_dir, meta)
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- comparing results
@dataclass(frozen=True)
class Tolerance:
    """How two runs' values of one row kind may differ: |a - b| <= max(abs, rel * |b|). ``checked=False``:
    reported with its relative change, never a failure."""

    rel: float
    abs: float
    checked: bool = True
    why: str = ""


TOLERANCES: dict[str, Tolerance] = {
    # Seeded CPU runs: the same code gives the same floats; 1e-6 absorbs the last digits of a float sum.
    "score": Tolerance(rel=1e-6, abs=1e-9, why="seeded: exact up to 1e-6 relative"),
    # Wall-clock numbers (seconds, throughput, speed-ups) follow the load of a shared machine.
    "timing": Tolerance(rel=0.5, abs=0.0, checked=False, why="timing: follows machine load, not checked"),
    # Peak-RSS numbers (and capacities read off them) follow the torch build: importing the CUDA build of
    # torch 2.14.1 alone holds 713 MiB here, the CPU build far less. Printed with their change, not checked.
    "memory": Tolerance(rel=0.5, abs=0.0, checked=False,
                        why="memory: follows the torch build and allocator, not checked"),
}
COMPARED_FIELDS = ("value", "ci_low", "ci_high", "n")


@dataclass(frozen=True)
class Comparison:
    """One number of one row, committed vs new."""

    key: str  # the row's metric (and split, and #k for repeated names)
    field: str
    committed: Any
    new: Any
    status: str  # "same", "within tolerance", "different", "not checked (timing)" (or memory), "missing", "new row"
    kind: str = "score"

    @property
    def failed(self) -> bool:
        return self.status in ("different", "missing", "new row")

    def line(self, pkg: str) -> str:
        if self.status == "missing":
            return f"{pkg}: {self.key}: only in the committed results"
        if self.status == "new row":
            return f"{pkg}: {self.key}: not in the committed results"
        rel = ""
        if isinstance(self.committed, (int, float)) and isinstance(self.new, (int, float)) and self.committed:
            rel = f" ({(self.new - self.committed) / abs(self.committed):+.2%})"
        return (f"{pkg}: {self.key} [{self.field}]: committed {fmt(self.committed)}, now {fmt(self.new)}{rel}: "
                f"{self.status}")


def _keyed_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = ([("headline", data["headline"])] if data.get("headline") else []) + [("", r) for r in data.get("rows", [])]
    for tag, r in rows:
        base = f"{tag + ': ' if tag else ''}{r['metric']}{' (' + r['split'] + ')' if r.get('split') else ''}"
        key, k = base, 1
        while key in out:
            k += 1
            key = f"{base} #{k}"
        out[key] = r
    return out


def _compare_value(a: Any, b: Any, tol: Tolerance, kind: str = "timing") -> str:
    if a == b:
        return "same"
    if not tol.checked:
        return f"not checked ({kind})"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= max(tol.abs, tol.rel * abs(a)):
        return "within tolerance"
    return "different"


def compare_results(committed: dict[str, Any], new: dict[str, Any]) -> list[Comparison]:
    """Compare every number of two results.json (rows matched by metric and split) under
    :data:`TOLERANCES`; the kind of the committed row decides the tolerance."""
    old_rows, new_rows = _keyed_rows(committed), _keyed_rows(new)
    out: list[Comparison] = []
    for key, old in old_rows.items():
        if key not in new_rows:
            out.append(Comparison(key, "", None, None, "missing"))
            continue
        kind = old.get("kind", "score")
        tol = TOLERANCES.get(kind, TOLERANCES["score"])
        for f in COMPARED_FIELDS:
            a, b = old.get(f), new_rows[key].get(f)
            out.append(Comparison(key, f, a, b, _compare_value(a, b, tol, kind), kind))
    out += [Comparison(key, "", None, None, "new row") for key in new_rows if key not in old_rows]
    return out


def comparison_summary(pkg: str, comps: list[Comparison], verbose: bool = False) -> list[str]:
    """Lines for the end of a run: one per number that is not identical (all when verbose), then a count."""
    lines = [c.line(pkg) for c in comps if verbose or c.status != "same"]
    counts: dict[str, int] = {}
    for c in comps:
        counts[c.status] = counts.get(c.status, 0) + 1
    lines.append(f"{pkg}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return lines


# ----------------------------------------------------------------------------- the index
def package_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None and importlib.util.find_spec(f"{name}.reproduce") is not None


def _arg_path(path: Path) -> str:
    """A path for a subprocess's command line: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def run_package(name: str, profile: str, reports_dir: Path, data_dir: str | None, timeout: float | None,
                work_dir: Path | None = None) -> dict[str, Any]:
    """Run one package's profile in a subprocess (cwd: the repository); read back its results.json."""
    cmd = [sys.executable, "-m", f"{name}.reproduce", "--profile", profile, "--reports-dir", _arg_path(reports_dir)]
    if work_dir is not None:
        cmd += ["--work-dir", _arg_path(work_dir)]
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
        row["headline"] = json.loads(results.read_text()).get("headline")
    return row


def headline_text(head: dict[str, Any] | None, absent: str) -> str:
    """``metric: mean ± CI (n=..)`` of a results.json headline; says so when it has no interval."""
    if not head:
        return absent
    try:
        row = Row.from_dict(head)
    except (TypeError, ValueError):
        return f"{head.get('metric', '')}: (results predate schema {SCHEMA_VERSION})"
    text = f"{row.metric}: {format_value(row)}"
    if row.value is not None and row.unit != "bool" and not row.has_ci():
        kept = "per-item" if row.n_kind == "items" else "per-seed"
        text += f" — no CI ({kept} values not stored)" if (row.n or 1) > 1 else " — no CI (single run)"
    return text


def _link(target: Path, index_dir: Path) -> str:
    return os.path.relpath(target.resolve(), index_dir.resolve())


def _full_cell(name: str, reports_dir: Path) -> str:
    """The headline of the package's last ``full`` run (here, else the committed one), linked to its report."""
    for root in (reports_dir, COMMITTED_REPORTS):
        results = root / name / "results.full.json"
        if results.exists():
            ours = headline_text(json.loads(results.read_text()).get("headline"), "see report")
            return f"{cell(ours)} ([report]({_link(root / name / 'report.full.md', reports_dir)}))"
    return "—"


def index_path(profile: str, reports_dir: Path) -> Path:
    """``index.md``; in the committed reports/, where index.md is the `quick` table the README links,
    another profile's index goes to ``index.<profile>.md``."""
    committed = reports_dir.resolve() == COMMITTED_REPORTS.resolve()
    return reports_dir / ("index.md" if profile == "quick" or not committed else f"index.{profile}.md")


def write_index(rows: dict[str, dict[str, Any]], profile: str, reports_dir: Path) -> Path:
    lines = [f"# Reproduction index (profile `{profile}`)", "",
             f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')} · Hardware: {hardware_summary()}",
             "", "Our numbers carry their 95% interval: `± half-width` is the Student-t interval over n seeds, "
             "`[lo, hi]` a bootstrap (see `common/stats.py`).", "",
             "| package | paper | headline claim | paper's number | our number | status | report | our number, `full` |",
             "|---|---|---|---|---|---|---|---|"]
    reports_dir.mkdir(parents=True, exist_ok=True)
    for info in PACKAGES:
        r = rows.get(info.name)
        if r is None:
            continue
        ours = headline_text(r.get("headline"), "—")
        report = (f"[report]({_link(reports_dir / info.name / f'report.{profile}.md', reports_dir)})"
                  if r["status"] == "ok" else "")
        seconds = f" ({r['seconds']:.0f} s)" if "seconds" in r else ""
        lines.append(f"| `{info.name}` | {cell(info.paper)} | {cell(info.claim)} | {cell(info.paper_number)} | "
                     f"{cell(ours)} | {r['status']}{seconds} | {report} | {_full_cell(info.name, reports_dir)} |")
    lines.append("")
    path = index_path(profile, reports_dir)
    path.write_text("\n".join(lines))
    return path


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


# Seeded runs give the same floats on the same CPU model, not across models: oneMKL takes other sgemm kernels
# on an AMD EPYC than on an Intel Xeon (MKL_CBWR=COMPATIBLE changes synthesis_pathways' and
# llm_specialization's smoke numbers on the EPYC; no MKL setting reproduces the Xeon's there), and training on
# a few hundred examples carries a last-digit difference into discrete outcomes (a recovered molecule, a
# test triple right or wrong). So a package whose numbers differ on another CPU model keeps that model's own
# reference beside the main one; --check compares with the reference made on the CPU it runs on.
CPU_REFERENCES = "cpu_references"


def cpu_of(data: dict[str, Any]) -> str | None:
    """The CPU model a results.json was made on: its ``cpu`` field, or (reports before it) the model inside
    ``hardware`` ('2 cores (<model>), 23.5 GiB RAM, no GPU')."""
    if data.get("cpu"):
        return str(data["cpu"])
    m = re.match(r"\d+ cores \((.*)\), [^,]* RAM, ", str(data.get("hardware", "")))
    return m.group(1) if m else None


def cpu_slug(cpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"


def cpu_reference_path(name: str, profile: str, cpu: str) -> Path:
    return COMMITTED_REPORTS / name / CPU_REFERENCES / f"results.{profile}.{cpu_slug(cpu)}.json"


def committed_reference(name: str, profile: str, cpu: str) -> tuple[dict[str, Any] | None, Path]:
    """The committed results a run on ``cpu`` is compared with, and its path: ``results.<profile>.json``,
    unless that was made on another CPU model and ``cpu_references/`` holds one made on this one."""
    main = COMMITTED_REPORTS / name / f"results.{profile}.json"
    data = _load(main)
    if data is not None and cpu_of(data) != cpu and (alt := cpu_reference_path(name, profile, cpu)).exists():
        return _load(alt), alt
    return data, main


def lock_line(meta: dict[str, Any]) -> str:
    """How a report's environment relates to requirements.lock, in words (reports before the lock: unknown)."""
    h = meta.get("lock_sha256")
    if h is None:
        return "lock not recorded"
    return f"requirements.lock {h[:12]}" + ("" if meta.get("matches_lock") else " (the venv did NOT match it)")


def lock_difference(committed: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A line when the committed report was made under another lock than the new one (or off the lock), else
    None. Reports from the GPU machine (reports/gpu) are never compared: its preinstalled torch is not the
    lock's, and the GPU report records what ran."""
    old_h, new_h = committed.get("lock_sha256"), new.get("lock_sha256")
    if old_h is None:
        return "the committed report predates requirements.lock (no lock hash recorded)"
    if old_h != new_h:
        return f"the committed report was made under another lock ({old_h[:12]}, now {str(new_h)[:12]})"
    if committed.get("matches_lock") is False:
        return "the committed report was made in a venv that did not match its lock"
    return None


def compare_with_committed(names: list[str], profile: str, reports_dir: Path,
                           committed: dict[str, tuple[dict[str, Any] | None, Path]], verbose: bool = False) -> int:
    """Print how every new number compares with the committed one (:func:`committed_reference`); return how
    many failed the tolerance."""
    print(f"\nComparison with the committed reports/<pkg>/results.{profile}.json "
          f"({'; '.join(f'{k}: {t.why}' for k, t in TOLERANCES.items())}):")
    failures = 0
    for name in names:
        new = _load(reports_dir / name / f"results.{profile}.json")
        old, old_path = committed.get(name, (None, COMMITTED_REPORTS))
        if old is not None and old_path.parent.name == CPU_REFERENCES:
            print(f"{name}: compared with {_arg_path(old_path)}, the reference made on this CPU model "
                  f"({cpu_of(old)}; the main one was made on another)")
        elif old is not None and new is not None and cpu_of(old) != cpu_of(new):
            print(f"{name}: note: the committed numbers were made on {cpu_of(old)}, this run on {cpu_of(new)}; "
                  f"seeded numbers may differ in the last digits across CPU models (see --cpu-reference)")
        if new is None:
            print(f"{name}: no new results")
            failures += 1
            continue
        if old is None:
            print(f"{name}: nothing committed for profile {profile} to compare with")
            failures += 1
            continue
        comps = compare_results(old, new)
        failures += sum(c.failed for c in comps)
        if (why := lock_difference(old, new)) is not None:
            print(f"{name}: note: {why}; a difference below may come from the versions, not the code")
        for line in comparison_summary(name, comps, verbose):
            print(line)
    return failures


def save_cpu_references(names: list[str], profile: str, reports_dir: Path, cpu: str) -> list[Path]:
    """Commit the new results of each package that differ beyond tolerance from a main reference made on
    another CPU model as ``cpu``'s reference (:func:`committed_reference`); packages whose numbers agree need
    none, and a main reference made on this very model is never shadowed (refresh it with
    --update-committed)."""
    written = []
    for name in names:
        main = _load(COMMITTED_REPORTS / name / f"results.{profile}.json")
        new = _load(reports_dir / name / f"results.{profile}.json")
        if main is None or new is None:
            print(f"{name}: no main reference or no new results: nothing saved")
            continue
        if cpu_of(main) == cpu:
            print(f"{name}: the main reference was made on this CPU model ({cpu}): nothing saved")
            continue
        if not any(c.failed for c in compare_results(main, new)):
            print(f"{name}: same numbers as the main reference (made on {cpu_of(main)}): no CPU reference needed")
            continue
        path = cpu_reference_path(name, profile, cpu)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(new, indent=2) + "\n")
        print(f"{name}: wrote {_arg_path(path)} (this CPU model's reference; the main one: {cpu_of(main)})")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    names = [p.name for p in PACKAGES]
    ap = argparse.ArgumentParser(prog="python -m common.reproduce",
                                 description="Run every package's reproduce profile, write index.md and compare "
                                             "the numbers with the committed ones.")
    ap.add_argument("--only", nargs="+", choices=names, metavar="PKG", help=f"subset of {names}")
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    ap.add_argument("--reports-dir", default=None,
                    help=f"where reports go (default {LOCAL_REPORTS}, ignored by git)")
    ap.add_argument("--update-committed", action="store_true",
                    help="write into the committed reports/ (the comparison is with what was there before)")
    ap.add_argument("--check", action="store_true",
                    help="regression check: run into a temporary folder from scratch, compare with the committed "
                         "results.<profile>.json and exit 1 on any number beyond tolerance")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per package (default: none)")
    ap.add_argument("--index-only", action="store_true",
                    help="run nothing: rebuild index.md from the results.<profile>.json already there")
    ap.add_argument("--verbose", action="store_true", help="print every compared number, not only changed ones")
    ap.add_argument("--cpu-reference", action="store_true",
                    help="run into a temporary folder and, for each package whose numbers differ from a main "
                         f"reference made on another CPU model, commit them as this model's reference "
                         f"(reports/<pkg>/{CPU_REFERENCES}/results.<profile>.<cpu>.json) that --check uses here")
    args = ap.parse_args(argv)
    if sum([args.update_committed, args.check, args.cpu_reference, args.reports_dir is not None]) > 1:
        ap.error("--update-committed, --check, --cpu-reference and --reports-dir exclude each other")
    tmp = (tempfile.TemporaryDirectory(prefix="reproduce_check_") if args.check or args.cpu_reference
           else None)
    if tmp is not None:
        reports_dir = Path(tmp.name) / "reports"
    elif args.update_committed:
        reports_dir = COMMITTED_REPORTS
    else:
        reports_dir = Path(args.reports_dir) if args.reports_dir else REPO_ROOT / LOCAL_REPORTS
    selected = args.only or names
    cpu = cpu_model()
    committed = {n: committed_reference(n, args.profile, cpu) for n in selected}
    rows: dict[str, dict[str, Any]] = {}
    for name in selected:
        if args.index_only:
            data = _load(reports_dir / name / f"results.{args.profile}.json")
            rows[name] = ({"status": "ok", "seconds": data.get("wall_seconds", 0.0), "headline": data.get("headline")}
                          if data else {"status": "not run" if package_exists(name) else "not implemented"})
            continue
        if not package_exists(name):
            rows[name] = {"status": "not implemented"}
            print(f"[{name}] not implemented")
            continue
        print(f"[{name}] running profile {args.profile} ...", flush=True)
        work = Path(tmp.name) / "work" / name if tmp is not None else None
        rows[name] = run_package(name, args.profile, reports_dir, args.data_dir, args.timeout, work_dir=work)
        print(f"[{name}] {rows[name]['status']} in {rows[name]['seconds']:.0f} s", flush=True)
        pending = {n: {"status": "pending"} for n in selected if n not in rows}
        write_index({**rows, **pending}, args.profile, reports_dir)  # readable while the others still run
    for name in names:  # packages not selected keep their earlier results in the index
        data = None if name in rows else _load(reports_dir / name / f"results.{args.profile}.json")
        if data:
            rows[name] = {"status": "ok", "seconds": data.get("wall_seconds", 0.0), "headline": data.get("headline")}
    path = write_index(rows, args.profile, reports_dir)
    print(f"wrote {path}")
    failed_runs = any(r["status"].startswith("failed") for r in rows.values())
    if args.index_only:
        return 0
    ran = [n for n in selected if rows[n]["status"] == "ok"]
    differences = compare_with_committed(ran, args.profile, reports_dir, committed, args.verbose)
    if args.cpu_reference:
        save_cpu_references(ran, args.profile, reports_dir, cpu)
    if tmp is not None:
        tmp.cleanup()
    if args.check:
        print(f"results check ({args.profile}): {differences} difference(s) beyond tolerance"
              + ("; a package failed" if failed_runs else ""))
        return 1 if differences or failed_runs else 0
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
