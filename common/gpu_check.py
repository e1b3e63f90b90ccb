"""``python -m common.gpu_check`` (``make gpu-check``): the first GPU run, prepared as one command.

The GPU machine this project can borrow (one H200, Python 3.12, torch 2.11 and common libraries, no
network, 64 MiB of files per command, ``../shared`` absent) lacks Hydra, gymnasium, rdkit and the rest;
``python -m common.gpu_bundle`` builds them here into ``.gpu_bundle/`` (carried along). This entry point
then, within a hard time budget (default 270 s, per-step timeouts):

1. env: Python, torch, CUDA, driver and device; without CUDA it prints one line and exits 0, installing
   nothing;
2. install: the bundle's wheels this Python lacks, into ``/tmp/gpu_site`` with ``pip install --no-index
   --no-deps --target`` (never over torch or anything preinstalled), prepended to the steps' PYTHONPATH;
3. probe: bf16 / fp32 / tf32 matmul TFLOP/s, pinned H2D / D2H, pageable H2D and on-device copy bandwidth,
   and which SDPA backends run (the physical limits the benchmarks compare with);
4. ``pytest -m gpu`` over every test file that uses the ``gpu`` marker;
5. a few-step CUDA smoke of every package (``<pkg>.train experiment=smoke trainer.device=cuda``, data from
   the bundle), plus the shared Trainer's bf16 path on the digits example, several at a time;
6. the GPU benchmarks (``BENCHES`` below and any ``<pkg>/bench.py`` defining ``GPU_CHECK_ARGS``).

It writes ``reports/gpu/report.md`` and ``results.json`` (numbers as numbers) and copies them with every
step's log to ``$OUT/gpu_check/`` when ``$OUT`` is set. Exit status: 0 when every step passed (or no CUDA
is visible), 1 when a step failed, timed out or found no time left, 2 for a bundle that cannot be used.

Only the standard library is imported here: it must start where Hydra and the rest are not installed yet.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from common import gpu_bundle as gb

REPO = gb.REPO
DEFAULT_BUDGET_S = 270.0
REPORT_RESERVE_S = 5.0
"""Seconds kept back from the budget to write the report."""
MIN_STEP_S = 5.0
"""A step that would get less than this is not started (reported as not_run)."""
DEFAULT_SITE = Path("/tmp/gpu_site")
WORK_DIR = REPO / "runs" / "gpu_check"
"""Run directories and logs of the steps (runs/ is git-ignored; on a disk: fuyou refuses tmpfs)."""
DEFAULT_REPORT_DIR = REPO / "reports" / "gpu"
MARK = "GPU_CHECK"
"""Prefix of the machine-readable lines a step prints for the check."""
TAIL_LINES = 25

TIMEOUTS = {"probe": 45.0, "pytest": 150.0, "smoke": 100.0, "bench": 60.0}
"""Per-step limits in seconds (each also capped by what is left of the budget)."""

NO_DEVICE_OPTION = {"meta_multilabel": "no device option: the sparse linear model and meta-learner run on the CPU"}
"""Packages whose smoke cannot be pointed at CUDA; they still run (on the CPU) so the check covers them."""
EXTRA_SMOKES = (("common.examples.digits", ("trainer.precision=bf16", "trainer.max_epochs=2"),
                 "the shared Trainer with bf16 autocast"),)
BENCHES = {"synthesis_pathways": ["--rxn-device", "cuda"]}
"""GPU benchmarks: package -> arguments of ``python -m <pkg>.bench`` (a JSON object on stdout). A bench.py
that defines a module-level ``GPU_CHECK_ARGS = [...]`` joins (or replaces its entry) without editing this."""

STATUSES = ("passed", "failed", "timeout", "not_run", "skipped")


@dataclass
class Step:
    name: str
    """Unique, e.g. ``smoke:fuyou_offload``."""
    kind: str
    """probe | pytest | smoke | bench."""
    argv: list[str]
    """Arguments after the Python executable."""
    timeout: float
    note: str = ""
    expects_cuda: bool = False
    """A smoke that must initialise CUDA: exiting 0 without doing so is a failure (it silently ran on the CPU)."""


@dataclass
class StepResult:
    name: str
    kind: str
    status: str
    """passed | failed | timeout | not_run (no budget left) | skipped (with ``note``)."""
    seconds: float = 0.0
    returncode: int | None = None
    command: str = ""
    note: str = ""
    cuda_peak_bytes: int | None = None
    tail: str = ""
    numbers: list[dict] = field(default_factory=list)
    """[{"name", "value" (a number), "unit"}]."""
    tests: dict[str, int] = field(default_factory=dict)
    """pytest: passed / failed / errors / skipped counts."""


# ------------------------------------------------------------------------------------------------ plan


def packages_with_smoke(repo: Path = REPO) -> list[str]:
    """Every package folder with a ``train.py`` and a ``conf/experiment/smoke.yaml``: new packages join."""
    return sorted(p.name for p in repo.iterdir()
                  if (p / "train.py").is_file() and (p / "conf" / "experiment" / "smoke.yaml").is_file())


def gpu_test_files(repo: Path = REPO) -> list[str]:
    """Test files that use the ``gpu`` marker (``pytest.mark.gpu`` in a decorator, ``pytestmark`` or a
    param). Passing only these to pytest keeps unrelated modules (and their imports) out of collection."""
    files = []
    for p in sorted((repo / "tests").rglob("test_*.py")):
        try:
            tree = ast.parse(p.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            files.append(str(p.relative_to(repo)))  # let pytest report it
            continue
        if any(isinstance(n, ast.Attribute) and n.attr == "gpu" and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(tree)):
            files.append(str(p.relative_to(repo)))
    return files


def discovered_benches(repo: Path = REPO) -> dict[str, list[str]]:
    """``BENCHES`` plus every ``<pkg>/bench.py`` with a module-level ``GPU_CHECK_ARGS`` list of strings
    (read with ``ast``: nothing is imported)."""
    out = {k: list(v) for k, v in BENCHES.items()}
    for bench in sorted(repo.glob("*/bench.py")):
        try:
            tree = ast.parse(bench.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GPU_CHECK_ARGS"
                                                     for t in node.targets)):
                value = ast.literal_eval(node.value)
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    out[bench.parent.name] = value
    return dict(sorted(out.items()))


def build_steps(device: str = "cuda", repo: Path = REPO, work: Path = WORK_DIR,
                timeouts: dict[str, float] | None = None) -> list[Step]:
    """The ordered plan: probe, pytest -m gpu, one smoke per package (+ extras), the benchmarks.

    ``device="cpu"`` is the rehearsal here: the same commands on the CPU, CUDA-only steps skipped.
    """
    t = {**TIMEOUTS, **(timeouts or {})}
    steps = [Step("probe", "probe", ["-m", "common.gpu_check", "--exec-probe"], t["probe"],
                  "" if device == "cuda" else "skipped: needs CUDA")]
    files = gpu_test_files(repo)
    steps.append(Step("pytest-gpu", "pytest",
                      ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                       f"--junitxml={work / 'pytest_gpu.xml'}", *files], t["pytest"],
                      "" if files else "skipped: no test file uses the gpu marker"))
    for pkg in packages_with_smoke(repo):
        dev = [] if pkg in NO_DEVICE_OPTION else [f"trainer.device={device}"]
        steps.append(Step(f"smoke:{pkg}", "smoke",
                          ["-m", "common.gpu_check", "--exec-module", f"{pkg}.train", "experiment=smoke", *dev,
                           f"paths.output_dir={work / pkg}", f"name={pkg}"], t["smoke"], NO_DEVICE_OPTION.get(pkg, ""),
                          expects_cuda=bool(dev) and device == "cuda"))
    for module, extra, note in EXTRA_SMOKES:
        name = module.rsplit(".", 1)[-1]
        steps.append(Step(f"smoke:{name}", "smoke",
                          ["-m", "common.gpu_check", "--exec-module", module, f"trainer.device={device}", *extra,
                           f"paths.output_dir={work / name}", f"name={name}"], t["smoke"], note,
                          expects_cuda=device == "cuda"))
    for pkg, args in discovered_benches(repo).items():
        steps.append(Step(f"bench:{pkg}", "bench", ["-m", f"{pkg}.bench", *args], t["bench"],
                          "" if device == "cuda" else "skipped: a CUDA benchmark"))
    return steps


def select_steps(steps: list[Step], only: list[str] | None) -> list[Step]:
    """Steps whose name contains one of ``only`` (all when ``only`` is empty)."""
    return [s for s in steps if not only or any(o in s.name for o in only)]


# ------------------------------------------------------------------------------------------------ bundle


def read_manifest(bundle: Path) -> dict:
    path = bundle / gb.MANIFEST
    if not path.is_file():
        raise gb.BundleError(f"{bundle}: no bundle ({gb.MANIFEST} missing); build it here with `make gpu-bundle` "
                             "and carry .gpu_bundle, or pass --no-bundle where everything is installed")
    return json.loads(path.read_text())


def bundle_wheels(bundle: Path) -> list[Path]:
    return sorted((bundle / "wheels").glob("*.whl"))


def installed_dists(exclude: Path | None = None) -> dict[str, str]:
    """Normalized name -> version of what this Python has, ignoring anything under ``exclude``."""
    from importlib import metadata

    paths = [p for p in sys.path if not (exclude and str(p).startswith(str(exclude)))]
    out = {}
    for d in metadata.distributions(path=paths):
        name = d.metadata.get("Name")
        if name:
            out.setdefault(gb.normalize(name), d.version)
    return out


def wheels_to_install(wheels: list[Path], installed: dict[str, str]) -> tuple[list[Path], dict[str, str]]:
    """(wheels to install, {dist: preinstalled version} kept as they are). torch and CUDA are refused."""
    todo, kept = [], {}
    for w in wheels:
        dist, _ = gb.wheel_dist(w.name)
        if gb.never_bundled(dist):
            raise gb.BundleError(f"{w.name}: the GPU check never installs torch or CUDA libraries")
        if dist in installed:
            kept[dist] = installed[dist]
        else:
            todo.append(w)
    return todo, kept


def install_command(python: str, wheels: list[Path], site: Path) -> list[str]:
    """pip from the bundle only: no index, no dependency resolution, into a separate target folder."""
    for w in wheels:
        if gb.never_bundled(gb.wheel_dist(w.name)[0]):
            raise gb.BundleError(f"{w.name}: the GPU check never installs torch or CUDA libraries")
    return [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]


def unzip_wheels(wheels: list[Path], site: Path) -> None:
    """Fallback where pip is missing: a wheel's files, ``.data/{purelib,platlib}`` moved to the root."""
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if len(parts) > 2 and parts[0].endswith(".data"):
                    if parts[1] not in ("purelib", "platlib"):
                        continue
                    parts = parts[2:]
                target = site.joinpath(*parts)
                if info.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(info))
                if info.external_attr >> 16 & 0o111:
                    target.chmod(0o755)


