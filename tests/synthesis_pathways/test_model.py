import numpy as np
import pytest
import torch
from torch import nn

from common.config import TrainerConfig
from synthesis_pathways.featurize import FeatureConfig, Featurizer, network_data
from synthesis_pathways.model import (
    MLP,
    NetConfig,
    SynNetModel,
    build_networks,
    fit_network,
    n_parameters,
    paper_parameter_counts,
    validate,
)
from synthesis_pathways.sampling import sample_shard


def test_mlp_layout():
    m = MLP(10, 8, 3)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 4 + ["Dropout", "Linear"]
    assert m[-2].p == 0.5


def test_parameter_counts_match_the_paper():
    counts = paper_parameter_counts(91)
    # act 15.3M, rt1 19.4M, rxn 76.4M, rt2 77.2M; about 188M in all
    assert counts["act"] == pytest.approx(15.3e6, rel=0.01) and counts["rt1"] == pytest.approx(19.4e6, rel=0.01)
    assert counts["rxn"] == pytest.approx(76.4e6, rel=0.01) and counts["rt2"] == pytest.approx(77.2e6, rel=0.01)
    assert n_parameters(MLP(12288, 1000, 4)) == counts["act"]  # the formula is the real module's


@pytest.fixture(scope="module")
def rxn_rows(space):
    trees = []
    for shard in range(3):
        trees += sample_shard(space, seed=11, shard=shard, attempts=25, qed_filter=False)[0]
    feat = FeatureConfig(nbits=256, emb_bits=64)
    steps = Featurizer(feat, space.bimolecular_mask()).featurize(trees)
    return network_data(steps, "rxn", space.n_templates), feat


def test_learning_memorizes_templates(rxn_rows, tmp_path):
    """rxn learns to predict the template of each training step (a solvable, memorizable task)."""
    data, feat = rxn_rows
    assert len(data) >= 30
    torch.manual_seed(0)
    model = MLP(feat.input_dim("rxn", 91), 64, 91, dropout=0.1)
    before = validate(model, data, "rxn")["accuracy"]
    cfg = TrainerConfig(max_epochs=40, batch_size=16, progress_bar=False, log_every_steps=100)
    res = fit_network("rxn", model, data, None, trainer_cfg=cfg, run_dir=tmp_path / "rxn", lr=3e-3)
    after = validate(model, data, "rxn")["accuracy"]
    majority = np.bincount(data.y).max() / len(data)
    assert after >= 0.9 and after > majority + 0.2 and after > before, (before, after, majority)
    assert res.stopped_reason == "max_epochs"


def test_early_stopping_stops(rxn_rows, tmp_path):
    data, feat = rxn_rows
    rng = np.random.default_rng(0)
    from synthesis_pathways.featurize import NetworkData

    noise = NetworkData(data.x, rng.integers(0, 91, size=len(data)))  # unlearnable validation labels
    torch.manual_seed(0)
    model = MLP(feat.input_dim("rxn", 91), 32, 91)
    cfg = TrainerConfig(max_epochs=60, batch_size=16, progress_bar=False, early_stopping_patience=2)
    res = fit_network("rxn", model, data, noise, trainer_cfg=cfg, run_dir=tmp_path / "es", lr=1e-3)
    assert res.stopped_reason == "early_stopping" and res.epoch < 60
    assert res.best_checkpoint is not None and res.best_checkpoint.exists()


def test_model_bundle_roundtrip(tmp_path):
    feat = FeatureConfig(nbits=128, emb_bits=32)
    cfg = NetConfig(hidden={"act": 8, "rt1": 8, "rxn": 8, "rt2": 8})
    nets = build_networks(feat, 91, cfg)
    m = SynNetModel(nets, feat, 91, cfg).eval()
    m.save(tmp_path / "model.safetensors")
    back = SynNetModel.load(tmp_path / "model.safetensors")
    x = torch.rand(2, feat.input_dim("rt2", 91))
    assert torch.equal(back.nets["rt2"](x), m.nets["rt2"](x))
    assert back.feat == feat and isinstance(back.nets["act"], nn.Module)


