"""Atomic checkpoints, RNG capture, and run-directory resume logic shared by every package.

A checkpoint is one ``torch.save`` dict. By convention it holds ``model``, ``optimizer``, ``scheduler``,
``rng`` (see :func:`capture_rng_state`), ``step``, ``epoch`` and ``config``; packages add their own keys
(a replay buffer, an offload manifest). Writing is atomic: temporary file in the same folder, fsync,
rename, fsync of the folder, so a crash mid-write leaves the previous checkpoint intact.

Before a run starts, :func:`check_resume` decides from file names and ``<run_dir>/resolved_config.json``
alone (no unpickling, nothing loaded or written) whether the ``resume`` setting may run in the folder.

Loading never runs code from the file. Unpickling can call any importable function, so a checkpoint or
head file someone else made could run anything. :func:`load_checkpoint` uses ``torch.load(...,
weights_only=True)``, which rebuilds only tensors, plain containers, numbers and strings, plus the
numeric numpy arrays and scalars our own checkpoints hold (:data:`SAFE_GLOBALS`, allowlisted only for
the duration of the load). A file that needs anything else is refused with one line naming the file,
what it holds and how to trust it: ``trust=True`` in Python, ``trust_checkpoint=true`` on a Hydra command
line, ``--trust-checkpoint`` for the argparse tools (see :func:`checkpoint_trust`). Exports meant for
sharing are safetensors plus JSON (:func:`save_safetensors`), which hold no pickle at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import json
import os
import pickle
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.distributed import is_main_process
from common.progress import progress

_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
RUN_CONFIG_FILE = "resolved_config.json"
"""The resolved config of a run's latest session, in its run directory (JSON: cheap and safe to read)."""


class ResumeError(RuntimeError):
    """A run directory and the ``resume`` setting disagree (e.g. resume=never on a run with checkpoints)."""


class CheckpointReadError(RuntimeError):
    """A checkpoint or weight file that cannot be read (truncated, foreign, or refused as unsafe)."""


class UntrustedCheckpointError(CheckpointReadError):
    """Loading the file would need full unpickling, which can run code it contains, and it is not trusted."""


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
    """Call ``write_fn(file_object)`` on a temporary file, fsync it, then rename it onto ``path``. The
    temporary file is the writer's own (process and thread), so concurrent writers of one path never
    touch each other's bytes: the last rename wins with a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
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


def builtin_enums(obj: Any) -> Any:
    """``obj`` with every ``enum.Enum`` inside dicts, lists and tuples replaced by its value.

    Typed configs hold closed choices as str enums (``common.schema.Choice``); pickled as enums they would
    make a checkpoint that ``weights_only`` loading refuses (the enum class is an arbitrary global), so a
    run could not resume from its own checkpoint. Everything else is returned as it is."""
    if isinstance(obj, enum.Enum):
        return builtin_enums(obj.value)
    if isinstance(obj, dict):
        return {builtin_enums(k): builtin_enums(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(builtin_enums(v) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` with ``torch.save`` (enums stored as their values: :func:`builtin_enums`)."""
    state = builtin_enums(state)
    return atomic_write(path, lambda f: torch.save(state, f))


def _numpy_safe_globals() -> list:
    """numpy arrays and scalars of numeric dtypes (RNG states, replay buffers, thresholds), by exact name.

    Rebuilding one allocates an array of the stated dtype and copies bytes into it; no object dtype (its
    items would be arbitrary objects), no blanket allow of numpy. Pickles from numpy < 2 name the same
    functions under ``numpy.core``, hence the aliases.
    """
    mu = np._core.multiarray
    dtypes = [np.dtypes.BoolDType, np.dtypes.Float16DType, np.dtypes.Float32DType, np.dtypes.Float64DType,
              np.dtypes.Int8DType, np.dtypes.Int16DType, np.dtypes.Int32DType, np.dtypes.Int64DType,
              np.dtypes.UInt8DType, np.dtypes.UInt16DType, np.dtypes.UInt32DType, np.dtypes.UInt64DType]
    return [mu._reconstruct, mu.scalar, np.ndarray, np.dtype, *dtypes,
            (mu._reconstruct, "numpy.core.multiarray._reconstruct"),
            (mu.scalar, "numpy.core.multiarray.scalar")]


