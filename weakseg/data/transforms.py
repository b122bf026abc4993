"""Joint transforms on sample dicts (keys from :mod:`weakseg.data.keys`).

Every transform takes a sample dict and returns a new dict (the input dict is not modified). Arrays stay numpy
until :class:`ToTensor`. Geometric transforms touch every spatial key present and read its resize mode and pad value
from :data:`weakseg.data.keys.POLICY`:

* ``image``: H×W×3 uint8 (or float32 after :class:`Normalize`), channels last.
* ``cam``: K×H×W float32, channels first.
* every other spatial key: H×W (uint8 label-like maps with 255 = ignore / not annotated, or float32 maps).

A key that is neither spatial (``POLICY``) nor non-spatial (``NON_SPATIAL``) raises ``ValueError`` so that a map
is never silently left un-augmented while the image moves.

Randomness: random transforms draw from a :class:`numpy.random.Generator`. :class:`Compose` passes one generator
to all of its transforms. Pass ``rng=`` explicitly for full control; otherwise Compose seeds a generator per sample
from torch's global generator (seeded per DataLoader worker, and by ``torch.manual_seed``), so DataLoader workers
draw different augmentations and a run is reproducible by its seed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from weakseg.data import keys as K

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# keys whose integer maps become int64 tensors (class ids / codes); float maps become float32 tensors
INT_KEYS = (K.LABEL, K.SCRIBBLE, K.PSEUDO, K.BOUNDARY, K.DISTANCE, K.DIST_SCRIBBLE, K.DIST_PSEUDO, K.VALID)

_PIL_MODES = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

def _spatial_keys(sample: dict) -> list[str]:
    out = []
    for key in sample:
        if key in K.POLICY:
            out.append(key)
        elif key not in K.NON_SPATIAL:
            raise ValueError(f"sample key {key!r} has no resize/pad policy in weakseg.data.keys.POLICY")
    return out


def _hw(key: str, arr: np.ndarray) -> tuple[int, int]:
    if key == K.CAM:
        if arr.ndim != 3:
            raise ValueError(f"{key!r} must be K×H×W, got shape {arr.shape}")
        return arr.shape[1], arr.shape[2]
    if key == K.IMAGE:
        if arr.ndim != 3:
            raise ValueError(f"{key!r} must be H×W×3, got shape {arr.shape}")
        return arr.shape[0], arr.shape[1]
    if arr.ndim != 2:
        raise ValueError(f"{key!r} must be H×W, got shape {arr.shape}")
    return arr.shape[0], arr.shape[1]


def sample_size(sample: dict) -> tuple[int, int]:
    """(H, W) shared by all spatial maps of ``sample``; ValueError when they disagree."""
    sizes = {key: _hw(key, np.asarray(sample[key])) for key in _spatial_keys(sample)}
    if not sizes:
        raise ValueError("sample has no spatial key")
    distinct = set(sizes.values())
    if len(distinct) != 1:
        raise ValueError(f"spatial maps of the sample differ in size: {sizes}")
    return distinct.pop()


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # destination cell j samples the source pixel under its centre: floor((j + 0.5) · n_in / n_out)
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H×W (or H×W×C) array to ``size`` = (h, w)."""
    h, w = size
    return arr[_nearest_index(arr.shape[0], h)[:, None], _nearest_index(arr.shape[1], w)[None, :]]


def resize_sparse(arr: np.ndarray, size: tuple[int, int], unlabeled: int = 255) -> np.ndarray:
    """Resize an H×W sparse annotation (scribbles; ``unlabeled`` = not annotated) so that no stroke vanishes.

    Nearest-neighbour resize, plus every labelled source pixel (r, c) is written into the destination cell that
    contains its centre, (⌊(r + ½)·h/H⌋, ⌊(c + ½)·w/W⌋). When downscaling, a destination cell is therefore labelled
    whenever any source pixel centred inside it is; where the nearest sample itself is labelled it wins
    (deterministic). Upscaling reduces to plain nearest-neighbour (every source pixel is sampled, and its centre cell
    samples it back).
    """
    h, w = size
    near = resize_nearest(arr, size)
    rr, cc = np.nonzero(arr != unlabeled)
    if rr.size == 0:
        return near
    out = np.full((h, w), unlabeled, dtype=arr.dtype)
    dr = np.minimum(((2 * rr + 1) * h) // (2 * arr.shape[0]), h - 1)
    dc = np.minimum(((2 * cc + 1) * w) // (2 * arr.shape[1]), w - 1)
    out[dr, dc] = arr[rr, cc]
    labelled = near != unlabeled
    out[labelled] = near[labelled]
    return out


def _resize_float_2d(arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    h, w = size
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), resample=_PIL_MODES[mode]), dtype=np.float32)


