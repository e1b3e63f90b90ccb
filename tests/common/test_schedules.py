"""Shared learning-rate schedules equal transformers' reference schedule."""

import pytest
import torch

from common.schedules import linear_warmup_decay, warmup_linear_decay


def _lrs(make, steps=11):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(opt)
    seq = []
    for _ in range(steps):
        seq.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seq


def test_linear_warmup_decay_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    ours = _lrs(lambda o: linear_warmup_decay(o, 3, 10))
    theirs = _lrs(lambda o: get_linear_schedule_with_warmup(o, 3, 10))
    assert ours == pytest.approx(theirs)
    assert ours[:4] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1]) and ours[10] == 0.0


def test_scheduler_fn_builder_uses_the_fraction():
    assert _lrs(lambda o: warmup_linear_decay(0.3)(o, 10)) == _lrs(lambda o: linear_warmup_decay(o, 3, 10))
