"""Learning-rate schedules shared by packages (``scheduler_fn`` builders for ``common.trainer.Trainer``).

Written out rather than imported from transformers: ``transformers.get_linear_schedule_with_warmup`` pulls
in transformers' Trainer stack (and peft), seconds of import time per process on these machines.
"""

from __future__ import annotations

import torch


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base lr over ``warmup_steps``, then linear decay to 0 at ``total_steps``:
    the same factors as transformers' ``get_linear_schedule_with_warmup`` (tested)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_linear_decay(warmup_fraction: float = 0.0):
    """A ``scheduler_fn(optimizer, total_steps)`` for the Trainer: warm-up over ``warmup_fraction`` of the
    steps, then linear decay to 0."""

    def build(optimizer, total_steps: int):
        return linear_warmup_decay(optimizer, int(warmup_fraction * total_steps), total_steps)

    return build
