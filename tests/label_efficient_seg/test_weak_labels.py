import numpy as np
import pytest

from label_efficient_seg import weak_labels as wl
from label_efficient_seg.metrics import IGNORE_INDEX as IG


def two_object_mask():
    """A 20x20 scene: background 0, a 8x10 block of class 1, a disk of class 2, a void strip."""
    m = np.zeros((20, 20), np.int64)
    m[2:10, 2:12] = 1
    yy, xx = np.mgrid[:20, :20]
    m[(yy - 14) ** 2 + (xx - 14) ** 2 <= 16] = 2
    m[:, 19] = IG
    return m


def test_tags_equal_classes_present():
    m = two_object_mask()
    assert wl.image_tags(m, 4, min_fraction=0.0).tolist() == [1, 1, 1, 0]
    tiny = m.copy()
    tiny[0, 0] = 3  # 1 pixel of 380 non-void pixels < 1 %
    assert wl.image_tags(tiny, 4).tolist() == [1, 1, 1, 0]
    assert wl.image_tags(tiny, 4, min_fraction=0.0).tolist() == [1, 1, 1, 1]


def test_tight_box_is_tight():
    inst = np.zeros((12, 12), np.int64)
    inst[3:7, 2:9] = 1
    inst[9, 9] = 2
    boxes = wl.tight_boxes(inst)
    assert boxes == [(3, 2, 6, 8), (9, 9, 9, 9)]
    for k, (y0, x0, y1, x1) in enumerate(boxes, 1):
        obj = inst == k
        assert obj[y0].any() and obj[y1].any() and obj[:, x0].any() and obj[:, x1].any()
        box = wl.boxes_to_mask([(y0, x0, y1, x1)], inst.shape).astype(bool)
        assert not (obj & ~box).any()


def test_rescale_box_full_image_and_half():
    assert wl.rescale_box((0, 0, 622, 529), (529, 622), (256, 256)) == (0, 0, 255, 255)
    assert wl.rescale_box((100, 50, 200, 150), (200, 400), (100, 200)) == (25, 50, 74, 99)


def test_scribbles_lie_inside_their_region_and_never_on_void():
    m = two_object_mask()
    s = wl.scribbles(m, np.random.default_rng(0), erosion_radius=2)
    lab = s != IG
    assert lab.any()
    assert (s[lab] == m[lab]).all()  # every scribbled pixel carries its region's class
    assert not (lab & (m == IG)).any()
    for c in (0, 1, 2):
        assert (s == c).any(), f"class {c} got no stroke"
    assert lab.mean() < 0.25


def test_scribbles_drop_all_strokes():
    s = wl.scribbles(two_object_mask(), np.random.default_rng(0), drop_fraction=1.0)
    assert (s == IG).all()


def test_points_lie_inside_instances_one_per_instance():
    inst = np.zeros((30, 30), np.int64)
    inst[2:8, 2:8] = 1
    yy, xx = np.mgrid[:30, :30]
    ring = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 36) & ((yy - 20) ** 2 + (xx - 20) ** 2 >= 9)
    inst[ring] = 2  # non-convex: the centroid lies outside
    mask = (inst > 0).astype(np.int64)
    for mode in ("centroid", "random"):
        p = wl.point_labels(mask, np.random.default_rng(3), instances=inst, mode=mode, n_background=4,
                            min_background_distance=3)
        fg = np.argwhere(p == 1)
        assert len(fg) == 2
        assert sorted(inst[y, x] for y, x in fg) == [1, 2]
        bg = np.argwhere(p == 0)
        assert len(bg) == 4
        from scipy import ndimage as ndi

        dist = ndi.distance_transform_edt(inst == 0)
        assert all(dist[y, x] >= 3 for y, x in bg)


def test_centroid_click_is_the_centroid_for_convex_objects():
    comp = np.zeros((9, 9), bool)
    comp[2:7, 1:8] = True
    assert wl.interior_point(comp) == (4, 4)


def test_noise_levels_grow_and_keep_void():
    m = two_object_mask()
    img = np.random.default_rng(0).integers(0, 255, (20, 20, 3)).astype(np.uint8)
    changed = []
    for level in ("low", "medium", "high"):
        n = wl.noisy_mask(m, img, np.random.default_rng(0), level, 3)
        assert n.shape == m.shape
        changed.append(float((n != m).mean()))
    assert 0 < changed[0] <= changed[2]
    with pytest.raises(ValueError, match="noise level"):
        wl.noisy_mask(m, img, np.random.default_rng(0), "extreme", 3)


def test_dilate_erode_binary_only_moves_object_boundaries():
    m = np.zeros((20, 20), np.int64)
    m[5:15, 5:15] = 1
    n = wl.dilate_erode_objects(m, np.random.default_rng(0), r_max=2, background_class=0)
    diff = n != m
    assert diff.any()
    inner = np.zeros_like(m, bool)
    inner[8:12, 8:12] = True
    assert not (diff & inner).any()
    assert (wl.dilate_erode_objects(m, np.random.default_rng(0), r_max=0) == m).all()


def test_superpixel_flips_change_whole_superpixels_to_other_classes():
    m = np.zeros((24, 24), np.int64)
    img = np.random.default_rng(1).integers(0, 255, (24, 24, 3)).astype(np.uint8)
    out = wl.superpixel_flips(m, img, np.random.default_rng(0), 0.2, num_classes=3, n_segments=20)
    assert (out != 0).any() and set(np.unique(out)) <= {0, 1, 2}


def test_labelled_subset_is_seeded_and_sized():
    a = wl.labelled_subset(367, 1 / 8, seed=0)
    assert len(a) == 46 and (a == wl.labelled_subset(367, 1 / 8, seed=0)).all()
    assert (np.diff(a) > 0).all()
    with pytest.raises(ValueError):
        wl.labelled_subset(10, 0.0, 0)


def test_generators_reject_non_2d_masks():
    with pytest.raises(ValueError, match="2-D"):
        wl.image_tags(np.zeros((2, 3, 4), np.int64), 3)
    with pytest.raises(ValueError, match="integers"):
        wl.scribbles(np.zeros((4, 4)), np.random.default_rng(0))
