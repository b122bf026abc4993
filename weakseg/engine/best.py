"""Best-snapshot selection (``engine.best``): every ``interval`` iterations the model is scored on a selection split
and the best-scoring weights are kept as ``model_best.pth`` beside ``model_final.pth``.

Selection splits:

* ``holdout`` (default): a deterministic fraction of the training ids, removed from training and scored against
  the dense ground truth in ``data.label_dir``. The ids are the ``round(holdout · N)`` ids with the smallest
  SHA-1 of their name, so the split does not depend on list order, seed or machine.
* ``val``: ``data.val_list``. The val score of a model selected on val is optimistic; results say so.
* any other value: a list file of ids with ground truth (relative to ``data.root`` unless absolute).

:class:`BestTracker` holds the selection state (best value and iteration, the history) and is saved in every
checkpoint so that a resumed run keeps selecting exactly as the uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from weakseg.data.dataset import hashed_subset
from weakseg.engine.config import BestConfig, Config, ConfigError
from weakseg.utils.io import DataError

log = logging.getLogger("weakseg")

VAL_NOTE = ("model_best was selected on the val split: its val score is an optimistic estimate, not a held-out "
            "result")


def holdout_ids(ids: list[str], fraction: float) -> list[str]:
    """The ``round(fraction · len(ids))`` ids (at least 1) with the smallest SHA-1 of their name, in list order."""
    n = max(1, int(round(fraction * len(ids))))
    if n >= len(ids):
        raise ConfigError(f"engine.best.holdout = {fraction} of {len(ids)} training ids leaves nothing to train on")
    return hashed_subset(ids, n)


def describe_split(best: BestConfig) -> str:
    if best.split == "holdout":
        return f"holdout ({best.holdout:g} of the train ids)"
    return best.split


def _check_ground_truth(dataset, what: str) -> None:
    """Every id of ``dataset`` (a SegDataset with labels) must have its dense label file."""
    missing = [dataset._file(dataset.label_dir, i, dataset.label_ext) for i in dataset.ids]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: engine.best.split = {what} scores against the ground truth in "
                        f"data.label_dir, but {len(missing)} of {len(dataset.ids)} label files are missing; use "
                        f"engine.best.split = val (or a list file of ids with ground truth), or engine.best.interval "
                        f"= 0")


def selection_dataset(cfg: Config, meta, train_dataset=None):
    """The dataset that ``engine.best`` scores on (eval transforms, with ground truth).

    For ``split = holdout`` the held-out ids are removed from ``train_dataset`` (a SegDataset: its ``ids`` list is
    replaced) and returned as an evaluation set of the same list file.
    """
    from weakseg.engine import builders

    best = cfg.engine.best
    if best.split == "holdout":
        if train_dataset is None or not isinstance(getattr(train_dataset, "ids", None), list):
            raise ConfigError("engine.best.split = holdout needs a training set with an id list; a caller that "
                              "builds its own training set must pass its held-out dataset to the trainer")
        held = holdout_ids(train_dataset.ids, best.holdout)
        held_set = set(held)
        dataset = builders.build_eval_dataset(cfg, meta, list_file=str(train_dataset.list_file))
        dataset.ids = [i for i in dataset.ids if i in held_set]
        _check_ground_truth(dataset, "holdout")
        train_dataset.ids = [i for i in train_dataset.ids if i not in held_set]
        log.info("best-snapshot selection: %d of %d training ids held out (engine.best.holdout = %g)", len(held),
                 len(held) + len(train_dataset.ids), best.holdout)
        return dataset
    list_file = None if best.split == "val" else best.split
    dataset = builders.build_eval_dataset(cfg, meta, list_file=list_file)
    _check_ground_truth(dataset, best.split)
    return dataset


@dataclass
class BestTracker:
    """Keeps the best score seen so far; ``update`` says when a new best must be saved.

    Attributes:
        metric: the key of the evaluation result that is compared (higher is better).
        split: a description of the selection split (stored with the result).
        value, iteration: the best score so far and its iteration (None / -1 before the first evaluation).
        history: [iteration, score] of every evaluation.
    """

    metric: str = "miou"
    split: str = "holdout"
    value: float | None = None
    iteration: int = -1
    history: list[list] = field(default_factory=list)

    def update(self, iteration: int, metrics: dict) -> bool:
        """Record the score of ``iteration``; True when it beats the best so far (ties keep the earlier one; a NaN
        score never wins)."""
        score = float(metrics[self.metric])
        self.history.append([int(iteration), score])
        if math.isnan(score) or (self.value is not None and score <= self.value):
            return False
        self.value, self.iteration = score, int(iteration)
        return True

    def state_dict(self) -> dict:
        return {"metric": self.metric, "split": self.split, "value": self.value, "iteration": self.iteration,
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.value = state.get("value")
        self.iteration = int(state.get("iteration", -1))
        self.history = [list(h) for h in state.get("history", [])]

    def summary(self, checkpoint: Path) -> dict:
        out = {"checkpoint": str(checkpoint), "iteration": self.iteration, "split": self.split,
               "metric": self.metric, "value": self.value}
        if self.split == "val":
            out["note"] = VAL_NOTE
        return out
