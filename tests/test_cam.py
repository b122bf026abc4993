"""Attention-pooling CAM head, multi-scale CAM inference and CAM → label (methods.md §4.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toys import TinyBackbone
from weakseg.losses.multilabel import MultiLabelSoftMarginLoss
from weakseg.models.heads.cam import AttentionPoolClassifier
from weakseg.modules.cam import cam_to_label, multiscale_cam


def test_attention_pool_logits_by_hand():
    head = AttentionPoolClassifier(2, 2, k=1.0)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]).view(2, 2, 1, 1))
    # channel 0 = [0, ln 3] → attention [1/4, 3/4] → z0 = ¾·ln 3; channel 1 = [2, 2] → z1 = 2
    x = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]]).view(1, 2, 1, 2).requires_grad_(True)
    logits = head(x)
    z0 = 0.75 * math.log(3.0)
    assert logits.shape == (1, 2)
    assert logits[0].tolist() == pytest.approx([z0 - 2.0, 2 * z0 + 1.0], abs=1e-6)
    # the attention is detached: d logit_0 / d x_c(i) = W_0c · a_c(i), without the softmax's own derivative
    logits[0, 0].backward()
    assert x.grad.flatten().tolist() == pytest.approx([0.25, 0.75, -0.5, -0.5], abs=1e-6)


def test_attention_pool_small_k_is_average_pooling():
    head = AttentionPoolClassifier(32, 5, k=0.0)
    x = torch.randn(2, 32, 6, 7)
    expected = x.mean((2, 3)) @ head.classifier.weight.flatten(1).t()
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_cam_is_relu_of_1x1_conv_and_trains_with_backbone():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    head = AttentionPoolClassifier(backbone.feature_info[-1].channels, 20)
    assert head.classifier.bias is None
    x = torch.randn(2, 3, 64, 48)
    feat = backbone(x)[-1]
    cam = head.cam(feat)
    assert cam.shape == (2, 20, 4, 3)
    raw = torch.einsum("kc,nchw->nkhw", head.classifier.weight.flatten(1), feat)
    assert torch.allclose(cam, raw.clamp(min=0), atol=1e-6) and (raw < 0).any()
    loss = MultiLabelSoftMarginLoss()(head(feat), (torch.rand(2, 20) > 0.7).float())
    loss.backward()
    for name, p in list(backbone.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.classifier.weight.grad.abs().sum() > 0


def test_multilabel_soft_margin_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # −log σ(0) = ln 2, −log(1 − σ(2)) = ln(1 + e²), −log(1 − σ(−1)) = ln(1 + e⁻¹), −log σ(3) = ln(1 + e⁻³)
    expected = (
        (math.log(2.0) + math.log(1 + math.e**2)) / 2 + (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    ) / 2
    assert MultiLabelSoftMarginLoss()(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        MultiLabelSoftMarginLoss()(logits, targets[:, :1])


def _ramp_cam(x):
    """A CAM function that is not flip-equivariant: channel 0 = relu(x_0)·column index, channel 1 = relu(x_1)."""
    ramp = torch.arange(x.shape[-1], dtype=x.dtype)
    return torch.cat([x[:, :1].clamp(min=0) * ramp, x[:, 1:2].clamp(min=0)], dim=1)


def test_multiscale_cam_flip_is_added_back():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 4, 6)
    keys = torch.tensor([0, 1])
    relu0 = image[0, 0].clamp(min=0)
    # flip: relu(x0)·ramp + flip(relu(flip x0)·ramp) = relu(x0)·(W − 1), so the ramp disappears after normalising
    _, high = multiscale_cam(_ramp_cam, image, keys, scales=(1.0,), flip=True, stride=1, output_stride=1)
    assert torch.allclose(high[0], relu0 / (relu0.max() + 1e-5), atol=1e-6)
    _, high = multiscale_cam(_ramp_cam, image, keys, scales=(1.0,), flip=False, stride=1, output_stride=1)
    ramped = relu0 * torch.arange(6.0)
    assert torch.allclose(high[0], ramped / (ramped.max() + 1e-5), atol=1e-6)
    # keys select channels
    low, high = multiscale_cam(_ramp_cam, image, torch.tensor([1]), scales=(1.0,), stride=1, output_stride=1)
    relu1 = image[0, 1].clamp(min=0)
    assert high.shape == (1, 4, 6) and torch.allclose(high[0], relu1 / (relu1.max() + 1e-5), atol=1e-6)


def test_multiscale_cam_sums_scales_and_rescales_bicubic():
    sizes = []

    def cam_fn(x):
        sizes.append(tuple(x.shape))
        n, _, h, w = x.shape
        if w == 8:  # scale 1: a horizontal ramp; scale 0.5: a vertical ramp
            return torch.arange(w, dtype=x.dtype).expand(n, 1, h, w).clone()
        return torch.arange(h, dtype=x.dtype).view(h, 1).expand(n, 1, h, w).clone()

    image = torch.zeros(1, 3, 6, 8)
    low, high = multiscale_cam(cam_fn, image, torch.tensor([0]), scales=(1.0, 0.5), flip=False, stride=1,
                               output_stride=1)
    assert sizes == [(1, 3, 6, 8), (1, 3, 3, 4)]
    horiz = torch.arange(8.0).expand(6, 8)
    vert = F.interpolate(torch.arange(3.0).view(1, 1, 3, 1).expand(1, 1, 3, 4), size=(6, 8), mode="bilinear",
                         align_corners=False)[0, 0]
    total = horiz + vert  # a sum, not a max: both patterns survive
    assert torch.allclose(high[0], total / (total.max() + 1e-5), atol=1e-6)
    assert torch.allclose(low, high)  # stride 1: the same map


def test_multiscale_cam_shapes_and_highres_alignment():
    torch.manual_seed(0)
    backbone = TinyBackbone().eval()
    head = AttentionPoolClassifier(32, 20)
    with torch.no_grad():
        head.classifier.weight.mul_(100.0)  # CAMs of order 1, so that the +1e-5 of the normaliser is negligible

    def cam_fn(x):
        return head.cam(backbone(x)[-1])

    image = torch.randn(1, 3, 37, 50)
    keys = torch.tensor([3, 7, 19])
    low, high = multiscale_cam(cam_fn, image, keys)
    assert low.shape == (3, 10, 13) and high.shape == (3, 37, 50)
    assert low.min() >= 0 and high.min() >= 0
    assert torch.allclose(low.amax((1, 2)), torch.ones(3), atol=1e-4)
    assert torch.allclose(high.amax((1, 2)), torch.ones(3), atol=1e-4)
    # high-res: upsample the stride-16 map (3×4 cells) to 48×64 and crop, not straight to 37×50
    with torch.no_grad():
        out = cam_fn(image)[0, keys][None]
    aligned = F.interpolate(out, size=(48, 64), mode="bilinear", align_corners=False)[0, :, :37, :50]
    stretched = F.interpolate(out, size=(37, 50), mode="bilinear", align_corners=False)[0]
    _, high1 = multiscale_cam(cam_fn, image, keys, scales=(1.0,), flip=False)
    norm = aligned / (aligned.amax((1, 2), keepdim=True) + 1e-5)
    assert torch.allclose(high1, norm, atol=1e-5)
    assert not torch.allclose(high1, stretched / (stretched.amax((1, 2), keepdim=True) + 1e-5), atol=1e-3)


def test_cam_to_label_by_hand():
    cams = torch.tensor([[[0.50, 0.10], [0.05, 0.30]], [[0.40, 0.20], [0.21, 0.35]]])
    keys = torch.tensor([2, 7])
    label = cam_to_label(cams, keys, bg_threshold=0.21)
    # (0,0): class 2 wins; (0,1): bg 0.21 > 0.20; (1,0): tie 0.21 → background; (1,1): class 7
    assert label.tolist() == [[3, 0], [0, 8]]
    assert label.dtype == torch.int64
    with pytest.raises(ValueError):
        cam_to_label(cams, keys[:1], 0.2)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18", "efficientnet_lite0"])
def test_cam_net_feature_stage_reads_an_early_map_and_drops_the_rest(backbone):
    from weakseg.models.cam_net import CAMNet

    torch.manual_seed(0)
    full = CAMNet(backbone, 3, output_stride=16, frozen_stages=-1)
    early = CAMNet(backbone, 3, output_stride=16, frozen_stages=-1, feature_stage=1)
    assert (full.stride, early.stride) == (16, 4)
    x = torch.randn(2, 3, 64, 48)
    out = early(x)
    assert out["cam"].shape == (2, 3, 16, 12) and out["logits"].shape == (2, 3)
    # the classifier reads stage 1's channels; stages 2-4 are gone (no parameters, identity maps)
    assert early.classifier.classifier.in_channels == full.backbone.feature_info[0].channels
    count = lambda net: sum(p.numel() for p in net.backbone.parameters())  # noqa: E731
    assert count(early) < count(full) / 4
    early.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")
                           and k in early.state_dict()} | {k: v for k, v in early.state_dict().items()
                                                            if k.startswith("classifier.")})
    full.eval(), early.eval()
    with torch.no_grad():
        assert torch.allclose(early.backbone(x)[0], full.backbone(x)[0])  # same weights → the same stage-1 map
        expected = F.relu(early.classifier.classifier(full.backbone(x)[0]))
        assert torch.allclose(early.cam(x), expected, atol=1e-6)  # the classifier reads exactly that map


def test_backbone_truncate_checks_its_argument():
    from weakseg.models.backbones import build_backbone

    b = build_backbone("resnet18")
    for bad in (0, 5):
        with pytest.raises(ValueError, match="num_stages must be in 1..4"):
            b.truncate(bad)
    with pytest.raises(ValueError, match="feature_stage must be in 1..4"):
        from weakseg.models.cam_net import CAMNet

        CAMNet("resnet18", 3, feature_stage=0)
    b.truncate(2)
    assert [f.reduction for f in b.feature_info] == [4, 8, 8, 8]
    assert not any(n.startswith(("layer3", "layer4")) for n, _ in b.named_parameters())
