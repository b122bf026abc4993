"""A per-image stage killed with SIGKILL while writing: no output is truncated, the resumed stage finishes, and its
outputs equal those of an uninterrupted run byte for byte."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from weakseg.engine.config import load_config
from weakseg.engine.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/bes/bes_mnv2-os16_b16-8e_synth-128.yaml"
TINY = [
    "model.pretrained=null", "method.cam.model.pretrained=null", "method.cam.schedule.epochs=1",
    "method.cam.batch_size=4", "method.cam.crop_size=48", "method.cam.resize_long=[48,64]",
    "method.cam.scales=[1.0,0.5]", "data.num_workers=0", "engine.tensorboard=false", "engine.threads=1",
    "engine.device=cpu", "engine.stage_workers=1",
]

# the child dies (SIGKILL) inside the atomic write of its KILL_AT-th CAM file: written to a temporary, not renamed
_CHILD = textwrap.dedent("""
    import os, signal, sys
    kill_at = int(os.environ["KILL_AT"])
    real_replace = os.replace
    count = {"n": 0}
    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".npz"):
            count["n"] += 1
            if count["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    from weakseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_killed_per_image_stage_resumes_to_the_same_outputs(tmp_path):
    from weakseg.data.synth import generate_synth

    root = tmp_path / "synth"
    generate_synth(root, num_images=12, size=64, seed=7)
    sets = [f"data.root={root}", *TINY]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_pipeline(load_config(PRESET, [*sets, f"engine.work_dir={ref}"]), only=["train_cam", "make_cam"])

    argv = ["run", str(PRESET), "--only", "train_cam", "--only", "make_cam"]
    for s in [*sets, f"engine.work_dir={cut}"]:
        argv += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", KILL_AT="6")
    killed = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    stage = cut / "make_cam"
    finished = sorted(p for p in stage.glob("*.npz") if not p.name.startswith("."))
    assert len(finished) == 5 and not (stage / "_done.json").exists()
    assert len(list(stage.glob(".*.tmp*"))) == 1  # the item being written when the process died
    for path in finished:  # every output under its final name is complete
        with np.load(path) as data:
            assert set(data.files) == {"cams", "high_res", "keys"}

    env["KILL_AT"] = "-1"
    resumed = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env, capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage train_cam: complete" in (cut / "run.log").read_text()
    assert not list(stage.glob(".*.tmp*"))
    names = sorted(p.name for p in (ref / "make_cam").glob("*.npz"))
    assert len(names) == 10 and sorted(p.name for p in stage.glob("*.npz")) == names
    for name in names:
        assert (stage / name).read_bytes() == (ref / "make_cam" / name).read_bytes(), name


def test_npz_artefacts_are_a_function_of_their_arrays(tmp_path):
    """No time stamp in the file: the same arrays written a few seconds apart give the same bytes."""
    import time

    from weakseg.utils.io import load_npz, save_npz_atomic

    arrays = {"cams": np.random.default_rng(0).random((2, 3, 4)).astype(np.float16), "keys": np.arange(2)}
    save_npz_atomic(tmp_path / "a.npz", **arrays)
    time.sleep(2.1)  # zip time stamps have a 2 s resolution
    save_npz_atomic(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = load_npz(tmp_path / "a.npz")
    assert list(back) == ["cams", "keys"] and all(np.array_equal(back[k], v) for k, v in arrays.items())
