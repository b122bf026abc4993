"""A training set of web images and their masks (WebCoseg's initial mask generator, methods.md §5.2): the images of a
web list (:mod:`weakseg.data.web`) with the masks of a co-segmentation or ready-made masks.

A sample has the keys of a ``pseudo``-supervised :class:`~weakseg.data.dataset.SegDataset` sample: ``image``
H×W×3 uint8, ``pseudo`` H×W uint8 (0, the image's class id, 255 = unsure), ``tags`` C float32 (background and the
image's class), ``id``, ``orig_size``. Masks are checked as :func:`weakseg.data.web.read_web_mask` checks them.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from weakseg.data import keys as K
from weakseg.data.meta import DatasetMeta
from weakseg.data.voc_tools import tags_vector
from weakseg.data.web import WebItem, read_web_mask
from weakseg.utils.io import read_rgb


class WebSegDataset(torch.utils.data.Dataset):
    """Web images with masks.

    Args:
        items: the web images (``read_web_list``).
        mask_dir: folder of ``<id>.png`` masks (``<stem>.png`` with ``flat``).
        meta: the target dataset's classes.
        flat: masks named by the image stem (the reference's ``web_labels/``).
        transform: joint transform applied to the sample dict.
    """

    def __init__(self, items: list[WebItem], mask_dir: str | os.PathLike, meta: DatasetMeta, *, flat: bool = False,
                 transform: Callable[[dict], dict] | None = None):
        if not items:
            raise ValueError("a web dataset needs at least one image")
        self.items, self.mask_dir, self.meta, self.flat, self.transform = list(items), mask_dir, meta, flat, transform
        self.ids = [item.id for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict:
        item = self.items[index]
        image = read_rgb(item.path)
        size = (image.shape[0], image.shape[1])
        mask = read_web_mask(self.mask_dir, item, self.flat, size=size)
        return {K.IMAGE: image, K.ID: item.id, K.ORIG_SIZE: size, K.PSEUDO: mask,
                K.TAGS: tags_vector([item.class_id], self.meta.num_classes)}

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample
