"""Small building blocks shared by backbones and heads."""

from __future__ import annotations

import torch.nn as nn

from weakseg.models.norm import make_norm

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) → norm → activation, as a Sequential so its keys are ``0.*`` (conv) and ``1.*`` (norm).

    The numeric keys match torchvision's ``Conv2dNormActivation``, which MobileNetV2 checkpoints use. Padding is
    ``dilation·(k−1)/2``, so stride 1 keeps the size and stride 2 gives ⌈H/2⌉.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        stride: convolution stride.
        dilation: convolution dilation.
        groups: convolution groups (``in_channels`` for depthwise).
        norm: norm name for :func:`~weakseg.models.norm.make_norm`.
        act: ``relu``, ``relu6`` or None (no activation, e.g. the PPM branches of spec §2.3).
        norm_eps: norm epsilon.
        norm_momentum: BN momentum.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm: str = "bn", act: str | None = "relu",
                 norm_eps: float = 1e-5, norm_momentum: float = 0.1):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=dilation * (kernel_size - 1) // 2,
                      dilation=dilation, groups=groups, bias=False),
            make_norm(norm, out_channels, eps=norm_eps, momentum=norm_momentum),
        ]
        if act is not None:
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)} or None")
            layers.append(ACTIVATIONS[act](inplace=True))
        super().__init__(*layers)


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias, norms weight 1 / bias 0.

    Used for every layer outside a pretrained backbone (spec §2.3) and for backbones trained from scratch.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
