import random
import time

import pytest

from synthesis_pathways.data import read_routes
from synthesis_pathways.sampling import sample_shard
from synthesis_pathways.syntree import (
    ADD,
    END,
    EXPAND,
    MERGE,
    IllegalStepError,
    SyntheticTree,
    replay_route,
    replay_tree,
)


def _amide_tree():
    t = SyntheticTree()
    t.update(ADD, 76, "CC(=O)O", "CN", "CNC(C)=O")
    t.update(END)
    return t


def test_tree_state_and_json_roundtrip():
    t = SyntheticTree()
    assert t.legal_actions() == (True, False, False, False)
    t.update(ADD, 76, "CC(=O)O", "CN", "CNC(C)=O")
    assert t.roots == ["CNC(C)=O"] and t.legal_actions() == (True, True, False, True)
    t.update(ADD, 76, "OC(=O)c1ccccc1", "NCCO", "O=C(NCCO)c1ccccc1")
    assert t.roots == ["O=C(NCCO)c1ccccc1", "CNC(C)=O"]
    assert t.legal_actions() == (False, True, True, False)
    with pytest.raises(IllegalStepError):
        t.update(END)
    with pytest.raises(IllegalStepError, match="most recent root"):
        t.update(EXPAND, 0, "CNC(C)=O", None, "x")
    t.update(MERGE, 5, "O=C(NCCO)c1ccccc1", "CNC(C)=O", "P")  # a made-up product: structure only
    t.update(END)
    assert t.ended and t.root == "P" and t.depth == 3
    back = SyntheticTree.from_json(t.to_json())
    assert back == t and back.roots == ["P"]
    assert t.building_blocks() == ["CC(=O)O", "CN", "OC(=O)c1ccccc1", "NCCO"]


def test_replay_checks_every_node(templates, pool_a):
    blocks = set(pool_a) | {"CC(=O)O", "CN"}
    assert replay_tree(_amide_tree(), templates, blocks).ok
    bad = _amide_tree()
    bad.steps[0].product = "CCNC(C)=O"
    res = replay_tree(bad, templates, blocks)
    assert not res.ok and "does not give" in res.message
    res = replay_tree(_amide_tree(), templates, set(pool_a))
    assert not res.ok and "not a building block" in res.message


def test_sampled_trees_replay(space):
    trees, stats = sample_shard(space, seed=3, shard=0, attempts=25)
    assert stats.attempts == 25 and len(trees) == stats.kept > 0
    blocks = set(space.blocks)
    for t in trees:
        assert t.ended and replay_tree(t, space.templates, blocks).ok
        assert SyntheticTree.from_json(t.to_json()) == t


def test_chemprojector_routes_replay_subset(templates):
    """200 seeded random routes (all depths) reach their targets when every product of each step is kept."""
    routes, _ = read_routes("chemprojector_routes")
    subset = random.Random(0).sample(routes, 200)
    assert {r.n_reactions for r in subset} == {1, 2, 3, 4, 5}
    missed = [r.line for r in subset if r.target not in replay_route(r.tokens, templates)]
    assert missed == []


@pytest.mark.slow
def test_all_chemprojector_routes_replay(templates):
    """All 1,000 routes reach their target (about 5-10 s on one core, hence slow)."""
    routes, _ = read_routes("chemprojector_routes")
    t0 = time.perf_counter()
    missed = [r.line for r in routes if r.target not in replay_route(r.tokens, templates)]
    assert len(routes) == 1000 and missed == []
    assert time.perf_counter() - t0 < 120


def test_route_replay_fails_cleanly(templates):
    assert replay_route(["CC(=O)O", "CN", 76], templates) == {"CNC(C)=O"}
    assert replay_route(["CC(=O)O", 76], templates) == set()  # missing operand
    assert replay_route(["CCO", "CN", 76], templates) == set()  # no product
    assert replay_route(["CC(=O)O", "CN", 999], templates) == set()


def test_pool_a_facts(space):
    assert int(space.matches.any(axis=(1, 2)).sum()) == 1797
    assert int(space.usable_templates().sum()) == 59
