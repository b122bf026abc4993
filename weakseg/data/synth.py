"""Synthetic scribble benchmark ("synth"): small images that still separate weakly supervised methods.

Each image (``size``×``size``, default 128) shows 1–3 objects, possibly occluding each other, on a textured
background. There are seven foreground classes, each a *shape family* drawn with random scale, rotation and aspect:

==========  =====================================================================================================
disc        ellipse with a wavy outline (compact; no thin parts)
star        5–8 thin spikes with sharp tips around a small core
ring        annulus, sometimes open (a gap with square ends)
cross       two thin perpendicular bars
crescent    disc minus an offset disc (two sharp horns)
spindle     pointed lens (needle-like tips)
stickman    round head, thin body, arms and legs
==========  =====================================================================================================

Colour and texture do not identify a class: there are eight colour prototypes; every class draws its colour from
three of them (each prototype serves several classes) and the background is painted from the same prototypes, with
random textures (flat + noise, stripes, spots, gradients) on objects and background alike. Per-pixel colour
therefore cannot solve the task; shape (thin spikes vs. lens vs. ring ...) and context are needed. Thin parts and
sharp corners are where scribble supervision is rare, which is what BLPSeg-style losses address.

Files (VOC layout, PNG everywhere for exact pixels): ``JPEGImages/<id>.png`` RGB, ``SegmentationClass/<id>.png`` and
``Scribbles/<id>.png`` palette PNGs (255 = ignore / not annotated; scribbles from :mod:`weakseg.data.simulate`),
``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt``, ``tags.json`` ({id: [class ids]}, background 0 listed),
``README.txt``. Image ``i`` depends only on (seed, i), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.meta import voc_palette
from weakseg.data.simulate import image_seed, simulate_scribbles
from weakseg.utils.io import save_image, save_label_png, write_json_atomic, write_text_atomic

SYNTH_CLASSES = ("background", "disc", "star", "ring", "cross", "crescent", "spindle", "stickman")

# colour prototypes (RGB); class k (1..7) draws from prototypes _CLASS_PROTOS[k]
_PROTOS = np.array([
    (200, 60, 50), (220, 170, 60), (90, 160, 70), (60, 140, 170),
    (70, 80, 180), (150, 80, 160), (130, 100, 70), (160, 160, 160),
], dtype=np.float32)
_CLASS_PROTOS = {1: (0, 1, 4), 2: (1, 2, 5), 3: (2, 3, 6), 4: (3, 4, 7), 5: (4, 5, 0), 6: (5, 6, 1), 7: (6, 7, 2)}

_MIN_VISIBLE_FRACTION = 0.5
_MIN_VISIBLE_PIXELS = 60


# ---------------------------------------------------------------------------------------------------------------
# shape families: boolean masks over local coordinates (u, v) in units of the object radius
# ---------------------------------------------------------------------------------------------------------------

def _seg_dist(u, v, p, q):
    """Distance from points (u, v) to the segment p→q."""
    pu, pv = p
    du, dv = q[0] - pu, q[1] - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv + 1e-12), 0.0, 1.0)
    return np.hypot(u - pu - t * du, v - pv - t * dv)


def _shape(cls: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = np.hypot(u, v)
    th = np.arctan2(v, u)
    if cls == 1:  # disc
        k, amp = rng.integers(3, 7), rng.uniform(0.0, 0.1)
        return r <= 1.0 - amp + amp * np.sin(k * th + rng.uniform(0, 2 * np.pi))
    if cls == 2:  # star
        k = int(rng.integers(5, 9))
        r_in, frac = rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.9)
        half = np.pi / k
        phi = np.abs(((th + half) % (2 * half)) - half)              # angle to the nearest spike axis
        prof = np.clip(1.0 - phi / (half * frac), 0.0, 1.0)
        return r <= r_in + (1.0 - r_in) * prof
    if cls == 3:  # ring
        r_in = rng.uniform(0.62, 0.82)
        m = (r <= 1.0) & (r >= r_in)
        if rng.random() < 0.4:
            m &= np.abs(th) > rng.uniform(0.2, 0.6)
        return m
    if cls == 4:  # cross
        t1, t2 = rng.uniform(0.07, 0.16), rng.uniform(0.07, 0.16)
        return ((np.abs(u) <= t1) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= t2) & (np.abs(u) <= rng.uniform(0.6, 1.0)))
    if cls == 5:  # crescent
        d, r2 = rng.uniform(0.3, 0.55), rng.uniform(0.85, 1.0)
        return (r <= 1.0) & (np.hypot(u - d, v) > r2)
    if cls == 6:  # spindle
        w, p = rng.uniform(0.14, 0.32), rng.uniform(1.0, 1.6)
        return (np.abs(u) <= 1.0) & (np.abs(v) <= w * np.clip(1.0 - u * u, 0.0, None) ** p)
    if cls == 7:  # stickman
        t = rng.uniform(0.045, 0.09)
        hip, neck = (0.0, 0.3), (0.0, -0.42)
        sh = (0.0, -0.25)
        m = np.hypot(u, v + 0.66) <= rng.uniform(0.2, 0.28)
        m |= _seg_dist(u, v, neck, hip) <= t
        for side in (-1, 1):
            m |= _seg_dist(u, v, sh, (side * rng.uniform(0.45, 0.7), rng.uniform(-0.6, 0.15))) <= t
            m |= _seg_dist(u, v, hip, (side * rng.uniform(0.2, 0.5), 1.0)) <= t
        return m
    raise ValueError(f"unknown synth class {cls}")


def _object_mask(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0.11, 0.3) * size
    cy, cx = rng.uniform(0.15, 0.85, size=2) * size
    ang = rng.uniform(0, 2 * np.pi)
    aspect = np.sqrt(rng.uniform(0.7, 1.4))
    # evaluate the shape only inside the window that can contain it
    reach = radius * max(aspect, 1.0 / aspect) + 2
    r0, r1 = max(0, int(cy - reach)), min(size, int(np.ceil(cy + reach)) + 1)
    c0, c1 = max(0, int(cx - reach)), min(size, int(np.ceil(cx + reach)) + 1)
    yy, xx = _grid(size)
    dx, dy = xx[r0:r1, c0:c1] - cx, yy[r0:r1, c0:c1] - cy
    ca, sa = np.cos(ang), np.sin(ang)
    u = (dx * ca + dy * sa) / (radius * aspect)
    v = (-dx * sa + dy * ca) / (radius / aspect)
    mask = np.zeros((size, size), dtype=bool)
    mask[r0:r1, c0:c1] = _shape(cls, u, v, rng)
    return mask


# ---------------------------------------------------------------------------------------------------------------
# textures
# ---------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    low = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def _texture(size: int, c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator,
             mask: np.ndarray | None = None) -> np.ndarray:
    """Texture mixing colours c1 and c2: size×size×3 float32, or N×3 for the pixels of ``mask`` when given."""
    kind = int(rng.integers(0, 4))
    yy, xx = _grid(size)
    if mask is not None:
        yy, xx = yy[mask], xx[mask]
    if kind == 0:    # near-flat colour with smooth variation
        t = 0.25 * _smooth_noise(size, int(rng.integers(3, 7)), rng)
    elif kind == 1:  # stripes
        ang, freq = rng.uniform(0, np.pi), rng.uniform(4, 14) / size
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * (xx * np.cos(ang) + yy * np.sin(ang)) + rng.uniform(0, 6)))
    elif kind == 2:  # spots / blobs
        t = (_smooth_noise(size, int(rng.integers(5, 12)), rng) > 0.55).astype(np.float32)
    else:            # linear gradient across the image
        ang = rng.uniform(0, 2 * np.pi)
        ca, sa = np.cos(ang), np.sin(ang)
        corners = np.array([0.0, ca, sa, ca + sa]) * (size - 1)
        t = (xx * ca + yy * sa - corners.min()) / max(float(np.ptp(corners)), 1e-6)
    if mask is not None and kind in (0, 2):
        t = t[mask]
    t = np.clip(t, 0.0, 1.0)[..., None]
    return (1.0 - t) * c1 + t * c2


def _colour(protos: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return _PROTOS[protos[int(rng.integers(0, len(protos)))]] + rng.normal(0, 22, size=3).astype(np.float32)


def render_image(size: int, rng: np.random.Generator, max_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: (H×W×3 uint8 image, H×W uint8 label with 0 = background, 1..7 = classes)."""
    all_protos = tuple(range(len(_PROTOS)))
    image = _texture(size, _colour(all_protos, rng), _colour(all_protos, rng), rng)
    # background distractor blobs painted in object colours (still background)
    for _ in range(int(rng.integers(0, 3))):
        blob = _smooth_noise(size, int(rng.integers(3, 6)), rng) > rng.uniform(0.62, 0.75)
        image[blob] = _texture(size, _colour(all_protos, rng), _colour(all_protos, rng), rng, blob)
    label = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1, dtype=np.int16)
    areas: list[int] = []
    n_obj = int(rng.integers(1, max_objects + 1))
    for _ in range(n_obj):
        for _attempt in range(20):
            cls = int(rng.integers(1, len(SYNTH_CLASSES)))
            mask = _object_mask(cls, size, rng)
            area = int(mask.sum())
            if area < 2 * _MIN_VISIBLE_PIXELS:
                continue
            trial = owner.copy()
            trial[mask] = len(areas)
            vis = np.bincount(trial[trial >= 0].ravel(), minlength=len(areas) + 1)
            full = np.asarray(areas + [area])
            if np.all(vis >= np.maximum(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * full)):
                break
        else:
            continue  # no placement keeps every object visible enough: fewer objects
        owner = trial
        areas.append(area)
        label[mask] = cls
        image[mask] = _texture(size, _colour(_CLASS_PROTOS[cls], rng), _colour(_CLASS_PROTOS[cls], rng), rng, mask)
    if not areas:  # guarantee at least one object: a disc in the centre
        yy, xx = np.mgrid[0:size, 0:size]
        mask = np.hypot(yy - size / 2, xx - size / 2) <= size / 5
        label[mask] = 1
        image[mask] = _colour(_CLASS_PROTOS[1], rng)
    image += 6.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


