"""weakseg.models: backbones, heads and the Segmentor, all created by name from plain tables.

- :data:`BACKBONES` / :func:`build_backbone`: feature extractors that return four stage maps described by
  ``feature_info`` (style rule 6).
- :data:`HEADS`: heads built from ``feature_info`` that return logits at their ``stride``.
- :func:`build_segmentor` / :class:`Segmentor`: backbone + head, ``forward`` → ``{"seg": logits}``, named
  parameter groups.
"""

from weakseg.models.backbones import BACKBONES, Backbone, FeatureInfo, build_backbone
from weakseg.models.heads import HEADS
from weakseg.models.segmentor import Segmentor, build_segmentor

__all__ = ["BACKBONES", "HEADS", "Backbone", "FeatureInfo", "Segmentor", "build_backbone", "build_segmentor"]
