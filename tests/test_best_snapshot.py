"""Best-snapshot selection (engine.best): the held-out split, the tracker and model_best.pth."""

import json
import math
from pathlib import Path

import pytest

from weakseg.engine.best import VAL_NOTE, BestTracker, holdout_ids
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.config import ConfigError, load_config
from weakseg.engine.trainer import Trainer, train
from weakseg.utils.io import DataError

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/full/full_mnv2-os32-uper_b8-300i_synth-96.yaml"
TINY = [
    "model.backbone=mobilenet_v2", "model.pretrained=null", "model.head=deeplabv3plus",
    "model.head_kwargs={aspp_channels: 16}", "data.crop_size=48", "engine.batch_size=4", "data.num_workers=0",
    "engine.log_interval=1", "engine.tensorboard=false", "eval.save_overlays=0", "eval.save_predictions=false",
    "schedule.warmup_iters=0", "engine.threads=1", "engine.device=cpu", "engine.ckpt_interval=0",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from weakseg.data.synth import generate_synth

    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_images=16, size=48, seed=7)
    return root


def test_holdout_ids_are_a_fixed_fraction_independent_of_order():
    ids = [f"img{i:03d}" for i in range(40)]
    held = holdout_ids(ids, 0.1)
    assert len(held) == 4 and set(held) <= set(ids)
    assert set(holdout_ids(list(reversed(ids)), 0.1)) == set(held)  # list order does not matter
    assert set(held) < set(holdout_ids(ids, 0.2))  # a larger fraction extends the smaller one
    assert len(holdout_ids(ids[:3], 0.01)) == 1  # at least one
    with pytest.raises(ConfigError, match="nothing to train on"):
        holdout_ids(["a", "b"], 0.9)


def test_tracker_keeps_the_first_strict_best_and_ignores_nan():
    t = BestTracker(metric="miou", split="holdout")
    scores = [0.5, 0.4, 0.5, float("nan"), 0.6, 0.55]
    improved = [t.update(10 * (k + 1), {"miou": s}) for k, s in enumerate(scores)]
    assert improved == [True, False, False, False, True, False]
    assert (t.value, t.iteration) == (0.6, 50) and len(t.history) == 6
    again = BestTracker(metric="miou", split="holdout")
    again.load_state_dict(t.state_dict())
    assert (again.value, again.iteration) == (0.6, 50) and math.isnan(again.history[3][1])
    assert not again.update(70, {"miou": 0.6})


def test_training_keeps_model_best_selected_on_the_holdout(synth_root, tmp_path):
    cfg = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path}", *TINY, "schedule.iters=3",
                               "engine.best.interval=1", "engine.best.holdout=0.25"])
    result = train(cfg, evaluate_after=False)
    best = result["best"]
    assert best["split"] == "holdout (0.25 of the train ids)" and best["metric"] == "miou" and "note" not in best
    assert best["iteration"] in (1, 2, 3) and 0.0 <= best["value"] <= 1.0
    ckpt = load_checkpoint(tmp_path / "model_best.pth")
    assert ckpt["iteration"] == best["iteration"] and ckpt["extra"]["best"]["value"] == best["value"]
    assert (tmp_path / "model_final.pth").exists()
    # the held-out ids are not trained on: round(0.25 · 13) = 3 of the 13 train ids
    log = (tmp_path / "train.log").read_text()
    assert "3 of 13 training ids held out" in log and log.count("selection at it") == 3


def test_holdout_without_ground_truth_is_a_clear_error(synth_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    shutil.rmtree(root / "SegmentationClass")
    cfg = load_config(PRESET, [f"data.root={root}", f"engine.work_dir={tmp_path / 'w'}", *TINY, "schedule.iters=1",
                               "engine.best.interval=1", "method.name=full"])
    with pytest.raises(DataError, match="engine.best.split = holdout scores against the ground truth"):
        Trainer(cfg)


def test_val_selection_is_stated_in_the_result(synth_root, tmp_path):
    cfg = load_config(PRESET, [f"data.root={synth_root}", f"engine.work_dir={tmp_path}", *TINY, "schedule.iters=2",
                               "engine.best.interval=2", "engine.best.split=val"])
    result = train(cfg, evaluate_after=True)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["best"]["split"] == "val" and saved["best"]["note"] == VAL_NOTE
    assert "miou" in saved["best"]["metrics"] and result["best"]["iteration"] == 2


def test_best_config_is_validated():
    with pytest.raises(ConfigError, match="engine.best.holdout"):
        load_config(PRESET, ["engine.best.holdout=1.5"])
    with pytest.raises(ConfigError, match="engine.best.metric"):
        load_config(PRESET, ["engine.best.metric=loss"])
