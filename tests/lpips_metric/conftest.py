"""Shared fixtures: reference models from the PyPI `lpips` package with random trunks, and tiny synthetic sets."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(scope="session")
def reference_models():
    """One `lpips.LPIPS(pnet_rand=True)` per net (built lazily: VGG16 is slow to initialise)."""
    import lpips

    cache: dict[str, object] = {}

    def get(net: str):
        if net not in cache:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[net] = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
        return cache[net]

    return get


@pytest.fixture(scope="session")
def tiny_bapps(tmp_path_factory):
    """A tiny SYNTHETIC BAPPS-format set (real CamVid/Kvasir/DSB patches, simulated judgments)."""
    from lpips_metric.synthetic import generate

    root = tmp_path_factory.mktemp("bapps")
    return generate(root, n_train=96, n_val=48, n_jnd=40, seed=0, train_splits=("traditional",),
                    val_splits=("traditional", "within"), jnd_splits=("traditional",))
