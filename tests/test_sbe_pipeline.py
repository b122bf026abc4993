"""BES / SBE pipeline (methods.md §4) on a tiny synthetic dataset: every stage end to end, artefact formats,
interruption and resume, --only / --from semantics, U²-Net-p saliency and a 2-rank torchrun stage."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.cli import main
from weakseg.engine import builders
from weakseg.engine.config import ConfigError, load_config
from weakseg.engine.pipeline import run_pipeline
from weakseg.methods import METHODS
from weakseg.methods import sbe as sbe_mod
from weakseg.methods.kit import cam as cam_mod
from weakseg.modules.boundary_labels import sobel_magnitude

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {m: ROOT / f"configs/{m}/{m}_mnv2-os16_b16-8e_synth-128.yaml" for m in ("bes", "sbe")}
BES_STAGES = ["train_cam", "make_cam", "eval_cam", "make_boundary_labels", "train_boundary_net", "make_pseudo_masks",
              "eval_pseudo_masks", "train_seg", "evaluate"]
# random init, 48² crops, a few iterations, 2 CAM scales, 2^4 walk steps, one thread (fastest on a shared CPU)
TINY = [
    "model.pretrained=null", "method.cam.model.pretrained=null", "method.boundary.model.pretrained=null",
    "method.cam.schedule.epochs=1", "method.boundary.schedule.epochs=1", "method.cam.batch_size=4",
    "method.boundary.batch_size=4", "method.cam.crop_size=48", "method.cam.resize_long=[48,64]",
    "method.boundary.crop_size=48", "method.cam.scales=[1.0,0.5]", "method.walk.exp_times=4",
    "data.crop_size=48", "engine.batch_size=4", "schedule.iters=3", "schedule.warmup_iters=0", "data.num_workers=0",
    "engine.tensorboard=false", "eval.save_overlays=1", "engine.threads=1", "engine.device=cpu",
    "engine.stage_workers=1",
]


def overrides(root: Path, work: Path, extra=()) -> list[str]:
    return [f"data.root={root}", f"engine.work_dir={work}", *TINY, *extra]


def tiny_cfg(method: str, root: Path, work: Path, extra=()):
    return load_config(PRESETS[method], overrides(root, work, extra))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """16 images of 64² (13 train, 3 val) and a sharp saliency folder ``Sal/`` = ground-truth foreground × 255."""
    from weakseg.data.synth import generate_synth

    root = tmp_path_factory.mktemp("sbe_synth")
    generate_synth(root, num_images=16, size=64, seed=5)
    (root / "Sal").mkdir()
    for path in (root / "SegmentationClass").glob("*.png"):
        gt = np.asarray(Image.open(path))
        Image.fromarray((((gt > 0) & (gt < 255)) * 255).astype(np.uint8), mode="L").save(root / "Sal" / path.name)
    return root


def train_ids(root: Path) -> list[str]:
    return (root / "ImageSets/Segmentation/train.txt").read_text().split()


@pytest.fixture(scope="module")
def bes_run(synth, tmp_path_factory):
    """One complete BES run; tests that change it work on a copy."""
    work = tmp_path_factory.mktemp("bes_run") / "work"
    summary = run_pipeline(tiny_cfg("bes", synth, work))
    return work, summary


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith("_")}


def test_presets_load_and_list_stages(caplog):
    paper = {m: ROOT / f"configs/{m}/{m}_r50-os16_b16-5e_voc12aug-512.yaml" for m in ("bes", "sbe")}
    for method, path in list(PRESETS.items()) + list(paper.items()):
        cfg = load_config(path)
        assert cfg.method.name == method and cfg.model.head == "deeplabv2"
        names = [s.name for s in METHODS[method].stages(cfg)]
        expected = list(BES_STAGES)
        if method == "sbe" and cfg.data.saliency_dir is None:
            expected.insert(3, "make_saliency")
        assert names == expected
    cpu_sbe = load_config(PRESETS["sbe"])
    assert cpu_sbe.data.saliency_dir is None and "make_saliency" in [s.name for s in METHODS["sbe"].stages(cpu_sbe)]
    paper_sbe = load_config(paper["sbe"])
    assert paper_sbe.data.saliency_dir == "Sal" and paper_sbe.method.cam.eval_thres == 0.21
    assert load_config(paper["bes"]).method.walk.bg_thres == 0.25
    with pytest.raises(ConfigError, match=r"method\.cam\.schedule\.epoch.*did you mean 'epochs'"):
        load_config(PRESETS["bes"], ["method.cam.schedule.epoch=2"])
    with pytest.raises(ConfigError, match=r"method\.boundary\.optim\.name = 'adam'"):
        load_config(PRESETS["bes"], ["method.boundary.optim.name=adam"])
    # a partial section keeps the method's own defaults (SBE's CAM threshold), not the section class's
    assert load_config(PRESETS["sbe"], ["method.cam={batch_size: 8}"]).method.cam.eval_thres == 0.21
    # the final network may be any segmentor (the demo trains its UPerNet); the paper's DeepLab-v2 is named in the log
    cfg = load_config(PRESETS["bes"], ["model.head=deeplabv3plus", "model.pretrained=null"])
    with caplog.at_level(logging.INFO, logger="weakseg"):
        method = builders.build_method(cfg, 8)
    assert "final network head deeplabv3plus (the paper's is DeepLab-v2" in caplog.text
    assert method.eval().predict(torch.zeros(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_bes_end_to_end_artefacts(synth, bes_run):
    work, summary = bes_run
    assert list(summary) == BES_STAGES
    ids = train_ids(synth)
    tags = json.loads((synth / "tags.json").read_text())
    for sid in ids:
        cam = np.load(work / "make_cam" / f"{sid}.npz", allow_pickle=False)
        assert sorted(cam.files) == ["cams", "high_res", "keys"]
        keys = cam["keys"]
        assert keys.dtype == np.int64 and keys.tolist() == sorted(c - 1 for c in tags[sid] if c != 0)
        assert cam["cams"].dtype == np.float16 and cam["cams"].shape == (len(keys), 16, 16)
        assert cam["high_res"].dtype == np.float16 and cam["high_res"].shape == (len(keys), 64, 64)
        assert cam["high_res"].min() >= 0 and cam["high_res"].max() <= 1
        codes = np.asarray(Image.open(work / "make_boundary_labels" / f"{sid}.png"))
        assert codes.shape == (64, 64) and set(np.unique(codes)) <= {0, 50, 100, 150, 200}
        with Image.open(work / "make_pseudo_masks" / f"{sid}.png") as img:
            assert img.mode == "P"
            mask = np.asarray(img)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, *(keys + 1).tolist()}
    for stage in BES_STAGES:
        assert json.loads((work / stage / "_done.json").read_text())["stage"] == stage
    pseudo = json.loads((work / "eval_pseudo_masks/metrics.json").read_text())
    assert pseudo["images"] == len(ids) and pseudo["coverage"] == 1.0 and 0 <= pseudo["miou"] <= 1
    cam_metrics = json.loads((work / "eval_cam/metrics.json").read_text())
    assert cam_metrics["bg_threshold"] == load_config(PRESETS["bes"]).method.cam.eval_thres
    assert len(cam_metrics["iou"]) == 8 and cam_metrics["images"] == len(ids)
    final = json.loads((work / "evaluate/metrics.json").read_text())
    assert final["images"] == 3 and (work / "evaluate/predictions").is_dir()
    # the final checkpoint is an ordinary weakseg model: it rebuilds from its stored config and loads strictly
    cfg, method, meta = builders.load_trained(work / "train_seg/model_final.pth")
    assert type(method).__name__ == "BES" and meta.num_classes == 8


def test_sbe_with_saliency_folder(synth, tmp_path):
    work = tmp_path / "sbe"
    summary = run_pipeline(tiny_cfg("sbe", synth, work, ["data.saliency_dir=Sal"]))
    assert list(summary) == BES_STAGES  # saliency given: no make_saliency stage
    assert not (work / "make_saliency").exists()
    seen = set()
    for sid in train_ids(synth):
        codes = np.asarray(Image.open(work / "make_boundary_labels" / f"{sid}.png"))
        seen |= set(np.unique(codes).tolist())
        sal = torch.from_numpy(np.asarray(Image.open(synth / "Sal" / f"{sid}.png"), dtype=np.float32) / 255)
        edge = (sobel_magnitude(sal) > 0.5).numpy()
        assert edge.any() and (codes[edge] == 250).all()  # SBE's certain boundary wins over every other rule
    assert seen <= {0, 50, 100, 150, 200, 250} and 250 in seen
    # a method setting that only SBE has reaches its stage: the saliency background threshold of the preset
    assert load_config(PRESETS["sbe"]).method.labels.sal_bg_thres == 0.05
    with pytest.raises(ConfigError, match="unknown stage 'make_saliency'"):
        run_pipeline(tiny_cfg("sbe", synth, work, ["data.saliency_dir=Sal"]), only=["make_saliency"])


def test_sbe_boundary_objective_thresholds_saliency():
    from weakseg.losses.boundary import SBEBoundaryLoss
    from weakseg.models.boundary_net import BoundaryNet

    torch.manual_seed(0)
    net = BoundaryNet("mobilenet_v2")
    objective = sbe_mod.BoundaryTraining(net, sal_bg_thres=0.2)
    image = torch.randn(2, 3, 32, 32)
    codes = torch.randint(0, 6, (2, 32, 32)) * 50
    sal = torch.full((2, 32, 32), 0.9)
    sal[..., :16] = 0.1  # faint left half: non-salient once thresholded at 0.2
    loss = objective({"image": image, "boundary": codes, "saliency": sal}, 0)["loss_boundary"]
    logits = net(image)["boundary"]
    small = codes[:, 2::4, 2::4]  # nearest sampling at the centre of each 4×4 cell
    expected = SBEBoundaryLoss()(logits, small, torch.where(sal > 0.2, sal, torch.zeros_like(sal)))
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, SBEBoundaryLoss()(logits, small, sal))
    loss.backward()
    assert all(p.grad is None for p in net.backbone.parameters())  # the backbone is frozen
    assert all(p.grad is not None for p in net.head.parameters())


def test_make_saliency_u2netp_stage_and_cli(synth, tmp_path):
    pytest.importorskip("onnxruntime")
    from weakseg.data.saliency import find_u2netp

    try:
        find_u2netp()
    except FileNotFoundError:
        pytest.skip("u2netp.onnx not installed")
    two = train_ids(synth)[:2]
    (tmp_path / "two.txt").write_text("\n".join(two) + "\n")
    work = tmp_path / "work"
    cfg = tiny_cfg("sbe", synth, work, [f"data.train_list={tmp_path / 'two.txt'}", "method.saliency_threads=1"])
    summary = run_pipeline(cfg, only=["make_saliency"])
    assert summary["make_saliency"]["count"] == 2
    out = tmp_path / "cli_sal"
    assert main(["data", "saliency", "--root", str(synth), "--list", str(tmp_path / "two.txt"), "--out", str(out),
                 "--image-ext", ".png", "--threads", "1"]) == 0
    for sid in two:
        with Image.open(work / "make_saliency" / f"{sid}.png") as img:
            assert img.mode == "L" and img.size == (64, 64)
            stage_map = np.asarray(img)
        assert stage_map.max() == 255 and stage_map.min() == 0  # min-max normalised per image
        assert np.array_equal(stage_map, np.asarray(Image.open(out / f"{sid}.png")))


def test_interrupted_make_cam_resumes_without_redoing(synth, tmp_path, monkeypatch):
    work = tmp_path / "work"
    cfg = tiny_cfg("bes", synth, work)
    run_pipeline(cfg, only=["train_cam"])
    done_train = (work / "train_cam/_done.json").stat().st_mtime_ns
    original = cam_mod.make_cam_image
    calls = []

    def crash_after_five(state, sample_id, path):
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(sample_id)
        original(state, sample_id, path)

    monkeypatch.setattr(cam_mod, "make_cam_image", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, only=["train_cam", "make_cam"])
    assert sorted(p.stem for p in (work / "make_cam").glob("*.npz")) == sorted(calls)
    assert not (work / "make_cam/_done.json").exists()
    assert not [p for p in (work / "make_cam").iterdir() if ".tmp" in p.name]  # no half-written file
    before = mtimes(work / "make_cam")

    resumed = []
    monkeypatch.setattr(cam_mod, "make_cam_image", lambda s, i, p: (resumed.append(i), original(s, i, p)))
    run_pipeline(cfg, only=["train_cam", "make_cam"])
    ids = train_ids(synth)
    assert sorted(resumed) == sorted(set(ids) - set(calls))  # finished images are not redone
    after = mtimes(work / "make_cam")
    assert sorted(Path(n).stem for n in after) == sorted(ids)
    assert all(after[name] == t for name, t in before.items())
    assert (work / "train_cam/_done.json").stat().st_mtime_ns == done_train  # the finished stage was skipped
    assert "stage train_cam: complete" in (work / "run.log").read_text()


def test_only_from_force_and_config_changes(synth, bes_run, tmp_path, capsys):
    work = tmp_path / "copy"
    shutil.copytree(bes_run[0], work)
    cfg = tiny_cfg("bes", synth, work)
    cams = mtimes(work / "make_cam")
    metrics = (work / "eval_cam/metrics.json").stat().st_mtime_ns
    assert list(run_pipeline(cfg, only=["eval_cam"])) == ["eval_cam"]  # complete: skipped, nothing rewritten
    assert (work / "eval_cam/metrics.json").stat().st_mtime_ns == metrics
    masks = mtimes(work / "make_pseudo_masks")
    summary = run_pipeline(cfg, from_stage="make_pseudo_masks", force=True)
    assert list(summary) == BES_STAGES[BES_STAGES.index("make_pseudo_masks"):]
    assert all(t > masks[n] for n, t in mtimes(work / "make_pseudo_masks").items())  # redone
    assert mtimes(work / "make_cam") == cams  # earlier stages untouched
    # the CLI: --only by name
    argv = ["run", str(PRESETS["bes"])] + [a for o in overrides(synth, work) for a in ("--set", o)]
    assert main(argv + ["--only", "eval_pseudo_masks"]) == 0
    assert "eval_pseudo_masks: done" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="run stage train_cam first"):
        run_pipeline(tiny_cfg("bes", synth, tmp_path / "empty"), only=["make_cam"])
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(cfg, from_stage="make_cams")


@pytest.mark.slow
def test_torchrun_two_ranks_make_cam(synth, bes_run, tmp_path):
    work = tmp_path / "ddp"
    shutil.copytree(bes_run[0], work)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           "-m", "weakseg", "run", str(PRESETS["bes"]), "--only", "make_cam", "--force"]
    for s in overrides(synth, work):
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = train_ids(synth)
    files = sorted(p.name for p in (work / "make_cam").iterdir())
    assert files == sorted(["_done.json"] + [f"{i}.npz" for i in ids])  # every image once, no temporaries
    done = json.loads((work / "make_cam/_done.json").read_text())
    assert done["count"] == len(ids)
    for sid in ids:  # both ranks computed the same artefacts as the single-process run
        new = np.load(work / "make_cam" / f"{sid}.npz")
        old = np.load(bes_run[0] / "make_cam" / f"{sid}.npz")
        assert np.array_equal(new["keys"], old["keys"])
        assert np.allclose(new["cams"].astype(np.float32), old["cams"].astype(np.float32), atol=2e-3)
    assert "(7 on this rank" in (work / "run.log").read_text()


def test_changed_value_reruns_exactly_the_downstream_stages(synth, bes_run, tmp_path):
    """Per-stage fingerprints: a random-walk value re-runs make_pseudo_masks onward and keeps everything before it;
    a CAM value re-runs everything from train_cam; the log names the value."""
    work = tmp_path / "copy"
    shutil.copytree(bes_run[0], work)
    before = {name: (work / name / "_done.json").stat().st_mtime_ns for name in BES_STAGES}
    run_pipeline(tiny_cfg("bes", synth, work, ["method.walk.beta=3.0"]))
    after = {name: (work / name / "_done.json").stat().st_mtime_ns for name in BES_STAGES}
    first = BES_STAGES.index("make_pseudo_masks")
    assert [n for n in BES_STAGES if after[n] != before[n]] == BES_STAGES[first:]
    log = (work / "run.log").read_text()
    assert "stage make_pseudo_masks: re-running: method.walk.beta changed (5.0 → 3.0)" in log
    assert "stage train_seg: re-running: input stage make_pseudo_masks changed" in log
    # unchanged settings: nothing runs again
    run_pipeline(tiny_cfg("bes", synth, work, ["method.walk.beta=3.0"]))
    assert {n: (work / n / "_done.json").stat().st_mtime_ns for n in BES_STAGES} == after
    # eval_cam's threshold is read by eval_cam alone (it lives in the CAM section but does not touch the CAMs)
    run_pipeline(tiny_cfg("bes", synth, work, ["method.walk.beta=3.0", "method.cam.eval_thres=0.5"]))
    now = {n: (work / n / "_done.json").stat().st_mtime_ns for n in BES_STAGES}
    assert [n for n in BES_STAGES if now[n] != after[n]] == ["eval_cam"]
    after = now
    # a CAM training value: everything from train_cam
    run_pipeline(tiny_cfg("bes", synth, work, ["method.walk.beta=3.0", "method.cam.eval_thres=0.5",
                                               "method.cam.optim.lr=2.0e-4"]))
    again = {name: (work / name / "_done.json").stat().st_mtime_ns for name in BES_STAGES}
    assert all(again[n] != after[n] for n in BES_STAGES)
    log = (work / "run.log").read_text()
    assert "stage train_cam: re-running: method.cam.optim.lr changed (0.0001 → 0.0002)" in log


def test_per_image_stage_workers_give_the_same_artefacts(synth, bes_run, tmp_path):
    """Two worker processes (engine.stage_workers=2) write exactly what one process writes."""
    work = tmp_path / "workers"
    shutil.copytree(bes_run[0], work)
    summary = run_pipeline(tiny_cfg("bes", synth, work, ["engine.stage_workers=2"]),
                           only=["make_boundary_labels", "make_pseudo_masks"], force=True)
    assert list(summary) == ["make_boundary_labels", "make_pseudo_masks"]
    assert "2 processes" in (work / "run.log").read_text()
    for stage in ("make_boundary_labels", "make_pseudo_masks"):
        for sid in train_ids(synth):
            new = np.asarray(Image.open(work / stage / f"{sid}.png"))
            old = np.asarray(Image.open(bes_run[0] / stage / f"{sid}.png"))
            assert np.array_equal(new, old), (stage, sid)  # rank 0's share of sorted(ids)[0::2]


def test_fingerprint_ignores_new_settings_at_their_default(monkeypatch):
    """A setting that a later weakseg adds (at its default) leaves finished stages valid; setting it does not."""
    from weakseg.engine import pipeline

    cfg = load_config(PRESETS["bes"])
    stages = METHODS["bes"].stages(cfg)
    now = pipeline.fingerprints(stages, cfg)
    real = pipeline.stage_values

    def without_new_key(stage, cfg_dict):  # what an older weakseg saw: no backbone_options key at all
        return {k: v for k, v in real(stage, cfg_dict).items() if not k.endswith("backbone_options")}

    monkeypatch.setattr(pipeline, "stage_values", without_new_key)
    assert pipeline.fingerprints(stages, cfg)["train_cam"][0] == now["train_cam"][0]
    monkeypatch.undo()
    changed = load_config(PRESETS["bes"], ["method.cam.model.backbone_options={stride_in_1x1: true}"])
    assert pipeline.fingerprints(METHODS["bes"].stages(changed), changed)["train_cam"][0] != now["train_cam"][0]


def test_run_status_names_what_changed(synth, bes_run, capsys):
    argv = ["run", str(PRESETS["bes"]), "--status"] + [a for o in overrides(synth, bes_run[0], ["method.walk.beta=4.0"])
                                                       for a in ("--set", o)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train_cam              complete  [method.cam]" in out
    assert "make_pseudo_masks      stale: method.walk.beta changed (5.0 → 4.0)" in out
    assert "train_seg              stale: input stage make_pseudo_masks changed" in out


def test_explain_change_names_a_newly_declared_path_only_off_its_default():
    from weakseg.engine.pipeline import FORMAT, explain_change

    cfg = load_config(PRESETS["bes"])
    old = {"format": FORMAT, "values": {"data.label_dir": "SegmentationClass"}, "reads": {"make_cam": "a"}}
    values = {"data.label_dir": "SegmentationClass", "eval.absent": "zero"}  # a later weakseg declares eval.absent
    assert explain_change(old, values, {"make_cam": "b"}, cfg) == "input stage make_cam changed"
    assert "eval.absent set ('zero')" in explain_change(old, values, {"make_cam": "b"})  # without cfg: listed
    nan = load_config(PRESETS["bes"], ["eval.absent=nan"])
    assert "eval.absent set ('nan')" in explain_change(old, {**values, "eval.absent": "nan"}, {"make_cam": "a"}, nan)


def test_a_training_stage_does_not_depend_on_what_ran_before_it_in_the_process(synth, bes_run, tmp_path):
    """train_seg re-run alone, after other random draws in this process, gives the weights the whole pipeline gave
    (the stage's network is built after seeding, not from whatever state earlier stages left)."""
    work, _ = bes_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    torch.rand(1000), np.random.rand(10)  # move the global random states
    run_pipeline(tiny_cfg("bes", synth, copy), only=["train_seg"], force=True)
    a = torch.load(work / "train_seg" / "model_final.pth", weights_only=True)["model"]
    b = torch.load(copy / "train_seg" / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
