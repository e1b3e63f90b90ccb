"""ONNX export (fp32 and int8) and its benchmark against torch, at toy size."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from joint_bert_nlu import predict  # noqa: E402
from joint_bert_nlu.data import EncodedDataset, collate  # noqa: E402
from joint_bert_nlu.export import export_onnx, load_onnx_model  # noqa: E402
from joint_bert_nlu.inference import JointNLUPredictor, save_joint_model  # noqa: E402

from .helpers import VOCAB, synthetic_examples, tiny_model, tokenizer, write_synthetic_dataset  # noqa: E402


@pytest.mark.parametrize("use_crf", [False, True])
def test_onnx_export_gives_torch_logits_and_predictions(tmp_path, use_crf):
    model = tiny_model(use_crf=use_crf)
    save_joint_model(model, tokenizer(), tmp_path / "model")
    res = export_onnx(tmp_path / "model")
    assert res["max_abs_diff"] < 1e-4 and res["int8"] and (tmp_path / "model" / "onnx" / "model.int8.onnx").is_file()
    onnx_model, tok = load_onnx_model(tmp_path / "model" / "onnx")
    # a batch of other lengths and paddings than the traced one
    batch = collate(EncodedDataset(synthetic_examples(7, seed=11), tokenizer(), VOCAB).features)
    got = onnx_model.logits(batch["input_ids"], batch["attention_mask"], batch["word_index"])
    want = model.logits(batch["input_ids"], batch["attention_mask"], batch["word_index"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    texts = ["book a flight to new york at seven pm", "hello there", ""]
    a, b = JointNLUPredictor(model, tokenizer())(texts), JointNLUPredictor(onnx_model, tok)(texts)
    assert [(r.get("intent"), r.get("tags")) for r in a] == [(r.get("intent"), r.get("tags")) for r in b]
    int8, _ = load_onnx_model(tmp_path / "model" / "onnx", int8=True)
    assert len(JointNLUPredictor(int8, tok)(texts)) == 3


def test_predict_cli_runs_the_onnx_folder(tmp_path, capsys):
    save_joint_model(tiny_model(), tokenizer(), tmp_path / "model")
    from joint_bert_nlu.export import main

    assert main(["--model", str(tmp_path / "model")]) == 0
    assert "model.int8.onnx" in capsys.readouterr().out
    onnx_dir = str(tmp_path / "model" / "onnx")
    assert predict.main(["--model", onnx_dir, "--json", "fly to oslo"]) == 0  # auto: no torch weights -> onnx
    onnx = json.loads(capsys.readouterr().out)
    assert predict.main(["--model", str(tmp_path / "model"), "--json", "fly to oslo"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == onnx["tags"]
    assert predict.main(["--model", onnx_dir, "--backend", "onnx-int8", "--json", "fly to oslo"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "fly to oslo"
    assert main(["--model", str(tmp_path / "missing")]) == 1 and "does not exist" in capsys.readouterr().err


def test_onnx_benchmark_side_by_side(tmp_path):
    from joint_bert_nlu.bench import run_onnx_benchmark

    save_joint_model(tiny_model(), tokenizer(), tmp_path / "model")
    data = write_synthetic_dataset(tmp_path / "toy", n_train=8, n_eval=12)
    res = run_onnx_benchmark(tmp_path / "model", dataset=str(data), split="test", batch_size=4, repeats=1)
    assert set(res["backends"]) == {"torch fp32", "onnx fp32", "onnx int8"} and res["n_sentences"] == 12
    b = res["backends"]
    assert b["torch fp32"]["agreement_with_torch"] == 1.0 and b["onnx fp32"]["agreement_with_torch"] == 1.0
    assert b["onnx fp32"]["intent_acc"] == b["torch fp32"]["intent_acc"]
    assert all(x["sentences_per_s"] > 0 and x["file_bytes"] > 0 for x in b.values())
    assert b["torch fp32"]["speedup_vs_torch"] == 1.0 and 0 <= b["onnx int8"]["agreement_with_torch"] <= 1
