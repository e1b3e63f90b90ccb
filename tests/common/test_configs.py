"""Every config file in the repository composes and converts to its package's typed root schema; bad
overrides, unknown keys and missing values fail cleanly, in one line, before anything is loaded."""

import enum
import importlib
import json
import os
import subprocess
import sys
from dataclasses import is_dataclass
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.hydra_utils import to_plain
from common.schema import AppConfig, Choice, to_object

REPO = Path(__file__).resolve().parents[2]

# (module that registers the app's structured configs, conf dir, primary config name, schema package)
APPS = [("common.examples.digits", REPO / "common/examples/conf", "digits", "digits")]
APPS += [(p.parent.parent.name, p.parent, p.stem, p.parent.parent.name)
         for p in sorted(REPO.glob("*/conf/*.yaml"))]  # config.yaml and any other primary (optimize.yaml)
NOT_SCHEMA_GROUPS = ("experiment", "hydra")  # experiment files are deltas of the root; hydra/ is Hydra's own


def _groups(conf_dir: Path) -> list[Path]:
    return sorted(d for d in conf_dir.iterdir() if d.is_dir())


def _cases():
    for module, conf_dir, name, pkg in APPS:
        yield pytest.param(module, conf_dir, name, pkg, [], id=f"{pkg}:{name}")
        for group_dir in _groups(conf_dir):
            if name != "config" and pkg != "digits":
                continue  # a second primary config (optimize.yaml) uses no group of conf/
            for option in sorted(group_dir.glob("*.yaml")):
                override = f"{group_dir.name}={option.stem}"
                yield pytest.param(module, conf_dir, name, pkg, [override], id=f"{pkg}:{override}")


def _root_schema(pkg: str, name: str) -> type:
    node = ConfigStore.instance().load(f"schema/{pkg}/{name}.yaml").node
    return OmegaConf.get_type(node)


@pytest.mark.parametrize("module,conf_dir,name,pkg,overrides", list(_cases()))
def test_config_composes_and_converts_to_its_schema(module, conf_dir, name, pkg, overrides):
    """The primary config, every option of every group and every experiment file: composed, resolved and
    converted with ``OmegaConf.to_object`` to the package's root dataclass (``schema/<pkg>/<name>``)."""
    importlib.import_module(module)  # registers the package's ConfigStore nodes
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "resume", "paths", "logger") + (("trainer",) if name == "config" else ()):
        assert key in container, f"{conf_dir}/{name}.yaml lacks the shared key {key!r}"
    assert not OmegaConf.missing_keys(cfg) or overrides == [], OmegaConf.missing_keys(cfg)
    for key in OmegaConf.missing_keys(cfg):  # a required value (data=bapps: data.root): any string
        OmegaConf.update(cfg, key, "placeholder")
    root = _root_schema(pkg, name)
    obj = OmegaConf.to_object(cfg)
    assert type(obj) is root and isinstance(obj, AppConfig)
    to_object(cfg)  # the shells' start-up check: no undeclared key, every __post_init__ check passes

    def builtin(x):  # what checkpoints and run_info.json hold: closed choices as plain str
        if isinstance(x, dict):
            return all(type(k) is str and builtin(v) for k, v in x.items())
        if isinstance(x, list):
            return all(builtin(v) for v in x)
        return x is None or type(x) in (str, int, float, bool)

    assert builtin(to_plain(cfg))


@pytest.mark.parametrize("module,conf_dir,name,pkg", APPS)
def test_every_config_starts_from_its_schema(module, conf_dir, name, pkg):
    """ARCHITECTURE.md's rule: the primary config's first default is ``/schema/<pkg>/<name>@_here_``, and each
    option of a group starts from ``/schema/<pkg>/<group>`` (or ``.../<group>/<option>``, or another option
    of the group that does)."""
    importlib.import_module(module)
    primary = yaml.safe_load((conf_dir / f"{name}.yaml").read_text())
    assert primary["defaults"][0] == f"/schema/{pkg}/{name}@_here_", f"{conf_dir}/{name}.yaml"
    if name != "config" and pkg != "digits":
        return
    store = ConfigStore.instance()
    for group_dir in _groups(conf_dir):
        if group_dir.name in NOT_SCHEMA_GROUPS:
            continue
        options = {p.stem for p in group_dir.glob("*.yaml")}
        for option in sorted(group_dir.glob("*.yaml")):
            defaults = (yaml.safe_load(option.read_text()) or {}).get("defaults", [])
            schemas = {f"/schema/{pkg}/{group_dir.name}@_here_", f"/schema/{pkg}/{group_dir.name}/{option.stem}@_here_"}
            assert any(d in schemas or d in options for d in defaults), \
                f"{option} does not start from /schema/{pkg}/{group_dir.name}"
            for d in defaults:
                if d in schemas:
                    path = d.removeprefix("/").removesuffix("@_here_") + ".yaml"
                    assert is_dataclass(OmegaConf.get_type(store.load(path).node)), path


