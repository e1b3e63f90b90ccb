"""BAPPS-format reader and the synthetic generator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.data import DataFormatError, DatasetNotFoundError
from lpips_metric.data import JNDDataset, TwoAFCDataset, split_dir, twoafc_splits
from lpips_metric.synthetic import SYNTHETIC_NOTE, simulate_2afc, simulate_jnd


def test_synthetic_set_layout_and_reader(tiny_bapps):
    ds = twoafc_splits(tiny_bapps, "val", ["traditional", "within"])
    item = ds["within"][3]
    assert set(item) == {"ref", "p0", "p1", "judge"}
    assert item["ref"].shape == (3, 64, 64) and item["ref"].dtype == torch.float32
    assert 0 <= item["ref"].min() and item["ref"].max() <= 1 and item["judge"].shape == (1,)
    meta = json.loads((split_dir(tiny_bapps, "2afc", "val", "within") / "meta.json").read_text())
    assert meta["note"] == SYNTHETIC_NOTE and meta["raters"] == 5
    assert all(t["t0"] == t["t1"] for t in meta["triplets"])  # within: same distortion type
    # judgments follow severity: the less distorted patch wins most of the time
    agree = np.mean([(t["judge"] > 0.5) == (t["s1"] < t["s0"]) for t in meta["triplets"] if t["judge"] != 0.5])
    assert agree > 0.7
    jnd = JNDDataset(split_dir(tiny_bapps, "jnd", "val", "traditional"))
    assert set(jnd[0]) == {"p0", "p1", "same"} and len(jnd) == 40
    assert "not human" in (tiny_bapps / "README.txt").read_text()


def test_simulated_raters():
    rng = np.random.default_rng(0)
    assert simulate_2afc(1.0, 0.0, 5, 8.0, rng) >= 0.8  # p0 heavily distorted: p1 judged closer
    assert simulate_jnd(0.0, 3, 8.0, 0.15, rng) == 1.0  # identical pair


@pytest.fixture
def split_copy(tiny_bapps, tmp_path):
    dst = tmp_path / "split"
    shutil.copytree(split_dir(tiny_bapps, "2afc", "val", "traditional"), dst)
    return dst


def test_reader_pairs_by_name(split_copy):
    (split_copy / "p1" / "000005.png").rename(split_copy / "p1" / "zzz.png")
    with pytest.raises(DataFormatError, match=r"p1.*missing \['000005'\], unexpected \['zzz'\]"):
        TwoAFCDataset(split_copy)


def test_reader_rejects_bad_judgments_and_images(split_copy):
    np.save(split_copy / "judge" / "000002.npy", np.array([1.7]))
    with pytest.raises(DataFormatError, match=r"000002\.npy.*not a fraction"):
        TwoAFCDataset(split_copy)
    np.save(split_copy / "judge" / "000002.npy", np.array([0.5]))
    (split_copy / "p0" / "000004.png").write_bytes(b"not a png")
    ds = TwoAFCDataset(split_copy)
    with pytest.raises(DataFormatError, match=r"000004\.png.*unreadable image"):
        ds[4]


def test_missing_split_names_source(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="PerceptualSimilarity"):
        split_dir(tmp_path, "2afc", "val", "traditional")
    with pytest.raises(ValueError, match="2afc or jnd"):
        split_dir(tmp_path, "3afc", "val", "x")
