import math

import pytest
import torch
import torch.nn as nn

from weakseg.losses.lorm import LoRMLoss
from weakseg.models import FeatureInfo, build_backbone
from weakseg.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from weakseg.models.cdsp_net import CDSPNet, cdsp_backbone_options, cdsp_head_kwargs
from weakseg.models.heads import HEADS
from weakseg.models.heads.aspp_c import ASPPClassHead
from weakseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from weakseg.modules.lorm import LoRM

pytestmark = pytest.mark.usefixtures("one_thread")


def _dilations(layer):
    return [blk.conv2.dilation[0] for blk in layer]


def test_resnet_cdsp_layout_output_stride_8_multigrid_and_caffe_stride():
    net = ResNet(Bottleneck, (1, 2, 2, 3), output_stride=8, multi_grid=(1, 2, 4), stride_in_1x1=True,
                 dilate_first_block=True)
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert net.layer2[0].downsample[0].stride == (2, 2)
    assert _dilations(net.layer3) == [2, 2] and _dilations(net.layer4) == [4, 8, 16]
    assert [blk.conv2.padding[0] for blk in net.layer4] == [4, 8, 16]
    x = torch.randn(1, 3, 65, 65)
    feats = net(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(17, 17), (9, 9), (9, 9), (9, 9)]
    # the options move strides/dilations only: the checkpoint layout (names and shapes) is unchanged
    plain = ResNet(Bottleneck, (1, 2, 2, 3), output_stride=8)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    # torchvision layout by default: first block keeps the previous dilation, stride on the 3×3
    assert _dilations(plain.layer3) == [1, 2] and _dilations(plain.layer4) == [2, 4, 4]
    assert plain.layer2[0].conv1.stride == (1, 1) and plain.layer2[0].conv2.stride == (2, 2)


def test_resnet_options_through_build_backbone_and_errors():
    net = build_backbone("resnet18", output_stride=8, options=cdsp_backbone_options("resnet18"))
    assert [blk.conv1.dilation[0] for blk in net.layer4] == [4, 8]
    assert [blk.conv2.dilation[0] for blk in net.layer4] == [4, 8]
    assert net.layer3[0].conv1.dilation == (2, 2)
    with pytest.raises(ValueError, match="multi_grid"):
        ResNet(Bottleneck, (1, 1, 1, 3), multi_grid=(1, 2))
    with pytest.raises(ValueError, match="stride_in_1x1"):
        ResNet(BasicBlock, (1, 1, 1, 1), stride_in_1x1=True)
    with pytest.raises(TypeError):
        build_backbone("mobilenet_v2", options={"multi_grid": (1, 2, 4)})


def test_aspp_c_head_structure_shapes_and_init():
    info = [FeatureInfo(8, 4, "a"), FeatureInfo(64, 8, "b")]
    head = HEADS["aspp_c"](info, 5)
    assert isinstance(head, ASPPClassHead) and head.stride == 8 and head.rates == (12, 18, 24)
    convs = [b[0] for b in head.branches]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [c.dilation[0] for c in convs[1:]] == [12, 18, 24]
    assert all(c.out_channels == 5 and c.bias is None for c in convs + [head.image_pool[0], head.fuse[0]])
    assert head.fuse[0].in_channels == 25 and len(head.fuse) == 2          # conv + norm, no ReLU
    assert convs[1].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 5)), rel=0.15)   # N(0, 2/(k·k·out))
    x = torch.randn(2, 64, 7, 9)
    out = head([torch.randn(2, 8, 13, 17), x])
    assert out.shape == (2, 5, 7, 9)
    assert (out < 0).any()                                                  # logits, not ReLU outputs
    # the image-pooling branch is a broadcast of per-image global features
    head.eval()
    pooled = head.image_pool(x.mean((2, 3), keepdim=True))
    assert pooled.shape == (2, 5, 1, 1)


def test_deeplabv3plus_cdsp_options():
    info = [FeatureInfo(8, 4, "a"), FeatureInfo(16, 8, "b"), FeatureInfo(16, 8, "c"), FeatureInfo(32, 8, "d")]
    default = DeepLabV3PlusHead(info, 3, aspp_channels=16)
    assert default.rates == (12, 24, 36) and not default.align_corners      # rates given at OS 16, scaled
    assert isinstance(default.aspp.dropout, nn.Identity)
    head = DeepLabV3PlusHead(info, 3, **{**cdsp_head_kwargs("deeplabv3plus"), "aspp_channels": 16,
                                         "low_level_channels": 4})
    assert head.rates == (6, 12, 18) and head.align_corners and head.stride == 4
    assert isinstance(head.aspp.dropout, nn.Dropout2d) and head.aspp.dropout.p == 0.5 and head.dropout.p == 0.0
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 8, 8)]
    assert head(feats).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="aspp_dropout"):
        DeepLabV3PlusHead(info, 3, aspp_dropout=1.0)


@pytest.mark.parametrize("backbone,head,stride", [("mobilenet_v2", "aspp_c", 8), ("resnet18", "deeplabv3plus", 4)])
def test_cdsp_net_outputs_param_groups_and_lorm_training_path(backbone, head, stride):
    torch.manual_seed(0)
    net = CDSPNet(backbone, head, 3, output_stride=8, backbone_options=cdsp_backbone_options(backbone),
                  head_kwargs={**cdsp_head_kwargs(head), **({"aspp_channels": 16} if head != "aspp_c" else {})})
    lorm = LoRM(net.feat_channels)
    x = torch.randn(2, 3, 48, 48)
    out = net(x)
    assert set(out) == {"seg", "feat"} and net.stride == stride
    assert out["seg"].shape == (2, 3, 48 // stride, 48 // stride)
    assert out["feat"].shape == (2, net.feat_channels, 6, 6)
    pseudo = torch.randint(0, 3, (2, 48, 48))
    loss = out["seg"].mean() + LoRMLoss()(out["feat"], lorm(out["feat"], pseudo))
    loss.backward()
    params = [p for p in list(net.parameters()) + list(lorm.parameters()) if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    groups = net.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len([p for p in net.parameters() if p.requires_grad])


def test_cdsp_net_errors():
    with pytest.raises(ValueError, match="unknown head"):
        CDSPNet("mobilenet_v2", "aspp", 3)
    with pytest.raises(ValueError, match="head_init"):
        CDSPNet("mobilenet_v2", "aspp_c", 3, head_init="xavier")
