"""The seeded reproduce profiles: mandatory rows and seeds, the budget rule, claim verdicts, and Hydra
overrides that train exactly the planned configs."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import label_efficient_seg.config  # noqa: F401  (registers the schemas)
from common.config import TrainerConfig
from common.reproduce import Row
from label_efficient_seg import reproduce as R

CONF = Path(R.__file__).parent / "conf"


def test_full_profile_has_every_mandatory_row_with_three_seeds():
    st = R._profile_settings("full")
    plans = R._plans("full", st["data"], [0, 1, 2])
    labels = [p.label for p in plans]
    assert set(R.MANDATORY) <= set(labels) and len(labels) == len(set(labels))
    assert all(p.seeds == [0, 1, 2] for p in plans) and st["seeds"] == [0, 1, 2]
    extra = [p.label for p in R._plans("full_extra", st["data"], [0, 1, 2])]
    for c in R.CLAIMS:  # every claim compares rows that one profile trains together (or derives: _adabn)
        pair = {c.better, c.worse.replace("_adabn", "")}
        assert pair <= set(labels) or pair <= set(extra), c
    by = {p.label: p for p in plans}
    assert by["kvasir2cvc/minent"].data.target == "cvc" and by["camvid_day2dusk/oracle"].data.target == "camvid_dusk"
    assert by["dsb/points_pce"].method.pairwise_weight == 0 and by["dsb/points"].method.pairwise_weight > 0


@pytest.mark.parametrize("curve, budget", [
    ([(200, 0.10), (400, 0.20), (800, 0.30), (1200, 0.345), (1600, 0.35), (3200, 0.36)], 1200),  # >= 0.342
    ([(200, 0.10), (400, 0.20), (800, 0.30), (1200, 0.34), (1600, 0.35), (3200, 0.36)], 1600),  # 0.34 < 0.342
    ([(200, 0.10), (400, 0.35), (800, 0.36), (1600, 0.36)], 400),
    ([(400, 0.1), (800, 0.2), (1200, 0.25), (1600, 0.3), (3200, 0.4)], 1600),  # still rising: the cap
])
def test_budget_rule(curve, budget):
    """The smallest candidate reaching 95 % of the curve's best val score, else the largest candidate."""
    chosen, reason = R.choose_budget(curve)
    assert chosen == budget and "best" in reason


def test_claim_verdicts_follow_the_interval():
    assert R.verdict(Row.from_paired("d", [0.3, 0.31, 0.32], [0.2, 0.2, 0.21])) == "holds"
    assert R.verdict(Row.from_paired("d", [0.2, 0.2, 0.21], [0.3, 0.31, 0.32])).startswith("does not hold")
    assert R.verdict(Row.from_paired("d", [0.3, 0.2, 0.25], [0.25, 0.25, 0.25])).startswith("inconclusive")
    assert R.verdict(Row.from_paired("d", [0.3], [0.2])) == "single run, no verdict"


@pytest.mark.parametrize("profile", ["full", pytest.param("full_extra", marks=pytest.mark.slow),
                                     pytest.param("quick", marks=pytest.mark.slow)])
def test_multirun_overrides_train_exactly_the_planned_configs(profile):
    """Each row's overrides compose (typed schema) into the data / method / model / optim of its plan."""
    st = R._profile_settings(profile)
    tc = TrainerConfig(max_epochs=None, max_steps=800, batch_size=8, eval_every_steps=100,
                       checkpoint_every_steps=100)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for plan in R._plans(profile, st["data"], [0]):
            ov = R.train_overrides(plan, 0, st, tc, R._run_name(plan.label, 0), Path("runs/x"), None)
            cfg = OmegaConf.to_object(compose("config", overrides=ov))
            assert cfg.data == plan.data and cfg.method == plan.method, plan.label
            assert cfg.model == st["model"] and cfg.optim == st["optim"]
            assert cfg.trainer.max_steps == 800 and cfg.trainer.max_epochs is None and cfg.resume == "auto"
            assert cfg.name == R._run_name(plan.label, 0)


@pytest.mark.slow  # two Hydra subprocesses (~20 CPU-s)
def test_rows_train_through_one_multirun_and_resume(tmp_path):
    """The full profile's path on tiny synthetic rows: one Hydra multirun trains every (row, seed) in its
    own directory, the report reads final_metrics.json and example.npz, and a second call trains nothing."""
    from dataclasses import replace

    from common.reproduce import ProfileContext

    st = R._profile_settings("smoke")
    st["launch"] = "multirun"
    st["trainer"] = replace(st["trainer"], max_epochs=None, max_steps=2)
    plans = R._plans("smoke", st["data"], [0, 1])[1:3]  # scribbles and scribbles_pce
    ctx = ProfileContext("label_efficient_seg", "smoke", tmp_path / "out", tmp_path / "work", jobs=1)
    ctx.out_dir.mkdir(parents=True)
    results = R._train_rows(ctx, "smoke", st, plans)
    assert [len(v) for v in results.values()] == [2, 2]
    assert all(r["steps"] == 2 and "example" in r for v in results.values() for r in v)
    before = (tmp_path / "work" / "multirun.log").read_text()
    R._train_rows(ctx, "smoke", st, plans)
    assert (tmp_path / "work" / "multirun.log").read_text() == before  # nothing left to train
    # a run finished under other settings (here: another lr) is not reused: it goes back to the multirun,
    # whose resume check refuses it in one line (its checkpoints remain), naming the setting
    stale = tmp_path / "work" / R._run_name(plans[0].label, 1) / "resolved_config.json"
    cfg = json.loads(stale.read_text())
    cfg["optim"]["lr"] *= 10
    stale.write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="multirun of 1 label_efficient_seg.train run"):
        R._train_rows(ctx, "smoke", st, plans)
    relaunched = (tmp_path / "work" / "multirun_jobs.json").read_text()
    assert R._run_name(plans[0].label, 1) in relaunched and R._run_name(plans[0].label, 0) not in relaunched
    assert "was trained with other settings: optim.lr" in (tmp_path / "work" / "multirun.log").read_text()
    report = R._report(ctx, "smoke", st, plans, results)
    claim = next(r for r in report.rows if r.metric.startswith("claim: camvid/scribbles - "))
    assert claim.n == 2 and claim.per_seed is not None