SAFE_GLOBALS: list = _numpy_safe_globals()
"""What ``weights_only`` loading accepts beyond torch's own allowlist (tensors, containers, numbers, str)."""

# (trust, how the user says "trust it" in the current entry point); see checkpoint_trust
_TRUST: contextvars.ContextVar[tuple[bool, str]] = contextvars.ContextVar("checkpoint_trust",
                                                                          default=(False, "trust=True"))


@contextlib.contextmanager
def checkpoint_trust(trust: bool, how: str = "trust=True") -> Iterator[None]:
    """Inside the block, loaders called with ``trust=None`` (the default) fully unpickle iff ``trust``.

    Entry points set it once from the user's flag so that every loader below them (a Trainer's resume, a
    run directory's model) follows it, and ``how`` is what a refusal tells the user to pass:
    ``trust_checkpoint=true`` for Hydra apps (:func:`common.hydra_utils.report_user_errors` does it),
    ``--trust-checkpoint`` for argparse tools.
    """
    token = _TRUST.set((bool(trust), how))
    try:
        yield
    finally:
        _TRUST.reset(token)


def trusted(trust: bool | None = None) -> bool:
    """``trust`` if given, else what the enclosing :func:`checkpoint_trust` says (default: not trusted)."""
    return _TRUST.get()[0] if trust is None else bool(trust)


def untrusted_error(path: str | os.PathLike, why: str,
                    head: str = "refused to load {path}") -> UntrustedCheckpointError:
    """The one-line refusal: which file, why, and how to trust it (the current entry point's spelling)."""
    return UntrustedCheckpointError(f"{head.format(path=path)}: {why}; if you made this file yourself or "
                                    f"trust its maker, pass {_TRUST.get()[1]}")