def test_closed_choices_are_named_by_their_values():
    """OmegaConf reads a ``Choice`` by member name and ``to_plain`` writes names: they must equal the values."""
    for module, _, _, _ in APPS:
        importlib.import_module(module)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    seen = list(subclasses(Choice))
    assert len(seen) > 20
    for cls in seen:
        assert issubclass(cls, str) and issubclass(cls, enum.Enum)
        for member in cls:
            assert member.name == member.value == f"{member}", (cls, member)


def test_reproduce_overrides_compose():
    """The Hydra overrides that scpo_rl's reproduce profiles pass compose (one run per study: the methods
    differ only in ``algo=``, whose every option is composed above)."""
    import scpo_rl
    from scpo_rl import reproduce

    with initialize_config_dir(str(REPO / "scpo_rl" / "conf"), version_base="1.3"):
        for profile in reproduce.PROFILES.values():
            for study in profile["studies"]:
                cfg = compose("config", overrides=reproduce.train_overrides(study, study.methods[-1], 0, Path("runs")))
                assert isinstance(OmegaConf.to_object(cfg), scpo_rl.config.ScpoRlConfig)


def test_packages_register_no_group_that_leaks_into_other_apps():
    """Hydra's ConfigStore is global: a package's schemas must not create top-level groups such as `method`,
    which turn another app's plain key (meta_multilabel's `method: meta`) into a group choice."""
    for module, _, _, _ in APPS:
        importlib.import_module(f"{module}.train" if module != "common.examples.digits" else module)
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


# Runs each command line as `python -m <module> <args>` would (runpy, the real sys.argv), all in one interpreter
# so that torch is imported once; prints [exit status, stdout, stderr] per run as JSON.
_DRIVER = """
import contextlib, io, json, runpy, sys
runs = []
for argv in json.loads(sys.argv[1]):
    sys.argv, out, err, code = ["-m", *argv[1:]], io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
    runs.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(runs))
"""


def _run_clis(runs: list[list[str]]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each ``[module, *args]`` run as ``python -m module args``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(runs)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout)]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


def test_cli_help_bad_override_and_missing_value(tmp_path):
    out = f"paths.output_dir={tmp_path}"
    (_, help_text, _), bad, unknown, missing = _run_clis([
        ["common.examples.digits", "--help"], ["common.examples.digits", "trainer.max_epochs=abc", out],
        ["common.examples.digits", "trainer.epochs=3", out], ["common.examples.digits", "model.lr=???", out]])
    for group in ("trainer", "paths", "logger", "model", "experiment"):
        assert f"{group}:" in help_text
    assert bad[0] == 1 and "trainer.max_epochs=abc" in _one_error_line(bad[2])
    assert unknown[0] == 1 and "trainer.epochs" in _one_error_line(unknown[2])
    assert missing[0] == 1 and "missing required value(s): model.lr" in _one_error_line(missing[2])


