"""The reproduce CLI (smoke profile) and the inference benchmark at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert all(isinstance(r["value"], float) and r["unit"] == "%" for r in results["rows"])
    assert (tmp_path / "reports" / "joint_bert_nlu" / "smoke_curves.png").stat().st_size > 1000
    assert (tmp_path / "work" / "atis_tiny" / "model" / "model.safetensors").exists()
    # A finished run is reused only under the settings it was trained with (an earlier version reused a run
    # of the old default slot loss silently): other settings, or no record of them, are refused in one line.
    from common.checkpoint import ResumeError

    argv = ["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")]
    stamp = tmp_path / "work" / "atis_tiny" / "reproduce_config.json"
    saved = json.loads(stamp.read_text())
    assert saved["model"]["slot_loss_reduction"] == "sentence_sum"
    stamp.write_text(json.dumps({**saved, "model": {**saved["model"], "slot_loss_reduction": "token_mean"}}))
    with pytest.raises(ResumeError, match=r"model.slot_loss_reduction 'token_mean' -> 'sentence_sum'.*--fresh"):
        run_profiles("joint_bert_nlu", PROFILES, argv=argv)
    stamp.unlink()
    with pytest.raises(ResumeError, match="without reproduce_config.json"):
        run_profiles("joint_bert_nlu", PROFILES, argv=argv)


def test_benchmark_runs_side_by_side():
    texts = ["book a flight to boston", "hello there", "show me fares from denver to oslo at noon"] * 3
    res = run_benchmark(tiny_model(), tokenizer(), texts, batch_size=4, repeats=1)
    assert res["prediction_agreement"] == 1.0 and res["n_sentences"] == 9
    assert res["ours"]["sentences_per_s"] > 0 and res["reference"]["sentences_per_s"] > 0
    assert res["ours"]["latency_per_batch"]["p50_ms"] > 0 and res["speedup"] > 0


def _fake_result(ds, use_crf, seed, loss="sentence_sum", n=4):
    base = 0.9 + 0.01 * (seed % 3)
    ok = [1, 1, 1, 0] if loss == "sentence_sum" else [1, 0, 1, 0]
    return {"dataset": ds, "seed": seed, "best_dev_epoch": 2, "train_seconds": 1.0, "torch_threads": 1,
            "peak_rss_bytes": 2**30, "model": {"use_crf": use_crf, "slot_loss_reduction": loss},
            "dev": {"intent_acc": base, "slot_f1": base, "sentence_acc": base},
            "test": {"intent_acc": base, "slot_f1": base - 0.01, "sentence_acc": base - 0.1},
            "per_sentence": {s: {"intent": ok, "sentence": ok} for s in ("dev", "test")},
            "ood": {"score": "msp", "threshold": 0.5, "ood_dataset": "snips" if ds == "atis" else "atis",
                    "test": {"auroc": {"msp": 0.9, "energy": 0.8}, "tpr": 0.95, "fpr": 0.1}}}


def test_full_profile_runs_both_losses_through_one_multirun_and_reports_them_side_by_side(tmp_path, monkeypatch):
    """The full profile's plan, its Hydra multirun and the side-by-side table, with training replaced by
    canned results.json files."""
    import common.launch
    import joint_bert_nlu.reproduce as rep
    from common.launch import composed_config
    from common.reproduce import ProfileContext

    calls = []

    def fake_multirun(module, runs, *, sweep_dir, subdir, launcher, n_jobs, log_path, env):
        calls.append((module, [list(r) for r in runs], subdir, n_jobs, env["OMP_NUM_THREADS"]))
        for r in runs:
            o = dict(x.split("=", 1) for x in r)
            run = sweep_dir / o["name"]
            (run / "checkpoints").mkdir(parents=True)
            res = _fake_result(o["data"], o["model"] == "minilm_crf", int(o["trainer.seed"]),
                               o["model.slot_loss_reduction"])
            if o["model.slot_loss_reduction"] == "sentence_sum":
                res["test"]["slot_f1"] += 0.06
            (run / "results.json").write_text(json.dumps(res))
            (run / "resolved_config.json").write_text(json.dumps(composed_config(module, r)))

    monkeypatch.setattr(common.launch, "multirun", fake_multirun)
    ctx = ProfileContext("joint_bert_nlu", "full", tmp_path / "out", tmp_path / "work")
    report = rep.full(ctx)
    assert len(calls) == 1 and calls[0][0] == "joint_bert_nlu.train" and calls[0][2] == "${name}"
    assert calls[0][3] == 2 and calls[0][4] == "1"  # two runs at a time, one thread each
    names = [dict(x.split("=", 1) for x in r)["name"] for r in calls[0][1]]
    assert len(names) == 14 and names[:3] == ["atis_softmax_sentence_sum_s1234", "atis_softmax_sentence_sum_s1235",
                                              "atis_softmax_sentence_sum_s1236"]
    assert names[3] == "atis_softmax_token_mean_s1234" and names[-1] == "snips_crf_sentence_sum_s1234"
    assert all("resume=auto" in r and not any(x.startswith(("trainer.max_epochs", "optim.")) for x in r)
               for r in calls[0][1])  # the protocol is the default config
    assert not (ctx.work_dir / "runs" / names[0] / "checkpoints").exists()  # cleaned once finished
    rows = {r.metric: r for r in report.rows}
    both = [f"ATIS Joint BERT, {rep.LOSS_LABEL[loss]}: {split} slot F1" for loss in rep.LOSSES
            for split in ("test", "dev")]
    assert all(m in rows for m in both)  # both losses, dev and test: no pick
    row = rows["ATIS Joint BERT, token-mean slot loss (reference): test intent acc"]
    # seeds 1234, 1235, 1236 -> 0.90, 0.91, 0.92 (seed % 3 = 1, 2, 0): mean 91.00, t-interval
    assert row.value == pytest.approx(91.0) and row.per_seed == pytest.approx([91.0, 92.0, 90.0])
    assert row.ci_high - row.value == pytest.approx(4.302653 / 3**0.5, rel=1e-6) and row.paper == 97.5
    diff = rows["ATIS sentence sum - token mean: test slot F1"]
    assert diff.value == pytest.approx(6.0) and diff.p_value == pytest.approx(0.25) and diff.n == 3
    item = rows["SNIPS sentence sum - token mean: test sentence acc (per sentence)"]
    assert item.value == pytest.approx(25.0) and item.n_kind == "items" and item.n == 4
    assert rows["SNIPS Joint BERT + CRF, sentence-sum slot loss: test slot F1"].n == 1
    assert rows["ATIS out-of-domain (SNIPS as OOD): test AUROC"].value == pytest.approx(90.0)
    assert report.headline.metric == "SNIPS Joint BERT, sentence-sum slot loss (paper, default): test slot F1"
    targets = report.extra["targets"]  # judged on the default loss only: slot F1 91 - 1 + 6 = 96, intent 91
    assert targets["snips slot_f1"] == {"target": 95.0, "mean": pytest.approx(96.0), "met": True}
    assert targets["atis intent_acc"]["met"] is False and "atis intent_acc 91.00 vs 96.5 (NOT met)" in report.notes
    assert len(report.extra["runs"]) == 14
    # a second call finds every results.json and launches nothing
    rep.full(ctx)
    assert len(calls) == 1
    # ... unless a run finished under other settings (e.g. an earlier default): that one is launched again
    stale = ctx.work_dir / "runs" / names[4] / "resolved_config.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "optim": {"lr": 1e-3}}))
    rep.full(ctx)
    assert len(calls) == 2 and [dict(x.split("=", 1) for x in r)["name"] for r in calls[1][1]] == [names[4]]


def test_full_profile_overrides_compose():
    from hydra import compose, initialize_config_dir

    import joint_bert_nlu.reproduce as rep
    from joint_bert_nlu.train import __file__ as train_file

    conf = str(Path(train_file).parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        for ds, crf, loss, seed in rep.full_plan([1234])[::3]:
            cfg = compose("config", overrides=rep.train_overrides(ds, crf, loss, seed, Path("/tmp/x"), "/data"))
            assert cfg.model.use_crf == crf and cfg.model.slot_loss_reduction == loss and cfg.data.dataset == ds
            assert cfg.trainer.max_epochs == 10 and cfg.optim.lr == pytest.approx(1e-4)


def test_quick_profile_report_with_canned_training(tmp_path, monkeypatch):
    import joint_bert_nlu.bench as bench
    import joint_bert_nlu.reproduce as rep
    from common.reproduce import ProfileContext

    ctx = ProfileContext("joint_bert_nlu", "quick", tmp_path / "out", tmp_path / "work")
    run = ctx.work_dir / "atis_softmax_s0"
    run.mkdir(parents=True)
    lines = [{"step": 10, "train/loss": 3.0}, {"step": 20, "train/loss": 1.0, "epoch": 1},
             {"step": 20, "epoch": 1, "val/intent_acc": 0.9, "val/slot_f1": 0.8, "val/sentence_acc": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setattr(rep, "_run", lambda ctx, tag, cfg, model, data, optim: _fake_result("atis", False, 0))
    fake_bench = {"n_sentences": 8, "batch_size": 4, "threads": 1, "speedup": 2.0,
                  "ours": {"sentences_per_s": 20.0}, "reference": {"sentences_per_s": 10.0}}
    monkeypatch.setattr(bench, "benchmark_saved_model", lambda *a, **k: fake_bench)
    report = rep.quick(ctx)
    assert report.headline.metric == "ATIS test slot F1" and report.headline.value == 89.0
    assert (ctx.out_dir / "quick_curves.png").exists()
    assert any(r.metric == "inference speed-up ours / loop" and r.value == 2.0 and r.kind == "timing"
               for r in report.rows)


def test_training_benchmark_pads_less():
    from joint_bert_nlu.bench import run_training_benchmark

    from .helpers import synthetic_examples

    res = run_training_benchmark(tiny_model(), tokenizer(), synthetic_examples(8, 0), batch_size=4, n_batches=2,
                                 repeats=1)
    assert res["n_sentences"] == 8 and res["reference"]["padded_positions"] == 8 * 50
    assert res["ours"]["padded_positions"] < res["reference"]["padded_positions"] and res["speedup"] > 0


def test_epoch_padding_counts_each_batching():
    from joint_bert_nlu.bench import epoch_padding

    # Hand case: 4 examples, batch 2. Seed 0 shuffles to some order; fixed pads all to 50.
    pad = epoch_padding([3, 10, 4, 9], batch_size=2, pad_to=50, seed=0)
    assert pad["fixed"] == 4 * 50 and pad["real_tokens"] == 26
    assert pad["grouped"] == 2 * 10 + 2 * 4  # one window: sorted, so {10, 9} and {4, 3}
    assert pad["grouped"] <= pad["random"] <= pad["fixed"]
    # Mixed lengths (like a corpus of short and long sentences): grouping removes most padding.
    lengths = [5 + (i * 37) % 40 for i in range(3200)]
    pad = epoch_padding(lengths, batch_size=32)
    assert pad["grouped"] < 0.7 * pad["random"] and pad["grouped"] >= pad["real_tokens"]


def test_group_by_length_reaches_the_trainer(tmp_path, monkeypatch):
    # With the option, the trainer batches by length (its grouping is tested in tests/common) over
    # every training example's sub-token count; one epoch still has the same number of steps.
    import json

    import common.trainer
    from common.config import TrainerConfig
    from joint_bert_nlu.training import DataOptions, ModelOptions, OptimOptions, train_joint

    from .helpers import write_synthetic_dataset

    seen = []
    real = common.trainer.length_grouped_batches
    monkeypatch.setattr(common.trainer, "length_grouped_batches",
                        lambda order, lengths, *a, **k: seen.append(list(lengths)) or real(order, lengths, *a, **k))
    data = write_synthetic_dataset(tmp_path / "toy")
    cfg = TrainerConfig(seed=0, device="cpu", max_epochs=1, batch_size=16, progress_bar=False, log_every_steps=1)
    res = train_joint(cfg, tmp_path / "run", ModelOptions(encoder="tiny-random"),
                      DataOptions(dataset=str(data), group_by_length=True), OptimOptions(lr=1e-3))
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert res["steps"] == 6 and sum("train/loss" in r for r in rows) == 6
    assert seen and all(len(x) == 96 and min(x) > 2 for x in seen)  # 96 toy sentences, [CLS] w.. [SEP]
