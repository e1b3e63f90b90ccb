"""Atomic checkpoints, RNG capture, and run-directory resume logic shared by every package.

A checkpoint is one ``torch.save`` dict. By convention it holds ``model``, ``optimizer``, ``scheduler``,
``rng`` (see :func:`capture_rng_state`), ``step``, ``epoch`` and ``config``; packages add their own keys
(a replay buffer, an offload manifest). Writing is atomic: temporary file in the same folder, fsync,
rename, fsync of the folder, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.distributed import is_main_process
from common.progress import progress

_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class ResumeError(RuntimeError):
    """A run directory and the ``resume`` setting disagree (e.g. resume=never on a run with checkpoints)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(file_object)`` on a temporary file, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def cached_result(path: str | os.PathLike, params: dict[str, Any], compute: Callable[[], Any],
                  enabled: bool = True) -> Any:
    """The JSON result stored at ``path`` for exactly these ``params``, or ``compute()``, stored atomically.

    Long reproduce runs are cut short (a sitting ends, a machine goes back); a stage that finished (an
    evaluation, a sweep) is then read back instead of recomputed. The file holds ``{"params", "result"}``;
    a file written for other params is recomputed and overwritten, never reused. ``params`` and the
    result must be JSON-serialisable. ``enabled=False`` (a ``resume=never`` run) always computes.
    """
    path = Path(path)
    params = json.loads(json.dumps(params))  # compare what a reload would see (tuples -> lists)
    if enabled and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            stored = None  # a torn or foreign file: recompute rather than fail a long run
        if isinstance(stored, dict) and stored.get("params") == params:
            return stored["result"]
    result = compute()
    payload = json.dumps({"params": params, "result": result}, indent=1).encode()
    if is_main_process():  # under torchrun every rank computes the same result; rank 0 stores it
        atomic_write(path, lambda f: f.write(payload))
    return json.loads(payload)["result"]


def resumable_map(fn: Callable[[Any], Any], items: Sequence[Any], path: str | os.PathLike | None,
                  params: dict[str, Any], *, enabled: bool = True, desc: str = "",
                  show_progress: bool = True, unit: str = "it") -> list[Any]:
    """``[fn(x) for x in items]``, each JSON result appended to ``path`` (JSONL) as soon as it is done.

    For evaluations that take an hour item by item (scoring 800 prompts, planning 1,000 molecules): a run
    cut short keeps what it finished, and a rerun with the same ``params`` and item count reads those
    results back and continues with the rest. The first line is ``{"params", "n"}``; a file written for
    other params is started over, never reused. A last line torn by a kill is dropped. ``enabled=False``
    (a ``resume=never`` run) starts over; ``path=None`` keeps nothing (a plain map with a progress bar).
    """
    if path is None:
        return [json.loads(json.dumps(fn(x))) for x in progress(items, total=len(items), desc=desc,
                                                                 enabled=show_progress, unit=unit)]
    path = Path(path)
    header = json.loads(json.dumps({"params": params, "n": len(items)}))
    done: list[Any] = []
    if enabled and path.is_file():
        lines = path.read_text().splitlines()
        try:
            same = bool(lines) and json.loads(lines[0]) == header
        except ValueError:
            same = False
        if same:
            for line in lines[1:]:
                try:
                    done.append(json.loads(line))
                except ValueError:
                    break  # the line a kill tore, and nothing valid can follow it
    done = done[: len(items)]
    # rewrite what is kept (drops a torn tail or a foreign file), then append as items finish; under torchrun
    # the other ranks read the file but compute the rest themselves, writing nothing
    kept = "".join(json.dumps(x) + "\n" for x in [header, *done]).encode()
    main = is_main_process()
    if main:
        atomic_write(path, lambda f: f.write(kept))
    out = list(done)
    with open(path, "a") if main else open(os.devnull, "w") as sink:
        todo = items[len(done):]
        for item in progress(todo, total=len(items), initial=len(done), desc=desc, enabled=show_progress,
                             unit=unit):
            line = json.dumps(fn(item))
            sink.write(line + "\n")
            sink.flush()
            out.append(json.loads(line))  # what a reload would see (tuples -> lists)
    return out


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` with ``torch.save``."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (full unpickling: only load your own files)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated or foreign file: say which one
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch: python, numpy, torch CPU and (if present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class CheckpointManager:
    """Step checkpoints ``<run_dir>/checkpoints/step_<N>.pt`` (keep the last k) and ``best.pt``."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 2, enabled: bool = True):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)
        self.enabled = enabled

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_RE.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest step checkpoint, or None."""
        ckpts = self.step_checkpoints()
        return ckpts[-1][1] if ckpts else None

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def save(self, step: int, state: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        path = save_checkpoint(self.dir / f"step_{step}.pt", state)
        for _, old in self.step_checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict[str, Any]) -> Path | None:
        return save_checkpoint(self.best_path, state) if self.enabled else None

    def resolve_resume(self, resume: str | None) -> Path | None:
        """The checkpoint to resume from for ``resume`` in never | auto | <path>.

        never: None, and a :class:`ResumeError` if the run directory already has checkpoints (so a
        finished or crashed run is never overwritten by accident). auto: the newest checkpoint or None.
        A path: that file, which must exist.
        """
        resume = "never" if resume in (None, "", False, "never", "none", "null") else str(resume)
        latest = self.latest()
        if resume == "never":
            if latest is not None:
                raise ResumeError(
                    f"{self.dir} already holds checkpoints (newest: {latest.name}). Continue it with "
                    "resume=auto, or start fresh under another name=... (or delete the folder)."
                )
            return None
        if resume == "auto":
            return latest
        path = Path(resume)
        if not path.is_file():
            raise ResumeError(f"resume={resume}: no such checkpoint file")
        return path
