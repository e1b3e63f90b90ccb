"""The cost plan of ``vocab_distill.estimate``: per-step CPU seconds times the steps a configuration asks for."""

from types import SimpleNamespace

import pytest

from vocab_distill.config import PipelineConfig, TeacherOptions
from vocab_distill.estimate import plan


def test_plan_multiplies_measured_steps_by_the_configured_counts():
    pc = PipelineConfig(widths=[96], methods=["dual_proj", "scratch"], tasks=["sst2"], stage1_steps=300,
                        stage2_steps=1000, n_eval_segments=500, finetune_epochs=3, finetune_seeds=[0, 1, 2],
                        finetune_lrs_student=[1e-4, 3e-4, 1e-3], finetune_lrs_teacher=[5e-5],
                        finetune_teacher_seeds=[0], finetune_batch_size=32)
    teacher = TeacherOptions(head_steps=0, max_steps=1000, eval_every=250)
    per_step = {"teacher_adapt": 1.0, "teacher_eval_per_segment": 0.01, "stage1_d96": 2.0,
                "stage2_dual_proj_d96": 0.5, "stage2_scratch_d96": 0.25, "train_size_sst2": 3200,
                "finetune_sst2_student_d96": 0.1, "finetune_sst2_teacher": 1.0}
    h = plan(SimpleNamespace(pc=pc, teacher_opts=teacher), per_step)
    # teacher: 1000 steps + (4 + 2) evaluations of 500 segments
    assert h["teacher adaptation"] == pytest.approx((1000 + 6 * 500 * 0.01) / 3600)
    assert h["stage I d=96"] == pytest.approx(600 / 3600)
    assert h["stage II dual_proj d=96"] == pytest.approx(500 / 3600)
    # students: 2 methods x 3 epochs x (3 trials + 3 seeds) x 100 steps x 0.1 s, + 15% for evaluations
    assert h["fine-tune sst2 students d=96"] == pytest.approx(2 * 3 * 6 * 100 * 0.1 * 1.15 / 3600)
    assert h["fine-tune sst2 teacher"] == pytest.approx(3 * 2 * 100 * 1.0 * 1.15 / 3600)
    assert h["total"] == pytest.approx(sum(v for k, v in h.items() if k != "total"))
    # a measured curve replaces the upper bound
    assert plan(SimpleNamespace(pc=pc, teacher_opts=teacher), per_step, teacher_steps=250)["teacher adaptation"] \
        == pytest.approx((250 + 3 * 5) / 3600)
