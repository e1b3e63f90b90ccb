"""Data-root lookup, checksum verification and the two errors every dataset reader raises.

The readers themselves live in their packages; they call :func:`dataset_path` to find a file and raise
:class:`DataFormatError` on bad content, so users always see which file is wrong and why.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_DIR_ENV = "PAPERS_DATA_DIR"
"""Environment variable that points at a data root (checked after an explicit override)."""

_REPO_ROOT = Path(__file__).resolve().parent.parent


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing: the message names the dataset, the path looked at and its source."""


class DataFormatError(ValueError):
    """A data file exists but its content is wrong: names the file, the line (if any) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None):
        self.path, self.problem, self.line = Path(path), problem, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class ChecksumError(DataFormatError):
    """A file's SHA-256 differs from the expected one."""


def candidate_data_dirs(override: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data roots in resolution order, each with a label saying where it came from."""
    if override not in (None, ""):
        return [("paths.data_dir override", Path(override).expanduser())]
    out: list[tuple[str, Path]] = []
    if os.environ.get(DATA_DIR_ENV):
        out.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV]).expanduser()))
    out.append(("./data", Path.cwd() / "data"))
    out.append(("../shared/data", _REPO_ROOT.parent / "shared" / "data"))
    if Path.cwd().resolve() != _REPO_ROOT:
        out.append(("../shared/data (from cwd)", Path.cwd().parent / "shared" / "data"))
    return out


def resolve_data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data root: an explicit override, else ``$PAPERS_DATA_DIR``, else ``./data``, else ``../shared/data``.

    An explicit override or environment variable is used even when it does not exist (a typo must not
    silently fall through to another root); the two defaults are taken only if they exist.
    """
    cands = candidate_data_dirs(override)
    if override not in (None, "") or os.environ.get(DATA_DIR_ENV):
        return cands[0][1]
    for _, path in cands:
        if path.is_dir():
            return path
    tried = ", ".join(f"{label} ({path})" for label, path in cands)
    raise DatasetNotFoundError(
        f"no data root found; tried {tried}. Set paths.data_dir=... or ${DATA_DIR_ENV}."
    )


def dataset_path(
    name: str,
    relpath: str | os.PathLike,
    *,
    source: str,
    data_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> Path:
    """Path of ``relpath`` under the data root, or a :class:`DatasetNotFoundError` that says what to do.

    Args:
        name: human name of the dataset ("ATIS", "Reuters-21578").
        relpath: file or folder relative to the data root.
        source: the public place to get it from (URL or package), quoted in the error.
        data_dir: explicit data root (``cfg.paths.data_dir``); None follows the resolution order.
        sha256: if given, the file's checksum is verified (files only).
    """
    try:
        root = resolve_data_dir(data_dir)
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"dataset {name!r} ({relpath}) not found: {e} Get it from {source}.") from None
    path = root / relpath
    if not path.exists():
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: looked at {path} (data root from "
            f"{_root_label(data_dir)}). Get it from {source} and place it there, or point "
            f"paths.data_dir / ${DATA_DIR_ENV} at a folder holding {relpath}."
        )
    if sha256 is not None:
        verify_checksum(path, sha256)
    return path


def _root_label(data_dir) -> str:
    return candidate_data_dirs(data_dir)[0][0] if (data_dir or os.environ.get(DATA_DIR_ENV)) else "defaults"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, expected_sha256: str) -> None:
    """Raise :class:`ChecksumError` if the file's SHA-256 is not ``expected_sha256``."""
    got = sha256_file(path)
    if got != expected_sha256.lower():
        raise ChecksumError(path, f"SHA-256 mismatch: expected {expected_sha256}, got {got} "
                                  "(file corrupted or a different version)")
