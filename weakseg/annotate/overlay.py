"""Model overlays for the annotation page: the prediction of a trained checkpoint and its uncertainty, so that the
user scribbles where the model is wrong.

For an image the model gives class probabilities P (C×H×W, the checkpoint's ``eval`` scales/flip/mode), and:

* ``prediction``: H×W×4 uint8 RGBA, the palette colour of argmax P with alpha 255; background (0) is transparent so
  that only the objects are tinted;
* ``uncertainty``: H×W×4 uint8 RGBA, magenta with alpha = 255·u where u = (1 − max P) / (1 − 1/C) ∈ [0, 1]
  (0 = certain, 1 = uniform over the C classes).

Both are computed once per image (one forward pass) and kept in a small LRU cache.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from weakseg.data.meta import DatasetMeta
from weakseg.utils.io import DataError, read_rgb

UNCERTAINTY_RGB = (255, 0, 255)


def prediction_rgba(pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H×W class ids → H×W×4 uint8 RGBA: palette colour, alpha 255, background (0) fully transparent."""
    rgba = np.zeros(pred.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = np.asarray(palette, dtype=np.uint8)[pred]
    rgba[..., 3] = np.where(pred != 0, 255, 0)
    return rgba


def uncertainty_rgba(probs: np.ndarray) -> np.ndarray:
    """C×H×W probabilities → H×W×4 uint8 RGBA, alpha = 255·(1 − max P)/(1 − 1/C)."""
    c = probs.shape[0]
    u = (1.0 - probs.max(axis=0)) / (1.0 - 1.0 / c)
    rgba = np.zeros(probs.shape[1:] + (4,), dtype=np.uint8)
    rgba[..., :3] = UNCERTAINTY_RGB
    rgba[..., 3] = np.clip(np.rint(255.0 * u), 0, 255).astype(np.uint8)
    return rgba


def png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


class ModelOverlay:
    """A checkpoint loaded for overlays (CPU or the checkpoint's ``engine.device``).

    Args:
        ckpt: a weakseg checkpoint (``model_final.pth`` or ``iter_*.pth``), loaded with ``weights_only=True``.
        meta: the annotation classes; the checkpoint's classes must be the same names in the same order.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``; None = the checkpoint config's ``engine.device``.
        cache: number of images whose overlays are kept.
    """

    def __init__(self, ckpt: str | Path, meta: DatasetMeta, device: str | None = None, cache: int = 16):
        from weakseg.engine import builders
        from weakseg.engine.amp import autocast_dtype

        self.cfg, self.method, model_meta = builders.load_trained(ckpt)
        if tuple(model_meta.classes) != tuple(meta.classes):
            raise DataError(f"{ckpt}: the checkpoint's classes {list(model_meta.classes)} differ from the annotation "
                            f"classes {list(meta.classes)}")
        want = device or self.cfg.engine.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(want)
        self.method.to(self.device).eval()
        self.amp_dtype = autocast_dtype(self.cfg.eval.amp, self.device)
        self.meta = meta
        self._cache: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._size = cache
        self._lock = threading.Lock()

    @torch.no_grad()
    def probs(self, image: np.ndarray) -> np.ndarray:
        """C×H×W float32 class probabilities of an H×W×3 uint8 RGB image."""
        from weakseg.engine.amp import autocast
        from weakseg.modules.inference import infer_probs

        d, ev = self.cfg.data, self.cfg.eval
        x = torch.from_numpy(image).float().div_(255.0).permute(2, 0, 1)
        x = (x - torch.tensor(d.mean).view(3, 1, 1)) / torch.tensor(d.std).view(3, 1, 1)

        def predict_fn(batch):
            with autocast(self.device, self.amp_dtype):
                return self.method.predict(batch).float()

        p = infer_probs(predict_fn, x[None].to(self.device), scales=ev.scales, flip=ev.flip, average=ev.average,
                        mode=ev.mode, crop=ev.crop_size, stride=ev.stride)
        return p[0].float().cpu().numpy()

    def layers(self, sid: str, image_path: Path) -> dict[str, bytes]:
        """{"prediction": PNG bytes, "uncertainty": PNG bytes} of an image, computed once (thread-safe)."""
        with self._lock:
            if sid in self._cache:
                self._cache.move_to_end(sid)
                return self._cache[sid]
            probs = self.probs(read_rgb(image_path))
            out = {"prediction": png_bytes(prediction_rgba(probs.argmax(0), self.meta.palette)),
                   "uncertainty": png_bytes(uncertainty_rgba(probs))}
            self._cache[sid] = out
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
            return out
