"""Declarations of the stages of a multi-stage method, and the context a stage runs in.

A method lists its stages (``Method.stages(cfg)``); ``weakseg run`` (weakseg/engine/pipeline.py) executes them in
order. A stage is named ``verb_noun``, writes into ``<work_dir>/<name>/`` and declares:

* ``reads``: the stages whose artefacts it reads (they must be complete);
* ``config``: the dotted config paths its output depends on (``"method.cam.optim"``, ``"data.root"``; a leading
  ``-`` removes a path, e.g. ``"-data.num_workers"`` after ``"data"``).

Its fingerprint is the hash of those values and of the fingerprints of the stages it reads, so changing one value
re-runs exactly the stages downstream of it (pipeline.py says which value changed) and keeps the others.

Three kinds:

* ``TrainStage``: ``build(ctx) -> TrainJob`` (the module to train, its dataset, optionally a held-out set for
  best-snapshot selection). ``section`` names the typed config section (a :class:`~weakseg.methods.kit.sections.
  TrainSection`) whose ``model`` / ``optim`` / ``schedule`` / ``batch_size`` / ``best`` the trainer uses; None means
  the run's own top-level sections (the method's final network). Output: ``model_final.pth`` (+ ``model_best.pth``
  with selection, + resumable checkpoints).
* ``PerImageStage``: ``setup(ctx)`` loads what the stage needs once per process, then ``process(state, item, path)``
  writes the artefact of one item (an image id, or a class name for per-class stages) to ``path`` atomically; its
  existence marks the item done. Items are sharded over ranks (``sorted(items)[rank::world]``), finished items are
  skipped on resume, and ``engine.stage_workers`` processes share a rank's items on CPU.
* ``EvalStage``: ``run(ctx) -> metrics dict``, written to ``<name>/metrics.json``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from weakseg.data import keys as K
from weakseg.data.build import build_dataset
from weakseg.data.dataset import SegDataset
from weakseg.data.transforms import Compose, Normalize, ToTensor


@dataclass
class StageContext:
    """What a stage sees: the run config, its folders, the classes and the device, plus two engine services."""

    cfg: Any  # the run Config
    work_dir: Path  # <work_dir> of the run
    meta: Any  # DatasetMeta of the target dataset
    device: Any  # torch.device
    amp_dtype: Any = None  # autocast dtype of inference stages (eval.amp; None = full precision)
    # engine services (methods do not import the engine): filled in by weakseg.engine.pipeline
    evaluate: Callable[..., dict] | None = None  # (method, dataset, out_dir) -> metrics, sharded, with report
    load_weights: Callable[[Any, Path], None] | None = None  # (module, checkpoint path): strict, weights_only

    def dir(self, stage: str) -> Path:
        """The artefact folder of a stage (absolute, so that datasets rooted elsewhere can read it)."""
        return (self.work_dir / stage).resolve()

    def checkpoint(self, stage: str) -> Path:
        """The weights a later stage uses from training stage ``stage``: ``model_best.pth`` when that stage
        selected a best snapshot, else ``model_final.pth``."""
        best = self.dir(stage) / "model_best.pth"
        return best if best.is_file() else self.dir(stage) / "model_final.pth"

    def dataset(self, list_file: str | None = None, *, data: Any = None, split: str = "train",
                **kwargs) -> SegDataset:
        """A dataset of the run's ``data`` section (or of another section ``data``); keyword arguments as
        :func:`weakseg.data.build.build_dataset`."""
        return build_dataset(self.cfg.data if data is None else data, self.meta, list_file, split=split, **kwargs)

    def train_ids(self) -> list[str]:
        """The ids of ``data.train_list``."""
        return self.dataset().ids

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB → 1×3×H×W normalised float32 on the stage's device."""
        d = self.cfg.data
        sample = Compose([Normalize(d.mean, d.std), ToTensor()])({K.IMAGE: image})
        return sample[K.IMAGE][None].to(self.device)

    def autocast(self):
        """Autocast of the inference stages (``eval.amp``; full precision by default)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class TrainJob:
    """What a training stage trains: ``module`` (``forward(batch, step) -> {"loss_*": ...}``, ``param_groups()``;
    a Method when the stage selects a best snapshot), its training ``dataset``, and optionally the ``holdout`` dataset
    (eval transforms, with ground truth) that the section's ``best`` selection scores on (default: the trainer
    holds out part of ``dataset`` as ``engine.best`` describes)."""

    module: Any
    dataset: Any
    holdout: Any = None


@dataclass
class TrainStage:
    name: str
    build: Callable[[StageContext], TrainJob]
    section: str | None = None  # dotted path of the stage's TrainSection; None = the run's own sections
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class PerImageStage:
    name: str
    items: Callable[[StageContext], list[str]]
    setup: Callable[[StageContext], Any]
    process: Callable[[Any, str, Path], None]
    ext: str = ".png"
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    format_version: int = 1
    doc: str = ""


@dataclass
class EvalStage:
    name: str
    run: Callable[[StageContext], dict]
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    doc: str = ""


Stage = TrainStage | PerImageStage | EvalStage


# ----------------------------------------------------------------------------------------------------------------
# config paths that stages commonly depend on

#: the training images themselves (ids, files, normalisation)
DATA_IMAGES = ("data.root", "data.train_list", "data.image_dir", "data.image_ext", "data.mean", "data.std",
               "data.lenient")
#: ... and their image-level tags
DATA_TAGS = DATA_IMAGES + ("data.tags_source", "data.tags_file", "data.scribble_dir")
#: ground truth used only for scoring on the training split
DATA_TRAIN_GT = ("data.label_dir",)
#: everything a final training stage reads from the run's own sections (its network, recipe and data)
RUN_TRAINING = ("data", "-data.num_workers", "-data.val_list", "model", "optim", "schedule", "engine.batch_size",
                "engine.seed", "engine.amp", "engine.channels_last", "engine.best")
#: the final evaluation
RUN_EVAL = ("data.root", "data.val_list", "data.image_dir", "data.image_ext", "data.label_dir", "data.mean",
            "data.std", "eval", "-eval.save_overlays")


def section_paths(section: str, *fields: str) -> tuple[str, ...]:
    """``("method.cam.scales", "method.cam.flip")`` from ``section_paths("method.cam", "scales", "flip")``."""
    return tuple(f"{section}.{f}" for f in fields)


def get_path(obj: Any, path: str) -> Any:
    """The value at dotted ``path`` of a config (dataclasses or mappings)."""
    for key in path.split("."):
        obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
    return obj
