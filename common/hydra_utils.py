"""Small glue between Hydra shells and the Hydra-free library code."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from common.checkpoint import ResumeError
from common.data import DataFormatError, DatasetNotFoundError
from common.pretrained import PretrainedNotFoundError
from common.schema import ConfigError, report_config_errors_in_one_line, to_object

T = TypeVar("T")

# Errors caused by the user's input or setup (missing data or weights, malformed files, a resume conflict):
# printed as one line, no traceback. Packages subclass these for their own assets.
USER_ERRORS: tuple[type[BaseException], ...] = (DatasetNotFoundError, DataFormatError, ResumeError,
                                               PretrainedNotFoundError, ConfigError)


def run_dir_from(cfg: DictConfig) -> Path:
    """The run directory: Hydra's output dir inside a Hydra app (multirun-aware), else paths/name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside @hydra.main
        return Path(cfg.paths.output_dir) / cfg.name


def to_dataclass(node: Any, cls: type[T]) -> T:
    """Build dataclass ``cls`` from an OmegaConf node or dict (unknown keys are an error). A node typed by
    ``cls`` itself (a schema) converts with ``OmegaConf.to_object``, nested dataclasses included."""
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) is cls:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**data)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain containers (for checkpoints and run_info.json); closed choices (enum
    members) become their names, so a checkpoint holds only builtin types."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra task: a user error (a bad config value, missing dataset, malformed file, resume
    conflict, NaN loss) exits with status 1 and one clear line instead of a traceback. Hydra's own
    composition errors (a bad override, an unknown key or option) are printed in one line too."""
    report_config_errors_in_one_line()

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        missing = sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else []
        if missing:
            print(f"error: missing required value(s): {', '.join(missing)}; set them as key=value overrides",
                  file=sys.stderr)
            sys.exit(1)
        # imported here, not at decoration: common.trainer loads tensorboard and more, so --help stays fast
        from common.trainer import NonFiniteLossError

        try:
            if isinstance(cfg, DictConfig):
                to_object(cfg)  # the package's root schema: every value and every __post_init__ check
            return fn(cfg, *args, **kwargs)
        except USER_ERRORS + (NonFiniteLossError,) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
