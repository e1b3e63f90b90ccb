"""Hydra shell: ``python -m meta_multilabel.train method=meta data=reuters name=my_run [resume=auto]``.

The work happens in :func:`meta_multilabel.pipeline.run_experiment`, importable without Hydra.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.hydra_utils import report_user_errors, run_dir_from, to_plain
from meta_multilabel.pipeline import run_experiment


# An absolute config_path works for `python -m` and when main() is called from another module (tests).
@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    results = run_experiment(cfg, run_dir_from(cfg), plain_config=to_plain(cfg))
    for method, res in results.items():
        if not method.startswith("_"):
            shown = {k: round(v, 4) for k, v in res["test"].items() if k in
                     ("micro_f1", "macro_f1", "hamming_loss", "strict_acc", "loose_macro_f1", "loose_micro_f1")}
            print(f"{method} test: {shown}")
    first = next(k for k in results if not k.startswith("_"))
    return float(results[first]["test"]["micro_f1"])


if __name__ == "__main__":
    main()
