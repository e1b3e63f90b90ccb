"""Small glue between Hydra shells and the Hydra-free library code."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from common.checkpoint import CheckpointReadError, ResumeError, checkpoint_trust
from common.data import DataFormatError, DatasetNotFoundError
from common.pretrained import PretrainedNotFoundError

T = TypeVar("T")

# Errors caused by the user's input or setup (missing data or weights, malformed files, a resume conflict):
# printed as one line, no traceback. Packages subclass these for their own assets.
USER_ERRORS: tuple[type[BaseException], ...] = (DatasetNotFoundError, DataFormatError, ResumeError,
                                               PretrainedNotFoundError, CheckpointReadError)


def run_dir_from(cfg: DictConfig) -> Path:
    """The run directory: Hydra's output dir inside a Hydra app (multirun-aware), else paths/name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside @hydra.main
        return Path(cfg.paths.output_dir) / cfg.name


def to_dataclass(node: Any, cls: type[T]) -> T:
    """Build dataclass ``cls`` from an OmegaConf node or dict (unknown keys are an error)."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**data)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain containers (for checkpoints and run_info.json)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra task: a user error (missing dataset, malformed file, resume conflict, NaN loss, a
    checkpoint refused as unsafe) exits with status 1 and one clear line instead of a traceback.

    The task runs under ``checkpoint_trust(cfg.trust_checkpoint)``: every checkpoint it loads is loaded
    without unpickling code unless the user passed ``trust_checkpoint=true``."""
    from common.trainer import NonFiniteLossError

    errors = USER_ERRORS + (NonFiniteLossError,)

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        missing = sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else []
        if missing:
            print(f"error: missing required value(s): {', '.join(missing)}; set them as key=value overrides",
                  file=sys.stderr)
            sys.exit(1)
        trust = bool(cfg.get("trust_checkpoint", False)) if isinstance(cfg, DictConfig) else False
        try:
            with checkpoint_trust(trust, "trust_checkpoint=true"):
                return fn(cfg, *args, **kwargs)
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
