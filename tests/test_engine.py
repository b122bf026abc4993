"""Trainer, checkpoints/resume, evaluation, prediction and the CLI on a tiny synthetic dataset."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.cli import main
from weakseg.engine.checkpoint import latest_checkpoint, load_checkpoint
from weakseg.engine.config import load_config
from weakseg.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.backbone=mobilenet_v2", "model.pretrained=null", "model.head=deeplabv3plus",
    "model.head_kwargs={aspp_channels: 16}", "data.crop_size=48", "engine.batch_size=4", "data.num_workers=0",
    "engine.log_interval=2", "engine.tensorboard=false", "eval.save_overlays=2", "schedule.warmup_iters=0",
]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from weakseg.data.synth import generate_synth

    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_images=24, size=64, seed=3)
    return root


def tiny_cfg(synth_root, work_dir, method="full", extra=()):
    preset = ROOT / "configs" / ("full/full_mnv2-os32-uper_b8-300i_synth-96.yaml" if method == "full"
                                 else "partial_ce/partial-ce_mnv2-os32-uper_b8-300i_synth-96.yaml")
    return load_config(preset, [f"data.root={synth_root}", f"engine.work_dir={work_dir}", *TINY, *extra])


def test_train_checkpoint_resume_and_eval(synth_root, tmp_path):
    work = tmp_path / "run"
    cfg = tiny_cfg(synth_root, work, extra=["schedule.iters=4", "engine.ckpt_interval=2", "schedule.warmup_iters=0"])

    # interrupt the run at iteration 3: the checkpoint of iteration 2 must be there and complete
    class Stop(Exception):
        pass

    trainer = Trainer(cfg)
    original = trainer.method.training_step

    def failing(batch, step):
        if step == 3:
            raise Stop
        return original(batch, step)

    trainer.method.training_step = failing
    with pytest.raises(Stop):
        trainer.fit()
    ckpt_path = latest_checkpoint(work / "checkpoints")
    assert ckpt_path is not None and ckpt_path.name == "iter_0000002.pth"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["iteration"] == 2 and ckpt["optimizer"] is not None
    assert ckpt["config"]["engine"]["batch_size"] == 4
    assert not list((work / "checkpoints").glob("*.tmp*"))  # atomic writes leave no temporaries

    # a fresh run refuses to overwrite, --resume continues at iteration 2
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg)
    resumed = Trainer(cfg, resume=True)
    assert resumed.start_iter == 2
    before = {k: v.clone() for k, v in resumed.method.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in ckpt["model"].items())
    resumed.fit()
    assert (work / "model_final.pth").exists() and (work / "config.yaml").exists()
    final = load_checkpoint(work / "model_final.pth")
    assert final["iteration"] == 4 and final["optimizer"] is None
    metrics = resumed.evaluate(work / "eval")
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["images"] > 0
    assert (work / "eval" / "metrics.json").exists() and (work / "eval" / "report.md").exists()
    assert len(list((work / "eval" / "predictions").glob("*.png"))) == metrics["images"]
    assert (work / "eval" / "overlays.png").exists()


def test_partial_ce_trains_on_scribbles_only(synth_root, tmp_path):
    cfg = tiny_cfg(synth_root, tmp_path / "pce", method="partial_ce", extra=["schedule.iters=2"])
    trainer = Trainer(cfg)
    sample = trainer.train_dataset[0]
    assert "scribble" in sample and "label" not in sample  # weak supervision never loads dense masks
    trainer.fit()


def test_cli_train_eval_predict_and_errors(synth_root, tmp_path, capsys):
    work = tmp_path / "cli"
    preset = ROOT / "configs/full/full_mnv2-os32-uper_b8-300i_synth-96.yaml"
    sets = [f"data.root={synth_root}", f"engine.work_dir={work}", *TINY, "schedule.iters=2"]
    args = ["train", str(preset)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert "mIoU" in capsys.readouterr().out
    ckpt = work / "model_final.pth"

    out = tmp_path / "ev"
    assert main(["eval", "--ckpt", str(ckpt), "--out", str(out), "--scales", "0.75", "1.0", "--flip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["scales"] == [0.75, 1.0] and metrics["eval"]["flip"] is True

    images = synth_root / "JPEGImages"
    pred = tmp_path / "pred"
    assert main(["predict", str(images), "--ckpt", str(ckpt), "--out", str(pred), "--overlay", "--probs"]) == 0
    n = len(list(images.iterdir()))
    assert len(list(pred.glob("*.png"))) == n
    probs = np.load(next((pred / "probs").glob("*.npy")))
    assert probs.shape[0] == metrics["iou"].__len__()
    capsys.readouterr()
    assert main(["predict", str(images), "--ckpt", str(ckpt), "--out", str(pred)]) == 0
    assert f"0 predicted, {n} already done" in capsys.readouterr().out  # resume: nothing is redone

    # dense CRF post-processing in 2 worker processes, on a list file of 3 images
    listing = tmp_path / "three.txt"
    listing.write_text("\n".join(str(p) for p in sorted(images.iterdir())[:3]) + "\n")
    crf_out = tmp_path / "pred_crf"
    assert main(["predict", str(listing), "--ckpt", str(ckpt), "--out", str(crf_out), "--crf", "blpseg",
                 "--crf-workers", "2"]) == 0
    assert len(list(crf_out.glob("*.png"))) == 3
    assert main(["eval", "--ckpt", str(ckpt), "--out", str(tmp_path / "ev_crf"), "--crf", "blpseg",
                 "--crf-workers", "1"]) == 0
    assert json.loads((tmp_path / "ev_crf" / "metrics.json").read_text())["eval"]["crf"] == "blpseg"

    # ONNX export with dynamic sizes, checked against PyTorch inside the command
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--onnx", str(onnx_path), "--height", "64", "--width", "96"]) == 0
    assert onnx_path.stat().st_size > 0
    assert "max |onnx - torch|" in capsys.readouterr().out

    # bad inputs: clear messages, exit code 2
    assert main(["train", str(preset), "--set", "engine.batch_sise=2"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.jpg"), "--ckpt", str(ckpt), "--out", str(pred)]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_checkpoint_loading_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_empty_train_list_is_an_error(synth_root, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = tiny_cfg(synth_root, tmp_path / "e", extra=[f"data.train_list={empty}"])
    with pytest.raises(Exception, match="empty"):
        Trainer(cfg)


def torchrun_train(preset: Path, port: int, sets: list[str]) -> None:
    """`torchrun --nproc_per_node=2 -m weakseg train PRESET --set …` on CPU (gloo); fails with the ranks' stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "weakseg", "train", str(preset)]
    for s in [*sets, "engine.device=cpu"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_cpu(synth_root, tmp_path):
    """torchrun with 2 CPU ranks (gloo): global batch split, identical weights, sharded evaluation."""
    work = tmp_path / "ddp"
    torchrun_train(ROOT / "configs/full/full_mnv2-os32-uper_b8-300i_synth-96.yaml", 29533,
                   [f"data.root={synth_root}", f"engine.work_dir={work}", *TINY, "schedule.iters=3",
                    "engine.ckpt_interval=2"])
    log = (work / "train.log").read_text()
    assert "on 2 cpu rank(s)" in log
    result = json.loads((work / "result.json").read_text())
    assert result["metrics"]["images"] == len((synth_root / "ImageSets/Segmentation/val.txt").read_text().split())
    assert load_checkpoint(work / "model_final.pth")["iteration"] == 3


BLPSEG_PRESET = ROOT / "configs/blpseg/blpseg_mnv2-os32_b8-300i_synth-96.yaml"
BLPSEG_TINY = ["model.pretrained=null", "model.head_kwargs={pool_scales: [1, 2], dropout: 0.1}",
               "method.decoder_channels=16", "method.lam_sigma=2.0", "data.crop_size=48", "engine.batch_size=4",
               "data.num_workers=0", "engine.tensorboard=false", "eval.save_overlays=0", "schedule.warmup_iters=0",
               "engine.log_interval=1", "method.self_training_start=2"]


def test_blpseg_cli_train_resume_and_eval(synth_root, tmp_path, capsys):
    """`weakseg train configs/blpseg/…`: scribbles only, the self-training switch inside the run, resume, eval."""
    work = tmp_path / "blp"
    args = ["train", str(BLPSEG_PRESET)]
    for s in [f"data.root={synth_root}", f"engine.work_dir={work}", *BLPSEG_TINY, "schedule.iters=2",
              "engine.ckpt_interval=2"]:
        args += ["--set", s]
    assert main(args) == 0
    capsys.readouterr()
    # continue the finished 2-iteration run to 4 iterations: starts from the checkpoint, crosses self_training_start
    assert main([*args, "--set", "schedule.iters=4", "--resume"]) == 0
    log = (work / "train.log").read_text()
    # the running averages continue from the checkpoint: self_training 0 → 1 shows as 0.1 (0.9 · 0 + 0.1 · 1)
    assert "resumed from" in log and "it 3/4" in log and "self_training 0.1000" in log
    assert "self_training 0.0000" in log  # iterations 1–2 trained on the scribbles
    assert "different settings" not in log   # a longer schedule is what resuming is for
    final = load_checkpoint(work / "model_final.pth")
    assert final["iteration"] == 4 and not any("lam" in k for k in final["model"])
    result = json.loads((work / "result.json").read_text())
    assert 0.0 < result["metrics"]["miou"] <= 1.0
    out = tmp_path / "ev"
    assert main(["eval", "--ckpt", str(work / "model_final.pth"), "--out", str(out), "--scales", "0.75", "1.0",
                 "--flip"]) == 0
    assert json.loads((out / "metrics.json").read_text())["images"] == result["metrics"]["images"]
    # resuming with other method settings is allowed but said loudly, naming the keys
    assert main([*args, "--set", "schedule.iters=4", "--set", "method.gamma=1.0", "--resume"]) == 0
    log = (work / "train.log").read_text()
    assert "different settings" in log and "method.gamma: 2.0 → 1.0" in log and "schedule.iters" not in log


@pytest.mark.slow
def test_blpseg_ddp_two_processes_cpu(synth_root, tmp_path):
    """torchrun, 2 CPU ranks: BLPSeg's three branches (seg, detached annotation head, LAM embedding) all sync."""
    work = tmp_path / "blp-ddp"
    torchrun_train(BLPSEG_PRESET, 29537, [f"data.root={synth_root}", f"engine.work_dir={work}", *BLPSEG_TINY,
                                          "schedule.iters=3", "engine.ckpt_interval=3"])
    log = (work / "train.log").read_text()
    assert "on 2 cpu rank(s)" in log
    # the logged values are running means (0.9/0.1): > 0 at iteration 3 only if the switch happened there
    assert float(re.search(r"it 3/3 .*self_training ([0-9.]+)", log).group(1)) > 0
    assert float(re.search(r"it 2/3 .*self_training ([0-9.]+)", log).group(1)) == 0
    assert load_checkpoint(work / "model_final.pth")["iteration"] == 3
