"""The reproduce CLI (smoke profile) and the inference benchmark at toy size."""

from __future__ import annotations

import json

from common.reproduce import run_profiles
from joint_bert_nlu.bench import run_benchmark
from joint_bert_nlu.reproduce import PROFILES

from .helpers import tiny_model, tokenizer


def test_smoke_profile_writes_report(tmp_path):
    path = run_profiles("joint_bert_nlu", PROFILES, argv=[
        "--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")])
    assert path.exists() and "intent acc" in path.read_text()
    results = json.loads((tmp_path / "reports" / "joint_bert_nlu" / "results.smoke.json").read_text())
    assert results["profile"] == "smoke" and results["headline"]["paper"] == 96.1
    assert (tmp_path / "reports" / "joint_bert_nlu" / "smoke_curves.png").stat().st_size > 1000
    assert (tmp_path / "work" / "atis_tiny" / "model" / "model.safetensors").exists()


def test_benchmark_runs_side_by_side():
    texts = ["book a flight to boston", "hello there", "show me fares from denver to oslo at noon"] * 3
    res = run_benchmark(tiny_model(), tokenizer(), texts, batch_size=4, repeats=1)
    assert res["prediction_agreement"] == 1.0 and res["n_sentences"] == 9
    assert res["ours"]["sentences_per_s"] > 0 and res["reference"]["sentences_per_s"] > 0
    assert res["ours"]["latency_per_batch"]["p50_ms"] > 0 and res["speedup"] > 0
