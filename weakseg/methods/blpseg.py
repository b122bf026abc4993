"""BLPSeg: Balance the Label Preference in scribble-supervised segmentation (Wang et al., IEEE TIP 2023); spec §2.

One iteration (§2.5b):

    S  = LAM(seg_head(D), embed(x))                    # D = UPerNet(backbone(x)), stride 4
    R  = annotation_head(stop_grad(D))                 # C+1 logits, last = "not annotated"
    L_ann = weighted CE(R, t)                          # t: scribble class, C where not annotated; weight 0.02 on C
    y  = t (before self_training_start) or online pseudo-label of S (after, §2.5d)
    L_BLP = Σ_i,k w·(−log p) / Σ w per image,  w = y·(1 − q·p)^γ without gradient   (§2.5b)

Differences from the reference code (bugs fixed, spec §2.9): LAM works for any input size and stores nothing
size-specific; the class vector comes from the dataset (whole uncropped scribble map, background always in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weakseg.losses.blp import AnnotationCELoss, BLPLoss
from weakseg.methods.base import Method, upsample_to
from weakseg.models.blpseg_net import BLPSegNet
from weakseg.modules.lam import LAM
from weakseg.modules.pseudo_label import online_pseudo_label, scribble_targets


@dataclass
class BLPSegConfig:
    name: str = "blpseg"  # method name
    decoder_channels: int = 256  # width of the UPerNet decoder and of the heads (MODEL_PPM_DIM)
    use_lam: bool = True  # apply the local aggregation module (ablation switch)
    lam_sigma: float = 6.0  # Gaussian σ of LAM in stride-4 cells (MODEL_LAM_SIGMA)
    lam_radius: int | None = None  # truncation radius of the LAM window (None = ceil(4σ))
    use_blp: bool = True  # BLP weighting (1 − q·p)^γ; false = plain per-image CE on the same targets (ablation)
    gamma: float = 2.0  # BLP exponent (LOSS_GAMMA)
    unlabeled_weight: float = 0.02  # CE weight of the "not annotated" class (LOSS_UNLABEL_CLASS_W)
    annotation_weight: float = 1.0  # weight of the annotation-probability loss
    self_training_start: int | None = 10000  # iteration from which pseudo-labels replace scribbles (TRAIN_ST_POINT)
    pseudo_threshold: float = 0.9  # confidence of the online pseudo-labels


class BLPSeg(Method):
    Config = BLPSegConfig
    supervision = "scribble"

    def __init__(self, cfg: BLPSegConfig, model_cfg, num_classes: int):
        if model_cfg.head != "uper":
            raise ValueError(f"BLPSeg is built on the PPM + UPerNet decoder: set model.head: uper "
                             f"(got {model_cfg.head!r})")
        super().__init__(cfg, model_cfg, num_classes)
        self.lam = LAM(sigma=cfg.lam_sigma, radius=cfg.lam_radius) if cfg.use_lam else None
        self.loss_annotation = AnnotationCELoss(num_classes, unlabeled_weight=cfg.unlabeled_weight)
        # γ = 0 makes every weight 1: per-image mean CE over the supervised pixels (the "without BLP" ablation)
        self.loss_blp = BLPLoss(gamma=cfg.gamma if cfg.use_blp else 0.0)

    def build_model(self, model_cfg, num_classes: int) -> BLPSegNet:
        """Backbone + PPM/UPerNet with the segmentation, annotation and (with LAM) patch-embedding branches."""
        return BLPSegNet(model_cfg.backbone, num_classes, pretrained=model_cfg.pretrained,
                         output_stride=model_cfg.output_stride, norm=model_cfg.norm,
                         channels=self.cfg.decoder_channels, with_embed=self.cfg.use_lam, **dict(model_cfg.head_kwargs))

    def segment(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stride-4 segmentation logits after LAM (N×C×h×w)."""
        return self.lam(out["seg"], out["embed"]) if self.lam is not None else out["seg"]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.segment(self.model(images)), images.shape[-2:])

    def training_step(self, batch: dict, step: int) -> dict:
        image, scribble = batch["image"], batch["scribble"]
        size = scribble.shape[-2:]
        out = self.model(image)
        seg = upsample_to(self.segment(out), size)
        annotation = upsample_to(out["annotation"], size)
        valid = batch.get("valid")
        targets = scribble_targets(scribble, self.num_classes, valid)  # 0..C−1, C = not annotated, 255 = padding
        loss_ann = self.loss_annotation(annotation, targets)
        self_training = self.cfg.self_training_start is not None and step >= self.cfg.self_training_start
        if self_training:
            supervision = online_pseudo_label(seg.detach(), batch["tags"], targets,
                                              threshold=self.cfg.pseudo_threshold)
        else:
            supervision = targets
        loss_blp = self.loss_blp(seg, annotation, supervision)
        supervised = (supervision < self.num_classes).float().mean()
        return {
            "loss_annotation": self.cfg.annotation_weight * loss_ann,
            "loss_blp": loss_blp,
            "supervised_fraction": supervised.detach(),
            "self_training": torch.tensor(float(self_training)),
        }
