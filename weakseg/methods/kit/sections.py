"""Typed config sections of training stages, built from the run's own section dataclasses.

A training stage of a multi-stage method (a CAM network, a boundary network, an initial mask generator) is set in
YAML exactly like a run: its ``model``, ``optim`` and ``schedule`` are the same dataclasses as the run's top-level
sections, so every key a run accepts is accepted there, with the same checks and "did you mean" messages::

    method:
      cam:
        model: {backbone: resnet50, pretrained: pretrained/resnet50.pth, output_stride: 16}
        optim: {name: sgd, lr: 0.01, lr_mult: {classifier: 10}}
        schedule: {name: poly, epochs: 5}
        batch_size: 16
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The section dataclasses are the configuration schema (plain dataclasses, no engine machinery).
from weakseg.engine.config import BestConfig, ModelConfig, OptimConfig, ScheduleConfig


@dataclass
class TrainSection:
    """A training stage's network, optimiser, schedule and batch (subclasses add the stage's augmentation)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the stage's network (backbone, weights, stride, norm)
    optim: OptimConfig = field(default_factory=OptimConfig)  # its optimiser
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # its LR schedule and length
    batch_size: int = 16  # global batch of the stage
    best: BestConfig = field(default_factory=BestConfig)  # best-snapshot selection (stages that predict masks)


def _cam_model() -> ModelConfig:
    return ModelConfig(backbone="resnet50", output_stride=16, norm="fixed_bn", head="attention_pool")


def _cam_optim() -> OptimConfig:
    return OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, lr_mult={"classifier": 10.0})


def _cam_schedule() -> ScheduleConfig:
    return ScheduleConfig(name="poly", epochs=5.0, power=0.9)


@dataclass
class CAMSection(TrainSection):
    """The attention-pooling CAM network (IRN's ``resnet50_cam``, methods.md §4.2): training, CAM generation and
    CAM scoring. ``model.head`` is its attention-pooling classifier and must stay ``attention_pool``."""

    model: ModelConfig = field(default_factory=_cam_model)
    optim: OptimConfig = field(default_factory=_cam_optim)  # reference: SGD 0.1 without momentum ≙ 0.01 with 0.9
    schedule: ScheduleConfig = field(default_factory=_cam_schedule)  # 5 epochs = 3,305 it. on train_aug at batch 16
    frozen_stages: int = 2  # stem + this many stages get no gradient (conv1/bn1, layer1, layer2)
    dilated: bool = False  # dilate the stages past the output stride (False: IRN's strides (2, 2, 2, 1))
    attention_k: float = 1e-3  # temperature k of the attention pooling
    feature_stage: int = 4  # backbone stage (1-4) the classifier reads; earlier = finer CAMs (for small images)
    flip_prob: float = 0.5  # horizontal flip probability of training
    resize_long: tuple[int, int] = (320, 512)  # random long-side resize range of training (inclusive)
    crop_size: int = 512  # random crop of training (padding 0 after normalisation)
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # make_cam image scales
    flip: bool = True  # make_cam adds the flipped image at every scale
    eval_thres: float = 0.11  # eval_cam background score: argmax([eval_thres, CAMs])
