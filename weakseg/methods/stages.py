"""Declarations of the stages of a multi-stage method (the engine's ``weakseg run`` executes them).

A stage is named ``verb_noun``, says which artefact folders it reads, and writes into ``<work_dir>/<name>/``:

* ``TrainStage``: trains a network; ``build(ctx)`` returns ``(method, train_dataset, overrides)`` where
  ``overrides`` are ``key.path=value`` strings applied to the run config for this stage (schedule, optimiser,
  batch size, crop...). Output: ``<name>/model_final.pth`` (+ resumable checkpoints).
* ``PerImageStage``: ``setup(ctx)`` loads what the stage needs once per process, then ``process(state, id, path)``
  writes the artefact of one image to ``path`` (atomically; its existence marks the image as done). Images are
  sharded over ranks (``sorted(ids)[rank::world]``) and finished images are skipped on resume.
* ``EvalStage``: ``run(ctx) -> metrics dict``, written to ``<name>/metrics.json`` by the engine.

The engine writes ``<name>/_done.json`` (count, config hash, format version) when a stage completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class StageContext:
    cfg: Any  # the run Config
    work_dir: Path  # <work_dir> of the run
    meta: Any  # DatasetMeta
    device: Any  # torch.device
    amp_dtype: Any = None  # autocast dtype for inference stages (None = full precision)
    # engine services (methods may not import the engine): filled in by weakseg.engine.pipeline
    evaluate: Callable[..., dict] | None = None  # (method, dataset, out_dir) -> metrics, sharded, with report
    load_weights: Callable[[Any, Path], None] | None = None  # (module, checkpoint path): strict, weights_only

    def dir(self, stage: str) -> Path:
        """The artefact folder of a stage."""
        return self.work_dir / stage


@dataclass
class TrainStage:
    name: str
    build: Callable[[StageContext], tuple[Any, Any, list[str]]]
    reads: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class PerImageStage:
    name: str
    ids: Callable[[StageContext], list[str]]
    setup: Callable[[StageContext], Any]
    process: Callable[[Any, str, Path], None]
    ext: str = ".png"
    reads: tuple[str, ...] = ()
    format_version: int = 1
    doc: str = ""


@dataclass
class EvalStage:
    name: str
    run: Callable[[StageContext], dict]
    reads: tuple[str, ...] = ()
    doc: str = ""


Stage = TrainStage | PerImageStage | EvalStage

