"""Weighted BCE, classifier heads and the meta-learner's policy-gradient pieces."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meta_multilabel.model import (
    LinearHead,
    MetaLearner,
    build_classifier,
    gaussian_log_prob,
    inverse_frequency_weights,
    reinforce_loss,
    weighted_bce,
)


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g), (torch.rand(5, 4, generator=g) < 0.4).float()


def test_weighted_bce_equals_per_label_sum():
    logits, y = _batch()
    w = torch.tensor([0.0, 0.5, 1.0, 2.0])
    expected = sum(w[j] * F.binary_cross_entropy_with_logits(logits[:, j], y[:, j], reduction="sum")
                   for j in range(4)) / 5
    assert weighted_bce(logits, y, w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_weighted_bce_uniform_equals_bce_with_logits():
    logits, y = _batch()
    ref = F.binary_cross_entropy_with_logits(logits, y) * 4  # torch averages over labels too
    assert weighted_bce(logits, y).item() == pytest.approx(ref.item(), rel=1e-6)
    assert weighted_bce(logits, y, torch.ones(4)).item() == pytest.approx(ref.item(), rel=1e-6)


def test_weighted_bce_pos_mode_is_pos_weight():
    logits, y = _batch()
    w = torch.tensor([1.0, 3.0, 0.5, 2.0])
    ref = F.binary_cross_entropy_with_logits(logits, y, pos_weight=w, reduction="sum") / 5
    assert weighted_bce(logits, y, w, mode="pos").item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="weight mode"):
        weighted_bce(logits, y, w, mode="bogus")


def test_inverse_frequency_weights_capped():
    Y = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]])
    assert inverse_frequency_weights(Y, cap=2.0).tolist() == [1.0, 2.0, 2.0]  # 2/2, min(3, cap), no positives


def test_linear_head_accepts_sparse_batches():
    torch.manual_seed(0)
    head = LinearHead(6, 3)
    dense = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(head(dense.to_sparse()), head(dense))
    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier("nope", 6, 3)
    assert isinstance(build_classifier("meta_multilabel.model:LinearHead", 6, 3), LinearHead)


def test_meta_learner_starts_from_standard_policy_and_respects_order():
    torch.manual_seed(0)
    for rec in ("labels", "steps"):
        m = MetaLearner(5, recurrence=rec, w_max=2.0)
        mu_w, mu_t = m(torch.rand(5, 6), torch.tensor([4, 2, 0, 1, 3]))
        torch.testing.assert_close(mu_w, torch.ones(5))
        torch.testing.assert_close(mu_t, torch.full((5,), 0.5))
    # with a non-trivial head, permuting the walk changes the outputs but they stay in label-index order
    m = MetaLearner(4, hidden=8, label_dim=4)
    torch.nn.init.normal_(m.head_tau.weight)
    s = torch.rand(4, 6)
    _, a = m(s, torch.arange(4))
    _, b = m(s, torch.tensor([3, 2, 1, 0]))
    assert a.shape == b.shape == (4,) and not torch.allclose(a, b)


def test_sampled_actions_are_clipped_and_log_prob_is_gaussian():
    m = MetaLearner(3, w_max=2.0, sigma_w=5.0, sigma_tau=5.0)
    (raw_w, raw_t), (w, tau) = m.sample(torch.ones(3), torch.full((3,), 0.5), torch.Generator().manual_seed(1))
    assert (w >= 0).all() and (w <= 2).all() and (tau >= 0.01).all() and (tau <= 0.99).all()
    lp = gaussian_log_prob(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.0))
    assert lp.item() == pytest.approx(-1 / 8 - math.log(2) - 0.5 * math.log(2 * math.pi))


def test_reinforce_gradient_sign():
    """An action above the mean with a positive advantage pulls the mean up; negative pushes it down."""
    for adv, sign in ((1.0, -1.0), (-1.0, 1.0)):
        mu = torch.tensor([0.5], requires_grad=True)
        lp = gaussian_log_prob(torch.tensor([0.6]), mu, torch.tensor(0.05))
        reinforce_loss(lp, adv).backward()
        assert torch.sign(mu.grad).item() == sign  # gradient descent moves μ against the gradient


def test_reinforce_climbs_a_toy_reward():
    """REINFORCE with a moving baseline finds the maximiser τ* = 0.3 of R(τ) = −(τ − 0.3)²."""
    torch.manual_seed(0)
    m = MetaLearner(1, hidden=8, label_dim=4, sigma_tau=0.05)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g, baseline, s = torch.Generator().manual_seed(0), None, torch.zeros(1, 6)
    for _ in range(300):
        mu_w, mu_t = m(s, torch.arange(1))
        (_, raw_t), _ = m.sample(mu_w, mu_t, g)
        r = -((raw_t - 0.3) ** 2)
        baseline = r if baseline is None else 0.9 * baseline + 0.1 * r
        loss = reinforce_loss(m.log_prob(raw_t, raw_t, mu_w, mu_t)[1], r - baseline)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m(s, torch.arange(1))[1].item() == pytest.approx(0.3, abs=0.05)


def test_label_name_text():
    from meta_multilabel.features import label_name_text

    assert label_name_text("/LOCATION/REGION") == "location region"
    assert label_name_text("nat-gas") == "nat gas"
    assert label_name_text("/WORK_OF_ART/SONG") == "work of art song"


def test_minilm_cache_survives_two_concurrent_writers(tmp_path, monkeypatch):
    """Two cells of a grid encoding the same items into one cache_dir at once: both renames happen only after
    both files are written (a barrier in os.replace), so writers sharing a temporary name would collide
    (the second rename finds nothing, or one writer truncates the other's bytes); each must get the features,
    and the cache must hold one complete file and no temporaries."""
    import threading

    from meta_multilabel import features

    feats = np.arange(24, dtype=np.float32).reshape(6, 4)
    monkeypatch.setattr(features, "encode_minilm", lambda items, task, **kw: feats.copy())
    real_replace, barrier = features.os.replace, threading.Barrier(2, timeout=20)

    def replace_after_both_wrote(src, dst):
        barrier.wait()
        real_replace(src, dst)

    monkeypatch.setattr(features.os, "replace", replace_after_both_wrote)
    out, errors = [], []

    def cell():
        try:
            out.append(features.cached_minilm([f"doc {i}" for i in range(6)], "text", tmp_path / "cache"))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=cell) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(out) == 2 and all(np.array_equal(o, feats) for o in out)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].startswith("minilm_text_") and files[0].endswith(".npy")
    assert np.array_equal(np.load(tmp_path / "cache" / files[0]), feats)
    monkeypatch.setattr(features, "encode_minilm", lambda *a, **k: pytest.fail("cache not read"))
    assert np.array_equal(features.cached_minilm([f"doc {i}" for i in range(6)], "text", tmp_path / "cache"), feats)


@pytest.mark.slow
def test_minilm_features_and_label_embeddings():
    from meta_multilabel.data import Mention
    from meta_multilabel.features import encode_minilm, label_name_embeddings

    e = label_name_embeddings(["/LOCATION/REGION", "/PERSON"])
    assert e.shape == (2, 384)
    m = Mention(tokens=["He", "visited", "New", "York", "."], start=2, end=4, fileid="d", senid=0)
    assert encode_minilm([m], "typing", progress_bar=False).shape == (1, 768)
    assert encode_minilm(["a short document"], "text", progress_bar=False).shape == (1, 384)
    meta = MetaLearner(2, label_init=e)
    assert meta(torch.rand(2, 6), torch.arange(2))[1].shape == (2,)


def test_cnn_on_token_ids_learns_keyword_labels():
    """features=tokens + classifier=cnn: a label per keyword, learnt from scratch in a few epochs."""
    from meta_multilabel.evaluate import apply_thresholds, micro_f1
    from meta_multilabel.features import MENTION_START, token_id_features
    from meta_multilabel.meta import predict_probs, train_epochs

    rng = np.random.default_rng(0)
    filler = ["the", "market", "said", "today", "shares", "rose", "bank", "oil"]
    docs, Y = [], []
    for _ in range(240):
        y = (rng.random(2) < 0.4).astype(np.uint8)
        words = list(rng.choice(filler, size=12))
        for j, kw in enumerate(["wheat", "copper"]):
            if y[j]:
                words.insert(int(rng.integers(0, len(words))), kw)
        docs.append(" ".join(words))
        Y.append(y)
    Y = np.array(Y)
    X = token_id_features(docs[:200], {"train": docs[:200], "test": docs[200:]}, "text", max_length=16)
    assert X["train"].data.dtype == np.int64 and X["train"].dim == X["train"].vocab_size
    torch.manual_seed(0)
    model = build_classifier("cnn", X["train"].dim, 2, hidden=16, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_epochs(model, opt, X["train"], Y[:200], epochs=8, batch_size=32, generator=torch.Generator().manual_seed(0))
    probs = predict_probs(model, X["test"])
    assert micro_f1(Y[200:], apply_thresholds(probs, 0.5)) > 0.95
    with pytest.raises(TypeError, match="token ids"):
        model(torch.rand(2, 16))
    from meta_multilabel.data import Mention

    m = Mention(tokens=["In", "New", "York", "."], start=1, end=3, fileid="d", senid=0)
    ids = token_id_features([m], {"x": [m]}, "typing", max_length=8, min_df=1)["x"].data[0]
    assert ids[1] == MENTION_START and ids[4] == MENTION_START + 1
