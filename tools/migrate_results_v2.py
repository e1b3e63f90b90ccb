"""One-off: rewrite the committed ``reports/*/results*.json`` from schema 1 (string cells) to schema 2.

    python tools/migrate_results_v2.py            # rewrites every schema-1 file in place
    python tools/migrate_results_v2.py --dry-run  # prints what it would change

Schema 1 stored ``{"metric", "ours", "paper", "note"}`` rows whose ``ours`` was often a formatted string
("97.39 ± 0.06 (n=3)", "0.495 / 0.083"). Each row becomes one or more :class:`common.reproduce.Row` with the
metric names the converted ``<pkg>/reproduce.py`` now emits, so that a rerun can be compared number by
number. Where a number exists unrounded in the stored ``extra`` (or, for scpo_rl, in the committed per-seed
CSVs) it is taken from there, and intervals are computed by :mod:`common.stats` from the per-seed values;
vocab_distill's rows are rebuilt by its own ``build_report`` from the stored results. Where only a formatted
string exists, its numbers are parsed (value and n) and ``ci_low``/``ci_high`` stay null until the
package's next run. Nothing is typed in by hand; every parse is checked against the string it came from.
The report markdown files are historical documents and are left as they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.reproduce import SCHEMA_VERSION, Row, format_value, validate_results  # noqa: E402
from common.stats import CONFIDENCE  # noqa: E402

NUM = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"


def num(text: str) -> float | int:
    t = text.replace(",", "")
    return int(t) if re.fullmatch(r"[-+]?\d+", t) else float(t)


def nums(text: str) -> list[float | int]:
    return [num(x) for x in re.findall(NUM, text)]


def close(a: float, b: float, decimals: int) -> bool:
    """``a`` rounds to the printed ``b`` (a parse or a recomputation matches the string it replaces)."""
    return abs(a - b) <= 0.5 * 10 ** -decimals + 1e-9


def decimals_of(text: str) -> int:
    m = re.search(r"\.(\d+)", text)
    return len(m.group(1)) if m else 0


def paper_fields(paper: Any) -> dict[str, Any]:
    """A schema-1 paper cell: a number stays a number, text goes to paper_note."""
    if paper is None:
        return {}
    if isinstance(paper, (int, float)) and not isinstance(paper, bool):
        return {"paper": paper}
    return {"paper_note": str(paper)}


def split_of(metric: str) -> str:
    for word in ("test", "dev", "valid"):
        if re.search(rf"\b{word}\b", metric):
            return word
    return ""


def seeds_row(metric: str, values: list[float], printed: str, **kw: Any) -> Row:
    """Row.from_seeds, after checking that the values reproduce the printed mean."""
    row = Row.from_seeds(metric, values, **kw)
    m = re.match(rf"\s*({NUM})", printed)
    if m and not close(row.value, num(m.group(1)), decimals_of(m.group(1))):
        raise ValueError(f"{metric}: per-seed mean {row.value} does not print as {printed!r}")
    return row


def parsed_row(metric: str, printed: str, **kw: Any) -> Row:
    """A row whose per-seed values are gone: the printed mean and n, no interval."""
    m = re.match(rf"\s*({NUM})(?:\s*±\s*{NUM})?(?:\s*\(n=(\d+)\))?\s*$", printed)
    if not m:
        raise ValueError(f"{metric}: cannot parse {printed!r}")
    n = int(m.group(2)) if m.group(2) else None
    return Row(metric, num(m.group(1)), n=n, n_kind="seeds" if n else None, **kw)


# ----------------------------------------------------------------------------- per package
def fuyou_offload(old: dict) -> tuple[list[Row], Row | None]:
    ex = old["extra"]
    rows: list[Row] = []
    headline = None
    timing = {"kind": "timing"}
    for r in old["rows"]:
        m, ours, note = r["metric"], r["ours"], r["note"]
        if m.startswith("max rel. param diff"):
            rows.append(Row(m, ours, note=note, higher_is_better=False, **paper_fields(r["paper"])))
        elif m.startswith("largest model under"):
            big = int(re.search(r"under (\d+) MiB", m).group(1))
            printed = [float(x) for x in ours.split(" / ")]
            for s, shown in zip(("fuyou", "zero_infinity", "in_memory"), printed):
                fits = [c["params"] for c in ex["capacity"] if c["budget_mib"] == big and c[f"fits_{s}"]]
                value = max(fits, default=0) / 1e6
                assert close(value, shown, 2), (s, value, shown)
                rows.append(Row(f"largest model under {big} MiB host budget: {s} (M params)", value, unit="M params",
                                note=note, higher_is_better=True,
                                paper_note=r["paper"] if s == "fuyou" else ""))
        elif m.startswith("speedup over zero_infinity"):
            headline = Row(m, ours, unit="x", paper=round(156 / 45, 2), paper_note="156/45 TFLOPS (13B, RTX 4090)",
                           higher_is_better=True, note=note, **timing)
            rows.append(headline)
        elif m.startswith("fuyou step / max"):
            rows.append(Row(m, ours, unit="ratio", note=note, higher_is_better=False, **timing))
        elif m.startswith("bytes per tier"):
            rows.append(Row(m, ours))
        elif m.startswith("planner argmin k"):
            k_pred, k_meas = (int(x) for x in ours.split(" / "))
            rows += [Row("planner argmin k (predicted)", k_pred, unit="op groups", paper_note=r["paper"],
                         note="from the profiled floors", **timing),
                     Row("planner argmin k (measured)", k_meas, unit="op groups", **timing)]
        elif m.startswith("planner median relative error"):
            rows.append(Row(m, ours, unit="fraction", note=note, higher_is_better=False, **timing))
        else:
            raise ValueError(f"fuyou_offload: unknown row {m!r}")
    return rows, headline


JOINT_METRICS = {"intent acc": "intent_acc", "slot F1": "slot_f1", "sentence acc": "sentence_acc"}


def joint_bert_nlu(old: dict) -> tuple[list[Row], Row | None]:
    ex = old["extra"]
    runs = ex.get("runs", [])
    rows: list[Row] = []
    for r in old["rows"]:
        m, ours, note = r["metric"], r["ours"], r["note"]
        split = split_of(m)
        if m.startswith("inference"):
            unit = "x" if "speed-up" in m else "sentences/s"
            rows.append(Row(m, ours, unit=unit, split="test", note=note, kind="timing"))
        elif "ceiling" in m:
            rows.append(Row(m, ours, unit="%", split="test", note=note))
        elif isinstance(ours, str):  # "{label}: test {metric}" over seeds
            label, metric = re.match(r"(.*): test (.*)$", m).groups()
            ds = label.split()[0].lower()
            if "slot loss chosen on dev" in label:
                loss = ex["selection"][ds]["chosen"]
                prefix = f"{ds}_softmax{'_sum' if loss == 'sentence_sum' else ''}_s"
            elif "CRF" in label:
                prefix = f"{ds}_crf_s"
            elif "sentence sum" in label:
                prefix = f"{ds}_softmax_sum_s"
            else:
                prefix = f"{ds}_softmax_s"
            vals = [100 * x[JOINT_METRICS[metric]] for x in runs if re.fullmatch(rf"{prefix}\d+", x["run"])]
            rows.append(seeds_row(m, vals, ours, unit="%", split="test", note=note, **paper_fields(r["paper"])))
        else:  # one run (quick): metric rows of one seed
            rows.append(Row(m, ours, unit="%", split=split, note=note, n=1, n_kind="seeds",
                            **paper_fields(r["paper"])))
    if old["profile"] == "full":
        headline = next(x for x in rows if x.metric == "SNIPS Joint BERT (slot loss chosen on dev): test slot F1")
    else:
        headline = next(x for x in rows if x.metric.endswith("test slot F1"))
    return rows, headline


def label_efficient_seg(old: dict) -> tuple[list[Row], Row | None]:
    ex = old["extra"]
    rows: list[Row] = []
    for r in old["rows"]:
        m, note = r["metric"], re.sub(r"; ± [\d.]+ over \d+ seeds", "", r["note"])
        label = m.split(" (")[0]
        if label in ex and "scores" in ex[label]:
            rows.append(seeds_row(m, ex[label]["scores"], f"{r['ours']:.6f}", unit=ex[label]["score_name"],
                                  split="test", note=note, higher_is_better=True, **paper_fields(r["paper"])))
        else:  # camvid/kmeans: one clustering, no training
            rows.append(Row(m, r["ours"], unit="miou", split="test", note=note, **paper_fields(r["paper"])))
    h = old["headline"]
    label = h["metric"].split(":")[0]
    scores = ex[label]["scores"]
    ref_label = re.search(r"% of (\S+?);", h["note"]).group(1)
    ref = sum(ex[ref_label]["scores"]) / len(ex[ref_label]["scores"])
    per_seed = [100 * s / ref for s in scores]
    headline = seeds_row(h["metric"], per_seed, f"{h['ours']:.6f}", unit="%", split="test",
                         paper_note=h["paper"], note=h["note"])
    return rows, headline


def llm_specialization(old: dict) -> tuple[list[Row], Row | None]:
    ex = old["extra"]
    old_rows = old["rows"]
    notes = {r["metric"]: r["note"] for r in old_rows}
    rows: list[Row] = []
    for r in ex["ladder"]:
        note = notes[f"R8 {r['rung']}: accuracy / macro-F1"]
        rows += [Row(f"R8 {r['rung']}: accuracy", r["accuracy"], unit="fraction", split="test", note=note),
                 Row(f"R8 {r['rung']}: macro-F1", r["macro_f1"], unit="fraction", split="test", note=note)]
    for r in ex["kg_fusion"]:
        note = f"trainable {r['trainable_params']:,}"
        rows += [Row(f"UMLS triples {r['model']}: accuracy", r["accuracy"], unit="fraction", split="test",
                     paper_note="KG-BERT UMLS link prediction Hits@10 0.990 (other task)" if r["model"] == "K1" else "",
                     note=note),
                 Row(f"UMLS triples {r['model']}: AUC", r["auc"], unit="AUC", split="test", note=note)]
    for r in ex["personalization"]:
        old_row = next(x for x in old_rows if x["metric"].endswith(f" {r['model']}") and "rec-tuning" not in x["metric"])
        data_name = old_row["metric"][: -len(r["model"]) - 1]
        keys = [k for k in ("full_HR@10", "full_NDCG@10", "sampled_HR@1", "sampled_NDCG@10") if k in r]
        rows += [Row(f"{data_name} {r['model']}: {k.replace('_', ' ')}", r[k], unit="fraction", split="test",
                     note=old_row["note"]) for k in keys]
    for r in ex["rec_tuning"]:
        old_row = next(x for x in old_rows if x["metric"].endswith(f"({r['build']} build) {r['model']}: AUC"))
        lora = r["model"].startswith("LoRA")
        rows.append(Row(old_row["metric"], r["auc"], unit="AUC", split="test", paper=0.6748 if lora else None,
                        paper_note="TALLRec LLaMA-7B 64-shot, 67.48%" if lora else "", note=old_row["note"]))
    knn = ex["knn_lm"]
    best = knn["best"]
    knn_paper = "WikiText-103, 103M-token store"
    rows.append(Row("kNN-LM perplexity: LM", knn["lm_ppl"], unit="perplexity", split="test", paper=18.65,
                    paper_note=knn_paper, higher_is_better=False, note="Reuters; the LM alone"))
    rows.append(Row("kNN-LM perplexity: best interpolation", best["ppl"], unit="perplexity", split="test",
                    paper=16.12, paper_note=knn_paper, higher_is_better=False, note=notes[old["headline"]["metric"]]))
    printed = [x for x in old_rows if isinstance(x["ours"], str)]
    assert len(rows) >= len(printed), "every printed row is rebuilt"
    return rows, rows[-1]


def lpips_metric(old: dict) -> tuple[list[Row], Row | None]:
    rows: list[Row] = []
    for r in old["rows"]:
        m = r["metric"]
        if m.startswith("TID2013"):
            rows.append(Row(m, r["ours"], split="TID2013", note=r["note"], higher_is_better=False,
                            **paper_fields(r["paper"])))
        else:
            rows.append(Row(m, r["ours"], unit="%", split="val", note=r["note"], **paper_fields(r["paper"])))
    h = old["headline"]
    lin, l2 = (x.strip() for x in h["ours"].split(" vs "))
    headline = Row("2AFC %: lin-calibrated random AlexNet [SYNTHETIC judgments]", num(lin), unit="%", split="val",
                   paper=69.8, paper_note="ImageNet AlexNet-lin, BAPPS, recalled; L2 63",
                   note=f"vs L2 (Lab) {l2}; not comparable: synthetic vs human judgments")
    return rows, headline


LOWER_IS_BETTER = {"hamming_loss", "empty_rate"}


def meta_multilabel(old: dict) -> tuple[list[Row], Row | None]:
    cells = old["extra"]["cells"]
    rows: list[Row] = []
    headline = None
    for r in old["rows"]:
        m, ours, note = r["metric"], r["ours"], r["note"]
        common_kw = {"unit": "fraction", "split": "test", "paper_note": r["paper"]}
        plain = re.fullmatch(r"(\S+) (\S+) (\S+) \(test\)", m)
        paired = re.fullmatch(r"(\S+): M − B2 (\S+) \(test, paired over seeds\)", m)
        if plain:
            d, name, metric = plain.groups()
            vals = [c[metric] for c in cells[f"{d}/{name}"]]
            rows.append(seeds_row(m, vals, ours, note=note, higher_is_better=metric not in LOWER_IS_BETTER,
                                  **common_kw))
        elif paired:
            d, main = paired.groups()
            a = [c[main] for c in cells[f"{d}/M"]]
            b = [c[main] for c in cells[f"{d}/B2"]]
            n = min(len(a), len(b))
            row = Row.from_paired(m, a[:n], b[:n], note=note + "; p: exact sign-flip permutation test",
                                  higher_is_better=True, **common_kw)
            assert close(row.value, num(ours.split()[0]), decimals_of(ours.split()[0])), (m, row.value, ours)
            rows.append(row)
            headline = headline or row
        else:  # "(test, at least one label)" / "(test, closed under parents)": per-seed values not stored
            rows.append(parsed_row(m, ours, note=note, higher_is_better=True, **common_kw))
    return rows, headline


def _scpo_seed_cells(reports: Path, profile: str, env: str, method: str) -> list[list[float]] | None:
    """seeds x cells of mean returns, from the committed per-seed grid CSV (as scpo_rl.evaluate.cell_means)."""
    path = reports / "scpo_rl" / f"{profile}_{env}_grid_per_seed.csv"
    if not path.exists():
        return None
    acc: dict[int, dict[tuple[float, float], list[float]]] = {}
    with open(path) as f:
        for rec in csv.DictReader(f):
            if rec["method"] == method:
                key = (float(rec["mass"]), float(rec["friction"]))
                acc.setdefault(int(rec["seed"]), {}).setdefault(key, []).append(float(rec["return"]))
    return [[sum(v) / len(v) for _, v in sorted(c.items())] for _, c in sorted(acc.items())]


def scpo_rl(old: dict, reports: Path) -> tuple[list[Row], Row | None]:
    studies = old["extra"]["studies"]
    rows: list[Row] = []
    ret = {"unit": "return", "split": "eval", "paper_note": "not retrieved", "higher_is_better": True}
    for r in old["rows"]:
        m, ours, note = r["metric"], r["ours"], r["note"]
        env, method, what = re.fullmatch(r"(\S+) (\S+): (.*)", m).groups()
        st = studies[env][method]
        if what.startswith("nominal return"):
            rows.append(seeds_row(m, st["nominal_per_seed"], ours, note=note, **ret))
        elif what.endswith(" average"):
            rows.append(seeds_row(m, st["grid_average_per_seed"], ours, note=note, **ret))
        elif what == "worst cell":
            rows.append(seeds_row(m, st["worst_cell_per_seed"], ours, note="per-seed worst cell, then mean over seeds",
                                  **ret))
            kind = next(x["metric"] for x in old["rows"] if x["metric"].startswith(f"{env} {method}: ")
                        and x["metric"].endswith(" average")).split(": ")[1][: -len(" average")]
            grid = _scpo_seed_cells(reports, old["profile"], env, method)
            avg_note = next(x["note"] for x in old["rows"] if x["metric"] == f"{env} {method}: {kind} average")
            if grid:
                rows.append(Row.from_iqm(f"{env} {method}: {kind} IQM (seeds x cells)", grid,
                                         note=avg_note + "; rliable's IQM, bootstrap stratified by cell", **ret))
        else:
            raise ValueError(f"scpo_rl: unknown row {m!r}")
    h = old["headline"]
    env = h["metric"].split(" robustness average")[0]
    sac = Row.from_seeds("sac", studies[env]["sac"]["grid_average_per_seed"])
    scpo_text = h["ours"].split(" vs ")[0]
    headline = seeds_row(f"{env} robustness average, SCPO", studies[env]["scpo"]["grid_average_per_seed"], scpo_text,
                         note=f"SAC {format_value(sac)}; profile {old['profile']}", **ret)
    return rows, headline


def synthesis_pathways(old: dict) -> tuple[list[Row], Row | None]:
    ex = old["extra"]
    summaries = ex["summaries"]
    rows: list[Row] = []
    for r in old["rows"]:
        m, ours, note = r["metric"], r["ours"], r["note"]
        pre = m.split(":")[0]
        split = pre if pre in summaries else ""
        items = {"n": summaries[pre]["n"], "n_kind": "items"} if pre in summaries else {}
        frac = {"unit": "fraction", "split": split}
        if re.search(r": recovery \((fingerprint|canonical SMILES)\)$", m):
            rows.append(Row(m, ours, note=note, higher_is_better=True, **frac, **items, **paper_fields(r["paper"])))
        elif m.endswith(": mean similarity (all, failures = 0)"):
            rows.append(Row(m, ours, unit="Tanimoto", split=split, higher_is_better=True, note=note, **items,
                            **paper_fields(r["paper"])))
        elif m.endswith(": mean similarity (unrecovered, finished)"):
            rows.append(Row(m, ours, unit="Tanimoto", split=split, note=note))
        elif m.endswith(": unfinished"):
            rows.append(Row(m, ours, higher_is_better=False, note=note, **frac))
        elif ": seconds per target" in m:
            rows.append(Row(m, ours, unit="s", split=split, note=note, kind="timing"))
        elif m.endswith(": random policy recovery / similarity"):
            b = ex["random_baseline"][pre]
            rows += [Row(f"{pre}: random policy recovery", b["recovery_fp"], note=note, **frac),
                     Row(f"{pre}: random policy similarity", b["similarity_all"], unit="Tanimoto", split=split,
                         note=note)]
        elif m.endswith(": nearest single block, similarity"):
            rows.append(Row(m, ours, unit="Tanimoto", split=split, note=note, **items))
        elif m == "chemprojector: recovery by route depth":
            rows += [Row(f"chemprojector: recovery at route depth {k}", v, unit="fraction", split="chemprojector",
                         note=note) for k, v in json.loads(ours).items()]
        elif re.fullmatch(r"(act|rt1|rxn|rt2) test (accuracy|mse)", m):
            rows.append(Row(m, ours, split="test", higher_is_better=m.endswith("accuracy"), note=note))
        elif m.startswith("rt1 mean reciprocal rank"):
            rows.append(Row(m, ours, split="test", note=note))
        elif m == "parameters (4 nets)":
            rows.append(Row(m, ours, unit="parameters", paper=r["paper"], note=note))
        elif m == "sampled trees kept / attempts":
            s = ex["pipeline"]["sample"]
            assert ours == f"{s['kept']} / {s['attempts']}"
            rows += [Row("sampled trees kept", s["kept"], unit="trees", note=note),
                     Row("sampled tree attempts", s["attempts"], unit="attempts", paper=600_000, note=note)]
        elif "property correlation" in m:
            where, split = ("chembl", "chembl") if m.startswith("chembl") else ("held-out", "heldout")
            exact = ex.get("chembl_correlations") if where == "chembl" else None
            shown = [float(x) for x in ours.split(" / ")]
            for (key, name), v in zip({"qed": "QED", "logp": "logP", "mw": "MW", "sa": "SA"}.items(), shown):
                value = exact[key] if exact else v
                assert close(value, v, 2)
                rows.append(Row(f"{where}: target/answer property correlation, {name}", value, unit="r", split=split,
                                paper_note=r["paper"], note=note))
        elif m.startswith("GA "):
            objective = m.split()[1].rstrip(":")
            ga = ex[f"ga_{objective}"]
            paper = {"qed": {"top1": 0.948, "top10": 0.948, "top100": 0.947}}.get(objective, {})
            for k, shown in zip(("top1", "top10", "top100"), ours.split(" / ")):
                assert close(ga[k], float(shown), 3)
                rows.append(Row(f"GA {objective}: {k.replace('top', 'top-')}", ga[k], unit=objective,
                                paper=paper.get(k), note=note.replace(" ± ", " mean, ").replace(
                                    f"{ga['seed_std']:.3f}", f"{ga['seed_std']:.3f} sd").replace(
                                    "; seeds ", "; seed population "), higher_is_better=True))
        elif m.startswith("k-NN queries/s"):
            kb = ex["bench"]["knn"]
            rows += [Row("k-NN queries/s, ours (one at a time)", kb["ours_loop_qps"], unit="queries/s", note=note,
                         kind="timing"),
                     Row("k-NN queries/s, BallTree(callable cosine)", kb["balltree_callable_qps"], unit="queries/s",
                         note=note, kind="timing")]
        elif m.startswith("sampling attempts per CPU-second"):
            rows.append(Row(m, ours, unit="attempts/s", paper_note=r["paper"], note=note, kind="timing"))
        else:
            raise ValueError(f"synthesis_pathways: unknown row {m!r}")
    h = old["headline"]
    n = int(re.search(r"n=(\d+)", h["note"]).group(1))
    headline = Row(h["metric"], h["ours"], unit="fraction", split="heldout", paper=h["paper"], higher_is_better=True,
                   note=h["note"], n=n, n_kind="items")
    return rows, headline


def vocab_distill(old: dict) -> tuple[list[Row], Row | None]:
    """Rebuilt by the package's own report code from the stored results (which hold the per-seed runs)."""
    import matplotlib

    matplotlib.use("Agg")
    from vocab_distill.reproduce import build_report

    with tempfile.TemporaryDirectory() as tmp:
        report = build_report(old["extra"]["results"], old["profile"], Path(tmp))
    return report.rows, report.headline


