"""Small building blocks shared by backbones and heads."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def adaptive_avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` that also exports to ONNX with a *dynamic* input size.

    The ONNX exporter only handles adaptive pooling when the input size is a multiple of the output size, which a
    dynamic image size cannot promise. During export the same bins (rows ⌊iH/s⌋ .. ⌈(i+1)H/s⌉) are summed from an
    integral image instead; in eager mode the native op is used.
    """
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, size)
    h, w = x.shape[-2], x.shape[-1]
    integral = F.pad(x.float().cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    i = torch.arange(size, device=x.device)
    H, W = torch.as_tensor(h, device=x.device), torch.as_tensor(w, device=x.device)
    h0 = torch.div(i * H, size, rounding_mode="floor")
    h1 = torch.div((i + 1) * H + size - 1, size, rounding_mode="floor")
    w0 = torch.div(i * W, size, rounding_mode="floor")
    w1 = torch.div((i + 1) * W + size - 1, size, rounding_mode="floor")
    r1, r0 = integral.index_select(-2, h1), integral.index_select(-2, h0)
    total = r1.index_select(-1, w1) - r0.index_select(-1, w1) - r1.index_select(-1, w0) + r0.index_select(-1, w0)
    area = ((h1 - h0)[:, None] * (w1 - w0)[None, :]).to(total.dtype)
    return (total / area).to(x.dtype)


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for square outputs that exports to ONNX with dynamic input sizes."""

    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)
