"""The comparisons as library calls (no Hydra): each returns rows of results and writes a JSON summary.

A ``full`` run takes longer than one sitting, so every finished unit (a ladder rung, the kNN-LM sweep, a
KG model, the personalization and rec-tuning stages) stores its result with
:func:`common.checkpoint.cached_result`, keyed by its settings; a ``resume`` run reads those back and
continues at the first unfinished unit (training itself resumes from the trainer's checkpoints).

Under ``torchrun`` every rank runs the same units (training is DDP, the trainers' validations are sharded);
rank 0 alone stores results and summaries, and the others read what it stored.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

import torch

from common.bench import peak_rss_bytes
from common.checkpoint import cached_result, load_checkpoint, seed_everything
from common.config import TrainerConfig
from common.distributed import barrier, broadcast_object, is_main_process
from common.logging import get_logger
from common.trainer import Trainer
from llm_specialization import ladder, tuning
from llm_specialization.data import balanced_sample, fixed_dev_subset, fixed_test_subset, ids_hash, load_r8
from llm_specialization.models import LM, MemoEncoder, MiniLMEncoder, load_smollm2, tiny_llama
from llm_specialization.tuning import TrainingProtocol

log = get_logger("llm_specialization")
PROMPT_RUNGS = ("zero_shot", "few_shot", "retrieval")
PROMPT_NAMES = {"zero_shot": "R1 zero-shot", "few_shot": "R2 few-shot ICL", "retrieval": "R3 retrieval ICL"}
TRAINED_RUNGS = {"prompt_tuning": "R4 prompt tuning", "lora": "R5 LoRA", "full": "R6 full fine-tuning"}
DEFAULT_LR = {"prompt_tuning": 3e-2, "lora": 2e-4, "full": 2e-5}  # the rates before the sweep (issue 26)
ALL_METHODS = ("references", *PROMPT_RUNGS, *TRAINED_RUNGS)


def load_lm(name: str):
    if name == "smollm2":
        return load_smollm2()
    if name == "tiny":
        return tiny_llama()
    raise ValueError(f"model must be smollm2 or tiny, not {name!r}")


_RUNTIME_ONLY = {"progress_bar", "num_threads", "num_workers", "log_every_steps", "keep_last_checkpoints",
                 "checkpoint_every_steps"}


def training_key(cfg) -> dict:
    """The trainer settings that can change a result (not how a run is shown or scheduled): part of the
    key under which a finished stage's result is stored. ``cfg`` is a TrainerConfig or Hydra's node."""
    d = asdict(cfg) if is_dataclass(cfg) else {k: cfg[k] for k in cfg}
    return {k: v for k, v in d.items() if k not in _RUNTIME_ONLY}


def run_domain_ladder(*, methods: list[str], model: str, run_dir: Path, trainer_cfg: TrainerConfig,
                      logger_cfg=None, resume: str = "never", data_dir=None, n_test: int = 800,
                      max_tokens: int = 128, use_encoder: bool = True, seed: int = 0, show_progress: bool = True,
                      protocol: TrainingProtocol | None = None, draws: int = 5,
                      chat_rungs: tuple[str, ...] = ("zero_shot",), demo_tokens: int = 48,
                      k_retrieved: int = 4, r8=None) -> list[ladder.RungResult]:
    """Run the chosen rungs on R8 and return every scored run (also saved to run_dir/ladder.json).

    Prompting rungs: R1 once, R2/R3 ``draws`` times (demonstration draws and orders), each under every
    scoring variant, plain prompts and, for the rungs in ``chat_rungs``, the tokenizer's chat template too.
    Trained rungs follow ``protocol`` (:mod:`llm_specialization.tuning`): a learning-rate sweep scored on the
    reduced dev set, then the chosen rate at every n and seed, each run tested from its best dev checkpoint.
    ``model`` is a name (smollm2 | tiny) or an LM object, ``r8`` the data (default: R8 from the data root);
    with either given (tests), nothing is read back from earlier runs.
    """
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    if set(chat_rungs) - set(PROMPT_RUNGS):
        raise ValueError(f"chat_rungs must be among {PROMPT_RUNGS}, got {list(chat_rungs)}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    protocol = protocol or TrainingProtocol()
    seed_everything(seed)
    reusable = resume != "never" and isinstance(model, str) and r8 is None
    r8 = r8 or load_r8(data_dir, seed=seed)
    test = fixed_test_subset(r8, n_test, seed)
    gold = [e.label for e in test]
    encoder = (MemoEncoder(MiniLMEncoder()) if use_encoder and ({"references", "retrieval"} & set(methods))
               else None)
    # Each unit (a rung's draw, a sweep run, a final run) stores its result once done (run_dir/rungs/), so a
    # run cut short resumes at the first unfinished unit; the LLM is loaded only when a unit still has to run.
    shared = {"model": str(model) if isinstance(model, str) else model.name, "test_ids_hash": ids_hash(test),
              "max_tokens": max_tokens, "seed": seed}
    loaded = []

    def lm_once():
        if not loaded:
            loaded.append(load_lm(model) if isinstance(model, str) else model)
        return loaded[0]

    def unit(name: str, compute, rank0_only: bool = False, **params):
        # a unit's per-document predictions go to rungs/<name>.docs.jsonl as they are made, under the same
        # key, so a unit cut short (an 800-document pass takes up to an hour) continues mid-way. Under
        # torchrun a unit without training (rank0_only) runs on rank 0 alone, the others wait for its result.
        key = {**shared, "unit": name, **params}
        docs = (run_dir / "rungs" / f"{name}.docs.jsonl", key) if reusable else None

        def run():
            return cached_result(run_dir / "rungs" / f"{name}.json", key, lambda: compute(docs), enabled=reusable)

        return broadcast_object(run() if is_main_process() else None) if rank0_only else run()

    def as_results(stored) -> list[ladder.RungResult]:
        return [ladder.RungResult(**r) for r in stored]

    results: list[ladder.RungResult] = []
    if "references" in methods:
        results += as_results(unit("references", lambda docs: [asdict(r) for r in ladder.reference_rungs(
            r8, test, encoder)], rank0_only=True, use_encoder=use_encoder))

    neighbours: list = []  # R3's retrieved training documents, computed once for every draw

    def demos_of(method: str, draw: int, doc: int) -> list:
        if method == "zero_shot":
            return []
        if method == "few_shot":
            return ladder.few_shot_demos(r8, seed + draw)
        if not neighbours:
            neighbours.extend(ladder.retrieve(r8, test, encoder, k_retrieved))
        return [r8.train[j] for j in ladder.retrieval_order(neighbours[doc], draw, seed, doc)]

    def prompt_rung(method: str, fmt: str, draw: int, docs):
        lm = lm_once()
        prompts = [ladder.render(lm.tokenizer, demos_of(method, draw, i), ex, fmt, demo_tokens, max_tokens)
                   for i, ex in enumerate(test)]
        # R1 and R2 share their demonstrations across documents, so a contextually calibrated variant comes
        # from the same scores (three content-free prompts); R3's demonstrations change with every document
        calib = demos_of(method, draw, 0) if method != "retrieval" else None
        rung = PROMPT_NAMES[method] + (" (chat template)" if fmt == "chat" else "")
        return [asdict(r) for r in ladder.prompting_rung(rung, lm, prompts, test, r8.labels, show_progress, docs,
                                                         fmt, calib, demo_tokens, draw)]

    for method in PROMPT_RUNGS:
        if method not in methods:
            continue
        if method == "retrieval" and encoder is None:
            raise ValueError("the retrieval rung needs the MiniLM encoder (use_encoder=true)")
        for fmt in ("plain", "chat") if method in chat_rungs else ("plain",):
            for draw in range(1 if method == "zero_shot" else draws):
                results += as_results(unit(
                    f"{method}-{fmt}-d{draw}", lambda docs, m=method, f=fmt, d=draw: prompt_rung(m, f, d, docs),
                    rank0_only=True, fmt=fmt, draw=draw, demo_tokens=demo_tokens,
                    **({"k": k_retrieved} if method == "retrieval" else {}),
                    **({"calibration": list(ladder.CONTENT_FREE)} if method != "retrieval" else {})))

    trained_now: set[str] = set()  # runs trained by this process (their checkpoints may be reused)
    dev = fixed_dev_subset(r8, protocol.dev_docs, seed)
    tkey = {"protocol": protocol.run_key(), "trainer": training_key(trainer_cfg), "dev_ids_hash": ids_hash(dev)}

    def train_run(method: str, n: int, lr: float, s: int, reuse: dict | None = None):
        """(net, lm, stats) of one run, trained unless ``reuse`` (its sweep record) and its best.pt exist."""
        name = tuning.run_name(method, n, lr, s)
        tdir = run_dir / name
        base = lm_once()
        lm = LM(copy.deepcopy(base.model), base.tokenizer, base.name)  # every run starts from the same weights
        torch.manual_seed(s)  # and a seeded adapter initialisation, whichever runs came before
        net = ladder.adapt(lm, method)
        train = balanced_sample(r8.train, max(1, n // len(r8.labels)), s)
        best = tdir / "checkpoints" / "best.pt"
        if reuse is not None and best.is_file() and (reusable or name in trained_now):
            net.load_state_dict(load_checkpoint(best)["model"])
            return net, lm, {**reuse, "n_train": len(train), "reused": True}
        if not reusable:  # start over: an earlier run's checkpoints in this folder are not continued
            if is_main_process():
                shutil.rmtree(tdir, ignore_errors=True)
            barrier()
        data = ladder.VerbalizerDataset(lm, train, max_tokens)

        def dev_eval(m):
            preds, _ = ladder.predict_trained(m, lm, dev, r8.labels, max_tokens, show_progress=False)
            acc, f1 = ladder.metrics([e.label for e in dev], preds, r8.labels)
            return {"dev_accuracy": acc, "dev_macro_f1": f1}

        trainer = Trainer(tuning.trainer_config(trainer_cfg, protocol, s), tdir, logger_cfg=logger_cfg,
                          resume="auto" if not reusable else resume)
        fit = trainer.fit(net, data, ladder.verbalizer_loss, collate_fn=data.collate,
                          optimizer_fn=lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                                                   lr=lr),
                          scheduler_fn=tuning.scheduler_fn(protocol), eval_fn=dev_eval,
                          eval_metrics=("dev_accuracy", "dev_macro_f1"))
        trained_now.add(name)
        barrier()  # under torchrun: rank 0 has written best.pt before any rank loads it
        trainer.load_best(net)  # the checkpoint the dev set chose is the one tested
        best_metrics = fit.best_metrics or {}
        return net, lm, {"lr": lr, "dev_accuracy": best_metrics.get("dev_accuracy"),
                         "dev_macro_f1": best_metrics.get("dev_macro_f1"), "best_step": fit.best_step,
                         "train_seconds": fit.wall_seconds_total, "dev_curve": _dev_curve(tdir),
                         "n_train": len(train), "reused": False}

    first = seed  # the sweep's seed, and the first seed of the final runs

    def trained_rung(method: str, rung: str) -> list[ladder.RungResult]:
        grid = protocol.lr_grid.get(method) or (DEFAULT_LR[method],)

        def sweep_run(lr: float) -> dict:
            return train_run(method, protocol.sweep_shots, lr, first)[2]

        sweep = {lr: unit(f"{method}-sweep-lr{lr:g}", lambda docs, lr=lr: sweep_run(lr), lr=lr,
                          n=protocol.sweep_shots, **tkey) for lr in grid} if len(grid) > 1 else {}
        chosen = tuning.select_lr(sweep) if sweep else grid[0]
        if not protocol.keep_checkpoints:  # the other rates' runs are done with
            for lr in grid:
                if lr != chosen:
                    tuning.drop_checkpoints(run_dir / tuning.run_name(method, protocol.sweep_shots, lr, first))

        def final_run(docs, n: int, s: int) -> list[dict]:
            reuse = sweep.get(chosen) if (n == protocol.sweep_shots and s == first) else None
            net, lm, stats = train_run(method, n, chosen, s, reuse)
            preds, ms = ladder.predict_trained(net, lm, test, r8.labels, max_tokens, show_progress, docs)
            extra = {k: stats[k] for k in ("dev_accuracy", "dev_macro_f1", "best_step", "dev_curve", "reused")}
            out = ladder.scored(rung, gold, preds, r8.labels, trainable_params=ladder.trainable_parameters(net),
                                train_seconds=stats["train_seconds"], infer_ms_per_example=ms,
                                peak_rss_gib=peak_rss_bytes() / 2**30, draw=s, n_train=stats["n_train"],
                                lr=chosen, extra=extra)
            return [asdict(out)]

        out = []
        for n in protocol.shots:
            for s in range(first, first + protocol.seeds):
                got = as_results(unit(f"{method}-n{n}-seed{s}", lambda docs, n=n, s=s: final_run(docs, n, s),
                                      lr=chosen, n=n, run_seed=s, **tkey))  # the chosen rate is part of the key
                if not protocol.keep_checkpoints:
                    tuning.drop_checkpoints(run_dir / tuning.run_name(method, n, chosen, s))
                for r in got:  # the sweep this rate was chosen from, beside every final run
                    r.extra.update(sweep={f"{lr:g}": rec for lr, rec in sweep.items()}, chosen_lr=chosen,
                                   lr_at_grid_edge=len(grid) > 1 and chosen in (min(grid), max(grid)))
                out += got
        return out

    for method, rung in TRAINED_RUNGS.items():
        if method in methods:
            results += trained_rung(method, rung)
            if protocol.sweep_shots not in protocol.shots and not protocol.keep_checkpoints:
                chosen = results[-1].lr
                tuning.drop_checkpoints(run_dir / tuning.run_name(method, protocol.sweep_shots, chosen, first))
    summary = {"model": loaded[0].name if loaded else model, "test_ids_hash": ids_hash(test), "n_test": len(test),
               "protocol": protocol.key(), "results": [asdict(r) for r in results]}
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "ladder.json").write_text(json.dumps(summary, indent=1))
    return results


def _dev_curve(run_dir: Path) -> list[list[float]]:
    """[step, dev accuracy] of every dev evaluation of a run, from its metrics log (kept across resumes)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[r["step"], r["val/dev_accuracy"]] for r in rows if "val/dev_accuracy" in r]


