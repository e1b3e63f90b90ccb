import numpy as np
import pytest
from rdkit import Chem

from synthesis_pathways.chem import mol_from_smiles
from synthesis_pathways.sampling import TreeSampler, iter_trees, sample_shard, sample_to_disk, split_indices
from synthesis_pathways.space import (
    ReactionSpace,
    compute_matches,
    plain_slot_matches,
    relax_recursive_smarts,
)
from synthesis_pathways.syntree import ADD, SyntheticTree


def test_sampling_is_seeded(space):
    a, sa = sample_shard(space, seed=1, shard=2, attempts=15)
    b, sb = sample_shard(space, seed=1, shard=2, attempts=15)
    c, _ = sample_shard(space, seed=1, shard=3, attempts=15)
    assert [t.to_json() for t in a] == [t.to_json() for t in b]
    assert sa.to_dict()["failures"] == sb.to_dict()["failures"]
    assert [t.to_json() for t in a] != [t.to_json() for t in c]


def test_action_mask(space):
    s = TreeSampler(space, np.random.default_rng(0))
    t = SyntheticTree()
    assert s.action_mask(t).tolist() == [True, False, False, False]
    t.update(ADD, 76, "CC(=O)O", "CN", "CNC(C)=O")
    assert s.action_mask(t).tolist() == [True, True, False, True]
    t.update(ADD, 76, "OC(=O)c1ccccc1", "NCCO", "O=C(NCCO)c1ccccc1")
    m = s.action_mask(t)
    assert not m[0] and m[1] and not m[3]  # two roots: no Add, no End
    assert m[2] == bool(space.merge_pattern_mask("O=C(NCCO)c1ccccc1", "CNC(C)=O").any())


def test_results_do_not_depend_on_workers(space, tmp_path):
    one = sample_to_disk(space, tmp_path / "w1", attempts=20, seed=0, shard_size=5, workers=1, progress=False)
    two = sample_to_disk(space, tmp_path / "w2", attempts=20, seed=0, shard_size=5, workers=2, progress=False)
    assert [t.to_json() for t in iter_trees(tmp_path / "w1")] == [t.to_json() for t in iter_trees(tmp_path / "w2")]
    assert one.kept == two.kept and one.attempts == 20


def test_sampling_resumes_from_finished_shards(space, tmp_path):
    full = sample_to_disk(space, tmp_path / "a", attempts=20, seed=0, shard_size=5, progress=False)
    sample_to_disk(space, tmp_path / "b", attempts=20, seed=0, shard_size=5, progress=False)
    (tmp_path / "b" / "shard_00001.jsonl").unlink()  # a run killed before shard 1 was written
    resumed = sample_to_disk(space, tmp_path / "b", attempts=20, seed=0, shard_size=5, progress=False)
    assert resumed.kept == full.kept
    assert [t.to_json() for t in iter_trees(tmp_path / "a")] == [t.to_json() for t in iter_trees(tmp_path / "b")]


def test_two_stage_matches_equal_plain_matching(templates, pool_a, space):
    sub = pool_a[:150]
    plain = np.array([[[t.matches(s, 0), t.bimolecular and t.matches(s, 1)] for t in templates] for s in sub])
    assert (compute_matches(sub, templates) == plain).all()
    assert (space.matches[:150] == plain).all()
    assert all((plain_slot_matches(templates, mol_from_smiles(s)) == plain[i]).all() for i, s in enumerate(sub[:30]))
    # molecules outside the pool (sampled products, larger than blocks) through the space's cache
    trees, _ = sample_shard(space, 3, 0, 100)
    products = sorted({p for t in trees for p in t.products()} - set(space.blocks))[:60]
    assert len(products) >= 20
    for p in products:
        assert (space.slot_matches(p) == plain_slot_matches(templates, mol_from_smiles(p))).all(), p


def test_relax_recursive_smarts():
    assert relax_recursive_smarts("[C&$(C(B)([C&X4])[C&X4]),N;!$(N=*)]-[O:1]") == "[C&*,N;*]-[O:1]"
    assert relax_recursive_smarts("[$([OH]),$(N(C)C)]C") == "[*,*]C"
    assert relax_recursive_smarts("CC(=O)O") == "CC(=O)O"
    with pytest.raises(ValueError, match="unbalanced"):
        relax_recursive_smarts("[C&$(C(C)]")
    # the relaxed query widens, never narrows: a molecule the exact query matches, it matches too
    exact = Chem.MolFromSmarts("[N;$(NC)&!$(N=*)&!$(N[c,O])]")
    relaxed = Chem.MolFromSmarts(relax_recursive_smarts(Chem.MolToSmarts(exact)))
    for smi, hit in [("CCN", True), ("c1ccccc1N", False), ("C=N", False)]:
        m = Chem.MolFromSmiles(smi)
        assert m.HasSubstructMatch(exact) == hit and m.HasSubstructMatch(relaxed)


def test_partner_lists_and_reaction_mask(space):
    acid = "CC(=O)O"
    m = space.reaction_mask(acid)
    assert m[76]
    partners = space.partner_candidates(76, acid)
    assert len(partners) > 0 and all(space.templates[76].matches(space.blocks[i], 1) for i in partners[:20])
    assert not space.reaction_mask("C").any()


def test_match_cache_roundtrip(templates, pool_a, tmp_path):
    a = ReactionSpace(templates, pool_a[:50], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    b = ReactionSpace(templates, pool_a[:50], cache_dir=tmp_path)
    assert (a.matches == b.matches).all()
    with pytest.raises(ValueError, match="shape"):
        ReactionSpace(templates, pool_a[:50], matches=a.matches[:10])


def test_split():
    parts = split_indices(10, (0.6, 0.2, 0.2), seed=0)
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_matching_benchmark_compares_identical_sampling(space):
    from synthesis_pathways.bench import matching_side_by_side

    res = matching_side_by_side(space, attempts=15, repeats=1)
    assert res["same_trees"] and res["two_stage_attempts_per_s"] > 0 and res["plain_attempts_per_s"] > 0


def test_block_filter_keeps_blocks_that_match_a_template(space):
    """The reference's BuildingBlockFilter: 116 of pool A's 1,913 blocks match no template slot; they were in
    our k-NN index (so rt1 could pick a block that cannot react) and in the sampler's uniform draw."""
    from synthesis_pathways.pipeline import load_space

    f = space.filtered()
    assert len(f.blocks) == 1797 and f.unfiltered_blocks == 1913
    assert f.matches.any(axis=(1, 2)).all() and int(f.usable_templates().sum()) == 59
    dropped = set(space.blocks) - set(f.blocks)
    assert all(not space.slot_matches(b).any() for b in list(dropped)[:20])
    # partner lists index the filtered list and hold the same molecules as before
    t = int(np.flatnonzero(space.usable_templates() & space.bimolecular_mask())[0])
    assert [f.blocks[i] for i in f.partners[t][1]] == [space.blocks[i] for i in space.partners[t][1]]
    loaded = load_space("hb", "enamine_1913", cache_dir=getattr(space, "_cache_file", None) and
                        space._cache_file.parent)
    assert loaded.blocks == f.blocks  # load_space filters by default, as the pipelines do
