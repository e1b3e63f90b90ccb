"""Shared fixtures: the HB templates and pool A (1,913 Enamine blocks) with its match matrix."""

from __future__ import annotations

import pytest

from synthesis_pathways.data import load_building_blocks, load_templates
from synthesis_pathways.space import ReactionSpace


@pytest.fixture(scope="session")
def templates():
    return load_templates("hb")


@pytest.fixture(scope="session")
def pool_a():
    return load_building_blocks("enamine_1913").smiles


@pytest.fixture(scope="session")
def space(templates, pool_a, tmp_path_factory):
    return ReactionSpace(templates, pool_a, cache_dir=tmp_path_factory.mktemp("match_cache"))
