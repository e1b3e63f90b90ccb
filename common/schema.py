"""Typed configs for the Hydra shells: the root schema every package's ``conf/config.yaml`` starts from, the
registration of a package's schemas under ``schema/<pkg>/...``, and the one-line report of a bad value.

A package's schema module (``<pkg>/config.py``) declares one dataclass per config group and a root dataclass
that subclasses :class:`RootConfig` (``trainer``, ``paths``, ``logger``, ``name``, ``resume`` plus its own
groups and root keys), then calls :func:`register`. Its ``conf/config.yaml`` lists the root schema first and
every option of a group starts from the group's schema::

    defaults:                                  # conf/config.yaml
      - /schema/<pkg>/config@_here_
      - run_layout
      ...
    defaults: [/schema/<pkg>/<group>@_here_, _self_]   # conf/<group>/<option>.yaml

So Hydra checks every value while it composes (a float that is not a number, an unknown key, a method that
does not exist), before anything is loaded, and ``OmegaConf.to_object(cfg)`` gives the root dataclass.
Closed choices are :class:`Choice` enums: OmegaConf accepts a member's name and rejects anything else, and a
member is a ``str`` (``Method.full == "full"``, ``f"{Method.full}"`` is ``full``), so library code that
compares or formats strings keeps working.
The schemas live under ``schema/<pkg>`` because Hydra's ConfigStore is global: a group ``method`` stored
here would become a group of every other app in the process.
"""

from __future__ import annotations

import enum
import os
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config import ConfigError, LoggerConfig, PathsConfig, TrainerConfig


class Choice(str, enum.Enum):
    """Base of a closed choice of a config (a method, a loss, a schedule): subclass it with members whose
    name is their value (``enum.auto()`` does it). A member is a ``str``; ``str()`` and f-strings give the
    value (as ``enum.StrEnum`` of Python 3.11, which Python 3.10 lacks)."""

    @staticmethod
    def _generate_next_value_(name, start, count, last_values):
        return name

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass
class AppConfig:
    """The keys every Hydra app of the repository has (from ``run_layout``, ``paths`` and ``logger``)."""

    name: str = "run"
    """Run name: the run directory is <paths.output_dir>/<name>."""
    resume: str = "never"
    """never (refuse a run directory that holds checkpoints), auto (continue from the newest) or a checkpoint
    path."""
    trust_checkpoint: bool = False
    """Fully unpickle checkpoints this run loads (can run code from the file): only for files you made
    yourself or whose maker you trust. Default: weights-only loading (README "Loading files from others")."""
    paths: PathsConfig = field(default_factory=PathsConfig)
    """Where data is read from and runs are written to."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Metric sinks (metrics.jsonl, TensorBoard)."""


@dataclass
class RootConfig(AppConfig):
    """An app that trains: :class:`AppConfig` plus the shared ``trainer`` options."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The shared training options (common.config.TrainerConfig)."""


def register(pkg: str, root: type, groups: dict[str, type | dict[str, type]] | None = None, *,
             name: str = "config") -> None:
    """Store ``root`` as ``schema/<pkg>/<name>`` (the primary config's schema) and each group's schema as
    ``schema/<pkg>/<group>``. A group whose options have different keys (one task each) maps to
    ``{option: dataclass}``, stored as ``schema/<pkg>/<group>/<option>``. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(group=f"schema/{pkg}", name=name, node=root)
    for group, node in (groups or {}).items():
        if isinstance(node, dict):
            for option, cls in node.items():
                cs.store(group=f"schema/{pkg}/{group}", name=option, node=cls)
        else:
            cs.store(group=f"schema/{pkg}", name=group, node=node)


def check_one_of(key: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``key`` and ``value`` unless ``value`` is in ``allowed`` (validates the
    few fields that OmegaConf cannot type, such as a method that may also be a list of methods)."""
    if value not in allowed:
        raise ValueError(f"{key}={value}: expected one of {', '.join(map(str, allowed))}")


# ----------------------------------------------------------------------------- errors in one line

