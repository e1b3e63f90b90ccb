"""The teacher's MLM adaptation: accuracy by position kind, the copy/frequency baselines, the 25% gate (its
rules, a toy run that passes, a toy run that does not and a pipeline that then trains no student)."""

import json

import pytest
import torch
from transformers import BertForMaskedLM

from common.config import TrainerConfig
from tests.vocab_distill.toy import CORPUS, STUDENT_VOCAB, tiny_teacher_config, write_vocabs
from vocab_distill.config import TeacherOptions
from vocab_distill.mixed import IGNORE_INDEX, KEPT, MASKED, RANDOM, UNCHANGED, MixedVocabCodec
from vocab_distill.model import MixedVocabMLM, MLMOutput
from vocab_distill.pretrain import eval_mixed_mlm, kind_counts
from vocab_distill.teacher import adapt_teacher, gate_decision, most_frequent_token, speed_and_projection
from vocab_distill.vocab import load_wordpiece


def test_position_kind_accuracy_hand_case():
    # six selected positions: two [MASK] (one right), two random (none right), two unchanged (both right)
    kinds = torch.tensor([MASKED, MASKED, RANDOM, RANDOM, UNCHANGED, UNCHANGED])
    right = torch.tensor([True, False, False, False, True, True])
    assert kind_counts(kinds, right) == {"mask": (2, 1), "random": (2, 0), "unchanged": (2, 2)}


@pytest.fixture()
def toy(tmp_path):
    t, s = write_vocabs(tmp_path)
    codec = MixedVocabCodec(load_wordpiece(t), load_wordpiece(s), max_len=32)
    torch.manual_seed(0)
    model = MixedVocabMLM(BertForMaskedLM(tiny_teacher_config()), len(STUDENT_VOCAB), student_dim=8)
    return codec, codec.encode_all(CORPUS * 16), model


class CopyModel(MixedVocabMLM):
    """Predicts the input token at every masked position: right at every unchanged position, never at [MASK]."""

    def mlm_loss(self, input_ids, attention_mask, labels):
        sel = labels != IGNORE_INDEX
        y, pred = labels[sel], input_ids[sel]
        return MLMOutput(torch.zeros(()), int(sel.sum()), 0, int((pred == y).sum()), 0, pred)


def test_eval_reports_accuracy_by_position_kind_beside_the_baselines(toy):
    codec, encs, model = toy
    copy = CopyModel(model.teacher, len(STUDENT_VOCAB), 8).eval()
    frequent = most_frequent_token(encs, codec.special_ids)
    assert codec.teacher_tok.id_to_token(frequent) in ("the", ".")  # the toy corpus's commonest tokens
    m = eval_mixed_mlm(copy, codec, encs, p=0.0, mask_prob=0.5, frequent_id=frequent)
    assert m["n_mask"] > 4 * m["n_random"] > 0 and m["n_unchanged"] > 0
    assert m["acc_mask"] == 0.0 and m["acc_unchanged"] == 1.0
    # the copy baseline is exactly this model, kind by kind
    for k in ("mask", "random", "unchanged"):
        assert m[f"copy_acc_{k}"] == m[f"acc_{k}"]
    assert m["copy_acc"] == pytest.approx(m["acc"])
    total = m["n_mask"] + m["n_random"] + m["n_unchanged"]
    assert m["freq_acc"] == pytest.approx(sum(m[f"freq_acc_{k}"] * m[f"n_{k}"] for k in ("mask", "random", "unchanged"))
                                          / total)
    assert 0.05 < m["freq_acc_mask"] < 0.5


def _opts(**kw):
    base = dict(head_steps=5, max_steps=60, eval_every=20, lr=3e-3, lr_head=3e-3, warmup_steps=5,
                group_by_length=False, patience=3, min_delta=0.005)
    return TeacherOptions(**(base | kw))


def test_gate_decision_rules():
    def pts(*accs, last_step=None):
        out = [{"acc_mask": a, "adapt_step": 250 * i} for i, a in enumerate(accs)]
        if last_step is not None:
            out[-1]["adapt_step"] = last_step
        return out

    o = _opts(gate=0.25, max_steps=4000, patience=3)
    assert gate_decision(pts(0.0, 0.1, 0.2), o) is None  # still rising, below the gate
    assert gate_decision(pts(0.0, 0.1, 0.26), o) == "passed"  # stop at the gate
    assert gate_decision(pts(0.0, 0.2, 0.201, 0.202, 0.203), o) == "flattened"  # 3 points gained < 0.005
    assert gate_decision(pts(0.0, 0.2, 0.21, 0.202, 0.203), o) is None  # the 0.21 was progress
    assert gate_decision(pts(0.0, 0.2, 0.24, last_step=4000), o) == "budget"
    keep_going = _opts(gate=0.25, max_steps=4000, patience=3, stop_at_gate=False)
    assert gate_decision(pts(0.0, 0.3), keep_going) is None
    assert gate_decision(pts(0.0, 0.3, 0.301, 0.302, 0.303), keep_going) == "passed"  # flattened above the gate


