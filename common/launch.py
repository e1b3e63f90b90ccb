"""Launcher glue: Hydra multiruns on joblib (one machine) or SLURM (submitit), and rank-0-only Hydra files.

Every package's app selects a launcher with one override, because ``run_layout`` lists the ``launcher``
group (default: none, i.e. Hydra's basic launcher, one run after another)::

    python -m <pkg>.train -m trainer.seed=0,1,2 launcher=local                      # joblib, 2 at a time
    python -m <pkg>.train -m trainer.seed=0,1,2 launcher=local hydra.launcher.n_jobs=3
    python -m <pkg>.train -m trainer.seed=0,1,2 launcher=slurm hydra.launcher.partition=gpu \
        hydra.launcher.timeout_min=240 hydra.launcher.gpus_per_node=1

``launcher=local`` sets ``hydra/launcher: joblib`` (hydra-joblib-launcher) with ``n_jobs`` runs at a time.
``launcher=slurm`` sets ``hydra/launcher: submitit_slurm`` (hydra-submitit-launcher): every run is one SLURM
job of the array; the fields it documents here are ``partition`` (null: the cluster's default),
``timeout_min`` (wall-clock limit per run), ``cpus_per_task``, ``gpus_per_node``, ``mem_gb`` and
``array_parallelism`` (runs at once); every other field of the plugin's ``SlurmQueueConf`` (``account``,
``qos``, ``constraint``, ``setup``, ``additional_parameters``...) is set the same way. A run killed by its
time limit continues with ``resume=auto`` when the grid is submitted again. Submitit's local executor
(``hydra/launcher=submitit_local``) runs the same jobs as local subprocesses: what the tests use.

:func:`multirun` runs ``python -m <app>`` once per override set as ONE Hydra multirun (the ``list`` sweeper
of ``hydra_plugins/paper_repro_sweeper``: an explicit list of runs, not a cartesian product) through any of
these launchers: the way a ``reproduce.py`` launches a grid of seeds x methods x settings.

:class:`RankZeroWrites` is the Hydra callback that ``run_layout`` installs: under ``torchrun`` every rank
runs the whole Hydra app, and without it each rank would append to the job's log file in the same run
directory. Ranks > 0 keep their console log only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

REPO_ROOT = Path(__file__).resolve().parent.parent

LAUNCHERS: dict[str, dict[str, Any]] = {
    # joblib: `n_jobs` runs at a time in worker processes of this machine (1: one after another, in-process)
    "local": {"defaults": [{"override /hydra/launcher": "joblib"}, "_self_"],
              "hydra": {"launcher": {"n_jobs": 2}}},
    # submitit on SLURM: one array job per multirun, one task per run
    "slurm": {"defaults": [{"override /hydra/launcher": "submitit_slurm"}, "_self_"],
              "hydra": {"launcher": {"partition": None, "timeout_min": 240, "cpus_per_task": 4,
                                     "gpus_per_node": None, "mem_gb": None, "array_parallelism": 64}}},
}


def register_launchers() -> None:
    """Store ``launcher/local`` and ``launcher/slurm`` (package ``_global_``: they set ``hydra.launcher``)."""
    cs = ConfigStore.instance()
    for name, node in LAUNCHERS.items():
        cs.store(group="launcher", name=name, node=node, package="_global_")


class RankZeroWrites(Callback):
    """Ranks > 0 of a torchrun job write no Hydra files: no job log file (``<run_dir>/<app>.log``, which every
    rank would append to) and no ``.hydra/`` copy (``run_layout`` already leaves that to
    ``common.hydra_utils``, which writes it on rank 0; this keeps it so if an app turns it back on).

    Runs before Hydra's job starts (``on_run_start``), so the change applies to this process only; rank 0
    and single-process runs are untouched.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            return
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.output_subdir = None
            logging_cfg = config.hydra.job_logging
            handlers = logging_cfg.get("handlers") or {}
            files = [name for name, h in handlers.items() if "filename" in h]
            for name in files:
                del handlers[name]
            for owner in [logging_cfg.get("root")] + list((logging_cfg.get("loggers") or {}).values()):
                if owner is not None and owner.get("handlers") is not None:
                    owner.handlers = [h for h in owner.handlers if h not in files]


