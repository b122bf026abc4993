"""Confusion-matrix segmentation metrics (spec §1.6).

A C×C int64 confusion matrix (rows = ground truth, columns = prediction) is accumulated over the whole split
with pixels whose ground truth is the ignore index masked out; IoU_c = TP_c / (T_c + P_c − TP_c). Memory is
O(C²), independent of the number of images. Under DDP each rank accumulates its own matrix and the engine sums them.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates a C×C confusion matrix.

    Args:
        num_classes: C, the number of classes (including background).
        ignore_index: ground-truth value that is not evaluated.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        # ground-truth pixels whose prediction abstained (prediction == ignore_index), per class
        self.abstained = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a prediction / ground-truth pair (any shape, same shape, integer class ids).

        Predictions equal to ``ignore_index`` (e.g. pseudo-labels that abstain) count as "no prediction":
        the pixel adds to the ground-truth total of its class (a miss) but to no predicted class.
        Ground-truth values ≥ C other than the ignore index raise ValueError.
        """
        pred, target = (torch.from_numpy(np.array(a, dtype=np.int64)) if isinstance(a, np.ndarray) else a
                        for a in (pred, target))  # a copy: read-only arrays (np.load, Pillow) are fine too
        pred = torch.as_tensor(pred).reshape(-1).to("cpu", torch.int64)
        target = torch.as_tensor(target).reshape(-1).to("cpu", torch.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels but ground truth has {target.numel()}")
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"ground truth contains class ids outside 0..{self.num_classes - 1} (and not {self.ignore_index})")
        abstain = pred == self.ignore_index
        if abstain.any():
            self.abstained += torch.bincount(target[abstain], minlength=self.num_classes)
            pred, target = pred[~abstain], target[~abstain]
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction contains class ids outside 0..{self.num_classes - 1}")
        idx = target * self.num_classes + pred
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat
        self.abstained += other.abstained

    def compute(self, absent: str = "zero") -> dict:
        """Metrics from the accumulated matrix.

        Args:
            absent: policy for a class absent from both ground truth and prediction: ``"zero"`` (BLPSeg/WebCoseg:
                counts as IoU 0 in the mean) or ``"nan"`` (chainercv/BES: left out of the mean).

        Returns:
            dict with ``miou``, ``iou`` (list per class, NaN where absent), ``acc`` (pixel accuracy over evaluated
            pixels), ``macc`` (mean class accuracy), ``coverage`` (fraction of evaluated pixels with a prediction,
            < 1 only for abstaining pseudo-labels) and ``precision`` (accuracy on covered pixels).
        """
        if absent not in ("zero", "nan"):
            raise ValueError(f"absent must be 'zero' or 'nan', got {absent!r}")
        mat = self.mat.double()
        tp = mat.diag()
        gt = mat.sum(1)
        abst = self.abstained.double()
        gt_all = gt + abst
        pr = mat.sum(0)
        union = gt_all + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        present = union > 0
        if absent == "zero":
            miou = float(torch.nan_to_num(iou, nan=0.0).mean())
        else:
            miou = float(iou[present].mean()) if present.any() else float("nan")
        total = float(gt_all.sum())
        covered = float(mat.sum())
        cls_acc = torch.where(gt_all > 0, tp / gt_all.clamp(min=1), torch.full_like(tp, float("nan")))
        return {
            "miou": miou,
            "iou": [float(v) for v in iou],
            "acc": float(tp.sum()) / total if total else float("nan"),
            "macc": float(cls_acc[gt_all > 0].mean()) if (gt_all > 0).any() else float("nan"),
            "coverage": covered / total if total else float("nan"),
            "precision": float(tp.sum()) / covered if covered else float("nan"),
        }
