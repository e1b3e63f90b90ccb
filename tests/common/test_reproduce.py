"""The reproduce framework: a profile writes its report; the index lists every package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import reproduce
from common.reproduce import ReproReport, Row, run_profiles

REPO = Path(__file__).resolve().parents[2]


def _smoke(ctx):
    plot = ctx.out_dir / "curve.png"
    plot.write_bytes(b"\x89PNG")
    return ReproReport(rows=[Row("accuracy", 0.91, paper=0.95, note="toy")],
                       headline=Row("accuracy", 0.91, paper=0.95), plots=[plot], notes="hello")


def test_run_profiles_writes_report_and_results(tmp_path):
    path = run_profiles("toy", {"smoke": _smoke}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                    "--work-dir", str(tmp_path / "w")])
    md = path.read_text()
    assert "| accuracy | 0.95 | 0.91 | toy |" in md and "Hardware:" in md and "Command:" in md
    assert "![curve](curve.png)" in md
    res = json.loads((tmp_path / "toy" / "results.smoke.json").read_text())
    assert res["headline"]["ours"] == 0.91 and res["profile"] == "smoke" and res["date"]


def test_jobs_reaches_the_profile_and_must_be_positive(tmp_path):
    seen = []

    def profile(ctx):
        seen.append(ctx.jobs)
        return ReproReport(rows=[Row("m", 1.0)])

    args = ["--profile", "smoke", "--reports-dir", str(tmp_path), "--work-dir", str(tmp_path / "w")]
    run_profiles("toy", {"smoke": profile}, args)
    run_profiles("toy", {"smoke": profile}, args + ["--jobs", "1"])
    assert seen == [None, 1]  # None: the profile keeps its own number of processes
    with pytest.raises(SystemExit) as err:
        run_profiles("toy", {"smoke": profile}, args + ["--jobs", "0"])
    assert err.value.code == 2


def test_index_lists_missing_packages_as_not_implemented(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "package_exists", lambda name: False)
    rc = reproduce.main(["--profile", "smoke", "--reports-dir", str(tmp_path)])
    index = (tmp_path / "index.md").read_text()
    assert rc == 0
    for info in reproduce.PACKAGES:
        assert f"| `{info.name}` |" in index
    assert index.count("not implemented") == len(reproduce.PACKAGES)


def test_index_runs_an_implemented_package(tmp_path, monkeypatch):
    # A fake package on the path, run through the real subprocess machinery.
    pkg = tmp_path / "src" / "fakepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "reproduce.py").write_text(
        "from common.reproduce import ReproReport, Row, run_profiles\n"
        "if __name__ == '__main__':\n"
        "    run_profiles('fakepkg', {'smoke': lambda ctx: ReproReport([Row('m', 1.5)], headline=Row('m', 1.5))})\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'src'}:{REPO}")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(reproduce, "PACKAGES", [reproduce.PackageInfo("fakepkg", "Fake 2024", "claims", "1.0")])
    monkeypatch.setattr(reproduce, "REPO_ROOT", tmp_path)
    rc = reproduce.main(["--only", "fakepkg", "--profile", "smoke", "--reports-dir", str(tmp_path / "rep")])
    index = (tmp_path / "rep" / "index.md").read_text()
    assert rc == 0 and "| `fakepkg` | Fake 2024 | claims | 1.0 | m: 1.5 | ok (" in index


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "common.reproduce", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--only" in out.stdout and "--profile" in out.stdout


def test_pipes_in_cells_are_escaped(tmp_path):
    report = ReproReport(rows=[Row("size at |V|=4,928", 1.0, paper="a|b")])
    run_profiles("toy", {"smoke": lambda ctx: report}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                         "--work-dir", str(tmp_path / "w")])
    md = (tmp_path / "toy" / "report.md").read_text()
    assert "| size at \\|V\\|=4,928 | a\\|b | 1 |  |" in md


def test_index_only_rebuilds_from_existing_results(tmp_path):
    run_profiles("fuyou_offload", {"smoke": _smoke}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                      "--work-dir", str(tmp_path / "w")])
    assert reproduce.main(["--profile", "smoke", "--index-only", "--reports-dir", str(tmp_path)]) == 0
    index = (tmp_path / "index.md").read_text()
    assert "| accuracy: 0.91 | ok (" in index and "not run" in index


def test_index_shows_the_full_profile_beside_the_current_one(tmp_path):
    for profile in ("smoke", "full"):
        run_profiles("fuyou_offload", {profile: _smoke}, ["--profile", profile, "--reports-dir", str(tmp_path),
                                                          "--work-dir", str(tmp_path / "w" / profile)])
    assert reproduce.main(["--profile", "smoke", "--index-only", "--reports-dir", str(tmp_path)]) == 0
    row = next(line for line in (tmp_path / "index.md").read_text().splitlines() if "`fuyou_offload`" in line)
    assert row.endswith("| accuracy: 0.91 ([report](fuyou_offload/report.full.md)) |")
    other = next(line for line in (tmp_path / "index.md").read_text().splitlines() if "`scpo_rl`" in line)
    assert other.endswith("| — |")
