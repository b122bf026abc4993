"""CDSP (methods.md §3) end to end on a tiny synthetic dataset: stage 1 from CAMs and from a folder of PNGs, the
distance maps, stage 2, the final model through eval / predict / export, and the folder checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.cli import main
from weakseg.engine.config import load_config
from weakseg.engine.pipeline import run_pipeline
from weakseg.modules.distance_maps import pseudo_boundary_distance_map, scribble_distance_map
from weakseg.utils.io import DataError, read_label

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/cdsp/cdsp_mnv2-os16_b16-8e_synth-128.yaml"
STAGES = ["train_cam", "make_cam", "eval_cam", "make_pseudo_labels", "eval_pseudo_labels", "make_scribble_distance",
          "make_pseudo_distance", "train_seg", "evaluate"]
TINY = [
    "model.pretrained=null", "method.cam.model.pretrained=null", "method.cam.schedule.epochs=1",
    "method.cam.batch_size=4", "method.cam.crop_size=48", "method.cam.resize_long=[48,64]",
    "method.cam.scales=[1.0]", "method.cam.flip=false", "data.crop_size=48", "engine.batch_size=4",
    "schedule.iters=3", "schedule.warmup_iters=0", "data.num_workers=0", "engine.tensorboard=false",
    "eval.save_overlays=1", "engine.threads=1", "engine.device=cpu", "engine.stage_workers=1",
]


def overrides(root: Path, work: Path, extra=()) -> list[str]:
    return [f"data.root={root}", f"engine.work_dir={work}", *TINY, *extra]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from weakseg.data.synth import generate_synth

    root = tmp_path_factory.mktemp("cdsp_synth")
    generate_synth(root, num_images=12, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def cam_run(synth, tmp_path_factory):
    work = tmp_path_factory.mktemp("cdsp_run") / "work"
    summary = run_pipeline(load_config(PRESET, overrides(synth, work)))
    return work, summary


def ids(root: Path) -> list[str]:
    return (root / "ImageSets/Segmentation/train.txt").read_text().split()


def test_cam_source_end_to_end(synth, cam_run, tmp_path, capsys):
    work, summary = cam_run
    assert list(summary) == STAGES
    cfg = load_config(PRESET, overrides(synth, work))
    for sid in ids(synth):
        pseudo = read_label(work / "make_pseudo_labels" / f"{sid}.png")
        scribble = read_label(synth / "Scribbles" / f"{sid}.png")
        assert pseudo.shape == scribble.shape and pseudo.max() < 8
        # the stored maps are exactly §3.3's formulas of this image's scribble and pseudo-label
        ds = np.asarray(Image.open(work / "make_scribble_distance" / f"{sid}.png"))
        dc = np.asarray(Image.open(work / "make_pseudo_distance" / f"{sid}.png"))
        assert np.array_equal(ds, scribble_distance_map(scribble, cfg.method.distance.lambda_s))
        assert np.array_equal(dc, pseudo_boundary_distance_map(pseudo, cfg.method.distance.lambda_c))
    metrics = json.loads((work / "eval_pseudo_labels/metrics.json").read_text())
    assert metrics["images"] == len(ids(synth)) and 0 <= metrics["miou"] <= 1
    final = json.loads((work / "evaluate/metrics.json").read_text())
    assert len(final["iou"]) == 8
    log = (work / "train_seg/train.log").read_text()
    for name in ("loss_scribble", "loss_pseudo", "loss_lorm", "loss_dist_scribble", "loss_dist_pseudo"):
        assert name in log
    # the final checkpoint is an ordinary one: eval, predict and export
    ckpt = str(work / "train_seg/model_final.pth")
    assert main(["eval", "--ckpt", ckpt, "--out", str(tmp_path / "eval"), "--set", "eval.save_overlays=0"]) == 0
    image = next((synth / "JPEGImages").glob("*.png"))
    assert main(["predict", str(image), "--ckpt", ckpt, "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / f"{image.stem}.png").is_file()
    assert main(["export", "--ckpt", ckpt, "--onnx", str(tmp_path / "cdsp.onnx")]) == 0


def test_folder_source_and_its_checks(synth, cam_run, tmp_path):
    """Downloaded pseudo-labels (here: the CAM run's) replace stage 1; a bad folder is refused naming the file."""
    folder = tmp_path / "downloaded"
    shutil.copytree(cam_run[0] / "make_pseudo_labels", folder)
    for marker in folder.glob("_*.json"):
        marker.unlink()
    work = tmp_path / "work"
    cfg = load_config(PRESET, overrides(synth, work, ["method.pseudo.source=folder", f"method.pseudo.folder={folder}"]))
    summary = run_pipeline(cfg, only=["make_pseudo_labels", "eval_pseudo_labels"])
    assert list(summary) == ["make_pseudo_labels", "eval_pseudo_labels"]
    assert not (work / "train_cam").exists()  # no CAM stage with downloaded labels
    for sid in ids(synth):
        assert np.array_equal(read_label(work / "make_pseudo_labels" / f"{sid}.png"), read_label(folder / f"{sid}.png"))
    bad = ids(synth)[0]
    Image.fromarray(np.full((64, 64), 37, np.uint8)).save(folder / f"{bad}.png")
    with pytest.raises(DataError, match=rf"{bad}\.png: pseudo-label values \[37\]"):
        run_pipeline(load_config(PRESET, overrides(synth, tmp_path / "w2", ["method.pseudo.source=folder",
                                                                           f"method.pseudo.folder={folder}"])),
                     only=["make_pseudo_labels"])
    (folder / f"{bad}.png").unlink()
    with pytest.raises(DataError, match="file not found"):
        run_pipeline(load_config(PRESET, overrides(synth, tmp_path / "w3", ["method.pseudo.source=folder",
                                                                           f"method.pseudo.folder={folder}"])),
                     only=["make_pseudo_labels"])


def test_pseudo_source_choice_changes_the_stage_list():
    from weakseg.methods import METHODS

    def stages(*extra):
        return [s.name for s in METHODS["cdsp"].stages(load_config(PRESET, list(extra)))]

    assert "make_boundary_labels" in stages("method.pseudo.source=sbe")
    assert "make_saliency" in stages("method.pseudo.source=sbe")  # no data.saliency_dir: U²-Net-p maps
    assert "make_saliency" not in stages("method.pseudo.source=bes")
    assert stages("method.pseudo.source=folder", "method.pseudo.folder=x")[0] == "make_pseudo_labels"
    cfg = load_config(PRESET, ["method.pseudo.source=crf", "model.pretrained=null"])
    with pytest.raises(ValueError, match="method.pseudo.source must be one of cam, bes, sbe, folder"):
        METHODS["cdsp"](cfg.method, cfg.model, 8)


def test_horse_preset_trains_the_blpseg_ablation_network():
    """The benchmark compares CDSP with the BLPSeg ablation's rows: same network, crop, batch, optimiser and schedule
    (the first version of the preset had the base's 256-wide UPerNet, 2.8× the parameters of the ablation's)."""
    horse = load_config(ROOT / "configs/cdsp/cdsp_mnv2-os32-uper_b8-800i_horse-192.yaml")
    for other in ("partial_ce/partial-ce_mnv2-os32-uper_b8-800i_horse-192.yaml",
                  "full/full_mnv2-os32-uper_b8-800i_horse-192.yaml"):
        ref = load_config(ROOT / "configs" / other)
        assert horse.model == ref.model
        assert (horse.optim, horse.schedule) == (ref.optim, ref.schedule)
        assert (horse.data.crop_size, horse.engine.batch_size) == (ref.data.crop_size, ref.engine.batch_size)
    assert horse.method.pseudo.source == "folder" and horse.method.loss.lorm == 1.0


def test_cam_pseudo_labels_refined_by_the_crf_keep_the_image_classes(synth, cam_run, tmp_path):
    work = tmp_path / "crf"
    shutil.copytree(cam_run[0], work)
    run_pipeline(load_config(PRESET, overrides(synth, work, ["method.pseudo.crf=bes_label"])),
                 only=["make_pseudo_labels"])
    tags = json.loads((synth / "tags.json").read_text())
    for sid in ids(synth):
        assert set(np.unique(read_label(work / "make_pseudo_labels" / f"{sid}.png"))) <= {0, *tags[sid]}
