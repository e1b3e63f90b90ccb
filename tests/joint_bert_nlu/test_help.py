"""``--help`` of the command lines answers without importing torch or transformers (issue #27, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """import runpy, sys
sys.argv = [{mod!r}, "--help"]
try:
    runpy.run_module({mod!r}, run_name="__main__")
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("torch", "transformers", "seqeval", "sklearn") if m in sys.modules))
"""


def help_output(module: str) -> tuple[str, str]:
    """(the help text, the last line: which heavy modules the help path imported)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(mod=module)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *text, last = proc.stdout.rstrip().splitlines()
    return "\n".join(text), last


@pytest.mark.parametrize("module, expect", [("joint_bert_nlu.train", "== Configuration groups =="),
                                            ("joint_bert_nlu.predict", "--ood-threshold")])
def test_help_imports_neither_torch_nor_transformers(module, expect):
    text, heavy = help_output(module)
    assert expect in text and heavy == "HEAVY []"