def resize_map(key: str, arr: np.ndarray, size: tuple[int, int], image_mode: str = "bicubic") -> np.ndarray:
    """Resize one sample map to ``size`` = (h, w) following its POLICY mode.

    Images use ``image_mode`` (bicubic or bilinear; uint8 stays uint8, float stays float32); ``nearest`` maps are
    index-sampled; ``sparse`` maps use :func:`resize_sparse`; ``bilinear`` float maps are resized per channel.
    """
    mode, pad = K.POLICY[key]
    h, w = size
    if (arr.shape[0], arr.shape[1]) == (h, w) and key != K.CAM:
        return arr.copy()
    if key == K.IMAGE:
        if arr.dtype == np.uint8:
            img = Image.fromarray(arr)
            return np.asarray(img.resize((w, h), resample=_PIL_MODES[image_mode]))
        return np.stack([_resize_float_2d(arr[..., c], size, image_mode) for c in range(arr.shape[2])], axis=-1)
    if key == K.CAM:
        if arr.shape[1:] == (h, w):
            return arr.copy()
        return np.stack([_resize_float_2d(ch, size, "bilinear") for ch in arr], axis=0).reshape(arr.shape[0], h, w)
    if mode == "nearest" or (mode == "bilinear" and not np.issubdtype(arr.dtype, np.floating)):
        return resize_nearest(arr, size)
    if mode == "sparse":
        return resize_sparse(arr, size, unlabeled=int(pad))
    return _resize_float_2d(arr, size, "bilinear")


def _resize_sample(sample: dict, size: tuple[int, int], image_mode: str) -> dict:
    out = dict(sample)
    for key in _spatial_keys(sample):
        out[key] = resize_map(key, np.asarray(sample[key]), size, image_mode)
    return out


def _scaled(n: int, s: float) -> int:
    return max(1, int(round(n * s)))


