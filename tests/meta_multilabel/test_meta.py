"""The meta loop: rewards, label orders, exact resume, and the learning test on planted synthetic data."""

import numpy as np
import pytest
import torch

from meta_multilabel.evaluate import apply_thresholds, micro_f1, per_label_f1
from meta_multilabel.meta import (
    ClassifierConfig,
    MetaConfig,
    PreparedTask,
    compute_reward,
    label_order,
    label_states,
    predict_probs,
    run_baseline,
    run_meta,
)
from meta_multilabel.model import build_classifier
from meta_multilabel.pipeline import DataConfig, FeaturesConfig, prepare_task


def _synthetic(n_samples=2000):
    return prepare_task(DataConfig(format="synthetic", name="synthetic",
                                   synthetic={"n_samples": n_samples, "n_features": 20, "n_classes": 5,
                                              "planted_keep": 0.3}),
                        FeaturesConfig(kind="raw"), progress_bar=False)


def test_rewards_golden():
    Y = np.array([[1, 0], [0, 0]])
    probs = np.array([[0.8, 0.3], [0.4, 0.1]])
    tau = np.array([0.5, 0.2])
    # (2y−1)(p−τ): [[0.3, −0.1], [0.1, 0.1]]
    assert compute_reward("prob", probs, Y, tau) == pytest.approx(0.1)
    np.testing.assert_allclose(compute_reward("label", probs, Y, tau), [0.2, 0.0], atol=1e-12)
    assert compute_reward("f1", probs, Y, tau) == pytest.approx(2 / 3)  # tp 1, one FP (0.3 > 0.2)
    np.testing.assert_allclose(compute_reward("label_f1", probs, Y, tau), [1.0, 0.0])
    with pytest.raises(ValueError, match="reward"):
        compute_reward("nope", probs, Y, tau)


def test_prob_reward_is_linear_in_threshold():
    """Why R_prob is not the default: dR/dτ_j = (n_neg − n_pos)/(nL), so rare labels' τ runs to the clip."""
    rng = np.random.default_rng(0)
    Y = (rng.random((50, 3)) < 0.1).astype(int)
    probs = rng.random((50, 3))
    r = [compute_reward("prob", probs, Y, np.array([t, 0.5, 0.5])) for t in (0.2, 0.5, 0.8)]
    slope = (Y[:, 0] == 0).sum() - (Y[:, 0] == 1).sum()
    assert r[2] - r[1] == pytest.approx(r[1] - r[0]) and r[2] - r[1] == pytest.approx(0.3 * slope / 150)


def test_label_states_and_orders():
    Y = np.array([[1, 0], [0, 1], [1, 0]])
    probs = np.array([[0.9, 0.2], [0.3, 0.6], [0.7, 0.1]])
    s = label_states(probs, Y, np.array([0.5, 0.5]), np.array([1.0, 2.0]), w_max=2.0)
    torch.testing.assert_close(s[0], torch.tensor([2 / 3, 0.8, 0.3, 1.0, 0.5, 0.5]))
    task = PreparedTask(name="t", task="typing", label_names=["/A", "/A/B", "/C", "/C/D", "/C/E"],
                        parents=[-1, 0, -1, 2, 2], X={}, Y={"train": np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 1],
                                                                              [0, 0, 1, 0, 1], [0, 0, 1, 1, 0]])})
    assert label_order("hierarchy", task, 0).tolist() == [2, 4, 3, 0, 1]  # parents first, frequent first
    assert label_order("auto", task, 0).tolist() == [2, 4, 3, 0, 1]
    assert label_order("frequency", task, 0).tolist() == [2, 4, 0, 1, 3]
    assert sorted(label_order("shuffle", task, 1).tolist()) == list(range(5))


