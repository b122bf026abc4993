"""The method contract (weakseg/methods/base.py) over every entry of the method table: build from a config, one
training step on a tiny batch (finite losses, gradients reach the network), ``predict`` shape, ONNX export of the
predict module (checked against PyTorch), and the stage list of multi-stage methods."""

import pytest
import torch

from weakseg.data import keys as K
from weakseg.engine.config import load_config
from weakseg.engine.export import check_onnx, export_onnx
from weakseg.methods import METHODS, Method

C = 4  # classes incl. background
N, H, W = 2, 64, 64

# method → (config overrides for a tiny network, extra sample keys the method trains on)
TINY = {
    "full": ([], ()),
    "partial_ce": ([], ()),
    "blpseg": (["model.head=uper", "model.output_stride=32"], ()),
    "bes": (["model.head=deeplabv2", "model.head_kwargs={rates: [1, 2]}"], ()),
    "sbe": (["model.head=deeplabv2", "model.head_kwargs={rates: [1, 2]}"], ()),
    "cdsp": (["model.head=aspp_c", "model.output_stride=16", "model.head_kwargs={rates: [1, 2, 3]}"],
             (K.DIST_SCRIBBLE, K.DIST_PSEUDO)),
    "webcoseg": (["model.head=largefov", "model.output_stride=16", "model.head_kwargs={channels: 32, dilation: 2}"],
                 ()),
}


def tiny_batch(supervision: str, extra: tuple[str, ...]) -> dict:
    g = torch.Generator().manual_seed(0)
    dense = torch.randint(0, C, (N, H, W), generator=g)
    sparse = torch.full((N, H, W), 255)
    sparse[:, 20:24, 10:50] = dense[:, 20:24, 10:50]
    tags = torch.zeros(N, C)
    tags[:, 0] = 1
    tags[:, 1:3] = 1
    batch = {K.IMAGE: torch.randn(N, 3, H, W, generator=g), K.TAGS: tags,
             K.VALID: torch.ones(N, H, W, dtype=torch.int64)}
    if supervision == "full":
        batch[K.LABEL] = dense
    if supervision in ("scribble", "scribble_pseudo"):
        batch[K.SCRIBBLE] = sparse
    if supervision in ("pseudo", "scribble_pseudo"):
        batch[K.PSEUDO] = dense
    for key in extra:
        batch[key] = torch.randint(0, 256, (N, H, W), generator=g)
    return batch


def test_every_method_is_covered():
    assert set(METHODS) <= set(TINY), f"add {sorted(set(METHODS) - set(TINY))} to TINY"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tmp_path, one_thread):
    overrides, extra = TINY[name]
    cfg = load_config(None, [f"method.name={name}", "model.backbone=mobilenet_v2", "model.pretrained=null",
                             *overrides])
    cls = METHODS[name]
    assert issubclass(cls, Method)
    torch.manual_seed(0)
    method = cls(cfg.method, cfg.model, C)
    method.train()
    out = method(tiny_batch(cls.supervision, extra), 0)
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert losses, f"{name}: training_step returned no loss_* entry"
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    groups = method.param_groups()
    assert groups and all(isinstance(p, torch.nn.Parameter) for ps in groups.values() for p in ps)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for ps in groups.values() for p in ps)

    method.eval()
    with torch.no_grad():
        logits = method.predict(torch.randn(1, 3, 48, 80))
    assert logits.shape == (1, C, 48, 80) and torch.isfinite(logits).all()

    path = export_onnx(method, tmp_path / f"{name}.onnx", sample_size=(64, 64))
    assert check_onnx(method, path, sizes=((1, 64, 64), (2, 48, 80))) < 1e-3

    stages = cls.stages(cfg)
    assert isinstance(stages, list)
    names = [s.name for s in stages]
    assert len(names) == len(set(names)), f"{name}: duplicate stage names {names}"
    for i, stage in enumerate(stages):  # every stage reads only stages listed before it
        assert set(stage.reads) <= set(names[:i]), (name, stage.name, stage.reads)


def test_architecture_doc_lists_every_stage():
    """docs/architecture.md's stage tables name every stage the multi-stage presets run."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs/architecture.md").read_text(encoding="utf-8")
    for preset in sorted(root.glob("configs/*/*.yaml")):
        if preset.parent.name == "_base_":
            continue
        cfg = load_config(preset)
        for stage in METHODS[cfg.method.name].stages(cfg):
            assert f"`{stage.name}`" in doc, f"{stage.name} ({preset.name}) missing from docs/architecture.md"
