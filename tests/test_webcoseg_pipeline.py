"""WebCoseg (methods.md §5) end to end on a tiny synthetic target set and a tiny synthetic web set: indexing,
the built-in co-segmentation per class, the initial generator with best-snapshot selection, mask estimation
(tags respected), the two-branch final model, eval / export; and ready-made web masks instead of the co-segmentation."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.cli import main
from weakseg.engine.config import load_config
from weakseg.engine.pipeline import run_pipeline
from weakseg.utils.io import read_label

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/webcoseg/webcoseg_mnv2-os16_b16-synth-128.yaml"
STAGES = ["index_web", "cosegment", "train_init", "eval_init", "estimate_masks", "eval_estimated_masks", "train_seg",
          "evaluate"]
TINY = [
    "model.pretrained=null", "method.init.model.pretrained=null", "method.init.schedule.iters=4",
    "method.init.schedule.warmup_iters=0", "method.init.batch_size=4", "method.init.crop_size=48",
    "method.init.best={interval: 2, split: holdout, holdout: 0.25}", "method.estimate.scales=[1.0]",
    "method.coseg={feature_size: 64, max_side: 64, kmeans_samples: 500, k_max: 4, crf_iterations: 0}",
    "data.crop_size=48", "engine.batch_size=4", "schedule.iters=3", "schedule.warmup_iters=0",
    "data.num_workers=0", "engine.tensorboard=false", "eval.save_overlays=1", "engine.threads=1",
    "engine.device=cpu", "engine.stage_workers=1", "engine.ckpt_interval=2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from weakseg.data.synth import generate_synth
    from weakseg.data.synth_web import generate_synth_web

    base = tmp_path_factory.mktemp("webcoseg")
    generate_synth(base / "target", num_images=12, size=64, seed=4)
    generate_synth_web(base / "web", num_images=21, size=64, seed=4)  # 3 per class
    return base


def overrides(base: Path, work: Path, extra=()) -> list[str]:
    return [f"data.root={base / 'target'}", f"method.web.root={base / 'web' / 'web'}", f"engine.work_dir={work}",
            *TINY, *extra]


def test_webcoseg_end_to_end(data, tmp_path):
    work = tmp_path / "work"
    summary = run_pipeline(load_config(PRESET, overrides(data, work)))
    assert list(summary) == STAGES
    index = json.loads((work / "index_web/metrics.json").read_text())
    assert index["images"] == 21 and index["layout"] == "folders"
    classes = sorted(p.name for p in (work / "cosegment").glob("class_*.json"))
    assert classes == [f"class_{c:03d}.json" for c in range(1, 8)]
    web_lines = [line.split() for line in (work / "index_web/web_train_list.txt").read_text().splitlines()
                 if not line.startswith("#")]
    for rel, class_id in web_lines:  # every web image has a mask of its own class
        mask = read_label(work / "cosegment/masks" / f"{rel.rsplit('.', 1)[0]}.png")
        assert set(np.unique(mask)) <= {0, int(class_id), 255}
    assert (work / "train_init/model_best.pth").is_file()  # selection on held-out target images
    assert (work / "train_init/selection.txt").read_text().split()
    init = json.loads((work / "eval_init/metrics.json").read_text())  # the generator itself, on the val split
    assert len(init["iou"]) == 8 and 0.0 <= init["miou"] <= 1.0
    tags = json.loads((data / "target/tags.json").read_text())
    for sid in (data / "target/ImageSets/Segmentation/train.txt").read_text().split():
        est = read_label(work / "estimate_masks" / f"{sid}.png")
        assert set(np.unique(est)) <= {0, *tags[sid]}  # classes not in the image's tags never appear
    # the same with the CRF refining the estimate over the image's tagged classes only
    run_pipeline(load_config(PRESET, overrides(data, work, ["method.estimate.crf=webcoseg"])), only=["estimate_masks"])
    for sid in (data / "target/ImageSets/Segmentation/train.txt").read_text().split():
        assert set(np.unique(read_label(work / "estimate_masks" / f"{sid}.png"))) <= {0, *tags[sid]}
    final = json.loads((work / "evaluate/metrics.json").read_text())
    assert len(final["iou"]) == 8
    assert "loss_global" in (work / "train_seg/train.log").read_text()
    ckpt = str(work / "train_seg/model_final.pth")
    assert main(["export", "--ckpt", ckpt, "--onnx", str(tmp_path / "webcoseg.onnx")]) == 0


def test_ready_made_masks_replace_the_cosegmentation(data, tmp_path):
    import shutil

    masks = tmp_path / "masks"
    shutil.copytree(data / "web" / "masks", masks)
    missing = sorted(masks.glob("*/*.png"))[0]
    missing.unlink()  # a downloaded mask set with a hole and a bad file: both skipped and listed, training runs
    bad = sorted(masks.glob("*/*.png"))[-1]
    bad.write_bytes(b"not a png")
    work = tmp_path / "work"
    cfg = load_config(PRESET, overrides(data, work, [f"method.web.mask_dir={masks}"]))
    summary = run_pipeline(cfg, only=["index_web", "train_init"])
    assert list(summary) == ["index_web", "train_init"]
    assert not (work / "cosegment").exists()
    skipped = (work / "train_init/skipped_masks.txt").read_text().splitlines()
    assert len(skipped) == 2 and str(missing) in skipped[0] + skipped[1] and str(bad) in skipped[0] + skipped[1]
    from weakseg.methods import METHODS

    assert "cosegment" not in [s.name for s in METHODS["webcoseg"].stages(cfg)]


class _FixedNet(torch.nn.Module):
    """Returns given seg (N×C×h×w) and global (N×C) logits whatever the input."""

    def __init__(self, seg, g):
        super().__init__()
        self.seg, self.g = seg, g

    def forward(self, images):
        return {"seg": self.seg, "global": self.g, "fused": self.seg + self.g[:, :, None, None]}


def test_final_loss_is_fused_ce_plus_summed_bce_per_image():
    from weakseg.data import keys as K
    from weakseg.methods.webcoseg import WebCoseg, WebCosegConfig

    method = WebCoseg.__new__(WebCoseg)  # the loss only: no backbone to build
    torch.nn.Module.__init__(method)
    method.cfg, method.num_classes = WebCosegConfig(global_weight=1.0), 2
    from weakseg.losses.partial_ce import PartialCrossEntropy

    method.loss_seg = PartialCrossEntropy()
    # 2 images, 1×2 pixels each; s = 0, g = (ln 3, 0): fused softmax = (3/4, 1/4) at every pixel
    seg = torch.zeros(2, 2, 1, 2)
    g = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    method.model = _FixedNet(seg, g)
    target = torch.tensor([[[0, 1]], [[0, 255]]])  # 3 labelled pixels: classes 0, 1, 0
    tags = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    losses = method.training_step({K.IMAGE: torch.zeros(2, 3, 1, 2), K.PSEUDO: target, K.TAGS: tags}, 0)
    ce = (2 * -math.log(0.75) - math.log(0.25)) / 3  # mean over labelled pixels
    # BCE summed over classes, averaged over images: σ(ln 3) = 3/4, σ(0) = 1/2
    bce = ((-math.log(0.75) - math.log(0.5)) + (-math.log(0.75) - math.log(0.5))) / 2
    assert losses["loss_seg"].item() == pytest.approx(ce, rel=1e-5)
    assert losses["loss_global"].item() == pytest.approx(bce, rel=1e-5)


def test_two_branch_net_fuses_and_owns_a_separate_copy_of_the_last_stages():
    from weakseg.models.webcoseg_net import WebCosegNet

    torch.manual_seed(0)
    net = WebCosegNet("mobilenet_v2", "largefov", 3, pretrained=None, output_stride=16,
                      head_kwargs={"channels": 16, "dilation": 2}, global_branch=True, global_channels=8).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out["global"].shape == (2, 3)
    torch.testing.assert_close(out["fused"], out["seg"] + out["global"][:, :, None, None])
    seg_ids = {id(p) for p in net.backbone.parameters()}
    assert not seg_ids & {id(p) for p in net.global_branch.parameters()}  # own weights, not shared
    groups = net.param_groups()
    grouped = [id(p) for ps in groups.values() for p in ps]
    # every parameter in exactly one optimiser group (the copied stages too: the shared ones are Identity there)
    assert len(grouped) == len(set(grouped)) and set(grouped) == {id(p) for p in net.parameters()}