def test_meta_learner_finds_the_planted_threshold(tmp_path):
    """Learning test: on a frozen classifier, M-τ moves the planted label's threshold from 0.5 to near its
    F1-optimal value on D_meta (~0.2) and beats the single 0.5 threshold (B1 on the same classifier)."""
    task = _synthetic()
    clf = ClassifierConfig(lr=1e-2, batch_size=128)
    cfg = MetaConfig(episodes=60, inner_epochs=0, warmup_epochs=20, learn_weights=False, reward="label_f1",
                     lr=1e-3, sigma_tau=0.1, threshold_samples=8)
    out = run_meta(task, cfg, clf, tmp_path, seed=0, progress_bar=False)
    model = build_classifier("linear", 20, task.num_labels)
    model.load_state_dict(out["_model_state"])
    probs = predict_probs(model, task.X["meta"])
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1_planted = [per_label_f1(task.Y["meta"], apply_thresholds(probs, t))[-1] for t in grid]
    best_tau = grid[int(np.argmax(f1_planted))]
    learned = np.mean([h["mu_tau"][-1] for h in out["_history"][-10:]])
    assert best_tau < 0.35  # the planted optimum is far from 0.5 ...
    assert abs(learned - best_tau) < 0.1  # ... and the meta-learner finds it
    assert out["M-tau"]["meta"]["micro_f1"] > micro_f1(task.Y["meta"], apply_thresholds(probs, 0.5))


def _params(state):
    return torch.cat([v.flatten().float() for v in state.values()])


@pytest.mark.parametrize("recurrence", ["labels", "steps"])
def test_meta_run_resumes_exactly(tmp_path, recurrence):
    task = _synthetic(400)
    clf = ClassifierConfig(name="mlp", hidden=16, lr=1e-2, batch_size=64)
    cfg = MetaConfig(episodes=4, inner_epochs=1, warmup_epochs=1, hidden=8, label_dim=4, threshold_samples=2,
                     recurrence=recurrence)
    full = run_meta(task, cfg, clf, tmp_path / "full", seed=3, progress_bar=False)
    run_meta(task, MetaConfig(**{**cfg.__dict__, "episodes": 2}), clf, tmp_path / "cut", seed=3, progress_bar=False)
    with pytest.raises(Exception, match="resume=auto"):
        run_meta(task, cfg, clf, tmp_path / "cut", seed=3, progress_bar=False)  # resume=never refuses
    resumed = run_meta(task, cfg, clf, tmp_path / "cut", seed=3, resume="auto", progress_bar=False)
    assert [h["reward"] for h in resumed["_history"]] == [h["reward"] for h in full["_history"]]
    torch.testing.assert_close(_params(resumed["_model_state"]), _params(full["_model_state"]))
    assert resumed["M"]["thresholds"] == full["M"]["thresholds"]


def test_baselines_resume_exactly_and_report_all_policies(tmp_path):
    task = _synthetic(400)
    clf = ClassifierConfig(lr=1e-2, batch_size=64, epochs=3)
    full = run_baseline(task, "uniform", clf, tmp_path / "full", progress_bar=False)
    run_baseline(task, "uniform", ClassifierConfig(**{**clf.__dict__, "epochs": 1}), tmp_path / "cut",
                 progress_bar=False)
    resumed = run_baseline(task, "uniform", clf, tmp_path / "cut", resume="auto", progress_bar=False)
    assert {"B1", "B2", "B3"} <= set(full)
    assert "test_at_least_one" in full["B1"] and full["B1"]["test_at_least_one"]["empty_rate"] == 0.0
    for k in ("B1", "B2", "B3"):
        assert resumed[k]["test"] == full[k]["test"]
    b4 = run_baseline(task, "inverse_freq", clf, tmp_path / "b4", progress_bar=False)
    assert set(b4["B4"]["test"]) >= {"micro_f1", "macro_f1", "hamming_loss", "hamming_all_zero"}


