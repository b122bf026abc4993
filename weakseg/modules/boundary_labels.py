"""Boundary-label synthesis from CAMs, with SBE's saliency cues (BES/SBE ``make_boundary_label``, methods.md §4.3).

Codes of the boundary-label map (H×W uint8, saved as PNG; 255 is reserved for crop padding during training):

=====================  =====  =====================================================================
name                   code   meaning
=====================  =====  =====================================================================
``BG``                 0      confidently background (no boundary)
``FG``                 50     confidently inside one object (no boundary)
``FG_FG``              100    boundary between two foreground classes
``FG_BG``              150    boundary between foreground and background
``IGNORE``             200    undecided, no loss
``CERTAIN_FG_BG``      250    SBE only: strong edge of the saliency map
=====================  =====  =====================================================================
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

BG = 0
FG = 50
FG_FG = 100
FG_BG = 150
IGNORE = 200
CERTAIN_FG_BG = 250

UNCERTAIN = 255  # value of the confidence map (``cam_vis``) where the class is unknown

# crf(image H×W×3 uint8, labels H×W int64 in 0..n_labels−1, n_labels) → H×W refined labels (array-like)
CrfFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _proposal(cams: torch.Tensor, threshold: float, image: np.ndarray, crf: CrfFn | None) -> torch.Tensor:
    """Channel index (0 = background, k + 1 = CAM channel k) of argmax([threshold, CAMs]), CRF-refined."""
    idx = F.pad(cams, (0, 0, 0, 0, 1, 0), value=threshold).argmax(0)
    if crf is not None and cams.shape[0] > 0:  # no classes: everything is background, nothing to refine
        refined = crf(image, idx.numpy(), cams.shape[0] + 1)
        idx = torch.as_tensor(np.asarray(refined), dtype=torch.int64)
        if idx.shape != cams.shape[1:]:
            raise ValueError(f"crf returned labels of shape {tuple(idx.shape)}, expected {tuple(cams.shape[1:])}")
    return idx


def confident_regions(
    cams: torch.Tensor,
    keys: torch.Tensor,
    image: np.ndarray,
    conf_fg_thres: float = 0.30,
    conf_bg_thres: float = 0.07,
    crf: CrfFn | None = None,
) -> torch.Tensor:
    """Confidence map (§4.3 step 1): H×W int64 with the class id (keys + 1) where the high-threshold proposal
    says foreground, 0 where both proposals say background, and 255 (uncertain) elsewhere."""
    lut = torch.cat([keys.new_zeros(1), keys + 1]).to(torch.int64)
    fg = lut[_proposal(cams, conf_fg_thres, image, crf)]
    bg = lut[_proposal(cams, conf_bg_thres, image, crf)]
    conf = torch.where(fg == 0, torch.full_like(fg, UNCERTAIN), fg)
    conf[(fg == 0) & (bg == 0)] = 0
    return conf


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude sqrt(gx² + gy²) of an H×W map, same size, with replicate padding.

    The reference uses a valid convolution ((H−2)×(W−2)) resized bilinearly back to H×W, which moves edges by
    up to a pixel (§4.9.7); padding keeps the response centred on the step: a step between columns c−1 and c
    responds at exactly those two columns.
    """
    kx = _SOBEL_X.to(dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.t()])[:, None]  # 2×1×3×3
    padded = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernels)[0]
    return grad.pow(2).sum(0).sqrt()