def reuters_token_streams(tokenizer, data_dir=None, n_store_docs: int | None = None, n_eval_tokens: int = 20_000,
                          seed: int = 0, n_store_tokens: int | None = None, n_valid_tokens: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(datastore, validation, test) token streams. Reuters training documents, EOS-separated in a fixed
    shuffled order, give the datastore (the first ``n_store_tokens`` of that stream, if given) and, from the
    first document after it, ``n_valid_tokens`` of held-out training text that chooses the kNN-LM's
    settings; the first ``n_eval_tokens`` of test documents (never in the datastore) are the test."""
    import random

    from common.corpora import read_reuters

    docs = read_reuters(data_dir=data_dir)
    train = sorted((d for d in docs if d.split == "train"), key=lambda d: d.fileid)
    test = sorted((d for d in docs if d.split == "test"), key=lambda d: d.fileid)
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(test)
    eos = tokenizer.eos_token_id

    def stream(ds, limit_tokens=None) -> tuple[torch.Tensor, int]:
        """The stream and how many documents it used."""
        ids: list[int] = []
        for used, d in enumerate(ds, start=1):
            ids += list(tokenizer(" ".join(d.text.split()), add_special_tokens=False).input_ids) + [eos]
            if limit_tokens and len(ids) >= limit_tokens:
                return torch.tensor(ids[:limit_tokens]), used
        return torch.tensor(ids, dtype=torch.long), len(ds)

    train = train[:n_store_docs] if n_store_docs else train
    store, used = stream(train, n_store_tokens)
    valid = stream(train[used:], n_valid_tokens)[0] if n_valid_tokens else torch.zeros(0, dtype=torch.long)
    if n_valid_tokens and len(valid) < n_valid_tokens:
        raise ValueError(f"only {len(valid)} training tokens are left after the datastore for validation "
                         f"({n_valid_tokens} asked); use a smaller store_tokens or valid_tokens")
    return store, valid, stream(test, n_eval_tokens)[0]


def run_knn_lm(*, model: str, run_dir: Path, data_dir=None, store_tokens: int = 100_000, n_eval_tokens: int = 20_000,
               window: int = 512, stride: int = 256, sizes=(10_000, 30_000, 100_000), ks=(1, 8, 32, 128, 1024),
               lams=(0.0, 0.1, 0.25, 0.4, 0.6, 0.8), temperatures=(1.0, 10.0, 100.0), seed: int = 0,
               show_progress: bool = True, resume: str = "never", n_valid_tokens: int | None = None) -> dict:
    """Build the datastore, encode the validation and test streams once, choose the settings on validation,
    score the test at them; returns the summary dict (stored in run_dir/knn_lm.json, and read back from there
    by a ``resume`` run with the same settings). ``n_valid_tokens`` defaults to ``n_eval_tokens``."""
    n_valid_tokens = n_eval_tokens if n_valid_tokens is None else n_valid_tokens
    params = dict(model=model, store_tokens=store_tokens, n_eval_tokens=n_eval_tokens, n_valid_tokens=n_valid_tokens,
                  window=window, stride=stride, sizes=sizes, ks=ks, lams=lams, temperatures=temperatures, seed=seed,
                  data_dir=data_dir and str(data_dir))

    def run():
        return cached_result(run_dir / "knn_lm.json", params,
                             lambda: _knn_lm_summary(**{**params, "data_dir": data_dir}, run_dir=run_dir,
                                                     resume=resume, show_progress=show_progress),
                             enabled=resume != "never")

    summary = broadcast_object(run() if is_main_process() else None)  # no training: rank 0 alone computes
    log.info("kNN-LM: test ppl LM %.3f -> %.3f at the settings chosen on validation (%s)", summary["lm_ppl"],
             summary["best"]["ppl"], summary["best"])
    return summary


def _knn_lm_summary(*, model, data_dir, store_tokens, n_eval_tokens, n_valid_tokens, window, stride, sizes, ks, lams,
                    temperatures, seed, run_dir, resume, show_progress) -> dict:
    from llm_specialization import knn_lm

    seed_everything(seed)
    lm = load_lm(model)
    store_ids, valid_ids, eval_ids = reuters_token_streams(lm.tokenizer, data_dir, None, n_eval_tokens, seed,
                                                           n_store_tokens=store_tokens + 1,
                                                           n_valid_tokens=n_valid_tokens)

    def encode(ids, part: str):  # saved in parts as it goes, so a run cut short continues mid-stream
        return knn_lm.encode_stream(lm.model, ids, window, stride, show_progress,
                                    parts_dir=run_dir / "encoded" / part if resume != "never" else None)

    t0 = time.time()
    store = encode(store_ids, "store")
    build_s = time.time() - t0  # of this call: a resumed build counts only the windows it encoded
    valid, test = encode(valid_ids, "valid"), encode(eval_ids, "eval")
    t0 = time.time()
    out = knn_lm.select_and_test(valid, test, store, list(sizes), list(ks), list(lams), list(temperatures))
    return {"model": lm.name, "datastore_tokens": len(store.values), "valid_tokens": len(valid.values),
            "eval_tokens": len(test.values), **out, "build_seconds": build_s, "sweep_seconds": time.time() - t0,
            "peak_rss_gib": peak_rss_bytes() / 2**30}


def run_kg_fusion(*, run_dir: Path, trainer_cfg: TrainerConfig, logger_cfg=None, resume: str = "never",
                  data_dir=None, kg_dim: int = 100, kg_epochs: int = 200, encoder_lr: float = 5e-5,
                  train_negatives: int = 1, max_train: int | None = None, encoder_path=None,
                  models=("K0-TransE", "K0-DistMult", "K1", "K2"), adapter_lr: float = 1e-4, seed: int = 0,
                  seeds: int = 1, lp_triples: int | None = 64, data_seed: int = 0) -> list:
    """UMLS triple classification and filtered link prediction: KG-only, text-only and fused models on the
    same balanced dev/test sets, each trained with ``seeds`` seeds (seed, seed + 1, ...).

    The dev/test corruptions and the link-prediction queries (``lp_triples`` test triples, None: all) are
    fixed by ``data_seed``, whatever the training seed, so every model and seed is scored on the same items
    (what McNemar and the paired tests need). A training seed changes the K0 embeddings (and with them the
    entity vectors K2/K3 read), the training corruptions, the initialisation of new layers and the data order.
    """
    import random

    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    from common.pretrained import minilm_path
    from llm_specialization import kg as K

    data = K.read_umls(data_dir)
    known = data.known()
    dev_x, dev_y = K.labelled(data.dev, K.corrupt(data.dev, len(data.entities), known, data_seed + 1))
    test_x, test_y = K.labelled(data.test, K.corrupt(data.test, len(data.entities), known, data_seed + 2))
    dev_rel, test_rel = np.array([r for _, r, _ in dev_x]), np.array([r for _, r, _ in test_x])
    queries = (data.test if lp_triples is None or lp_triples >= len(data.test)
               else random.Random(data_seed).sample(data.test, lp_triples))
    path = encoder_path or minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    pieces = K.text_pieces(data, tok)
    pos = data.train[:max_train] if max_train else data.train
    key = dict(kg_dim=kg_dim, kg_epochs=kg_epochs, train_negatives=train_negatives, max_train=max_train,
               encoder=str(path), data_seed=data_seed, data_dir=data_dir and str(data_dir),
               lp_triples=lp_triples, trainer=training_key(trainer_cfg), segments="kg-bert")
    def one_seed(s: int) -> list:
        seed_everything(s)
        results = []
        vectors = {}

        def with_lp(result: K.TripleResult, score) -> dict:
            ranks = K.link_prediction_ranks(score, queries, len(data.entities), known) if lp_triples != 0 else []
            if ranks:
                m = K.link_metrics(ranks)
                result.hits10, result.mr, result.mrr, result.lp_ranks = m["hits10"], m["mr"], m["mrr"], ranks
            return asdict(result)

        for kind in ("transe", "distmult"):
            name = f"K0-{'TransE' if kind == 'transe' else 'DistMult'}"
            if name not in models and not (kind == "distmult" and {"K2", "K3"} & set(models)):
                continue
            emb = K.train_kg_embedding(data, kind, kg_dim, kg_epochs, seed=s)
            vectors[kind] = emb.ent.weight.detach()
            if name in models:
                def k0(emb=emb, name=name):
                    with torch.no_grad():
                        ds, ts = emb(torch.tensor(dev_x)).numpy(), emb(torch.tensor(test_x)).numpy()
                    res = K.evaluate_scores(name, ds, dev_y, dev_rel, ts, test_y, test_rel,
                                            sum(p.numel() for p in emb.parameters()), seed=s)

                    def score(triples):
                        with torch.no_grad():
                            return emb(torch.tensor(triples)).numpy()

                    return with_lp(res, score)

                results.append(K.TripleResult(**cached_result(run_dir / "results" / f"{name}-seed{s}.json",
                                                              {**key, "model": name, "seed": s}, k0,
                                                              enabled=resume != "never")))
        negs = [t for i in range(train_negatives)
                for t in K.corrupt(pos, len(data.entities), set(data.train), s * 31 + i)]
        train_x, train_y = K.labelled(pos, negs)

        def fit_and_score(name: str, fused: bool, lr: float) -> dict:
            torch.manual_seed(s)
            encoder = AutoModel.from_pretrained(path, local_files_only=True)
            if name == "K3":  # frozen encoder, knowledge adapter + head trained from scratch
                model = K.KAdapterClassifier(encoder, vectors["distmult"])
            else:
                model = K.TripleClassifier(encoder, vectors["distmult"] if fused else None)
            train_ds = K.TripleTextDataset(data, train_x, train_y, tok, pieces=pieces)
            trainer = Trainer(replace(_as_trainer_config(trainer_cfg), seed=s), run_dir / f"{name}-seed{s}",
                              logger_cfg=logger_cfg, resume=resume)
            trainer.fit(model, train_ds, K.triple_loss, collate_fn=train_ds.collate,
                        optimizer_fn=lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                                                 lr=lr))
            ds = K.predict_scores(model, K.TripleTextDataset(data, dev_x, dev_y, tok, pieces=pieces))
            ts = K.predict_scores(model, K.TripleTextDataset(data, test_x, test_y, tok, pieces=pieces))
            res = K.evaluate_scores(name, ds, dev_y, dev_rel, ts, test_y, test_rel,
                                    sum(p.numel() for p in model.parameters() if p.requires_grad), seed=s)
            return with_lp(res, lambda triples: K.predict_scores(
                model, K.TripleTextDataset(data, triples, [0] * len(triples), tok, pieces=pieces)))

        for name, fused in (("K1", False), ("K2", True), ("K3", True)):
            if name in models:  # each finished model's result is stored, so a cut-short run resumes at the next
                lr = adapter_lr if name == "K3" else encoder_lr
                results.append(K.TripleResult(**cached_result(
                    run_dir / "results" / f"{name}-seed{s}.json", {**key, "model": name, "lr": lr, "seed": s},
                    lambda name=name, fused=fused, lr=lr: fit_and_score(name, fused, lr), enabled=resume != "never")))
        return results

    results = [r for s in range(seed, seed + seeds) for r in one_seed(s)]
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "kg_fusion.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def _as_trainer_config(cfg) -> TrainerConfig:
    """A TrainerConfig from itself or Hydra's ``trainer`` node."""
    return cfg if isinstance(cfg, TrainerConfig) else TrainerConfig(**{k: cfg[k] for k in cfg})


def _fetch_movielens(cache_dir):
    """MovieLens-100k in ``cache_dir``: under torchrun rank 0 fetches it (once) while the others wait."""
    from llm_specialization import personal as P

    if is_main_process():
        P.fetch_movielens(cache_dir)
    barrier()
    return P.fetch_movielens(cache_dir)


def run_personalization(*, run_dir: Path, trainer_cfg: TrainerConfig, logger_cfg=None, resume: str = "never",
                        cache_dir: str | Path = ".cache/ml-100k", model: str = "smollm2", llm_users: int = 100,
                        max_len: int = 50, lr: float = 1e-3, seed: int = 0, movielens=None,
                        sasrec_training: str = "all_positions", show_progress: bool = True,
                        ranker_tests: tuple[str, ...] = ("shuffle", "listwise", "position")) -> list[dict]:
    """Pop, SASRec (full ranking and the sampled protocol) and the zero-shot LLM ranker (sampled only):
    pointwise and listwise prompts, each under summed / length-normalised / PMI scoring, and the
    history-shuffle and candidate-position tests (``ranker_tests``, :func:`personal.rank_user`). Every row
    keeps its per-user ranks and user ids, for intervals and paired tests over users.

    The rows are stored in run_dir/personalization.json and read back by a ``resume`` run with the same
    settings on MovieLens (a given ``movielens`` object is always recomputed). ``sasrec_training``:
    ``all_positions`` (Kang & McAuley: the loss at every position of sequence windows) or ``prefixes``
    (RecBole: one example per prefix, the loss at its last position; the same targets at ~max_len x the cost)."""
    if sasrec_training not in ("all_positions", "prefixes"):
        raise ValueError(f"sasrec_training must be 'all_positions' or 'prefixes', got {sasrec_training!r}")
    key = dict(cache_dir=str(cache_dir), model=model, llm_users=llm_users, max_len=max_len, lr=lr, seed=seed,
               sasrec_training=sasrec_training, trainer=training_key(trainer_cfg), ranker_tests=list(ranker_tests))
    return cached_result(run_dir / "personalization.json", key,
                         lambda: _personalization_rows(run_dir=run_dir, trainer_cfg=trainer_cfg, logger_cfg=logger_cfg,
                                                       resume=resume, cache_dir=cache_dir, model=model,
                                                       llm_users=llm_users, max_len=max_len, lr=lr, seed=seed,
                                                       movielens=movielens, sasrec_training=sasrec_training,
                                                       show_progress=show_progress, ranker_tests=ranker_tests),
                         enabled=resume != "never" and movielens is None)


def _personalization_rows(*, run_dir, trainer_cfg, logger_cfg, resume, cache_dir, model, llm_users, max_len, lr,
                          seed, movielens, sasrec_training, show_progress, ranker_tests) -> list[dict]:
    import numpy as np

    from common.checkpoint import resumable_map
    from llm_specialization import personal as P

    seed_everything(seed)
    ml = movielens or P.read_movielens(_fetch_movielens(cache_dir))
    split = P.leave_one_out(ml)
    cands = P.sampled_candidates(split, ml.n_items, seed=seed, titles=ml.titles)
    dup = P.same_title_items(ml.titles)
    rows = []

    def add(name, full_ranks, sampled_ranks, user_ids, note=""):
        row = {"model": name, "note": note, "users": len(sampled_ranks)}
        if full_ranks is not None:
            row["full_HR@10"], row["full_NDCG@10"] = P.hr_ndcg(full_ranks, 10)
        row["sampled_HR@1"] = P.hr_ndcg(sampled_ranks, 1)[0]
        row["sampled_NDCG@10"] = P.hr_ndcg(sampled_ranks, 10)[1]
        row.update(user_ids=[int(u) for u in user_ids], sampled_ranks=[int(r) for r in sampled_ranks],
                   full_ranks=None if full_ranks is None else [int(r) for r in full_ranks])
        rows.append(row)

    pop = P.popularity_scores(split, ml.n_items)
    users = sorted(split.test)
    add("Pop", [P.rank_of(pop, split.test[u], set(split.train[u]) | {split.valid[u]} | dup.get(split.test[u], set()))
                for u in users],
        [P.sampled_rank(pop[cands[u]]) for u in users], users)

    torch.manual_seed(seed)
    sas = P.SASRec(ml.n_items, max_len=max_len)
    data = (P.SequenceWindowDataset if sasrec_training == "all_positions" else P.NextItemDataset)(split.train, max_len)
    trainer = Trainer(trainer_cfg, run_dir / "sasrec", logger_cfg=logger_cfg, resume=resume)
    trainer.fit(sas, data, P.sasrec_loss, optimizer_fn=lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                eval_fn=lambda m: {"valid_NDCG@10": P.hr_ndcg(P.sasrec_ranks(m, split, "valid", sharded=True), 10)[1]},
                eval_sharded=True)
    barrier()  # under torchrun: rank 0 has written best.pt before any rank loads it
    trainer.load_best(sas)
    with torch.no_grad():
        sas.eval()
        hist = {u: split.train[u] + [split.valid[u]] for u in users}
        scores = {u: sas(torch.tensor([P.pad_left(hist[u], max_len)]))[0].numpy() for u in users}
    add("SASRec", P.sasrec_ranks(sas, split, "test", same_title=dup), [P.sampled_rank(scores[u][cands[u]]) for u in users],
        users)

    if llm_users:
        lm = load_lm(model) if isinstance(model, str) else model
        chosen = [int(u) for u in sorted(np.random.default_rng(seed).choice(users, size=min(llm_users, len(users)),
                                                                            replace=False))]
        neutral = P.neutral_scores(lm, ml.titles, [c for u in chosen for c in cands[u]])
        # one row of scores per user, kept as it is made: a pass over 300 users takes an hour on a CPU
        cache = run_dir / "llm_ranker.docs.jsonl" if resume != "never" and movielens is None else None
        per_user = resumable_map(
            lambda u: P.rank_user(lm, ml.titles, hist[u], cands[u], seed=seed * 100_003 + u, tests=ranker_tests),
            chosen, cache, {"model": lm.name, "seed": seed, "tests": list(ranker_tests), "users": chosen},
            desc="LLM ranker", show_progress=show_progress, unit="user")
        prompts = [k for k in ("pointwise", "pointwise_shuffled", "listwise", "listwise_first", "listwise_last")
                   if k in per_user[0]]
        names = {"pointwise": "pointwise", "pointwise_shuffled": "pointwise, history shuffled",
                 "listwise": "listwise", "listwise_first": "listwise, positive first",
                 "listwise_last": "listwise, positive last"}
        for prompt in prompts:
            for scoring in P.SCORINGS:
                ranks = [P.sampled_rank(P.ranker_scores(row, prompt, scoring, [neutral[c] for c in cands[u]]))
                         for u, row in zip(chosen, per_user)]
                add(f"LLM ranker, {names[prompt]} ({scoring})", None, ranks, chosen,
                    note=f"{lm.name}; zero-shot; {len(chosen)} users, sampled candidates only")
    return rows


def run_rec_tuning(*, run_dir: Path, trainer_cfg: TrainerConfig, logger_cfg=None, resume: str = "never",
                   cache_dir: str | Path = ".cache/ml-100k", model="smollm2", build: str = "parity",
                   template: str = "alpaca", history: int = 10, max_records: int | None = 10_000, n_train: int = 64,
                   n_valid: int = 200, n_test: int = 1000, lr: float = 1e-4, lora_r: int = 8,
                   lora_alpha: int = 16, lora_dropout: float = 0.05, train_on_inputs: bool = False,
                   eval_batch_size: int = 8, sasrec_epochs: int = 50, seed: int = 0, movielens=None,
                   shots: tuple[int, ...] | None = None, seeds: int = 1, steps: int | None = None,
                   eval_every_steps: int | None = None) -> list[dict]:
    """TALLRec-style rec-tuning (protocol B): baselines, zero-shot LLM and LoRA(q/v) rec-tuned LLM, AUC each.

    The validation and test examples are sampled once (``seed``); every n in ``shots`` (default: n_train) is
    trained with ``seeds`` seeds (seed, seed + 1, ...: the n training examples, the adapter's initialisation
    and the data order change). ``steps`` makes the budget step-matched (that many optimizer steps whatever n,
    validation every ``eval_every_steps``); otherwise trainer.max_epochs applies. The LoRA model trains through
    the shared trainer with validation AUC as its monitor and is tested from its best checkpoint. Every row
    keeps its test scores (the first rows the test labels and users), for intervals over users.

    Each unit (the seed-free baselines and zero-shot LLM; each (n, seed)) is stored under run_dir/rec_tuning/
    and read back by a ``resume`` run with the same settings on MovieLens (a given ``movielens`` object or LM
    object is always recomputed); run_dir/rec_tuning.json holds all rows.
    """
    shots = tuple(shots) if shots else (n_train,)
    settings = dict(build=build, template=template, history=history, max_records=max_records, n_valid=n_valid,
                    n_test=n_test, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                    train_on_inputs=train_on_inputs, eval_batch_size=eval_batch_size, sasrec_epochs=sasrec_epochs,
                    seed=seed, steps=steps, eval_every_steps=eval_every_steps)
    key = dict(settings, cache_dir=str(cache_dir), model=str(model) if isinstance(model, str) else model.name,
               trainer=training_key(trainer_cfg))
    reusable = resume != "never" and movielens is None and isinstance(model, str)
    from llm_specialization import personal as P
    from llm_specialization import rectune as R

    seed_everything(seed)
    ml = movielens or P.read_movielens(_fetch_movielens(cache_dir))
    examples = R.build_examples(ml, history, max_records)
    train_all, valid_all, test_all = R.split_examples(examples, build, seed)
    valid, test = R.sample(valid_all, n_valid, seed + 1), R.sample(test_all, n_test, seed + 2)
    for part, name in ((valid, "validation"), (test, "test")):
        if len({e.label for e in part}) < 2:
            raise ValueError(f"the {name} sample has only one like label; AUC is undefined (use more examples)")
    labels = [e.label for e in test]
    base = {"build": build, "template": template, "n_valid": len(valid), "n_test": len(test),
            "test_like_rate": float(sum(labels) / max(len(labels), 1)), "test_users": len({e.user for e in test}),
            "train_users": len({e.user for e in train_all})}
    loaded = []

    def lm_once():
        if not loaded:
            loaded.append(load_lm(model) if isinstance(model, str) else model)
        return loaded[0]

    def seed_free() -> list[dict]:
        hlf = R.history_like_fraction(test)
        rows = [dict(base, model="history like fraction", n_train=0, seed=seed, auc=R.roc_auc(labels, hlf),
                     trainable_params=0, scores=hlf.tolist(), labels=labels, users=[e.user for e in test])]
        lm = lm_once()
        t0 = time.time()
        auc0, scores0 = R.evaluate_auc(lm.model, lm.tokenizer, test, ml.titles, template, eval_batch_size)
        rows.append(dict(base, model=f"zero-shot LLM ({lm.name})", n_train=0, seed=seed, auc=auc0, trainable_params=0,
                         infer_ms_per_example=1000 * (time.time() - t0) / len(test), scores=scores0.tolist()))
        return rows

    def one_run(n: int, s: int) -> list[dict]:
        train = R.sample(train_all, n, s)
        row0 = dict(base, n_train=len(train), seed=s)
        item_rate = R.item_like_rate(train, test)
        rows = [dict(row0, model="target item like rate (train examples)", auc=R.roc_auc(labels, item_rate),
                     trainable_params=0, scores=item_rate.tolist())]
        # TALLRec's SASRec baseline on the same n examples (its own small trainer run)
        torch.manual_seed(s)
        sas = R.LabelledSASRec(ml.n_items, max_len=history)
        sas_cfg = TrainerConfig(max_epochs=sasrec_epochs, batch_size=min(32, len(train)), progress_bar=False,
                                seed=s, monitor="valid_auc", log_every_steps=50)
        sas_trainer = Trainer(sas_cfg, run_dir / f"sasrec-n{n}-seed{s}", logger_cfg=logger_cfg, resume=resume)
        sas_trainer.fit(sas, R.LabelledSeqDataset(train), R.labelled_sasrec_loss,
                        optimizer_fn=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
                        eval_fn=lambda m: {"valid_auc": R.roc_auc([e.label for e in valid],
                                                                  R.labelled_sasrec_scores(m, valid))})
        barrier()  # under torchrun: rank 0 has written best.pt before any rank loads it
        sas_trainer.load_best(sas)
        sas_scores = R.labelled_sasrec_scores(sas, test)
        rows.append(dict(row0, model="SASRec with like labels (same n examples)", auc=R.roc_auc(labels, sas_scores),
                         trainable_params=sum(p.numel() for p in sas.parameters()), scores=sas_scores.tolist()))
        base_lm = lm_once()
        lm = LM(copy.deepcopy(base_lm.model), base_lm.tokenizer, base_lm.name)  # the same weights for every run
        torch.manual_seed(s)  # the adapter's initialisation does not depend on what ran before
        net = ladder.adapt(lm, "lora", lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                           target_modules=("q_proj", "v_proj"))
        data = R.RecTuneDataset(lm, train, ml.titles, template, train_on_inputs)
        cfg = replace(_as_trainer_config(trainer_cfg), seed=s)
        if steps:  # step-matched: the same number of updates whatever n
            cfg = replace(cfg, max_steps=steps, max_epochs=None, eval_every_steps=eval_every_steps)
        trainer = Trainer(cfg, run_dir / f"lora-n{n}-seed{s}", logger_cfg=logger_cfg, resume=resume)
        fit = trainer.fit(net, data, R.rectune_loss, collate_fn=data.collate,
                          optimizer_fn=lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                                                   lr=lr),
                          eval_fn=lambda m: {"valid_auc": R.evaluate_auc(m, lm.tokenizer, valid, ml.titles,
                                                                         template, eval_batch_size, sharded=True)[0]},
                          eval_sharded=True)
        train_s = fit.wall_seconds_total  # every session of a training cut short, not the last leg
        barrier()  # under torchrun: rank 0 has written best.pt before any rank looks for it
        if trainer.ckpt.best_path.exists():
            trainer.load_best(net)
        net.eval()
        t0 = time.time()
        auc, scores = R.evaluate_auc(net, lm.tokenizer, test, ml.titles, template, eval_batch_size)
        rows.append(dict(row0, model=f"LoRA rec-tuned LLM (r={lora_r}, q/v, lr={lr:g})", auc=auc,
                         trainable_params=ladder.trainable_parameters(net), train_seconds=train_s,
                         infer_ms_per_example=1000 * (time.time() - t0) / len(test),
                         best_valid_auc=(fit.best_metrics or {}).get("valid_auc"), best_step=fit.best_step,
                         steps=fit.step, loss_on="prompt and response" if train_on_inputs else "response",
                         scores=scores.tolist()))
        return rows

    rows = cached_result(run_dir / "rec_tuning" / "seed_free.json", {**key, "unit": "seed-free"}, seed_free,
                         enabled=reusable)
    for n in shots:
        if n:
            for s in range(seed, seed + seeds):
                rows += cached_result(run_dir / "rec_tuning" / f"n{n}-seed{s}.json", {**key, "n": n, "unit_seed": s},
                                      lambda n=n, s=s: one_run(n, s), enabled=reusable)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "rec_tuning.json").write_text(json.dumps(rows))
    return rows
