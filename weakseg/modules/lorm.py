"""LoRM — CDSP's localization rectification module (spec ``methods.md`` §3.5), training only.

Per image, on the n = h·w positions of the last backbone map X (N×D×h×w, stride 8 in the reference):

    m_i  = 1 if the bilinearly resized (align_corners=True) pseudo-label foreground is > 0 at position i, else 0
    Q, K = 1×1 conv (with bias) of X, each D → D
    A_ij = softmax_j( Q_i·K_j / (‖Q_i‖ ‖K_j‖) ) · m_i      (cosine affinity, no temperature; background rows = 0)
    X̃_i  = γ · Σ_j A_ij X_j                               (values are the raw features; γ learnable, init 1)

The loss Σ(X − X̃)² / #{non-zero terms} is :class:`weakseg.losses.lorm.LoRMLoss`. Foreground positions are pulled
towards an attention-weighted average of similar features; background positions towards 0.

Differences from the reference, on purpose: the pseudo-label is never modified in place (reference bug §3.10(6):
its 255 → 0 rewrite turned ignored/padded pixels into background *targets* for the pseudo-label CE), and the
affinity and aggregation run in float32 even under autocast (the n×n softmax is the numerically delicate part).
Foreground is any value other than ``background`` and ``ignore_index``; ignored pixels count as background for the
mask, exactly as the reference's 255 → 0 did (the resize of the binary mask gives the same m as the reference's
resize of class ids, because ids are ≥ 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRM", "foreground_positions"]


def foreground_positions(pseudo: torch.Tensor, size: tuple[int, int], *, background: int = 0,
                         ignore_index: int = 255) -> torch.Tensor:
    """N×H×W int pseudo-label → N×(h·w) float mask m (1 = foreground query) at feature size ``size`` = (h, w).

    The binary foreground is resized bilinearly with align_corners=True and thresholded at > 0, so m is the
    foreground slightly dilated (any foreground pixel in the bilinear support marks the position).
    """
    if pseudo.dim() != 3:
        raise ValueError(f"pseudo-label must be N×H×W, got shape {tuple(pseudo.shape)}")
    fg = ((pseudo != background) & (pseudo != ignore_index)).float()[:, None]
    fg = F.interpolate(fg, size=tuple(size), mode="bilinear", align_corners=True)
    return (fg[:, 0] > 0).float().flatten(1)


class LoRM(nn.Module):
    """Cosine self-attention over the foreground positions of a feature map, reconstructing the features.

    Args:
        channels: D, the channels of the feature map (2048 for ResNet-50/101 layer4).
        gamma: initial value of the learnable scale γ.
        background: background class id of the pseudo-label.
        ignore_index: ignore value of the pseudo-label (counts as background).
        eps: lower bound of the norms in the cosine similarity.
        init: ``msra``: query/key weights N(0, 2/n), n = k·k·out_channels = D, what the reference ends up with
            (its model-level init loop redraws the module's Xavier init, §3.5(2)); ``xavier``: Xavier-uniform, the
            module's nominal init. Biases start at 0 either way.
    """

    def __init__(self, channels: int, gamma: float = 1.0, *, background: int = 0, ignore_index: int = 255,
                 eps: float = 1e-8, init: str = "msra"):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be ≥ 1, got {channels}")
        if init not in ("msra", "xavier"):
            raise ValueError(f"init must be 'msra' or 'xavier', got {init!r}")
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.background = background
        self.ignore_index = ignore_index
        self.eps = eps
        for conv in (self.query, self.key):
            if init == "msra":
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``features``.

        Args:
            features: N×D×h×w float, the last backbone map X.
            pseudo: N×H×W int pseudo-label at any resolution (crop size), 255 = ignore; not modified.

        Returns:
            N×D×h×w float32 reconstruction X̃ (rows of background positions are 0).
        """
        if features.dim() != 4 or pseudo.dim() != 3 or features.shape[0] != pseudo.shape[0]:
            raise ValueError(f"features must be N×D×h×w and pseudo N×H×W with the same N, got "
                             f"{tuple(features.shape)} and {tuple(pseudo.shape)}")
        n, d, h, w = features.shape
        m = foreground_positions(pseudo, (h, w), background=self.background, ignore_index=self.ignore_index)
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.float()
            q = F.normalize(self.query(x).flatten(2), dim=1, eps=self.eps)   # N×D×n
            k = F.normalize(self.key(x).flatten(2), dim=1, eps=self.eps)     # N×D×n
            attn = torch.bmm(q.transpose(1, 2), k).softmax(dim=-1)          # N×n×n, rows = queries
            attn = attn * m[:, :, None]
            recon = torch.bmm(x.flatten(2), attn.transpose(1, 2))            # N×D×n: X̃_i = Σ_j A_ij X_j
        return (self.gamma.float() * recon).view(n, d, h, w)
