"""Class metadata that travels with a dataset: names, palette, number of classes, ignore index."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: n×3 uint8. For index i, bits (0, 1, 2) of each successive triple of i go to
    (R, G, B), filled from the most significant bit downwards."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass(frozen=True)
class DatasetMeta:
    """Class names (index order), palette (256×3 uint8) and the ignore index of a dataset."""

    classes: tuple[str, ...]
    palette: np.ndarray = field(default_factory=voc_palette, compare=False, repr=False)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)


VOC_META = DatasetMeta(VOC_CLASSES)