def default_rng() -> np.random.Generator:
    """A generator seeded from torch's global generator (for transforms called outside :class:`Compose`)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


# --------------------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------------------

class Compose:
    """Apply transforms in order, sharing one random generator.

    Args:
        transforms: callables ``t(sample, rng) -> sample``.
        seed: optional extra seed mixed into the per-sample generator when no ``rng`` is passed to ``__call__``.

    Without an explicit ``rng`` each call draws a 62-bit seed from torch's global generator and builds a fresh numpy
    generator from it. torch's generator is seeded per DataLoader worker (base seed + worker id) and by
    ``torch.manual_seed`` in the main process, so workers never share augmentations and a run repeats exactly
    under the same seed.
    """

    def __init__(self, transforms: Sequence[Callable], seed: int | None = None):
        self.transforms = list(transforms)
        self.seed = seed

    def _generator(self) -> np.random.Generator:
        draw = int(torch.randint(0, 2**62, (1,)).item())
        return np.random.default_rng([draw] + ([] if self.seed is None else [int(self.seed)]))

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = self._generator() if rng is None else rng
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomScale:
    """Resize all maps by one factor s ~ U(scale_range) (BLPSeg [0.75, 1.25], CDSP [0.5, 2.0], BES [0.5, 1.5]), or
    s drawn uniformly from the discrete ``choices`` (DeepLab-v2's recipe: 0.5, 0.75, 1.0, 1.25, 1.5).

    The image is resized bicubically (``image_mode``), dense labels nearest, scribbles ``sparse`` (no stroke pixel
    vanishes when downscaling), float maps bilinearly. The new size is round(H·s) × round(W·s).
    """

    def __init__(self, scale_range: tuple[float, float] = (0.75, 1.25), image_mode: str = "bicubic", *,
                 choices: Sequence[float] | None = None):
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if image_mode not in _PIL_MODES:
            raise ValueError(f"image_mode must be one of {sorted(_PIL_MODES)}, got {image_mode!r}")
        if choices is not None and (not len(choices) or any(c <= 0 for c in choices)):
            raise ValueError(f"scale choices must be a non-empty list of positive numbers, got {choices}")
        self.scale_range = (float(lo), float(hi))
        self.image_mode = image_mode
        self.choices = None if choices is None else tuple(float(c) for c in choices)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        if self.choices is not None:
            s = self.choices[int(rng.integers(0, len(self.choices)))]
        else:
            s = rng.uniform(*self.scale_range)
        h, w = sample_size(sample)
        return _resize_sample(sample, (_scaled(h, s), _scaled(w, s)), self.image_mode)

    def __repr__(self) -> str:
        return f"RandomScale(choices={self.choices})" if self.choices else f"RandomScale({self.scale_range})"


class ResizeLongSide:
    """Resize so that the long side equals ``size`` (an int) or an integer drawn uniformly from ``size`` = (lo, hi)
    inclusive (IRN's random long-side resize, e.g. (320, 640)). Aspect ratio is kept."""

    def __init__(self, size: int | tuple[int, int], image_mode: str = "bicubic"):
        if isinstance(size, int):
            size = (size, size)
        lo, hi = int(size[0]), int(size[1])
        if not 0 < lo <= hi:
            raise ValueError(f"long-side size must satisfy 0 < low <= high, got {size}")
        if image_mode not in _PIL_MODES:
            raise ValueError(f"image_mode must be one of {sorted(_PIL_MODES)}, got {image_mode!r}")
        self.size = (lo, hi)
        self.image_mode = image_mode

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        lo, hi = self.size
        target = lo if lo == hi else int((default_rng() if rng is None else rng).integers(lo, hi + 1))
        h, w = sample_size(sample)
        s = target / max(h, w)
        return _resize_sample(sample, (_scaled(h, s), _scaled(w, s)), self.image_mode)

    def __repr__(self) -> str:
        return f"ResizeLongSide({self.size})"


class RandomCrop:
    """Crop (or pad) every spatial map to ``size`` (int or (h, w)); adds ``valid`` (H×W uint8, 1 = real pixel).

    Per axis: if the map is longer than the crop, a uniform random window is taken; if it is shorter, the map is
    placed into a canvas filled with each key's pad value (image 0, labels 255, valid 0), at an offset chosen by
    ``policy``:

    * ``"paste"``: uniform random offset (BLPSeg);
    * ``"center"``: centred;
    * ``"corner"``: top-left, padding on the bottom/right (WebCoseg, DeepLab).

    Crop after :class:`Normalize` so that image padding 0 is the mean colour (BLPSeg, BES).
    """

    POLICIES = ("paste", "center", "corner")

    def __init__(self, size: int | tuple[int, int], policy: str = "paste"):
        if isinstance(size, int):
            size = (size, size)
        if min(size) <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        if policy not in self.POLICIES:
            raise ValueError(f"policy must be one of {self.POLICIES}, got {policy!r}")
        self.size = (int(size[0]), int(size[1]))
        self.policy = policy

    def _axis(self, n: int, c: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """(source start, destination start, length) along one axis of length n for crop length c."""
        if n >= c:
            return int(rng.integers(0, n - c + 1)), 0, c
        if self.policy == "paste":
            return 0, int(rng.integers(0, c - n + 1)), n
        if self.policy == "center":
            return 0, (c - n) // 2, n
        return 0, 0, n

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        h, w = sample_size(sample)
        ch, cw = self.size
        sy, dy, ly = self._axis(h, ch, rng)
        sx, dx, lx = self._axis(w, cw, rng)
        out = dict(sample)
        if K.VALID not in out:
            out[K.VALID] = np.ones((h, w), dtype=np.uint8)
        for key in _spatial_keys(out):
            arr = np.asarray(out[key])
            pad = K.POLICY[key][1]
            if key == K.CAM:
                canvas = np.full((arr.shape[0], ch, cw), pad, dtype=arr.dtype)
                canvas[:, dy:dy + ly, dx:dx + lx] = arr[:, sy:sy + ly, sx:sx + lx]
            else:
                canvas = np.full((ch, cw) + arr.shape[2:], pad, dtype=arr.dtype)
                canvas[dy:dy + ly, dx:dx + lx] = arr[sy:sy + ly, sx:sx + lx]
            out[key] = canvas
        return out

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, policy={self.policy!r})"


class RandomHFlip:
    """Mirror every spatial map left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        if rng.random() >= self.p:
            return dict(sample)
        out = dict(sample)
        for key in _spatial_keys(sample):
            arr = np.asarray(sample[key])
            axis = 2 if key == K.CAM else 1
            out[key] = np.ascontiguousarray(np.flip(arr, axis=axis))
        return out

    def __repr__(self) -> str:
        return f"RandomHFlip(p={self.p})"


def _rotate_2d(arr: np.ndarray, angle: float, nearest: bool, fill: float) -> np.ndarray:
    """Rotate one H×W map by ``angle`` degrees (counter-clockwise, about the image centre, same size)."""
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if arr.dtype == np.uint8:
        img = Image.fromarray(np.ascontiguousarray(arr), mode="L")
        return np.asarray(img.rotate(angle, resample=resample, fillcolor=int(fill)))
    # any other dtype goes through a float32 image; nearest sampling keeps integer ids exact (< 2**24)
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.rotate(angle, resample=resample, fillcolor=float(fill))).astype(arr.dtype)


class RandomRotate:
    """With probability ``p`` rotate every spatial map by one angle a ~ U[−max_angle, max_angle] degrees about the
    image centre, keeping the size (CDSP: ±10°, p = 0.5; spec §3.6).

    The image is resampled bilinearly, every other map per its POLICY mode (``nearest`` / ``sparse`` → nearest,
    float ``bilinear`` maps bilinearly). Pixels rotated in from outside get each key's pad value (labels 255,
    distance maps 0 = no weight, ``valid`` 0) and, for the image, ``image_fill``: an RGB colour for a uint8 image
    (CDSP: the mean colour) or a value for a normalised float image (0 = the mean colour). ``valid`` (1 = real
    pixel) is added when absent, so rotated-in pixels are marked as padding.
    """

    def __init__(self, max_angle: float = 10.0, p: float = 0.5, image_fill: float | Sequence[float] = 0.0):
        if not 0.0 <= max_angle <= 180.0:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {max_angle}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"rotation probability must be in [0, 1], got {p}")
        self.max_angle = float(max_angle)
        self.p = float(p)
        self.image_fill = image_fill

    def _image(self, img: np.ndarray, angle: float) -> np.ndarray:
        fill = np.broadcast_to(np.asarray(self.image_fill, dtype=np.float64), (img.shape[2],))
        if img.dtype == np.uint8 and img.shape[2] == 3:
            colour = tuple(int(round(float(v))) for v in fill)
            return np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BILINEAR, fillcolor=colour))
        return np.stack([_rotate_2d(img[..., c], angle, False, fill[c]) for c in range(img.shape[2])], axis=-1)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        if rng.random() >= self.p:
            return dict(sample)
        angle = float(rng.uniform(-self.max_angle, self.max_angle))
        out = dict(sample)
        if K.VALID not in out:
            h, w = sample_size(sample)
            out[K.VALID] = np.ones((h, w), dtype=np.uint8)
        for key in _spatial_keys(out):
            arr = np.asarray(out[key])
            mode, pad = K.POLICY[key]
            if key == K.IMAGE:
                out[key] = self._image(arr, angle)
            elif key == K.CAM:
                out[key] = np.stack([_rotate_2d(ch, angle, False, pad) for ch in arr], axis=0)
            else:
                smooth = mode == "bilinear" and np.issubdtype(arr.dtype, np.floating)
                out[key] = _rotate_2d(arr, angle, not smooth, pad)
        return out

    def __repr__(self) -> str:
        return f"RandomRotate(max_angle={self.max_angle}, p={self.p})"


class RandomGaussianBlur:
    """With probability ``p`` blur the uint8 image (only the image) with a ``kernel_size``×``kernel_size`` Gaussian.

    ``sigma`` None follows OpenCV's rule for ``GaussianBlur(ksize, 0)``: σ = 0.3·((k − 1)/2 − 1) + 0.8 (1.1 for
    k = 5, CDSP's 5×5 blur); borders are reflected without repeating the edge pixel (OpenCV's default). The
    separable filter runs in float32 and the result is rounded back to uint8.
    """

    def __init__(self, kernel_size: int = 5, sigma: float | None = None, p: float = 0.5):
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be positive or None, got {sigma}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"blur probability must be in [0, 1], got {p}")
        self.kernel_size = int(kernel_size)
        self.sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8 if sigma is None else float(sigma)
        self.p = float(p)
        x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
        weights = np.exp(-(x ** 2) / (2 * self.sigma ** 2))
        self.kernel = (weights / weights.sum()).astype(np.float32)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        if rng.random() >= self.p:
            return dict(sample)
        img = np.asarray(sample[K.IMAGE])
        if img.dtype != np.uint8:
            raise ValueError(f"RandomGaussianBlur expects the uint8 image (apply it before Normalize), got {img.dtype}")
        x = img.astype(np.float32)
        for axis in (0, 1):
            x = ndimage.convolve1d(x, self.kernel, axis=axis, mode="mirror")
        out = dict(sample)
        out[K.IMAGE] = np.clip(np.round(x), 0, 255).astype(np.uint8)
        return out

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma:.3g}, p={self.p})"


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(-1)
    minc = rgb.min(-1)
    v = maxc
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _gray(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


class ColorJitter:
    """Random brightness, contrast, saturation and hue change of the uint8 image (torchvision semantics).

    Factors: brightness b ~ U[max(0, 1 − brightness), 1 + brightness] multiplies the image; contrast blends with the
    mean grey level; saturation blends with the grey image; hue h ~ U[−hue, hue] rotates the HSV hue (hue ≤ 0.5).
    The four operations run in a random order and the result is clipped to [0, 255] and stored back as uint8 in
    ``image`` (unlike the BLPSeg reference, which computed the jittered image and never used it).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        for name, val in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if val < 0:
                raise ValueError(f"{name} must be >= 0, got {val}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = default_rng() if rng is None else rng
        img = np.asarray(sample[K.IMAGE])
        if img.dtype != np.uint8:
            raise ValueError(f"ColorJitter expects the uint8 image (apply it before Normalize), got {img.dtype}")
        x = img.astype(np.float32) / 255.0
        for op in rng.permutation(4):
            if op == 0 and self.brightness > 0:
                x = x * rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
            elif op == 1 and self.contrast > 0:
                f = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
                x = f * x + (1 - f) * _gray(x).mean()
            elif op == 2 and self.saturation > 0:
                f = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
                x = f * x + (1 - f) * _gray(x)[..., None]
            elif op == 3 and self.hue > 0:
                hsv = _rgb_to_hsv(np.clip(x, 0.0, 1.0))
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-self.hue, self.hue)) % 1.0
                x = _hsv_to_rgb(hsv)
            x = np.clip(x, 0.0, 1.0)
        out = dict(sample)
        out[K.IMAGE] = np.round(x * 255.0).astype(np.uint8)
        return out

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation}, {self.hue})"