MIGRATORS: dict[str, Callable[..., tuple[list[Row], Row | None]]] = {
    "fuyou_offload": fuyou_offload, "joint_bert_nlu": joint_bert_nlu, "label_efficient_seg": label_efficient_seg,
    "llm_specialization": llm_specialization, "lpips_metric": lpips_metric, "meta_multilabel": meta_multilabel,
    "scpo_rl": scpo_rl, "synthesis_pathways": synthesis_pathways, "vocab_distill": vocab_distill}


# ----------------------------------------------------------------------------- files
def portable(command: str) -> str:
    """Absolute paths in a stored command: the machine's reports folder becomes ``reports``."""
    out = []
    for tok in shlex.split(command):
        if tok.startswith("/"):
            p = Path(tok)
            tok = "reports" if p.name == "reports" else f"<outside repo>/{p.name}"
        out.append(shlex.quote(tok))
    return " ".join(out)


def migrate(old: dict, reports: Path) -> dict:
    pkg = old["package"]
    fn = MIGRATORS[pkg]
    rows, headline = fn(old, reports) if pkg == "scpo_rl" else fn(old)
    new = {"schema_version": SCHEMA_VERSION, "package": pkg, "profile": old["profile"],
           "command": portable(old["command"]), "date": old["date"], "hardware": old["hardware"],
           "commit": old["commit"], "dirty": old["dirty"], "wall_seconds": old["wall_seconds"],
           "confidence": CONFIDENCE, "headline": headline.to_dict() if headline else None,
           "rows": [r.to_dict() for r in rows], "plots": [Path(p).name for p in old["plots"]],
           "extra": old["extra"],
           "migrated": {"from_schema": 1, "by": "tools/migrate_results_v2.py",
                        "note": "numbers from the stored extra/per-seed data where kept, else parsed from the "
                                "schema-1 strings (then ci_low/ci_high are null)"}}
    errors = validate_results(new)
    if errors:
        raise ValueError(f"{pkg} {old['profile']}: {errors[:3]}")
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", default=str(REPO / "reports"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    reports = Path(args.reports)
    for path in sorted(reports.glob("*/results*.json")):
        old = json.loads(path.read_text())
        if old.get("schema_version") == SCHEMA_VERSION:
            print(f"{path.relative_to(reports)}: already schema {SCHEMA_VERSION}")
            continue
        new = migrate(old, reports)
        with_ci = sum(1 for r in new["rows"] if r["ci_low"] is not None)
        print(f"{path.relative_to(reports)}: {len(old['rows'])} rows -> {len(new['rows'])} numeric rows "
              f"({with_ci} with a CI); headline {format_value(new['headline']) if new['headline'] else '—'}")
        if not args.dry_run:
            path.write_text(json.dumps(new, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
