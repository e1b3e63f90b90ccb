"""Report rows of the comparisons: every number with its 95% interval, every claimed difference with a paired
test (``common.stats`` through ``common.reproduce.Row``).

- a rung scored several times (R2/R3 demonstration draws, R4-R6 seeds): mean over the draws or seeds with its
  t-interval (``Row.from_seeds``; the per-draw values are kept, and the note gives their spread);
- a rung scored once (R0, R1): the percentile bootstrap over test documents (``Row.from_items``);
- two rungs on the same test documents: the paired bootstrap over documents of their (draw- or seed-averaged)
  correctness (:func:`paired_items_row`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from common import stats
from common.reproduce import Row


def _group_key(r) -> tuple:
    return (r.rung, r.variant, r.n_train)


def _label(rung: str, variant: str, n_train: int) -> str:
    parts = [rung]
    if variant != "raw":
        parts.append(f"[{variant}]")
    if n_train:
        parts.append(f"n={n_train}")
    return " ".join(parts)


def ladder_groups(results) -> dict[tuple, list]:
    """RungResults grouped by (rung, scoring variant, n): the draws or seeds of one setting."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in results:
        groups[_group_key(r)].append(r)
    return dict(groups)


def ladder_rows(results, n_dev: int | None = None) -> list[Row]:
    """Accuracy and macro-F1 of every (rung, variant, n) with its interval, the chosen learning rates and the
    sweep's dev accuracies (single runs on the reduced dev set: selection evidence, no verdict)."""
    rows: list[Row] = []
    for (rung, variant, n_train), group in ladder_groups(results).items():
        label = _label(rung, variant, n_train)
        r0 = group[0]
        cost = (f"trainable {r0.trainable_params:,}; train {np.mean([r.train_seconds for r in group]):.0f} s; "
                f"{np.mean([r.infer_ms_per_example for r in group]):.0f} ms/doc")
        counts = defaultdict(int)  # the label bias: the most predicted label's share over the group's runs
        for r in group:
            for lab, c in r.pred_counts.items():
                counts[lab] += c
        if counts:
            top = max(counts, key=counts.get)
            cost += f"; predicts {top} for {counts[top] / sum(counts.values()):.0%} of documents"
        if len(group) > 1:
            what = "seeds" if r0.lr is not None else "demonstration draws"
            accs = [r.accuracy for r in group]
            note = (f"{len(group)} {what}: min {min(accs):.3f}, max {max(accs):.3f}, sd {np.std(accs, ddof=1):.3f}"
                    + (f"; lr {r0.lr:g} (chosen on dev)" if r0.lr is not None else "") + f"; {cost}")
            rows.append(Row.from_seeds(f"R8 {label}: accuracy", accs, unit="fraction", split="test", note=note))
            rows.append(Row.from_seeds(f"R8 {label}: macro-F1", [r.macro_f1 for r in group], unit="fraction",
                                       split="test", note=note))
        else:
            note = f"single run; 95% CI: bootstrap over test documents; {cost}"
            if r0.correct:
                rows.append(Row.from_items(f"R8 {label}: accuracy", r0.correct, unit="fraction", split="test",
                                           note=note))
            else:
                rows.append(Row(f"R8 {label}: accuracy", r0.accuracy, unit="fraction", split="test", note=note))
            rows.append(Row(f"R8 {label}: macro-F1", r0.macro_f1, unit="fraction", split="test", note=note))
    for rung in dict.fromkeys(r.rung for r in results if r.lr is not None):
        r0 = next(r for r in results if r.rung == rung and r.lr is not None)
        sweep = r0.extra.get("sweep") or {}
        edge = " (at the edge of the grid)" if r0.extra.get("lr_at_grid_edge") else ""
        rows.append(Row(f"R8 {rung}: chosen learning rate", r0.lr, unit="lr", split="dev",
                        note=f"best reduced-dev accuracy of the sweep{edge}"))
        for lr, rec in sweep.items():
            rows.append(Row(f"R8 {rung} sweep lr={lr}: dev accuracy", rec["dev_accuracy"], unit="fraction",
                            split="dev", note=f"n={rec['n_train']}, first seed, reduced dev set"
                            + (f" ({n_dev} documents)" if n_dev else "") + "; selection only, no verdict"))
    return rows


