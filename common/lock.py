"""The pinned environment: ``requirements.lock`` lists every installed distribution at an exact version.

The lock is generated from a tested environment (``make lock``: a throw-away venv with every extra of
pyproject.toml, then ``python -m common.lock write``) and used as pip constraints by ``make venv`` /
``make test`` / ``make reproduce`` / ``.ci/run``, so a fresh clone installs exactly the versions that
produced the committed numbers even after the registry has moved on. ``check`` compares the running
environment with the lock; ``run_info.json`` and every report record the lock's hash.

    python -m common.lock check            # exit 1 and one line per difference when the venv drifted
    python -m common.lock write [PATH]     # (make lock) rewrite the lock from the running environment
    python -m common.lock extras           # every extra of pyproject.toml, comma-separated (make lock)
    python -m common.lock hash             # sha256 of the lock's pins (what reports record)
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_PATH = REPO_ROOT / "requirements.lock"
PROJECT = "paper-repro"  # the editable project itself is not pinned
# Installed with the venv itself; pinned too (pip resolves differently across its versions), but absent
# from some environments (Python 3.12 venvs ship no setuptools), so a missing one is no difference.
_BOOTSTRAP = {"pip", "setuptools", "wheel"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")
# A pin that only an extra outside `all` needs (deepspeed, say) carries this comment: `make venv` does not
# install it, so its absence is no difference; installed, it must match.
EXTRA_ONLY = "# extra-only"


def canonical(name: str) -> str:
    """PEP 503 normalised project name (``Foo_Bar`` and ``foo-bar`` are one project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class LockFormatError(ValueError):
    """The lock file has a line that is not ``name==version`` (or a comment)."""


def read_lock(path: str | Path = LOCK_PATH) -> dict[str, str]:
    """{canonical name: version} of a lock file; comments and blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no lock file; `make lock` writes one from a tested environment")
    pins: dict[str, str] = {}
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _PIN.match(line)
        if m is None:
            raise LockFormatError(f"{path}:{i}: expected name==version, got {raw.strip()!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def extra_only_pins(path: str | Path = LOCK_PATH) -> set[str]:
    """Canonical names of the pins marked ``# extra-only`` (needed only by extras outside ``all``)."""
    return {canonical(line.split("==", 1)[0].strip()) for line in Path(path).read_text().splitlines()
            if line.rstrip().endswith(EXTRA_ONLY) and "==" in line and not line.lstrip().startswith("#")}


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution in the running environment but the project."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) != PROJECT:
            out[canonical(name)] = dist.version
    return out


def differences(lock: dict[str, str], env: dict[str, str], optional: set[str] = frozenset()) -> list[str]:
    """One line per package whose installed version differs from the lock, is missing, or is unlocked.
    ``optional`` pins (extra-only) may be missing."""
    out = []
    for name in sorted(set(lock) | set(env)):
        want, have = lock.get(name), env.get(name)
        if want == have:
            continue
        if have is None:
            if name not in _BOOTSTRAP and name not in optional:
                out.append(f"{name}: locked {want}, not installed")
        elif want is None:
            out.append(f"{name}: installed {have}, not in the lock")
        else:
            out.append(f"{name}: locked {want}, installed {have}")
    return out


def lock_hash(path: str | Path = LOCK_PATH) -> str | None:
    """sha256 of the lock's pins (sorted ``name==version`` lines; comments and order do not count), or
    None when there is no lock file."""
    try:
        pins = read_lock(path)
    except (FileNotFoundError, LockFormatError):
        return None
    text = "\n".join(f"{k}=={v}" for k, v in sorted(pins.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def environment_status(path: str | Path = LOCK_PATH) -> dict:
    """What run_info.json and reports record: the lock's hash and whether this environment matches it."""
    h = lock_hash(path)
    if h is None:
        return {"lock_sha256": None, "matches_lock": None, "lock_differences": []}
    diff = differences(read_lock(path), installed(), extra_only_pins(path))
    return {"lock_sha256": h, "matches_lock": not diff, "lock_differences": diff[:20]}


def render_lock(env: dict[str, str], base: dict[str, str] | None = None) -> str:
    """The lock text for ``env``; with ``base`` (the environment of ``all`` alone), pins that only the
    other extras brought in are marked ``# extra-only``."""
    header = [
        "# Exact versions of every distribution of the tested environment (all extras), used as pip",
        "# constraints by `make venv` / `make test` / `make reproduce` / `.ci/run`.",
        "# Regenerate deliberately with `make lock` (see README: moving versions); never edit by hand.",
        f"# Generated {datetime.now(timezone.utc).date().isoformat()} on Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}.",
    ]
    def line(k: str, v: str) -> str:
        return f"{k}=={v}" + (f"  {EXTRA_ONLY}" if base is not None and k not in base else "")

    return "\n".join(header + [line(k, v) for k, v in sorted(env.items())]) + "\n"


def pyproject_extras(pyproject: Path = REPO_ROOT / "pyproject.toml", outside_all: bool = False) -> list[str]:
    """Every extra of pyproject.toml; with ``outside_all``, those the ``all`` extra does not include."""
    import tomllib

    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    if not outside_all:
        return sorted(extras)
    inside = {"all"}
    for req in extras.get("all", []):
        if "[" in req:
            inside |= {e.strip() for e in req.split("[", 1)[1].split("]", 1)[0].split(",")}
    return sorted(set(extras) - inside)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.lock", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="compare the running environment with the lock")
    w = sub.add_parser("write", help="write the lock from the running environment (make lock)")
    w.add_argument("path", nargs="?", default=str(LOCK_PATH))
    w.add_argument("--base", default=None, help="a lock written from the venv of `all` alone: pins not in it "
                                                "are marked extra-only")
    ex = sub.add_parser("extras", help="every extra of pyproject.toml, comma-separated")
    ex.add_argument("--outside-all", action="store_true", help="only the extras that `all` does not include")
    sub.add_parser("hash", help="sha256 of the lock's pins")
    args = ap.parse_args(argv)
    if args.cmd == "write":
        base = read_lock(args.base) if args.base else None
        Path(args.path).write_text(render_lock(installed(), base))
        print(f"wrote {args.path} ({len(installed())} pins)")
        return 0
    if args.cmd == "extras":
        print(",".join(pyproject_extras(outside_all=args.outside_all)))
        return 0
    if args.cmd == "hash":
        print(lock_hash() or "no lock file")
        return 0
    try:
        diff = differences(read_lock(), installed(), extra_only_pins())
    except (FileNotFoundError, LockFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in diff:
        print(f"lock mismatch: {line}", file=sys.stderr)
    if diff:
        print(f"error: this environment differs from {LOCK_PATH.name} in {len(diff)} package(s); "
              "`make clean-venv test` rebuilds it, `make lock` moves the lock deliberately", file=sys.stderr)
        return 1
    print(f"environment matches {LOCK_PATH.name} ({lock_hash()[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
