"""Heads with toy channel counts (mmseg style) and the Segmentor built from the tables."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn

from weakseg.models import HEADS, FeatureInfo, build_segmentor
from weakseg.models.heads import DeepLabV2Head, DeepLabV3PlusHead, UPerDecoder, UPerHead
from weakseg.models.norm import FrozenBatchNorm2d

OS32 = [FeatureInfo(16, 4, "s1"), FeatureInfo(24, 8, "s2"), FeatureInfo(32, 16, "s3"), FeatureInfo(48, 32, "s4")]
OS8 = [FeatureInfo(16, 4, "s1"), FeatureInfo(24, 8, "s2"), FeatureInfo(32, 8, "s3"), FeatureInfo(48, 8, "s4")]
SIZE = 45  # odd input size, as in mmseg's head tests


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_features(info, batch=2, size=SIZE):
    return [torch.randn(batch, f.channels, math.ceil(size / f.reduction), math.ceil(size / f.reduction)) for f in info]


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("info", [OS32, OS8], ids=["os32", "os8"])
@pytest.mark.parametrize("name", list(HEADS))
def test_head_output_shape_and_gradients(name, info):
    torch.manual_seed(0)
    head = HEADS[name](info, 5)
    features = [f.requires_grad_() for f in toy_features(info)]
    logits = head(features)
    side = math.ceil(SIZE / head.stride)
    assert tuple(logits.shape) == (2, 5, side, side)
    logits.square().mean().backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert features[-1].grad is not None  # every head reads the last map


def test_deeplabv2_rates_reach_layers():
    head = DeepLabV2Head(OS8, 21)
    assert head.stride == 8 and head.rates == (6, 12, 18, 24)
    assert [(b.dilation, b.padding, b.in_channels, b.out_channels) for b in head.branches] == [
        ((r, r), (r, r), 48, 21) for r in (6, 12, 18, 24)]
    head = DeepLabV2Head(OS32, 3, rates=(2, 3))
    assert [b.dilation[0] for b in head.branches] == [2, 3]
    # logits are the sum of the branches
    x = torch.randn(1, 48, 3, 3)
    torch.testing.assert_close(head([x]), head.branches[0](x) + head.branches[1](x))
    assert abs(head.branches[0].weight.std().item() - 0.01) < 0.003  # DeepLab-v2 reference init


def test_deeplabv3plus_config_reaches_layers():
    head = DeepLabV3PlusHead(OS8, 4, aspp_channels=32, low_level_channels=8)
    assert head.rates == (12, 24, 36)  # (6, 12, 18) at OS 16, doubled at OS 8
    assert [b[0].dilation[0] for b in head.aspp.branches] == [1, 12, 24, 36]
    assert head.low_level[0].out_channels == 8 and head.aspp.branches[0][0].in_channels == 48
    assert head.fuse[0][0].in_channels == 32 + 8 and head.classifier.out_channels == 4
    assert DeepLabV3PlusHead(OS32, 4, aspp_channels=32).rates == (3, 6, 9)
    head = DeepLabV3PlusHead(OS32, 4, aspp_channels=32, low_level_index=1)
    assert head.stride == 8 and head.low_level[0].in_channels == 24
    assert head(toy_features(OS32)).shape[-1] == math.ceil(SIZE / 8)


def test_uper_decoder_follows_spec():
    decoder = UPerDecoder(OS32, channels=32, pool_scales=(1, 2, 3, 6))
    assert decoder.out_channels == 32 and decoder.stride == 4
    assert [branch[0].output_size for branch in decoder.ppm] == [1, 2, 3, 6]
    # PPM branches: 1×1 conv without bias + norm, no ReLU (spec §2.3)
    assert all(len(branch[1]) == 2 and branch[1][0].bias is None for branch in decoder.ppm)
    assert decoder.ppm_bottleneck[0][0].in_channels == 48 + 4 * 32
    assert isinstance(decoder.ppm_bottleneck[1], nn.Dropout2d)
    assert [c[0].in_channels for c in decoder.lateral_convs] == [16, 24, 32]
    assert all(c[0].kernel_size == (3, 3) for c in decoder.fpn_convs)
    assert decoder.fpn_bottleneck[0].in_channels == 4 * 32
    out = decoder(toy_features(OS32))
    assert tuple(out.shape) == (2, 32, 12, 12) and (out >= 0).all()  # ends with ReLU
    head = UPerHead(OS32, 7, channels=32)
    assert head.classifier.in_channels == 32 and head.stride == 4


def test_head_init():
    head = UPerHead(OS32, 7, channels=32)
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    weight = head.decoder.fpn_bottleneck[0].weight  # Kaiming normal, fan_out = 32·3·3
    assert abs(weight.std().item() / math.sqrt(2 / (32 * 9)) - 1) < 0.1
    assert torch.all(head.classifier.bias == 0)


def test_head_bad_arguments_raise():
    with pytest.raises(ValueError, match="low_level_index"):
        DeepLabV3PlusHead(OS32, 3, low_level_index=3)
    with pytest.raises(ValueError, match="rates"):
        DeepLabV2Head(OS32, 3, rates=())
    with pytest.raises(ValueError, match="rates"):
        DeepLabV3PlusHead(OS32, 3, rates=(6, 0))
    with pytest.raises(ValueError, match="two feature maps"):
        UPerHead(OS32[-1:], 3)
    with pytest.raises(ValueError, match="dropout"):
        UPerHead(OS32, 3, dropout=1.5)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        UPerDecoder(OS32)(toy_features(OS32)[1:])


# ---------------------------------------------------------------- segmentor


@pytest.mark.parametrize("head", list(HEADS))
def test_segmentor_output_and_param_groups(head):
    torch.manual_seed(0)
    model = build_segmentor("mobilenet_v2", head, 3, output_stride=16)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"seg"}
    assert tuple(out["seg"].shape) == (2, 3, 64 // model.stride, 64 // model.stride)
    assert model.stride == {"aspp_c": 16, "deeplabv2": 16, "deeplabv3plus": 4, "largefov": 16, "uper": 4}[head]
    out["seg"].mean().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    groups = model.param_groups()
    assert list(groups) == ["backbone", "backbone_norm", "head", "head_norm_bias"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in trainable}
    backbone_norm = {id(p) for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in groups["backbone_norm"]} == backbone_norm
    assert all(p.dim() == 4 for p in groups["backbone"] + groups["head"])
    assert all(p.dim() == 1 for p in groups["head_norm_bias"])


def test_segmentor_frozen_params_and_head_norm():
    model = build_segmentor("resnet18", "uper", 4, norm="frozen_bn", frozen_stages=1,
                            head_kwargs={"channels": 16, "pool_scales": (1, 2)})
    groups = model.param_groups()
    frozen = {id(p) for p in model.backbone.layer1.parameters()} | {id(model.backbone.conv1.weight)}
    assert not frozen & {id(p) for ps in groups.values() for p in ps}
    assert groups["backbone_norm"] == []  # frozen BN has no parameters
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules() if "Norm" in type(m).__name__)
    # a new head never gets frozen statistics
    assert any(type(m) is nn.BatchNorm2d for m in model.head.modules())
    assert [b[0].output_size for b in model.head.decoder.ppm] == [1, 2]


def test_build_segmentor_bad_arguments():
    with pytest.raises(ValueError, match="uper"):
        build_segmentor("resnet18", "upernet", 3)
    with pytest.raises(TypeError):
        build_segmentor("resnet18", "deeplabv2", 3, head_kwargs={"rate": (1, 2)})
    model = build_segmentor("resnet18", "deeplabv2", 3, head_kwargs={"rates": (1, 2)}, output_stride=8)
    assert model.head.rates == (1, 2) and model.stride == 8


def test_channels_last_and_autocast():
    torch.manual_seed(0)
    model = build_segmentor("mobilenet_v2", "deeplabv3plus", 3, head_kwargs={"aspp_channels": 32}).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["seg"]
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))["seg"]
        torch.testing.assert_close(cl, expected, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)["seg"]
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()


@pytest.mark.parametrize("head", ["deeplabv3plus", "uper", "deeplabv2"])
def test_onnx_export(head):
    # dynamic sizes for every head: UPer's s×s pyramid pooling switches to an integral-image form during export
    # (the exporter's own adaptive pooling needs sizes divisible by s; 96×64 at OS 16 gives 6×4, not divisible by 3)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    kwargs = {"deeplabv3plus": {"aspp_channels": 16}, "uper": {"channels": 16}, "deeplabv2": {}}[head]
    model = build_segmentor("mobilenet_v2", head, 3, head_kwargs=kwargs)
    model.eval()
    buffer = io.BytesIO()
    dynamic_axes = {"image": {0: "n", 2: "h", 3: "w"}, "seg": {0: "n", 2: "h4", 3: "w4"}}
    size = 64
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), buffer, input_names=["image"], output_names=["seg"],
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 96, 64)
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)["seg"]
    torch.testing.assert_close(torch.from_numpy(onnx_out), expected, rtol=1e-3, atol=1e-4)
