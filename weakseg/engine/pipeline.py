"""``weakseg run``: executes the stages a multi-stage method declares (``Method.stages(cfg)``), in order.

Each stage runs alone or in sequence, is skipped when its ``_done.json`` matches the current config, and resumes
image by image (per-image stages) or from its newest checkpoint (training stages). Per-image stages are sharded
over torchrun ranks; rank 0 writes the completion marker after a barrier.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from weakseg.engine import builders
from weakseg.engine.amp import autocast_dtype
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.evaluator import evaluate
from weakseg.engine.config import Config, ConfigError, config_from_dict, config_hash, dump_yaml, resolve_work_dir, to_dict
from weakseg.engine.trainer import Trainer, setup_logging
from weakseg.methods import METHODS
from weakseg.methods.stages import EvalStage, PerImageStage, StageContext, TrainStage
from weakseg.utils import dist as wdist
from weakseg.utils.io import load_json, write_json_atomic, write_text_atomic

log = logging.getLogger("weakseg")
DONE = "_done.json"


def stage_hash(cfg: Config) -> str:
    """What a stage's artefacts depend on: data, model and method sections (not engine/eval details)."""
    d = to_dict(cfg)
    return config_hash({"data": d["data"], "model": d["model"], "method": d["method"]})


def method_stages(cfg: Config) -> list:
    cls = METHODS[cfg.method.name]
    if not hasattr(cls, "stages"):
        raise ConfigError(f"method {cfg.method.name!r} is single-stage: use `weakseg train`")
    return cls.stages(cfg)


def select_stages(stages: list, from_stage: str | None, only: list[str] | None) -> list:
    names = [s.name for s in stages]
    for n in ([from_stage] if from_stage else []) + list(only or []):
        if n not in names:
            raise ConfigError(f"unknown stage {n!r}; the stages are: {', '.join(names)}")
    if only:
        return [s for s in stages if s.name in only]
    if from_stage:
        return stages[names.index(from_stage):]
    return stages


def is_done(stage_dir: Path, h: str) -> bool:
    marker = stage_dir / DONE
    if not marker.exists():
        return False
    info = load_json(marker)
    return info.get("config_hash") == h


def run_pipeline(cfg: Config, from_stage: str | None = None, only: list[str] | None = None,
                 force: bool = False) -> dict:
    """Run the selected stages; stages named by ``from_stage``/``only`` are redone when ``force``.

    Returns ``{stage: info}`` with the completion info of every stage that ran or was already complete.
    """
    device = wdist.init_distributed(cfg.engine.device)
    if cfg.engine.threads:  # per-image stages run in this process too, not only the trainer
        torch.set_num_threads(cfg.engine.threads)
    work_dir = resolve_work_dir(cfg)
    setup_logging(work_dir, "run.log")
    if wdist.is_main():
        write_text_atomic(work_dir / "config.yaml", dump_yaml(cfg))
    meta = builders.dataset_meta(cfg)
    amp_dtype = autocast_dtype(cfg.eval.amp, device)  # inference stages: fp32 unless eval.amp asks

    def evaluate_fn(method, dataset, out_dir: Path) -> dict:
        method.to(device)
        return evaluate(method, dataset, cfg.eval, meta, out_dir, device, mean=cfg.data.mean, std=cfg.data.std,
                        amp_dtype=amp_dtype, channels_last=cfg.engine.channels_last)

    def load_weights(module, path: Path) -> None:
        module.load_state_dict(load_checkpoint(path)["model"], strict=True)

    ctx = StageContext(cfg=cfg, work_dir=work_dir, meta=meta, device=device, amp_dtype=amp_dtype,
                       evaluate=evaluate_fn, load_weights=load_weights)
    h = stage_hash(cfg)
    stages = method_stages(cfg)
    chosen = select_stages(stages, from_stage, only)
    summary = {}
    for stage in chosen:
        sdir = ctx.dir(stage.name)
        if force and wdist.is_main() and sdir.exists():
            log.info("stage %s: removing previous outputs (forced re-run)", stage.name)
            shutil.rmtree(sdir)
        wdist.barrier()
        if is_done(sdir, h):
            log.info("stage %s: complete (%s), skipped", stage.name, sdir / DONE)
            summary[stage.name] = load_json(sdir / DONE)
            continue
        if (sdir / DONE).exists():
            raise ConfigError(f"stage {stage.name}: {sdir} was made with another configuration; re-run it with "
                              f"--from {stage.name} --force (or delete the folder)")
        for needed in stage.reads:
            if not (ctx.dir(needed) / DONE).exists():
                raise FileNotFoundError(f"stage {stage.name} reads {ctx.dir(needed)}, which is not complete: run "
                                        f"stage {needed} first")
        t0 = time.time()
        log.info("stage %s: start", stage.name)
        if isinstance(stage, TrainStage):
            info = _run_train(stage, ctx, sdir)
        elif isinstance(stage, PerImageStage):
            info = _run_per_image(stage, ctx, sdir)
        elif isinstance(stage, EvalStage):
            info = _run_eval(stage, ctx, sdir)
        else:  # pragma: no cover - a programming error in a method
            raise TypeError(f"unknown stage type {type(stage).__name__}")
        info.update(stage=stage.name, config_hash=h, seconds=round(time.time() - t0, 1))
        if wdist.is_main():
            write_json_atomic(sdir / DONE, info)
        wdist.barrier()
        log.info("stage %s: done in %.1f s", stage.name, info["seconds"])
        summary[stage.name] = info
    return summary


def _run_train(stage: TrainStage, ctx: StageContext, sdir: Path) -> dict:
    method, dataset, overrides = stage.build(ctx)
    cfg = config_from_dict(to_dict(ctx.cfg), overrides, source=f"stage {stage.name}")
    trainer = Trainer(cfg, resume=True, method=method, train_dataset=dataset, work_dir=sdir)
    path = trainer.fit()
    setup_logging(ctx.work_dir, "run.log")  # the trainer logged into the stage folder
    return {"format_version": 1, "checkpoint": str(path), "iterations": trainer.iters}


def _run_per_image(stage: PerImageStage, ctx: StageContext, sdir: Path) -> dict:
    ids = stage.ids(ctx)
    if not ids:
        raise ValueError(f"stage {stage.name}: no images to process")
    mine = wdist.shard(ids)
    todo = [i for i in mine if not (sdir / f"{i}{stage.ext}").exists()]
    log.info("stage %s: %d images (%d on this rank, %d left)", stage.name, len(ids), len(mine), len(todo))
    sdir.mkdir(parents=True, exist_ok=True)
    if todo:
        state = stage.setup(ctx)
        from tqdm import tqdm

        bar = tqdm(todo, desc=stage.name, dynamic_ncols=True, mininterval=2.0, file=sys.stderr,
                   disable=not wdist.is_main())
        for sample_id in bar:
            stage.process(state, sample_id, sdir / f"{sample_id}{stage.ext}")
    wdist.barrier()
    missing = [i for i in ids if not (sdir / f"{i}{stage.ext}").exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name}: {len(missing)} outputs missing after the run (e.g. {missing[0]})")
    return {"format_version": stage.format_version, "count": len(ids), "ext": stage.ext}


def _run_eval(stage: EvalStage, ctx: StageContext, sdir: Path) -> dict:
    metrics = stage.run(ctx)
    if wdist.is_main():
        write_json_atomic(sdir / "metrics.json", metrics)
    return {"format_version": 1, "miou": metrics.get("miou")}