def _refusal(path: Path, err: pickle.UnpicklingError) -> CheckpointReadError:
    msg = str(err)
    names = re.findall(r"GLOBAL ([\w.]+)", msg) + re.findall(r"but got <class '([\w.]+)'>", msg)
    if names:
        return untrusted_error(path, f"it holds {', '.join(dict.fromkeys(names))}, which unpickling would "
                                     "import and call (that can run any code)")
    op = re.search(r"Unsupported operand (\d+)", msg)
    what = f"pickle opcode {op.group(1)}" if op else "an instruction"
    return untrusted_error(path, f"{what} is not allowed by the safe loader (a foreign pickle or a damaged "
                                 "file)", head="checkpoint {path} is unreadable as plain weights")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    trust: bool | None = None) -> Any:
    """Load a file written by :func:`save_checkpoint` or :func:`save_safetensors` (or any plain-weights
    ``.pt``/``.pth``) without running code from it.

    ``trust=True`` (or an enclosing ``checkpoint_trust(True)``) falls back to full unpickling, for a
    file you made yourself that holds other objects; everything else is refused with
    :class:`UntrustedCheckpointError`, whose message names the file and how to trust it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path, map_location)
    try:
        if trusted(trust):  # the explicit trust option: the one place that fully unpickles
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:  # truncated or foreign file: say which one
        raise CheckpointReadError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------- pickle-free exports

_SEP = "/"  # joins nested dict keys in safetensors names (state-dict keys use ".", never "/")


def _split(state: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    rest: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(k, str) or _SEP in k:
            raise TypeError(f"key {prefix}{k!r}: safetensors exports need string keys without '{_SEP}'")
        if torch.is_tensor(v):
            tensors[prefix + k] = v
        elif isinstance(v, dict) and v:
            sub = _split(v, f"{prefix}{k}{_SEP}", tensors)
            if sub:
                rest[k] = sub
        else:
            rest[k] = v
    return rest


def save_safetensors(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a nested dict of tensors and JSON values as ``path`` (safetensors) plus a ``<stem>.json``
    sidecar: nothing in either is pickle, so the files can be shared and loaded without trust.

    Tensors anywhere in the dict tree go to the safetensors file under ``a/b/c`` names; every other
    value must be JSON (numbers, strings, lists, dicts) and goes to the sidecar and to the file's own
    metadata (so the ``.safetensors`` file alone is enough). :func:`load_safetensors` rebuilds the dict.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a safetensors export must end in .safetensors")
    tensors: dict[str, torch.Tensor] = {}
    rest = _split(state, "", tensors)
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():  # contiguous CPU copies; storage shared between entries is duplicated
        v = v.detach().to("cpu").contiguous()
        if v.numel() and v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    try:
        config = json.dumps(rest, indent=1, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"{path}: every non-tensor value of a safetensors export must be JSON ({e})") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(out, tmp, metadata={"format": "pt", "config": config})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(path.with_suffix(".json"), lambda f: f.write(config.encode() + b"\n"))
    return path


def load_safetensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict :func:`save_safetensors` wrote (tensors on ``map_location``); a plain safetensors file
    (e.g. a transformers ``model.safetensors``) gives its flat ``{name: tensor}``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    device = str(map_location)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            state: dict[str, Any] = json.loads(meta["config"]) if "config" in meta else {}
            for name in f.keys():
                *parents, leaf = name.split(_SEP)
                node = state
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = f.get_tensor(name)
    except Exception as e:  # a torn or foreign file (safetensors raises its own SafetensorError)
        raise CheckpointReadError(f"{path} is unreadable as safetensors ({type(e).__name__}: {e})") from e
    return state


def load_export(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                trust: bool | None = None) -> Any:
    """:func:`load_checkpoint` for exported models (heads, nets, embeddings): a ``.safetensors`` export,
    or an older pickle one read as plain weights; refusing the latter names the one-off conversion."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location, trust=trust)
    except UntrustedCheckpointError as e:
        raise UntrustedCheckpointError(
            f"{e}, or convert it once with `python -m common.checkpoint convert {path} "
            f"{path.with_suffix('.safetensors')} --trust-checkpoint`") from None


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike | None = None, *,
                           trust: bool | None = None) -> Path:
    """Rewrite a pickle-format export (``.pt``/``.pth``/``.bin``: a dict of tensors and JSON values) as
    :func:`save_safetensors` files, so that it can be shared and loaded without trust from then on."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    state = load_checkpoint(src, trust=trust)
    if not isinstance(state, dict):
        raise CheckpointReadError(f"{src} holds a {type(state).__name__}, not a dict of tensors")
    try:
        return save_safetensors(dst, state)
    except TypeError as e:
        raise CheckpointReadError(f"{src} cannot be exported as safetensors + JSON: {e}") from e


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
        resume = _resume_mode(resume)
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


# ----------------------------------------------------------------------------------------------------------
# Deciding whether a run may start, before anything is loaded or written


def _resume_mode(resume: Any) -> str:
    """never | auto | the checkpoint path (None, "", "none" and "null" mean never)."""
    return "never" if resume in (None, "", False, "never", "none", "null") else str(resume)


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Every step checkpoint in ``run_dir``, at any depth (a package that trains several nets keeps one
    ``checkpoints/`` folder per net), except under ``run_dir/multirun`` (the sweeps launched under this
    name are runs of their own)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        if Path(dirpath) == run_dir and "multirun" in dirnames:
            dirnames.remove("multirun")
        if os.path.basename(dirpath) == "checkpoints":
            found += [Path(dirpath) / f for f in filenames if _STEP_RE.match(f)]
    return sorted(found)


def write_run_config(run_dir: str | os.PathLike, config: Mapping) -> Path:
    """Store a run's resolved config as ``<run_dir>/resolved_config.json`` (atomically)."""
    payload = json.dumps(config, indent=1, sort_keys=True, default=str).encode()
    return atomic_write(Path(run_dir) / RUN_CONFIG_FILE, lambda f: f.write(payload))


