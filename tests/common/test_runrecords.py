"""common.runrecords: finished runs survive a new machine (save to git, restore), checkpoints stay out."""

import json

import pytest

from common import runrecords
from common.checkpoint import read_run_config


def _run(root, name, finished=True, extra=b""):
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "step_100.pt").write_bytes(b"x" * 1000)
    (d / "resolved_config.json").write_text(json.dumps({"trainer": {"seed": 1}}))
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    (d / "tb").mkdir()
    (d / "tb" / "events").write_bytes(b"ev")
    if extra:
        (d / "big.npz").write_bytes(extra)
    if finished:
        (d / "final_metrics.json").write_text(json.dumps({"test/score": 0.5}))
    return d


def test_save_keeps_finished_runs_without_checkpoints_and_restore_brings_them_back(tmp_path):
    runs, rec = tmp_path / "runs", tmp_path / "records"
    _run(runs / "full_rows_1600", "a_s0")
    _run(runs / "full_rows_1600", "a_s1", finished=False)
    _run(runs / "budget_curve", "c_s0", extra=b"y" * 50)
    out = runrecords.save(runs, rec, max_bytes=40)
    assert out["saved"] == ["budget_curve/c_s0", "full_rows_1600/a_s0"]
    assert out["left_out"] == ["budget_curve/c_s0/big.npz (50 bytes)"]
    assert not (rec / "full_rows_1600" / "a_s1").exists()          # unfinished: not a record
    assert not (rec / "full_rows_1600" / "a_s0" / "checkpoints").exists()
    assert not (rec / "full_rows_1600" / "a_s0" / "tb").exists()    # the same numbers as metrics.jsonl
    assert (rec / "full_rows_1600" / "a_s0" / "metrics.jsonl").read_text() == '{"step": 1}\n'

    new = tmp_path / "new_machine"
    _run(new / "full_rows_1600", "a_s0", finished=False)            # begun again here, not finished
    out = runrecords.restore(rec, new)
    assert sorted(out["restored"]) == ["budget_curve/c_s0", "full_rows_1600/a_s0"]
    a = new / "full_rows_1600" / "a_s0"
    assert json.loads((a / "final_metrics.json").read_text()) == {"test/score": 0.5}
    assert read_run_config(a) == {"trainer": {"seed": 1}}
    assert not (a / "checkpoints").exists()                         # the stale partial run was replaced


def test_restore_never_overwrites_a_run_finished_here(tmp_path):
    runs, rec = tmp_path / "runs", tmp_path / "records"
    _run(runs, "r_s0")
    runrecords.save(runs, rec)
    (runs / "r_s0" / "final_metrics.json").write_text(json.dumps({"test/score": 0.9}))
    out = runrecords.restore(rec, runs)
    assert out == {"restored": [], "kept": ["r_s0"]}
    assert json.loads((runs / "r_s0" / "final_metrics.json").read_text()) == {"test/score": 0.9}


def test_cli_names_a_missing_folder(tmp_path, capsys):
    assert runrecords.main(["save", str(tmp_path / "nope"), str(tmp_path / "rec")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    runs = tmp_path / "runs"
    _run(runs, "r_s0")
    assert runrecords.main(["save", str(runs), str(tmp_path / "rec")]) == 0
    assert "saved 1 finished runs" in capsys.readouterr().out


def test_finished_runs_ignores_done_files_inside_checkpoints(tmp_path):
    d = _run(tmp_path, "r_s0", finished=False)
    (d / "checkpoints" / "final_metrics.json").write_text("{}")
    assert runrecords.finished_runs(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        runrecords.finished_runs(tmp_path / "missing")