def test_typing_pipeline_end_to_end(tmp_path):
    """A tiny JSON-lines typing corpus through the document split, TF-IDF mention features and the meta loop."""
    import json

    rows = []
    for d in range(20):
        city = d % 2 == 0
        rows.append({"tokens": ["In", "Paris" if city else "Acme", "today", "."], "senid": 0, "fileid": f"D{d}",
                     "mentions": [{"start": 1, "end": 2,
                                   "labels": ["/GPE", "/GPE/CITY"] if city else ["/ORGANIZATION"]}]})
    path = tmp_path / "t.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = prepare_task(DataConfig(format="typing", name="toy", path=str(path), split_file=None),
                        FeaturesConfig(min_df=1), progress_bar=False)
    assert task.task == "typing" and task.parents == [-1, 0, -1]
    out = run_meta(task, MetaConfig(episodes=2, inner_epochs=1, warmup_epochs=1, hidden=8, label_dim=4,
                                    label_order="auto"), ClassifierConfig(lr=0.1, batch_size=8), tmp_path / "run",
                   progress_bar=False)
    assert {"strict_acc", "loose_macro_f1", "loose_micro_f1"} <= set(out["M"]["test"])
    assert "test_closed_under_parents" in out["M"]
    from meta_multilabel.plots import plot_policies

    plot_policies(task, out["M"]["weights"], out["M"]["thresholds"], tmp_path / "p.png")
    assert (tmp_path / "p.png").exists() and (tmp_path / "p_hierarchy.png").exists()


def test_baseline_patience_stops_early(tmp_path):
    from common.checkpoint import CheckpointManager

    task = _synthetic(400)
    out = run_baseline(task, "uniform", ClassifierConfig(lr=0.5, batch_size=64, epochs=60, patience=2), tmp_path,
                       progress_bar=False)
    last = int(CheckpointManager(tmp_path).latest().stem.split("_")[1])
    assert last == out["B1"]["best_epoch"] + 2 and last < 60


def test_every_method_is_selected_by_its_own_prediction_policy(tmp_path):
    """Issue 28: the baselines keep, each, the epoch whose classifier is best on D_meta under its *own*
    prediction policy (B2/B3 re-tuned at every epoch), as M is scored at its own thresholds at every episode;
    before, B2 and B3 inherited the epoch chosen for B1 at 0.5."""
    from common.logging import MetricLogger, read_jsonl

    task = _synthetic(600)
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        out = run_baseline(task, "uniform", ClassifierConfig(lr=0.3, batch_size=64, epochs=12), tmp_path,
                           logger=logger, progress_bar=False)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "meta/micro_f1/B1" in r]
    assert len(rows) == 12
    for name in ("B1", "B2", "B3"):
        scores = [r[f"meta/micro_f1/{name}"] for r in rows]
        assert out[name]["best_epoch"] == 1 + int(np.argmax(scores))
        assert out[name]["meta"]["micro_f1"] == pytest.approx(max(scores))
    assert len({out[n]["best_epoch"] for n in ("B1", "B2", "B3")}) > 1  # here the rules pick different epochs


def test_labels_without_meta_positives_keep_the_b2_fallback(tmp_path):
    """Issue 28: a label with no positive in D_meta gives M's F1 reward no signal, so by default M treats it as
    B2 does: τ = 0.5, w = 1, left out of the policy gradient; with ``no_positive_labels=learn`` its threshold
    follows the shared GRU head trained on the other labels."""
    task = _synthetic(600)
    task.Y["meta"][:, 0] = 0  # label 0: no D_meta positive
    clf = ClassifierConfig(lr=1e-2, batch_size=64)
    cfg = MetaConfig(episodes=8, inner_epochs=1, warmup_epochs=2, hidden=8, label_dim=4, lr=3e-2, sigma_tau=0.1,
                     threshold_samples=4)
    out = run_meta(task, cfg, clf, tmp_path / "fallback", seed=0, progress_bar=False)["M"]
    assert out["thresholds"][0] == 0.5 and out["weights"][0] == 1.0
    assert any(abs(t - 0.5) > 1e-3 for t in out["thresholds"][1:])  # the others did learn
    learned = run_meta(task, MetaConfig(**{**cfg.__dict__, "no_positive_labels": "learn"}), clf, tmp_path / "learn",
                       seed=0, progress_bar=False)["M"]
    assert abs(learned["thresholds"][0] - 0.5) > 1e-3  # the old behaviour: it drifts with the shared head
