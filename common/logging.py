"""Metric logging to JSONL and TensorBoard (rank 0 only), and a console logger."""

from __future__ import annotations

import json
import logging as _pylogging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class _FallbackHandler(_pylogging.StreamHandler):
    """Prints only while the root logger has no handler. Under Hydra (which configures the root logger
    when the job starts, possibly after this module was imported) records go through the root's handlers
    alone, so nothing is printed twice; in plain scripts and tests they still reach the console."""

    def emit(self, record: _pylogging.LogRecord) -> None:
        if not _pylogging.getLogger().handlers:
            self.stream = sys.stderr  # the current stderr (it may have been redirected since import)
            super().emit(record)


def get_logger(name: str) -> _pylogging.Logger:
    """A console logger with one consistent format across packages (safe to call at import time)."""
    if name == "__main__":  # under ``python -m pkg.mod`` name the module, not "__main__"
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None else name
    # The handler sits on the top-level package logger only, so "pkg" and "pkg.sub" never print a record twice.
    top = _pylogging.getLogger(name.split(".")[0])
    if not any(isinstance(h, _FallbackHandler) for h in top.handlers):
        h = _FallbackHandler()
        h.setFormatter(_pylogging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        top.addHandler(h)
        top.setLevel(_pylogging.INFO)
    return _pylogging.getLogger(name)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    return v


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> None:
    """Keep the rows of a metrics.jsonl with ``step <= last_step``: those after it were logged after the
    checkpoint a run resumes from, and the resumed run logs them again. A line torn by a kill is dropped
    too. Rewritten atomically, and only when something goes."""
    from common.checkpoint import atomic_write  # here: it imports torch, which get_logger users need not

    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        payload = "".join(line + "\n" for line in kept).encode()
        atomic_write(path, lambda f: f.write(payload))


class MetricLogger:
    """Append metric dicts to ``<run_dir>/metrics.jsonl`` and TensorBoard ``<run_dir>/tb``.

    Each JSONL line is ``{"step": N, "time": unix, **metrics}``. Non-rank-0 processes log nothing.

    ``start_step``: the step this session continues from (0 for a fresh run, the checkpoint's step after a
    resume). Rows logged after it by an earlier session (a run killed between two checkpoints) are removed
    from metrics.jsonl, and TensorBoard purges its events after it (``SummaryWriter(purge_step=...)``), so
    a killed and resumed run logs every step once, like an uninterrupted one. None: append to whatever is
    there.
    """

    def __init__(self, run_dir: str | os.PathLike, *, jsonl: bool = True, tensorboard: bool = True,
                 enabled: bool | None = None, start_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = _is_rank0() if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            if start_step is not None:
                truncate_jsonl(self.run_dir / "metrics.jsonl", start_step)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if start_step is None else start_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    @classmethod
    def from_config(cls, run_dir, logger_cfg, *, start_step: int | None = None) -> MetricLogger:
        return cls(run_dir, jsonl=logger_cfg.jsonl, tensorboard=logger_cfg.tensorboard, start_step=start_step)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time(), **{k: _scalar(v) for k, v in metrics.items()}}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a metrics.jsonl file (for plots and tests)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
