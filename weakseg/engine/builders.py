"""Build datasets and methods from a ``Config`` (the only place config sections become constructor arguments)."""

from __future__ import annotations

import math
from pathlib import Path

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


def _common_kwargs(cfg: Config, meta: DatasetMeta) -> dict:
    d = cfg.data
    return dict(
        meta=meta,
        image_dir=d.image_dir,
        image_ext=d.image_ext,
        label_dir=d.label_dir,
        scribble_dir=d.scribble_dir,
        pseudo_dir=d.pseudo_dir,  # relative paths are resolved against data.root by the dataset
        saliency_dir=d.saliency_dir,
        tags_source=d.tags_source,
        tags_file=d.tags_file,
        lenient=d.lenient,
    )


def build_train_dataset(cfg: Config, supervision: str, meta: DatasetMeta, extra_maps: dict | None = None,
                        list_file: str | None = None, transform=None) -> SegDataset:
    d = cfg.data
    if transform is None:
        transform = build_train_transforms(
            crop_size=d.crop_size, scale_range=d.scale_range, flip_prob=d.flip_prob, color_jitter=d.color_jitter,
            mean=d.mean, std=d.std,
        )
    return SegDataset(d.root, list_file or d.train_list, supervision=supervision, extra_maps=extra_maps,
                      transform=transform, **_common_kwargs(cfg, meta))


def build_eval_dataset(cfg: Config, meta: DatasetMeta, list_file: str | None = None, with_label: bool = True,
                       supervision: str = "none", extra_maps: dict | None = None) -> SegDataset:
    d = cfg.data
    return SegDataset(d.root, list_file or d.val_list, supervision=supervision, with_label=with_label,
                      extra_maps=extra_maps, transform=build_eval_transforms(mean=d.mean, std=d.std),
                      **_common_kwargs(cfg, meta))


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
