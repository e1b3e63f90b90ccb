"""Intent and slot spans for raw sentences, one JSON line per input.

    python -m joint_bert_nlu.predict "book a table for two at seven"
    python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_snips/model "play jazz" "what's the weather"
    cat sentences.txt | python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_atis/model

Input is split on whitespace, as in the datasets' seq.in files. Each output line holds ``text``,
``intent``, ``confidence`` (softmax probability of the predicted intent), ``slots`` (``slot``, ``value``,
character ``start``/``end``, first and last ``words``) and the word-level BIO ``tags``.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_MODEL = "runs/joint_bert_nlu_atis/model"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joint_bert_nlu.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("texts", nargs="*", help="sentences to analyse (none: read one per line from stdin)")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"folder written by joint_bert_nlu.train (<run_dir>/model; default {DEFAULT_MODEL})")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="fully unpickle a pytorch_model.bin that is not plain weights (this can run code in "
                         "it): only for a model you made yourself")
    args = ap.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from joint_bert_nlu.inference import JointNLUPredictor  # after argparse: --help stays instant

    hf_logging.disable_progress_bar()  # stdout is JSON lines; keep stderr quiet too

    from common.checkpoint import CheckpointReadError, checkpoint_trust

    try:
        with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
            predictor = JointNLUPredictor.from_pretrained(args.model, device=args.device,
                                                          batch_size=args.batch_size)
    except (FileNotFoundError, CheckpointReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for s in range(0, len(texts), args.batch_size):
        for result in predictor(texts[s:s + args.batch_size]):
            print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