class Normalize:
    """uint8 H×W×3 RGB image → float32 H×W×3, (x / 255 − mean) / std (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {std}")

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        img = np.asarray(sample[K.IMAGE])
        if img.dtype != np.uint8:
            raise ValueError(f"Normalize expects a uint8 image, got {img.dtype}")
        out = dict(sample)
        out[K.IMAGE] = ((img.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class ToTensor:
    """numpy → torch.

    ``image`` H×W×3 → float32 3×H×W; integer maps of ``INT_KEYS`` (label, scribble, pseudo, boundary, distance,
    valid) → int64 H×W; float maps → float32 (``cam`` stays K×H×W); ``tags`` → float32 C; ``id`` and ``orig_size``
    are left as they are.
    """

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        out = dict(sample)
        for key, val in sample.items():
            if key in (K.ID, K.ORIG_SIZE) or isinstance(val, torch.Tensor):
                continue
            arr = np.asarray(val)
            if key == K.IMAGE:
                out[key] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
            elif key == K.TAGS or np.issubdtype(arr.dtype, np.floating):
                out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            elif key in INT_KEYS:
                out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
            else:
                out[key] = torch.from_numpy(np.ascontiguousarray(arr))
        return out

    def __repr__(self) -> str:
        return "ToTensor()"


def build_train_transforms(
    crop_size: int | tuple[int, int] | None,
    scale_range: tuple[float, float] | None = (0.75, 1.25),
    flip_prob: float = 0.5,
    color_jitter: tuple[float, float, float, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_policy: str = "paste",
    seed: int | None = None,
    *,
    scale_choices: Sequence[float] | None = None,
    image_resize: str = "bicubic",
) -> Compose:
    """Training pipeline in BLPSeg order: flip → random scale → colour jitter → normalize → crop → tensors.

    ``crop_size`` None skips cropping, ``scale_range`` None skips scaling, ``color_jitter`` is (brightness, contrast,
    saturation, hue) or None. ``scale_choices`` (a list) replaces the uniform range by a uniform pick among discrete
    scales; with ``crop_policy="corner"`` small images are padded on the bottom/right with the mean colour (image)
    and 255 (labels): DeepLab-v2's recipe (kazuto1011/deeplab-pytorch). ``image_resize`` is the interpolation of the
    image when scaling (bicubic: BLPSeg, BES; bilinear: DeepLab-v2).
    """
    ts: list[Callable] = []
    if flip_prob > 0:
        ts.append(RandomHFlip(flip_prob))
    if scale_choices is not None:
        ts.append(RandomScale(image_mode=image_resize, choices=scale_choices))
    elif scale_range is not None:
        ts.append(RandomScale(scale_range, image_resize))
    if color_jitter is not None:
        ts.append(ColorJitter(*color_jitter))
    ts.append(Normalize(mean, std))
    if crop_size is not None:
        ts.append(RandomCrop(crop_size, policy=crop_policy))
    ts.append(ToTensor())
    return Compose(ts, seed=seed)


def build_cdsp_train_transforms(
    crop_size: int | tuple[int, int] = 465,
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    max_angle: float = 10.0,
    rotate_prob: float = 0.5,
    blur_kernel: int = 5,
    blur_prob: float = 0.5,
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> Compose:
    """CDSP's training pipeline (spec §3.6): random scale (bilinear image, nearest maps) → random rotation (image
    border = mean colour) → Gaussian blur (image only) → flip → normalize → random crop with centred padding →
    tensors. Every map of the sample (scribble, pseudo-label, both distance maps) moves with the image.

    Padding never supervises: crop and rotation padding is 255 in label maps (ignored by the CE losses), 0 in the
    distance maps (no DEL term), and 0 in ``valid``. Normalize comes before the crop (flip and crop commute with it)
    so that the padded image is the mean colour exactly. ``scale_range`` None, ``rotate_prob`` 0, ``blur_prob`` 0 or
    ``flip_prob`` 0 skip that step.
    """
    ts: list[Callable] = []
    if scale_range is not None:
        ts.append(RandomScale(scale_range, image_mode="bilinear"))
    if rotate_prob > 0 and max_angle > 0:
        mean_colour = tuple(round(255.0 * float(m)) for m in mean)
        ts.append(RandomRotate(max_angle, rotate_prob, image_fill=mean_colour))
    if blur_prob > 0:
        ts.append(RandomGaussianBlur(blur_kernel, p=blur_prob))
    if flip_prob > 0:
        ts.append(RandomHFlip(flip_prob))
    ts.append(Normalize(mean, std))
    ts.append(RandomCrop(crop_size, policy="center"))
    ts.append(ToTensor())
    return Compose(ts, seed=seed)


def build_eval_transforms(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Evaluation pipeline: normalize → tensors (full image, no resizing; multi-scale lives in the inferencer)."""
    return Compose([Normalize(mean, std), ToTensor()])
