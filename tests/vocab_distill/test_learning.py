"""Learning tests on a toy corpus (tiny random models, seconds) and exact resume of a mixed stage."""

import shutil

import pytest
import torch
from transformers import BertForMaskedLM

from common.checkpoint import load_checkpoint
from common.config import TrainerConfig
from tests.vocab_distill.toy import CORPUS, STUDENT_VOCAB, tiny_teacher_config, write_vocabs
from vocab_distill.mixed import MixedVocabCodec, StudentCodec
from vocab_distill.model import MixedVocabMLM, SharedProjection, init_student_from_stage1, student_config
from vocab_distill.pretrain import (
    MixedMLMOptions,
    StudentDistiller,
    StudentOptions,
    eval_mixed_mlm,
    eval_student_mlm,
    segment_lengths,
    train_mixed_teacher,
    train_student,
)
from vocab_distill.vocab import load_wordpiece


def _cfg(steps, **kw):
    return TrainerConfig(max_epochs=None, max_steps=steps, batch_size=16, log_every_steps=5, progress_bar=False,
                         **kw)


@pytest.fixture()
def setup(tmp_path):
    t, s = write_vocabs(tmp_path)
    codec = MixedVocabCodec(load_wordpiece(t), load_wordpiece(s), max_len=32)
    encs = codec.encode_all(CORPUS * 16)
    torch.manual_seed(0)
    model = MixedVocabMLM(BertForMaskedLM(tiny_teacher_config()), len(STUDENT_VOCAB), student_dim=8)
    return codec, encs, model


def test_stage1_learns_both_vocabularies(setup, tmp_path):
    codec, encs, model = setup
    before = eval_mixed_mlm(model, codec, encs, p=0.5)
    fit = train_mixed_teacher(model, codec, encs, encs, _cfg(60), tmp_path / "s1", stage="stage1",
                              opts=MixedMLMOptions(lr_teacher=1e-3, lr_new=3e-3))
    after = fit.last_metrics
    assert int(model.mix_step) == 60
    assert after["mlm_loss"] < before["mlm_loss"] - 0.8
    # chance is 1/72 (V_t) and 1/58 (V_s); both heads must be far above it
    assert after["acc_teacher_vocab"] > 0.15 and after["acc_student_vocab"] > 0.07


def test_stage0_trains_only_the_head(setup, tmp_path):
    codec, encs, model = setup
    enc_before = model.teacher.bert.encoder.layer[0].attention.self.query.weight.clone()
    e_t = model.teacher_embeddings.weight.clone()
    bias_before = model.teacher.cls.predictions.bias.clone()
    train_mixed_teacher(model, codec, encs, encs[:16], _cfg(4), tmp_path / "s0", stage="stage0")
    assert torch.equal(model.teacher.bert.encoder.layer[0].attention.self.query.weight, enc_before)
    assert torch.equal(model.teacher_embeddings.weight, e_t)
    assert not torch.equal(model.teacher.cls.predictions.bias, bias_before)


def test_stage1_resume_is_exact(setup, tmp_path):
    codec, encs, model = setup
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(6, checkpoint_every_steps=3)
    train_mixed_teacher(model, codec, encs, encs[:16], cfg, tmp_path / "a", stage="stage1")
    final = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_6.pt")["model"]
    # simulate a kill after step 3: keep only the step-3 checkpoint, then resume into a fresh model
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "checkpoints" / "step_6.pt").unlink()
    model.load_state_dict(init)
    train_mixed_teacher(model, codec, encs, encs[:16], cfg, tmp_path / "b", stage="stage1", resume="auto")
    resumed = model.state_dict()
    assert int(resumed["mix_step"]) == 6
    for k, v in final.items():
        assert torch.equal(v, resumed[k]), k


