"""The CAM stages shared by every tag-driven method (methods.md §4.2; CDSP's stage 1, §3.1):

    train_cam   attention-pooling CAM net, multi-label soft-margin loss on the image tags
    make_cam    multi-scale + flip CAMs of the image's classes, each divided by its max   → <id>.npz
    eval_cam    mIoU of argmax([eval_thres, CAMs]) on the training split

The tags are whatever ``data.tags_source`` gives (VOC XML, dense labels, or the classes read off the scribbles for
CDSP). All settings live in one :class:`~weakseg.methods.kit.sections.CAMSection` (``method.cam`` by default).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from weakseg.data import keys as K
from weakseg.data.dataset import SegDataset
from weakseg.data.transforms import Compose, Normalize, RandomCrop, RandomHFlip, ResizeLongSide, ToTensor
from weakseg.losses.multilabel import MultiLabelSoftMarginLoss
from weakseg.methods.kit.score import score_labels
from weakseg.methods.kit.sections import CAMSection
from weakseg.methods.kit.stage import (DATA_TAGS, EvalStage, PerImageStage, StageContext, TrainJob,
                                       TrainStage, get_path, section_paths)
from weakseg.models.cam_net import CAMNet
from weakseg.modules.cam import cam_to_label, multiscale_cam
from weakseg.utils.io import load_npz, save_npz_atomic

#: stride of the stored low-resolution CAMs (the random walk's and boundary map's stride)
MAP_STRIDE = 4


class CAMTraining(nn.Module):
    """train_cam objective: multi-label soft-margin loss of the attention-pooled logits against the image's
    foreground tags (the background entry 0 of ``tags`` is dropped)."""

    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, net: CAMNet):
        super().__init__()
        self.net = net
        self.loss_cls = MultiLabelSoftMarginLoss()

    def forward(self, batch: dict, step: int) -> dict:
        logits = self.net(batch[K.IMAGE])["logits"]
        return {"loss_cls": self.loss_cls(logits, batch[K.TAGS][:, 1:])}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.net.param_groups()


def build_cam_net(section: CAMSection, num_classes: int, pretrained: bool) -> CAMNet:
    """The CAM network of ``section`` for ``num_classes`` classes (background included; it has no channel)."""
    m = section.model
    if m.head != "attention_pool":
        raise ValueError(f"the CAM network's head is its attention-pooling classifier: model.head must be "
                         f"'attention_pool', got {m.head!r}")
    return CAMNet(m.backbone, num_classes - 1, pretrained=m.pretrained if pretrained else None,
                  output_stride=m.output_stride, norm=m.norm, frozen_stages=section.frozen_stages,
                  dilated=section.dilated, attention_k=section.attention_k,
                  feature_stage=section.feature_stage)


def load_cams(ctx: StageContext, sample_id: str, stage: str = "make_cam") -> dict[str, np.ndarray]:
    """``make_cam``'s arrays of one image: ``cams`` K×⌈H/4⌉×⌈W/4⌉, ``high_res`` K×H×W, ``keys`` K."""
    return load_npz(ctx.dir(stage) / f"{sample_id}.npz")


