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
def space(templates, pool_a, tmp_path_factory, request):
    # the match matrix is cached under a hash of the blocks and templates, so pytest's persistent cache
    # folder can hold it across sessions without ever serving a stale matrix
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("synthesis_pathways_matches") if cache is not None else tmp_path_factory.mktemp("m")
    return ReactionSpace(templates, pool_a, cache_dir=folder)
