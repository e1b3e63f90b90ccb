"""What a run directory records about itself: git commit, package versions, hardware, wall-clock."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent
_VERSIONED = ["torch", "torchvision", "numpy", "hydra-core", "transformers", "tokenizers", "datasets",
              "gymnasium", "mujoco", "rdkit", "scikit-learn", "peft", "lpips", "torchmetrics", "seqeval"]


def git_commit(repo: Path = _REPO_ROOT) -> dict[str, Any]:
    """The HEAD commit and whether the work tree has uncommitted changes (None outside a checkout)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        # reports/ is output, not code: a reproduce run that updates the committed reports (package after
        # package) must not mark the later packages' reports as made from uncommitted code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": sha or None, "dirty": dirty if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: list[str] = _VERSIONED) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    """The CPU model name ('AMD EPYC', 'Intel(R) Xeon(R) Processor'): /proc/cpuinfo, else platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def hardware_summary() -> str:
    """One line for reports, e.g. '2 cores (AMD EPYC ...), 23.4 GiB, no GPU'."""
    hw = hardware()
    gpu = ", ".join(hw["gpu"]) if hw["gpu"] else "no GPU"
    return f"{hw['cores']} cores ({hw['cpu']}), {hw['memory_gib']} GiB RAM, {gpu}"


def collect_run_info() -> dict[str, Any]:
    from common.lock import environment_status

    return {
        **git_commit(),
        "versions": package_versions(),
        # the pinned environment (requirements.lock): its hash and whether this venv matches it
        "environment": environment_status(),
        "hardware": hardware(),
        "argv": sys.argv,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class RunInfo:
    """Writes ``run_info.json`` at the start of a run and adds the end time and wall-clock at the end.

    A resumed run appends a new entry to ``sessions`` so the total wall-clock stays visible.
    """

    def __init__(self, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None, enabled: bool = True):
        self.path = Path(run_dir) / "run_info.json"
        self.enabled = enabled
        self._t0 = time.time()
        if not enabled:
            return
        prior = json.loads(self.path.read_text()) if self.path.exists() else {}
        info = collect_run_info()
        info.update(extra or {})
        self.data = {**info, "sessions": prior.get("sessions", [])}
        self.data["sessions"].append({"started_at": info["started_at"], "commit": info["commit"]})
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def finish(self, **fields: Any) -> None:
        if not self.enabled:
            return
        wall = time.time() - self._t0
        self.data["sessions"][-1].update(
            ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), wall_seconds=round(wall, 2))
        self.data["wall_seconds_total"] = round(sum(s.get("wall_seconds", 0) for s in self.data["sessions"]), 2)
        self.data.update(fields)
        self._write()


def write_run_info(run_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> RunInfo:
    """Start recording; call ``.finish()`` on the returned object when the run ends."""
    return RunInfo(run_dir, extra)