def cam_stages(section: str = "method.cam", score_list: str | None = None) -> list:
    """[train_cam, make_cam, eval_cam] reading their settings from the CAMSection at ``section``; eval_cam scores
    the ids of ``score_list`` (a config path holding a list file, or None for ``data.train_list``)."""
    return [
        TrainStage("train_cam", functools.partial(_build_train_cam, section=section), section=section,
                   config=DATA_TAGS + section_paths(section, "model", "optim", "schedule", "batch_size",
                                                    "frozen_stages", "dilated", "attention_k", "feature_stage",
                                                    "flip_prob", "resize_long", "crop_size")
                   + ("engine.seed", "engine.amp"),
                   doc="CAM net (attention pooling) on the image tags; train_cam/model_final.pth"),
        PerImageStage("make_cam", lambda ctx: ctx.train_ids(), functools.partial(_setup_make_cam, section=section),
                      make_cam_image, ext=".npz", reads=("train_cam",),
                      config=DATA_TAGS + section_paths(section, "scales", "flip") + ("eval.amp",), doc=(
                          "<id>.npz: cams K×⌈H/4⌉×⌈W/4⌉ float16, high_res K×H×W float16 (each class / its max), "
                          "keys K int64 0-based foreground indices (class id = key + 1)")),
        EvalStage("eval_cam", functools.partial(_eval_cam, section=section, score_list=score_list),
                  reads=("make_cam",),
                  config=("data.label_dir", "eval.absent", f"{section}.eval_thres")
                  + ((score_list,) if score_list else ()),
                  doc="mIoU of argmax([eval_thres, high_res]) on the training split; metrics.json"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# train_cam


def _build_train_cam(ctx: StageContext, section: str) -> TrainJob:
    s: CAMSection = get_path(ctx.cfg, section)
    d = ctx.cfg.data
    transform = Compose([
        RandomHFlip(s.flip_prob), ResizeLongSide(tuple(s.resize_long)), Normalize(d.mean, d.std),
        RandomCrop(s.crop_size, policy="paste"), ToTensor(),
    ])
    dataset = ctx.dataset(supervision="tags", transform=transform)
    return TrainJob(CAMTraining(build_cam_net(s, ctx.meta.num_classes, pretrained=True)), dataset)


# ----------------------------------------------------------------------------------------------------------------
# make_cam


@dataclass
class _CamState:
    ctx: StageContext
    section: CAMSection
    net: CAMNet
    dataset: SegDataset


def _setup_make_cam(ctx: StageContext, section: str) -> _CamState:
    s: CAMSection = get_path(ctx.cfg, section)
    module = CAMTraining(build_cam_net(s, ctx.meta.num_classes, pretrained=False))  # weights: the checkpoint
    ctx.load_weights(module, ctx.checkpoint("train_cam"))
    module.to(ctx.device).eval()
    dataset = ctx.dataset(supervision="tags")
    return _CamState(ctx, s, module.net, dataset)


@torch.no_grad()
def make_cam_image(state: _CamState, sample_id: str, path: Path) -> None:
    """Write ``<id>.npz``: ``cams`` K×⌈H/4⌉×⌈W/4⌉ float16 (random-walk input), ``high_res`` K×H×W float16
    (boundary-label / pseudo-label input), ``keys`` K int64 0-based foreground indices of the image's tags (class
    id = key + 1). Each class map is the sum over scales of CAM(image) + flip(CAM(flipped image)), divided by its
    max + 1e-5."""
    ctx, s = state.ctx, state.section
    sample = state.dataset.load_id(sample_id)
    keys = torch.nonzero(torch.as_tensor(sample[K.TAGS][1:]) > 0).flatten().to(torch.int64)
    height, width = sample[K.ORIG_SIZE]
    low_size = (-(-height // MAP_STRIDE), -(-width // MAP_STRIDE))
    if keys.numel() == 0:  # no foreground class: everything is background
        low = torch.zeros(0, *low_size)
        high = torch.zeros(0, height, width)
    else:
        def cam_fn(x: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                return state.net.cam(x).float()

        low, high = multiscale_cam(cam_fn, ctx.image_tensor(sample[K.IMAGE]), keys.to(ctx.device), scales=s.scales,
                                   flip=s.flip, stride=MAP_STRIDE, output_stride=state.net.stride)
    save_npz_atomic(path, cams=low.half().cpu().numpy(), high_res=high.half().cpu().numpy(),
                    keys=keys.cpu().numpy().astype(np.int64))


# ----------------------------------------------------------------------------------------------------------------
# eval_cam


def _eval_cam(ctx: StageContext, section: str, score_list: str | None) -> dict:
    threshold = get_path(ctx.cfg, section).eval_thres

    def predict(sample_id: str) -> np.ndarray:
        data = load_cams(ctx, sample_id)
        cams = torch.from_numpy(data["high_res"].astype(np.float32))
        return cam_to_label(cams, torch.from_numpy(data["keys"]), threshold).numpy()

    metrics = score_labels(ctx, predict, get_path(ctx.cfg, score_list) if score_list else None)
    metrics["bg_threshold"] = threshold
    return metrics


__all__ = ["CAMTraining", "MAP_STRIDE", "build_cam_net", "cam_stages", "load_cams", "make_cam_image"]