def seed_mean_correct(group) -> np.ndarray:
    """Per test document, the fraction of a setting's draws or seeds that got it right."""
    return np.mean([r.correct for r in group], axis=0)


def paired_items_row(metric: str, a: np.ndarray, b: np.ndarray, note: str = "", seed: int = 0, **kw) -> Row:
    """mean(a - b) over paired test items with its percentile-bootstrap 95% CI and two-sided p-value
    (:func:`common.stats.paired_bootstrap`)."""
    r = stats.paired_bootstrap(a, b, seed=seed)
    return Row(metric, r.mean_diff, ci_low=r.ci_low, ci_high=r.ci_high, ci_method="bootstrap", n=r.n,
               n_kind="items", p_value=r.p_value, note=note, **kw)


# the comparisons the README's verdicts rest on (raw scoring; the largest n of trained rungs)
LADDER_COMPARISONS = (("R6 full fine-tuning", "R3 retrieval ICL"), ("R5 LoRA", "R4 prompt tuning"),
                      ("R6 full fine-tuning", "R5 LoRA"), ("R5 LoRA", "R3 retrieval ICL"),
                      ("R4 prompt tuning", "R3 retrieval ICL"), ("R3 retrieval ICL", "R2 few-shot ICL"),
                      ("R2 few-shot ICL", "R1 zero-shot"))


def ladder_comparisons(results) -> list[Row]:
    """Paired differences in accuracy between rungs on the same test documents (each rung's raw scoring at its
    largest n, correctness averaged over its draws or seeds)."""
    best: dict[str, list] = {}
    for (rung, variant, n), group in ladder_groups(results).items():
        if variant == "raw" and group[0].correct and (rung not in best or n > best[rung][0].n_train):
            best[rung] = group
    rows = []
    for a, b in LADDER_COMPARISONS:
        if a in best and b in best:
            ga, gb = best[a], best[b]
            rows.append(paired_items_row(
                f"R8 accuracy difference: {_label(a, 'raw', ga[0].n_train)} - {_label(b, 'raw', gb[0].n_train)}",
                seed_mean_correct(ga), seed_mean_correct(gb), unit="fraction", split="test",
                note=f"paired bootstrap over test documents of the {len(ga)}- and {len(gb)}-run mean correctness"))
    return rows


# ----------------------------------------------------------------------------------------- kNN-LM
def _ppl_row(metric: str, ppl: float, block_nll: list[float], note: str, **kw) -> Row:
    """A test perplexity with the block-bootstrap 95% CI of its mean NLL (blocks of consecutive tokens)."""
    ci = stats.bootstrap_ci(block_nll) if len(block_nll) > 1 else None
    return Row(metric, ppl, ci_low=None if ci is None else float(np.exp(ci[0])),
               ci_high=None if ci is None else float(np.exp(ci[1])), ci_method=None if ci is None else "bootstrap",
               n=len(block_nll), n_kind="items", unit="perplexity", split="test", higher_is_better=False,
               note=note, **kw)


