"""Multi-scale CAM inference and CAM → label conversion (IRN/BES ``make_cam`` / ``eval_cam``, methods.md §4.2).

:func:`multiscale_cam` produces the two maps that the BES/SBE pipeline stores per image: the stride-4 ``cam``
(input of the random walk, §4.6) and the full-resolution ``high_res`` (input of boundary-label synthesis, §4.3),
both for the image's classes only and each class divided by its own max (+1e-5).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

CamFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def multiscale_cam(
    cam_fn: CamFn,
    image: torch.Tensor,
    keys: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    stride: int = 4,
    output_stride: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale, flip-augmented CAMs of one image (§4.2 "CAM inference").

    At each scale the image is rescaled (bicubic, size round(H·s)×round(W·s), antialiased like PIL's resize; the
    reference resizes the uint8 image before normalising, so it also rounds and clips to 0..255). The image and
    its horizontal flip go through ``cam_fn`` as one batch of 2 and the flipped result is flipped back and
    **added**. The per-scale
    maps are resized bilinearly to (a) the stride-``stride`` size ⌈H/stride⌉×⌈W/stride⌉ and (b)
    ⌈H/output_stride⌉·output_stride × ⌈W/output_stride⌉·output_stride, then cropped to H×W (so a CAM cell covers
    the pixels it was computed from, as in the reference), and **summed** over scales. Only the channels in
    ``keys`` are kept, and each is divided by its own max + 1e-5.

    Args:
        cam_fn: maps a normalised image batch N×3×h×w to N×K_all×h'×w' non-negative CAMs (e.g. a backbone
            followed by :meth:`AttentionPoolClassifier.cam`, which applies the ReLU).
        image: 1×3×H×W float normalised image.
        keys: K int64 indices into the K_all channels of ``cam_fn`` (the image's classes).
        scales: image scales (reference: 1.0, 0.5, 1.5, 2.0).
        flip: also run the horizontally flipped image.
        stride: stride of the low-resolution output (4, the boundary map's stride).
        output_stride: stride of ``cam_fn``'s output w.r.t. its input (16 for the ResNet-50 CAM net).

    Returns:
        ``(cam_lowres, cam_highres)``: K×⌈H/stride⌉×⌈W/stride⌉ and K×H×W float, values in [0, 1).
    """
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image must be 1×3×H×W, got shape {tuple(image.shape)}")
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D index tensor, got shape {tuple(keys.shape)}")
    height, width = image.shape[2:]
    low_size = (math.ceil(height / stride), math.ceil(width / stride))
    up_size = (math.ceil(height / output_stride) * output_stride, math.ceil(width / output_stride) * output_stride)
    lowres = highres = None
    for s in scales:
        size = (round(height * s), round(width * s))
        x = image
        if size != (height, width):
            x = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        out = cam_fn(x)
        if out.ndim != 4 or out.shape[0] != x.shape[0]:
            raise ValueError(f"cam_fn must return N×K×h×w with N={x.shape[0]}, got shape {tuple(out.shape)}")
        cam = out[0] + out[1].flip(-1) if flip else out[0]
        cam = cam[keys][None]
        low = F.interpolate(cam, size=low_size, mode="bilinear", align_corners=False)[0]
        high = F.interpolate(cam, size=up_size, mode="bilinear", align_corners=False)[0, :, :height, :width]
        lowres = low if lowres is None else lowres + low
        highres = high if highres is None else highres + high
    if lowres is None:
        raise ValueError("scales must not be empty")
    lowres = lowres / (lowres.amax(dim=(1, 2), keepdim=True) + 1e-5)
    highres = highres / (highres.amax(dim=(1, 2), keepdim=True) + 1e-5)
    return lowres, highres


def cam_to_label(cams: torch.Tensor, keys: torch.Tensor, bg_threshold: float) -> torch.Tensor:
    """Hard labels from normalised CAMs: argmax over [constant background score, CAM_1..CAM_K] (§4.2 eval_cam).

    Args:
        cams: K×H×W float CAMs (per-class max-normalised) of the image's classes.
        keys: K int64 0-based foreground class indices of the channels.
        bg_threshold: the background score (``cam_eval_thres``: SBE 0.21, BES 0.11; 0.30 / 0.07 for the
            confident foreground / background proposals of §4.3).

    Returns:
        H×W int64 class ids: 0 = background, keys[k] + 1 where channel k wins (ties go to background).
    """
    if cams.ndim != 3 or keys.ndim != 1 or keys.numel() != cams.shape[0]:
        raise ValueError(f"expected cams K×H×W and K keys, got {tuple(cams.shape)} and {tuple(keys.shape)}")
    scores = F.pad(cams, (0, 0, 0, 0, 1, 0), value=bg_threshold)
    lut = torch.cat([keys.new_zeros(1), keys + 1]).to(torch.int64)
    return lut[scores.argmax(0)]
