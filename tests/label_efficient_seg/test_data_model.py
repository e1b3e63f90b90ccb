import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import DataFormatError, DatasetNotFoundError
from label_efficient_seg import data as D
from label_efficient_seg.metrics import IGNORE_INDEX as IG
from label_efficient_seg.model import ClusterNet, DualNet, MeanTeacher, UNet


def test_unet_any_size_and_cam_identity():
    torch.manual_seed(0)
    net = UNet(3, base=4, depth=3).eval()
    x = torch.rand(2, 3, 30, 45)
    logits = net(x)
    assert logits.shape == (2, 3, 30, 45)
    # image logits are GAP of pixel logits; CAMs are ReLU of the pixel logits without the bias
    assert torch.allclose(net.image_logits(x), logits.mean((2, 3)), atol=1e-6)
    bias = net.head.bias.view(1, 3, 1, 1)
    assert torch.allclose(net.cams(x), torch.relu(logits - bias), atol=1e-5)


def test_wrappers_forward_and_teacher_ema():
    torch.manual_seed(0)
    mt = MeanTeacher(UNet(2, base=4, depth=1))
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    with torch.no_grad():
        for p in mt.student.parameters():
            p.add_(1.0)
    mt.update_teacher(alpha=0.99)  # first update copies the student (warm start)
    for t, s in zip(mt.teacher.parameters(), mt.student.parameters()):
        assert torch.allclose(t, s)
    dual = DualNet(UNet(2, base=4, depth=1), UNet(2, base=4, depth=1)).eval()
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(dual(x), dual.net_a(x))
    cn = ClusterNet(3, 12, base=4, depth=1)
    a, o = cn.both_heads(x)
    assert a.shape[1] == 3 and o.shape[1] == 12


def test_synthetic_shapes_are_seeded_with_instances():
    a = D.synthetic_shapes(3, 24, 3, seed=5)
    b = D.synthetic_shapes(3, 24, 3, seed=5)
    assert all((x == y).all() for x, y in zip(a.images, b.images))
    for m, inst in zip(a.masks, a.instances):
        assert ((inst > 0) == (m > 0)).all()
        assert set(np.unique(m)) <= {0, 1, 2}


def test_resize_sparse_keeps_every_click():
    lab = torch.full((40, 40), IG)
    pts = [(1, 1), (5, 7), (20, 33), (39, 39), (11, 12)]
    for k, (y, x) in enumerate(pts):
        lab[y, x] = k % 3
    small = D.resize_sparse(lab, (23, 23))
    assert (small != IG).sum() == len(pts)
    dense = torch.nn.functional.interpolate(lab[None, None].float(), size=(23, 23), mode="nearest-exact")[0, 0]
    assert (dense != IG).sum() < len(pts)  # what plain nearest resizing would lose


def test_weak_augment_moves_image_and_labels_together():
    torch.manual_seed(0)
    img = torch.zeros(3, 20, 30)
    mask = torch.zeros(20, 30, dtype=torch.long)
    img[:, 5:12, 3:9] = 1.0
    mask[5:12, 3:9] = 1
    for _ in range(10):
        im2, maps = D.weak_augment(img, {"mask": mask}, crop=16, scale_range=(0.75, 1.25))
        m2 = maps["mask"]
        assert im2.shape == (3, 16, 16) and m2.shape == (16, 16)
        inside = m2 == 1
        if inside.any():
            assert im2[0][inside].min() > 0.25  # object pixels stay object pixels (bilinear corners aside)
            assert (im2[0][inside] >= 0.49).float().mean() > 0.85
            assert im2[0][(m2 == 0)].max() < 0.75


def test_padding_uses_ignore_and_valid_map():
    ds = D.synthetic_shapes(2, 16, 2, seed=0)
    sds = D.SegDataset(ds, D.make_weak_labels(ds, "boxes", 0), crop=24, scale_range=(1.0, 1.0), flip=False)
    s = sds[0]
    assert s["image"].shape == (3, 24, 24)
    assert (s["valid"].sum() == 16 * 16) and (s["mask"][s["valid"] == 0] == IG).all()
    assert (s["weak"][s["valid"] == 0] == IG).all()


def _fake_camvid(root, lines, label_value=3):
    cam = root / "segmentation" / "camvid"
    (cam / "train").mkdir(parents=True)
    (cam / "trainannot").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(cam / "train" / "a.png")
    Image.fromarray(np.full((6, 8), label_value, np.uint8)).save(cam / "trainannot" / "a.png")
    (cam / "train.txt").write_text(lines)
    return cam


def test_camvid_reader_maps_void_and_reports_bad_lines(tmp_path):
    _fake_camvid(tmp_path, "train/a.png trainannot/a.png\n", label_value=11)
    ds = D.read_camvid("train", tmp_path)
    assert (ds.masks[0] == IG).all()
    bad = tmp_path / "bad"
    cam = _fake_camvid(bad, "train/a.png trainannot/a.png\ntrain/a.png\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:2"):
        D.read_camvid("train", bad)
    (cam / "train.txt").write_text("train/a.png trainannot/a.png\n")
    Image.fromarray(np.full((6, 8), 12, np.uint8)).save(cam / "trainannot" / "a.png")
    with pytest.raises(DataFormatError, match="label value 12"):
        D.read_camvid("train", bad)


def test_missing_dataset_names_dataset_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Kvasir-SEG.*simula"):
        D.read_kvasir(tmp_path)


def test_kvasir_reader_requires_a_box_for_every_image(tmp_path):
    root = tmp_path / "segmentation" / "kvasir_seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / "x.jpg")
    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(root / "masks" / "x.jpg")
    (root / "kavsir_bboxes.json").write_text(json.dumps({"other": {}}))
    with pytest.raises(DataFormatError, match="no box entry for image x"):
        D.read_kvasir(tmp_path, size=16)
    (root / "kavsir_bboxes.json").write_text(json.dumps(
        {"x": {"height": 40, "width": 40, "bbox": [{"xmin": 0, "ymin": 20, "xmax": 40, "ymax": 40}]}}))
    ds = D.read_kvasir(tmp_path, size=16)
    assert ds.boxes == [[(8, 0, 15, 15)]] and (ds.masks[0] == 1).all()
    (root / "kavsir_bboxes.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="kavsir_bboxes.json"):
        D.read_kvasir(tmp_path, size=16)


def test_real_shared_data_reads():
    """The shared copies parse (2 images each): CamVid void mapping, JPEG mask threshold, DSB instances."""
    cam = D.read_camvid("train", limit=2)
    assert cam.images[0].shape == (180, 240, 3) and set(np.unique(cam.masks[0])) <= set(range(11)) | {IG}
    kv = D.read_kvasir(limit=2)
    assert set(np.unique(kv.masks[0])) <= {0, 1} and len(kv.boxes[0]) >= 1
    dsb = D.read_dsb(limit=2)
    assert dsb.instances[0].max() > 0 and ((dsb.instances[0] > 0) == (dsb.masks[0] == 1)).all()
    cvc = D.read_cvc(limit=1)
    assert cvc.images[0].shape == (128, 128, 3)