_README = """weakseg synthetic scribble benchmark
====================================

Generated by weakseg.data.synth.generate_synth(num_images={n}, size={size}, seed={seed}, val_fraction={vf}).

Images: {size}x{size} RGB PNG, 1-3 possibly occluding objects on a textured background.
Classes ({c} incl. background): {names}.
Each class is a shape family (random scale, rotation, aspect) with thin parts or sharp corners
(star spikes, cross bars, ring, crescent horns, spindle tips, stick-figure limbs); the disc is compact.
Colours/textures are drawn from 8 prototypes shared between classes and the background, so per-pixel
colour does not identify the class.

Files:
  JPEGImages/<id>.png            RGB image
  SegmentationClass/<id>.png     palette PNG, class ids 0..{cmax}
  Scribbles/<id>.png             simulated scribbles (weakseg.data.simulate, seed {seed}), 255 = not annotated
  ImageSets/Segmentation/train.txt ({ntrain} ids), val.txt ({nval} ids)
  classes.txt                    class names, one per line, index order
  tags.json                      {{id: [class ids present, background 0 included]}}
"""


def generate_synth(out_dir: str | os.PathLike, num_images: int = 1000, size: int = 128, seed: int = 0,
                   val_fraction: float = 0.2, max_objects: int = 3, scribble_width: int = 3,
                   strokes_per_region: int = 1) -> dict:
    """Write the synthetic benchmark to ``out_dir`` (see the module docstring for the layout).

    Returns:
        summary dict: ``num_train``, ``num_val``, ``out_dir``.
    """
    if num_images < 1 or size < 32 or not 0 <= val_fraction < 1:
        raise ValueError(f"need num_images >= 1, size >= 32, 0 <= val_fraction < 1; got {num_images}, {size}, "
                         f"{val_fraction}")
    ids = [f"synth_{i:05d}" for i in range(num_images)]

    def render(i: int):
        return render_image(size, np.random.default_rng(np.random.SeedSequence([int(seed), i])), max_objects)

    return write_segmentation_set(
        out_dir, ids, render, SYNTH_CLASSES, seed=seed, n_val=int(round(num_images * val_fraction)),
        scribble_width=scribble_width, strokes_per_region=strokes_per_region, min_region_area=60, min_dot_area=6,
        readme=lambda ntrain, nval: _README.format(
            n=num_images, size=size, seed=seed, vf=val_fraction, c=len(SYNTH_CLASSES),
            names=", ".join(SYNTH_CLASSES), cmax=len(SYNTH_CLASSES) - 1, ntrain=ntrain, nval=nval))


