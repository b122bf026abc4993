"""Typed run configuration: nested dataclasses whose field names are the YAML keys.

A preset is a YAML file with the sections ``data``, ``model``, ``method``, ``optim``, ``schedule``, ``engine`` and
``eval``. It may name one ``_base_`` preset (a path relative to itself); chains of bases are refused. Overrides come
last, as ``key.path=value`` strings whose values are parsed as YAML scalars. Unknown keys raise ``ConfigError``
naming the key path, the file and the closest valid name; values are type-checked against the field annotations.

The ``method`` section is validated against the config dataclass of the method it names (``method.name``), so each
method declares its own hyper-parameters next to its code (``weakseg/methods/<name>.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration; the message names the key (and the file when there is one)."""


@dataclass
class DataConfig:
    root: str = "data/synth"  # dataset root: a VOC2012-layout folder (JPEGImages, SegmentationClass, ImageSets/...)
    train_list: str = "ImageSets/Segmentation/train.txt"  # id list for training, relative to root
    val_list: str = "ImageSets/Segmentation/val.txt"  # id list for evaluation, relative to root
    image_dir: str = "JPEGImages"  # folder of <id><image_ext>
    image_ext: str = ".jpg"  # image suffix
    label_dir: str = "SegmentationClass"  # dense ground truth <id>.png (full supervision and evaluation)
    scribble_dir: str = "Scribbles"  # scribble PNGs, 255 = not annotated
    pseudo_dir: str | None = None  # pseudo-mask PNGs (supervision: pseudo)
    saliency_dir: str | None = None  # saliency PNGs (SBE)
    tags_source: str = "label"  # where image-level tags come from: label | scribble | xml | file
    tags_file: str | None = None  # JSON {id: [class ids]} when tags_source = file
    crop_size: int = 321  # square training crop
    scale_range: tuple[float, float] = (0.5, 1.5)  # random scale range
    scale_choices: tuple[float, ...] | None = None  # discrete training scales instead of the range (DeepLab-v2)
    crop_policy: str = "paste"  # where small images sit in the crop: paste (random) | center | corner (DeepLab-v2)
    image_resize: str = "bicubic"  # image interpolation of the random scale: bicubic | bilinear (DeepLab-v2)
    flip_prob: float = 0.5  # horizontal flip probability
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB mean after /255
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB std after /255
    num_workers: int = 2  # DataLoader workers per process
    lenient: bool = False  # skip unreadable / inconsistent samples (with a count) instead of failing


@dataclass
class ModelConfig:
    backbone: str = "resnet101"  # mobilenet_v2 | efficientnet_lite0 | resnet18/34/50/101
    pretrained: str | None = None  # None (random init), "imagenet" (bundled weights) or a path to a .pth file
    output_stride: int = 16  # 8 | 16 | 32
    norm: str = "bn"  # bn | syncbn | frozen_bn | gn
    head: str = "deeplabv3plus"  # deeplabv2 | deeplabv3plus | uper
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments of the head
    backbone_options: dict[str, Any] = field(default_factory=dict)  # backbone options, e.g. {stride_in_1x1: true}


@dataclass
class MethodConfig:
    name: str = "full"  # method name, a key of weakseg.methods.METHODS


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # base learning rate
    momentum: float = 0.9  # SGD momentum
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 1e-4  # weight decay (decoupled for AdamW)
    lr_mult: dict[str, float] = field(default_factory=dict)  # per parameter group LR multiplier, e.g. {head: 10}
    wd_mult: dict[str, float] = field(default_factory=dict)  # per parameter group weight-decay multiplier
    grad_clip: float | None = None  # max global grad norm (None = off)


@dataclass
class ScheduleConfig:
    name: str = "poly"  # poly | cosine (both with optional linear warm-up)
    iters: int = 1000  # total training iterations (derived from epochs when epochs is set)
    epochs: float | None = None  # if set: iters = ceil(epochs * len(train set) / global batch)
    power: float = 0.9  # poly power: lr = base * (1 - it / (iters + 1)) ** power
    warmup_iters: int = 0  # linear warm-up from warmup_ratio * lr
    warmup_ratio: float = 0.1  # LR factor at iteration 0 of the warm-up
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the base LR


@dataclass
class BestConfig:
    interval: int = 0  # iterations between selection evaluations; model_best.pth is kept (0 = off)
    split: str = "holdout"  # holdout | val | a list file of ids with ground truth (relative to data.root)
    holdout: float = 0.1  # split = holdout: fraction of the train ids held out (removed from training)
    metric: str = "miou"  # miou | acc | macc (higher is better)