def quote_override(value: str) -> str:
    """A Hydra override value that the override parser keeps verbatim (commas, spaces, '=' included)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def multirun_command(module: str, jobs_file: str | os.PathLike, *, sweep_dir: str | os.PathLike,
                     subdir: str | None = None, launcher: str = "local", n_jobs: int | None = None,
                     common: Sequence[str] = ()) -> list[str]:
    """The ``python -m <module> -m ...`` command line of :func:`multirun` (logged, testable)."""
    cmd = [sys.executable, "-m", module, "-m", "hydra/sweeper=list",
           f"hydra.sweeper.jobs_file={quote_override(os.fspath(jobs_file))}",
           f"hydra.sweep.dir={quote_override(os.fspath(sweep_dir))}"]
    if subdir is not None:
        cmd.append(f"hydra.sweep.subdir={subdir}")
    if launcher in LAUNCHERS:
        cmd.append(f"launcher={launcher}")
    else:  # any option of Hydra's own group, e.g. submitit_local or basic
        cmd.append(f"hydra/launcher={launcher}")
    if n_jobs is not None and launcher == "local":
        cmd.append(f"hydra.launcher.n_jobs={n_jobs}")
    return cmd + list(common)


def multirun(module: str, runs: Sequence[Sequence[str]], *, sweep_dir: str | os.PathLike,
             subdir: str | None = None, launcher: str = "local", n_jobs: int | None = None,
             common: Sequence[str] = (), log_path: str | os.PathLike | None = None,
             env: Mapping[str, str] | None = None, cwd: str | os.PathLike = REPO_ROOT) -> None:
    """Run ``python -m <module>`` once per override set in ``runs``, as one Hydra multirun.

    ``runs``: one list of ``key=value`` overrides per run (any mix of keys: an explicit list, not a product);
    ``common``: overrides shared by every run. The runs go through ``launcher`` (``local``: joblib with
    ``n_jobs`` at a time; ``slurm``; or any ``hydra/launcher`` option such as ``submitit_local``) and each
    lives in ``<sweep_dir>/<subdir>`` (``subdir`` is interpolated per run: ``${name}`` keeps a package's
    usual run directory name, so a grid rerun with ``resume=auto`` finds every run; None: the app's
    ``hydra.sweep.subdir``, i.e. the run's overrides). The list is written to
    ``<sweep_dir>/multirun_jobs.json``; output goes to ``log_path`` (appended) or to this console.
    Raises ``RuntimeError`` naming the log when a run (or the multirun) fails.
    """
    if not runs:
        return
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = sweep_dir / "multirun_jobs.json"
    jobs_file.write_text(json.dumps([list(r) for r in runs], indent=1))
    cmd = multirun_command(module, jobs_file, sweep_dir=sweep_dir, subdir=subdir, launcher=launcher,
                           n_jobs=n_jobs, common=common)
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), run_env.get("PYTHONPATH", "")) if p)
    if log_path is None:
        rc = subprocess.run(cmd, cwd=cwd, env=run_env).returncode
    else:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, cwd=cwd, env=run_env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        where = f"see {log_path}" if log_path is not None else "see the output above"
        raise RuntimeError(f"multirun of {len(runs)} {module} run(s) failed (exit {rc}); {where}")


def composed_config(module: str, overrides: Sequence[str]) -> dict:
    """The resolved config ``python -m <module> <overrides>`` would run with, as plain data (what the run
    stores as ``resolved_config.json``): ``<package>/conf/config.yaml`` composed with the package's schemas."""
    import importlib

    from hydra import compose, initialize_config_dir

    from common.hydra_utils import to_plain

    package = module.split(".")[0]
    importlib.import_module(f"{package}.config")  # registers the typed schemas
    conf_dir = REPO_ROOT / package / "conf"
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        return to_plain(compose("config", overrides=list(overrides)))


def finished_with(run_dir: str | os.PathLike, module: str, overrides: Sequence[str], done_file: str) -> bool:
    """Whether the run in ``run_dir`` finished (``done_file`` exists there) under exactly the settings that
    ``overrides`` compose to now (its ``resolved_config.json``, outside ``RESUME_MAY_CHANGE``).

    A reproduce script launching a grid skips a finished run only when this holds: a run finished under other
    settings (an earlier protocol, a changed default) goes back to the multirun instead of its numbers being
    reused silently: where its checkpoints remain, ``resume=auto`` refuses it in one line naming every
    differing key; where they were cleaned up after it finished, it is trained again under the new settings."""
    from common.checkpoint import config_differences, read_run_config
    from common.config import RESUME_MAY_CHANGE

    run_dir = Path(run_dir)
    if not (run_dir / done_file).is_file():
        return False
    saved = read_run_config(run_dir)
    return saved is not None and not config_differences(saved, composed_config(module, overrides),
                                                        RESUME_MAY_CHANGE)


register_launchers()
