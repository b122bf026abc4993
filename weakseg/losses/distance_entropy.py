"""CDSP's distance entropy loss, DEL (spec ``methods.md`` §3.4(4), §6b.6).

For softmax probabilities P (at label resolution) and a distance map D scaled to [0, 1]:

    E(n, x) = D(n, x) · Σ_k P_k(n, x) log P_k(n, x)            (≤ 0: minus the weighted prediction entropy)
    L_DEL   = −Σ_{n, x} E(n, x) / #{(n, x): E(n, x) ≠ 0}

The normaliser counts the non-zero terms (not Σ D): pixels of weight 0 (far from every scribble in D_s, on the
pseudo-label boundary in D_c, padding) do not dilute the loss. With the scribble map D_s the entropy is minimised
most near the scribbles; with the boundary map D_c far from the pseudo-label boundary.

Padding: a pixel with ``valid`` = 0 (crop/rotation padding) contributes nothing, whatever its map value; the CDSP
transforms also pad the distance maps with 0 (the reference's 255 = full weight on padding is bug §3.10(8)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DistanceEntropyLoss"]


class DistanceEntropyLoss(nn.Module):
    """Distance-weighted prediction entropy with the count-of-non-zero normaliser.

    Args:
        scale: value of the map that means weight 1 (255 for the uint8 maps, 1 for maps already in [0, 1]).

    Shapes: ``logits`` N×C×H×W float (softmax is taken here, in float32), ``distance`` N×H×W (uint8 / int64 / float
    map, divided by ``scale``), optional ``valid`` N×H×W (0 = padding). Returns a scalar ≥ 0; 0 (with a gradient
    path) when every term is 0.
    """

    def __init__(self, scale: float = 255.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self, logits: torch.Tensor, distance: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if logits.dim() != 4 or distance.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
            raise ValueError(f"logits must be N×C×H×W and distance N×H×W of the same size, got "
                             f"{tuple(logits.shape)} and {tuple(distance.shape)}")
        if valid is not None and valid.shape != distance.shape:
            raise ValueError(f"valid {tuple(valid.shape)} must match distance {tuple(distance.shape)}")
        log_p = F.log_softmax(logits.float(), dim=1)
        neg_entropy = (log_p.exp() * log_p).sum(dim=1)                      # N×H×W, ≤ 0
        weight = distance.float() / self.scale
        if valid is not None:
            weight = weight * (valid > 0)
        terms = weight * neg_entropy
        count = (terms.detach() != 0).sum().clamp(min=1)
        return -terms.sum() / count
