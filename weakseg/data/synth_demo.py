"""Synthetic *demo* data ("demo" variant of ``weakseg data synth``): a task a small network learns in a minute.

The synthetic benchmark (:mod:`weakseg.data.synth`) is built to separate weakly supervised methods, so nothing is
converged at a demo budget. This variant is the opposite: every image (``size``×``size``, default 64) shows one or
two *large* objects (radius 22–36 % of the side) that rarely touch, on a dim, low-contrast background. Each of the
five foreground classes has its own shape, colour and texture, so colour, texture and shape all identify the class:

==========  ===============================  =============================================
class       shape                            colour / texture
==========  ===============================  =============================================
disc        ellipse                          red, smooth shading
square      rotated rectangle                yellow, stripes
triangle    rotated triangle                 green, spots
ring        thick annulus                    blue, flat with noise
cross       two perpendicular thick bars     magenta, checkerboard
==========  ===============================  =============================================

Scribbles come from the simulator (:mod:`weakseg.data.simulate`; two strokes per region, so that the large background
is annotated on more than one side of the objects) and tags from the masks, as for the benchmark.
The layout is the benchmark's (VOC layout, PNG everywhere; ``tags.json``, ``classes.txt``, ``README.txt``), so every
method and preset that reads the benchmark reads this too. Image ``i`` depends only on (seed, i).

:func:`generate_synth_demo_web` writes a *web* set of the same classes (WebCoseg's web images in the demo, the
``folders`` layout of :mod:`weakseg.data.web`): each image is filed under one class and shows 1–2 objects of it,
rendered as in the demo data, on a textured background with dim, desaturated clutter blobs; a fraction of the images
is off-topic (clutter only). Its masks are for scoring only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from weakseg.data.synth import _grid, _smooth_noise, write_segmentation_set
from weakseg.data.synth_web import check_web_set_args, write_web_set
from weakseg.utils.io import write_text_atomic

DEMO_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")

# one colour per class (RGB); the background is drawn from dim greys/browns far from all of them
_CLASS_RGB = np.array([(0, 0, 0), (225, 60, 45), (235, 200, 40), (60, 185, 70), (50, 110, 225), (200, 60, 200)],
                      dtype=np.float32)
_MAX_OVERLAP = 0.1  # an object may hide at most this fraction of an earlier one


def _shape(cls: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of class ``cls`` over local coordinates (u, v) in units of the object radius."""
    if cls == 1:  # disc (ellipse: the aspect is applied by the caller)
        return np.hypot(u, v) <= 1.0
    if cls == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if cls == 3:  # triangle: three half-planes at 120° around the centre
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5
        return inside
    if cls == 4:  # ring
        r = np.hypot(u, v)
        return (r <= 1.0) & (r >= rng.uniform(0.4, 0.55))
    if cls == 5:  # cross
        t = rng.uniform(0.28, 0.38)
        return ((np.abs(u) <= t) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= t) & (np.abs(u) <= 1.0))
    raise ValueError(f"unknown demo class {cls}")


def _object_mask(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0.22, 0.36) * size
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    ang = rng.uniform(0, 2 * np.pi)
    aspect = np.sqrt(rng.uniform(0.8, 1.25))
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    ca, sa = np.cos(ang), np.sin(ang)
    u = (dx * ca + dy * sa) / (radius * aspect)
    v = (-dx * sa + dy * ca) / (radius / aspect)
    return _shape(cls, u, v, rng)


