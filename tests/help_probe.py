"""Run ``python -m <module> --help`` in a fresh interpreter and report which heavy modules it imported: the
help of a command line must answer without loading torch and friends (a few seconds, not twenty)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """import runpy, sys
sys.argv = [{mod!r}, "--help"]
try:
    runpy.run_module({mod!r}, run_name="__main__")
except SystemExit:
    pass
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def help_output(module: str, heavy: Sequence[str]) -> tuple[str, str]:
    """(the help text, the last line ``HEAVY [...]``: which of ``heavy`` the help path imported)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(mod=module, heavy=tuple(heavy))], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *text, last = proc.stdout.rstrip().splitlines()
    return "\n".join(text), last
