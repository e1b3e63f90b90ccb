import numpy as np
import pytest

from synthesis_pathways.chem import morgan_bits, tanimoto
from synthesis_pathways.decode import Decoder, RandomPolicy, build_decoder
from synthesis_pathways.evaluate import (
    mean_reciprocal_rank,
    nearest_block_similarity,
    plan_targets,
    summarize,
)
from synthesis_pathways.featurize import FeatureConfig, Featurizer
from synthesis_pathways.knn import CosineKNN
from synthesis_pathways.sampling import sample_shard
from synthesis_pathways.syntree import END, MERGE, replay_tree

CFG = FeatureConfig(nbits=512, emb_bits=64)


class OraclePolicy:
    """Makes the choices of a known tree (to test the decoding loop without a trained model)."""

    def __init__(self, tree, space):
        self.steps = list(tree.steps)
        self.space = space
        self.i = -1

    def action_probs(self, state):
        self.i += 1
        p = np.full(4, 0.01)
        p[self.steps[self.i].action] = 1.0
        return p

    def first_reactant(self, state, k):
        return self.space.block_index[self.steps[self.i].reactant1]

    def template_probs(self, state, z_m1):
        p = np.full(self.space.n_templates, 0.001)
        p[self.steps[self.i].template] = 1.0
        return p

    def second_reactant(self, state, z_m1, template, candidates):
        j = self.space.block_index[self.steps[self.i].reactant2]
        assert j in set(candidates.tolist()), "the true partner must be in the template's partner list"
        return j


def _decoder(space, policy):
    return Decoder(space, Featurizer(CFG, space.bimolecular_mask()), policy)


def test_action_mask_forbids_illegal_actions(space):
    d = _decoder(space, None)
    assert d.action_mask([]).tolist() == [1, 0, 0, 0]
    assert d.action_mask(["CNC(C)=O"]).tolist() == [1, 1, 0, 1]
    two = d.action_mask(["OC(=O)c1ccccc1", "NCCO"])
    assert two[0] == 0 and two[3] == 0 and two[1] == 1 and two[2] == 1  # an amide coupling merges them
    assert d.action_mask(["CCCC", "CCCCC"])[2] == 0  # nothing reacts alkanes


def test_oracle_policy_recovers_sampled_trees(space):
    trees, _ = sample_shard(space, seed=7, shard=0, attempts=30, qed_filter=False)
    # keep trees whose every step has a single product, so the canonical product rule is the tree's
    trees = [t for t in trees if all(len(space.templates[s.template].run(s.reactant1, s.reactant2)) == 1
                                     for s in t.reactions)]
    assert len(trees) >= 3
    for tree in trees[:6]:
        d = _decoder(space, OraclePolicy(tree, space))
        res = d.decode(morgan_bits(tree.root, 2, CFG.nbits), target=tree.root)
        assert res.finished and res.best == tree.root and res.similarity == 1.0
        assert res.tree.products() == tree.products()


def test_decoder_states_equal_training_states(space):
    """Exact equivalence: the state the decoder builds from the roots at each step is the row the
    featurizer wrote for that step (so the networks see at decoding what they saw in training)."""
    from synthesis_pathways.syntree import SyntheticTree

    trees, _ = sample_shard(space, seed=2, shard=0, attempts=20, qed_filter=False)
    feat = Featurizer(CFG, space.bimolecular_mask())
    data = feat.featurize(trees)
    row = 0
    for tree in trees:
        target_bits = morgan_bits(tree.root, CFG.radius, CFG.nbits)
        replay = SyntheticTree()
        for step in tree.steps:
            np.testing.assert_array_equal(feat.state_vector(replay.roots, target_bits), data.state[row].toarray()[0])
            replay.steps.append(step)
            row += 1
    assert row == len(data)


