"""Built-in co-segmentation of one class of web images (WebCoseg's mask source, methods.md §5.1 and §1.5).

Given N images that share one object class and no pixel labels, find the shared object in each image. WebCoseg
downloaded masks made by the MATLAB pipeline of Chen, Shrivastava & Gupta (CVPR 2014, ``subdiscover``); weakseg
computes its own with a deep-feature co-segmentation after Amir et al. ("Deep ViT features as dense visual
descriptors", 2021), with an ImageNet CNN instead of a ViT (see ../shared/spec/coseg.md and docs/coseg.md):

1. **Evidence per image.** Dense descriptors of the bundled CNN (MobileNetV2 or EfficientNet-Lite0): the maps of
   ``feature_stages`` at the stride of the coarsest of them (``output_stride`` dilates the last stage), each
   L2-normalised per location and concatenated (g_h×g_w×D). U²-Net-p saliency at the refinement resolution.
2. **Set-wide PCA** to ``pca_dim`` dimensions, fitted on descriptors of the first ``pca_fit_images`` images (so a
   class of thousands of images never holds all raw descriptors at once); descriptors are L2-normalised again.
3. **Outlier images**: cosine similarity of each image's saliency-weighted pooled descriptor to the set's mean;
   images whose robust z-score is below −``outlier_z`` get the ``outlier_label`` mask (web sets contain off-topic
   images).
4. **Joint k-means** over a sample of the inlier descriptors, k in ``k_min``..``k_max`` chosen by an elbow rule;
   every location is assigned to its nearest centre.
5. **Saliency voting**: an image votes for a cluster when the cluster's mean saliency there is ≥
   ``vote_saliency``; clusters voted by at least ``vote_fraction`` of the images in which they appear are
   foreground. With ``voting=False`` (the ablation) each image decides its foreground clusters alone.
6. **Shared-object prototype**: the saliency-weighted mean descriptor of the foreground clusters against the
   (1 − saliency)-weighted mean of the background clusters; σ((cos_fg − cos_bg)/``proto_tau``) per location,
   blended with the cluster decision. A salient object that is not shared (a rider, a hand) scores low here.
7. **Refinement** at ≤ ``max_side`` pixels: the saliency and the upsampled grid score fused per pixel
   (:func:`fuse_scores`, logit fusion by default), a two-label dense CRF, components smaller than
   ``min_component`` of the image removed, holes optionally filled, and a band of ``unsure_band`` pixels on each
   side of the boundary set to 255.

Masks are H×W uint8: 0 background, ``class_id`` on the object, 255 unsure. Everything is deterministic for a seed
(the k-means sample and initialisation are the only random draws). :class:`CosegModels` holds the two networks so
that several classes reuse them; per-stage times are returned in :attr:`CosegResult.timings`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from weakseg.data.meta import IGNORE_INDEX
from weakseg.data.saliency import SaliencyModel
from weakseg.models.backbones import BACKBONES, build_backbone
from weakseg.modules.crf import CRFParams, dense_crf
from weakseg.utils.io import read_rgb

OUTLIER_LABELS = ("background", "ignore")
TIMING_KEYS = ("read", "features", "saliency", "cluster", "refine")


@dataclass
class CosegConfig:
    """Every knob of the co-segmentation (defaults: the design measured in benchmarks/results/coseg.md)."""

    backbone: str = "mobilenet_v2"  # feature CNN: mobilenet_v2 or efficientnet_lite0 (bundled ImageNet weights)
    pretrained: str = "imagenet"  # "imagenet" (bundled file) or a checkpoint path in the backbone's layout
    feature_stages: tuple[int, ...] = (2, 3)  # indices of the backbone maps (0..3) concatenated per location
    output_stride: int = 16  # 16: the last stage is dilated, a finer grid than the stride-32 map
    feature_size: int = 384  # long side (px) of the CNN input
    pca_dim: int = 64  # set-wide PCA dimension of the descriptors (0 = no PCA)
    pca_fit_images: int = 200  # the PCA is fitted on descriptors of the first this-many images
    outlier_z: float = 4.0  # images whose pooled-similarity robust z-score is below −outlier_z are outliers (0 = off)
    outlier_label: str = "background"  # mask of an outlier image: "background" (all 0) or "ignore" (all 255)
    min_images_for_outliers: int = 8  # fewer images: no outlier rejection (the statistics would be meaningless)
    k_min: int = 2  # smallest number of clusters tried
    k_max: int = 10  # largest number of clusters tried
    elbow: float = 0.9  # choose the smallest k whose next k keeps ≥ this fraction of the k-means inertia
    kmeans_samples: int = 20000  # descriptors sampled (over all inlier images) to fit k-means and the PCA
    kmeans_iters: int = 30  # Lloyd iterations per k-means fit
    voting: bool = True  # cross-image saliency voting (False: each image decides its foreground clusters alone)
    vote_saliency: float = 0.5  # an image votes for a cluster whose mean saliency there is at least this
    vote_fraction: float = 0.5  # a cluster is foreground when voted by this fraction of the images it appears in
    min_cluster_cells: int = 2  # a cluster "appears" in an image with at least this many grid cells there
    proto_tau: float = 0.05  # temperature of σ((cos_fg − cos_bg)/τ), the prototype score
    proto_weight: float = 0.5  # grid score = proto_weight·prototype + (1 − proto_weight)·cluster decision
    fusion: str = "logit"  # pixel score from saliency S and grid score G: "linear" or "logit" (see fuse_scores)
    saliency_weight: float = 0.7  # weight of the saliency in the fusion (1 − weight: the grid score)
    max_side: int = 400  # refinement resolution: long side at most this many pixels (masks are upsampled back)
    score_clip: float = 0.02  # pixel scores are clipped to [clip, 1 − clip] before the CRF unary
    crf_iterations: int = 5  # mean-field iterations of the two-label dense CRF (0 = threshold the score at 0.5)
    crf_gauss_sxy: float = 3.0  # Gaussian kernel std (px)
    crf_gauss_compat: float = 3.0  # Gaussian kernel weight
    crf_bilateral_sxy: float = 40.0  # bilateral kernel spatial std (px)
    crf_bilateral_srgb: float = 13.0  # bilateral kernel colour std (uint8 RGB units)
    crf_bilateral_compat: float = 5.0  # bilateral kernel weight
    crf_backend: str = "auto"  # dense-CRF backend: auto, pydensecrf or torch (weakseg.modules.crf)
    min_component: float = 0.01  # foreground components smaller than this fraction of the image are removed
    fill_holes: bool = False  # fill holes of the foreground (off: gaps between legs are often enclosed)
    unsure_band: int = 2  # pixels (at refinement resolution) on each side of the boundary marked 255
    saliency_threads: int = 0  # onnxruntime CPU threads of U²-Net-p (0 = onnxruntime's choice)

    def __post_init__(self):
        self.feature_stages = tuple(int(s) for s in self.feature_stages)
        if self.backbone not in ("mobilenet_v2", "efficientnet_lite0"):
            raise ValueError(f"coseg.backbone must be mobilenet_v2 or efficientnet_lite0, got {self.backbone!r}")
        if not self.feature_stages or any(not 0 <= s <= 3 for s in self.feature_stages):
            raise ValueError(f"coseg.feature_stages must be indices in 0..3, got {self.feature_stages}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"coseg.output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.outlier_label not in OUTLIER_LABELS:
            raise ValueError(f"coseg.outlier_label must be one of {OUTLIER_LABELS}, got {self.outlier_label!r}")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"coseg needs 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        checks = {"feature_size": self.feature_size >= 32, "pca_dim": self.pca_dim >= 0,
                  "pca_fit_images": self.pca_fit_images >= 1, "outlier_z": self.outlier_z >= 0,
                  "elbow": 0 < self.elbow <= 1, "kmeans_samples": self.kmeans_samples >= self.k_max,
                  "kmeans_iters": self.kmeans_iters >= 1, "vote_saliency": 0 <= self.vote_saliency <= 1,
                  "vote_fraction": 0 <= self.vote_fraction <= 1, "min_cluster_cells": self.min_cluster_cells >= 1,
                  "proto_tau": self.proto_tau > 0, "proto_weight": 0 <= self.proto_weight <= 1,
                  "saliency_weight": 0 <= self.saliency_weight <= 1, "max_side": self.max_side >= 16,
                  "score_clip": 0 <= self.score_clip < 0.5, "crf_iterations": self.crf_iterations >= 0,
                  "min_component": 0 <= self.min_component < 1, "unsure_band": self.unsure_band >= 0,
                  "saliency_threads": self.saliency_threads >= 0,
                  "crf_backend": self.crf_backend in ("auto", "pydensecrf", "torch"),
                  "fusion": self.fusion in ("linear", "logit")}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"coseg: invalid value for {', '.join(bad)}: "
                             + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

    @property
    def crf_params(self) -> CRFParams:
        return CRFParams(gauss_sxy=self.crf_gauss_sxy, gauss_compat=self.crf_gauss_compat,
                         bilateral_sxy=self.crf_bilateral_sxy, bilateral_srgb=self.crf_bilateral_srgb,
                         bilateral_compat=self.crf_bilateral_compat, iterations=self.crf_iterations)


class CosegModels:
    """The feature CNN and the U²-Net-p saliency model, loaded once and reused for every class.

    Args:
        cfg: the backbone, weights, stages, output stride and saliency threads are read from it.
        device: torch device of the CNN (the saliency model runs on onnxruntime's providers).
        saliency: an existing saliency model (anything with ``predict(H×W×3 uint8) → H×W float in [0, 1]``).
    """

    def __init__(self, cfg: CosegConfig, device: str | torch.device = "cpu", saliency: SaliencyModel | None = None):
        self.device = torch.device(device)
        self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, output_stride=cfg.output_stride)
        self.backbone.eval().to(self.device)
        self.stages = cfg.feature_stages
        self.feature_size = cfg.feature_size
        self._key = (cfg.backbone, cfg.pretrained, cfg.feature_stages, cfg.output_stride)
        self.saliency = saliency if saliency is not None else SaliencyModel(num_threads=cfg.saliency_threads or None)
        cls = BACKBONES[cfg.backbone]
        self._mean = torch.tensor(cls.pixel_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cls.pixel_std, device=self.device).view(1, 3, 1, 1)

    def matches(self, cfg: CosegConfig) -> bool:
        """True when these models were built for ``cfg``'s backbone, weights, stages and output stride."""
        return self._key == (cfg.backbone, cfg.pretrained, cfg.feature_stages, cfg.output_stride)

    @torch.no_grad()
    def descriptors(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 RGB → g_h×g_w×D float32 dense descriptors (each stage's part L2-normalised, then scaled by
        1/√#stages so that a descriptor has unit norm), at the stride of the coarsest selected stage."""
        h, w = image.shape[:2]
        scale = self.feature_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        x = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
        x = torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device)
        maps = self.backbone((x - self._mean) / self._std)
        chosen = [maps[s] for s in self.stages]
        grid = min(m.shape[-2:] for m in chosen)
        parts = [F.normalize(F.adaptive_avg_pool2d(m, grid) if tuple(m.shape[-2:]) != tuple(grid) else m, dim=1)
                 for m in chosen]
        desc = torch.cat(parts, 1) / math.sqrt(len(parts))
        return desc[0].permute(1, 2, 0).float().cpu().numpy()


@dataclass
class CosegResult:
    """Output of :func:`cosegment_class` for N images.

    Attributes:
        masks: N arrays H_i×W_i uint8 (original image sizes): 0 background, the class id, 255 unsure.
        foreground: N arrays H_i×W_i bool: the decided foreground before the unsure band (for scoring).
        outliers: N bool, True for images rejected as off-topic.
        num_clusters: the k chosen by the elbow rule.
        foreground_clusters: the clusters voted foreground (with ``voting=False``: the union over images).
        timings: seconds spent per stage over the whole set (keys :data:`TIMING_KEYS`).
    """

    masks: list[np.ndarray]
    foreground: list[np.ndarray]
    outliers: np.ndarray
    num_clusters: int
    foreground_clusters: list[int]
    timings: dict[str, float] = field(default_factory=dict)

    def seconds_per_image(self) -> dict[str, float]:
        """Mean seconds per image for each stage, plus ``total``."""
        n = max(len(self.masks), 1)
        out = {k: v / n for k, v in self.timings.items()}
        out["total"] = sum(self.timings.values()) / n
        return out


@dataclass
class _Evidence:
    """Per-image evidence kept between the two passes (small: no raw descriptors, no image)."""

    size: tuple[int, int]  # original H, W
    work: tuple[int, int]  # refinement H, W
    desc: np.ndarray  # g_h×g_w×D' float32 (after PCA, unit norm)
    saliency: np.ndarray  # h×w uint8 round(255·S) at the refinement resolution
    grid_saliency: np.ndarray  # g_h×g_w float32


def _load(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(Path(image))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"images must be H×W×3 uint8 RGB arrays or paths, got shape {image.shape} "
                         f"dtype {image.dtype}")
    return image


def _work_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def _area_pool(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """h×w float → g_h×g_w area average (torch's adaptive average pooling)."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, grid)[0, 0].numpy()


def _fit_pca(samples: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """S×D samples → (D mean, D×dim projection) from the eigenvectors of the covariance (largest first; the sign of
    each vector is fixed so that its largest-magnitude entry is positive, which keeps runs reproducible)."""
    mean = samples.mean(0)
    centred = samples - mean
    cov = centred.T.astype(np.float64) @ centred.astype(np.float64) / max(len(samples) - 1, 1)
    _, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, ::-1][:, :dim]
    signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    return mean.astype(np.float32), (vecs * signs).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _kmeans_elbow(samples: np.ndarray, cfg: CosegConfig, rng: np.random.Generator) -> np.ndarray:
    """S×D samples → k×D centres, k the smallest in k_min..k_max with inertia(k+1)/inertia(k) ≥ elbow."""
    k_max = min(cfg.k_max, len(samples))
    k_min = min(cfg.k_min, k_max)
    fits = {}

    def fit(k: int) -> tuple[np.ndarray, float]:
        if k not in fits:
            try:
                centres, labels = kmeans2(samples, k, iter=cfg.kmeans_iters, minit="++", rng=rng)
            except TypeError:  # scipy < 1.15 names the generator argument ``seed``
                centres, labels = kmeans2(samples, k, iter=cfg.kmeans_iters, minit="++", seed=rng)
            fits[k] = centres, float(((samples - centres[labels]) ** 2).sum())
        return fits[k]

    for k in range(k_min, k_max):
        if fit(k + 1)[1] >= cfg.elbow * fit(k)[1]:
            return fit(k)[0]
    return fit(k_max)[0]


def _assign(desc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """g_h×g_w×D descriptors → g_h×g_w int cluster ids (nearest centre)."""
    flat = desc.reshape(-1, desc.shape[-1])
    d2 = (flat ** 2).sum(1, keepdims=True) - 2 * flat @ centres.T + (centres ** 2).sum(1)[None]
    return d2.argmin(1).reshape(desc.shape[:2])


def _prototype_score(desc: np.ndarray, proto_fg: np.ndarray, proto_bg: np.ndarray, tau: float) -> np.ndarray:
    """σ((cos(x, fg) − cos(x, bg))/τ) per location: g_h×g_w float32."""
    z = (desc @ _normalise(proto_fg) - desc @ _normalise(proto_bg)) / tau
    return (1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)


def _weighted_mean(desc: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    num = sum((d * w[..., None]).reshape(-1, d.shape[-1]).sum(0) for d, w in zip(desc, weights))
    den = sum(float(w.sum()) for w in weights)
    return num / max(den, 1e-8)


def fuse_scores(saliency: np.ndarray, grid: np.ndarray, cfg: CosegConfig) -> np.ndarray:
    """Pixel foreground score from h×w saliency and the h×w upsampled co-segmentation grid score (both in [0, 1]).

    With w = ``saliency_weight``, ``fusion`` "linear" gives w·S + (1 − w)·G and "logit" gives
    σ(w·logit(S) + (1 − w)·logit(G)), S and G clipped to [``score_clip``, 1 − ``score_clip``] first: where
    saliency is confident (U²-Net-p is nearly binary) its sharp edges decide, where it hesitates the shared-object
    evidence does.
    """
    if cfg.fusion == "linear":
        return cfg.saliency_weight * saliency + (1.0 - cfg.saliency_weight) * grid
    eps = max(cfg.score_clip, 1e-4)
    s, g = np.clip(saliency, eps, 1 - eps), np.clip(grid, eps, 1 - eps)
    z = cfg.saliency_weight * np.log(s / (1 - s)) + (1.0 - cfg.saliency_weight) * np.log(g / (1 - g))
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def refine_mask(image: np.ndarray, score: np.ndarray, cfg: CosegConfig) -> np.ndarray:
    """Foreground score → cleaned binary foreground.

    Args:
        image: h×w×3 uint8 RGB (refinement resolution).
        score: h×w float foreground probability.
        cfg: CRF parameters, ``score_clip``, ``min_component`` and ``fill_holes``.

    Returns:
        h×w bool foreground: two-label dense CRF (or the score thresholded at 0.5 with ``crf_iterations`` 0),
        components smaller than ``min_component`` of the image removed, holes filled.
    """
    p = np.clip(score.astype(np.float32), cfg.score_clip, 1.0 - cfg.score_clip)
    if cfg.crf_iterations > 0:
        q = dense_crf(image, np.stack([1.0 - p, p]), cfg.crf_params, backend=cfg.crf_backend)
        fg = q[1] > q[0]
    else:
        fg = p > 0.5
    if cfg.min_component > 0 and fg.any():
        labels, n = ndimage.label(fg)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= cfg.min_component * fg.size
        keep[0] = False
        fg = keep[labels]
    if cfg.fill_holes and fg.any():
        fg = ndimage.binary_fill_holes(fg)
    return fg


def _final_mask(fg: np.ndarray, class_id: int, band: int) -> np.ndarray:
    """h×w bool foreground → uint8 {0, class_id, 255}, 255 on a band of ``band`` px each side of the boundary."""
    mask = np.where(fg, np.uint8(class_id), np.uint8(0))
    if band > 0 and fg.any() and not fg.all():
        structure = ndimage.generate_binary_structure(2, 1)
        outer = ndimage.binary_dilation(fg, structure, iterations=band)
        inner = ndimage.binary_erosion(fg, structure, iterations=band, border_value=1)
        mask[outer & ~inner] = IGNORE_INDEX
    return mask


def _upsample_nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))


def cosegment_class(
    images: Sequence[np.ndarray | str | os.PathLike],
    class_id: int,
    cfg: CosegConfig | None = None,
    *,
    models: CosegModels | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> CosegResult:
    """Co-segment the images of ONE class.

    Args:
        images: N H×W×3 uint8 RGB arrays or image paths (paths are read twice instead of being held in memory).
        class_id: the label written on the object (1..254).
        cfg: the configuration (default :class:`CosegConfig`).
        models: networks from an earlier call (built here when None; rebuilt when built for another backbone).
        device: torch device of the CNN when ``models`` is built here.
        seed: seed of the k-means sample and initialisation; the same seed gives the same masks.

    Returns:
        :class:`CosegResult` with one mask per image, in input order.

    Raises:
        ValueError: no images, a bad class id or a malformed array. DataError: an unreadable image path.
    """
    cfg = cfg or CosegConfig()
    if not 1 <= int(class_id) <= 254:
        raise ValueError(f"class_id must be in 1..254 (0 is background, 255 unsure), got {class_id}")
    if len(images) == 0:
        raise ValueError("cosegment_class needs at least one image")
    if models is None or not models.matches(cfg):
        models = CosegModels(cfg, device=device, saliency=models.saliency if models is not None else None)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(class_id)]))
    timings = dict.fromkeys(TIMING_KEYS, 0.0)

    def clock(key: str, t0: float) -> float:
        now = time.perf_counter()
        timings[key] += now - t0
        return now

    # ---- pass 1: descriptors, saliency, PCA (fitted once the first pca_fit_images images are in) ----
    evidence: list[_Evidence] = []
    raw: list[np.ndarray] = []  # raw descriptors waiting for the PCA fit
    pooled: list[np.ndarray] = []  # saliency-weighted pooled raw descriptor per image
    pca: tuple[np.ndarray, np.ndarray] | None = None
    n_fit = min(len(images), cfg.pca_fit_images)

    def project(d: np.ndarray) -> np.ndarray:
        if pca is None:
            return d
        return _normalise((d - pca[0]) @ pca[1]).astype(np.float32)

    for i, item in enumerate(images):
        t0 = time.perf_counter()
        image = _load(item)
        t0 = clock("read", t0)
        desc = models.descriptors(image)
        t0 = clock("features", t0)
        work = _work_size(*image.shape[:2], cfg.max_side)
        sal = models.saliency.predict(_resize_rgb(image, work))
        grid_sal = _area_pool(sal, desc.shape[:2])
        clock("saliency", t0)
        pooled.append(_normalise(_weighted_mean([desc], [grid_sal + 1e-3])))
        evidence.append(_Evidence(image.shape[:2], work, desc, np.round(sal * 255).astype(np.uint8), grid_sal))
        if cfg.pca_dim <= 0 or cfg.pca_dim >= desc.shape[-1]:
            continue
        if pca is None:
            raw.append(desc)
            if len(raw) == n_fit:
                t0 = time.perf_counter()
                flat = np.concatenate([d.reshape(-1, d.shape[-1]) for d in raw])
                take = rng.choice(len(flat), min(len(flat), cfg.kmeans_samples), replace=False)
                pca = _fit_pca(flat[np.sort(take)], cfg.pca_dim)
                for ev in evidence:
                    ev.desc = project(ev.desc)
                raw.clear()
                clock("cluster", t0)
        else:
            evidence[-1].desc = project(desc)

    # ---- outliers, joint k-means with the elbow rule, voting, prototypes ----
    t0 = time.perf_counter()
    n = len(evidence)
    outliers = np.zeros(n, dtype=bool)
    if cfg.outlier_z > 0 and n >= cfg.min_images_for_outliers:
        vectors = np.stack(pooled)
        sims = vectors @ _normalise(vectors.mean(0))
        med = np.median(sims)
        mad = 1.4826 * np.median(np.abs(sims - med))
        outliers = (sims - med) / max(mad, 1e-6) < -cfg.outlier_z
    inliers = [i for i in range(n) if not outliers[i]]
    flat = np.concatenate([evidence[i].desc.reshape(-1, evidence[i].desc.shape[-1]) for i in inliers])
    take = np.sort(rng.choice(len(flat), min(len(flat), cfg.kmeans_samples), replace=False))
    centres = _kmeans_elbow(flat[take].astype(np.float64), cfg, rng).astype(np.float32)
    k = len(centres)
    assign = {i: _assign(evidence[i].desc, centres) for i in inliers}

    # per image and cluster: number of cells and mean saliency
    counts = np.zeros((n, k))
    sal_sum = np.zeros((n, k))
    for i in inliers:
        counts[i] = np.bincount(assign[i].ravel(), minlength=k)
        sal_sum[i] = np.bincount(assign[i].ravel(), weights=evidence[i].grid_saliency.ravel(), minlength=k)
    appears = counts >= cfg.min_cluster_cells
    votes = appears & (sal_sum >= cfg.vote_saliency * np.maximum(counts, 1))
    if cfg.voting:
        ratio = votes.sum(0) / np.maximum(appears.sum(0), 1)
        fg_set = ratio >= cfg.vote_fraction
        if not fg_set.any():  # never leave the class without a foreground cluster: take the most voted one
            fg_set[int(ratio.argmax())] = True
        fg_per_image = {i: fg_set for i in inliers}
    else:
        fg_per_image = {i: votes[i] for i in inliers}
        fg_set = votes.any(0)

    def prototypes(members: list[int]) -> tuple[np.ndarray, np.ndarray]:
        fg_w = [evidence[i].grid_saliency * fg_per_image[i][assign[i]] for i in members]
        bg_w = [(1.0 - evidence[i].grid_saliency) * ~fg_per_image[i][assign[i]] for i in members]
        desc = [evidence[i].desc for i in members]
        return _weighted_mean(desc, fg_w), _weighted_mean(desc, bg_w)

    shared = prototypes(inliers) if cfg.voting else None
    grid_scores: dict[int, np.ndarray] = {}
    for i in inliers:
        proto_fg, proto_bg = shared if shared is not None else prototypes([i])
        cluster_fg = fg_per_image[i][assign[i]].astype(np.float32)
        proto = _prototype_score(evidence[i].desc, proto_fg, proto_bg, cfg.proto_tau)
        grid_scores[i] = cfg.proto_weight * proto + (1.0 - cfg.proto_weight) * cluster_fg
    clock("cluster", t0)

    # ---- pass 2: refinement per image ----
    masks, foreground = [], []
    outlier_value = 0 if cfg.outlier_label == "background" else IGNORE_INDEX
    for i, item in enumerate(images):
        ev = evidence[i]
        if outliers[i]:
            masks.append(np.full(ev.size, outlier_value, dtype=np.uint8))
            foreground.append(np.zeros(ev.size, dtype=bool))
            continue
        t0 = time.perf_counter()
        image = _resize_rgb(_load(item), ev.work)
        t0 = clock("read", t0)
        grid = torch.from_numpy(grid_scores[i])[None, None]
        up = F.interpolate(grid, size=ev.work, mode="bilinear", align_corners=False)[0, 0].numpy()
        score = fuse_scores(ev.saliency.astype(np.float32) / 255.0, up, cfg)
        fg = refine_mask(image, score, cfg)
        masks.append(_upsample_nearest(_final_mask(fg, class_id, cfg.unsure_band), ev.size))
        foreground.append(_upsample_nearest(fg.astype(np.uint8), ev.size).astype(bool))
        clock("refine", t0)
    return CosegResult(masks=masks, foreground=foreground, outliers=outliers, num_clusters=k,
                       foreground_clusters=[int(c) for c in np.flatnonzero(fg_set)], timings=timings)


def saliency_masks(images: Sequence[np.ndarray | str | os.PathLike], class_id: int, cfg: CosegConfig | None = None,
                   *, saliency: SaliencyModel | None = None, threshold: float = 0.5) -> list[np.ndarray]:
    """The baseline: U²-Net-p saliency thresholded at ``threshold`` (at the refinement resolution, no CRF, no
    clean-up), as H×W uint8 {0, class_id} masks at the original sizes."""
    cfg = cfg or CosegConfig()
    saliency = saliency or SaliencyModel(num_threads=cfg.saliency_threads or None)
    out = []
    for item in images:
        image = _load(item)
        work = _work_size(*image.shape[:2], cfg.max_side)
        sal = saliency.predict(_resize_rgb(image, work))
        out.append(_upsample_nearest(np.where(sal >= threshold, np.uint8(class_id), np.uint8(0)), image.shape[:2]))
    return out


def config_from_dict(values: dict) -> CosegConfig:
    """CosegConfig from a plain dict (e.g. a YAML section); unknown keys raise ValueError naming them."""
    known = {f.name for f in dataclasses.fields(CosegConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown coseg keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return CosegConfig(**values)
