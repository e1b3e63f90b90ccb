"""ONNX export of a trained joint model, fp32 and int8 (onnxruntime dynamic quantisation).

    python -m joint_bert_nlu.export --model runs/joint_bert_nlu_atis/model           # -> <model>/onnx/
    python -m joint_bert_nlu.predict --model runs/joint_bert_nlu_atis/model/onnx --backend onnx-int8 "..."
    python -m joint_bert_nlu.bench --onnx --model runs/joint_bert_nlu_atis/model     # accuracy + speed

The graph maps ``input_ids``, ``attention_mask`` [batch, sub-tokens] and ``word_index`` [batch, words]
to ``intent_logits`` [batch, intents] and ``slot_logits`` [batch, words, slots], with every length
dynamic. Decoding (UNK/PAD masking, the CRF's Viterbi) stays in Python and is the same function the
torch model uses (``model.decode_logits``), so both backends differ only in the logits. The int8 model
quantises the weights of MatMul/Gemm to int8 (``onnxruntime.quantization.quantize_dynamic``;
activations are quantised per batch at run time); its accuracy and speed against fp32 are measured by
``joint_bert_nlu.bench --onnx``, never assumed. The output folder is self-contained: ``model.onnx``,
``model.int8.onnx``, ``config.json``, the tokenizer files and, for a CRF model, ``crf.safetensors``.

The export uses torch's TorchScript exporter (``dynamo=False``): the dynamo exporter needs onnxscript,
one more dependency, for no gain on this graph.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import warnings
from pathlib import Path

ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
INPUTS = ("input_ids", "attention_mask", "word_index")
OUTPUTS = ("intent_logits", "slot_logits")
COPIED = ("config.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json")


def export_onnx(model_dir, out_dir=None, *, int8: bool = True, opset: int = 17, trust: bool | None = None) -> dict:
    """Export ``model_dir`` (a folder of ``joint_bert_nlu.train``) to ``out_dir`` (default ``<model_dir>/onnx``).

    Returns ``{"onnx": path, "int8": path or None, "int8_error": reason or None, "max_abs_diff": float}``:
    the largest logit difference between the exported graph and torch on a check batch.
    """
    import numpy as np
    import torch

    from .data import align_words, collate
    from .inference import load_joint_model

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir / "onnx"
    model, tokenizer = load_joint_model(model_dir, trust=trust)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = [["book", "a", "flight", "from", "boston", "to", "san", "francisco"], ["hello"]]
    batch = collate([align_words(tokenizer, w, model.config.max_seq_length) for w in sample],
                    pad_token_id=tokenizer.pad_token_id or 0)
    args = tuple(batch[k] for k in INPUTS)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, word_index):
            return self.m.encode(input_ids, attention_mask, word_index)

    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
               "word_index": {0: "batch", 1: "words"}, "intent_logits": {0: "batch"},
               "slot_logits": {0: "batch", 1: "words"}}
    onnx_path = out_dir / ONNX_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(Logits(model).eval(), args, str(onnx_path), dynamo=False, input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes=dynamic, opset_version=opset)
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    if model.crf is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.crf.state_dict().items()}, str(out_dir / "crf.safetensors"))
    # Check on a batch of other lengths than the one traced: the dynamic axes must really be dynamic.
    check = [["show", "me", "fares", "from", "denver", "to", "oslo", "at", "noon"], ["hi", "there"],
             ["what", "s", "the", "weather"]]
    cbatch = collate([align_words(tokenizer, w, model.config.max_seq_length) for w in check],
                     pad_token_id=tokenizer.pad_token_id or 0)
    session = _session(onnx_path)
    got = session.run(list(OUTPUTS), {k: cbatch[k].numpy() for k in INPUTS})
    with torch.no_grad():
        ref = model.encode(*(cbatch[k] for k in INPUTS))
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    result = {"onnx": str(onnx_path), "int8": None, "int8_error": None, "max_abs_diff": diff}
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # an onnxruntime build without the quantisation tools
        result["int8_error"] = f"onnxruntime.quantization unavailable: {e}"
        return result
    int8_path = out_dir / INT8_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # its root-logger advice on pre-processing (a no-op for this graph)
        try:
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
    result["int8"] = str(int8_path)
    return result


def _session(path, threads: int | None = None):
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxJointModel:
    """The exported graph behind the torch model's inference interface (``config``, ``crf``, ``vocab``,
    ``logits``, ``decode``, ``eval``), so :class:`~joint_bert_nlu.inference.JointNLUPredictor` and
    :func:`~joint_bert_nlu.evaluate.predict_encoded` run it unchanged. Not an ``nn.Module``: it holds no
    torch parameters (and this module stays importable without torch for ``--help``)."""

    training = False

    def __init__(self, config, session, crf=None):
        self.config, self.session, self.crf = config, session, crf

    def eval(self):
        return self

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an ONNX model cannot be trained")
        return self

    @property
    def vocab(self):
        return self.config.vocab

    def logits(self, input_ids, attention_mask, word_index, **_ignored):
        import torch

        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "word_index": word_index}
        out = self.session.run(list(OUTPUTS), {k: v.cpu().numpy() for k, v in feeds.items()})
        return tuple(torch.from_numpy(o) for o in out)

    def decode(self, input_ids, attention_mask, word_index, word_mask, **_ignored):
        from .model import decode_logits

        intent_logits, slot_logits = self.logits(input_ids, attention_mask, word_index)
        return decode_logits(self.config, self.crf, intent_logits, slot_logits, word_mask)


def load_onnx_model(model_dir, *, int8: bool = False, threads: int | None = None):
    """(OnnxJointModel, tokenizer) from a folder written by :func:`export_onnx`."""
    from .inference import check_model_folder, load_tokenizer
    from .model import NUM_SPECIAL_SLOTS, JointBertConfig, LinearChainCRF

    name = INT8_NAME if int8 else ONNX_NAME
    model_dir = check_model_folder(model_dir, weights=(name,))
    config = JointBertConfig.from_pretrained(model_dir)
    crf = None
    if config.use_crf:
        from safetensors.torch import load_file

        crf = LinearChainCRF(len(config.slot_labels) - NUM_SPECIAL_SLOTS)
        crf.load_state_dict(load_file(str(model_dir / "crf.safetensors")))
    return OnnxJointModel(config, _session(model_dir / name, threads), crf), load_tokenizer(model_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joint_bert_nlu.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder written by joint_bert_nlu.train")
    ap.add_argument("--out", default=None, help="output folder (default: <model>/onnx)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 (dynamic quantisation) model")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="fully unpickle a pytorch_model.bin that is not plain weights (can run code in it)")
    args = ap.parse_args(argv)

    from common.checkpoint import CheckpointReadError, checkpoint_trust

    from .inference import ModelFolderError

    try:
        with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
            res = export_onnx(args.model, args.out, int8=not args.no_int8, opset=args.opset)
    except (ModelFolderError, CheckpointReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"error: {e}; install the export tools with `pip install onnx onnxruntime`", file=sys.stderr)
        return 1
    print(f"wrote {res['onnx']} (max |logit difference| to torch on a check batch: {res['max_abs_diff']:.2e})")
    if res["int8"]:
        print(f"wrote {res['int8']} (int8 dynamic quantisation; measure it: python -m joint_bert_nlu.bench "
              f"--onnx --model {args.model})")
    elif not args.no_int8:
        print(f"warning: no int8 model: {res['int8_error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
