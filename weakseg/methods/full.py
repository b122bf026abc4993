"""Full supervision: cross-entropy on dense masks. The upper bound that every weakly supervised table reports."""

from __future__ import annotations

from dataclasses import dataclass

from weakseg.losses.partial_ce import PartialCrossEntropy
from weakseg.methods.base import Method, upsample_to


@dataclass
class FullSupervisionConfig:
    name: str = "full"  # method name
    label_smoothing: float = 0.0  # ε of label-smoothed CE


class FullSupervision(Method):
    Config = FullSupervisionConfig
    supervision = "full"

    def __init__(self, cfg: FullSupervisionConfig, model_cfg, num_classes: int):
        super().__init__(cfg, model_cfg, num_classes)
        self.loss_ce = PartialCrossEntropy(label_smoothing=cfg.label_smoothing)

    def training_step(self, batch: dict, step: int) -> dict:
        target = batch["label"]
        logits = upsample_to(self.model(batch["image"])["seg"], target.shape[-2:])
        return {"loss_ce": self.loss_ce(logits, target)}