def install_bundle(bundle: Path, site: Path, python: str, timeout: float) -> tuple[StepResult, list[dict]]:
    """Install what this Python lacks; returns the step and one row per bundled wheel for the report."""
    t0 = time.perf_counter()
    manifest = read_manifest(bundle)
    wheels = bundle_wheels(bundle)
    todo, kept = wheels_to_install(wheels, installed_dists(exclude=site))
    rows = []
    for w in wheels:
        dist, version = gb.wheel_dist(w.name)
        rows.append({"dist": dist, "bundle_version": version,
                     "status": f"preinstalled {kept[dist]} kept" if dist in kept else "installed"})
    stamp = site / ".gpu_check_install.json"
    want = {"manifest": manifest.get("built"), "wheels": sorted(w.name for w in todo)}
    cmd = install_command(python, todo, site)
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return StepResult("install", "install", "passed", time.perf_counter() - t0, 0, shlex.join(cmd[:10]) + " ...",
                          f"reused {site} (same bundle)"), rows
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    note = f"{len(todo)} wheels installed, {len(kept)} preinstalled kept"
    if not todo:
        rc, out = 0, ""
    elif subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc, out = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            return StepResult("install", "install", "timeout", time.perf_counter() - t0, None, shlex.join(cmd)), rows
    else:
        unzip_wheels(todo, site)
        rc, out, note = 0, "", note + " (pip missing: wheels unzipped)"
    if rc == 0:
        stamp.write_text(json.dumps(want))
    return StepResult("install", "install", "passed" if rc == 0 else "failed", time.perf_counter() - t0, rc,
                      shlex.join(cmd[:11]) + f" ... ({len(todo)} wheels)", note, tail=_tail(out)), rows