_NOISE = ("full_key:", "object_type=", "reference_type=", "To append to your config use", "Set the environment")


def one_line(e: BaseException) -> str:
    """A Hydra composition error (and the OmegaConf error behind it) as one line that names the key and
    the value: ``rl.gamma=high: Value 'high' of type 'str' could not be converted to Float``."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException):
        lines += [s.strip() for s in str(cause).splitlines() if s.strip()]
    if "Config search path:" in lines:  # a missing option: the search path is noise
        lines = lines[:lines.index("Config search path:")]
    head = ""
    if lines and (m := re.fullmatch(r"Error merging override (.+)", lines[0])):
        head, lines = m[1], lines[1:]
    elif lines and (m := re.fullmatch(r"Could not override '(.+)'\.", lines[0])):
        add = next((s for s in lines if s.startswith("To append to your config use +")), "")
        head = add.removeprefix("To append to your config use +") or m[1]
        lines = ["unknown key: " + s for s in lines if " not in " in s][:1] or lines[1:]
    text, options = [], []
    for s in lines:
        if s.startswith(_NOISE):
            continue
        if options or s.startswith("Available options in"):
            options.append(s)
        else:
            text.append(s)
    if options:
        text.append(options[0] + " " + ", ".join(options[1:]))
    body = "; ".join(text)
    return f"{head}: {body}" if head else body


def report_config_errors_in_one_line() -> None:
    """Make Hydra print a composition error (a bad override value, an unknown key, an unknown option of a
    group, a bad override syntax) as ``error: <one line>`` with exit status 1, instead of its own 4-12 lines
    and the hint about HYDRA_FULL_ERROR (which still shows the full trace). Errors raised by the task
    function itself are left to Hydra. Safe to call more than once."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import CompactHydraException

    if getattr(hydra_utils.run_and_report, "one_line", False):
        return
    original = hydra_utils.run_and_report

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except CompactHydraException as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"error: {one_line(e)}", file=sys.stderr)
                sys.exit(1)

        return original(guarded)

    run_and_report.one_line = True
    hydra_utils.run_and_report = run_and_report


def _undeclared_keys(node, prefix: str = "") -> list[tuple[str, type]]:
    """(full key, dataclass) of every key of a typed node that its dataclass does not declare."""
    out = []
    if isinstance(node, DictConfig):
        cls = OmegaConf.get_type(node)
        declared = {f.name for f in fields(cls)} if is_dataclass(cls) else None
        for key in node.keys():
            full = f"{prefix}{key}"
            if declared is not None and key not in declared:
                out.append((full, cls))
            elif not OmegaConf.is_missing(node, key) and not OmegaConf.is_interpolation(node, key):
                out += _undeclared_keys(node._get_node(key), full + ".")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_missing(node, i) and not OmegaConf.is_interpolation(node, i):
                out += _undeclared_keys(node._get_node(i), f"{prefix.rstrip('.')}[{i}].")
    return out


def to_object(cfg: DictConfig):
    """The root dataclass of a composed config (``OmegaConf.to_object``), so that every value is checked
    and every ``__post_init__`` validation runs; ``None`` for an untyped config. A bad value raises
    :class:`ConfigError` with one line naming the key."""
    if not is_dataclass(OmegaConf.get_type(cfg)):
        return None
    undeclared = _undeclared_keys(cfg)
    if undeclared:  # OmegaConf.to_object would drop them silently (added with +key=value or open_dict)
        key, cls = undeclared[0]
        raise ConfigError(f"{key}: unknown key (not a field of {cls.__name__}); declare it in the schema")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ValueError) else None
        msg = next((s.strip() for s in str(cause or e).splitlines() if s.strip()), type(e).__name__)
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {msg}" if key and cause is None else msg) from None
    except ValueError as e:  # a __post_init__ check of a dataclass that OmegaConf did not wrap
        raise ConfigError(str(e)) from None


__all__ = ["Choice", "AppConfig", "RootConfig", "register", "check_one_of", "one_line",
           "report_config_errors_in_one_line", "ConfigError", "to_object"]
