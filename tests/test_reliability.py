"""Reliability: exact resume after SIGKILL, NaN/inf losses, failing writes, the work-folder lock and one-line errors
for bad input (issue 15)."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.cli import main
from weakseg.engine.checkpoint import latest_checkpoint, load_checkpoint
from weakseg.engine.config import load_config
from weakseg.engine.runtime import WorkDirBusy, WorkDirLock, isolated_rng, sample_seed, unwrap_worker_error
from weakseg.engine.trainer import NonFiniteLossError, Trainer
from weakseg.utils.io import DataError, WriteError, save_label_png, write_bytes_atomic

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/full/full_mnv2-os32-uper_b8-300i_synth-96.yaml"
TINY = [
    "model.backbone=mobilenet_v2", "model.pretrained=null", "model.head=deeplabv3plus",
    "model.head_kwargs={aspp_channels: 16}", "data.crop_size=48", "engine.batch_size=4", "data.num_workers=0",
    "engine.log_interval=1", "engine.tensorboard=false", "eval.save_overlays=0", "schedule.warmup_iters=0",
    "engine.threads=1", "engine.device=cpu",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from weakseg.data.synth import generate_synth

    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_images=16, size=48, seed=5)
    return root


def cli_sets(sets: list[str]) -> list[str]:
    out = []
    for s in sets:
        out += ["--set", s]
    return out


# ---------------------------------------------------------------------------------------------------------------
# exact resume

# runs `weakseg train` in a child process; with KILL_AT=n the child SIGKILLs itself when it asks for the batch of
# iteration n (0-based), i.e. after iteration n has been logged and possibly after later lines than the checkpoint
_CHILD = textwrap.dedent("""
    import os, signal, sys
    from weakseg.engine import trainer
    kill_at = int(os.environ.get("KILL_AT", "-1"))
    original = trainer.Trainer._next_batch
    calls = {"n": 0}
    def next_batch(self, data_iter):
        if self.start_iter + calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls["n"] += 1
        return original(self, data_iter)
    trainer.Trainer._next_batch = next_batch
    from weakseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_child(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", KILL_AT=str(kill_at if kill_at is not None else -1))
    return subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def iteration_lines(log_text: str) -> list[str]:
    """The per-iteration log lines without their time stamp and speed."""
    lines = [ln.split(" ", 1)[1] for ln in log_text.splitlines() if re.match(r"^\S+ (it \d+/|selection at)", ln)]
    return [re.sub(r"\s+\([\d.]+ it/s\)$", "", ln) for ln in lines]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigkill_and_resume_equals_uninterrupted_run(synth_root, tmp_path, workers):
    sets = [f"data.root={synth_root}", *TINY, "schedule.iters=7", "engine.ckpt_interval=2",
            f"data.num_workers={workers}", "data.color_jitter=[0.3,0.3,0.3,0.05]",
            "engine.best.interval=3", "engine.best.holdout=0.25"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    args = ["train", str(PRESET), "--no-eval", *cli_sets(sets)]
    done = run_child([*args, "--set", f"engine.work_dir={ref}"])
    assert done.returncode == 0, done.stderr[-2000:]

    # killed after iteration 5 was logged; the newest checkpoint is that of iteration 4
    killed = run_child([*args, "--set", f"engine.work_dir={cut}"], kill_at=5)
    assert killed.returncode == -9
    assert latest_checkpoint(cut / "checkpoints").name == "iter_0000004.pth"
    assert not (cut / "model_final.pth").exists()
    assert not list(cut.rglob("*.tmp*"))  # no half-written file
    resumed = run_child([*args, "--set", f"engine.work_dir={cut}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    for name in ("model_final.pth", "model_best.pth"):
        a, b = load_checkpoint(ref / name)["model"], load_checkpoint(cut / name)["model"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: weights differ after resume"
    res_a, res_b = json.loads((ref / "result.json").read_text()), json.loads((cut / "result.json").read_text())
    assert res_a["best"]["value"] == res_b["best"]["value"] and res_a["best"]["iteration"] == res_b["best"]["iteration"]
    # the log holds every iteration once, with the same values; the interrupted run's extra lines are set aside
    log_a, log_b = (ref / "train.log").read_text(), (cut / "train.log").read_text()
    assert iteration_lines(log_a) == iteration_lines(log_b)
    assert [ln.split("  ")[0] for ln in iteration_lines(log_b) if ln.startswith("it ")] == \
        [f"it {i}/7" for i in range(1, 8)]
    assert "it 5/7" in (cut / "train.interrupted.log").read_text()


def test_sample_augmentation_depends_only_on_seed_and_position():
    assert sample_seed(0, 0, 5) == sample_seed(0, 0, 5)
    assert len({sample_seed(0, 0, 5), sample_seed(0, 1, 5), sample_seed(0, 0, 6), sample_seed(1, 0, 5)}) == 4
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with isolated_rng(sample_seed(0, 0, 5)):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    with isolated_rng(sample_seed(0, 0, 5)):
        assert torch.equal(torch.rand(3), a)


# ---------------------------------------------------------------------------------------------------------------
# NaN / inf losses


def _nan_from(trainer: Trainer, step_from: int, key: str = "loss_ce"):
    original = trainer.method.training_step

    def step(batch, it):
        out = original(batch, it)
        if it >= step_from:
            out[key] = out[key] * float("nan")
        return out

    trainer.method.training_step = step


def test_nonfinite_loss_stops_at_its_iteration_keeping_the_last_checkpoint(synth_root, tmp_path):
    cfg = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path}", *TINY, "schedule.iters=6",
                               "engine.ckpt_interval=2"])
    trainer = Trainer(cfg)
    _nan_from(trainer, 3)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "iteration 3" in msg and "loss_ce = nan" in msg and "iter_0000002.pth" in msg
    assert latest_checkpoint(tmp_path / "checkpoints").name == "iter_0000002.pth"
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "iter_0000002.pth")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_loss_skip_counts_and_keeps_weights_finite(synth_root, tmp_path):
    cfg = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path}", *TINY, "schedule.iters=5",
                               "engine.ckpt_interval=0", "engine.nonfinite=skip", "engine.max_skipped=2"])
    trainer = Trainer(cfg)
    original = trainer.method.training_step

    def step(batch, it):
        out = original(batch, it)
        if it in (1, 3):
            out["loss_ce"] = out["loss_ce"] * float("inf")
        return out

    trainer.method.training_step = step
    path = trainer.fit()
    assert trainer.skipped == 2
    weights = load_checkpoint(path)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert "(2 steps skipped)" in (tmp_path / "train.log").read_text()
    # a third one is more than engine.max_skipped allows
    cfg2 = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path / 'b'}", *TINY,
                                "schedule.iters=5", "engine.nonfinite=skip", "engine.max_skipped=2"])
    trainer = Trainer(cfg2)
    _nan_from(trainer, 1)
    with pytest.raises(NonFiniteLossError, match="iteration 3.*after 2 skipped steps"):
        trainer.fit()


