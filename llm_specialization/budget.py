"""CPU-hour estimate of a reproduce profile, before it runs: python -m llm_specialization.budget --profile full

Every unit cost is a wall-clock of the last ``full`` run (2026-11-27, one busy core of this 2-core machine,
``reports/llm_specialization/results.full.json`` and the README's tables) or, where that run did not time a
step, a FLOP count at the throughput that run measured; each line says which. CPU-hours = single-thread
wall-clock hours (the run's threads each count). The estimate is what decides what a profile can hold: the
issue's budget for ``full`` is about 20 CPU-hours.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from llm_specialization.tuning import TrainingProtocol

# --- measured in the last full run (seconds, one busy core)
TRAIN_STEP_S = {"prompt_tuning": 1643.4 / 48, "lora": 1100.6 / 48, "full": 1317.2 / 48}  # 48 steps of 16 documents
SCORE_S = {"zero_shot": 0.672, "few_shot": 0.967, "retrieval": 1.513,  # per test document, KV-cached scorer
           "prompt_tuning": 0.84, "lora": 0.809, "full": 0.852}
MINILM_EMBED_S = 394.1  # R0 MiniLM + LR: embedding the 5,501 + 800 R8 documents
KNN_SWEEP_S = 241.0  # the interpolation sweep over one 20k-token stream, 4 store sizes
RANKER_POINTWISE_S = 2.5  # per user and pass, 20 candidates (README: 2-3 s)
RECTUNE_SCORE_S = 0.31  # per example, Yes/No probability
RECTUNE_STEP_S = (2755.8 - 20 * 200 * 0.31) / 80  # 80 LoRA steps of 16 examples, 20 validations of 200 taken out
# --- derived from FLOPs at the measured throughput (estimates, not timed)
LM_TOKENS_PER_S = 175 / 0.672  # SmolLM2 forward: R1's ~175-token prompt in 0.672 s
CHAT_EXTRA_S = 30 / LM_TOKENS_PER_S  # the chat template's system message and turn markers (~30 tokens)
RANKER_LISTWISE_S = 2 * RANKER_POINTWISE_S  # the listwise prompt holds the 20 candidates too (~2x the tokens)
MINILM_EPOCH_S = {"K1": 9 * 60, "K2": 9 * 60, "K3": 5 * 60}  # ~10.4k triples x 2.6 GFLOP fwd+bwd at ~50 GFLOPS
MINILM_FORWARD_S = 0.9e9 / 50e9  # one ~20-token triple forward
K0_S = 60.0  # TransE / DistMult, 200 epochs
SASREC_S_PER_EPOCH = 15 * 60 / 120  # MovieLens-100k: the full run stopped after 120 epochs, "minutes"


@dataclass
class Line:
    item: str
    seconds: float
    basis: str


def estimate(p: dict) -> list[Line]:
    """The cost lines of one reproduce profile (a ``reproduce.PROFILES`` entry)."""
    if p["model"] == "tiny":
        return [Line("smoke: tiny random model", 300.0, "seconds to minutes")]
    out: list[Line] = []
    n_test, methods, draws = p["n_test"], p["methods"], p["draws"]
    if "references" in methods:
        out.append(Line("R0 references (MiniLM embeddings)", MINILM_EMBED_S, "measured"))
    for m in ("zero_shot", "few_shot", "retrieval"):
        if m in methods:
            k = 1 if m == "zero_shot" else draws
            s = k * n_test * SCORE_S[m]
            if m in p["chat_rungs"]:
                s += k * n_test * (SCORE_S[m] + CHAT_EXTRA_S)
            out.append(Line(f"{m}: {k} draw(s) x {n_test} documents" + (" x plain + chat" if m in p["chat_rungs"]
                                                                         else ""), s, "measured per document"))
    proto = TrainingProtocol(**p["training"])
    for m in ("prompt_tuning", "lora", "full"):
        if m not in methods:
            continue
        grid = len(proto.lr_grid.get(m, (0,)))
        sweep = grid if grid > 1 else 0
        finals = len(proto.shots) * proto.seeds - (1 if sweep and proto.sweep_shots in proto.shots else 0)
        evals = proto.steps // proto.eval_every_steps
        run = proto.steps * TRAIN_STEP_S[m] + evals * proto.dev_docs * SCORE_S[m]
        out.append(Line(f"{m}: {sweep} sweep + {finals} final trainings of {proto.steps} steps, {evals} dev passes "
                        f"of {proto.dev_docs}", (sweep + finals) * run, "measured per step and document"))
        out.append(Line(f"{m}: {len(proto.shots) * proto.seeds} test passes of {n_test}",
                        len(proto.shots) * proto.seeds * n_test * SCORE_S[m], "measured per document"))
    k = p["knn"]
    tokens = 2 * k["store_tokens"] + 4 * k["n_eval_tokens"]  # stride = window / 2: every token runs twice
    out.append(Line(f"kNN-LM: encode {k['store_tokens']:,} store + 2 x {k['n_eval_tokens']:,} tokens (0 if the "
                    "store's parts are kept)", tokens / LM_TOKENS_PER_S, "FLOPs at the measured LM throughput"))
    out.append(Line("kNN-LM: sweep on validation, test at the chosen settings", 1.3 * KNN_SWEEP_S, "measured"))
    kg = p["kg"]
    text = [m for m in kg["models"] if m in MINILM_EPOCH_S]
    k0 = [m for m in kg["models"] if m.startswith("K0")]
    lp = 661 if kg["lp_triples"] is None else kg["lp_triples"]
    per_seed = len(k0) * K0_S + sum(kg["epochs"] * MINILM_EPOCH_S[m] * (kg["max_train"] or 5216) / 5216
                                    + 2626 * MINILM_FORWARD_S + lp * 270 * MINILM_FORWARD_S for m in text)
    out.append(Line(f"UMLS: {', '.join(kg['models'])} x {kg['seeds']} seeds, {kg['epochs']} epochs, link prediction "
                    f"on {lp} triples", kg["seeds"] * per_seed, "FLOP estimate (MiniLM), K0 measured"))
    rec = p["rec"]
    passes_point = 2 if "shuffle" in rec.get("ranker_tests", ("shuffle", "listwise", "position")) else 1
    passes_list = 3
    out.append(Line("MovieLens: Pop + SASRec", SASREC_S_PER_EPOCH * min(rec["epochs"], 120), "estimate"))
    out.append(Line(f"LLM ranker: {rec['llm_users']} users x ({passes_point} pointwise + {passes_list} listwise "
                    "passes)", rec["llm_users"] * (passes_point * RANKER_POINTWISE_S + passes_list * RANKER_LISTWISE_S),
                    "measured pointwise; listwise 2x"))
    rt = p["rt"]
    shots = [n for n in rt["shots"] if n]
    steps = rt["steps"] or 80
    evals = steps // (rt["eval_every_steps"] or steps)
    run = steps * RECTUNE_STEP_S + evals * rt["n_valid"] * RECTUNE_SCORE_S + rt["n_test"] * RECTUNE_SCORE_S
    out.append(Line(f"rec-tuning: zero-shot + {len(shots)} n x {rt['seeds']} seeds of {steps} steps",
                    rt["n_test"] * RECTUNE_SCORE_S + len(shots) * rt["seeds"] * run, "measured per step and example"))
    return out


def main(argv: list[str] | None = None) -> None:
    from llm_specialization.reproduce import PROFILES

    ap = argparse.ArgumentParser(prog="python -m llm_specialization.budget", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    args = ap.parse_args(argv)
    lines = estimate(PROFILES[args.profile])
    width = max(len(line.item) for line in lines)
    for line in lines:
        print(f"{line.item:{width}s}  {line.seconds / 3600:6.2f} h  ({line.basis})")
    print(f"{'total':{width}s}  {sum(line.seconds for line in lines) / 3600:6.2f} CPU-hours")


if __name__ == "__main__":
    main()