# ------------------------------------------------------------------------------------------------ run


def step_env(site: Path | None, bundle: Path | None) -> dict[str, str]:
    """The environment of every step: the repo and the installed bundle first on PYTHONPATH, the bundle's
    data as the data root, nothing from the network."""
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(site)] if site else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if bundle is not None and (bundle / "data").is_dir():
        env["PAPERS_DATA_DIR"] = str(bundle / "data")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _tail(text: str, lines: int = TAIL_LINES, chars: int = 3000) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def _run_one(step: Step, python: str, env: dict[str, str], deadline: float, log_dir: Path) -> StepResult:
    cmd = [python, *step.argv]
    res = StepResult(step.name, step.kind, "not_run", command=shlex.join(cmd), note=step.note)
    if step.note.startswith("skipped"):
        res.status = "skipped"
        return res
    left = deadline - time.monotonic()
    if left < MIN_STEP_S:
        res.note = f"no time left in the budget ({max(left, 0):.0f} s)"
        return res
    timeout = min(step.timeout, left)
    log = log_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", step.name) + ".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            res.returncode = proc.wait(timeout=timeout)
            res.status = "passed" if res.returncode == 0 else "failed"
            if step.kind == "pytest" and res.returncode == 5:  # pytest: no test collected
                res.status, res.note = "skipped", "no gpu-marked test was collected"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group, started above
            proc.wait()
            res.status, res.note = "timeout", f"killed after {timeout:.0f} s" + (f"; {step.note}" if step.note else "")
    res.seconds = time.perf_counter() - t0
    out = log.read_text(errors="replace")
    res.tail = _tail(out)
    parse_output(res, out, step)
    if step.expects_cuda and res.status == "passed" and not res.cuda_peak_bytes:
        res.status, res.note = "failed", "exited 0 but never allocated CUDA memory (ran on the CPU?)"
    return res