def write_segmentation_set(out_dir: str | os.PathLike, ids: list[str], render, classes: tuple[str, ...], *, seed: int,
                           n_val: int, scribble_width: int, strokes_per_region: int, min_region_area: int,
                           min_dot_area: int, readme) -> dict:
    """Write a generated dataset in VOC layout (the synthetic benchmark's and the demo's): for image ``i`` of ``ids``
    ``render(i) -> (H×W×3 uint8 image, H×W class ids)``, simulated scribbles (seeded by ``seed`` and the id), tags,
    a seeded train/val split with ``n_val`` val ids, ``classes.txt`` and ``README.txt`` (``readme(ntrain, nval)``).

    Returns:
        summary dict: ``num_train``, ``num_val``, ``out_dir``.
    """
    out = Path(out_dir)
    palette = voc_palette()
    tags: dict[str, list[int]] = {}
    for i, sid in enumerate(ids):
        image, label = render(i)
        scrib = simulate_scribbles(label, rng=image_seed(seed, sid), width=scribble_width,
                                   strokes_per_region=strokes_per_region, min_region_area=min_region_area,
                                   min_dot_area=min_dot_area)
        save_image(out / "JPEGImages" / f"{sid}.png", image)
        save_label_png(out / "SegmentationClass" / f"{sid}.png", label, palette)
        save_label_png(out / "Scribbles" / f"{sid}.png", scrib, palette)
        tags[sid] = [0] + [int(c) for c in np.unique(label) if c != 0]
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5917])).permutation(len(ids))
    val = sorted(ids[j] for j in perm[:n_val])
    train = sorted(ids[j] for j in perm[n_val:])
    seg = out / "ImageSets" / "Segmentation"
    write_text_atomic(seg / "train.txt", "".join(f"{i}\n" for i in train))
    write_text_atomic(seg / "val.txt", "".join(f"{i}\n" for i in val))
    write_text_atomic(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    write_json_atomic(out / "tags.json", tags)
    write_text_atomic(out / "README.txt", readme(len(train), len(val)))
    return {"num_train": len(train), "num_val": len(val), "out_dir": str(out)}
