"""Intent and slot spans for raw sentences: one output record per input line.

    python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_snips/model "What's the weather this weekend?"
    cat sentences.txt | python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_atis/model --json
    python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_atis/model/onnx --backend onnx-int8 "..."

Each argument, or each stdin line (its line ending, "\\r\\n" included, removed), gives exactly one record,
in order. Text is normalised as the model's training data was (the rules are stored in its config.json:
lower case; SNIPS splits "what's" into "what s"; punctuation at word edges that the training text never has,
such as "?" or ",", is dropped, so slot values read "this weekend", not "this weekend?"). An input without
words (an empty line) gives an error record and the exit status is 1 once every line is answered. An
input longer than the model reads (50 sub-tokens by default, see --max-length) is tagged up to that point,
the rest is tagged O, and a warning names the line.

Default output, one line per input: intent, confidence (softmax probability), in-domain / OUT-OF-DOMAIN
(the out-of-domain score against the threshold chosen on dev, README "Protocol") and the slots.
--json writes one JSON object per input: ``text``, ``words`` (normalised), ``intent``, ``confidence``,
``ood_score``, ``in_domain``, ``slots`` (``slot``, ``value``, character ``start``/``end`` in ``text``,
first and last ``words``), ``tags``, and ``truncated`` when it applies; or ``text`` and ``error``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "runs/joint_bert_nlu_atis/model"
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def _backend(model_dir: str, backend: str) -> str:
    """auto: torch weights if the folder has them, else the fp32 ONNX graph (a folder of joint_bert_nlu.export)."""
    if backend != "auto":
        return backend
    folder = Path(model_dir)
    if any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                              "pytorch_model.bin")):
        return "torch"
    return "onnx" if (folder / "model.onnx").is_file() else "torch"


def format_record(record: dict) -> str:
    """The default one-line form of a record."""
    if "error" in record:
        return f"ERROR\t{record['error']}"
    domain = {True: "in-domain", False: "OUT-OF-DOMAIN", None: "domain-unknown"}[record["in_domain"]]
    slots = " ".join(f"{s['slot']}={json.dumps(s['value'], ensure_ascii=False)}" for s in record["slots"])
    return f"{record['intent']}\t{record['confidence']:.3f}\t{domain}\t{slots}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joint_bert_nlu.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("texts", nargs="*", help="sentences to analyse (none: read one per line from stdin)")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"folder written by joint_bert_nlu.train (<run_dir>/model) or joint_bert_nlu.export "
                         f"(default {DEFAULT_MODEL})")
    ap.add_argument("--json", action="store_true", help="one JSON object per input instead of one text line")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="torch (model.safetensors), onnx (model.onnx), onnx-int8 (model.int8.onnx); auto: torch "
                         "if the folder has its weights, else onnx")
    ap.add_argument("--max-length", type=int, default=None,
                    help="sub-tokens read per input, [CLS] and [SEP] included (default: the training length, "
                         "50); longer inputs are truncated with a warning")
    ap.add_argument("--ood-threshold", type=float, default=None,
                    help="override the out-of-domain threshold chosen on dev (stored in config.json)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="fully unpickle a pytorch_model.bin that is not plain weights (this can run code in "
                         "it): only for a model you made yourself")
    args = ap.parse_args(argv)

    import warnings

    from common.checkpoint import CheckpointReadError, checkpoint_trust
    from joint_bert_nlu.inference import JointNLUPredictor, ModelFolderError, TruncationWarning

    backend = _backend(args.model, args.backend)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stdout holds the records; keep stderr for warnings and errors
        with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
            predictor = JointNLUPredictor.from_pretrained(
                args.model, device=args.device, batch_size=args.batch_size, backend=backend,
                max_length=args.max_length, ood_threshold=args.ood_threshold)
    except (ModelFolderError, CheckpointReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a model folder whose files exist but cannot be read
        print(f"error: cannot load the model in {args.model}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"error: backend {backend} needs {e.name or e}: pip install onnxruntime", file=sys.stderr)
        return 1
    texts = [t.rstrip("\r\n") for t in args.texts] if args.texts else [line.rstrip("\r\n") for line in sys.stdin]
    errors = []
    warnings.simplefilter("ignore", TruncationWarning)  # reported per line below
    for s in range(0, len(texts), args.batch_size):
        for i, record in enumerate(predictor(texts[s:s + args.batch_size]), start=s + 1):
            if "error" in record:
                errors.append(i)
            elif "truncated" in record:
                t = record["truncated"]
                print(f"warning: input {i}: {t['words']} words exceed the model's {predictor.max_length} "
                      f"sub-tokens; only the first {t['words_read']} were read, the rest are tagged O "
                      "(see --max-length)", file=sys.stderr)
            print(json.dumps(record, ensure_ascii=False) if args.json else format_record(record), flush=True)
    if errors:
        shown = ", ".join(map(str, errors[:10])) + (" ..." if len(errors) > 10 else "")
        print(f"error: {len(errors)} of {len(texts)} inputs had no words (input {shown}); their records hold "
              "an error", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
