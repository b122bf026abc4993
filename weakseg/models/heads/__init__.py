"""Segmentation heads by name: the :data:`HEADS` table.

A head is built as ``HEADS[name](feature_info, num_classes, **kwargs)``; ``forward(features)`` takes the backbone's
list of maps and returns N×C×h×w logits at ``head.stride``.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from weakseg.models.heads.aspp_c import ASPPClassHead
from weakseg.models.heads.deeplabv2 import DeepLabV2Head
from weakseg.models.heads.deeplabv3plus import ASPP, DeepLabV3PlusHead
from weakseg.models.heads.largefov import LargeFOVHead
from weakseg.models.heads.uper import UPerDecoder, UPerHead

# name → constructor(feature_info, num_classes, **head options)
HEADS: dict[str, Callable[..., nn.Module]] = {
    "aspp_c": ASPPClassHead,
    "deeplabv2": DeepLabV2Head,
    "deeplabv3plus": DeepLabV3PlusHead,
    "largefov": LargeFOVHead,
    "uper": UPerHead,
}

__all__ = ["ASPP", "ASPPClassHead", "HEADS", "DeepLabV2Head", "DeepLabV3PlusHead", "LargeFOVHead", "UPerDecoder",
           "UPerHead"]