@pytest.mark.parametrize("group_by_length", [False, True])
def test_stage2_student_learns_with_projection(setup, tmp_path, group_by_length):
    codec, _, model = setup
    sc = StudentCodec(codec.student_tok, max_len=32)
    encs = sc.encode_all(CORPUS * 16)
    torch.manual_seed(0)
    student = BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 2, max_positions=64))
    init_student_from_stage1(student, model)
    proj = SharedProjection(model.teacher.config, student.config)
    dist = StudentDistiller(student, model.teacher, projection=proj, alpha=1.0)
    before_mlm = eval_student_mlm(student, sc, encs[:32])
    proj_before = proj.loss(model.teacher.bert, student.bert).item()
    fit = train_student(dist, sc, encs, encs[:32], _cfg(60), tmp_path / "s2", opts=StudentOptions(lr=3e-3, group_by_length=group_by_length))
    assert fit.last_metrics["mlm_loss"] < before_mlm["mlm_loss"] - 0.5
    assert proj.loss(model.teacher.bert, student.bert).item() < proj_before
    assert all(not p.requires_grad for p in model.teacher.parameters())  # the teacher stayed frozen


def test_segment_lengths_count_teacher_pieces_or_student_ids(setup):
    codec, encs, _ = setup
    sc = StudentCodec(codec.student_tok, max_len=32)
    s_encs = sc.encode_all(CORPUS)
    assert segment_lengths(encs[:3]) == [len(e.t_ids) for e in encs[:3]]
    assert segment_lengths(s_encs) == [len(e) for e in s_encs]
    assert len(set(segment_lengths(encs))) > 1  # the toy corpus has segments of several lengths


def test_logit_kd_requires_shared_vocabulary(setup):
    _, _, model = setup
    student = BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 2, max_positions=64))
    with pytest.raises(ValueError, match="share a vocabulary"):
        StudentDistiller(student, model.teacher, kd_weight=0.5)


@pytest.mark.gpu
def test_mixed_loss_on_cuda_and_bf16_matches_cpu(setup):
    codec, encs, model = setup
    model.eval()
    cpu = eval_mixed_mlm(model, codec, encs[:32], p=0.5)
    model.cuda()
    gpu = eval_mixed_mlm(model, codec, encs[:32], p=0.5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = eval_mixed_mlm(model, codec, encs[:32], p=0.5)
    assert gpu["mlm_loss"] == pytest.approx(cpu["mlm_loss"], rel=1e-4)
    assert bf16["mlm_loss"] == pytest.approx(cpu["mlm_loss"], rel=3e-2)


@pytest.mark.slow
def test_real_minilm_teacher_loads_with_tied_head_and_matches_formula():
    from transformers import BertModel

    from vocab_distill.model import bert_param_count, load_teacher_mlm
    from vocab_distill.vocab import load_teacher_wordpiece, teacher_model_path

    path = teacher_model_path()
    teacher = load_teacher_mlm(path)
    assert teacher.cls.predictions.decoder.weight is teacher.bert.embeddings.word_embeddings.weight
    enc = BertModel.from_pretrained(str(path))
    assert sum(p.numel() for p in enc.parameters()) == bert_param_count(30522, 384, 6) == 22_713_216
    assert load_teacher_wordpiece(path).get_vocab_size() == 30522


def test_joint_schedule_shares_e_s_and_learns(setup, tmp_path):
    from vocab_distill.pretrain import JointDualTraining, train_joint

    codec, encs, model = setup
    sc = StudentCodec(codec.student_tok, max_len=32)
    s_encs = sc.encode_all(CORPUS * 16)
    torch.manual_seed(0)
    student = BertForMaskedLM(student_config(len(STUDENT_VOCAB), 8, 2, max_positions=64))
    joint = JointDualTraining(model, student, SharedProjection(model.teacher.config, student.config))
    assert student.bert.embeddings.word_embeddings.weight is model.student_embeddings.weight
    assert student.cls.predictions.decoder.weight is model.student_embeddings.weight
    before = eval_student_mlm(student, sc, s_encs[:32])
    fit = train_joint(joint, codec, sc, encs, s_encs, s_encs[:32], _cfg(60), tmp_path / "joint",
                      opts=MixedMLMOptions(lr_teacher=1e-3, lr_new=3e-3), student_lr=3e-3)
    assert int(model.mix_step) == 60
    assert fit.last_metrics["mlm_loss"] < before["mlm_loss"] - 0.5
    assert student.bert.embeddings.word_embeddings.weight is model.student_embeddings.weight  # still shared
