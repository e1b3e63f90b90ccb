"""Readers of the corpora that several packages share (Reuters-21578 today).

A reader that only one package uses lives in that package; a corpus read by two or more lives here, so
that every package sees the same documents, splits and errors.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from common.data import DataFormatError, dataset_path

REUTERS_RELPATH = "reuters21578/reuters.tar.gz"
REUTERS_SOURCE = ("the NLTK data repository (nltk_data: corpora/reuters.zip, Reuters-21578 ApteMod), "
                  "repacked as reuters21578/reuters.tar.gz with the reuters/ folder at its root")


@dataclass(frozen=True)
class ReutersDoc:
    fileid: str  # "training/9865" or "test/14826", as in cats.txt
    split: str  # "train" or "test"
    categories: tuple[str, ...]  # sorted
    text: str  # title line, then the body, as stored


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one ApteMod document carries a stray Latin-1 byte
        return raw.decode("latin-1")


def _read_members(path: Path) -> dict[str, bytes]:
    """All files of an NLTK-layout corpus (``.tar.gz`` or folder), keyed relative to its cats.txt."""
    if path.is_dir():
        root = path if (path / "cats.txt").is_file() else path / "reuters"
        if not (root / "cats.txt").is_file():
            raise DataFormatError(path, "folder has no cats.txt (expected the NLTK reuters layout)")
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    try:
        # One sequential pass: random access into a gzip stream re-decompresses from the start each time.
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFormatError(path, f"not a readable tar archive ({e})") from None
    cats = [n for n in members if n == "cats.txt" or n.endswith("/cats.txt")]
    if not cats:
        raise DataFormatError(path, "archive has no cats.txt (expected the NLTK reuters layout)")
    prefix = cats[0][: -len("cats.txt")]
    return {n[len(prefix):]: b for n, b in members.items() if n.startswith(prefix)}


def read_reuters(path: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                 splits: tuple[str, ...] = ("train", "test")) -> list[ReutersDoc]:
    """Reuters-21578 ApteMod in the NLTK layout: every document listed in ``cats.txt``, in its order.

    ``path`` is the archive or folder; None finds ``reuters21578/reuters.tar.gz`` under the data root.
    ApteMod has 7,769 train and 3,019 test documents over 90 categories. Any malformed ``cats.txt``
    line, unknown split or missing document raises :class:`DataFormatError` naming the line.
    """
    if path is None:
        path = dataset_path("Reuters-21578", REUTERS_RELPATH, source=REUTERS_SOURCE, data_dir=data_dir)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Reuters-21578 not found at {path}; get it from {REUTERS_SOURCE}")
    files = _read_members(path)
    if "cats.txt" not in files:
        raise DataFormatError(path, "no cats.txt")
    where = f"{path}!cats.txt"
    docs, seen = [], set()
    for lineno, line in enumerate(_decode(files["cats.txt"]).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        fileid, cats = fields[0], fields[1:]
        split_dir, _, docid = fileid.partition("/")
        split = {"training": "train", "test": "test"}.get(split_dir)
        if split is None or not docid:
            raise DataFormatError(where, f"expected 'training/<id>' or 'test/<id>', got {fileid!r}", line=lineno)
        if not cats:
            raise DataFormatError(where, f"document {fileid!r} has no category", line=lineno)
        if fileid in seen:
            raise DataFormatError(where, f"document {fileid!r} listed twice", line=lineno)
        seen.add(fileid)
        if split not in splits:
            continue
        if fileid not in files:
            raise DataFormatError(where, f"document {fileid!r} is listed but missing from the corpus", line=lineno)
        docs.append(ReutersDoc(fileid, split, tuple(sorted(set(cats))), _decode(files[fileid])))
    if not docs:
        raise DataFormatError(where, f"no documents of splits {splits}")
    return docs