# ---------------------------------------------------------------------------------------------------------------
# failing writes


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(synth_root, tmp_path, monkeypatch):
    import weakseg.utils.io as wio

    cfg = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path}", *TINY, "schedule.iters=6",
                               "engine.ckpt_interval=2"])
    trainer = Trainer(cfg)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "iter_0000004.pth":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(wio.os, "replace", replace)
    with pytest.raises(WriteError, match=r"iter_0000004\.pth: cannot write \(No space left on device\)"):
        trainer.fit()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter_0000002.pth"]  # no temporaries
    assert load_checkpoint(tmp_path / "checkpoints" / "iter_0000002.pth")["iteration"] == 2


def test_write_errors_name_the_file_and_keep_the_old_content(tmp_path, monkeypatch):
    import weakseg.utils.io as wio

    target = tmp_path / "out" / "a.bin"
    write_bytes_atomic(target, b"old")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(wio.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError) as info:
        write_bytes_atomic(target, b"new")
    assert str(info.value) == f"{target}: cannot write (Read-only file system)" and info.value.errno == errno.EROFS
    assert target.read_bytes() == b"old"


def test_cli_write_error_is_one_line(synth_root, tmp_path, capsys, monkeypatch):
    import weakseg.utils.io as wio

    work = tmp_path / "w"
    monkeypatch.setattr(wio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS,
                                                                                    "Read-only file system")))
    rc = main(["train", str(PRESET), *cli_sets([f"data.root={synth_root}", f"engine.work_dir={work}", *TINY,
                                                "schedule.iters=1"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"weakseg: error: {work / 'config.yaml'}: cannot write (Read-only file system)"


# ---------------------------------------------------------------------------------------------------------------
# one run per work folder


def test_second_run_on_a_busy_work_folder_is_refused(synth_root, tmp_path, capsys):
    work = tmp_path / "busy"
    with WorkDirLock(work, "test"):
        with pytest.raises(WorkDirBusy, match="already in use by process"):
            with WorkDirLock(work):
                pass
        rc = main(["train", str(PRESET), *cli_sets([f"data.root={synth_root}", f"engine.work_dir={work}", *TINY,
                                                    "schedule.iters=1"])])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"weakseg: error: {work}: already in use by process {os.getpid()}")
    # a process killed while holding the lock does not leave it stuck
    code = (f"import os, signal; from weakseg.engine.runtime import WorkDirLock; "
            f"l = WorkDirLock({str(work)!r}).__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -9
    with WorkDirLock(work):
        pass


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line naming the file, or a counted skip


def _copy_synth(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_image_in_a_loader_worker_is_one_line(synth_root, tmp_path, capsys):
    root = _copy_synth(synth_root, tmp_path / "data")
    train_ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    bad = root / "JPEGImages" / f"{train_ids[0]}.png"
    bad.write_bytes(b"not a jpeg")
    sets = [f"data.root={root}", f"engine.work_dir={tmp_path / 'w'}", *TINY, "schedule.iters=4",
            "data.num_workers=1"]
    assert main(["train", str(PRESET), *cli_sets(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"weakseg: error: {bad}: cannot read image") and not any("Caught" in e for e in err)


def test_unwrap_worker_error_keeps_type_and_message():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\n    raise DataError('a')\n"
                        "weakseg.utils.io.DataError: /d/x.jpg: cannot read image (bad)\n")
    plain = unwrap_worker_error(wrapped)
    assert type(plain) is DataError and str(plain) == "/d/x.jpg: cannot read image (bad)"
    other = ValueError("plain")
    assert unwrap_worker_error(other) is other


def test_simulate_scribbles_refuses_out_of_range_values(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("a\nb\n")
    label = np.zeros((32, 32), np.uint8)
    label[8:24, 8:24] = 1
    save_label_png(tmp_path / "SegmentationClass" / "a.png", label)
    label[0:4, 0:4] = 37  # not a VOC class (21 classes), not 255
    save_label_png(tmp_path / "SegmentationClass" / "b.png", label)
    rc = main(["data", "simulate-scribbles", "--root", str(tmp_path), "--list", "list.txt", "--out", "Scr"])
    captured = capsys.readouterr()
    assert rc == 0 and "1 written, 1 skipped" in captured.out
    assert f"{tmp_path / 'SegmentationClass' / 'b.png'}: values [37] are not class ids (< 21) or 255" in captured.err
    assert (tmp_path / "Scr" / "a.png").exists() and not (tmp_path / "Scr" / "b.png").exists()


def test_scribble_xml_with_a_huge_declared_size_needs_images_or_max_size(tmp_path, capsys):
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "big.xml").write_text("<annotation><size><width>20000</width><height>20000</height></size><polygon>"
                                 "<tag>cat</tag><point><X>1</X><Y>1</Y></point></polygon></annotation>")
    (xml / "wide.xml").write_text("<annotation><size><width>5000</width><height>4</height></size><polygon>"
                                  "<tag>cat</tag><point><X>1</X><Y>1</Y></point></polygon></annotation>")
    out = tmp_path / "png"
    assert main(["data", "scribbles", "--xml", str(xml), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{xml / 'big.xml'}: declared size 20000x20000 (HxW) is larger than 4096" in err
    assert "--images" in err and "--max-size 20000" in err and not out.exists()
    assert main(["data", "scribbles", "--xml", str(xml), "--out", str(out), "--max-size", "5000"]) == 0
    assert (out / "wide.png").exists() and not (out / "big.png").exists()


@pytest.fixture(scope="module")
def tiny_ckpt(synth_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ckpt")
    assert main(["train", str(PRESET), "--no-eval", *cli_sets([f"data.root={synth_root}", f"engine.work_dir={work}",
                                                               *TINY, "schedule.iters=1"])]) == 0
    return work / "model_final.pth"


def test_predict_bad_image_stops_after_writing_the_batch_or_skips_with_a_count(synth_root, tmp_path, capsys,
                                                                               tiny_ckpt):
    images = tmp_path / "img"
    images.mkdir()
    for k, src in enumerate(sorted((synth_root / "JPEGImages").iterdir())[:4]):
        shutil.copy(src, images / f"{k}_{src.name}")
    bad = images / "2_bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "pred"
    rc = main(["predict", str(images), "--ckpt", str(tiny_ckpt), "--out", str(out), "--batch-size", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"weakseg: error: {bad}: cannot read image")
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p.stem}.png" for p in images.iterdir()
                                                              if p.name < "2_bad.jpg")  # the batch before it
    rc = main(["predict", str(images), "--ckpt", str(tiny_ckpt), "--out", str(out), "--skip-bad"])
    cap = capsys.readouterr()
    assert rc == 0 and "1 unreadable skipped" in cap.out and f"{bad}" in cap.err
    assert len(list(out.glob("*.png"))) == 4  # every readable image


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises((DataError, OSError)):
        main(["--debug", "data", "trainaug", "--root", str(tmp_path / "nope")])


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"weakseg: error: {tmp_path / 'missing.pth'}: checkpoint not found"]



def test_replace_marked_section(tmp_path):
    from weakseg.utils.io import replace_marked_section

    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- x-table -->\nold\n<!-- /x-table -->\ntail\n")
    assert replace_marked_section(readme, "x-table", "| a |\n|---|\n")
    assert readme.read_text() == "# t\n<!-- x-table -->\n| a |\n|---|\n<!-- /x-table -->\ntail\n"
    assert not replace_marked_section(readme, "y-table", "z")  # no markers: nothing written
    with pytest.raises(ValueError, match="no <!-- y-table -->"):
        replace_marked_section(readme, "y-table", "z", required=True)