def test_speed_and_log_linear_projection():
    pts = [{"phase": "adapt", "adapt_step": s, "acc_mask": a, "chunk_steps": 100, "chunk_cpu_seconds": 200.0,
            "chunk_wall_seconds": 120.0} for s, a in ((50, 0.05), (100, 0.10), (200, 0.15))]
    sp = speed_and_projection(pts, gate=0.25)
    assert sp["steps_per_cpu_second"] == pytest.approx(0.5) and sp["cpu_seconds_per_step"] == pytest.approx(2.0)
    assert "extrapolated_steps_to_gate" not in speed_and_projection(pts[1:], gate=0.25)  # two points: no fit
    # 0.05 per doubling: 0.25 is two more doublings after 200 steps -> 800 steps, 800 * 2 CPU-s
    assert sp["extrapolated_steps_to_gate"] == pytest.approx(800, rel=1e-6)
    assert sp["extrapolated_cpu_hours_to_gate"] == pytest.approx(800 * 2 / 3600, rel=1e-6)


def _cfg():
    return TrainerConfig(max_epochs=None, batch_size=16, log_every_steps=5, progress_bar=False)


def test_toy_teacher_passes_the_gate_stops_there_and_resumes(toy, tmp_path):
    codec, encs, model = toy
    opts = _opts(gate=0.6, max_steps=200)
    record = adapt_teacher(model, False, codec, encs, encs[:32], _cfg(), tmp_path / "teacher", opts, batch_size=16)
    curve = record["curve"]
    assert [p["phase"] for p in curve[:2]] == ["before", "head"] and curve[1]["head_step"] == 5
    assert record["decision"] == "passed" and record["final"]["acc_mask"] >= 0.6
    assert all(p["acc_mask"] < 0.6 for p in curve[:-1])  # stopped at the first point above the gate
    assert record["final"]["adapt_step"] < opts.max_steps
    assert record["speed"]["steps_per_cpu_second"] > 0
    # a second call (a rerun of the finished pipeline stage) trains nothing and returns the same record
    on_disk = json.loads((tmp_path / "teacher" / "curve.json").read_text())
    again = adapt_teacher(model, False, codec, encs, encs[:32], _cfg(), tmp_path / "teacher", opts, batch_size=16)
    assert again["curve"] == on_disk["points"] == curve


def test_toy_teacher_below_the_gate_stops_on_its_budget(toy, tmp_path):
    codec, encs, model = toy
    record = adapt_teacher(model, True, codec, encs, encs[:32], _cfg(), tmp_path / "teacher",
                           _opts(gate=0.99, max_steps=20, eval_every=10), batch_size=16)
    assert record["decision"] == "budget" and not record["gate_passed"]
    assert [p["adapt_step"] for p in record["curve"]] == [0, 10, 20]  # has_head: no head warm-up
    assert not (tmp_path / "teacher" / "head").exists()


def test_pipeline_stops_after_a_teacher_below_the_gate(tmp_path):
    """No student, no fine-tuning and no verdict when the teacher does not reach the gate."""
    from hydra import compose, initialize_config_dir

    from tests.vocab_distill.test_pipeline_smoke import REPO
    from vocab_distill.reproduce import build_report
    from vocab_distill.train import build_pipeline

    with initialize_config_dir(config_dir=str(REPO / "vocab_distill" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=smoke", "teacher.gate=0.99", "teacher.stop_at_gate=true", "teacher.max_steps=2",
            "teacher.eval_every=1", "logger.tensorboard=false"])
    results = build_pipeline(cfg, tmp_path / "run").run()
    assert results["teacher"]["decision"] == "budget" and results["finetune"] == {}
    assert not list((tmp_path / "run").glob("stage*")) and not (tmp_path / "run" / "finetune").exists()
    report = build_report(results, "smoke", tmp_path / "out")
    assert "did not pass its gate" in report.notes and "no verdict" in report.notes
    assert not [r for r in report.rows if "beats" in r.metric]
    gate_row = next(r for r in report.rows if r.metric == "teacher gate passed")
    assert gate_row.value == 0


def test_kinds_of_the_mask_draw_are_consistent(toy):
    from vocab_distill.mixed import mask_tokens, mask_tokens_with_kinds, mixed_vocab_ranges

    codec, encs, _ = toy
    b = codec.batch(encs, 0.5, generator=torch.Generator().manual_seed(0))
    kw = dict(mask_id=codec.mask_id, vocab_ranges=mixed_vocab_ranges(codec), mask_prob=0.5)
    ids, labels, kinds = mask_tokens_with_kinds(b["input_ids"], b["special_mask"], **kw,
                                                generator=torch.Generator().manual_seed(1))
    orig = b["input_ids"]
    assert bool((ids[kinds == MASKED] == codec.mask_id).all())
    assert bool((ids[kinds == UNCHANGED] == orig[kinds == UNCHANGED]).all())
    assert bool((labels[kinds == KEPT] == IGNORE_INDEX).all()) and bool((labels[kinds != KEPT] != IGNORE_INDEX).all())
    assert int((kinds == RANDOM).sum()) > 0 and bool((ids[kinds == KEPT] == orig[kinds == KEPT]).all())
    # mask_tokens makes the very same draws
    ids2, labels2 = mask_tokens(b["input_ids"], b["special_mask"], **kw, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, ids2) and torch.equal(labels, labels2)


def test_a_run_from_before_the_gate_is_not_continued(tmp_path):
    """Its stage exports came from a teacher that never passed the gate: resume=auto must not reuse them."""
    from hydra import compose, initialize_config_dir

    from common.checkpoint import ResumeError
    from tests.vocab_distill.test_pipeline_smoke import REPO
    from vocab_distill.train import build_pipeline

    (tmp_path / "run" / "stage0" / "teacher_mlm").mkdir(parents=True)
    with initialize_config_dir(config_dir=str(REPO / "vocab_distill" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smoke", "resume=auto"])
    with pytest.raises(ResumeError, match="before issue 24"):
        build_pipeline(cfg, tmp_path / "run")
