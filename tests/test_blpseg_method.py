"""The BLPSeg method: wiring of network, LAM, losses and the self-training switch (spec §2.5b)."""

import pytest
import torch

from weakseg.engine.config import ModelConfig
from weakseg.methods.blpseg import BLPSeg, BLPSegConfig

C = 3


def make(**kw):
    torch.manual_seed(0)
    model = ModelConfig(backbone="mobilenet_v2", pretrained=None, output_stride=32, head="uper",
                        head_kwargs={"pool_scales": [1, 2]})
    return BLPSeg(BLPSegConfig(decoder_channels=16, lam_sigma=2.0, **kw), model, C)


def batch(n=2, size=64):
    g = torch.Generator().manual_seed(1)
    scribble = torch.full((n, size, size), 255, dtype=torch.long)
    scribble[:, 10:14, 5:40] = 1
    scribble[:, 50:52, 5:60] = 0
    valid = torch.ones(n, size, size, dtype=torch.long)
    valid[:, :, -8:] = 0  # crop padding
    scribble[:, :, -8:] = 255
    tags = torch.tensor([[1.0, 1.0, 0.0]] * n)
    return {"image": torch.randn(n, 3, size, size, generator=g), "scribble": scribble, "valid": valid, "tags": tags}


def test_losses_gradients_and_detached_annotation_head():
    method = make(self_training_start=None)
    method.train()
    out = method(batch(), 0)
    assert set(k for k in out if k.startswith("loss_")) == {"loss_annotation", "loss_blp"}
    assert out["self_training"] == 0
    # the annotation loss alone must not reach the decoder or the backbone (detached input, spec §2.3)
    method.zero_grad()
    out["loss_annotation"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.annotation_head.parameters())
    # the BLP loss trains backbone, decoder, seg head and the LAM embedding (not the annotation head)
    method.zero_grad()
    out["loss_blp"].backward()
    for name in ("backbone", "decoder", "seg_head", "embed"):
        grads = [p.grad for p in getattr(method.model, name).parameters()]
        assert any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.model.annotation_head.parameters())


def test_self_training_switch_is_config_driven():
    method = make(self_training_start=5)
    b = batch()
    assert method(b, 4)["self_training"] == 0
    after = method(b, 5)
    assert after["self_training"] == 1
    # confident pseudo-labels add supervision beyond the scribbles only when the network is confident; the scribble
    # pixels stay supervised, so the fraction never drops below the scribble fraction
    scribbled = ((b["scribble"] < C)).float().mean()
    assert after["supervised_fraction"] >= scribbled - 1e-6


def test_any_input_size_and_nothing_size_specific_in_the_checkpoint():
    method = make().eval()
    with torch.no_grad():
        for h, w in [(64, 64), (72, 100), (37, 53)]:
            assert method.predict(torch.randn(1, 3, h, w)).shape == (1, C, h, w)
    sizes = {tuple(v.shape) for k, v in method.state_dict().items() if "lam" in k}
    assert not sizes  # LAM stores nothing


def test_without_lam_has_no_embedding_branch_and_requires_uper():
    method = make(use_lam=False)
    assert method.model.embed is None and method.lam is None
    assert "embed" not in method.model.eval()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="model.head: uper"):
        BLPSeg(BLPSegConfig(), ModelConfig(backbone="mobilenet_v2", head="deeplabv3plus"), C)


@pytest.mark.parametrize("channels_last", [True, False])
def test_heads_and_embedding_equal_their_convolution_form(channels_last):
    """The heads and the embedding's 1×1 conv run as matrix products over channels-last rows: same outputs and
    gradients as the 1×1 convolutions of spec §2.3 with the same state dict."""
    from torch import nn

    from weakseg.models.blpseg_net import PatchEmbed, _MLPHead

    torch.manual_seed(0)
    head = _MLPHead(8, 4)
    conv = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 4, 1))
    conv.load_state_dict(head.state_dict())  # same keys
    embed = PatchEmbed(8)
    x = torch.randn(2, 8, 5, 7)
    image = torch.randn(2, 3, 18, 21)  # padded to 20 × 24
    if channels_last:
        x, image = x.contiguous(memory_format=torch.channels_last), image.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 4, 5, 7)
    outs = []
    for module in (head, conv):
        xi = x.clone().requires_grad_()
        out = module(xi)
        (out * upstream).sum().backward()
        outs.append((out, xi.grad, *(p.grad for p in module.parameters())))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5)
    ref = embed.proj(torch.nn.functional.pad(image, (0, 3, 0, 2)))
    ref = embed.out(embed.norm(ref.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    out = embed(image)
    assert out.shape == (2, 8, 5, 6) and torch.allclose(out, ref, atol=1e-5)