def test_random_policy_trees_are_valid(space):
    d = _decoder(space, RandomPolicy(len(space.blocks), space.n_templates, seed=0))
    targets = ["CC(C)(C)OC(=O)N1CCC(C(=O)NCc2ccccc2)CC1", "O=C(Nc1ccccc1)c1ccco1", "CCOC(=O)c1cn[nH]c1"]
    results = plan_targets(d, targets + ["not a smiles"], beam=2, progress_bar=False)
    finished = [r for r in results if r.finished]
    assert finished, "the random policy should finish at least one of three targets"
    from synthesis_pathways.syntree import SyntheticTree

    for r in finished:
        tree = SyntheticTree.from_json(r.route)
        if r.answer_is_block:  # the answer is bought: a route with no reaction
            assert not tree.steps and r.best in space.block_index and r.depth == 0
            continue
        assert tree.steps[-1].action == END and tree.root == r.best  # the route makes the answer
        assert replay_tree(tree, space.templates, set(space.blocks)).ok
        assert 0 < r.similarity <= 1
    assert not results[-1].finished and results[-1].similarity == 0
    s = summarize(results)
    assert s["n"] == 4 and s["similarity_all"] == pytest.approx(sum(r.similarity for r in results) / 4)


def test_merge_run_mask_runs_templates(space):
    m = space.merge_run_mask("OC(=O)c1ccccc1", "NCCO")
    assert m[76] and m.sum() >= 1
    assert all(space.templates[t].run("OC(=O)c1ccccc1", "NCCO") for t in np.flatnonzero(m))
    assert MERGE == 2


def test_summary_definitions():
    from synthesis_pathways.evaluate import TargetResult

    rs = [TargetResult("A", "A", 1.0, True, True, True, 1, 0.1),
          TargetResult("B", "C", 0.5, True, False, False, 1, 0.1),
          TargetResult("D", None, 0.0, False, False, False, 0, 0.1)]
    s = summarize(rs)
    assert s["recovery_fp"] == pytest.approx(1 / 3) and s["similarity_all"] == pytest.approx(0.5)
    assert s["similarity_unrecovered_finished"] == pytest.approx(0.5) and s["unfinished"] == pytest.approx(1 / 3)


def test_nearest_block_similarity_equals_pairwise_tanimoto():
    blocks = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccccc1", "OC(=O)CCN"]
    targets = ["CC(=O)Nc1ccc(O)cc1", "CCO", "not a smiles", "NCCC(=O)OC"]
    got = nearest_block_similarity(targets, blocks)
    want = [max(tanimoto(t, b) for b in blocks) for t in targets]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[1] == 1.0 and got[2] == 0.0  # a block itself; an invalid target scores 0
    assert nearest_block_similarity([], blocks).shape == (0,)


def test_mrr():
    emb = np.eye(4, dtype=np.float32)
    knn = CosineKNN(emb)
    pred = np.array([[1, 0.5, 0, 0], [1, 0.5, 0, 0]], dtype=np.float32)
    assert mean_reciprocal_rank(pred, np.array([0, 1]), knn) == pytest.approx((1 + 0.5) / 2)


def test_build_decoder_needs_model(space):
    with pytest.raises(ValueError, match="trained"):
        build_decoder(space, None, policy="model")


def test_planning_cache_reads_finished_targets_back(space, tmp_path):
    d = _decoder(space, RandomPolicy(len(space.blocks), space.n_templates, seed=0))
    targets = ["O=C(Nc1ccccc1)c1ccco1", "CCOC(=O)c1cn[nH]c1", "not a smiles"]
    cache = tmp_path / "plan.jsonl"
    first = plan_targets(d, targets, beam=1, progress_bar=False, cache_path=cache, cache_params={"m": 1})
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2]) + '\n{"target": "O=C(N')  # killed while writing the 2nd target
    planned = []
    real_rollouts = d.rollouts
    d.rollouts = lambda *a, **k: planned.append(a[1]) or real_rollouts(*a, **k)
    again = plan_targets(d, targets, beam=1, progress_bar=False, cache_path=cache, cache_params={"m": 1})
    assert planned == ["CCOC(=O)c1cn[nH]c1"]  # the first came back from the file, the torn one is redone
    assert [r.target for r in again] == [r.target for r in first] and again[0] == first[0]
    plan_targets(d, targets, beam=1, progress_bar=False, cache_path=cache, cache_params={"m": 2})  # other model
    assert len(planned) == 3