@pytest.mark.slow
def test_end_to_end_memorization(space, tmp_path):
    """The four nets trained on 80 sampled (QED-filtered) trees, then decoding 40 of those trees' roots,
    recover a good share of them: training and decoding states agree and all four nets learn."""
    from synthesis_pathways.decode import build_decoder
    from synthesis_pathways.evaluate import plan_targets, summarize

    trees = [t for k in range(3) for t in sample_shard(space, seed=0, shard=k, attempts=100)[0]][:80]
    feat = FeatureConfig(nbits=512, emb_bits=256)
    steps = Featurizer(feat, space.bimolecular_mask()).featurize(trees)
    cfg = NetConfig(hidden={"act": 256, "rt1": 256, "rxn": 256, "rt2": 256}, dropout=0.5, lr=1e-3)
    torch.manual_seed(0)
    nets = build_networks(feat, space.n_templates, cfg)
    tcfg = TrainerConfig(max_epochs=60, batch_size=32, progress_bar=False, log_every_steps=1000)
    for net, model in nets.items():
        fit_network(net, model, network_data(steps, net, space.n_templates), None, trainer_cfg=tcfg,
                    run_dir=tmp_path / net, lr=1e-3)
    decoder = build_decoder(space, SynNetModel(nets, feat, space.n_templates, cfg))
    targets = [t.root for t in trees[:40]]
    summary = summarize(plan_targets(decoder, targets, beam=3, progress_bar=False))
    random = summarize(plan_targets(build_decoder(space, None, policy="random"), targets, beam=3, progress_bar=False))
    print("memorization:", summary, "random policy:", random)
    assert summary["recovery_fp"] >= 0.3 and summary["similarity_all"] > random["similarity_all"] + 0.3, (summary, random)


