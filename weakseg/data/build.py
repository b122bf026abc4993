"""The one dataset builder: a :class:`SegDataset` from a ``data`` config section.

The engine (training, evaluation, prediction) and every stage of a multi-stage method build their datasets here, so a
folder, list or tag setting means the same thing everywhere. ``data`` is any object with the fields of
``weakseg.engine.config.DataConfig`` (the run's ``data`` section, or a second section such as a web-image set's:
several datasets can be built in one run by passing different sections).

Extra per-image maps are declared by sample key (``maps={key: folder}``); how each key is resized and padded by the
joint transforms is the key's entry in :data:`weakseg.data.keys.POLICY` (saliency bilinear / pad 0, pseudo-labels
nearest / pad 255, boundary codes nearest / pad 255, distance maps ...). Relative folders resolve against
``data.root``; stage artefact folders are given as absolute paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from weakseg.data.dataset import SegDataset
from weakseg.data.meta import DatasetMeta


def build_dataset(data: Any, meta: DatasetMeta, list_file: str | Path | None = None, *, split: str = "train",
                  supervision: str = "none", transform: Callable[[dict], dict] | None = None,
                  with_label: bool = False, pseudo_dir: str | Path | None = None,
                  saliency_dir: str | Path | None = None, maps: dict[str, str | Path] | None = None,
                  tags_source: str | None = None, tags_file: str | Path | None = None,
                  tags_dir: str | Path | None = None) -> SegDataset:
    """A dataset of ``data``'s images.

    Args:
        data: the data section (root, folders, list files, tag source, leniency).
        meta: class metadata.
        list_file: id list (relative to ``data.root`` or absolute); default ``data.train_list`` for ``split="train"``
            and ``data.val_list`` for ``split="val"``.
        supervision: ``full`` | ``scribble`` | ``tags`` | ``pseudo`` | ``none`` (what the sample carries).
        transform: the joint transform applied to each sample.
        with_label: also load the dense ground truth (evaluation, scoring).
        pseudo_dir: pseudo-mask folder (default ``data.pseudo_dir``).
        saliency_dir: saliency folder (None: no saliency map is loaded).
        maps: extra ``{sample key: folder}`` maps (keys of ``weakseg.data.keys.POLICY``).
        tags_source: override of ``data.tags_source``; ``"pseudo"`` reads the tags off the masks in ``tags_dir``
            (classes present in a previous stage's pseudo-masks).
        tags_file: override of ``data.tags_file``.
        tags_dir: mask folder for ``tags_source="pseudo"``.
    """
    if list_file is None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be train or val, got {split!r}")
        list_file = data.train_list if split == "train" else data.val_list
    source = tags_source or data.tags_source
    return SegDataset(
        data.root, list_file, meta=meta, supervision=supervision, image_dir=data.image_dir,
        image_ext=data.image_ext, label_dir=data.label_dir, scribble_dir=data.scribble_dir,
        pseudo_dir=str(pseudo_dir) if pseudo_dir is not None else data.pseudo_dir,
        saliency_dir=str(saliency_dir) if saliency_dir is not None else None,
        tags_source=source, tags_file=str(tags_file) if tags_file is not None else data.tags_file,
        tags_dir=str(tags_dir) if tags_dir is not None else None,
        extra_maps={k: str(v) for k, v in (maps or {}).items()}, with_label=with_label, transform=transform,
        lenient=data.lenient)