def parse_output(res: StepResult, out: str, step: Step) -> None:
    """Numbers and counts from a step's output: the CUDA peak line of ``--exec-module``, the probe's JSON
    line, a bench's JSON object, pytest's junit file."""
    m = re.findall(rf"^{MARK} cuda_peak_bytes=(\d+|none)$", out, flags=re.M)
    if m:
        res.cuda_peak_bytes = None if m[-1] == "none" else int(m[-1])
    if step.kind == "probe":
        for line in out.splitlines():
            if line.startswith(f"{MARK} probe "):
                doc = json.loads(line[len(f"{MARK} probe "):])
                res.numbers += doc["numbers"]
                res.note = "; ".join(f"{k}: {v}" for k, v in doc["info"].items())
    elif step.kind == "bench":
        obj = last_json_object(out)
        if obj is not None:
            res.numbers += flatten_numbers(obj, prefix=step.name.split(":", 1)[-1])
    elif step.kind == "pytest":
        junit = next((a.split("=", 1)[1] for a in step.argv if a.startswith("--junitxml=")), None)
        if junit and Path(junit).is_file():
            res.tests = junit_counts(Path(junit))


def last_json_object(text: str) -> dict | None:
    """The last JSON object printed (benchmarks print one, possibly after log lines)."""
    starts = [m.start() for m in re.finditer(r"^\{", text, flags=re.M)]
    for s in reversed(starts):
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[s:])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def flatten_numbers(obj, prefix: str) -> list[dict]:
    """Every numeric leaf as {"name": "a.b.c", "value": x, "unit": ""} (booleans and strings left out)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += flatten_numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append({"name": prefix, "value": float(obj), "unit": _unit(prefix)})
    return out


def _unit(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    for key, unit in (("per_second", "1/s"), ("seconds", "s"), ("tflops", "TFLOP/s"), ("gb_s", "GB/s"),
                      ("bytes", "B"), ("_ms", "ms")):
        if key in leaf:
            return unit
    return ""


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        key = ("failed" if "failure" in kinds else "errors" if "error" in kinds
               else "skipped" if "skipped" in kinds else "passed")
        counts[key] += 1
    # collection errors have no testcase of their own in some pytest versions
    for suite in root.iter("testsuite"):
        counts["errors"] = max(counts["errors"], int(suite.get("errors", 0)))
    return counts


def run_steps(steps: list[Step], python: str, env: dict[str, str], deadline: float, log_dir: Path,
              jobs: int = 3, log=print) -> list[StepResult]:
    """Probe first and benchmarks last, each alone (their numbers need the GPU to themselves); pytest and
    the smokes in between, ``jobs`` at a time."""
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, StepResult] = {}
    lock = threading.Lock()

    def one(step: Step) -> None:
        r = _run_one(step, python, env, deadline, log_dir)
        with lock:
            results[step.name] = r
            peak = f", CUDA peak {r.cuda_peak_bytes / 2**20:.0f} MiB" if r.cuda_peak_bytes else ""
            log(f"  {r.status:8s} {r.seconds:6.1f} s  {r.name}{peak}" + (f"  ({r.note})" if r.note else ""))

    alone_first = [s for s in steps if s.kind == "probe"]
    middle = [s for s in steps if s.kind in ("pytest", "smoke")]
    alone_last = [s for s in steps if s.kind == "bench"]
    for s in alone_first:
        one(s)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, middle))
    for s in alone_last:
        one(s)
    return [results[s.name] for s in steps]


# ------------------------------------------------------------------------------------------------ env


ENV_SCRIPT = r"""
import json, platform, sys
info = {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    device_memory_bytes=int(p.total_memory), multiprocessors=int(p.multi_processor_count),
                    cudnn=torch.backends.cudnn.version())
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:
            pass
except Exception as e:
    info["torch_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
"""


def probe_env(python: str, timeout: float = 90.0) -> dict:
    """Python / torch / CUDA facts from a child process (this one never imports torch)."""
    try:
        r = subprocess.run([python, "-c", ENV_SCRIPT], capture_output=True, text=True, timeout=timeout, cwd="/")
        info = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {
            "torch_error": _tail(r.stderr, 2)}
    except subprocess.TimeoutExpired:
        info = {"torch_error": f"importing torch took over {timeout:.0f} s"}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,"
                            "power.limit", "--format=csv,noheader"], capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip():
            f = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
            keys = ("smi_name", "driver", "smi_memory", "pcie_gen_max", "pcie_width_max", "power_limit")
            info.update(dict(zip(keys, f)))
    return info


def no_cuda_line(info: dict) -> str:
    why = info.get("torch_error") or f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')}) sees no GPU"
    return f"gpu-check: no CUDA device visible ({why}); nothing was installed or run"


# ------------------------------------------------------------------------------------------------ report


def collect(env_info: dict, steps: list[StepResult], bundle_rows: list[dict], manifest: dict | None,
            budget_s: float, elapsed_s: float, device: str) -> dict:
    """The results.json document: every measured number a number, every step with its status."""
    summary = {s: sum(r.status == s for r in steps) for s in STATUSES}
    numbers = [{**n, "step": r.name} for r in steps for n in r.numbers]
    numbers += [{"name": f"{r.name}.seconds", "value": round(r.seconds, 3), "unit": "s", "step": r.name}
                for r in steps if r.status in ("passed", "failed")]
    numbers += [{"name": f"{r.name}.cuda_peak_bytes", "value": float(r.cuda_peak_bytes), "unit": "B", "step": r.name}
                for r in steps if r.cuda_peak_bytes is not None]
    return {
        "schema": 1, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "device_kind": device,
        "rehearsal": device != "cuda", "env": env_info, "commit": _commit(manifest),
        "bundle": {"built": (manifest or {}).get("built"), "python_version": (manifest or {}).get("python_version"),
                   "wheels": bundle_rows, "skipped": (manifest or {}).get("skipped", {})},
        "budget_s": budget_s, "elapsed_s": round(elapsed_s, 1), "summary": summary,
        "steps": [asdict(r) for r in steps], "numbers": numbers,
    }


def _commit(manifest: dict | None) -> dict:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"working_tree": r.stdout.strip() or None, "bundle_built_from": (manifest or {}).get("commit")}


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def render_report(doc: dict) -> str:
    e = doc["env"]
    title = "GPU check" if not doc["rehearsal"] else "GPU check — REHEARSAL ON CPU (no GPU numbers)"
    lines = [f"# {title}", "",
             f"`python -m common.gpu_check` on {doc['date']}: {doc['elapsed_s']} s of a {doc['budget_s']:.0f} s budget; "
             + ", ".join(f"{n} {s}" for s, n in doc["summary"].items() if n) + ".", "",
             "| | |", "|---|---|"]
    device = ("CPU (rehearsal of the install and the smokes; CUDA steps skipped)" if doc["rehearsal"] else
              f"{e.get('device', e.get('smi_name', '-'))} × {e.get('device_count', '-')}, "
              f"{e.get('device_memory_bytes', 0) / 2**30:.0f} GiB, capability {e.get('capability', '-')}, "
              f"{e.get('multiprocessors', '-')} SMs")
    rows = [("device", device),
            ("driver / CUDA (torch) / cuDNN / NCCL", f"{e.get('driver', '-')} / {e.get('torch_cuda', '-')} / "
                                                     f"{e.get('cudnn', '-')} / {e.get('nccl', '-')}"),
            ("PCIe (max) / power limit", f"gen {e.get('pcie_gen_max', '-')} x{e.get('pcie_width_max', '-')} / "
                                         f"{e.get('power_limit', '-')}"),
            ("python / torch", f"{e.get('python', '-')} / {e.get('torch', '-')}"),
            ("platform", e.get("platform", "-")),
            ("assumed preinstalled, absent", ", ".join(e.get("assumed_preinstalled_absent", [])) or "none"),
            ("commit", f"{doc['commit']['working_tree'] or 'no git in this copy'} (bundle built from "
                       f"{doc['commit']['bundle_built_from'] or '-'})")]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Steps", "", "| step | status | seconds | CUDA peak | note |", "|---|---|---|---|---|"]
    for s in doc["steps"]:
        peak = f"{s['cuda_peak_bytes'] / 2**20:,.0f} MiB" if s["cuda_peak_bytes"] else "-"
        tests = ", ".join(f"{v} {k}" for k, v in s["tests"].items() if v)
        note = "; ".join(x for x in (tests, s["note"]) if x)
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {peak} | {note} |")
    measured = [n for n in doc["numbers"] if not n["name"].endswith((".seconds", ".cuda_peak_bytes"))]
    if measured:
        lines += ["", "## Numbers", "", "| measurement | value | unit |", "|---|---|---|"]
        lines += [f"| {n['name']} | {_fmt(n['value'])} | {n['unit']} |" for n in measured]
    if doc["bundle"]["wheels"]:
        lines += ["", "## Bundle", "", f"Built {doc['bundle']['built']} for CPython {doc['bundle']['python_version']}; "
                  "the locked versions do not apply here, this is what ran.", "",
                  "| distribution | bundle version | here |", "|---|---|---|"]
        lines += [f"| {w['dist']} | {w['bundle_version']} | {w['status']} |" for w in doc["bundle"]["wheels"]]
        if doc["bundle"]["skipped"]:
            lines += ["", "Left out: " + "; ".join(f"{k} ({v})" for k, v in doc["bundle"]["skipped"].items()) + "."]
    bad = [s for s in doc["steps"] if s["status"] in ("failed", "timeout") and s["tail"]]
    if bad:
        lines += ["", "## Output of the steps that did not pass"]
        for s in bad:
            lines += ["", f"### {s['name']} ({s['status']}, exit {s['returncode']})", "", f"`{s['command']}`", "",
                      "```", s["tail"], "```"]
    return "\n".join(lines) + "\n"


def write_report(doc: dict, report_dir: Path) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    md, js = report_dir / "report.md", report_dir / "results.json"
    md.write_text(render_report(doc))
    js.write_text(json.dumps(doc, indent=1) + "\n")
    return md, js


# ------------------------------------------------------------------------------------------------ child modes


def exec_module(module: str, args: list[str]) -> None:
    """Run ``python -m module args`` in this process and print the CUDA peak at exit, so the check sees
    whether a smoke really used the GPU."""
    import atexit
    import runpy

    def peak() -> None:
        torch = sys.modules.get("torch")
        used = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
        print(f"{MARK} cuda_peak_bytes={torch.cuda.max_memory_allocated() if used else 'none'}", flush=True)

    atexit.register(peak)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def exec_probe(device: str = "cuda", n: int = 8192, nbytes: int = 512 * 2**20, seq: int = 1024) -> dict:
    """Physical limits: matmul TFLOP/s (bf16, fp32, tf32), copy bandwidth (pinned and pageable H2D, pinned
    D2H, on-device), SDPA backends (fwd + bwd time or why not). Prints one ``GPU_CHECK probe`` JSON line.

    ``device="cpu"`` with small sizes runs the same code without CUDA (the tests do: the first GPU run has no
    second chance)."""
    import torch
    import torch.nn.functional as F

    dev, cuda = torch.device(device), device.startswith("cuda")
    numbers: list[dict] = []
    info: dict[str, str] = {}

    def add(name: str, value: float, unit: str) -> None:
        numbers.append({"name": f"probe.{name}", "value": float(value), "unit": unit})

    def seconds(fn, iters: int) -> float:
        for _ in range(2):
            fn()
        if not cuda:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t0) / iters
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1000 / iters

    for label, dtype, tf32, iters in (("bf16", torch.bfloat16, False, 30), ("fp32", torch.float32, False, 5),
                                      ("tf32", torch.float32, True, 20)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        add(f"matmul_{label}_{n}_tflops", 2 * n**3 / seconds(partial(torch.matmul, x, y), iters) / 1e12, "TFLOP/s")
    torch.backends.cuda.matmul.allow_tf32 = False
    d, d2 = torch.empty(nbytes, dtype=torch.uint8, device=dev), torch.empty(nbytes, dtype=torch.uint8, device=dev)
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    if cuda:
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        add("h2d_pinned_gb_s", nbytes / seconds(partial(d.copy_, pinned, non_blocking=True), 10) / 1e9, "GB/s")
        add("d2h_pinned_gb_s", nbytes / seconds(partial(pinned.copy_, d, non_blocking=True), 10) / 1e9, "GB/s")
    add("h2d_pageable_gb_s", nbytes / seconds(partial(d.copy_, pageable), 3) / 1e9, "GB/s")
    add("d2d_copy_gb_s", 2 * nbytes / seconds(partial(d2.copy_, d), 20) / 1e9, "GB/s")  # read + write
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        info["sdpa"] = f"torch.nn.attention unavailable: {e}"
    else:
        q = torch.randn(4, 8, seq, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)

        def fwd_bwd() -> None:
            F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()

        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            be = getattr(SDPBackend, backend, None)
            if be is None:
                info[backend] = "absent in this torch"
                continue
            try:
                with sdpa_kernel(be):
                    add(f"sdpa_{backend.lower()}_bf16_fwd_bwd_ms", 1000 * seconds(fwd_bwd, 10), "ms")
                info[backend] = "runs"
            except Exception as e:  # a backend that does not support this shape / dtype / device
                info[backend] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    doc = {"numbers": numbers, "info": info}
    print(f"{MARK} probe " + json.dumps(doc), flush=True)
    return doc


# ------------------------------------------------------------------------------------------------ CLI


def print_plan(steps: list[Step], args, python: str, bundle: Path | None, env: dict[str, str]) -> None:
    """The dry run: everything the check would do, nothing run."""
    print("GPU check plan (dry run: nothing is run, installed or written)")
    print(f"python: {python} ({platform.python_version()}); device: {args.device}; budget {args.budget:.0f} s "
          f"(last {REPORT_RESERVE_S:.0f} s for the report); {args.jobs} smokes at a time")
    if bundle is None:
        print("bundle: none (--no-bundle: the environment must already have every dependency)")
    else:
        try:
            man = read_manifest(bundle)
        except gb.BundleError as e:
            print(f"bundle: {e}")
        else:
            wheels = bundle_wheels(bundle)
            print(f"bundle: {bundle} (built {man.get('built')} from {man.get('commit')} for CPython "
                  f"{man.get('python_version')} / torch {man.get('gpu_torch')})")
            print(f"  wheels ({len(wheels)}, {gb.format_mib(sum(w.stat().st_size for w in wheels))}; each installed "
                  "only where this Python lacks it, torch never):")
            for w in sorted(wheels, key=lambda w: -w.stat().st_size):
                print(f"    {gb.format_mib(w.stat().st_size):>11}  {w.name}")
            data = gb.folder_files(bundle / "data")
            print(f"  data ({len(data)} files, {gb.format_mib(sum(b for _, b in data))}) as PAPERS_DATA_DIR:")
            for piece in man.get("data", []):
                print(f"    {gb.format_mib(piece['bytes']):>11}  {piece['path']}  ({piece['why']})")
            for dist, why in man.get("skipped", {}).items():
                print(f"  left out: {dist}: {why}")
            try:
                _, lines = gb.check_budget(bundle, REPO)
                print("carried (64 MiB limit, working tree included): " + lines[0])
            except (OSError, subprocess.CalledProcessError):
                print("carried: working tree size unknown here (no git)")
            here = ".".join(platform.python_version_tuple()[:2])
            if man.get("python_version") != here:
                print(f"  note: this Python is {here}, the bundle is for {man.get('python_version')}: the check itself "
                      "would stop here with exit 2")
            todo, kept = wheels_to_install(wheels, installed_dists(exclude=args.site))
            print(f"install ({len(todo)} wheels this Python lacks; {len(kept)} preinstalled kept: "
                  f"{', '.join(sorted(kept)) or 'none'}):")
            rel = [w.relative_to(REPO) if w.is_relative_to(REPO) else w for w in todo]
            print("  " + shlex.join(install_command(python, rel, args.site)))
    for key in ("PYTHONPATH", "PAPERS_DATA_DIR"):
        if key in env:
            print(f"env: {key}={env[key]}")
    print("steps (probe alone, then pytest and smokes in parallel, then benchmarks alone):")
    for i, s in enumerate(steps, 1):
        print(f"  {i:2d}. {s.name:28s} {s.timeout:4.0f} s  {shlex.join([python, *s.argv])}"
              + (f"  [{s.note}]" if s.note else ""))
    report = args.report_dir
    print(f"report: {report / 'report.md'}, {report / 'results.json'} (+ $OUT/gpu_check/ with logs when $OUT is set)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m common.gpu_check",
                                 description="Run every gpu test, a CUDA smoke of every package and the GPU "
                                             "benchmarks; write reports/gpu/report.md.")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (steps, commands, bundle, budget); run nothing")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="hard limit for the whole check, seconds")
    ap.add_argument("--jobs", type=int, default=3, help="pytest and smokes run this many at a time")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the steps whose name contains TEXT (repeatable), e.g. smoke:fuyou")
    ap.add_argument("--bundle", type=Path, default=gb.BUNDLE_DIR, help="bundle folder (default .gpu_bundle)")
    ap.add_argument("--no-bundle", action="store_true", help="install nothing: every dependency is already here")
    ap.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where the bundle is installed (pip --target)")
    ap.add_argument("--report-dir", type=Path, default=None,
                    help="default reports/gpu (cuda) or runs/gpu_check/report (cpu rehearsal)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: rehearse the install and every smoke on the CPU (no GPU numbers, CUDA steps skipped)")
    ap.add_argument("--exec-module", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--exec-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.budget <= REPORT_RESERVE_S + MIN_STEP_S:
        ap.error(f"--budget {args.budget:g}: must exceed {REPORT_RESERVE_S + MIN_STEP_S:g} s")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be at least 1")
    if args.report_dir is None:
        args.report_dir = DEFAULT_REPORT_DIR if args.device == "cuda" else WORK_DIR / "report"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.exec_module:
        exec_module(args.exec_module[0], args.exec_module[1:])
        return 0
    if args.exec_probe:
        exec_probe()
        return 0
    python = sys.executable
    bundle = None if args.no_bundle else args.bundle.resolve()
    site = None if args.no_bundle else args.site
    steps = select_steps(build_steps(args.device), args.only)
    env = step_env(site, bundle)
    if args.dry_run:
        print_plan(steps, args, python, bundle, env)
        return 0
    start = time.monotonic()
    deadline = start + args.budget - REPORT_RESERVE_S
    env_info = probe_env(python, timeout=min(90.0, args.budget / 3))
    if args.device == "cuda" and not env_info.get("cuda_available"):
        print(no_cuda_line(env_info))
        return 0
    have = installed_dists(exclude=site)
    env_info["assumed_preinstalled_absent"] = sorted(d for d in gb.PREINSTALLED if d not in have)
    manifest, bundle_rows, results = None, [], []
    if bundle is not None:
        try:
            manifest = read_manifest(bundle)
            want, have = manifest.get("python_version"), ".".join(platform.python_version_tuple()[:2])
            if want != have:
                raise gb.BundleError(f"{bundle} holds wheels for CPython {want}, this is {have}: rebuild it with "
                                     f"`python -m common.gpu_bundle --python-version {have}`")
        except gb.BundleError as e:
            print(f"gpu-check: {e}", file=sys.stderr)
            return 2
        print(f"gpu-check: installing the bundle into {site} ...")
        inst, bundle_rows = install_bundle(bundle, site, python, timeout=max(deadline - time.monotonic(), 1.0))
        print(f"  {inst.status:8s} {inst.seconds:6.1f} s  install ({inst.note})")
        results.append(inst)
    if WORK_DIR.exists():
        shutil.rmtree(WORK_DIR)  # the previous check's run dirs: resume=never would refuse them
    WORK_DIR.mkdir(parents=True)
    log_dir = WORK_DIR / "logs"
    if all(r.status == "passed" for r in results):
        print(f"gpu-check: {len(steps)} steps, {max(deadline - time.monotonic(), 0):.0f} s left of the budget")
        results += run_steps(steps, python, env, deadline, log_dir, jobs=args.jobs)
    else:
        results += [StepResult(s.name, s.kind, "not_run", command=shlex.join([python, *s.argv]),
                               note="the bundle did not install") for s in steps]
    doc = collect(env_info, results, bundle_rows, manifest, args.budget, time.monotonic() - start, args.device)
    md, js = write_report(doc, args.report_dir)
    print(f"gpu-check: {md} and {js.name} written: " + ", ".join(f"{n} {s}" for s, n in doc["summary"].items() if n))
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_check"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(md, out / md.name)
        shutil.copy2(js, out / js.name)
        if log_dir.is_dir():
            shutil.copytree(log_dir, out / "logs", dirs_exist_ok=True)
        print(f"gpu-check: copied to {out}")
    return 0 if doc["summary"]["failed"] + doc["summary"]["timeout"] + doc["summary"]["not_run"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