# Through the real command lines: (argv, what the one line must name, rejected while Hydra composes, i.e.
# before the run folder exists). Packages whose shell imports little, so the runs cost about one start-up.
BAD_VALUES = [
    (["scpo_rl.train", "rl.gamma=high"], ["rl.gamma=high", "Float"], True),  # was a TypeError after warm-up
    (["scpo_rl.train", "rl.normalization=paperr"], ["rl.normalization=paperr", "paper, none, warmup"], True),
    (["scpo_rl.train", "rl.gama=0.9"], ["rl.gama", "unknown key"], True),
    (["fuyou_offload.train", "offload.plan=abc"], ["offload.plan=abc", "recompute"], False),  # __post_init__
]
# In-process (the same composition, without each shell's imports): (conf dir, overrides, what the line names).
BAD_OVERRIDES = [
    ("joint_bert_nlu", ["data.max_seq_length=abc"], ["data.max_seq_length=abc", "Integer"]),  # was 41 lines
    ("label_efficient_seg", ["method=fulll"], ["method/fulll", "fixmatch"]),
    ("label_efficient_seg", ["method.loss=gcee"], ["method.loss=gcee", "gce"]),
    ("meta_multilabel", ["method=metaa"], ["method=metaa", "inverse_freq"]),
    ("vocab_distill", ["pipeline.direction=sideways"], ["pipeline.direction=sideways", "down, up, both"]),
    ("lpips_metric", ["model.lr=fast"], ["model.lr=fast", "Float"]),
    ("synthesis_pathways", ["experiment=smoke", "model.nbit=8"], ["model.nbit", "unknown key"]),
    ("llm_specialization", ["task=rec_tuning", "task.build=clen"], ["task.build=clen", "parity, clean"]),
]


@pytest.mark.parametrize("pkg,overrides,needles", BAD_OVERRIDES, ids=[f"{p}:{o[-1]}" for p, o, _ in BAD_OVERRIDES])
def test_bad_overrides_are_rejected_while_composing(pkg, overrides, needles):
    from hydra.errors import CompactHydraException

    from common.schema import one_line

    importlib.import_module(pkg)
    with initialize_config_dir(str(REPO / pkg / "conf"), version_base="1.3"):
        with pytest.raises(CompactHydraException) as e:
            compose(config_name="config", overrides=overrides)
    line = one_line(e.value)
    assert "\n" not in line and all(n in line for n in needles), line


def test_bad_values_fail_in_one_line_before_anything_is_loaded(tmp_path):
    """A value of the wrong type, an unknown member of a closed choice, an unknown key, and a value that only
    the dataclass validates (checked when the shell starts, before the package's code runs): exit status 1,
    one line naming the key and the value, no traceback."""
    runs = _run_clis([[*args, f"paths.output_dir={tmp_path / str(i)}"] for i, (args, _, _) in enumerate(BAD_VALUES)])
    for i, ((args, needles, at_compose), (code, _, err)) in enumerate(zip(BAD_VALUES, runs)):
        assert code == 1, (args, err[-2000:])
        line = _one_error_line(err)
        assert all(n in line for n in needles), (args, line)
        if at_compose:
            assert not (tmp_path / str(i)).exists(), f"{args}: a rejected config created its run folder"


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


def _defaults(cls) -> dict:
    import dataclasses
    import enum

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        else:
            continue
        out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
    return out


def _schema_library_pairs():
    import scpo_rl.algorithm
    import scpo_rl.config
    import scpo_rl.loop
    import synthesis_pathways.config
    import synthesis_pathways.featurize
    import synthesis_pathways.ga
    import synthesis_pathways.model
    import synthesis_pathways.pipeline

    sc, yc = scpo_rl.config, synthesis_pathways.config
    return [(sc.RLConfig, scpo_rl.algorithm.AgentConfig), (sc.RLConfig, scpo_rl.loop.RunConfig),
            (sc.PrSacAlgo, scpo_rl.algorithm.AgentConfig), (yc.DataConfig, synthesis_pathways.pipeline.PipelineConfig),
            (yc.ModelConfig, synthesis_pathways.pipeline.PipelineConfig), (yc.ModelConfig, synthesis_pathways.model.NetConfig),
            (yc.ModelConfig, synthesis_pathways.featurize.FeatureConfig),
            (yc.SamplingConfig, synthesis_pathways.pipeline.PipelineConfig), (yc.GAConfig, synthesis_pathways.ga.GAConfig)]


def test_schema_defaults_agree_with_the_library_dataclasses():
    """The typed Hydra schemas mirror the config layout (``rl.*``, ``model.*``) while the libraries keep their
    own Hydra-free dataclasses, so a default lives in two places: the shared fields must agree, or
    ``python -m <pkg>.train`` and a library caller would run different defaults."""
    for schema, lib in _schema_library_pairs():
        a, b = _defaults(schema), _defaults(lib)
        shared = sorted(set(a) & set(b))
        assert len(shared) >= 3, (schema, lib)
        assert {k: a[k] for k in shared} == {k: b[k] for k in shared}, f"{schema.__qualname__} vs {lib.__qualname__}"