def make_boundary_labels(
    cam_highres: torch.Tensor | np.ndarray,
    keys: torch.Tensor | np.ndarray,
    image: np.ndarray,
    *,
    conf_fg_thres: float = 0.30,
    conf_bg_thres: float = 0.07,
    window: int = 13,
    theta_scale: float = 0.30,
    theta_diff: float = 0.10,
    saliency: torch.Tensor | np.ndarray | None = None,
    salbound_thres: float = 0.5,
    sal_bg_thres: float = 0.0,
    crf: CrfFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boundary labels of one image (BES, or SBE when ``saliency`` is given), §4.3 / §4.6b.

    1. Confidence map from the CAMs (:func:`confident_regions`), optionally refined by ``crf`` (the pipeline
       passes the dense CRF with the BES label preset; ``None`` skips refinement).
    2. In a ``window``×``window`` window around each pixel (padded cells not counted), P_bg = fraction of
       confident background and P_c = fraction of class c; P1 ≥ P2 are the two largest class fractions
       (uncertain pixels count for neither).
    3. Codes, later rules overriding earlier ones: IGNORE everywhere; (SBE) BG where the max-normalised saliency
       is ≤ ``sal_bg_thres``; BG where P_bg > 2θ_s and P_bg − P1 ≥ 2θ_d; FG where P1 > 2θ_s and P1 − P_bg ≥ 2θ_d;
       FG_BG where min(P1, P_bg) > θ_s and |P1 − P_bg| < θ_d; FG_FG where P2 > θ_s and P1 − P2 < θ_d; (SBE)
       CERTAIN_FG_BG where the Sobel magnitude of the normalised saliency exceeds ``salbound_thres``.

    Args:
        cam_highres: K×H×W float CAMs of the image's classes, per-class max-normalised (``high_res``).
        keys: K int 0-based foreground class indices of the CAM channels.
        image: H×W×3 uint8 RGB image (used only by ``crf``).
        conf_fg_thres: background score of the foreground proposal (0.30).
        conf_bg_thres: background score of the background proposal (0.07).
        window: side of the fraction window (13, odd).
        theta_scale: θ_s (0.30).
        theta_diff: θ_d (0.10).
        saliency: H×W float saliency map (any positive scale, e.g. 0..255), or None for BES.
        salbound_thres: Sobel-magnitude threshold of the certain boundary (0.5; the unnormalised Sobel of a 0→1
            step is 4).
        sal_bg_thres: normalised saliency at or below which a pixel is background. The reference tests S == 0
            exactly (0.0 here, as S ≥ 0), which gives soft maps with small non-zero background no prior
            (§4.9.6); use e.g. 0.05 for such maps.
        crf: ``crf(image, labels, n_labels) -> labels`` on channel indices 0..K, or None.

    Returns:
        ``(conf, codes)``: H×W uint8 confidence map (class ids, 0 = background, 255 = uncertain; ``cam_vis``)
        and H×W uint8 boundary-label codes.
    """
    cams = torch.as_tensor(cam_highres, dtype=torch.float32).cpu()  # full-resolution label work runs on the CPU
    keys = torch.as_tensor(keys, dtype=torch.int64).cpu()
    if cams.ndim != 3 or keys.ndim != 1 or keys.numel() != cams.shape[0]:
        raise ValueError(f"expected cam_highres K×H×W and K keys, got {tuple(cams.shape)} and {tuple(keys.shape)}")
    height, width = cams.shape[1:]
    if image.shape != (height, width, 3):
        raise ValueError(f"image must be {height}×{width}×3, got shape {image.shape}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")

    conf = confident_regions(cams, keys, image, conf_fg_thres, conf_bg_thres, crf)

    # Window fractions (float64 so that ties such as P_bg − P1 = 0.2 are decided consistently).
    onehot = torch.stack([conf == 0] + [conf == int(k) + 1 for k in keys]).to(torch.float64)
    frac = F.avg_pool2d(onehot[None], window, stride=1, padding=window // 2, count_include_pad=False)[0]
    p_bg = frac[0]
    cls = frac[1:]
    if cls.shape[0] < 2:
        cls = torch.cat([cls, cls.new_zeros(2 - cls.shape[0], height, width)])
    top = cls.topk(2, dim=0).values
    p1, p2 = top[0], top[1]

    codes = torch.full((height, width), IGNORE, dtype=torch.uint8)
    sal = None
    if saliency is not None:
        sal = torch.as_tensor(saliency, dtype=torch.float32).cpu()
        if sal.shape != (height, width):
            raise ValueError(f"saliency must be {height}×{width}, got shape {tuple(sal.shape)}")
        sal = sal / sal.max().clamp_min(1e-12)
        codes[sal <= sal_bg_thres] = BG
    codes[(p_bg > 2 * theta_scale) & (p_bg - p1 >= 2 * theta_diff)] = BG
    codes[(p1 > 2 * theta_scale) & (p1 - p_bg >= 2 * theta_diff)] = FG
    codes[(torch.minimum(p1, p_bg) > theta_scale) & ((p1 - p_bg).abs() < theta_diff)] = FG_BG
    codes[(p2 > theta_scale) & (p1 - p2 < theta_diff)] = FG_FG
    if sal is not None:
        codes[sobel_magnitude(sal) > salbound_thres] = CERTAIN_FG_BG
    return conf.to(torch.uint8).numpy(), codes.numpy()