def knn_rows(knn: dict) -> list[Row]:
    """The LM's and the kNN-LM's test perplexity (settings chosen on held-out training text), their paired
    difference in NLL over token blocks, the per-size choices and the paper's default settings."""
    block = knn["block"]
    paper = "WikiText-103, 103M-token store"
    best = knn["best"]
    rows = [_ppl_row("kNN-LM perplexity: LM", knn["lm_ppl"], knn["lm_block_nll"], paper=18.65, paper_note=paper,
                     note=f"Reuters test; 95% CI: bootstrap over {block}-token blocks"),
            _ppl_row("kNN-LM perplexity: best interpolation", best["ppl"], knn["best_block_nll"], paper=16.12,
                     paper_note=paper,
                     note=f"Reuters test at the settings chosen on held-out training text: store "
                          f"{best['datastore']:,} tokens, k={best['k']}, lambda={best['lambda']}, "
                          f"T={best['temperature']} (validation ppl {best['valid_ppl']:.2f})")]
    r = stats.paired_bootstrap(knn["best_block_nll"], knn["lm_block_nll"])
    rows.append(Row("kNN-LM NLL difference (kNN-LM - LM)", r.mean_diff, ci_low=r.ci_low, ci_high=r.ci_high,
                    ci_method="bootstrap", n=r.n, n_kind="items", p_value=r.p_value, unit="nats/token",
                    split="test", higher_is_better=False,
                    note=f"paired bootstrap over {block}-token blocks of the test stream"))
    for c in knn["chosen"]:
        rows.append(Row(f"kNN-LM perplexity: store {c['datastore']:,} tokens", c["test_ppl"], unit="perplexity",
                        split="test", higher_is_better=False,
                        note=f"k={c['k']}, lambda={c['lambda']}, T={c['temperature']} chosen on validation "
                             f"(ppl {c['valid_ppl']:.2f})"))
    d = knn["default"]
    rows.append(Row("kNN-LM perplexity: paper default settings", d["test_ppl"], unit="perplexity", split="test",
                    higher_is_better=False, note=f"store {d['datastore']:,}, k={d['k']}, lambda={d['lambda']}, "
                                                 f"T={d['temperature']}, fixed in advance"))
    return rows


# ----------------------------------------------------------------------------------------- UMLS
def _over_seeds(metric: str, values: list[float], **kw) -> Row:
    return Row.from_seeds(metric, values, **kw) if len(values) > 1 else Row(metric, values[0], **kw)


def kg_rows(results) -> list[Row]:
    """Per model: triple-classification accuracy (per-relation and global thresholds), AUC and filtered link
    prediction over seeds; K2 vs K1 (and the other comparisons Hu et al.'s claim needs) with a paired test
    over seeds, McNemar per seed on the same test triples, and a paired bootstrap over triples."""
    by_model: dict[str, list] = defaultdict(list)
    for r in results:
        by_model[r.model].append(r)
    rows = []
    for model, rs in by_model.items():
        seeds = f"{len(rs)} seed{'s' if len(rs) > 1 else ''}"
        note = f"{seeds}; trainable {rs[0].trainable_params:,}"
        rows.append(_over_seeds(f"UMLS triples {model}: accuracy", [r.accuracy for r in rs], unit="fraction",
                                split="test", note=f"{note}; per-relation thresholds tuned on dev",
                                paper_note="KG-BERT on UMLS: link prediction only" if model == "K1" else ""))
        rows.append(_over_seeds(f"UMLS triples {model}: accuracy (global threshold)",
                                [r.accuracy_global for r in rs], unit="fraction", split="test",
                                note=f"{note}; one threshold tuned on all of dev"))
        rows.append(_over_seeds(f"UMLS triples {model}: AUC", [r.auc for r in rs], unit="AUC", split="test",
                                note=note))
        if rs[0].hits10 is not None:
            q = len(rs[0].lp_ranks)
            lp = f"{seeds}; filtered, {q} head+tail queries of {q // 2} test triples"
            rows.append(_over_seeds(f"UMLS link prediction {model}: Hits@10", [r.hits10 for r in rs],
                                    unit="fraction", split="test", note=lp,
                                    paper=0.990 if model == "K1" else None,
                                    paper_note="KG-BERT (BERT-base), all test triples" if model == "K1" else ""))
            rows.append(_over_seeds(f"UMLS link prediction {model}: MR", [r.mr for r in rs], unit="rank",
                                    split="test", note=lp, higher_is_better=False,
                                    paper=1.47 if model == "K1" else None,
                                    paper_note="KG-BERT (BERT-base), all test triples" if model == "K1" else ""))
    for a, b in (("K2", "K1"), ("K2", "K0-DistMult"), ("K1", "K0-DistMult"), ("K3", "K1"),
                 ("K0-DistMult", "K0-TransE")):
        if a not in by_model or b not in by_model:
            continue
        pairs = [(x, y) for x in by_model[a] for y in by_model[b] if x.seed == y.seed]
        if len(pairs) > 1:
            rows.append(Row.from_paired(f"UMLS triples accuracy difference {a} - {b} (over seeds)",
                                        [x.accuracy for x, _ in pairs], [y.accuracy for _, y in pairs],
                                        unit="fraction", split="test",
                                        note="paired by seed; exact sign-flip permutation p-value"))
        for x, y in pairs:
            m = stats.mcnemar(x.correct, y.correct)
            rows.append(Row(f"UMLS triples {a} vs {b}, seed {x.seed}: test triples only {a} gets right minus "
                            f"only {b}", m.b - m.c, n=m.b + m.c, p_value=m.p_value, unit="triples", split="test",
                            note=f"McNemar ({m.method}): only {a} {m.b}, only {b} {m.c}"))
        rows.append(paired_items_row(f"UMLS triples accuracy difference {a} - {b} (over test triples)",
                                     seed_mean_correct([x for x, _ in pairs]), seed_mean_correct([y for _, y in pairs]),
                                     unit="fraction", split="test",
                                     note=f"paired bootstrap over the test triples of the {len(pairs)}-seed mean "
                                          "correctness"))
    return rows


