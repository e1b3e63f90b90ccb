"""Every config file in the repository composes; bad overrides and missing values fail cleanly."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]

# (module that registers the app's structured configs, conf dir, primary config name)
APPS = [("common.examples.digits", REPO / "common/examples/conf", "digits")]
APPS += [(f"{p.parent.parent.name}.train", p.parent, "config") for p in sorted(REPO.glob("*/conf/config.yaml"))]


def _cases():
    for module, conf_dir, name in APPS:
        yield pytest.param(module, conf_dir, name, [], id=f"{module}:{name}")
        for group_dir in sorted(d for d in conf_dir.iterdir() if d.is_dir()):
            for option in sorted(group_dir.glob("*.yaml")):
                override = f"{group_dir.name}={option.stem}"
                yield pytest.param(module, conf_dir, name, [override], id=f"{module}:{override}")


@pytest.mark.parametrize("module,conf_dir,name,overrides", list(_cases()))
def test_config_composes_and_resolves(module, conf_dir, name, overrides):
    importlib.import_module(module)  # registers the package's ConfigStore nodes
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "resume", "trainer", "paths", "logger"):
        assert key in container, f"{conf_dir}/{name}.yaml lacks the shared key {key!r}"
    assert not OmegaConf.missing_keys(cfg) or overrides == [], OmegaConf.missing_keys(cfg)


def test_packages_register_no_group_that_leaks_into_other_apps():
    """Hydra's ConfigStore is global: a package's schemas must not create top-level groups such as `method`,
    which turn another app's plain key (meta_multilabel's `method: meta`) into a group choice."""
    for module, _, _ in APPS:
        importlib.import_module(module)
    with initialize_config_dir(str(REPO / "meta_multilabel" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=inverse_freq"])
    assert cfg.method == "inverse_freq"


def test_experiment_overrides_package_values():
    importlib.import_module("common.examples.digits")
    with initialize_config_dir(str(REPO / "common/examples/conf"), version_base="1.3"):
        base = compose(config_name="digits")
        exp = compose(config_name="digits", overrides=["experiment=digits_long"])
    assert base.name == "digits" and exp.name == "digits_long"
    assert exp.trainer.max_epochs == 50 and exp.trainer.batch_size == base.trainer.batch_size == 64


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "common.examples.digits", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def test_cli_help_bad_override_and_missing_value():
    help_text = _cli("--help").stdout
    for group in ("trainer", "paths", "logger", "model", "experiment"):
        assert f"{group}:" in help_text
    bad = _cli("trainer.max_epochs=abc")
    assert bad.returncode == 1 and "trainer.max_epochs" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _cli("trainer.epochs=3")
    assert unknown.returncode == 1 and "trainer.epochs" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = _cli("model.lr=???")
    assert missing.returncode == 1 and "missing required value(s): model.lr" in missing.stderr


def test_multirun_dirname_ignores_resume_and_budget_keys():
    from common.config import RUN_LAYOUT

    excluded = RUN_LAYOUT["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert {"resume", "paths.output_dir", "trainer.max_steps", "trainer.max_epochs"} <= set(excluded)


def test_logger_under_python_m_is_named_after_the_module(monkeypatch):
    import types

    from common.logging import get_logger

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="fuyou_offload.reproduce")  # as ``python -m`` sets it
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert get_logger("__main__").name == "fuyou_offload.reproduce"


def test_logger_prints_once_with_or_without_root_handlers(capsys):
    import logging

    from common.logging import get_logger

    get_logger("common")  # a parent package logger too: a child's record must still print once
    log = get_logger("common.test_once")
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        root.handlers = []
        log.info("plain")
        assert capsys.readouterr().err.count("plain") == 1
        handler = logging.StreamHandler()  # as Hydra configures the root logger
        root.addHandler(handler)
        log.info("hydra")
        assert capsys.readouterr().err.count("hydra") == 1
    finally:
        root.handlers = saved
