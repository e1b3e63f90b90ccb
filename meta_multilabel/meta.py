"""The learning-to-learn-and-predict loop, the fixed-policy baselines, rewards and label states.

One *episode* of the meta loop (paper note §4)::

    s      = label states of f_θ on D_meta (with the previous w, τ)
    (w, τ) ~ π_φ(· | s)                                  # GRU over labels, Gaussian actions
    train f_θ for K epochs on D_train with L(θ; w)       # warm start (or reset, a switch)
    R      = reward(f_θ, τ, D_meta)
    φ     ← φ + η (R − b) ∇ log π_φ(w, τ);  b ← β b + (1 − β) R

Both the meta loop and the baselines checkpoint after every episode / epoch into
``<run_dir>/checkpoints`` (``common.checkpoint``) and log to ``metrics.jsonl`` / TensorBoard, so a killed
run continues with ``resume="auto"`` and ends where an uninterrupted run would.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from common.logging import MetricLogger, get_logger
from common.progress import progress
from meta_multilabel.config import ClassifierConfig, MetaConfig
from meta_multilabel.evaluate import (
    apply_thresholds,
    at_least_one,
    close_under_parents,
    headline_metric,
    micro_f1,
    per_label_f1,
    task_metrics,
    tune_global_threshold,
    tune_thresholds_per_label,
)
from meta_multilabel.features import FeatureMatrix
from meta_multilabel.model import (
    STATE_DIM,
    MetaLearner,
    build_classifier,
    inverse_frequency_weights,
    reinforce_loss,
    weighted_bce,
)

log = get_logger(__name__)

REWARDS = ("prob", "f1", "label", "label_f1")


@dataclass
class PreparedTask:
    """Features and labels of D_train, D_meta and test for one corpus."""

    name: str
    task: str
    label_names: list[str]
    parents: list[int]
    X: dict[str, FeatureMatrix]
    Y: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def train_counts(self) -> np.ndarray:
        return self.Y["train"].sum(0).astype(np.int64)  # signed: orders use -counts


# ---------------------------------------------------------------------------- classifier steps


def train_epochs(model, optimizer, X: FeatureMatrix, Y: np.ndarray, *, epochs: int, batch_size: int,
                 generator: torch.Generator, weights: torch.Tensor | None = None, mode: str = "label") -> float:
    """``epochs`` passes of minibatch training with the weighted BCE; returns the last epoch's mean loss."""
    model.train()
    Yt = torch.from_numpy(Y.astype(np.float32))
    mean = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=generator).numpy()
        total, n = 0.0, 0
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            loss = weighted_bce(model(X.batch(idx)), Yt[idx], weights, mode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        mean = total / max(n, 1)
    return mean


@torch.no_grad()
def predict_probs(model, X: FeatureMatrix, batch_size: int = 2048) -> np.ndarray:
    model.eval()
    if X.data.dtype == np.int64:  # token ids: conv activations are (batch, filters, length)
        batch_size = min(batch_size, 256)
    out = [torch.sigmoid(model(X.batch(np.arange(s, min(s + batch_size, len(X))))))
           for s in range(0, len(X), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def label_states(probs: np.ndarray, Y: np.ndarray, tau: np.ndarray, w: np.ndarray, w_max: float) -> torch.Tensor:
    """s_j = [prevalence, mean p on positives, mean p on negatives, F1_j at τ_j, w_j / w_max, τ_j] on D_meta."""
    Yb = Y.astype(bool)
    pos, neg = Yb.sum(0), (~Yb).sum(0)
    mean_pos = np.where(pos > 0, (probs * Yb).sum(0) / np.maximum(pos, 1), 0.0)
    mean_neg = np.where(neg > 0, (probs * ~Yb).sum(0) / np.maximum(neg, 1), 0.0)
    f1 = per_label_f1(Y, apply_thresholds(probs, tau))
    s = np.stack([Yb.mean(0), mean_pos, mean_neg, f1, np.asarray(w) / w_max, np.asarray(tau)], axis=1)
    return torch.from_numpy(s.astype(np.float32))


# ------------------------------------------------------------------------------------- rewards


def compute_reward(kind: str, probs: np.ndarray, Y: np.ndarray, tau: np.ndarray) -> np.ndarray | float:
    """The reward of an episode on D_meta (scalar, or one per label for the per-label kinds).

    * ``prob``: (1/n) Σ_i (1/L) Σ_j (2y_ij − 1)(p_ij − τ_j), the paper note's reading of "a reward based on
      the predicted probability distributions". It is *linear* in τ_j with slope (n_neg_j − n_pos_j)/(nL),
      so it drives every rare label's threshold to the upper clip (predict nothing): kept for fidelity.
    * ``f1``: micro-F1 at τ.
    * ``label``: per-label r_j = (1/n) Σ_i (2y_ij − 1)(p_ij − τ_j) (same linearity caveat).
    * ``label_f1``: per-label r_j = F1_j at τ_j (zero_division 0), each with its own baseline.
    """
    if kind == "prob":
        return float(np.mean((2.0 * Y - 1.0) * (probs - tau[None, :])))
    if kind == "f1":
        return micro_f1(Y, apply_thresholds(probs, tau))
    if kind == "label":
        return np.mean((2.0 * Y - 1.0) * (probs - tau[None, :]), axis=0)
    if kind == "label_f1":
        return per_label_f1(Y, apply_thresholds(probs, tau))
    raise ValueError(f"reward must be one of {REWARDS}, got {kind!r}")


def label_order(kind: str, task: PreparedTask, seed: int) -> np.ndarray:
    """The order in which the GRU visits the labels."""
    L = task.num_labels
    counts = task.train_counts
    if kind == "auto":
        kind = "hierarchy" if task.task == "typing" else "frequency"
    if kind == "given":
        return np.arange(L)
    if kind == "frequency":
        return np.argsort(-counts, kind="stable")
    if kind == "shuffle":
        return np.random.default_rng(seed).permutation(L)
    if kind == "hierarchy":
        # Pre-order walk: each parent, then its children; siblings by descending frequency.
        children: dict[int, list[int]] = {}
        for j, p in enumerate(task.parents):
            children.setdefault(p, []).append(j)
        out: list[int] = []

        def visit(p: int) -> None:
            for c in sorted(children.get(p, []), key=lambda j: (-counts[j], j)):
                out.append(c)
                visit(c)

        visit(-1)
        return np.array(out)
    raise ValueError(f"label_order must be auto|frequency|hierarchy|shuffle|given, got {kind!r}")


@dataclass
class Proposal:
    """One episode's policy: means, raw Gaussian draws (for log π) and the clipped actions in use."""

    mu_w: torch.Tensor
    mu_t: torch.Tensor
    raw_w: torch.Tensor
    raw_t: torch.Tensor
    w: torch.Tensor
    tau: torch.Tensor


def fixed_labels(Y_meta: np.ndarray, cfg: MetaConfig) -> torch.Tensor:
    """Labels the policy leaves at w = 1, τ = 0.5 (``no_positive_labels=fallback``: no positive in D_meta)."""
    if cfg.no_positive_labels == "learn":
        return torch.zeros(Y_meta.shape[1], dtype=torch.bool)
    if cfg.no_positive_labels != "fallback":
        raise ValueError(f"no_positive_labels must be fallback or learn, got {cfg.no_positive_labels!r}")
    return torch.from_numpy(np.asarray(Y_meta).sum(0) == 0)


def propose_policy(meta: MetaLearner, states: torch.Tensor, order: torch.Tensor, cfg: MetaConfig,
                   gen: torch.Generator, fixed: torch.Tensor | None = None) -> Proposal:
    """(w, τ) ~ π_φ(· | states); a policy that is switched off is replaced by its fixed value (1 or 0.5), and
    so are the ``fixed`` labels."""
    meta.train()
    mu_w, mu_t = meta(states, order)
    (raw_w, raw_t), (w, tau) = meta.sample(mu_w, mu_t, generator=gen)
    L = meta.num_labels
    if not cfg.learn_weights:
        w = torch.ones(L)
    if not cfg.learn_thresholds:
        tau = torch.full((L,), 0.5)
    if fixed is not None and fixed.any():
        w, tau = torch.where(fixed, torch.ones(L), w), torch.where(fixed, torch.full((L,), 0.5), tau)
    return Proposal(mu_w, mu_t, raw_w, raw_t, w, tau)


def policy_gradient_step(meta: MetaLearner, meta_opt, proposal: Proposal, probs_meta: np.ndarray,
                         Y_meta: np.ndarray, baseline: torch.Tensor | None, cfg: MetaConfig, gen: torch.Generator,
                         fixed: torch.Tensor | None = None):
    """Score the proposal on D_meta, take one REINFORCE step on φ, update the moving baseline.

    Returns (mean reward, new baseline, meta loss). Thresholds do not change training, so with
    ``threshold_samples`` > 1 extra threshold draws are scored on the same classifier (one scoring each).
    The ``fixed`` labels (w = 1, τ = 0.5) are scored at those values and left out of log π.
    """
    L = meta.num_labels
    per_label = cfg.reward in ("label", "label_f1")
    draws = [(proposal.raw_t, proposal.tau)]
    if cfg.learn_thresholds:
        for _ in range(cfg.threshold_samples - 1):
            (_, extra_raw_t), (_, extra_tau) = meta.sample(proposal.mu_w, proposal.mu_t, generator=gen)
            if fixed is not None:
                extra_tau = torch.where(fixed, torch.full((L,), 0.5), extra_tau)
            draws.append((extra_raw_t, extra_tau))
    rewards = [torch.as_tensor(compute_reward(cfg.reward, probs_meta, Y_meta, t.numpy().astype(np.float64)),
                               dtype=torch.float32) for _, t in draws]
    reward_t = torch.stack(rewards).mean(0)
    if baseline is None:
        baseline = reward_t.clone()  # first episode: zero advantage rather than a huge one
    pg = torch.zeros(())
    for (draw_raw_t, _), r in zip(draws, rewards):
        lp_w, lp_t = meta.log_prob(proposal.raw_w, draw_raw_t, proposal.mu_w, proposal.mu_t)
        log_prob = (lp_w if cfg.learn_weights else 0) + (lp_t if cfg.learn_thresholds else 0)
        if fixed is not None and fixed.any():
            log_prob = torch.where(fixed, torch.zeros(()), torch.as_tensor(log_prob) * torch.ones(L))
        # Per-label rewards: label j's log-probability gets its own advantage r_j − b_j.
        pg = pg + (reinforce_loss(log_prob, r - baseline) if per_label
                   else reinforce_loss(torch.as_tensor(log_prob).sum(), r - baseline))
    meta_loss = pg / (len(draws) * L) - cfg.entropy_coef * meta.entropy() / L
    meta_opt.zero_grad(set_to_none=True)
    meta_loss.backward()
    meta_opt.step()
    meta.advance()
    baseline = cfg.baseline_beta * baseline + (1 - cfg.baseline_beta) * reward_t
    return reward_t, baseline, meta_loss.detach()


# ------------------------------------------------------------------------------------- helpers


def _episode_generator(seed: int, episode: int) -> torch.Generator:
    # Data order and action noise of episode e depend only on (seed, e): a resumed run replays them exactly.
    return torch.Generator().manual_seed(seed * 1_000_003 + episode)


def new_classifier(task: PreparedTask, cfg: ClassifierConfig, seed: int):
    torch.manual_seed(seed)
    kwargs = {"hidden": cfg.hidden, "dropout": cfg.dropout} if cfg.name in ("mlp", "cnn") else {}
    model = build_classifier(cfg.name, task.X["train"].dim, task.num_labels, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, opt


def evaluate_policy(task: PreparedTask, probs: dict[str, np.ndarray], tau, *, split: str = "test") -> dict:
    return task_metrics(task.task, task.Y[split], apply_thresholds(probs[split], tau), task.train_counts)


def evaluate_variants(task: PreparedTask, probs: dict[str, np.ndarray], tau) -> dict:
    """Test metrics under the two post-processing rules that are reported apart, never mixed in:
    "at least one label" (argmax when nothing passes τ) and, for typing, closing under parents."""
    pred = apply_thresholds(probs["test"], tau)
    out = {"test_at_least_one": task_metrics(task.task, task.Y["test"], at_least_one(pred, probs["test"]),
                                             task.train_counts)}
    if task.task == "typing":
        out["test_closed_under_parents"] = task_metrics(task.task, task.Y["test"],
                                                        close_under_parents(pred, task.parents), task.train_counts)
    return out


def _select_score(task: PreparedTask, probs_meta: np.ndarray, tau, metric: str) -> float:
    return task_metrics(task.task, task.Y["meta"], apply_thresholds(probs_meta, tau))[metric]


# ------------------------------------------------------------------------------------ baselines


def baseline_policies(kind: str, probs_meta: np.ndarray, Y_meta: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed prediction policies of a baseline on one classifier, tuned on D_meta where they are tuned:
    B1 τ = 0.5, B2 per-label τ (0.5 where no grid value gives a positive F1), B3 one τ; B4 τ = 0.5."""
    L = probs_meta.shape[1]
    if kind == "uniform":
        return {"B1": np.full(L, 0.5), "B2": tune_thresholds_per_label(probs_meta, Y_meta),
                "B3": np.full(L, tune_global_threshold(probs_meta, Y_meta))}
    return {"B4": np.full(L, 0.5)}


def run_baseline(task: PreparedTask, kind: str, cfg: ClassifierConfig, run_dir: str | Path, *, seed: int = 0,
                 resume: str = "never", logger: MetricLogger | None = None, progress_bar: bool = True,
                 keep_last: int = 2, select_metric: str = "micro_f1") -> dict:
    """Train one classifier with a fixed training policy and evaluate the fixed prediction policies.

    ``kind="uniform"`` gives B1 (τ = 0.5), B2 (per-label τ tuned on D_meta) and B3 (one global τ tuned on
    D_meta) from one uniformly trained classifier; ``kind="inverse_freq"`` gives B4 (pos_weight = neg/pos,
    capped at 50; τ = 0.5).

    Model selection is the meta loop's rule for every method: each method keeps the epoch whose classifier
    scores best on D_meta (``select_metric``, micro-F1) *under that method's own prediction policy* (B2 and
    B3 re-tuned on D_meta at every epoch, as M is scored at its own thresholds at every episode). The run
    stops after ``cfg.patience`` epochs in which no method improved.
    """
    if kind not in ("uniform", "inverse_freq"):
        raise ValueError(f"baseline kind must be uniform or inverse_freq, got {kind!r}")
    run_dir = Path(run_dir)
    ckpt = CheckpointManager(run_dir, keep_last=keep_last)
    start = ckpt.resolve_resume(resume)
    seed_everything(seed)
    model, opt = new_classifier(task, cfg, seed)
    weights, mode = (None, "label") if kind == "uniform" else (inverse_frequency_weights(task.Y["train"]), "pos")
    names = list(METHODS_OF_BASELINE[kind])
    epoch = 0
    best = {n: {"score": -1.0, "model": copy.deepcopy(model.state_dict()), "epoch": 0} for n in names}
    if start is not None:
        state = load_checkpoint(start)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        epoch, best = state["step"], state["best"]
        if "score" in best:
            raise ValueError(f"{start}: a checkpoint of the old selection rule (one epoch for B1-B3); start this "
                             "baseline again without resume")
        log.info("resumed %s baseline from %s (epoch %d)", kind, start, epoch)
    t0 = time.time()
    bar = progress(total=cfg.epochs, initial=epoch, desc=f"baseline {kind}", enabled=progress_bar, unit="epoch")

    def last_gain() -> int:
        return max(b["epoch"] for b in best.values())

    while epoch < cfg.epochs and not (cfg.patience and epoch - last_gain() >= cfg.patience):
        loss = train_epochs(model, opt, task.X["train"], task.Y["train"], epochs=1, batch_size=cfg.batch_size,
                            generator=_episode_generator(seed, epoch), weights=weights, mode=mode)
        epoch += 1
        probs_meta = predict_probs(model, task.X["meta"])
        scores = {}
        for name, tau in baseline_policies(kind, probs_meta, task.Y["meta"]).items():
            scores[name] = _select_score(task, probs_meta, tau, select_metric)
            if scores[name] > best[name]["score"]:
                best[name] = {"score": scores[name], "model": copy.deepcopy(model.state_dict()), "epoch": epoch}
        ckpt.save(epoch, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state(),
                          "step": epoch, "best": best, "config": asdict(cfg), "kind": kind})
        if logger is not None:
            logger.log(epoch, {"train/loss": loss, **{f"meta/{select_metric}/{n}": v for n, v in scores.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", **{n: f"{v:.4f}" for n, v in scores.items()})
    bar.close()
    results: dict[str, dict] = {}
    for name in names:
        model.load_state_dict(best[name]["model"])
        probs = {split: predict_probs(model, task.X[split]) for split in ("meta", "test")}
        tau = baseline_policies(kind, probs["meta"], task.Y["meta"])[name]
        results[name] = {"test": evaluate_policy(task, probs, tau), **evaluate_variants(task, probs, tau),
                         "meta": evaluate_policy(task, probs, tau, split="meta"),
                         "thresholds": np.asarray(tau).tolist(), "best_epoch": best[name]["epoch"],
                         "labels_at_half": int(np.sum(tau == 0.5))}
    results["_model_state"] = best[names[0]]["model"]
    results["_wall_seconds"] = time.time() - t0
    return results


METHODS_OF_BASELINE = {"uniform": ("B1", "B2", "B3"), "inverse_freq": ("B4",)}


# ------------------------------------------------------------------------------------ meta loop


def run_meta(task: PreparedTask, meta_cfg: MetaConfig, clf_cfg: ClassifierConfig, run_dir: str | Path, *,
             seed: int = 0, resume: str = "never", logger: MetricLogger | None = None, progress_bar: bool = True,
             keep_last: int = 2, label_init: torch.Tensor | None = None) -> dict:
    """Meta-learn per-label weights and thresholds for ``task``; evaluate the kept (θ, μ^τ) on test.

    The method name follows the flags: M (both policies), M-w (``learn_thresholds=False``, τ = 0.5) or
    M-τ (``learn_weights=False``, w = 1).
    """
    if meta_cfg.reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {meta_cfg.reward!r}")
    run_dir = Path(run_dir)
    L = task.num_labels
    ckpt = CheckpointManager(run_dir, keep_last=keep_last)
    start = ckpt.resolve_resume(resume)
    seed_everything(seed)
    clf, clf_opt = new_classifier(task, clf_cfg, seed)
    torch.manual_seed(seed + 1)
    meta = MetaLearner(L, recurrence=meta_cfg.recurrence, hidden=meta_cfg.hidden, label_dim=meta_cfg.label_dim,
                       w_max=meta_cfg.w_max, sigma_w=meta_cfg.sigma_w, sigma_tau=meta_cfg.sigma_tau,
                       learn_sigma=meta_cfg.learn_sigma, label_init=label_init)
    meta_opt = torch.optim.Adam(meta.parameters(), lr=meta_cfg.lr)
    order = torch.from_numpy(label_order(meta_cfg.label_order, task, seed).copy())
    fixed = fixed_labels(task.Y["meta"], meta_cfg)
    if fixed.any():
        log.info("%d of %d labels have no positive in D_meta: w = 1, τ = 0.5 for them (no_positive_labels=%s)",
                 int(fixed.sum()), L, meta_cfg.no_positive_labels)
    episode, baseline = 0, None
    prev_w, prev_tau = np.ones(L), np.full(L, 0.5)
    best = {"score": -1.0}
    history: list[dict] = []
    t0 = time.time()
    if start is not None:
        state = load_checkpoint(start)
        clf.load_state_dict(state["model"])
        clf_opt.load_state_dict(state["optimizer"])
        meta.load_state_dict(state["meta"])
        meta_opt.load_state_dict(state["meta_optimizer"])
        restore_rng_state(state["rng"])
        episode, baseline, best, history = state["step"], state["baseline"], state["best"], state["history"]
        prev_w, prev_tau = state["prev_w"], state["prev_tau"]
        t0 -= state.get("wall_seconds", 0.0)
        log.info("resumed meta run from %s (episode %d)", start, episode)
    elif meta_cfg.warmup_epochs > 0:
        train_epochs(clf, clf_opt, task.X["train"], task.Y["train"], epochs=meta_cfg.warmup_epochs,
                     batch_size=clf_cfg.batch_size, generator=_episode_generator(seed, -1))
    probs_meta = predict_probs(clf, task.X["meta"])
    bar = progress(total=meta_cfg.episodes, initial=episode, desc="meta episodes", enabled=progress_bar,
                   unit="ep")
    while episode < meta_cfg.episodes:
        gen = _episode_generator(seed, episode)
        states = label_states(probs_meta, task.Y["meta"], prev_tau, prev_w, meta_cfg.w_max)
        proposal = propose_policy(meta, states, order, meta_cfg, gen, fixed)
        w, tau = proposal.w, proposal.tau
        if not meta_cfg.warm_start:
            clf, clf_opt = new_classifier(task, clf_cfg, seed + 7919 * (episode + 1))
            if meta_cfg.warmup_epochs > 0:
                train_epochs(clf, clf_opt, task.X["train"], task.Y["train"], epochs=meta_cfg.warmup_epochs,
                             batch_size=clf_cfg.batch_size, generator=_episode_generator(seed, -1))
        loss = train_epochs(clf, clf_opt, task.X["train"], task.Y["train"], epochs=meta_cfg.inner_epochs,
                            batch_size=clf_cfg.batch_size, generator=gen,
                            weights=w if meta_cfg.learn_weights else None, mode=meta_cfg.weight_mode)
        probs_meta = predict_probs(clf, task.X["meta"])
        reward_t, baseline, meta_loss = policy_gradient_step(meta, meta_opt, proposal, probs_meta, task.Y["meta"],
                                                             baseline, meta_cfg, gen, fixed)
        prev_w, prev_tau = w.numpy().astype(np.float64), tau.numpy().astype(np.float64)
        episode += 1
        # Kept policy: the mean thresholds for the classifier as it is now (no sampling at test time).
        with torch.no_grad():
            meta.eval()
            mean_w, mean_t = meta(label_states(probs_meta, task.Y["meta"], prev_tau, prev_w, meta_cfg.w_max),
                                  order)
        test_tau = mean_t.numpy().astype(np.float64) if meta_cfg.learn_thresholds else np.full(L, 0.5)
        test_tau = np.where(fixed.numpy(), 0.5, test_tau)
        score = _select_score(task, probs_meta, test_tau, meta_cfg.select_metric)
        if score > best["score"]:
            policy_w = mean_w.numpy().astype(np.float64) if meta_cfg.learn_weights else np.ones(L)
            policy_w = np.where(fixed.numpy(), 1.0, policy_w)
            best = {"score": score, "episode": episode, "model": copy.deepcopy(clf.state_dict()),
                    "tau": test_tau, "w": prev_w.copy(), "mean_w": policy_w}
        row = {"reward": float(reward_t.mean()), "baseline": float(baseline.mean()), "train/loss": loss,
               "meta/loss": float(meta_loss), "meta/select_score": score,
               "policy/w_mean": float(w.mean()), "policy/w_std": float(w.std()),
               "policy/tau_mean": float(tau.mean()), "policy/tau_std": float(tau.std()),
               "policy/mu_tau_mean": float(mean_t.mean()), "policy/mu_w_mean": float(mean_w.mean())}
        history.append({"episode": episode, **row, "mu_tau": mean_t.tolist(), "mu_w": mean_w.tolist()})
        ckpt.save(episode, {"model": clf.state_dict(), "optimizer": clf_opt.state_dict(), "meta": meta.state_dict(),
                            "meta_optimizer": meta_opt.state_dict(), "rng": capture_rng_state(), "step": episode,
                            "baseline": baseline, "best": best, "history": history, "prev_w": prev_w,
                            "prev_tau": prev_tau, "wall_seconds": time.time() - t0,
                            "config": {"meta": asdict(meta_cfg), "classifier": asdict(clf_cfg)}})
        if logger is not None:
            logger.log(episode, row)
        bar.update(1)
        bar.set_postfix(R=f"{row['reward']:.4f}", sel=f"{score:.4f}")
    bar.close()
    if "model" not in best:
        raise RuntimeError("meta run finished without any episode (episodes must be >= 1)")
    clf.load_state_dict(best["model"])
    probs = {split: predict_probs(clf, task.X[split]) for split in ("meta", "test")}
    weights_on = meta_cfg.learn_weights
    method = "M" if (weights_on and meta_cfg.learn_thresholds) else ("M-w" if weights_on else "M-tau")
    return {
        method: {"test": evaluate_policy(task, probs, best["tau"]), **evaluate_variants(task, probs, best["tau"]),
                 "meta": evaluate_policy(task, probs, best["tau"], split="meta"),
                 "thresholds": np.asarray(best["tau"]).tolist(), "weights": np.asarray(best["mean_w"]).tolist(),
                 "weights_last_sampled": np.asarray(best["w"]).tolist(),
                 "best_episode": best["episode"]},
        "_history": history,
        "_model_state": best["model"],
        "_wall_seconds": time.time() - t0,
    }


def headline(task: PreparedTask) -> str:
    return headline_metric(task.task)


__all__ = [
    "ClassifierConfig", "MetaConfig", "PreparedTask", "run_baseline", "run_meta", "compute_reward", "label_states",
    "label_order", "train_epochs", "predict_probs", "STATE_DIM", "headline",
]
