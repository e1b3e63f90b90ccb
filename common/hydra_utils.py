"""Small glue between Hydra shells and the Hydra-free library code.

Every package's ``train.py`` decorates its task with :func:`report_user_errors`, which first validates the
run (:func:`validate_run`: the shared trainer options, the ``resume`` setting against what the run folder
holds) before any data or model is loaded or anything is written, then writes ``<run_dir>/.hydra/*.yaml``
(which Hydra itself no longer writes: ``hydra.output_subdir`` is null in ``RUN_LAYOUT``) and
``<run_dir>/resolved_config.json``, then runs the task. A user error at any point prints one line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from common.checkpoint import (
    CheckpointReadError,
    ResumeError,
    check_resume,
    checkpoint_trust,
    write_run_config,
)
from common.config import RESUME_MAY_CHANGE, ConfigError, check_trainer_config
from common.data import DataFormatError, DatasetNotFoundError
from common.pretrained import PretrainedNotFoundError
from common.schema import report_config_errors_in_one_line, to_object

T = TypeVar("T")

# Errors caused by the user's input or setup (missing data or weights, malformed files, a resume conflict):
# printed as one line, no traceback. Packages subclass these for their own assets.
USER_ERRORS: tuple[type[BaseException], ...] = (DatasetNotFoundError, DataFormatError, ResumeError,
                                               PretrainedNotFoundError, ConfigError, CheckpointReadError)


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


def validate_run(cfg: DictConfig, run_dir: str | os.PathLike) -> None:
    """Raise a user error (one line) if this run cannot start: a shared trainer option with a value the core
    cannot run with (``common.config.check_trainer_config``), or a ``resume`` setting the run folder
    refuses (``common.checkpoint.check_resume``: resume=never on a folder with checkpoints, resume=auto with
    settings that differ from the run's outside ``RESUME_MAY_CHANGE``). Reads nothing but file names and
    ``resolved_config.json``: it answers in moments, before any data or model is loaded."""
    if "trainer" in cfg:
        check_trainer_config(cfg.trainer)
    check_resume(run_dir, cfg.get("resume", "never"), to_plain(cfg), RESUME_MAY_CHANGE)


def _write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra would have written before the task (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``, the same content), plus ``resolved_config.json`` that the next ``resume=auto``
    compares with. Rank 0 only under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().output_subdir is None:
        hydra_dir = Path(HydraConfig.get().runtime.output_dir) / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (hydra_dir / "hydra.yaml").write_text(OmegaConf.to_yaml(HydraConfig.instance().cfg))
        (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(HydraConfig.get().overrides.task))
    write_run_config(run_dir, to_plain(cfg))


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra task: validate the run before anything is loaded or written (the package's root
    schema, then :func:`validate_run`), write the run's config files, then run the task. A user error (a bad
    config value, a missing value, an option the core cannot run with, a resume conflict, a missing dataset,
    a malformed file, a NaN loss) exits with status 1 and one clear line instead of a traceback. Hydra's own
    composition errors (a bad override, an unknown key or option) are printed in one line too.

    The task runs under ``checkpoint_trust(cfg.trust_checkpoint)``: every checkpoint it loads is loaded
    without unpickling code unless the user passed ``trust_checkpoint=true``."""
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

        trust = bool(cfg.get("trust_checkpoint", False)) if isinstance(cfg, DictConfig) else False
        try:
            if isinstance(cfg, DictConfig):
                to_object(cfg)  # the package's root schema: every value and every __post_init__ check
            if isinstance(cfg, DictConfig) and "paths" in cfg and "name" in cfg:
                run_dir = run_dir_from(cfg)
                validate_run(cfg, run_dir)
                _write_run_files(cfg, run_dir)
            with checkpoint_trust(trust, "trust_checkpoint=true"):
                return fn(cfg, *args, **kwargs)
        except USER_ERRORS + (NonFiniteLossError,) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
