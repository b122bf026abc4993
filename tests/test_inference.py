import torch
import torch.nn.functional as F

from weakseg.modules.inference import infer_probs, slide_logits


def conv_model(seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    return lambda x: conv(x)


def test_slide_equals_whole_for_a_local_model_when_windows_are_large_enough():
    f = conv_model()
    x = torch.randn(2, 3, 40, 50)
    whole = f(x)
    # a 3×3 conv differs only on window borders; with stride == crop there is no overlap: compare interiors
    slid = slide_logits(f, x, crop=64, stride=48)  # one window covering everything (after padding)
    assert slid.shape == whole.shape
    assert torch.allclose(slid[..., :-1, :-1], whole[..., :-1, :-1], atol=1e-5)


def test_slide_averages_overlaps_of_a_pointwise_model():
    w = torch.randn(4, 3, 1, 1)
    f = lambda x: F.conv2d(x, w)  # noqa: E731 - pointwise: every window gives the same value
    x = torch.randn(1, 3, 37, 29)
    assert torch.allclose(slide_logits(f, x, crop=16, stride=10), f(x), atol=1e-5)


def test_flip_of_a_flip_equivariant_model_changes_nothing_and_probs_sum_to_one():
    w = torch.randn(5, 3, 1, 1)
    f = lambda x: F.conv2d(x, w)  # noqa: E731
    x = torch.randn(1, 3, 20, 24)
    p1 = infer_probs(f, x)
    p2 = infer_probs(f, x, flip=True)
    assert torch.allclose(p1, p2, atol=1e-5)
    assert torch.allclose(p1.sum(1), torch.ones(1, 20, 24), atol=1e-5)
    p3 = infer_probs(f, x, scales=(0.5, 1.0, 1.5), flip=True, average="prob")
    assert p3.shape == (1, 5, 20, 24)
    assert torch.allclose(p3.sum(1), torch.ones(1, 20, 24), atol=1e-5)


def test_flip_is_undone():
    # a model that marks the left half: after flip + unflip the left half must still be marked
    def f(x):
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 1] = (x[:, 0] > 0).float() * 10
        out[:, 0] = (x[:, 0] <= 0).float() * 10
        return out

    x = -torch.ones(1, 3, 8, 8)
    x[..., :4] = 1
    p = infer_probs(f, x, flip=True)
    assert (p[0, 1, :, :4] > 0.9).all() and (p[0, 1, :, 4:] < 0.1).all()
