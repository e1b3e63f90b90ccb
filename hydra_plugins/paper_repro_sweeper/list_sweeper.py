"""``hydra/sweeper=list``: a multirun over an explicit list of runs, not a cartesian product.

Hydra's basic sweeper turns ``a=1,2 b=3,4`` into the product of the values; a reproduction grid is rarely a
product (each study has its own methods, seeds and budget, and finished runs are left out). This sweeper
reads ``hydra.sweeper.jobs_file``, a JSON list with one list of overrides per run, adds the command line's
own overrides to every run, and hands the whole list to the configured launcher (basic, joblib, submitit)
in one batch. ``common.launch.multirun`` writes the file and starts the multirun.

Hydra finds it because it lives in the ``hydra_plugins`` namespace package (Hydra only loads sweepers from
there). No ``from __future__ import annotations`` here: Hydra executes plugin modules without entering them
in ``sys.modules``, and dataclasses then cannot resolve string annotations.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class ListSweeperConf:
    _target_: str = "hydra_plugins.paper_repro_sweeper.list_sweeper.ListSweeper"
    jobs_file: str = "???"
    """JSON file: a list with one list of ``key=value`` overrides per run."""


ConfigStore.instance().store(group="hydra/sweeper", name="list", node=ListSweeperConf, provider="paper_repro")


class ListSweeper(Sweeper):
    def __init__(self, jobs_file: str):
        self.jobs_file = jobs_file
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        try:
            runs = json.loads(Path(self.jobs_file).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"hydra.sweeper.jobs_file={self.jobs_file}: {e}") from None
        if not isinstance(runs, list) or not all(isinstance(r, list) and all(isinstance(o, str) for o in r)
                                                 for r in runs):
            raise ValueError(f"hydra.sweeper.jobs_file={self.jobs_file}: expected a JSON list of lists of "
                             "'key=value' strings")
        batch = [list(arguments) + list(r) for r in runs]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.validate_batch_is_legal(batch)  # a bad override fails here, before any run starts
        results: list[JobReturn] = list(self.launcher.launch(batch, initial_job_idx=0))
        failed = [(job, r) for job, r in zip(batch, results) if r.status == JobStatus.FAILED]
        for job, r in failed:
            log.error("run failed: %s: %s", " ".join(job), r._return_value)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(batch)} runs failed; the first: {' '.join(failed[0][0])}")
        return [results]
