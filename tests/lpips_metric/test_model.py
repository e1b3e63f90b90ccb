"""LPIPS module: parity with the official package, properties, input checks, head loading."""

from __future__ import annotations

import warnings

import pytest
import torch

from lpips_metric.model import (
    LPIPS,
    HeadLoadError,
    InputRangeError,
    TrunkWeightsNotFoundError,
    build_trunk,
    imagenet_trunk_available,
    load_heads,
    official_head_path,
    save_heads,
    trunk_state_from_reference,
)

NETS = ["alex", "vgg", "squeeze"]


def _pair(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.4 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


def _trunk_from_reference(ref) -> torch.nn.Sequential:
    """The reference's own trunk modules, flattened in order (shared, so no second VGG16 is built)."""
    slices = [getattr(ref.net, f"slice{k}") for k in range(1, ref.net.N_slices + 1)]
    return torch.nn.Sequential(*[m for s in slices for m in s])


def _ours_like(ref, net: str, version: str, **kw) -> LPIPS:
    return LPIPS(net, version, trunk=_trunk_from_reference(ref), **kw)


def test_trunk_state_mapping(reference_models):
    ref = reference_models("squeeze")  # SqueezeNet: cheap to build, nested Fire modules in the keys
    trunk = build_trunk("squeeze", "random")
    trunk.load_state_dict(trunk_state_from_reference(ref.state_dict()))
    for a, b in zip(trunk.state_dict().values(), _trunk_from_reference(ref).state_dict().values()):
        assert torch.equal(a, b)


def _set_ref_version(ref, net: str, version: str):
    ref.version = version
    ref.load_state_dict(torch.load(official_head_path(net, version), map_location="cpu"), strict=False)
    return ref


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("version", ["0.0", "0.1"])
def test_parity_with_official_package(reference_models, net, version):
    ref = _set_ref_version(reference_models(net), net, version)
    ours = _ours_like(ref, net, version)
    x, y = _pair()
    with torch.no_grad():
        d_ref, layers_ref = ref(x, y, retPerLayer=True)
        d, layers = ours(x, y, ret_per_layer=True)
        assert d.shape == (2, 1, 1, 1)
        assert (d - d_ref).abs().max() <= 1e-6
        assert len(layers) == len(layers_ref)
        for a, b in zip(layers, layers_ref):
            assert (a - b).abs().max() <= 1e-6
        ref.spatial = True
        try:
            m_ref = ref(x, y)
        finally:
            ref.spatial = False
        m = ours(x, y, spatial=True)
        assert m.shape == (2, 1, 64, 64) and (m - m_ref).abs().max() <= 1e-6
        # normalize=True on [0,1] input equals [-1,1] input
        d01 = ours((x + 1) / 2, (y + 1) / 2, normalize=True)
        assert (d01 - d).abs().max() <= 1e-6


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_parity_on_odd_sizes_and_batches(reference_models, net):
    """37 x 53 (no integer upsampling factor anywhere), batch 7: every output kind within 1e-6 of the package
    (README "Correctness" lists what each kind measured: scalars and per-layer terms ~1e-8, spatial maps ~1e-7)."""
    ref = _set_ref_version(reference_models(net), net, "0.1")
    ours = _ours_like(ref, net, "0.1")
    g = torch.Generator().manual_seed(11)
    x = torch.rand(7, 3, 37, 53, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(7, 3, 37, 53, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        d_ref, layers_ref = ref(x, y, retPerLayer=True)
        d, layers = ours(x, y, ret_per_layer=True)
        assert (d - d_ref).abs().max() <= 1e-6
        assert max((a - b).abs().max() for a, b in zip(layers, layers_ref)) <= 1e-6
        ref.spatial = True
        try:
            m_ref = ref(x, y)
        finally:
            ref.spatial = False
        assert (ours(x, y, spatial=True) - m_ref).abs().max() <= 1e-6
        assert (ours((x + 1) / 2, (y + 1) / 2, normalize=True) - d_ref).abs().max() <= 1e-6


def test_parity_baseline_without_heads(reference_models):
    ref = _set_ref_version(reference_models("alex"), "alex", "0.1")
    ours = _ours_like(ref, "alex", "0.1", lpips=False)
    x, y = _pair(seed=3)
    ref.lpips = False  # the package's baseline: plain channel sums
    try:
        with torch.no_grad():
            assert (ours(x, y) - ref(x, y)).abs().max() <= 1e-6
    finally:
        ref.lpips = True


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(1)
    return LPIPS("alex", trunk="random")


def test_identity_symmetry_nonnegativity(alex):
    x, y = _pair(n=3, seed=5)
    with torch.no_grad():
        assert alex(x, x).abs().max() == 0
        assert (alex(x, y) - alex(y, x)).abs().max() <= 1e-7
        assert (alex(x, y) > 0).all()
        assert (alex(x, y, spatial=True) >= 0).all()


def test_per_layer_sum_and_spatial_mean(alex):
    x, y = _pair(seed=7)
    with torch.no_grad():
        d, layers = alex(x, y, ret_per_layer=True)
        assert torch.allclose(sum(layers), d, atol=1e-7)
        # AlexNet's maps (15, 7, 3, 3, 3 for 64 x 64) upsample by non-integer factors: the mean is close, not equal
        spatial = alex(x, y, spatial=True).mean(dim=(2, 3), keepdim=True)
        assert torch.allclose(spatial, d, rtol=2e-3)


def test_spatial_mean_exact_for_integer_factors(reference_models):
    vgg = _ours_like(reference_models("vgg"), "vgg", "0.1")  # VGG16 maps are 64, 32, 16, 8, 4 at 64 x 64: integer factors
    x, y = _pair(n=1, seed=2)
    with torch.no_grad():
        assert torch.allclose(vgg(x, y, spatial=True).mean(dim=(2, 3), keepdim=True), vgg(x, y), rtol=1e-5)


def test_grayscale_is_replicated(alex):
    x, y = _pair(seed=8)
    gx, gy = x[:, :1], y[:, :1]
    with torch.no_grad():
        assert torch.equal(alex(gx, gy), alex(gx.expand(-1, 3, -1, -1), gy.expand(-1, 3, -1, -1)))


def test_input_errors(alex):
    x, y = _pair()
    with pytest.raises(ValueError, match="equal shape"):
        alex(x, y[:, :, :32])
    with pytest.raises(InputRangeError, match="normalize=True"):
        alex(x, y, normalize=True)  # [-1, 1] data declared as [0, 1]
    with pytest.raises(InputRangeError, match="255"):
        alex(x * 127.5 + 127.5, y * 127.5 + 127.5)
    with pytest.raises(TypeError, match="floating"):
        alex((x > 0).to(torch.uint8), (y > 0).to(torch.uint8))
    with pytest.raises(ValueError, match="N x 3"):
        alex(x[:, :2], y[:, :2])
    with pytest.warns(UserWarning, match=r"normalize=True"):
        alex((x + 1) / 2, (y + 1) / 2)  # [0, 1] data in [-1, 1] mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alex(x, y)  # genuine [-1, 1] data: no warning


def test_official_heads_are_nonnegative_and_strict(tmp_path, alex):
    for net in NETS:
        state = torch.load(official_head_path(net, "0.1"), map_location="cpu")
        assert all((w >= 0).all() for w in state.values())
    # The use_dropout=False layout (model.0) is the reference's silent-failure case: here it is an error.
    state = torch.load(official_head_path("alex", "0.1"), map_location="cpu")
    bad = tmp_path / "bad.pth"
    torch.save({k.replace("model.1", "model.0"): v for k, v in state.items()}, bad)
    with pytest.raises(HeadLoadError, match="keys do not match"):
        load_heads(alex, bad)
    neg = tmp_path / "neg.pth"
    torch.save({k: -v if i == 0 else v for i, (k, v) in enumerate(state.items())}, neg)
    with pytest.raises(HeadLoadError, match="negative"):
        load_heads(alex, neg)
    with pytest.raises(HeadLoadError, match="keys do not match"):
        load_heads(LPIPS("squeeze", trunk="random"), official_head_path("alex", "0.1"))


def test_trained_heads_round_trip(tmp_path, alex):
    path = save_heads(alex, tmp_path / "heads.safetensors")
    other = LPIPS("alex", trunk=alex.trunk, heads="random")
    load_heads(other, path)
    for a, b in zip(alex.heads, other.heads):
        assert torch.equal(a.weight, b.weight)


def test_missing_imagenet_trunk_is_a_clear_error():
    if imagenet_trunk_available("alex"):
        pytest.skip("ImageNet AlexNet weights are cached here")
    with pytest.raises(TrunkWeightsNotFoundError, match=r"alexnet-owt-7be5be79\.pth.*trunk='random'"):
        LPIPS("alex")


def test_bad_options():
    with pytest.raises(ValueError, match="net="):
        LPIPS("resnet", trunk="random")
    with pytest.raises(ValueError, match="version="):
        LPIPS("alex", "0.2", trunk="random")


def test_functional_call_and_gradients():
    from lpips_metric.model import lpips

    x, y = _pair(n=2, seed=11)
    x01 = ((x + 1) / 2).requires_grad_(True)
    d = lpips(x01, (y + 1) / 2, net="squeeze", trunk="random", normalize=True)
    assert d.shape == (2, 1, 1, 1)
    d.sum().backward()  # usable as a loss
    assert x01.grad is not None and torch.isfinite(x01.grad).all()


TID_GOLDEN = {"I03": 0.7237, "I04": 0.2572, "I06": 0.05079, "I08": 0.05205, "I19": 0.4253}


@pytest.mark.skipif(not imagenet_trunk_available("alex"), reason="needs torchvision's cached ImageNet AlexNet")
def test_tid2013_golden_values_with_imagenet_alex():
    from common.data import dataset_path
    from lpips_metric.data import load_image

    root = dataset_path("TID2013 calibration", "perceptual/tid2013_calibration", source="SOURCES.md")
    metric = LPIPS("alex", "0.1")
    with torch.no_grad():
        for name, want in TID_GOLDEN.items():
            a = load_image(root / "ref_dir" / f"{name}.bmp").unsqueeze(0)
            b = load_image(root / "dist_dir" / f"{name}.bmp").unsqueeze(0)
            assert float(metric(a, b, normalize=True)) == pytest.approx(want, abs=2e-4), name


@pytest.mark.skipif(not all(imagenet_trunk_available(n) for n in NETS), reason="needs cached ImageNet trunks")
@pytest.mark.parametrize("net", NETS)
def test_parity_with_official_package_pretrained(net):
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net=net, verbose=False).eval()
    ours = LPIPS(net)
    x, y = _pair(seed=4)
    with torch.no_grad():
        assert (ours(x, y) - ref(x, y)).abs().max() <= 1e-6


def test_parity_report_per_output_kind():
    from lpips_metric.parity import KINDS, parity

    worst = parity("squeeze", "0.1", sizes=((20, 24),), batches=(1, 3))
    assert set(worst) == set(KINDS) and max(worst.values()) <= 1e-6 and worst["self"] == 0
