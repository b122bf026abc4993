"""The LoRM reconstruction loss (spec ``methods.md`` §3.5(5)): squared error between the features X and their
LoRM reconstruction X̃, normalised by the number of non-zero squared differences.

    L_LoRM = Σ (X − X̃)² / #{(n, d, i): (X − X̃)² ≠ 0}

Background positions have X̃ = 0, so the loss there is ‖X_i‖² (background activations are suppressed) except for
exact zeros (ReLU outputs), which the normaliser leaves out. Gradients flow into both X and X̃ (the reference does
not detach either side).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LoRMLoss"]


class LoRMLoss(nn.Module):
    """Mean squared reconstruction error over the non-zero terms.

    Shapes: ``features`` and ``recon`` N×D×h×w float (computed in float32). Returns a scalar ≥ 0; 0 (with a
    gradient path) when the two are equal everywhere.
    """

    def forward(self, features: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if features.shape != recon.shape:
            raise ValueError(f"features {tuple(features.shape)} and reconstruction {tuple(recon.shape)} differ")
        sq = (features.float() - recon.float()).pow(2)
        count = (sq.detach() != 0).sum().clamp(min=1)
        return sq.sum() / count