# ----------------------------------------------------------------------------------------- MovieLens ranking
def _hits(ranks, k: int) -> np.ndarray:
    return (np.asarray(ranks) < k).astype(float)


def _ndcg(ranks, k: int = 10) -> np.ndarray:
    r = np.asarray(ranks, dtype=float)
    return np.where(r < k, 1.0 / np.log2(r + 2), 0.0)


def _aligned(row_a: dict, row_b: dict) -> tuple[np.ndarray, np.ndarray]:
    """The two rows' sampled ranks over the users both scored, in the same order."""
    b = dict(zip(row_b["user_ids"], row_b["sampled_ranks"]))
    pairs = [(ra, b[u]) for u, ra in zip(row_a["user_ids"], row_a["sampled_ranks"]) if u in b]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def ranking_rows(rows: list[dict], data_name: str = "MovieLens-100k") -> list[Row]:
    """Every ranker's HR/NDCG with bootstrap CIs over users, and the paired tests over the same users: the
    history-order test, the candidate-position test and the LLM ranker against Pop."""
    out = []
    by_name = {r["model"]: r for r in rows}
    for r in rows:
        users = f"{r['users']} users; 95% CI: bootstrap over users"
        note = f"{users}. {r['note']}".strip(". ") if r.get("note") else users
        if r.get("full_ranks"):
            out.append(Row.from_items(f"{data_name} {r['model']}: full HR@10", _hits(r["full_ranks"], 10),
                                      unit="fraction", split="test", note=note))
            out.append(Row.from_items(f"{data_name} {r['model']}: full NDCG@10", _ndcg(r["full_ranks"]),
                                      unit="fraction", split="test", note=note))
        out.append(Row.from_items(f"{data_name} {r['model']}: sampled HR@1", _hits(r["sampled_ranks"], 1),
                                  unit="fraction", split="test", note=note + "; random: 0.05"))
        out.append(Row.from_items(f"{data_name} {r['model']}: sampled NDCG@10", _ndcg(r["sampled_ranks"]),
                                  unit="fraction", split="test", note=note))
    tests = [("pointwise (summed)", "pointwise, history shuffled (summed)",
              "history order: in order - shuffled (LLMRank: LLMs struggle to perceive order)"),
             ("listwise, positive first (summed)", "listwise, positive last (summed)",
              "candidate position: positive listed first - last (0 without position bias)"),
             ("pointwise (summed)", "Pop", "pointwise LLM ranker - Pop"),
             ("pointwise (PMI)", "Pop", "pointwise LLM ranker (PMI) - Pop"),
             ("listwise (summed)", "Pop", "listwise LLM ranker - Pop"),
             ("listwise (summed)", "pointwise (summed)", "listwise - pointwise LLM ranker")]
    for a, b, what in tests:
        ra, rb = by_name.get(f"LLM ranker, {a}"), by_name.get(b if b == "Pop" else f"LLM ranker, {b}")
        if ra is None or rb is None:
            continue
        x, y = _aligned(ra, rb)
        out.append(paired_items_row(f"{data_name} LLM ranker test, {what}: sampled NDCG@10 difference",
                                    _ndcg(x), _ndcg(y), unit="fraction", split="test",
                                    note=f"paired bootstrap over {len(x)} users"))
        m = stats.mcnemar(x < 1, y < 1)
        out.append(Row(f"{data_name} LLM ranker test, {what}: users with a hit@1 only in the first minus only in "
                       "the second", m.b - m.c, n=m.b + m.c, p_value=m.p_value, unit="users", split="test",
                       note=f"McNemar ({m.method}): {m.b} vs {m.c}"))
    return out