def test_route_makes_the_answer_when_a_block_is_best(space):
    """When the node most similar to the target is a building block, the answer is that block and the route
    is "buy it": the decoded tree, whose top is a product, was printed under the block's name before."""
    trees, _ = sample_shard(space, seed=7, shard=0, attempts=30, qed_filter=False)
    tree = next(t for t in trees if t.depth == 1 and len(space.templates[t.steps[0].template].run(
        t.steps[0].reactant1, t.steps[0].reactant2)) == 1)
    block = tree.steps[0].reactant1
    d = _decoder(space, OraclePolicy(tree, space))
    res = d.decode(morgan_bits(block, 2, CFG.nbits), target=block)
    assert res.finished and res.best == block and res.similarity == 1.0
    assert res.answer_is_block and res.tree is not None and not res.tree.steps
    assert res.rollout.root == tree.root  # the decoded tree is kept beside the route
    d = _decoder(space, OraclePolicy(tree, space))
    res = d.decode(morgan_bits(tree.root, 2, CFG.nbits), target=tree.root)
    assert not res.answer_is_block and res.tree.root == res.best == tree.root


def test_reference_protocol_chooses_before_scoring_unfinished_rollouts():
    """Ours scores an unfinished rollout 0 and then chooses; the reference chooses the rollout whose best
    node is most similar to the target, finished or not, and scores 0 afterwards when it did not finish."""
    from synthesis_pathways.decode import DecodeResult

    unfinished_close = DecodeResult(None, False, None, 0.0, k=1, raw_similarity=0.9, raw_best="X")
    finished_far = DecodeResult(None, True, "Y", 0.4, k=2, raw_similarity=0.4, raw_best="Y")
    ours = Decoder.choose([unfinished_close, finished_far], "ours")
    ref = Decoder.choose([unfinished_close, finished_far], "reference")
    assert ours.k == 2 and ours.similarity == 0.4 and ours.finished
    assert ref.k == 1 and ref.similarity == 0.0 and not ref.finished
    with pytest.raises(ValueError, match="protocol"):
        Decoder.choose([finished_far], "best")


def test_plan_variants_share_rollouts(space):
    """Variants that are subsets of the same rollouts agree with planning each on its own."""
    from synthesis_pathways.decode import PlanOptions
    from synthesis_pathways.evaluate import plan_variants

    targets = ["O=C(Nc1ccccc1)c1ccco1", "CCOC(=O)c1cn[nH]c1", "not a smiles"]
    variants = {"k1": PlanOptions(beam=1), "ours": PlanOptions(beam=3), "ref": PlanOptions(beam=3, protocol="reference"),
                "nn": PlanOptions(beam=3, target_nn=2)}
    d = _decoder(space, RandomPolicy(len(space.blocks), space.n_templates, seed=0))
    out = plan_variants(d, targets, variants, progress_bar=False)
    # the variant that uses every rollout equals planning it alone (same random draws, in the same order)
    alone = plan_targets(_decoder(space, RandomPolicy(len(space.blocks), space.n_templates, seed=0)), targets,
                         options=variants["nn"], progress_bar=False)
    assert [(r.best, r.similarity) for r in out["nn"]] == [(r.best, r.similarity) for r in alone]
    for a, b in zip(out["ours"], out["nn"]):  # more candidates never lower our protocol's answer
        assert b.similarity >= a.similarity
    for a, b in zip(out["k1"], out["ours"]):
        assert b.similarity >= a.similarity
    assert all(not r[-1].finished for r in out.values())
    nn = [r for r in out["nn"] if r.source.startswith("target_nn")]
    for r in nn:  # starting from the target's nearest block, the answer is at least as close as that block
        assert r.similarity >= nearest_block_similarity([r.target], space.blocks)[0] - 1e-9


def test_beam_search_over_all_decisions(space):
    """The beam search over all four decisions returns routes that replay and make their answer."""
    from synthesis_pathways.decode import PlanOptions
    from synthesis_pathways.syntree import SyntheticTree

    trees, _ = sample_shard(space, seed=7, shard=0, attempts=30, qed_filter=False)
    trees = [t for t in trees if all(len(space.templates[s.template].run(s.reactant1, s.reactant2)) == 1
                                     for s in t.reactions)]
    d = _decoder(space, RandomPolicy(len(space.blocks), space.n_templates, seed=3))
    for tree in trees[:3]:
        greedy = d.plan(tree.root, options=PlanOptions(beam=1))
        beam = d.plan(tree.root, options=PlanOptions(search="beam", width=2, n_first=2, target_nn=1))
        assert beam.source == "beam"
        if beam.finished and not beam.answer_is_block:
            assert beam.tree.root == beam.best and replay_tree(beam.tree, space.templates, set(space.blocks)).ok
        assert 0 <= beam.similarity <= 1 and (beam.finished or beam.similarity == 0)
    assert greedy.seconds > 0 and isinstance(beam.rollout, SyntheticTree)
