"""CDSP's distance maps (spec ``methods.md`` §3.3): per-image uint8 weights for the distance entropy loss.

With d(x, S) the Euclidean distance from pixel x to the nearest pixel of a seed set S (exact Euclidean distance
transform, :func:`scipy.ndimage.distance_transform_edt`; the reference's O(#seeds·H·W) loop gives the same values):

* **scribble map** D_s(x) = 255 − min(255, ⌊√λ_s · d(x, S_s)⌋), S_s = the *foreground* scribble pixels (value ∉
  {background, ignore}; background strokes are not seeds). 255 on the strokes, falling by √λ_s per pixel, 0 beyond
  255/√λ_s pixels. No foreground stroke → D_s ≡ 0 (no pixel is near a foreground scribble).
* **pseudo-label boundary map** D_c(x) = min(255, ⌊√λ_c · d(x, S_c)⌋), S_c = the 1-px contour of the binarised
  pseudo-label (foreground = value ∉ {background, ignore}). 0 on the boundary, saturating at 255 beyond 255/√λ_c
  pixels; not inverted. No foreground → D_c ≡ 255 (every pixel is far from any boundary).

Defaults λ_s = e, λ_c = e⁶ are the values the released sample maps fit (§3.3, §6b.5).

Contour: the reference draws OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_NONE)`` 1 px thick. Those are the
border points of Suzuki & Abe's border following: foreground pixels with a background pixel among their
**4-neighbours**, where OpenCV (≥ 3.2) treats everything outside the image as background. Border following visits
every such point (outer borders and hole borders alike), and consecutive points of a traced contour are
8-adjacent, so the 1-px drawing is exactly that set. :func:`foreground_contour` computes it directly with a
4-connected erosion whose border value is background: a foreground pixel on the image edge is a contour pixel; a
pixel whose only background neighbours are diagonal is not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["LAMBDA_C", "LAMBDA_S", "cdsp_distance_maps", "foreground_contour", "foreground_mask",
           "pseudo_boundary_distance_map", "scribble_distance_map"]

LAMBDA_S = math.e        # decay of the scribble map: √e ≈ 1.649 per pixel, 0 beyond ≈ 155 px
LAMBDA_C = math.e ** 6   # decay of the boundary map: e³ ≈ 20.09 per pixel, 255 beyond ≈ 12.7 px

# 4-connectivity: the structuring element of a border point test (a 0-pixel in the 4-neighbourhood)
_CROSS = ndimage.generate_binary_structure(2, 1)


def _check_map(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be an H×W class-id map, got shape {arr.shape}")
    return arr


def _check_lambda(lam: float, what: str) -> float:
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"{what} must be a positive finite number, got {lam!r}")
    return float(lam)


def foreground_mask(labels: np.ndarray, background: int = 0, ignore_index: int = 255) -> np.ndarray:
    """H×W bool: pixels whose value is neither ``background`` nor ``ignore_index`` (any foreground class)."""
    labels = _check_map(labels, "labels")
    return (labels != background) & (labels != ignore_index)


def foreground_contour(mask: np.ndarray) -> np.ndarray:
    """H×W bool: the 1-px contour of a binary foreground ``mask`` (OpenCV's border points, see module docstring).

    A pixel is on the contour iff it is foreground and at least one of its 4-neighbours is background or lies
    outside the image.
    """
    mask = _check_map(mask, "mask").astype(bool)
    interior = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~interior


def _distance_to(seeds: np.ndarray) -> np.ndarray:
    """Float64 H×W Euclidean distance of every pixel to the nearest ``True`` pixel of ``seeds`` (non-empty)."""
    return ndimage.distance_transform_edt(~seeds)


def scribble_distance_map(scribble: np.ndarray, lam: float = LAMBDA_S, *, background: int = 0,
                          ignore_index: int = 255) -> np.ndarray:
    """D_s = 255 − min(255, ⌊√λ·d(x, foreground strokes)⌋) as H×W uint8 (all 0 without a foreground stroke).

    Args:
        scribble: H×W class ids; ``ignore_index`` = not annotated, ``background`` strokes are not seeds.
        lam: decay λ_s (> 0).
        background: the background class id.
        ignore_index: the "not annotated" value.
    """
    lam = _check_lambda(lam, "lambda_s")
    seeds = foreground_mask(scribble, background, ignore_index)
    if not seeds.any():
        return np.zeros(seeds.shape, dtype=np.uint8)
    steps = np.floor(math.sqrt(lam) * _distance_to(seeds))
    return (255 - np.minimum(255.0, steps)).astype(np.uint8)


def pseudo_boundary_distance_map(pseudo: np.ndarray, lam: float = LAMBDA_C, *, background: int = 0,
                                 ignore_index: int = 255) -> np.ndarray:
    """D_c = min(255, ⌊√λ·d(x, contour of the pseudo-label foreground)⌋) as H×W uint8 (all 255 without foreground).

    Args:
        pseudo: H×W dense class ids; ``ignore_index`` pixels count as background for the binarisation.
        lam: decay λ_c (> 0).
        background: the background class id.
        ignore_index: the ignore value.
    """
    lam = _check_lambda(lam, "lambda_c")
    contour = foreground_contour(foreground_mask(pseudo, background, ignore_index))
    if not contour.any():
        return np.full(contour.shape, 255, dtype=np.uint8)
    steps = np.floor(math.sqrt(lam) * _distance_to(contour))
    return np.minimum(255.0, steps).astype(np.uint8)


def cdsp_distance_maps(scribble: np.ndarray, pseudo: np.ndarray, lambda_s: float = LAMBDA_S,
                       lambda_c: float = LAMBDA_C, *, background: int = 0,
                       ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Both maps of one image: (D_s, D_c), each H×W uint8; ``scribble`` and ``pseudo`` must have the same size."""
    scribble, pseudo = _check_map(scribble, "scribble"), _check_map(pseudo, "pseudo")
    if scribble.shape != pseudo.shape:
        raise ValueError(f"scribble {scribble.shape} and pseudo-label {pseudo.shape} differ in size")
    return (scribble_distance_map(scribble, lambda_s, background=background, ignore_index=ignore_index),
            pseudo_boundary_distance_map(pseudo, lambda_c, background=background, ignore_index=ignore_index))
