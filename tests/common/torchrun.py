"""Run a package's Hydra app under ``torchrun --nproc_per_node 2`` (gloo on CPU) and record what ranks > 0
wrote: the helper of every ``tests/<pkg>/test_torchrun.py``.

The record comes from an audit hook (PEP 578) that a ``sitecustomize`` module installs in every worker whose
``RANK`` is not 0: each file such a rank opens for writing, renames or removes under the watched folder is
appended to a log. Python-level writes are all seen (``open``, ``os.open``, ``torch.save``, ``np.save``,
TensorBoard, JSON dumps); writes made inside C/Rust extensions are not, so the tests also count files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"

SITECUSTOMIZE = textwrap.dedent('''
    import os, sys
    _root = os.environ.get("AUDIT_WRITES_ROOT")
    if _root and os.environ.get("RANK", "0") != "0":
        _root = os.path.realpath(_root)
        _fd = os.open(os.environ["AUDIT_WRITES_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def _under_root(path):
            try:
                p = os.path.realpath(os.fsdecode(os.fspath(path)))
            except TypeError:
                return None  # a file descriptor
            return p if p == _root or p.startswith(_root + os.sep) else None

        def _hook(event, args):
            hit = None
            if event == "open" and args[0] is not None:
                mode, flags = args[1], args[2] or 0
                writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE)
                hit = _under_root(args[0]) if writing else None
            elif event in ("os.rename", "os.remove", "shutil.rmtree", "os.truncate"):
                hit = _under_root(args[0])
            if hit:
                os.write(_fd, f"rank{os.environ['RANK']} {event} {hit}\\n".encode())

        sys.addaudithook(_hook)
''')


@dataclass
class TorchrunResult:
    returncode: int
    output: str
    seconds: float
    rank_writes: list[str]  # what ranks > 0 wrote under the watched folder (empty: only rank 0 wrote)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(module: str, overrides: list[str], tmp_path: Path, *, watch: Path | None = None,
                 nproc: int = 2, timeout: int = 600, module_flag: bool = True) -> TorchrunResult:
    """``python -m torch.distributed.run --nproc_per_node <nproc> -m <module> <overrides>`` from the repo
    root, on CPU, with the rank > 0 write audit over ``watch`` (default: ``tmp_path``). ``module_flag=False``
    runs a script path instead of a module."""
    audit_dir = tmp_path / "_audit"
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "_rank_writes.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(audit_dir), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "AUDIT_WRITES_ROOT": str(watch or tmp_path), "AUDIT_WRITES_LOG": str(log),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if "PAPERS_DATA_DIR" not in env and DATA.is_dir():
        env["PAPERS_DATA_DIR"] = str(DATA)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), *(["-m"] if module_flag else []), module, *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.time() - t0
    writes = log.read_text().splitlines() if log.exists() else []
    return TorchrunResult(proc.returncode, proc.stdout + proc.stderr, seconds, writes)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
