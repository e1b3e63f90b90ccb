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
    return ReproReport(rows=[Row("accuracy", 0.91, paper=0.95, note="toy", split="test")],
                       headline=Row("accuracy", 0.91, paper=0.95), plots=[plot], notes="hello")


def test_run_profiles_writes_report_and_results(tmp_path):
    path = run_profiles("toy", {"smoke": _smoke}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                    "--work-dir", str(tmp_path / "w")])
    md = path.read_text()
    assert "| accuracy | test | 0.95 | 0.91 |  | toy |" in md and "Hardware:" in md and "Command:" in md
    assert "![curve](curve.png)" in md
    res = json.loads((tmp_path / "toy" / "results.smoke.json").read_text())
    assert res["headline"]["value"] == 0.91 and res["profile"] == "smoke" and res["date"]
    assert res["schema_version"] == reproduce.SCHEMA_VERSION and reproduce.validate_results(res) == []


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
    assert rc == 0 and "| `fakepkg` | Fake 2024 | claims | 1.0 | m: 1.5 — no CI (single run) | ok (" in index


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "common.reproduce", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--only" in out.stdout and "--profile" in out.stdout


def test_pipes_in_cells_are_escaped(tmp_path):
    report = ReproReport(rows=[Row("size at |V|=4,928", 1.0, paper_note="a|b")])
    run_profiles("toy", {"smoke": lambda ctx: report}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                         "--work-dir", str(tmp_path / "w")])
    md = (tmp_path / "toy" / "report.md").read_text()
    assert "| size at \\|V\\|=4,928 |  | a\\|b | 1 |  |  |" in md


def test_index_only_rebuilds_from_existing_results(tmp_path):
    run_profiles("fuyou_offload", {"smoke": _smoke}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                      "--work-dir", str(tmp_path / "w")])
    assert reproduce.main(["--profile", "smoke", "--index-only", "--reports-dir", str(tmp_path)]) == 0
    index = (tmp_path / "index.md").read_text()
    assert "| accuracy: 0.91 — no CI (single run) | ok (" in index and "not run" in index


def test_index_shows_the_full_profile_beside_the_current_one(tmp_path):
    for profile in ("smoke", "full"):
        run_profiles("fuyou_offload", {profile: _smoke}, ["--profile", profile, "--reports-dir", str(tmp_path),
                                                          "--work-dir", str(tmp_path / "w" / profile)])
    assert reproduce.main(["--profile", "smoke", "--index-only", "--reports-dir", str(tmp_path)]) == 0
    row = next(line for line in (tmp_path / "index.md").read_text().splitlines() if "`fuyou_offload`" in line)
    assert row.endswith("| accuracy: 0.91 — no CI (single run) ([report](fuyou_offload/report.full.md)) |")


# ----------------------------------------------------------------------------- numeric rows (issue 21, defect 10)
def test_rows_hold_numbers_not_formatted_strings():
    with pytest.raises(TypeError, match="one number per row"):
        Row("accuracy / macro-F1", "0.495 / 0.083")
    with pytest.raises(TypeError, match="paper must be a number"):
        Row("acc", 0.5, paper="98.6 / 97.0")
    with pytest.raises(ValueError, match="ci_method"):
        Row("acc", 0.5, ci_low=0.4, ci_high=0.6)  # an interval typed in by hand, without its method
    with pytest.raises(TypeError):
        Row("acc", 0.5, 0.95)  # everything after value is keyword-only: an old positional paper fails loudly
    r = Row("bytes match", True)
    assert r.value == 1 and r.unit == "bool" and reproduce.format_value(r) == "yes"
    import numpy as np
    assert Row("x", np.float32(0.5)).value == 0.5 and Row("x", float("nan")).value is None


