"""Partial cross-entropy on scribbles: the scribble baseline (CE on annotated pixels, unlabeled pixels ignored)."""

from __future__ import annotations

from dataclasses import dataclass

from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method, upsample_to


@dataclass
class PartialCEConfig:
    name: str = "partial_ce"  # method name


class PartialCE(Method):
    Config = PartialCEConfig
    supervision = "scribble"

    def __init__(self, cfg: PartialCEConfig, model_cfg, num_classes: int):
        super().__init__(cfg, model_cfg, num_classes)
        self.loss_pce = PartialCrossEntropy()

    def training_step(self, batch: dict, step: int) -> dict:
        target = batch["scribble"]  # 255 = not annotated or crop padding
        logits = upsample_to(self.model(batch["image"])["seg"], target.shape[-2:])
        return {"loss_pce": self.loss_pce(logits, target)}
