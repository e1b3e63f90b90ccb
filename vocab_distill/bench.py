"""Size and CPU-speed benchmark of the architectures, side by side, independent of training:
``python -m vocab_distill.bench [--widths 48 96 192] [--repeats 50] [--threads 2] [--out FILE.json]``.

Size and speed do not depend on the weights' values, so this needs no trained student: it builds the
MiniLM teacher (real weights), the 6-layer students over V_s (4,928) and the same students over V_t (the
logit-KD baseline's architecture), and times them interleaved with ``common.bench.compare``.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import BertModel

from common.bench import format_bytes, peak_rss_bytes
from common.runinfo import hardware_summary

from .evaluate import compression_ratios, size_report, speed_table
from .model import bert_param_count, load_encoder, student_config
from .vocab import teacher_model_path


def build_models(widths, student_vocab: int = 4928, teacher_vocab: int = 30522, layers: int = 6,
                 teacher: bool = True) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    if teacher:
        models["MiniLM teacher (30,522 x 384)"] = load_encoder(teacher_model_path())
    for w in widths:
        models[f"student d={w}, V_s"] = BertModel(student_config(student_vocab, w, layers))
        models[f"student d={w}, V_t (KD baseline)"] = BertModel(student_config(teacher_vocab, w, layers))
    return models


def run(widths=(48, 96, 192), repeats: int = 50, threads: int | None = None, seq_len: int = 32) -> dict:
    if threads:
        torch.set_num_threads(threads)
    models = build_models(widths)
    rows = {}
    for name, m in models.items():
        size = size_report(m)
        cfg = m.config
        analytic = bert_param_count(cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size)
        assert analytic == size.params, (name, analytic, size.params)
        rows[name] = size.as_dict() | compression_ratios(size.params)
    speed = speed_table(models, seq_len=seq_len, repeats=repeats)
    for name in rows:
        rows[name].update(speed[name])
    return {"hardware": hardware_summary(), "threads": torch.get_num_threads(), "seq_len": seq_len,
            "repeats": repeats, "peak_rss_bytes": peak_rss_bytes(), "models": rows}


def to_markdown(result: dict) -> str:
    lines = [f"{result['hardware']}; {result['threads']} threads; {result['seq_len']} tokens; median of "
             f"{result['repeats']} interleaved runs; peak RSS {format_bytes(result['peak_rss_bytes'])}", "",
             "| model | params | embeddings | fp32 | int8 (dynamic) | x MiniLM | x BERT-base | latency b=1 (ms) "
             "| throughput b=32 (sent/s) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {100 * r['embedding_share']:.0f}% | "
                     f"{r['fp32_bytes'] / 1e6:.2f} MB | {r['int8_bytes'] / 1e6:.2f} MB | {r['x_vs_teacher']:.1f} | "
                     f"{r['x_vs_bert_base']:.1f} | {r['latency_ms']:.2f} | {r['throughput_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vocab_distill.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[48, 96, 192])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = run(args.widths, args.repeats, args.threads)
    print(to_markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
