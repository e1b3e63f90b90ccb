import numpy as np
import pytest

from synthesis_pathways.chem import morgan_bits
from synthesis_pathways.featurize import (
    FeatureConfig,
    Featurizer,
    SparseRowDataset,
    StepData,
    network_data,
)
from synthesis_pathways.knn import CosineKNN
from synthesis_pathways.syntree import ADD, END, EXPAND, SyntheticTree

CFG = FeatureConfig(nbits=512, radius=2, emb_bits=64, emb_radius=2)


def _tree():
    t = SyntheticTree()
    t.update(ADD, 76, "CC(=O)O", "CN", "CNC(C)=O")
    t.update(END)
    return t


def test_feature_dims():
    paper = FeatureConfig()
    assert [paper.input_dim(n, 91) for n in ("act", "rt1", "rxn", "rt2")] == [12288, 12288, 16384, 16475]
    assert [paper.output_dim(n, 91) for n in ("act", "rt1", "rxn", "rt2")] == [4, 256, 91, 256]


def test_featurizer_golden_rows(templates, tmp_path):
    bimol = np.array([t.bimolecular for t in templates])
    data = Featurizer(CFG, bimol).featurize([_tree()])
    assert len(data) == 2 and data.state.shape == (2, 3 * 512)
    n = CFG.nbits
    target = morgan_bits("CNC(C)=O", 2, n)
    # step 0 (Add from an empty state): only the target third is set
    np.testing.assert_array_equal(data.state[0].toarray()[0], np.concatenate([np.zeros(2 * n), target]))
    # step 1 (End): r1 = the product, r2 = none
    np.testing.assert_array_equal(data.state[1].toarray()[0], np.concatenate([target, np.zeros(n), target]))
    assert data.action.tolist() == [ADD, END] and data.template.tolist() == [76, -1]
    np.testing.assert_array_equal(data.r1_emb[0].toarray()[0], morgan_bits("CC(=O)O", 2, 64))
    np.testing.assert_array_equal(data.r2_emb[0].toarray()[0], morgan_bits("CN", 2, 64))
    np.testing.assert_array_equal(data.r1_fp[0].toarray()[0], morgan_bits("CC(=O)O", 2, n))
    assert data.r1_fp[1].nnz == 0 and data.bimolecular.tolist() == [True, False]
    # sparse save/load round trip
    data.save(tmp_path / "f.npz")
    back = StepData.load(tmp_path / "f.npz")
    assert (back.state != data.state).nnz == 0 and back.action.tolist() == data.action.tolist()


def test_network_rows(templates):
    bimol = np.array([t.bimolecular for t in templates])
    t = _tree()
    t2 = SyntheticTree()
    t2.update(ADD, 76, "CC(=O)O", "CN", "CNC(C)=O")
    uni = next(i for i, tpl in enumerate(templates) if not tpl.bimolecular)
    t2.update(EXPAND, uni, "CNC(C)=O", None, "X")  # structure only: featurization does not run templates
    t2.update(END)
    data = Featurizer(CFG, bimol).featurize([t, t2])
    sizes = {net: len(network_data(data, net, 91)) for net in ("act", "rt1", "rxn", "rt2")}
    assert sizes == {"act": 5, "rt1": 2, "rxn": 3, "rt2": 2}
    assert len(network_data(data, "rt2", 91, rt2_keep_unimolecular=True)) == 3
    rt2 = network_data(data, "rt2", 91)
    assert rt2.x.shape == (2, 4 * 512 + 91) and rt2.x[0, 4 * 512 + 76] == 1
    rxn = network_data(data, "rxn", 91)
    assert rxn.y.tolist() == [76, 76, uni]
    batch = SparseRowDataset(rxn).collate([2, 0])
    assert batch["x"].shape == (2, 4 * 512) and batch["y"].tolist() == [uni, 76]
    with pytest.raises(ValueError, match="unknown network"):
        network_data(data, "foo", 91)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    emb = (rng.random((300, 64)) < 0.1).astype(np.float32)
    emb[5] = 0  # an all-zero embedding never wins
    q = rng.random((7, 64)).astype(np.float32)
    knn = CosineKNN(emb)
    got = knn.query(q, k=5)
    norms = np.linalg.norm(emb, axis=1)
    cos = (q @ emb.T) / np.linalg.norm(q, axis=1)[:, None] / np.where(norms > 0, norms, 1)[None, :]
    expected = np.argsort(-cos, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(got, expected)
    subset = np.arange(0, 300, 3)
    got_sub = knn.query(q[0], k=3, subset=subset)
    assert set(got_sub) <= set(subset)
    np.testing.assert_array_equal(got_sub, subset[np.argsort(-cos[0, subset], kind="stable")[:3]])


def test_knn_ties_and_errors():
    emb = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert CosineKNN(emb).query(np.array([1.0, 0.0]), k=2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty"):
        CosineKNN(emb).query(np.array([1.0, 0.0]), subset=np.array([], dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        CosineKNN(np.zeros(3))


def test_candidate_ranker_ranks_within_partner_lists():
    from synthesis_pathways.knn import CandidateRanker

    emb = np.eye(5, dtype=np.float32)
    emb[4] = emb[0]  # block 4 has block 0's embedding: a tie, not a better candidate
    partners = [[np.array([1, 2]), np.array([0, 3])]]
    r = CandidateRanker(emb, partners)
    pred = np.array([[0.1, 0.9, 0.5, 0.8, 0], [0.1, 0.9, 0.5, 0.8, 0], [0.1, 0.9, 0.5, 0.8, 0],
                     [1, 0, 0, 0, 0]], dtype=np.float32)
    true = np.stack([emb[2], emb[2], emb[0], np.zeros(5, np.float32)])
    # row 0 over all blocks: blocks 1 and 3 are closer than 2 -> rank 3; row 1 in list (t0, s0) = {1, 2}: rank 2;
    # row 2 in list (t0, s1) = {0, 3}: block 3 is closer -> rank 2; row 3 has no target -> not ranked
    assert r.ranks(pred, true, np.array([-1, 0, 1, 0])).tolist() == [3, 2, 2, 0]
    assert r.ranks(pred[2:3] * 0 + emb[0], emb[0:1]).tolist() == [1]  # tie with block 4 is not "better"


def test_rt2_rows_know_their_partner_list(space):
    """The featurizer records which partner list the second reactant came from: the rt2 rows' candidate
    groups name a list that holds the true partner (what decoding's k-NN searches)."""
    from synthesis_pathways.sampling import sample_shard

    trees, _ = sample_shard(space, seed=5, shard=0, attempts=40, qed_filter=False)
    data = Featurizer(CFG, space.bimolecular_mask(), space.partner_slot).featurize(trees)
    steps = [s for t in trees for s in t.steps]
    rt2 = network_data(data, "rt2", space.n_templates)
    rows = np.flatnonzero(((data.action == ADD) | (data.action == EXPAND)) & data.bimolecular)
    assert len(rows) >= 5 and (rt2.candidates >= 0).all()
    for row, group in zip(rows, rt2.candidates):
        s = steps[row]
        assert group == 2 * s.template + space.partner_slot(s.template, s.reactant1)
        assert space.block_index[s.reactant2] in set(space.partners[group // 2][group % 2].tolist())
