"""Loading a file someone else made never runs code (issue 29): the core of common.checkpoint.

A planted pickle (its unpickling creates a marker file) is refused in one line by ``load_checkpoint``,
the Hydra shells (``resume=<path>``) and the converter; our own checkpoints (RNG states, numpy arrays,
optimizer and scheduler states) and safetensors exports load without trust; and no full unpickling
is left in the source tree outside the explicit trust branch.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import (
    SAFE_GLOBALS,
    UntrustedCheckpointError,
    capture_rng_state,
    checkpoint_trust,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_safetensors,
)
from common.checkpoint import main as checkpoint_cli
from common.schema import Choice
from tests.evil_pickle import assert_refused, plant, run_main

REPO = Path(__file__).resolve().parents[2]


def test_planted_pickle_is_refused_in_one_line_and_never_runs(tmp_path):
    evil = tmp_path / "step_9.pt"
    marker = plant(evil)
    with pytest.raises(UntrustedCheckpointError) as exc:
        load_checkpoint(evil)
    line = assert_refused(str(exc.value), evil, marker, how="trust=True")
    assert "\n" not in line and re.search(r"(builtins|io)\.open", line)  # names what it would call


def test_trust_is_explicit_and_then_unpickles_fully(tmp_path):
    evil = tmp_path / "mine.pt"
    marker = plant(evil)
    with checkpoint_trust(False, "--trust-checkpoint"), pytest.raises(UntrustedCheckpointError) as exc:
        load_checkpoint(evil)
    assert_refused(str(exc.value), evil, marker, how="--trust-checkpoint")
    load_checkpoint(evil, trust=True)  # the user vouches for it: the pickle runs, as asked
    assert marker.exists()
    marker.unlink()
    with checkpoint_trust(True):
        load_checkpoint(evil)
    assert marker.exists()


def test_own_checkpoints_round_trip_without_trust(tmp_path):
    """Everything our packages put in a checkpoint loads under weights_only, bit for bit."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    pcg = np.random.default_rng(3)
    state = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "adv_rng": pcg.bit_generator.state,  # PCG64: 128-bit python ints
        "replay": {"obs": np.random.rand(5, 3), "done": np.zeros(5, np.uint8), "pos": 5},
        "prev_tau": np.full(4, 0.5), "score": np.float64(0.25), "n": np.int64(7),
        "history": [{"episode": 1, "mu": [0.1, 0.2]}], "eval_history": [(1, 2.0)], "config": {"lr": 1e-3},
        "population": np.ones((2, 8), np.uint8), "decode_cache": {b"\x01\x02": "CCO", b"\x03": None},
        "layout": [("w", 6)], "best": None,
    }
    state["rng"] = capture_rng_state()
    save_checkpoint(tmp_path / "own.pt", state)
    a = (random.random(), np.random.rand(), torch.rand(3))
    back = load_checkpoint(tmp_path / "own.pt")
    restore_rng_state(back["rng"])
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert back["adv_rng"] == state["adv_rng"] and back["decode_cache"] == state["decode_cache"]
    assert np.array_equal(back["replay"]["obs"], state["replay"]["obs"]) and back["score"] == 0.25
    assert back["prev_tau"].dtype == np.float64 and type(back["n"]) is np.int64
    assert back["optimizer"]["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


def test_allowlist_is_minimal(tmp_path):
    """numeric numpy only: object arrays (arbitrary items) and other classes stay refused."""
    names = {getattr(g, "__name__", str(g)) for g in SAFE_GLOBALS if not isinstance(g, tuple)}
    assert "ObjectDType" not in names and len(SAFE_GLOBALS) <= 20
    torch.save({"a": np.array([1, "x"], dtype=object)}, tmp_path / "obj.pt")
    torch.save({"p": Path("/etc")}, tmp_path / "path.pt")
    for f in ("obj.pt", "path.pt"):
        with pytest.raises(UntrustedCheckpointError, match="refused"):
            load_checkpoint(tmp_path / f)


def test_safetensors_export_round_trip_and_converter(tmp_path, monkeypatch, capsys):
    w = torch.randn(3, 4)
    state = {"nets": {"act": {"0.weight": w, "0.bias": torch.zeros(3)}}, "n_templates": 91,
             "feat": {"nbits": 16, "radius": 2}, "variant": "lin"}
    path = save_safetensors(tmp_path / "m.safetensors", state)
    assert (tmp_path / "m.json").is_file() and b"pickle" not in path.read_bytes()[:8]
    back = load_checkpoint(path)
    assert back["n_templates"] == 91 and back["feat"] == state["feat"]
    assert torch.equal(back["nets"]["act"]["0.weight"], w)
    # an older pickle export of plain weights converts without trust ...
    torch.save(state, tmp_path / "old.pt")
    assert checkpoint_cli(["convert", str(tmp_path / "old.pt")]) == 0
    assert torch.equal(load_checkpoint(tmp_path / "old.safetensors")["nets"]["act"]["0.weight"], w)
    # ... and a planted one is refused (one line naming the flag), unless the user trusts it
    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    err = run_main(lambda: checkpoint_cli(), ["convert", str(evil)], monkeypatch, capsys)
    assert_refused(err, evil, marker, how="--trust-checkpoint")


def test_hydra_resume_path_refuses_a_planted_pickle(tmp_path, monkeypatch, capsys):
    """``resume=<path>`` of a Hydra shell (the digits template; each package has its own test):
    one line, status 1, the payload never runs; ``trust_checkpoint=true`` reaches the loader."""
    from common.examples import digits

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = [f"paths.output_dir={tmp_path}", "name=d", f"resume={evil}", "trainer.max_steps=2",
            "trainer.progress_bar=false", "logger.tensorboard=false"]
    err = run_main(digits.main, argv, monkeypatch, capsys)
    assert_refused(err, evil, marker)
    # trusted, it unpickles (as asked), then the fake checkpoint does not fit the model: status 1 too
    run_main(digits.main, [*argv, "trust_checkpoint=true"], monkeypatch, capsys)
    assert marker.exists()


# ------------------------------------------------------------------------ no unsafe loading left

UNSAFE = [
    (r"weights_only\s*=\s*False", "torch.load(..., weights_only=False)"),
    (r"\btorch\.load\(", "torch.load outside common.checkpoint (use load_checkpoint / load_export)"),
    (r"\bpickle\.loads?\(|\bUnpickler\(", "pickle.load"),
    (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
    (r"\b(joblib|dill|cloudpickle|shelve)\.load|read_pickle\(", "pickle-based loader"),
    (r"\byaml\.(unsafe_)?load\(", "yaml.load"),
    (r"trust_remote_code\s*=\s*True", "trust_remote_code=True"),
]
# the one full unpickling in the code base: load_checkpoint's explicit trust branch
TRUST_BRANCH = ("common/checkpoint.py",
                "            return torch.load(path, map_location=map_location, weights_only=False)")


def _source_files() -> list[Path]:
    skip = {".venv", "tests", "runs", "reports", "data", ".git"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def test_no_unsafe_loading_outside_the_trust_branch():
    hits = []
    for path in _source_files():
        rel = path.relative_to(REPO).as_posix()
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in UNSAFE:
                if not re.search(pattern, line):
                    continue
                if rel == "common/checkpoint.py" and "torch.load" in what:
                    continue  # where loading lives; its one weights_only=False is checked below
                hits.append(f"{rel}:{i}: {what}: {line.strip()}")
        if rel == "common/checkpoint.py":
            text = path.read_text()
            unsafe = [ln for ln in text.splitlines() if re.search(r"weights_only\s*=\s*False", ln)]
            assert unsafe == [TRUST_BRANCH[1]], unsafe
            before = text.split(TRUST_BRANCH[1])[0].splitlines()[-1]
            assert "if trusted(trust):" in before, before
    assert not hits, "\n".join(hits)


class Loss(Choice):
    """A closed choice as typed configs hold them (module level, as in a package's config.py)."""

    ce = "ce"
    gce = "gce"


def test_a_checkpoint_holding_config_enums_loads_weights_only(tmp_path):
    """Typed configs hold closed choices as str enums; a checkpoint that pickled them was refused by the
    weights-only loader, so label_efficient_seg, meta_multilabel, synthesis_pathways and joint_bert_nlu
    runs could not resume from their own checkpoints."""
    from common.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"config": {"loss": Loss.gce, "pair": (Loss.ce, 1)}, "step": 3})
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["config"] == {"loss": "gce", "pair": ("ce", 1)}
    assert type(back["config"]["loss"]) is str
