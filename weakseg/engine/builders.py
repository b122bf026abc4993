"""Build datasets and methods from a ``Config`` (the only place config sections become constructor arguments)."""

from __future__ import annotations

import math
from pathlib import Path

from weakseg.data.build import build_dataset
from weakseg.data.dataset import SegDataset, meta_from_root
from weakseg.data.meta import DatasetMeta
from weakseg.data.transforms import build_eval_transforms, build_train_transforms
from weakseg.engine.config import Config, ConfigError
from weakseg.methods import METHODS, Method


def dataset_meta(cfg: Config) -> DatasetMeta:
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: dataset folder {root} does not exist")
    return meta_from_root(root)


def build_train_dataset(cfg: Config, supervision: str, meta: DatasetMeta, extra_maps: dict | None = None,
                        list_file: str | None = None, transform=None) -> SegDataset:
    """The training set of a single-stage run (``data.train_list``) with the run's augmentation."""
    d = cfg.data
    if transform is None:
        transform = build_train_transforms(
            crop_size=d.crop_size, scale_range=d.scale_range, flip_prob=d.flip_prob, color_jitter=d.color_jitter,
            mean=d.mean, std=d.std, crop_policy=d.crop_policy, scale_choices=d.scale_choices,
            image_resize=d.image_resize,
        )
    return build_dataset(d, meta, list_file, split="train", supervision=supervision, maps=extra_maps,
                         transform=transform, saliency_dir=d.saliency_dir)


def build_eval_dataset(cfg: Config, meta: DatasetMeta, list_file: str | None = None, with_label: bool = True,
                       supervision: str = "none", extra_maps: dict | None = None) -> SegDataset:
    """The evaluation set (``data.val_list`` unless ``list_file``): full images, normalised, with ground truth."""
    d = cfg.data
    return build_dataset(d, meta, list_file, split="val", supervision=supervision, with_label=with_label,
                         maps=extra_maps, transform=build_eval_transforms(mean=d.mean, std=d.std))


def build_method(cfg: Config, num_classes: int) -> Method:
    return METHODS[cfg.method.name](cfg.method, cfg.model, num_classes)


def derive_iters(cfg: Config, train_len: int) -> int:
    """schedule.iters, or ceil(epochs × train_len / global batch) when schedule.epochs is set."""
    if cfg.schedule.epochs is None:
        return cfg.schedule.iters
    return max(1, math.ceil(cfg.schedule.epochs * train_len / cfg.engine.batch_size))


def load_trained(ckpt_path: str | Path, overrides: list[str] | None = None, config_path: str | Path | None = None):
    """(cfg, method, meta) from a weakseg checkpoint; the config stored in the checkpoint is used unless a preset
    is given, and overrides apply on top. The method's weights load strictly."""
    from weakseg.engine.checkpoint import load_checkpoint
    from weakseg.engine.config import config_from_dict, load_config

    ckpt = load_checkpoint(ckpt_path)
    if config_path is not None:
        cfg = load_config(config_path, overrides)
    else:
        cfg = config_from_dict(ckpt["config"], overrides, source=f"{ckpt_path} (stored config)")
    classes = (ckpt.get("extra") or {}).get("classes")
    meta = DatasetMeta(tuple(classes)) if classes else dataset_meta(cfg)
    # the checkpoint holds every weight: never fetch pretrained backbone weights again
    cfg.model.pretrained = None
    method = build_method(cfg, meta.num_classes)
    try:
        method.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt_path}: weights do not match the {cfg.method.name} / {cfg.model.backbone} model "
                         f"built from its config ({exc})") from exc
    return cfg, method, meta
