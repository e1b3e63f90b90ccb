"""Batched inference benchmark: our predictor against a plain transformers pipeline-style loop.

    python -m joint_bert_nlu.bench --model runs/joint_bert_nlu_atis/model --n 512
    python -m joint_bert_nlu.bench --n 256          # untrained MiniLM joint model: same compute

    python -m joint_bert_nlu.bench --onnx --model runs/joint_bert_nlu_atis/model --data atis --split test

``--onnx``: the exported graph (fp32, and int8 through onnxruntime's dynamic quantisation) against the
torch model it came from, side by side: accuracy on a whole split (intent acc, slot F1, sentence acc,
and the share of sentences whose intent and tags equal torch's) and throughput of the same predictor on
the split's sentences (interleaved, median of the repeats), plus the file sizes.

"Ours" is :class:`JointNLUPredictor`: sentences sorted by length, batched with dynamic padding, one
forward per batch under ``torch.inference_mode``. The reference is what a ``transformers.pipeline``
does by default: one sentence at a time (tokenise, forward, post-process). Both run the same weights
in the same process, interleaved by ``common.bench.compare`` so background load hits them alike; both
produce the same predictions (``prediction_agreement``). Throughput is sentences per second at the median repeat;
latency percentiles are per call (one sentence for the loop, one batch for ours).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from common.bench import compare, format_bytes, peak_rss_bytes
from common.runinfo import hardware_summary
from common.trainer import length_grouped_batches

from .data import EncodedDataset, load_dataset, split_words
from .inference import JointNLUPredictor, load_joint_model


class PipelineStyleLoop:
    """One sentence per forward pass, as ``transformers.pipeline(...)(texts)`` runs by default."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.inference_mode()
    def __call__(self, texts):
        out = []
        vocab = self.model.vocab
        for text in texts:
            words, _ = split_words(text)
            enc = self.tokenizer(words, is_split_into_words=True, truncation=True,
                                 max_length=self.model.config.max_seq_length, return_tensors="pt")
            first, seen = [], set()
            for pos, w in enumerate(enc.word_ids()):
                if w is not None and w not in seen:
                    seen.add(w)
                    first.append(pos)
            word_index = torch.tensor([first])
            intent, _, slots = self.model.decode(enc["input_ids"], enc["attention_mask"], word_index,
                                                 torch.ones_like(word_index, dtype=torch.bool))
            tags = [vocab.slots[s] for s in slots[0]] + ["O"] * (len(words) - len(slots[0]))
            out.append((intent[0], tags))
        return out