def _class_texture(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """size×size×3 float32 texture of class ``cls``: its colour, modulated by its own pattern."""
    yy, xx = _grid(size)
    base = _CLASS_RGB[cls] + rng.normal(0, 12, size=3).astype(np.float32)
    if cls == 1:    # smooth shading
        t = 0.7 + 0.3 * _smooth_noise(size, 3, rng)
    elif cls == 2:  # stripes
        ang, period = rng.uniform(0, np.pi), rng.uniform(5, 8)
        t = 0.65 + 0.35 * (np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period) > 0)
    elif cls == 3:  # spots
        t = 0.6 + 0.4 * (_smooth_noise(size, 10, rng) > 0.5)
    elif cls == 4:  # flat with fine noise
        t = 0.85 + 0.15 * rng.random((size, size), dtype=np.float32)
    else:           # checkerboard
        cell = int(rng.integers(4, 7))
        t = 0.6 + 0.4 * (((yy // cell) + (xx // cell)) % 2)
    return base[None, None, :] * np.asarray(t, dtype=np.float32)[..., None]


def render_demo_image(size: int, rng: np.random.Generator, max_objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One demo sample: (H×W×3 uint8 image, H×W uint8 label with 0 = background, 1..5 = classes)."""
    tone = rng.uniform(50, 110) + rng.normal(0, 8, size=3)  # dim grey/brown background
    image = (tone[None, None, :] * (0.8 + 0.4 * _smooth_noise(size, 4, rng))[..., None]).astype(np.float32)
    label = np.zeros((size, size), dtype=np.uint8)
    n_obj = int(rng.integers(1, max_objects + 1))
    placed: list[np.ndarray] = []
    for _ in range(n_obj):
        for _attempt in range(20):
            cls = int(rng.integers(1, len(DEMO_CLASSES)))
            mask = _object_mask(cls, size, rng)
            if mask.sum() < 0.03 * size * size:
                continue
            if all((mask & m).sum() <= _MAX_OVERLAP * m.sum() for m in placed):
                break
        else:
            continue  # no placement leaves the earlier objects visible enough: fewer objects
        placed.append(mask)
        label[mask] = cls
        image[mask] = _class_texture(cls, size, rng)[mask]
    if not placed:  # guarantee one object: a disc in the centre
        mask = np.hypot(*(g - size / 2 for g in _grid(size))) <= size / 4
        label[mask] = 1
        image[mask] = _class_texture(1, size, rng)[mask]
    image += 5.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def render_demo_web_image(cls: int, size: int, rng: np.random.Generator, max_objects: int = 2,
                          off_topic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One web image of class ``cls``: (H×W×3 uint8 image, H×W uint8 mask with 0 and ``cls``).

    The object is drawn as in :func:`render_demo_image`, so a network trained on these images transfers to the demo
    data. The background is what makes it a web image: a textured tone (smooth shading plus fine grain) with 1-3
    clutter blobs in dim, desaturated colours, so that the object stays the salient thing in the picture, as in a
    photo returned for a class name.
    """
    tone = rng.uniform(60, 120) + rng.normal(0, 10, size=3)
    shade = 0.7 + 0.5 * _smooth_noise(size, int(rng.integers(3, 7)), rng)
    grain = 1.0 + 0.08 * rng.standard_normal((size, size), dtype=np.float32)
    image = (tone[None, None, :] * (shade * grain)[..., None]).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):  # clutter: background, in muted colours far from the class colours
        blob = _smooth_noise(size, int(rng.integers(3, 6)), rng) > rng.uniform(0.65, 0.8)
        grey = rng.uniform(40, 140)
        image[blob] = grey + rng.normal(0, 10, size=3) + 8.0 * rng.standard_normal((int(blob.sum()), 3))
    mask = np.zeros((size, size), dtype=np.uint8)
    if not off_topic:
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                obj = _object_mask(cls, size, rng)
                if obj.sum() >= 0.03 * size * size and (obj & (mask > 0)).sum() <= _MAX_OVERLAP * obj.sum():
                    break
            else:
                continue
            mask[obj] = cls
            image[obj] = _class_texture(cls, size, rng)[obj]
        if not mask.any():  # guarantee an object on an on-topic image: a centred one
            obj = np.hypot(*(g - size / 2 for g in _grid(size))) <= size / 4
            mask[obj] = cls
            image[obj] = _class_texture(cls, size, rng)[obj]
    image += 5.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


_WEB_README = """weakseg synthetic demo web image set
====================================

Generated by weakseg.data.synth_demo.generate_synth_demo_web(num_images={n}, size={size}, seed={seed},
noise_fraction={noise}).

One folder per class under web/ ({per} images each, {size}x{size} RGB PNG): 1-2 objects of the folder's class
(drawn as in the demo data) on a textured, cluttered background; about {noise_pct:.0f} % are off-topic.
masks/<class>/<id>.png: palette masks (0 background, class id) FOR SCORING ONLY.
Classes (index order, as in the demo data): {names}.
"""


def generate_synth_demo_web(out_dir: str | os.PathLike, num_images: int = 250, size: int = 64, seed: int = 0,
                            noise_fraction: float = 0.1, max_objects: int = 2) -> dict:
    """Write a web set of the demo classes to ``out_dir``: ``web/<class>/<class>_<i>.png``, ``masks/...``,
    ``classes.txt``, ``README.txt``. Image ``i`` of class ``c`` depends only on (seed, c, i).

    Returns:
        summary dict: ``num_train`` (images), ``num_val`` (0), ``off_topic``, ``out_dir``.
    """
    check_web_set_args(num_images, size, noise_fraction, max_objects)
    out = Path(out_dir)
    per_class = max(1, num_images // (len(DEMO_CLASSES) - 1))
    off_topic = write_web_set(out, DEMO_CLASSES, per_class, lambda cls, rng, noise: render_demo_web_image(
        cls, size, rng, max_objects, off_topic=noise), seed=seed, salt=0x3EBD, noise_fraction=noise_fraction)
    write_text_atomic(out / "README.txt", _WEB_README.format(
        n=num_images, size=size, seed=seed, noise=noise_fraction, per=per_class, noise_pct=100 * noise_fraction,
        names=", ".join(DEMO_CLASSES)))
    return {"num_train": per_class * (len(DEMO_CLASSES) - 1), "num_val": 0, "off_topic": off_topic,
            "out_dir": str(out)}


_README = """weakseg synthetic demo data
===========================

Generated by weakseg.data.synth_demo.generate_synth_demo(num_images={n}, size={size}, seed={seed},
val_fraction={vf}).

Images: {size}x{size} RGB PNG, 1-2 large objects on a dim background; each class has its own shape,
colour and texture (an easy task, learnt at a demo budget; the hard benchmark is the "bench" variant).
Classes ({c} incl. background): {names}.

Files:
  JPEGImages/<id>.png            RGB image
  SegmentationClass/<id>.png     palette PNG, class ids 0..{cmax}
  Scribbles/<id>.png             simulated scribbles (weakseg.data.simulate, seed {seed}), 255 = not annotated
  ImageSets/Segmentation/train.txt ({ntrain} ids), val.txt ({nval} ids)
  classes.txt                    class names, one per line, index order
  tags.json                      {{id: [class ids present, background 0 included]}}
"""


def generate_synth_demo(out_dir: str | os.PathLike, num_images: int = 400, size: int = 64, seed: int = 0,
                        val_fraction: float = 0.2, max_objects: int = 2, scribble_width: int = 3,
                        strokes_per_region: int = 2) -> dict:
    """Write the demo data to ``out_dir`` (layout of :func:`weakseg.data.synth.generate_synth`).

    Returns:
        summary dict: ``num_train``, ``num_val``, ``out_dir``.
    """
    if num_images < 2 or size < 32 or not 0 < val_fraction < 1:
        raise ValueError(f"need num_images >= 2, size >= 32, 0 < val_fraction < 1; got {num_images}, {size}, "
                         f"{val_fraction}")
    ids = [f"demo_{i:05d}" for i in range(num_images)]

    def render(i: int):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE40, i]))
        return render_demo_image(size, rng, max_objects)

    # scribble regions scale with the image: a 64² object is ~300-1200 px
    return write_segmentation_set(
        out_dir, ids, render, DEMO_CLASSES, seed=seed, n_val=max(1, int(round(num_images * val_fraction))),
        scribble_width=scribble_width, strokes_per_region=strokes_per_region,
        min_region_area=max(12, size * size // 100), min_dot_area=4,
        readme=lambda ntrain, nval: _README.format(
            n=num_images, size=size, seed=seed, vf=val_fraction, c=len(DEMO_CLASSES), names=", ".join(DEMO_CLASSES),
            cmax=len(DEMO_CLASSES) - 1, ntrain=ntrain, nval=nval))
