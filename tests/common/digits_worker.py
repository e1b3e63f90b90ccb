"""Subprocess worker for the resume tests: runs the digits Hydra app, optionally SIGKILLing itself.

    python tests/common/digits_worker.py KILL_AT_MICROBATCH [hydra overrides...]

KILL_AT_MICROBATCH = 0 runs normally; N > 0 sends SIGKILL to itself inside the N-th call of the loss,
i.e. in the middle of an epoch and between two checkpoints, like a crash or an OOM kill.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import common.examples.digits as digits  # noqa: E402

kill_at = int(sys.argv.pop(1))
calls = 0
real_loss = digits.loss_fn


def loss_or_die(model, batch):
    global calls
    calls += 1
    if kill_at and calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_loss(model, batch)


digits.loss_fn = loss_or_die
digits.main()