@dataclass
class EngineConfig:
    work_dir: str | None = None  # default: work_dirs/<config stem>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8  # GLOBAL batch size (split over torchrun ranks)
    amp: str = "auto"  # auto (CPU: bf16 if native and measured faster, else fp32; CUDA: bf16/fp16) | bf16 | fp16 | none
    channels_last: bool = True  # channels_last memory format for model and input
    seed: int = 0  # base seed; rank r uses seed + r for augmentation
    log_interval: int = 20  # iterations between log lines / TensorBoard scalars
    ckpt_interval: int = 500  # iterations between checkpoints (0 = only at the end)
    keep_ckpts: int = 2  # number of periodic checkpoints kept
    eval_interval: int = 0  # iterations between validations (0 = only at the end)
    tensorboard: bool = True  # write TensorBoard scalars when tensorboard is installed
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA (plain BN on CPU, where SyncBN cannot run)
    threads: int | None = None  # torch.set_num_threads per process (None: on CPU, cores minus loader workers)
    stage_workers: int | None = None  # processes per rank of per-image stages (None: on CPU one per core; 1 on CUDA)
    nonfinite: str = "stop"  # a NaN/inf loss: stop (keeping the last checkpoint) | skip (the step, counted)
    max_skipped: int = 100  # nonfinite = skip: stop anyway after this many skipped steps
    best: BestConfig = field(default_factory=BestConfig)  # best-snapshot selection (model_best.pth)


@dataclass
class EvalConfig:
    scales: tuple[float, ...] = (1.0,)  # test scales
    flip: bool = False  # add horizontally flipped passes
    average: str = "logit"  # logit | prob: what is averaged over scales/flips; max: maximum of logits (DeepLab-v2)
    mode: str = "whole"  # whole | slide
    crop_size: int = 513  # sliding-window size
    stride: int = 341  # sliding-window stride
    resize: str = "scale"  # scale (each side × s) | long_side (long side = round(long_side · s), CDSP)
    long_side: int = 512  # base long side of resize: long_side
    pad: str = "corner"  # sliding-window padding of small images: corner (bottom/right) | center (CDSP)
    align_corners: bool = False  # bilinear resize of the predictions back to the image size
    image_resize: str = "bilinear"  # interpolation of the test-scale image rescale: bilinear | bicubic (BLPSeg)
    crf: str | None = None  # CRF preset name (None = off)
    absent: str = "zero"  # absent-class policy for mIoU: zero | nan
    save_predictions: bool = True  # write palette PNGs of the predictions
    save_overlays: int = 8  # number of overlay pictures to write (0 = none)
    batch_size: int = 1  # images per forward pass (same-size images only)
    amp: str = "none"  # autocast of evaluation, prediction and the inference stages: none (fp32) | auto | bf16 | fp16


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=MethodConfig)  # replaced by the named method's config dataclass
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "run"  # run name (default: the preset's file stem)


