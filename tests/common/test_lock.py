"""The pinned environment: the venv matches requirements.lock, and a drift is reported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.lock import (
    LOCK_PATH,
    LockFormatError,
    differences,
    environment_status,
    installed,
    lock_hash,
    read_lock,
    render_lock,
)
from common.runinfo import write_run_info

REPO = Path(__file__).resolve().parents[2]


def test_installed_environment_is_exactly_the_lock():
    """What `make test` installed (pip freeze, torch/torchvision included) equals requirements.lock."""
    from common.lock import extra_only_pins

    lock, env = read_lock(), installed()
    assert {"torch", "torchvision", "transformers", "hydra-core", "rdkit"} <= set(lock)
    assert differences(lock, env, extra_only_pins()) == [], "the venv drifted from requirements.lock: `make clean-venv test`"


def test_differences_name_each_drift():
    lock = {"torch": "2.14.1", "numpy": "2.4.6", "pip": "26.3"}
    env = {"torch": "2.13.0", "numpy": "2.4.6", "stray": "1.0"}  # pip missing: a bootstrap package, no diff
    assert differences(lock, env) == ["stray: installed 1.0, not in the lock", "torch: locked 2.14.1, installed 2.13.0"]
    assert differences({"six": "1.0"}, {}) == ["six: locked 1.0, not installed"]


def test_lock_round_trips_and_hash_ignores_comments_and_order(tmp_path):
    env = {"b-pkg": "2.0", "a_pkg": "1.0"}
    path = tmp_path / "lock"
    path.write_text(render_lock(env))
    assert read_lock(path) == {"a-pkg": "1.0", "b-pkg": "2.0"}  # names normalised (PEP 503)
    shuffled = tmp_path / "lock2"
    shuffled.write_text("# other comment\nb-pkg==2.0\n\na-pkg==1.0\n")
    assert lock_hash(path) == lock_hash(shuffled)
    moved = tmp_path / "lock3"
    moved.write_text("a-pkg==1.0\nb-pkg==2.1\n")
    assert lock_hash(moved) != lock_hash(path)


def test_malformed_lock_names_the_line(tmp_path):
    bad = tmp_path / "lock"
    bad.write_text("torch==2.14.1\nnumpy>=2\n")
    with pytest.raises(LockFormatError, match=r"lock:2: expected name==version, got 'numpy>=2'"):
        read_lock(bad)
    assert lock_hash(tmp_path / "missing") is None


def test_run_info_records_the_lock_hash(tmp_path):
    write_run_info(tmp_path).finish()
    env = json.loads((tmp_path / "run_info.json").read_text())["environment"]
    assert env["lock_sha256"] == lock_hash() and len(env["lock_sha256"]) == 64
    assert env["matches_lock"] is True and environment_status()["lock_differences"] == []


def test_check_cli_passes_here_and_makefile_installs_with_the_lock():
    proc = subprocess.run([sys.executable, "-m", "common.lock", "check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    makefile = (REPO / "Makefile").read_text()
    assert "-c $(LOCK) -e" in makefile and "common.lock check" in makefile and LOCK_PATH.name in makefile


def test_reproduce_check_names_a_report_made_under_another_lock():
    from common.reproduce import lock_difference, lock_line

    here = {"lock_sha256": lock_hash(), "matches_lock": True}
    assert lock_difference(dict(here), dict(here)) is None
    assert "another lock" in lock_difference({"lock_sha256": "0" * 64, "matches_lock": True}, here)
    assert "predates requirements.lock" in lock_difference({}, here)
    assert "did not match" in lock_difference({**here, "matches_lock": False}, here)
    assert lock_line(here).startswith("requirements.lock ") and lock_line({}) == "lock not recorded"


def test_extra_only_pins_may_be_missing_but_must_match_when_installed(tmp_path):
    """Extras outside `all` (deepspeed) are locked too but not installed by `make venv`."""
    from common.lock import extra_only_pins, pyproject_extras

    path = tmp_path / "lock"
    path.write_text(render_lock({"torch": "2.14.1", "deepspeed": "0.18.0"}, base={"torch": "2.14.1"}))
    assert "deepspeed==0.18.0  # extra-only" in path.read_text() and "torch==2.14.1\n" in path.read_text()
    optional = extra_only_pins(path)
    assert optional == {"deepspeed"}
    assert differences(read_lock(path), {"torch": "2.14.1"}, optional) == []
    assert differences(read_lock(path), {"torch": "2.14.1", "deepspeed": "0.17"}, optional) == [
        "deepspeed: locked 0.18.0, installed 0.17"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[project.optional-dependencies]\n'
                         'a = []\nb = []\nds = ["deepspeed"]\nall = ["x[a,b]"]\n')
    assert pyproject_extras(pyproject, outside_all=True) == ["ds"]
    assert pyproject_extras(pyproject) == ["a", "all", "b", "ds"]
