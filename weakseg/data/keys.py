"""Names of the keys of a sample dict, and how each key is resized and padded by the joint transforms.

A sample is a ``dict`` with fixed keys. Images are H×W×3 uint8 (before ``Normalize``) or 3×H×W float (after);
label-like maps are H×W uint8 with 255 = ignore; float maps are H×W float32 (or K×H×W).

Resize modes:
    * ``bilinear``: smooth maps and images (images use bicubic when the transform asks for it).
    * ``nearest``: dense label maps.
    * ``sparse``: nearest-neighbour for sparse annotations (scribbles), but when downscaling a labelled pixel is
      never lost: every labelled source pixel is written into the nearest destination cell, so strokes are
      neither blurred nor thinned away.
"""

from __future__ import annotations

IMAGE = "image"          # H×W×3 uint8 RGB → 3×H×W float32 after Normalize
LABEL = "label"          # H×W uint8 dense class ids, 255 = ignore (full supervision / evaluation)
SCRIBBLE = "scribble"    # H×W uint8 class ids on strokes, 255 = not annotated (or padding)
TAGS = "tags"            # C float32 multi-hot image-level labels (index 0 = background, always 1 when present)
VALID = "valid"          # H×W uint8, 1 = real image pixel, 0 = padding added by crop
PSEUDO = "pseudo"        # H×W uint8 pseudo-mask, 255 = ignore
SALIENCY = "saliency"    # H×W float32 in [0, 1]
BOUNDARY = "boundary"    # H×W uint8 boundary-label codes (BES/SBE), 255 = padding
DISTANCE = "distance"    # H×W uint8/float distance map, 0 = padding (weight 0: padding never supervises)
DIST_SCRIBBLE = "dist_scribble"  # H×W uint8 CDSP scribble distance map D_s (255 on strokes), 0 = padding
DIST_PSEUDO = "dist_pseudo"      # H×W uint8 CDSP pseudo-label boundary distance map D_c, 0 = padding
CAM = "cam"              # K×H×W float32 class activation maps
ID = "id"                # str image id
ORIG_SIZE = "orig_size"  # (H, W) of the image as read from disk

# key → (resize mode, pad value)
POLICY: dict[str, tuple[str, float]] = {
    IMAGE: ("bilinear", 0.0),
    LABEL: ("nearest", 255),
    SCRIBBLE: ("sparse", 255),
    VALID: ("nearest", 0),
    PSEUDO: ("nearest", 255),
    SALIENCY: ("bilinear", 0.0),
    BOUNDARY: ("nearest", 255),
    # distance maps weight a loss: padding and rotated-in pixels get weight 0 (the CDSP reference's 255 gave them
    # full weight, spec §3.10(8))
    DISTANCE: ("nearest", 0),
    DIST_SCRIBBLE: ("nearest", 0),
    DIST_PSEUDO: ("nearest", 0),
    CAM: ("bilinear", 0.0),
}

# keys that carry no spatial map (not touched by geometric transforms)
NON_SPATIAL = (TAGS, ID, ORIG_SIZE)
