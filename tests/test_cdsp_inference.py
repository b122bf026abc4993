import math

import pytest
import torch
import torch.nn.functional as F

from weakseg.engine.config import ConfigError, load_config
from weakseg.modules.inference import infer_probs, scaled_size, slide_logits


def test_long_side_sizes_match_the_cdsp_protocol():
    # VOC 500×375 at the 7 CDSP scales: long side round(512·s), short side keeps the aspect ratio
    sizes = [scaled_size(375, 500, s, "long_side", 512) for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)]
    assert sizes == [(192, 256), (288, 384), (384, 512), (480, 640), (576, 768), (672, 896), (768, 1024)]
    assert scaled_size(500, 375, 1.0, "long_side", 512) == (512, 384)
    assert scaled_size(375, 500, 0.5) == (188, 250)                         # default: each side × s


def test_centre_padding_places_the_image_in_the_middle_and_crops_it_back():
    seen = []

    def f(x):
        seen.append(x.clone())
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)                    # pointwise, 2 classes

    x = torch.arange(1, 36, dtype=torch.float32).view(1, 1, 5, 7).expand(1, 3, 5, 7).contiguous()
    out = slide_logits(f, x, crop=9, stride=6, pad="center")
    window = seen[0][0, 0]
    assert window.shape == (9, 9)
    assert torch.equal(window[2:7, 1:8], x[0, 0])                           # top = (9 − 5) // 2, left = (9 − 7) // 2
    assert window[:2].abs().sum() == 0 and window[7:].abs().sum() == 0 and window[:, 0].abs().sum() == 0
    assert torch.equal(out, f(x))
    seen.clear()
    slide_logits(f, x, crop=9, stride=6)                                    # default: bottom/right padding
    assert torch.equal(seen[0][0, 0, :5, :7], x[0, 0])
    with pytest.raises(ValueError, match="pad"):
        slide_logits(f, x, crop=9, stride=6, pad="middle")


def test_windows_are_averaged_as_probabilities_hand_computed():
    # a non-local model: each window predicts one constant logit pair (0, sum of its channel-0 values)
    def f(x):
        s = x[:, 0].sum(dim=(1, 2))
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 1] = s[:, None, None]
        return out

    x = torch.zeros(1, 3, 2, 3)
    x[0, 0] = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0]])
    # windows (crop 2, stride 1): columns 0-1 (sum 1) and columns 1-2 (sum −2)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    p = infer_probs(f, x, average="prob", mode="slide", crop=2, stride=1)
    assert p[0, 1, 0, 0].item() == pytest.approx(sig(1.0), rel=1e-6)
    assert p[0, 1, 0, 1].item() == pytest.approx((sig(1.0) + sig(-2.0)) / 2, rel=1e-6)   # not σ(mean logit)
    assert p[0, 1, 0, 2].item() == pytest.approx(sig(-2.0), rel=1e-6)
    q = infer_probs(f, x, average="logit", mode="slide", crop=2, stride=1)
    assert q[0, 1, 0, 1].item() == pytest.approx(sig(-0.5), rel=1e-6)


def test_cdsp_protocol_end_to_end_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 1, 1)
    f = lambda x: F.conv2d(x, w)  # noqa: E731
    x = torch.randn(1, 3, 20, 40)                                           # shorter than the window: padded
    kw = dict(average="prob", resize="long_side", align_corners=True)
    slid = infer_probs(f, x, scales=(0.5, 1.0, 1.5), long_side=32, mode="slide", crop=24, stride=16, pad="center",
                       **kw)
    assert slid.shape == (1, 4, 20, 40)
    assert torch.allclose(slid.sum(1), torch.ones(1, 20, 40), atol=1e-5)
    # at the native size (long side 40 at s = 1) overlapping padded windows of a pointwise model change nothing
    slid = infer_probs(f, x, long_side=40, mode="slide", crop=24, stride=16, pad="center", **kw)
    assert torch.allclose(slid, f(x).softmax(1), atol=1e-6)
    with pytest.raises(ValueError, match="resize"):
        infer_probs(f, x, resize="short_side")


def test_eval_config_keys(tmp_path):
    path = tmp_path / "cdsp_eval.yaml"
    path.write_text("eval: {resize: long_side, long_side: 512, pad: center, align_corners: true, mode: slide, "
                    "crop_size: 465, stride: 310, average: prob, scales: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]}\n")
    ev = load_config(path).eval
    assert (ev.resize, ev.long_side, ev.pad, ev.align_corners, ev.stride) == ("long_side", 512, "center", True, 310)
    default = load_config(None).eval
    assert (default.resize, default.pad, default.align_corners) == ("scale", "corner", False)
    path.write_text("eval: {pad: middle}\n")
    with pytest.raises(ConfigError, match="eval.pad"):
        load_config(path)
