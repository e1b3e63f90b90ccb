"""The two routes to real ImageNet trunks, exercised with stand-in state dicts under the official file names
(the real files are 5-530 MB and not on this machine), and the missing-weights hint in each interface's own
syntax (issue #27, item 4)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lpips_metric.model import (
    LPIPS,
    TrunkWeightsNotFoundError,
    build_trunk,
    cli_option,
    hydra_option,
    imagenet_trunk_available,
    trunk_cache_path,
)


def test_torch_home_route_loads_the_cached_file_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = trunk_cache_path("squeeze")
    assert path == tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert not imagenet_trunk_available("squeeze")
    with pytest.raises(TrunkWeightsNotFoundError, match="squeezenet1_1-b8a52dc0.pth"):
        LPIPS("squeeze")  # trunk="imagenet" is the default; nothing is downloaded
    torch.manual_seed(3)
    stand_in = torchvision.models.squeezenet1_1(weights=None).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(stand_in, path)
    assert imagenet_trunk_available("squeeze")
    metric = LPIPS("squeeze")
    trunk = metric.trunk.state_dict()
    assert trunk and all(torch.equal(v, stand_in[f"features.{k}"]) for k, v in trunk.items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert metric(x, x.flip(-1), normalize=True).shape == (2, 1, 1, 1)


def test_pth_route_takes_a_whole_classifier_or_the_features_alone(tmp_path):
    torch.manual_seed(4)
    features = torchvision.models.alexnet(weights=None).features.state_dict()  # keys "0.weight", ...
    only_features = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(features, only_features)
    metric = LPIPS("alex", trunk=only_features)
    assert all(torch.equal(v, features[k]) for k, v in metric.trunk.state_dict().items())
    torch.manual_seed(5)
    whole = torchvision.models.squeezenet1_1(weights=None).state_dict()  # keys "features.0.weight", "classifier..."
    torch.save(whole, tmp_path / "squeezenet1_1-b8a52dc0.pth")
    trunk = build_trunk("squeeze", tmp_path / "squeezenet1_1-b8a52dc0.pth")
    assert all(torch.equal(v, whole[f"features.{k}"]) for k, v in trunk.state_dict().items())
    del features["3.weight"]
    torch.save(features, tmp_path / "broken.pth")
    with pytest.raises(TrunkWeightsNotFoundError, match=r"lacks trunk keys \['3.weight'\]"):
        build_trunk("alex", tmp_path / "broken.pth")


def test_missing_weights_hint_is_written_in_each_interfaces_syntax(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TrunkWeightsNotFoundError) as info:
        build_trunk("alex", "imagenet")
    e = info.value
    assert "trunk='random'" in str(e) and "trunk='/path/to/alexnet-owt-7be5be79.pth'" in str(e)  # Python API
    cli = e.hint(cli_option)
    assert "--trunk random" in cli and "--trunk /path/to/alexnet-owt-7be5be79.pth" in cli and "trunk='" not in cli
    hydra = e.hint(hydra_option)
    assert "model.trunk=random" in hydra and "model.trunk=/path/to/alexnet-owt-7be5be79.pth" in hydra


def test_train_shell_prints_the_hint_in_override_syntax(tmp_path, monkeypatch, capsys, tiny_bapps):
    from hydra import compose, initialize_config_dir

    from common.hydra_utils import report_user_errors
    from lpips_metric.train import __file__ as train_file
    from lpips_metric.train import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    conf = str(__import__("pathlib").Path(train_file).parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "model.trunk=imagenet", f"paths.output_dir={tmp_path}",
                                           f"data.root={tiny_bapps}", "data.train_splits=[traditional]",
                                           "logger.tensorboard=false"])
    with pytest.raises(SystemExit) as info:
        report_user_errors(run)(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "model.trunk=random" in err and "trunk='" not in err


def test_compare_cli_takes_a_pth_trunk(tmp_path, capsys):
    from PIL import Image

    from lpips_metric.compare import main

    torch.manual_seed(6)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / "squeeze.pth")
    for name, colour in (("a.png", (10, 200, 30)), ("b.png", (200, 10, 30))):
        Image.new("RGB", (40, 36), colour).save(tmp_path / name)
    assert main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--net", "squeeze", "--trunk",
                 str(tmp_path / "squeeze.pth")]) == 0
    assert capsys.readouterr().out.startswith("LPIPS (squeeze, v0.1): ")
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny0.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "tiny1.png")
    with pytest.raises(SystemExit, match="needs images of at least 31 x 31 pixels"):
        main([str(tmp_path / "tiny0.png"), str(tmp_path / "tiny1.png"), "--trunk", "random"])
