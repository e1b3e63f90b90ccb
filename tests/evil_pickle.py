"""A planted malicious checkpoint, shared by every package's ``test_safe_loading.py``.

Unpickling the file calls ``open(marker, "w")``, i.e. it creates the marker file: the stand-in for any
code a file someone else made could run. A safe loader refuses the file and the marker never appears.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: str | Path, *, marker: str | Path | None = None, layout: dict | None = None) -> Path:
    """Write a ``torch.save`` file at ``path`` that looks like a checkpoint (``layout``, default a model,
    an optimizer and a step) with the payload inside; return the marker path it would create."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = Path(marker) if marker is not None else path.with_name(path.name + ".PWNED")
    state = {"model": {"w": torch.zeros(2)}, "optimizer": {}, "step": 1} if layout is None else dict(layout)
    state["rng"] = _Payload(marker)
    torch.save(state, path)
    return marker


def assert_refused(text: str, path: str | Path, marker: Path,
                   how: str | None = "trust_checkpoint=true") -> str:
    """``text`` (an exception message or a CLI's stderr) refuses ``path`` in one line that says how to
    trust it, no traceback, and the payload did not run. Returns the line."""
    assert not marker.exists(), f"the planted pickle ran: {marker} exists"
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if str(path) in ln and "refused" in ln]
    assert len(lines) == 1, f"expected one refusal line naming {path}, got:\n{text[-3000:]}"
    if how is not None:
        assert how in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def _isolated_logging():
    """An in-process ``@hydra.main`` points the root logger at the current (test-captured, later closed)
    stderr. Hide handlers an earlier test left on a closed stream, and undo what this call adds."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = [h for h in handlers if not getattr(getattr(h, "stream", None), "closed", False)]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_main(main, argv: list[str], monkeypatch, capsys) -> str:
    """Run a CLI ``main`` in-process with ``argv``; it must exit with (or return) status 1. Returns stderr."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    capsys.readouterr()
    with _isolated_logging():
        try:
            code = main()
        except SystemExit as e:
            code = e.code
    out = capsys.readouterr()
    assert code == 1, f"exit status {code}; stderr:\n{out.err[-3000:]}"
    return out.err


def run_task(main, conf_dir: str | Path, overrides: list[str], capsys, config_name: str = "config") -> str:
    """Compose the Hydra config of ``conf_dir`` and pass it to the decorated ``main`` (Hydra runs the task
    on a given config as is: the package's user-error and trust handling, without a second interpreter
    nor Hydra's config search). It must exit with status 1; returns stderr."""
    from hydra import compose, initialize_config_dir

    import common.config  # noqa: F401  (registers the shared groups)

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    capsys.readouterr()
    with _isolated_logging():
        try:
            code = main(cfg)
        except SystemExit as e:
            code = e.code
    out = capsys.readouterr()
    assert code == 1, f"exit status {code}; stderr:\n{out.err[-3000:]}"
    return out.err