# ----------------------------------------------------------------------------------------- rec-tuning
def rectune_rows(rows: list[dict], data_name: str = "MovieLens-100k") -> list[Row]:
    """AUC of every rec-tuning row: seed-free rows with a cluster-bootstrap CI over test users, trained rows
    over seeds (t-interval); the LoRA model against the history baseline, zero-shot and SASRec, paired by seed."""
    from llm_specialization.rectune import auc_ci

    first = next(r for r in rows if "labels" in r)
    labels, users = first["labels"], first["users"]
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["n_train"])].append(r)
    out = []
    for (model, n), rs in groups.items():
        r0 = rs[0]
        what = f"{r0['build']} build, {r0['n_test']} test examples of {r0['test_users']} users"
        name = f"{data_name} rec-tuning {model}" + (f", n={n}" if n else "")
        lora = model.startswith("LoRA")
        paper = dict(paper=0.6748, paper_note="TALLRec LLaMA-7B 64-shot (movie)") if lora and n == 64 else {}
        if len(rs) > 1:
            out.append(Row.from_seeds(f"{name}: AUC", [r["auc"] for r in rs], unit="AUC", split="test",
                                      note=f"{len(rs)} seeds; {what}", **paper))
        else:
            ci = auc_ci(labels, r0["scores"], users)
            out.append(Row(f"{name}: AUC", r0["auc"], ci_low=ci and ci[0], ci_high=ci and ci[1],
                           ci_method=ci and "bootstrap", n=len(labels), n_kind="items", unit="AUC", split="test",
                           note=f"single run; 95% CI: bootstrap over the {r0['test_users']} test users; {what}",
                           **paper))
    seed_free = {m: rs[0] for (m, n), rs in groups.items() if n == 0}
    for (model, n), rs in groups.items():
        if not model.startswith("LoRA") or len(rs) < 2:
            continue
        rivals = [(m, [r0["auc"]] * len(rs)) for m, r0 in seed_free.items()]
        by_seed = {r["seed"]: r for r in groups.get(("SASRec with like labels (same n examples)", n), [])}
        if all(r["seed"] in by_seed for r in rs):
            rivals.append(("SASRec with like labels", [by_seed[r["seed"]]["auc"] for r in rs]))
        for m, other in rivals:
            out.append(Row.from_paired(f"{data_name} rec-tuning AUC difference: LoRA n={n} - {m}",
                                       [r["auc"] for r in rs], other, unit="AUC", split="test",
                                       note="over seeds (a seed-free baseline repeats its one value); exact "
                                            "sign-flip permutation p-value"))
    return out
