"""Backbone contract tests over the BACKBONES table (timm style): shapes vs feature_info, gradients, strides."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from weakseg.models import BACKBONES, build_backbone
from weakseg.models.backbones.resnet import Bottleneck, ResNet
from weakseg.models.norm import NORM_TYPES, FrozenBatchNorm2d

NOMINAL_REDUCTIONS = (4, 8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_features_match_feature_info(name, output_stride):
    torch.manual_seed(0)
    model = build_backbone(name, output_stride=output_stride)
    info = model.feature_info
    assert [f.reduction for f in info] == [min(r, output_stride) for r in NOMINAL_REDUCTIONS]
    for f in info:
        model.get_submodule(f.module)  # the published module name exists
    x = torch.randn(1, 3, 65, 65)  # odd size: every stage must round up (⌈H/r⌉)
    features = model(x)
    assert len(features) == len(info) == 4
    for feat, f in zip(features, info):
        side = math.ceil(65 / f.reduction)
        assert tuple(feat.shape) == (1, f.channels, side, side), (f, tuple(feat.shape))
        assert torch.isfinite(feat).all()
    if output_stride == 16:
        # backward: every trainable parameter receives a finite gradient
        sum(feat.mean() for feat in features).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_resnet_output_stride_becomes_dilation():
    model = ResNet(Bottleneck, (1, 1, 2, 3), output_stride=8)  # resnet50's code path with fewer blocks
    # torchvision's replace_stride_with_dilation: first block keeps the previous dilation, the rest use the new one
    assert model.layer2[0].conv2.stride == (2, 2)
    assert model.layer3[0].conv2.stride == (1, 1) and model.layer3[0].conv2.dilation == (1, 1)
    assert model.layer3[0].downsample[0].stride == (1, 1)
    assert model.layer3[1].conv2.dilation == (2, 2) and model.layer3[1].conv2.padding == (2, 2)
    assert model.layer4[0].conv2.dilation == (2, 2)
    assert model.layer4[2].conv2.dilation == (4, 4)


def test_resnet_undilated_output_stride_16():
    # IRN's ResNet-50 with strides (2, 2, 2, 1): stride 1 but no dilation (spec §4.2)
    model = ResNet(Bottleneck, (1, 1, 1, 2), output_stride=16, dilated=False)
    assert {m.dilation for m in model.modules() if isinstance(m, nn.Conv2d)} == {(1, 1)}
    assert model.layer4[0].conv2.stride == (1, 1)
    assert model.feature_info[-1].reduction == 16
    assert model(torch.randn(1, 3, 64, 64))[-1].shape[-1] == 4


def test_mobilenet_output_stride_becomes_dilation():
    model = build_backbone("mobilenet_v2", output_stride=16)
    depthwise = [blk.conv[-3][0] for blk in model.features[1:18]]
    assert [d.stride[0] for d in depthwise] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [d.dilation[0] for d in depthwise[13:]] == [1, 2, 2, 2]
    assert model.features[15].use_res_connect  # stride 1 and same width keeps the residual


def test_resnet_keys_follow_torchvision_layout():
    model = build_backbone("resnet50")
    keys = list(model.state_dict())
    # torchvision's resnet50 state dict has 320 entries, 2 of them fc.*
    assert len(keys) == 318
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    for key in ("layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "layer3.5.conv3.weight",
                "layer4.2.bn3.bias"):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)
    # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in fc
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 - 2_049_000


def test_deep_stem_keys_follow_pytorch_encoding_layout():
    model = ResNet(Bottleneck, (1, 1, 1, 1), deep_stem=True)  # resnet101s's stem, fewer blocks
    keys = set(model.state_dict())
    assert {"conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.running_mean", "conv1.6.weight"} <= keys
    assert model.conv1[6].out_channels == 128 and model.layer1[0].conv1.in_channels == 128


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_frozen_stages(name):
    torch.manual_seed(0)
    model = build_backbone(name, frozen_stages=2)
    frozen = [n for names in model.stage_modules[:3] for n in names]
    trainable = [n for names in model.stage_modules[3:] for n in names]
    for module_name in frozen:
        module = model.get_submodule(module_name)
        assert all(not p.requires_grad for p in module.parameters()), module_name
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()), module_name
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.get_submodule(frozen[-1]).modules())
    for module_name in trainable:
        assert all(p.requires_grad for p in model.get_submodule(module_name).parameters()), module_name
    frozen_stats = {k: v.clone() for k, v in model.get_submodule(frozen[-1]).state_dict().items()}
    model.train()
    features = model(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in features[2:]).backward()
    for pname, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, pname
    for key, value in model.get_submodule(frozen[-1]).state_dict().items():
        assert torch.equal(value, frozen_stats[key]), f"frozen {key} changed in train mode"


def test_frozen_stages_range():
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("resnet18", frozen_stages=5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet18", output_stride=12)
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet5")
    with pytest.raises(ValueError, match="mobilenet_v2"):
        build_backbone("mobilenetv2")
    with pytest.raises(ValueError, match="frozen_bn"):
        build_backbone("resnet18", norm="frozenbn")


@pytest.mark.parametrize("norm", ["frozen_bn", "fixed_bn", "gn", "syncbn"])
def test_norm_choice_reaches_layers(norm):
    model = build_backbone("mobilenet_v2", norm=norm)
    expected = {"frozen_bn": "FrozenBatchNorm2d", "fixed_bn": "FixedStatsBatchNorm2d", "gn": "GroupNorm",
                "syncbn": "SyncBatchNorm"}[norm]
    norms = {type(m).__name__ for m in model.modules() if isinstance(m, (*NORM_TYPES, FrozenBatchNorm2d))}
    assert norms == {expected}
    assert model(torch.randn(2, 3, 32, 32))[-1].shape == (2, 1280, 1, 1)