# ----------------------------------------------------------------------------------------------------------------
# loading


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("head_kwargs", "lr_mult", "wd_mult"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_preset(path: str | Path) -> dict:
    """The merged mapping of a preset and its (single) ``_base_``."""
    path = Path(path)
    data = _load_yaml(path)
    base = data.pop("_base_", None)
    if base is not None:
        base_path = (path.parent / base).resolve()
        base_data = _load_yaml(base_path)
        if "_base_" in base_data:
            raise ConfigError(f"{base_path}: a base preset may not itself name a _base_ (chains are not allowed)")
        data = _deep_merge(base_data, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples where asked."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls, data: dict, where: str, source: str, base=None):
    """``cls`` from a mapping, starting from ``base`` (default: ``cls()``). A nested section starts from its
    parent's default, so a method's section defaults (e.g. SBE's CAM threshold) survive a partial YAML section."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    base = cls() if base is None else base
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{source}: unknown config key {path!r}{_closest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, source, getattr(base, key))
        else:
            kwargs[key] = _coerce(value, tp, f"{source}: {path}")
    return dataclasses.replace(base, **kwargs)


def method_config_class(name: str):
    from weakseg.methods import METHODS

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}{_closest(name, METHODS)}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config


def build_config(data: dict, source: str = "<config>") -> Config:
    """A validated ``Config`` from a merged mapping."""
    data = dict(data)
    method_data = dict(data.pop("method", {}) or {})
    cfg = _build(Config, data, "", source)
    name = method_data.get("name", "full")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: method.name must be a string")
    cfg.method = _build(method_config_class(name), method_data, "method", source)
    validate(cfg, source)
    return cfg


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset (with its ``_base_``), apply ``key.path=value`` overrides, validate."""
    data: dict = read_preset(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(data, keys, value)
    source = str(path) if path is not None else "<overrides>"
    if path is not None and "name" not in data:
        data["name"] = Path(path).stem
    return build_config(data, source)


def config_from_dict(data: dict, overrides: list[str] | None = None, source: str = "<checkpoint>") -> Config:
    """Rebuild a Config from a stored mapping (a checkpoint's ``config``), with overrides applied."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(data, keys, value)
    return build_config(data, source)


def validate(cfg: Config, source: str = "<config>") -> None:
    """Cross-field checks with messages that name the key."""
    validate_training_sections(cfg, "", source)
    for path, section in _train_sections(cfg.method, "method"):
        validate_training_sections(section, path + ".", source)
    choices = {
        "engine.amp": (cfg.engine.amp, ("auto", "bf16", "fp16", "none")),
        "eval.average": (cfg.eval.average, ("logit", "prob", "max")),
        "eval.image_resize": (cfg.eval.image_resize, ("bilinear", "bicubic")),
        "data.image_resize": (cfg.data.image_resize, ("bilinear", "bicubic")),
        "data.crop_policy": (cfg.data.crop_policy, ("paste", "center", "corner")),
        "eval.mode": (cfg.eval.mode, ("whole", "slide")),
        "eval.resize": (cfg.eval.resize, ("scale", "long_side")),
        "eval.pad": (cfg.eval.pad, ("corner", "center")),
        "eval.absent": (cfg.eval.absent, ("zero", "nan")),
        "model.norm": (cfg.model.norm, ("bn", "syncbn", "frozen_bn", "gn")),
        "data.tags_source": (cfg.data.tags_source, ("label", "scribble", "xml", "file")),
        "engine.nonfinite": (cfg.engine.nonfinite, ("stop", "skip")),
        "engine.best.metric": (cfg.engine.best.metric, ("miou", "acc", "macc")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {', '.join(map(str, allowed))}")
    positive = {
        "engine.batch_size": cfg.engine.batch_size,
        "data.crop_size": cfg.data.crop_size,
        "schedule.iters": cfg.schedule.iters,
        "eval.crop_size": cfg.eval.crop_size,
        "eval.stride": cfg.eval.stride,
        "eval.long_side": cfg.eval.long_side,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key} must be positive, got {value}")
    if not cfg.eval.scales or any(s <= 0 for s in cfg.eval.scales):
        raise ConfigError(f"{source}: eval.scales must be a non-empty list of positive numbers")
    lo, hi = cfg.data.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"{source}: data.scale_range must satisfy 0 < low <= high, got {cfg.data.scale_range}")
    if cfg.data.tags_source == "file" and not cfg.data.tags_file:
        raise ConfigError(f"{source}: data.tags_source = file needs data.tags_file")
    best = cfg.engine.best
    if best.interval < 0:
        raise ConfigError(f"{source}: engine.best.interval must be >= 0 (0 = off), got {best.interval}")
    if best.split == "holdout" and not 0 < best.holdout < 1:
        raise ConfigError(f"{source}: engine.best.holdout must be a fraction in (0, 1), got {best.holdout}")
    if not best.split:
        raise ConfigError(f"{source}: engine.best.split must be holdout, val or a list file")
    if cfg.engine.max_skipped < 0:
        raise ConfigError(f"{source}: engine.max_skipped must be >= 0, got {cfg.engine.max_skipped}")


def _train_sections(obj, prefix: str):
    """(dotted path, section) of every nested section that has ``model``, ``optim`` and ``schedule`` (a training
    stage's TrainSection)."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if all(hasattr(value, k) for k in ("model", "optim", "schedule")):
                yield f"{prefix}.{f.name}", value
            else:
                yield from _train_sections(value, f"{prefix}.{f.name}")


def validate_training_sections(obj, prefix: str, source: str) -> None:
    """Checks of ``model`` / ``optim`` / ``schedule`` (and ``batch_size``) of a run or of a stage's TrainSection;
    messages name the full key (``method.cam.optim.name``)."""
    m, o, sc = obj.model, obj.optim, obj.schedule
    choices = {
        "optim.name": (o.name, ("sgd", "adamw")),
        "schedule.name": (sc.name, ("poly", "cosine")),
        "model.output_stride": (m.output_stride, (8, 16, 32)),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{source}: {prefix}{key} = {value!r} is not one of {', '.join(map(str, allowed))}")
    if o.lr <= 0:
        raise ConfigError(f"{source}: {prefix}optim.lr must be positive")
    if sc.iters <= 0:
        raise ConfigError(f"{source}: {prefix}schedule.iters must be positive, got {sc.iters}")
    if sc.warmup_iters < 0 or sc.warmup_iters > sc.iters:
        raise ConfigError(f"{source}: {prefix}schedule.warmup_iters must be in 0..schedule.iters")
    if getattr(obj, "batch_size", 1) <= 0:
        raise ConfigError(f"{source}: {prefix}batch_size must be positive, got {obj.batch_size}")


# ----------------------------------------------------------------------------------------------------------------
# output


def to_dict(cfg) -> dict:
    """Plain, YAML-safe mapping of a config (tuples become lists)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(obj) -> str:
    """A short stable hash of a config (or of any part of one), for stage completion markers."""
    payload = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_differences(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old → new`` for every leaf that differs between two config dicts (dotted keys; a key equal to or
    under one of ``ignore`` is skipped). Used to warn when a run is resumed with different settings."""
    def leaves(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(leaves(v, key + ".") if isinstance(v, dict) and v
                       else {key: list(v) if isinstance(v, tuple) else v})
        return out

    a, b = leaves(old), leaves(new)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<absent>')!r} → {b.get(k, '<absent>')!r}" for k in keys
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + ".") for i in ignore)]


def resolve_work_dir(cfg: Config) -> Path:
    return Path(cfg.engine.work_dir) if cfg.engine.work_dir else Path("work_dirs") / cfg.name
