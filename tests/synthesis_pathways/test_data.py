import pytest

from common.data import DataFormatError
from synthesis_pathways.data import load_building_blocks, load_templates, read_molecules, read_routes


def test_pool_sizes(pool_a):
    assert len(pool_a) == 1913


def test_bad_smiles_are_reported_counted_and_skipped(tmp_path, caplog):
    f = tmp_path / "pool.smi"
    f.write_text("CCO\nC1CC\n\nCC(=O)O extra-id\nnot_a_smiles\nOCC\n")
    mols = read_molecules(f)
    assert mols.smiles == ["CCO", "CC(=O)O", "CCO"]
    assert mols.lines == [1, 4, 6]
    assert [(s.line, s.text) for s in mols.skipped] == [(2, "C1CC"), (5, "not_a_smiles")]
    assert f"{f}:2" in caplog.text
    assert len(load_building_blocks(f)) == 2  # deduplicated by canonical SMILES


def test_csv_smiles_column(tmp_path):
    f = tmp_path / "pool.csv"
    f.write_text("id,SMILES\na,CCO\nb,C1CC\nc,c1ccccc1\n")
    mols = read_molecules(f)
    assert mols.smiles == ["CCO", "c1ccccc1"] and mols.skipped[0].line == 3


def test_csv_without_smiles_column(tmp_path):
    f = tmp_path / "pool.csv"
    f.write_text("id,name\na,b\n")
    with pytest.raises(DataFormatError, match="no SMILES column") as e:
        read_molecules(f)
    assert str(f) in str(e.value)


def test_bad_template_file_names_line(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("[C:1](=[O:2])[OH].[N:3]>>[C:1](=[O:2])[N:3]\nnot a reaction\n")
    with pytest.raises(DataFormatError) as e:
        load_templates(f)
    assert e.value.line == 2 and str(f) in str(e.value)


def test_routes_reader(tmp_path):
    routes, skipped = read_routes("chemprojector_routes")
    assert len(routes) == 1000 and not skipped
    assert [sum(r.n_reactions == d for r in routes) for d in range(1, 6)] == [272, 254, 225, 161, 88]
    f = tmp_path / "r.csv"
    f.write_text("smiles,synthesis\nCNC(C)=O,CC(=O)O;CN;R76\nC1CC,CC(=O)O;CN;R76\nCNC(C)=O,C1CC;CN;R76\n")
    routes, skipped = read_routes(f)
    assert len(routes) == 1 and routes[0].tokens == ["CC(=O)O", "CN", 76]
    assert [s.line for s in skipped] == [3, 4]
    f.write_text("smiles,synthesis\nCNC(C)=O,CC(=O)O;;R76\n")
    with pytest.raises(DataFormatError, match="malformed route"):
        read_routes(f)
    f.write_text("smiles,route\nCCO,CCO\n")
    with pytest.raises(DataFormatError, match="expected columns"):
        read_routes(f)


def test_missing_file_is_clear():
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_molecules("/nonexistent/blocks.smi")


def test_planted_duplicates_are_removed_from_the_test_targets(space, tmp_path):
    """Held-out roots were not de-duplicated against training trees (4.1% of a 3,649-tree run's test roots
    were training roots). Plant a copy of a training tree and a tree whose root is a training tree's
    intermediate in the test split: both are removed, the rest are kept, and the rate is reported."""
    import json

    from synthesis_pathways.evaluate import deduplicate_targets
    from synthesis_pathways.pipeline import load_trees, tree_nodes
    from synthesis_pathways.sampling import _write_shard, sample_shard

    trees = [t for k in range(2) for t in sample_shard(space, seed=3, shard=k, attempts=40, qed_filter=False)[0]]
    deep = next(t for t in trees if t.depth >= 2)
    train = [deep] + [t for t in trees if t is not deep][:10]
    intermediate = deep.reactions[0].product
    assert intermediate != deep.root
    planted = [train[3], deep.truncated_at(intermediate)]
    train_roots = {t.root for t in train} | {n for t in train for n in t.nodes()}
    test = [t for t in trees if t.root not in train_roots and t not in train][:5] + planted
    shards = tmp_path / "trees"
    shards.mkdir()
    _write_shard(shards, 0, [t.to_json() for t in train + test], {})
    (tmp_path / "features").mkdir()
    n_train = len(train)
    (tmp_path / "features" / "split.json").write_text(json.dumps(
        {"train": list(range(n_train)), "valid": [], "test": list(range(n_train, n_train + len(test)))}))

    roots = [t.root for t in load_trees(tmp_path, "test")]
    kept, stats = deduplicate_targets(roots, tree_nodes(tmp_path, ("train", "valid")))
    assert train[3].root not in kept and intermediate not in kept
    assert kept == list(dict.fromkeys(roots[:5]))
    assert stats["n_seen"] == 2 and stats["overlap_rate"] == pytest.approx(2 / stats["n_unique"])
    kept2, stats2 = deduplicate_targets(roots + ["not a smiles", roots[0]], set())
    assert kept2 == list(dict.fromkeys(roots)) and stats2["n_invalid"] == 1 and stats2["n_seen"] == 0
