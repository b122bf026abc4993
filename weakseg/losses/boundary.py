"""Boundary-detection losses of BES and SBE (methods.md §4.5).

Both take boundary **logits** N×1×h×w (or N×h×w); the probability is p = sigmoid(logit) clamped to
[1e-4, 1 − 1e-4], as in the reference (the clamp also bounds −log p by ≈ 9.2). Targets are the boundary-label
codes of :mod:`weakseg.modules.boundary_labels`, already downscaled (nearest) to the logits' size: N×h×w int64
with BG = 0, FG = 50, FG_FG = 100, FG_BG = 150, IGNORE = 200, CERTAIN_FG_BG = 250 and 255 = crop padding.
Codes 200 and 255 (and any code not listed for a loss) are ignored. Every masked sum runs over the whole
batch and is divided by (mask count + 1), as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from weakseg.modules.boundary_labels import BG, CERTAIN_FG_BG, FG, FG_BG, FG_FG

P_EPS = 1e-4


def _prob_and_codes(logits: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"expected N×1×h×w boundary logits, got shape {tuple(logits.shape)}")
        logits = logits[:, 0]
    if logits.ndim != 3 or codes.shape != logits.shape:
        raise ValueError(
            f"boundary logits {tuple(logits.shape)} and label codes {tuple(codes.shape)} must both be N×h×w"
        )
    return torch.sigmoid(logits).clamp(P_EPS, 1.0 - P_EPS), codes


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / (mask.sum() + 1.0)


class BESBoundaryLoss(nn.Module):
    """BES loss L = ½(L_fg + L_bg) + L_bd (§4.5).

    L_bg, L_fg = Σ −log(1 − p)·M / (ΣM + 1) over codes 0 and 50; L_bd = Σ −log(p)·p̄^0.5·M_bd / (ΣM_bd + 1)
    with p̄ = p detached and M_bd = codes {100, 150}.
    """

    def forward(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """N×1×h×w float logits and N×h×w int64 codes → scalar loss."""
        p, codes = _prob_and_codes(logits, codes)
        neg = -torch.log(1.0 - p)
        pos = -torch.log(p) * p.detach().sqrt()
        m_bg = (codes == BG).to(p.dtype)
        m_fg = (codes == FG).to(p.dtype)
        m_bd = ((codes == FG_FG) | (codes == FG_BG)).to(p.dtype)
        return 0.5 * (_masked_mean(neg, m_fg) + _masked_mean(neg, m_bg)) + _masked_mean(pos, m_bd)


class SBEBoundaryLoss(nn.Module):
    """SBE saliency-guided boundary loss L = (L_fg + L_bg) + L_bd^sal + L_bd^¬sal (Loss_SGBD, §4.5).

    L_fg, L_bg as in :class:`BESBoundaryLoss` but not halved (as in SBE, §4.9.8). M_bd = codes {100, 150, 250};
    with R = 1[S > 0] for the saliency S resized bilinearly to the label size, the boundary term is split into
    the salient part (M_bd·R) and the non-salient part (M_bd·(1 − R)), each with its own normaliser, so both
    kinds of boundary pixels weigh the same however many there are of each.
    """

    def forward(self, logits: torch.Tensor, codes: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        """N×1×h×w float logits, N×h×w int64 codes, N×H×W float saliency (any size; values ≥ 0) → scalar."""
        p, codes = _prob_and_codes(logits, codes)
        if saliency.ndim != 3 or saliency.shape[0] != codes.shape[0]:
            raise ValueError(f"saliency must be N×H×W with N={codes.shape[0]}, got shape {tuple(saliency.shape)}")
        if saliency.shape[1:] != codes.shape[1:]:
            saliency = F.interpolate(
                saliency[:, None].to(p.dtype), size=codes.shape[1:], mode="bilinear", align_corners=False
            )[:, 0]
        salient = (saliency > 0).to(p.dtype)
        neg = -torch.log(1.0 - p)
        pos = -torch.log(p) * p.detach().sqrt()
        m_bg = (codes == BG).to(p.dtype)
        m_fg = (codes == FG).to(p.dtype)
        m_bd = ((codes == FG_FG) | (codes == FG_BG) | (codes == CERTAIN_FG_BG)).to(p.dtype)
        return (
            _masked_mean(neg, m_fg)
            + _masked_mean(neg, m_bg)
            + _masked_mean(pos, m_bd * salient)
            + _masked_mean(pos, m_bd * (1.0 - salient))
        )