def test_import_reference_checkpoint(tmp_path, monkeypatch):
    """A Lightning-style file with SynNet's `layers.*` keys loads; a wrong width is refused."""
    import synthesis_pathways.model as M
    from synthesis_pathways.model import import_reference_checkpoint

    # shrink the "paper" widths so the test stays small; the mapping and checks are the same
    monkeypatch.setattr(M, "PAPER_HIDDEN", {"act": 16, "rt1": 16, "rxn": 16, "rt2": 16})
    ref = MLP(12288, 16, 4)
    torch.save({"state_dict": {f"layers.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, tmp_path / "act.ckpt")
    model = import_reference_checkpoint(tmp_path / "act.ckpt", "act")
    x = torch.rand(2, 12288)
    ref.eval()
    assert torch.equal(model(x), ref(x))
    with pytest.raises(ValueError, match="does not fit"):
        import_reference_checkpoint(tmp_path / "act.ckpt", "rt1")
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="no 'layers"):
        import_reference_checkpoint(tmp_path / "bad.ckpt", "act")


@pytest.mark.gpu
def test_gpu_rxn_throughput():
    """The optional GPU check: the paper-width rxn net trains on CUDA (rows/s printed)."""
    from synthesis_pathways.bench import rxn_throughput

    for precision in ("fp32", "bf16"):
        r = rxn_throughput("cuda", steps=20, precision=precision)
        print(r)
        assert r["rows_per_second"] > 0


def test_rxn_device_cli_reaches_the_check():
    """`python -m synthesis_pathways.bench --rxn-device ...` runs the check (it once sat below the
    `__main__` guard and raised NameError); without CUDA it says so instead of a driver traceback."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible; test_gpu_rxn_throughput covers it")
    r = subprocess.run([sys.executable, "-m", "synthesis_pathways.bench", "--rxn-device", "cuda"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA device is visible" in r.stderr and "Traceback" not in r.stderr


class _ScheduledNet(nn.Module):
    """An rt1 stand-in whose validation outputs follow a schedule over epochs, to pin what selects the
    checkpoint: after epoch 1 it ranks every block first (MRR 1) with a large MSE (3x the target); from
    epoch 2 on it predicts one near-constant vector (MSE 4x smaller, MRR about 0.56). The input is the
    target itself. A buffer counts training steps, so the restored checkpoint says which epoch it is."""

    def __init__(self, dim: int, steps_per_epoch: int, good_epoch: int = 1):
        super().__init__()
        self.good_epoch = good_epoch
        self.w = nn.Parameter(torch.ones(1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.steps_per_epoch = steps_per_epoch
        self.const = torch.full((dim,), 1.0 / dim)
        self.const[0] += 0.05  # favours block 0, so the constant ranks the others second

    def forward(self, x):
        if self.training:
            self.steps += 1
            return x * self.w
        epoch = int(self.steps) // self.steps_per_epoch
        return 3 * x if epoch == self.good_epoch else self.const.expand_as(x).clone()


def test_rt1_checkpoint_and_early_stopping_follow_mrr_not_mse(tmp_path):
    """rt1's checkpoint was chosen on validation MSE, which barely moves while the k-NN ranking goes from
    random to useful; a toy where the two disagree must keep the MRR-best epoch and stop on its patience."""
    import scipy.sparse as sp

    from synthesis_pathways.featurize import NetworkData
    from synthesis_pathways.knn import CandidateRanker

    dim = 8
    y = np.tile(np.eye(dim, dtype=np.float32), (2, 1))  # 16 rows, each the embedding of one block
    data = NetworkData(sp.csr_matrix(y), y)
    ranker = CandidateRanker(np.eye(dim, dtype=np.float32))
    model = _ScheduledNet(dim, steps_per_epoch=2)
    cfg = TrainerConfig(max_epochs=50, batch_size=8, progress_bar=False, early_stopping_patience=3)
    res = fit_network("rt1", model, data, data, trainer_cfg=cfg, run_dir=tmp_path / "rt1", lr=1e-3, ranker=ranker)
    m1 = validate(_at_epoch(dim, 1), data, "rt1", ranker=ranker)
    m2 = validate(_at_epoch(dim, 2), data, "rt1", ranker=ranker)
    assert m1["mrr"] == 1.0 and m2["mrr"] < 0.6 and m2["mse"] < m1["mse"] / 3  # the two metrics disagree
    assert res.best_metrics["mrr"] == 1.0 and res.best_epoch == 1
    assert int(model.steps) // 2 == 1  # the restored weights are epoch 1's
    assert res.stopped_reason == "early_stopping" and res.epoch == 1 + 3


def _at_epoch(dim: int, epoch: int) -> nn.Module:
    m = _ScheduledNet(dim, steps_per_epoch=2)
    m.steps.fill_(2 * epoch)
    return m


def test_min_epochs_keeps_early_stopping_from_cutting_a_late_learner(tmp_path):
    """rt1's k-NN rank sat at chance for its first ten epochs in the quick run, so a patience counted from
    epoch 1 stopped it before it learned: with min_epochs, the late best epoch is found, then patience
    stops the net as before (a run of the same config resumes to the same result)."""
    import scipy.sparse as sp

    from synthesis_pathways.featurize import NetworkData
    from synthesis_pathways.knn import CandidateRanker

    dim = 8
    y = np.tile(np.eye(dim, dtype=np.float32), (2, 1))
    data = NetworkData(sp.csr_matrix(y), y)
    ranker = CandidateRanker(np.eye(dim, dtype=np.float32))
    cfg = TrainerConfig(max_epochs=50, batch_size=8, progress_bar=False, early_stopping_patience=3)
    kw = dict(trainer_cfg=cfg, lr=1e-3, ranker=ranker)
    early = fit_network("rt1", _ScheduledNet(dim, 2, good_epoch=6), data, data, run_dir=tmp_path / "a", **kw)
    assert early.best_epoch == 1 and early.epoch == 4  # stopped before the good epoch
    model = _ScheduledNet(dim, 2, good_epoch=6)
    late = fit_network("rt1", model, data, data, run_dir=tmp_path / "b", min_epochs=6, **kw)
    assert late.best_epoch == 6 and late.epoch == 9 and late.stopped_reason == "early_stopping"
    assert late.best_metrics["mrr"] == 1.0 and int(model.steps) // 2 == 6
    again = fit_network("rt1", _ScheduledNet(dim, 2, good_epoch=6), data, data, run_dir=tmp_path / "b",
                        min_epochs=6, resume="auto", **kw)
    assert (again.best_epoch, again.epoch, again.stopped_reason) == (6, 9, "early_stopping")
    # the patience ran out inside the first leg: the net stops at min_epochs
    short = fit_network("rt1", _ScheduledNet(dim, 2, good_epoch=1), data, data, run_dir=tmp_path / "c",
                        min_epochs=6, **kw)
    assert short.best_epoch == 1 and short.epoch == 6 and short.stopped_reason == "early_stopping"