def read_run_config(run_dir: str | os.PathLike) -> dict | None:
    """The config stored by :func:`write_run_config`, or None (a run from before it was kept)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


_ABSENT = "<absent>"


def config_differences(saved: Mapping, now: Mapping, may_change: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) for every setting that differs, except those matching a pattern
    of ``may_change`` (fnmatch: ``logger.*``; a key also covers what is nested under it). Values are
    compared as JSON would store them (tuples = lists, enums = their value); a key only one side has is a
    difference with ``<absent>`` on the other side."""
    patterns = tuple(may_change)
    saved, now = json.loads(json.dumps(saved, default=str)), json.loads(json.dumps(now, default=str))

    def allowed(key: str) -> bool:
        return any(fnmatchcase(key, p) or key.startswith(p + ".") for p in patterns)

    def walk(a: Any, b: Any, prefix: str):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                yield from walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")
        elif a != b and not allowed(prefix[:-1]):
            yield prefix[:-1], a, b

    return list(walk(saved, now, ""))


def refuse_config_changes(saved: Mapping, now: Mapping, may_change: Iterable[str], *, run: str,
                          resume: str = "auto", advice: str | None = None) -> None:
    """Raise :class:`ResumeError` (one line) when ``now`` differs from the ``saved`` config of ``run``
    outside ``may_change``: a resumed run would otherwise continue silently under other settings.
    ``advice`` replaces the default way out named at the end of the message."""
    changed = config_differences(saved, now, may_change)
    if changed:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed)
        advice = advice or ("Resume it with its original settings, or start a new run under another name=... "
                            "(or delete the folder)")
        raise ResumeError(f"resume={resume}: {run} was trained with other settings: {shown}. {advice}")


def check_resume(run_dir: str | os.PathLike, resume: Any, config: Mapping | None = None,
                 may_change: Iterable[str] = ()) -> None:
    """Raise :class:`ResumeError` (one line) if ``resume`` cannot run in ``run_dir``; reads file names and
    ``resolved_config.json`` only, so it answers before any data or model is loaded.

    never: refused when the folder already holds checkpoints (it would overwrite them). auto: when it holds
    checkpoints and the stored config of the run differs from ``config`` outside ``may_change``, refused
    with every differing key (old -> new). A path: the file must exist.
    """
    mode, run_dir = _resume_mode(resume), Path(run_dir)
    if mode == "never":
        found = run_checkpoints(run_dir)
        if found:
            raise ResumeError(f"{run_dir} already holds checkpoints ({len(found)}, e.g. "
                              f"{found[-1].relative_to(run_dir)}). Continue it with resume=auto, or start fresh "
                              "under another name=... (or delete the folder).")
    elif mode == "auto":
        saved = read_run_config(run_dir) if config is not None else None
        if saved is not None and run_checkpoints(run_dir):
            refuse_config_changes(saved, config, may_change, run=str(run_dir))
    elif not Path(mode).is_file():
        raise ResumeError(f"resume={mode}: no such checkpoint file")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.checkpoint convert OLD.pt [NEW.safetensors] [--trust-checkpoint]``."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m common.checkpoint",
                                 description="Convert a pickle-format export to safetensors + JSON.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="OLD.pt -> NEW.safetensors (+ NEW.json)")
    conv.add_argument("src")
    conv.add_argument("dst", nargs="?", default=None, help="default: SRC with the suffix .safetensors")
    conv.add_argument("--trust-checkpoint", action="store_true",
                      help="fully unpickle SRC (it can run code): only for a file you made yourself")
    args = ap.parse_args(argv)
    try:
        with checkpoint_trust(args.trust_checkpoint, "--trust-checkpoint"):
            out = convert_to_safetensors(args.src, args.dst)
    except (CheckpointReadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