def _percentiles(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
    return {"p50_ms": 1e3 * q[49], "p90_ms": 1e3 * q[89], "p99_ms": 1e3 * q[98]}


def run_benchmark(model, tokenizer, texts: list[str], batch_size: int = 64, repeats: int = 3) -> dict:
    ours = JointNLUPredictor(model, tokenizer, batch_size=batch_size)
    loop = PipelineStyleLoop(model, tokenizer)
    got = [(r["intent"], r["tags"]) for r in ours(texts)]
    agreement = sum(a == b for a, b in zip(got, loop(texts))) / len(texts)  # 1.0 up to float near-ties
    timings = compare({"ours": lambda: ours(texts), "reference": lambda: loop(texts)}, warmup=1,
                      repeats=repeats, items_per_call=len(texts))
    # Per-call latency: each batch of ours, each sentence of the loop (one extra pass, after warm-up).
    batch_times = []
    order = sorted(texts, key=len)
    for s in range(0, len(order), batch_size):
        t0 = time.perf_counter()
        ours(order[s:s + batch_size])
        batch_times.append(time.perf_counter() - t0)
    sentence_times = []
    for text in texts:
        t0 = time.perf_counter()
        loop([text])
        sentence_times.append(time.perf_counter() - t0)
    result = {"n_sentences": len(texts), "batch_size": batch_size, "repeats": repeats,
              "threads": torch.get_num_threads(), "hardware": hardware_summary(),
              "peak_rss_bytes": peak_rss_bytes(), "prediction_agreement": agreement,
              "ours": {"sentences_per_s": timings["ours"].throughput, **timings["ours"].as_dict(),
                       "latency_per_batch": _percentiles(batch_times)},
              "reference": {"sentences_per_s": timings["reference"].throughput, **timings["reference"].as_dict(),
                            "latency_per_sentence": _percentiles(sentence_times)}}
    result["speedup"] = result["ours"]["sentences_per_s"] / result["reference"]["sentences_per_s"]
    return result


def run_training_benchmark(model, tokenizer, texts_and_labels, batch_size: int = 32, n_batches: int = 4,
                           repeats: int = 2, pad_to: int = 50) -> dict:
    """Training-step throughput with dynamic padding (ours) vs fixed padding to ``pad_to`` (reference).

    Forward + backward of the same ``n_batches`` batches, interleaved; no optimizer step, so the weights
    and therefore the work stay identical across repeats.
    """
    from .data import collate

    ds = EncodedDataset(texts_and_labels[: batch_size * n_batches], tokenizer, model.vocab,
                        model.config.max_seq_length)
    batches = {name: [collate(ds.features[i:i + batch_size], pad_to=p) for i in range(0, len(ds), batch_size)]
               for name, p in (("ours", None), ("reference", pad_to))}
    model.train()

    def step(name):
        for batch in batches[name]:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()

    timings = compare({"ours": lambda: step("ours"), "reference": lambda: step("reference")}, warmup=1,
                      repeats=repeats, items_per_call=len(ds))
    model.eval()
    tokens = {name: int(sum(b["attention_mask"].sum() for b in bs)) for name, bs in batches.items()}
    padded = {name: int(sum(b["input_ids"].numel() for b in bs)) for name, bs in batches.items()}
    return {"n_sentences": len(ds), "batch_size": batch_size, "threads": torch.get_num_threads(),
            "ours": {"sentences_per_s": timings["ours"].throughput, "padded_positions": padded["ours"],
                     **timings["ours"].as_dict()},
            "reference": {"sentences_per_s": timings["reference"].throughput,
                          "padded_positions": padded["reference"], **timings["reference"].as_dict()},
            "real_tokens": tokens["ours"], "speedup": timings["reference"].median / timings["ours"].median,
            "peak_rss_bytes": peak_rss_bytes()}


def epoch_padding(lengths: Sequence[int], batch_size: int = 32, pad_to: int = 50, seed: int = 0) -> dict:
    """Positions one training epoch pads to, for three batchings of the same shuffled order:
    fixed padding to ``pad_to`` (reference), random batches padded to their longest (our default)
    and length-grouped batches (``data.group_by_length=true``). Counting only, no model: the
    step time of this encoder is close to proportional to the positions."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    random_batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    grouped = length_grouped_batches(order, lengths, batch_size, gen)
    cost = {
        "fixed": sum(len(b) * max(pad_to, max(lengths[i] for i in b)) for b in random_batches),
        "random": sum(len(b) * max(lengths[i] for i in b) for b in random_batches),
        "grouped": sum(len(b) * max(lengths[i] for i in b) for b in grouped),
    }
    return {"real_tokens": int(sum(lengths)), "batch_size": batch_size, **cost}


def run_onnx_benchmark(model_dir, dataset: str = "atis", split: str = "test", n: int | None = None,
                       batch_size: int = 64, repeats: int = 3, onnx_dir=None, data_dir=None) -> dict:
    """ONNX fp32 / int8 against torch fp32 on one split: accuracy, agreement, throughput, file sizes.

    Exports to ``onnx_dir`` (default ``<model_dir>/onnx``) unless ``model.onnx`` is already there."""
    from .evaluate import compute_metrics, predict_encoded
    from .export import INT8_NAME, ONNX_NAME, export_onnx, load_onnx_model

    model_dir = Path(model_dir)
    onnx_dir = Path(onnx_dir) if onnx_dir is not None else model_dir / "onnx"
    export = None
    if not (onnx_dir / ONNX_NAME).is_file():
        export = export_onnx(model_dir, onnx_dir)
    threads = torch.get_num_threads()
    torch_model, tokenizer = load_joint_model(model_dir)
    models = {"torch fp32": torch_model, "onnx fp32": load_onnx_model(onnx_dir, threads=threads)[0]}
    if (onnx_dir / INT8_NAME).is_file():
        models["onnx int8"] = load_onnx_model(onnx_dir, int8=True, threads=threads)[0]
    examples = load_dataset(dataset, data_dir=data_dir, splits=(split,)).splits[split][:n]
    encoded = EncodedDataset(examples, tokenizer, torch_model.vocab, torch_model.config.max_seq_length)
    gold_i, gold_t = [e.intent for e in examples], [list(e.tags) for e in examples]
    multi = torch_model.config.intent_mode == "multi_label"
    preds = {name: predict_encoded(m, encoded, batch_size, device="cpu") for name, m in models.items()}
    ref = list(zip(preds["torch fp32"].intents, preds["torch fp32"].tags))
    texts = [" ".join(e.words) for e in examples]
    predictors = {name: JointNLUPredictor(m, tokenizer, batch_size=batch_size) for name, m in models.items()}
    timings = compare({name: (lambda p=p: p(texts)) for name, p in predictors.items()}, warmup=1, repeats=repeats,
                      items_per_call=len(texts))
    files = {"torch fp32": model_dir / "model.safetensors", "onnx fp32": onnx_dir / ONNX_NAME,
             "onnx int8": onnx_dir / INT8_NAME}
    result = {"dataset": dataset, "split": split, "n_sentences": len(examples), "batch_size": batch_size,
              "repeats": repeats, "threads": threads, "hardware": hardware_summary(), "export": export,
              "backends": {}}
    for name in models:
        p = preds[name]
        result["backends"][name] = {
            **compute_metrics(gold_i, p.intents, gold_t, p.tags, multi_label=multi),
            "agreement_with_torch": sum(a == b for a, b in zip(zip(p.intents, p.tags), ref)) / max(1, len(ref)),
            "sentences_per_s": timings[name].throughput, **timings[name].as_dict(),
            "file_bytes": files[name].stat().st_size if files[name].is_file() else None}
    base = timings["torch fp32"].median
    for name in models:
        result["backends"][name]["speedup_vs_torch"] = base / timings[name].median
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def benchmark_sentences(n: int, data_dir=None) -> list[str]:
    test = load_dataset("atis", data_dir=data_dir, splits=("train", "test")).splits["test"]
    return [" ".join(ex.words) for ex in test[:n]]


def benchmark_saved_model(model_dir, n_sentences: int = 256, batch_size: int = 64, repeats: int = 3,
                          data_dir=None) -> dict:
    model, tokenizer = load_joint_model(model_dir)
    return run_benchmark(model, tokenizer, benchmark_sentences(n_sentences, data_dir), batch_size, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joint_bert_nlu.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="saved joint model folder (default: untrained MiniLM joint model)")
    ap.add_argument("--n", type=int, default=None,
                    help="sentences to run (default 256 ATIS test sentences; --onnx: the whole split)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train", action="store_true",
                    help="benchmark training steps instead: dynamic padding vs fixed padding to 50")
    ap.add_argument("--onnx", action="store_true",
                    help="benchmark the ONNX export (fp32 and int8) against torch on --data/--split (needs --model)")
    ap.add_argument("--data", default="atis", help="--onnx: data set (atis, snips or a folder)")
    ap.add_argument("--split", default="test", help="--onnx: split to score and time")
    ap.add_argument("--out", default=None,
                    help="JSON output (default reports/joint_bert_nlu/bench.json, bench_train.json or bench_onnx.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or f"reports/joint_bert_nlu/bench{'_onnx' if args.onnx else '_train' if args.train else ''}.json"
    if args.onnx:
        if not args.model:
            ap.error("--onnx needs --model (a folder written by joint_bert_nlu.train)")
        res = run_onnx_benchmark(args.model, args.data, args.split, args.n, args.batch_size, args.repeats)
        res["model"] = args.model
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"{res['dataset']} {res['split']}, {res['n_sentences']} sentences, batch {res['batch_size']}, "
              f"{res['threads']} threads, median of {res['repeats']}:")
        print(f"{'backend':<11} {'intent':>7} {'slot F1':>7} {'sent.':>7} {'agree':>7} {'sent/s':>8} {'x torch':>7} {'MB':>6}")
        for name, b in res["backends"].items():
            size = f"{b['file_bytes'] / 2**20:6.1f}" if b["file_bytes"] else "     -"
            print(f"{name:<11} {100 * b['intent_acc']:7.2f} {100 * b['slot_f1']:7.2f} {100 * b['sentence_acc']:7.2f} "
                  f"{100 * b['agreement_with_torch']:7.2f} {b['sentences_per_s']:8.1f} {b['speedup_vs_torch']:7.2f} {size}")
        print(f"wrote {args.out}")
        return 0
    if args.model:
        model, tokenizer = load_joint_model(args.model)
    else:
        from transformers import AutoTokenizer

        from .model import JointBertModel, minilm_path

        vocab = load_dataset("atis", splits=("train",)).vocab
        model, tokenizer = JointBertModel.from_encoder("minilm", vocab).eval(), AutoTokenizer.from_pretrained(minilm_path())
    if args.train:
        train = load_dataset("atis", splits=("train",)).splits["train"]
        res = run_training_benchmark(model, tokenizer, train, batch_size=32, n_batches=max(1, (args.n or 256) // 32),
                                     repeats=args.repeats)
        res["epoch_padding"] = pad = epoch_padding(
            EncodedDataset(train, tokenizer, model.vocab, model.config.max_seq_length).lengths())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"one ATIS epoch at batch 32, padded positions: fixed 50 {pad['fixed']}, random batches "
              f"{pad['random']}, length-grouped {pad['grouped']} ({pad['real_tokens']} real tokens)")
        print(f"training, dynamic padding: {res['ours']['sentences_per_s']:.1f} sentences/s "
              f"({res['ours']['padded_positions']} positions); fixed 50: {res['reference']['sentences_per_s']:.1f} "
              f"sentences/s ({res['reference']['padded_positions']} positions); speed-up {res['speedup']:.2f}x, "
              f"{res['real_tokens']} real tokens; wrote {args.out}")
        return 0
    res = run_benchmark(model, tokenizer, benchmark_sentences(args.n or 256), args.batch_size, args.repeats)
    res["model"] = args.model or "untrained MiniLM joint model"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    o, r = res["ours"], res["reference"]
    print(f"ours:      {o['sentences_per_s']:8.1f} sentences/s  batch latency p50 {o['latency_per_batch']['p50_ms']:.1f} ms"
          f"  p99 {o['latency_per_batch']['p99_ms']:.1f} ms")
    print(f"reference: {r['sentences_per_s']:8.1f} sentences/s  sentence latency p50 "
          f"{r['latency_per_sentence']['p50_ms']:.1f} ms  p99 {r['latency_per_sentence']['p99_ms']:.1f} ms")
    print(f"speed-up {res['speedup']:.2f}x, peak RSS {format_bytes(res['peak_rss_bytes'])}, {res['threads']} threads;"
          f" wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