def test_from_seeds_computes_the_t_interval_and_stores_the_seeds():
    from scipy import stats as sps
    vals = [97.33, 97.39, 97.45]
    r = Row.from_seeds("ATIS test intent acc", vals, unit="%", split="test", paper=97.5)
    lo, hi = sps.t.interval(0.95, 2, loc=sum(vals) / 3, scale=sps.sem(vals))
    assert r.value == pytest.approx(97.39) and (r.ci_low, r.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert r.n == 3 and r.n_kind == "seeds" and r.per_seed == vals and r.ci_method == "t"
    assert reproduce.format_value(r) == "97.39 ± 0.15 (n=3)"
    one = Row.from_seeds("acc", [0.8049])
    assert one.ci_low is None and one.n == 1 and reproduce.format_value(one) == "0.8049 (n=1)"
    items = Row.from_items("recovery", [1, 0, 1, 1] * 50)
    assert items.n_kind == "items" and items.ci_method == "bootstrap" and items.per_seed is None
    assert reproduce.format_value(items) == "0.750 [0.690, 0.810] (n=200 items)"
    diff = Row.from_paired("M - B2", [0.81, 0.80, 0.82], [0.80, 0.79, 0.80])
    assert diff.per_seed == pytest.approx([0.01, 0.01, 0.02]) and diff.p_value == pytest.approx(0.25)
    iqm = Row.from_iqm("return IQM", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert iqm.n == 3 and iqm.n_kind == "runs" and iqm.ci_method == "stratified-bootstrap-iqm"


def _results(tmp_path, rows, profile="smoke"):
    run_profiles("toy", {profile: lambda ctx: ReproReport(rows=rows, headline=rows[0])},
                 ["--profile", profile, "--reports-dir", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    return json.loads((tmp_path / "toy" / f"results.{profile}.json").read_text())


def test_a_changed_committed_number_fails_the_comparison(tmp_path):
    rows = [Row.from_seeds("acc", [0.90, 0.91, 0.93], split="test"), Row("steps/s", 120.0, kind="timing"),
            Row("recovery", 0.624, split="heldout"), Row("largest model under 1 GiB", 120.0, kind="memory")]
    new = _results(tmp_path, rows)
    assert all(c.status == "same" for c in reproduce.compare_results(new, new))
    doctored = json.loads(json.dumps(new))
    doctored["rows"][2]["value"] = 0.625  # a committed number that no longer reproduces
    doctored["rows"][1]["value"] = 80.0  # timings are reported, never a failure
    doctored["rows"][0]["ci_high"] += 1e-9  # last-digit noise: within the 1e-6 tolerance
    doctored["rows"][3]["value"] = 0.0  # peak-RSS derived: follows the torch build (CUDA vs CPU), never a failure
    comps = reproduce.compare_results(doctored, new)
    failed = [c for c in comps if c.failed]
    assert [(c.key, c.field) for c in failed] == [("recovery (heldout)", "value")]
    lines = reproduce.comparison_summary("toy", comps)
    assert "toy: recovery (heldout) [value]: committed 0.625, now 0.624 (-0.16%): different" in lines
    assert any("steps/s [value]" in x and "not checked (timing)" in x for x in lines)
    assert any("largest model under 1 GiB [value]" in x and "not checked (memory)" in x for x in lines)
    assert any("acc (test) [ci_high]" in x and "within tolerance" in x for x in lines)
    renamed = json.loads(json.dumps(new))
    renamed["rows"][2]["metric"] = "recovery (old name)"
    statuses = {c.status for c in reproduce.compare_results(renamed, new) if c.failed}
    assert statuses == {"missing", "new row"}


def test_check_exits_1_when_a_committed_number_differs(tmp_path, monkeypatch):
    """`python -m common.reproduce --check` with the package run replaced by a copy of known results."""
    rows = [Row("acc", 0.5, split="test")]
    fresh = _results(tmp_path / "fresh", rows)
    committed = tmp_path / "committed"
    (committed / "fuyou_offload").mkdir(parents=True)
    monkeypatch.setattr(reproduce, "COMMITTED_REPORTS", committed)
    monkeypatch.setattr(reproduce, "package_exists", lambda name: True)

    def fake_run(name, profile, reports_dir, *args, **kw):
        (reports_dir / name).mkdir(parents=True, exist_ok=True)
        (reports_dir / name / f"results.{profile}.json").write_text(json.dumps(fresh))
        return {"status": "ok", "seconds": 0.0, "headline": fresh["headline"]}

    monkeypatch.setattr(reproduce, "run_package", fake_run)
    target = committed / "fuyou_offload" / "results.smoke.json"
    target.write_text(json.dumps(fresh))
    assert reproduce.main(["--check", "--profile", "smoke", "--only", "fuyou_offload"]) == 0
    fresh_changed = json.loads(json.dumps(fresh))
    fresh_changed["rows"][0]["value"] = 0.51
    target.write_text(json.dumps(fresh_changed))
    assert reproduce.main(["--check", "--profile", "smoke", "--only", "fuyou_offload"]) == 1


def test_cpu_of_reads_the_field_or_the_hardware_line_of_older_reports():
    assert reproduce.cpu_of({"cpu": "AMD EPYC", "hardware": "2 cores (Intel(R) Xeon(R) Processor), 1 GiB RAM, x"}) \
        == "AMD EPYC"
    old = {"hardware": "2 cores (Intel(R) Xeon(R) Processor), 23.5 GiB RAM, no GPU"}
    assert reproduce.cpu_of(old) == "Intel(R) Xeon(R) Processor"
    assert reproduce.cpu_of({}) is None
    assert reproduce.cpu_slug("Intel(R) Xeon(R) Processor") == "intel-r-xeon-r-processor"


def test_check_compares_with_the_reference_made_on_the_same_cpu_model(tmp_path, monkeypatch):
    """Stop 37's CI: seeded smoke numbers made on an Intel Xeon differ on an AMD EPYC (oneMKL's kernels), and
    --check compared every machine with the one main reference. Now a package may keep a reference per CPU
    model (written by --cpu-reference) and --check uses the one made on the CPU it runs on."""
    fresh = _results(tmp_path / "fresh", [Row("acc", 0.5, split="test")])
    committed = tmp_path / "committed"
    (committed / "fuyou_offload").mkdir(parents=True)
    monkeypatch.setattr(reproduce, "COMMITTED_REPORTS", committed)
    monkeypatch.setattr(reproduce, "package_exists", lambda name: True)
    cpu = {"model": "AMD EPYC"}
    monkeypatch.setattr(reproduce, "cpu_model", lambda: cpu["model"])
    new_value = {"acc": 0.5}

    def fake_run(name, profile, reports_dir, *args, **kw):
        out = json.loads(json.dumps(fresh))
        out["rows"][0]["value"], out["cpu"] = new_value["acc"], cpu["model"]
        (reports_dir / name).mkdir(parents=True, exist_ok=True)
        (reports_dir / name / f"results.{profile}.json").write_text(json.dumps(out))
        return {"status": "ok", "seconds": 0.0, "headline": out["headline"]}

    monkeypatch.setattr(reproduce, "run_package", fake_run)
    main = json.loads(json.dumps(fresh))
    main["rows"][0]["value"], main["hardware"] = 0.51, "2 cores (Intel(R) Xeon(R) Processor), 23.5 GiB RAM, no GPU"
    main.pop("cpu")  # a report from before the field: the model is read off its hardware line
    (committed / "fuyou_offload" / "results.smoke.json").write_text(json.dumps(main))
    check = ["--check", "--profile", "smoke", "--only", "fuyou_offload"]
    assert reproduce.main(check) == 1  # no reference for the EPYC yet: compared with the Xeon's, which differs
    alt = committed / "fuyou_offload" / "cpu_references" / "results.smoke.amd-epyc.json"
    assert reproduce.main(["--cpu-reference", "--profile", "smoke", "--only", "fuyou_offload"]) == 0
    assert json.loads(alt.read_text())["rows"][0]["value"] == 0.5
    assert reproduce.main(check) == 0  # the EPYC's own reference
    new_value["acc"] = 0.49
    assert reproduce.main(check) == 1  # a change of the code still fails on the EPYC ...
    cpu["model"], new_value["acc"] = "Intel(R) Xeon(R) Processor", 0.51
    assert reproduce.main(check) == 0  # ... and the Xeon still compares with the main reference
    new_value["acc"] = 0.5
    assert reproduce.main(check) == 1
    alt.unlink()  # the main reference made on this model is never shadowed, and agreeing numbers need none
    assert reproduce.main(["--cpu-reference", "--profile", "smoke", "--only", "fuyou_offload"]) == 0
    cpu["model"], new_value["acc"] = "AMD EPYC", 0.51
    assert reproduce.main(["--cpu-reference", "--profile", "smoke", "--only", "fuyou_offload"]) == 0
    assert not alt.exists()


def test_default_reports_go_to_an_untracked_folder_and_commands_are_relative(tmp_path, monkeypatch):
    """Defect 11: reproducing wrote into the tracked reports/ and stored the machine's absolute path."""
    monkeypatch.chdir(tmp_path)
    path = run_profiles("toy", {"smoke": _smoke}, ["--profile", "smoke", "--work-dir", str(tmp_path / "w")])
    assert path == Path("runs/reproduce_reports/toy/report.smoke.md")
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/reproduce_reports/toy/results.json"], cwd=REPO)
    assert ignored.returncode == 0
    res = json.loads((tmp_path / "runs/reproduce_reports/toy/results.smoke.json").read_text())
    assert str(tmp_path) not in res["command"] and "<outside repo>/w" in res["command"]
    inside = reproduce.portable_command("toy", ["--reports-dir", str(REPO / "runs" / "x"), f"--work-dir={REPO}/y"])
    assert inside == "python -m toy.reproduce --reports-dir runs/x --work-dir=y"
    monkeypatch.setattr(reproduce, "REPO_ROOT", tmp_path)  # common.reproduce's default: <repo>/runs/reproduce_reports
    assert reproduce.main(["--profile", "smoke", "--index-only", "--only", "scpo_rl"]) == 0
    assert (tmp_path / "runs" / "reproduce_reports" / "index.md").exists()


def test_a_smaller_profile_never_overwrites_the_full_report_copy(tmp_path):
    """Defect 11: a quick run replaced report.md / results.json, the committed copies of `full`."""
    _results(tmp_path, [Row("acc", 0.9)], profile="full")
    _results(tmp_path, [Row("acc", 0.7)], profile="quick")
    assert json.loads((tmp_path / "toy" / "results.json").read_text())["profile"] == "full"
    assert json.loads((tmp_path / "toy" / "results.quick.json").read_text())["rows"][0]["value"] == 0.7


def test_index_shows_the_interval_and_n(tmp_path):
    run_profiles("fuyou_offload", {"smoke": lambda ctx: ReproReport(
        rows=[], headline=Row.from_seeds("acc", [0.90, 0.91, 0.93]))},
        ["--profile", "smoke", "--reports-dir", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert reproduce.main(["--profile", "smoke", "--index-only", "--reports-dir", str(tmp_path)]) == 0
    assert "| acc: 0.913 ± 0.038 (n=3) | ok (" in (tmp_path / "index.md").read_text()



def test_every_committed_results_file_follows_the_schema():
    files = sorted((REPO / "reports").glob("*/results*.json")) + sorted((REPO / "reports").glob("*/cpu_references/*.json"))
    assert files
    for f in files:
        assert reproduce.validate_results(json.loads(f.read_text())) == [], f


def test_migration_takes_numbers_from_stored_seeds_and_parses_the_rest():
    """tools/migrate_results_v2.py: schema-1 strings become numbers; CIs only from stored per-seed values."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("migrate_results_v2", REPO / "tools" / "migrate_results_v2.py")
    mig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mig)
    cells = {"reuters/M": [{"micro_f1": 0.81}, {"micro_f1": 0.80}, {"micro_f1": 0.82}],
             "reuters/B2": [{"micro_f1": 0.80}, {"micro_f1": 0.79}, {"micro_f1": 0.80}]}
    old = {"package": "meta_multilabel", "profile": "full", "command": "python -m meta_multilabel.reproduce "
           "--profile full --reports-dir /somewhere/else/reports", "date": "d", "hardware": "h", "commit": "c",
           "dirty": False, "wall_seconds": 1.0, "plots": ["/abs/reports/meta_multilabel/a.png"],
           "extra": {"cells": cells},
           "headline": None,
           "rows": [{"metric": "reuters M micro_f1 (test)", "ours": "0.8100 ± 0.0100 (n=3)", "paper": "not retrieved",
                     "note": ""},
                    {"metric": "reuters M micro_f1 (test, at least one label)", "ours": "0.8400 ± 0.0100 (n=3)",
                     "paper": "not retrieved", "note": "reported apart"},
                    {"metric": "reuters: M − B2 micro_f1 (test, paired over seeds)", "ours": "0.0133 ± 0.0058 (n=3)",
                     "paper": "not retrieved", "note": ""}]}
    new = mig.migrate(old, REPO / "reports")
    assert reproduce.validate_results(new) == [] and new["command"].endswith("--reports-dir reports")
    plain, variant, paired = new["rows"]
    assert plain["per_seed"] == [0.81, 0.80, 0.82] and plain["ci_method"] == "t" and plain["ci_low"] < 0.81
    assert variant["value"] == 0.84 and variant["n"] == 3 and variant["ci_low"] is None  # seeds not stored
    assert paired["per_seed"] == pytest.approx([0.01, 0.01, 0.02]) and new["headline"]["metric"] == paired["metric"]
    old["rows"][0]["ours"] = "0.9000 ± 0.0100 (n=3)"  # a printed mean the stored seeds do not give
    with pytest.raises(ValueError, match="does not print as"):
        mig.migrate(old, REPO / "reports")


def test_a_run_of_some_packages_keeps_the_others_in_the_index(tmp_path, monkeypatch):
    """`make reproduce ONLY=x UPDATE=1` must not drop every other package from the committed index."""
    run_profiles("fuyou_offload", {"smoke": _smoke}, ["--profile", "smoke", "--reports-dir", str(tmp_path),
                                                      "--work-dir", str(tmp_path / "w")])
    monkeypatch.setattr(reproduce, "package_exists", lambda name: True)
    monkeypatch.setattr(reproduce, "run_package", lambda name, *a, **k: {"status": "ok", "seconds": 1.0,
                                                                          "headline": Row("m", 2.0).to_dict()})
    reproduce.main(["--profile", "smoke", "--only", "scpo_rl", "--reports-dir", str(tmp_path)])
    index = (tmp_path / "index.md").read_text()
    assert "| m: 2 — no CI (single run) | ok (1 s)" in index and "| accuracy: 0.91 — no CI (single run) | ok (" in index
