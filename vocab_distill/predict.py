"""Classify text with an exported fine-tuned classifier, or score it on a labelled file:

    python -m vocab_distill.predict runs/.../finetune/dual_proj_d96/sst2/seed0/export reviews.txt
    echo "a gripping , funny film" | python -m vocab_distill.predict EXPORT
    python -m vocab_distill.predict EXPORT --test-file my_test.tsv          # SST-2-style: label<TAB>sentence
    python -m vocab_distill.predict EXPORT --test-file my_snips_folder/     # SNIPS-style: seq.in + label

Without ``--test-file`` it reads lines (files, or stdin when none or ``-``) and writes one JSON record per
input line, in order: ``{"label": ..., "score": ...}`` (an empty line gives ``{"label": null, "score": null}``).
With ``--test-file`` it writes one JSON record: accuracy, its 95% bootstrap interval over the items, n.
The folder is what the pipeline exports (``finetune/<model>/<task>/seed<s>/export``): a plain transformers
folder, so ``BertForSequenceClassification.from_pretrained(folder)`` loads it as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

BATCH = 64


def load(folder: str | Path):
    """``(model, tokenizer, labels)`` of an exported classifier folder (safetensors, no code run)."""
    from transformers import BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder}: not an exported classifier (needs config.json and model.safetensors)")
    model = BertForSequenceClassification.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    tok = BertTokenizerFast.from_pretrained(str(folder))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model.eval(), tok, labels


@torch.inference_mode()
def predict(model, tok, labels: list[str], texts: Iterable[str], *, max_len: int = 64,
            batch_size: int = BATCH) -> Iterator[dict]:
    """One ``{"label", "score"}`` per text, in order (streamed batch by batch)."""
    batch: list[str] = []

    def flush():
        real = [t for t in batch if t.strip()]
        probs = iter(())
        if real:
            enc = tok(real, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            probs = iter(model(**enc).logits.softmax(-1))
        for t in batch:
            if not t.strip():
                yield {"label": None, "score": None}
                continue
            p = next(probs)
            i = int(p.argmax())
            yield {"label": labels[i], "score": round(float(p[i]), 6)}

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def score_file(model, tok, labels: list[str], path: str | Path, *, max_len: int = 64) -> dict:
    """Accuracy on a labelled SST-2-style TSV or SNIPS-style folder, with its 95% bootstrap CI over items."""
    from common import stats

    from .corpus import read_intent_folder, read_sst2_file

    path = Path(path)
    if path.is_dir():
        rows = read_intent_folder(path)
        unknown = sorted({lab for _, lab in rows} - set(labels))
        if unknown:
            from common.data import DataFormatError

            raise DataFormatError(path / "label", f"labels {unknown} are not among the classifier's {labels}")
        gold = [lab for _, lab in rows]
    else:
        rows = read_sst2_file(path)
        if len(labels) != 2:
            from common.data import DataFormatError

            raise DataFormatError(path, f"an SST-2-style file has labels 0/1; this classifier has {len(labels)} labels")
        gold = [labels[y] for _, y in rows]
    preds = [r["label"] for r in predict(model, tok, labels, [t for t, _ in rows], max_len=max_len)]
    correct = [float(p == g) for p, g in zip(preds, gold)]
    s = stats.summarize(correct, "bootstrap")
    return {"file": str(path), "n": len(correct), "accuracy": s.mean, "ci95_low": s.ci_low, "ci95_high": s.ci_high}


def _lines(inputs: list[str]) -> Iterator[str]:
    for name in inputs or ["-"]:
        if name == "-":
            yield from (line.rstrip("\n") for line in sys.stdin)
        else:
            with open(name, encoding="utf-8") as f:
                yield from (line.rstrip("\n") for line in f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vocab_distill.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="an exported classifier folder (config.json, model.safetensors, vocab.txt)")
    ap.add_argument("inputs", nargs="*", help="text files, one input a line ('-' or none: stdin)")
    ap.add_argument("--test-file", help="score a labelled SST-2-style TSV or SNIPS-style folder instead")
    ap.add_argument("--max-len", type=int, default=64, help="tokens per input (the fine-tuning length: 64)")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    a = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from common.data import DataFormatError

    hf_logging.disable_progress_bar()  # stdout/stderr carry the records and one-line errors only
    hf_logging.set_verbosity_error()

    try:
        model, tok, labels = load(a.model_dir)
        if a.test_file:
            print(json.dumps(score_file(model, tok, labels, a.test_file, max_len=a.max_len)))
            return 0
        for record in predict(model, tok, labels, _lines(a.inputs), max_len=a.max_len, batch_size=a.batch_size):
            print(json.dumps(record), flush=False)
    except (FileNotFoundError, DataFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
