"""``weakseg run``: executes the stages a multi-stage method declares (``Method.stages(cfg)``), in order.

Fingerprints: a stage's fingerprint hashes the config values it declares (``stage.config``) and the fingerprints of
the stages it reads. A stage whose ``_done.json`` holds the current
fingerprint is skipped; otherwise it is re-run from scratch with a log line naming what changed (a value, or an input
stage), and every stage downstream of it follows because its inputs' fingerprints changed. Untouched upstream stages
are kept. ``_started.json`` records the fingerprint of a stage in progress, so an interrupted stage resumes (image by
image, or from its newest checkpoint) only when nothing it depends on changed.

Per-image stages are sharded over torchrun ranks; on CPU, ``engine.stage_workers`` processes (this one and helpers
from a fork server, see ``_helper_context``) share a rank's items (one thread each). Rank 0 writes the markers after
a barrier.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from weakseg.engine import builders
from weakseg.engine.amp import autocast_dtype
from weakseg.engine.checkpoint import load_checkpoint
from weakseg.engine.config import (Config, ConfigError, build_config, config_hash, dump_yaml, resolve_work_dir,
                                   to_dict)
from weakseg.engine.evaluator import evaluate
from weakseg.engine.runtime import progress, seed_everything, setup_logging
from weakseg.engine.trainer import Trainer
from weakseg.methods import METHODS
from weakseg.methods.kit.stage import EvalStage, PerImageStage, StageContext, TrainStage, get_path
from weakseg.utils import dist as wdist
from weakseg.utils.io import load_json, write_json_atomic, write_text_atomic
from weakseg.utils.threads import num_threads

log = logging.getLogger("weakseg")
DONE = "_done.json"
STARTED = "_started.json"
FORMAT = 2  # marker format (1: one hash over data + model + method for every stage)


# ----------------------------------------------------------------------------------------------------------------
# fingerprints


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def stage_values(stage, cfg_dict: dict) -> dict[str, Any]:
    """``{dotted leaf key: value}`` of the config values ``stage`` depends on (its ``config`` paths; ``-path``
    entries remove keys)."""
    values: dict[str, Any] = {}
    for path in stage.config:
        drop = path.startswith("-")
        key = path.lstrip("-")
        try:
            node = get_path(cfg_dict, key)
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"stage {stage.name} depends on config key {key!r}, which the config does not have "
                              f"(a bug in the method's stage list)") from None
        leaves = _leaves(node, key)
        if drop:
            for k in leaves:
                values.pop(k, None)
        else:
            values.update(leaves)
    return values


def default_values(cfg: Config) -> dict:
    """The config of ``cfg``'s method with every value at its default (as a mapping)."""
    return to_dict(build_config({"method": {"name": cfg.method.name}}, source="<defaults>"))


def fingerprints(stages: list, cfg: Config) -> dict[str, tuple[str, dict, dict]]:
    """``{stage: (fingerprint, values, {read stage: its fingerprint})}`` for the whole stage list, in order.

    The hash covers the values that differ from their defaults: a setting added to weakseg later (at its default)
    does not make finished stages stale, while setting any value, or changing it back, does."""
    cfg_dict, defaults = to_dict(cfg), default_values(cfg)
    out: dict[str, tuple[str, dict, dict]] = {}
    for stage in stages:
        missing = [r for r in stage.reads if r not in out]
        if missing:
            raise ConfigError(f"stage {stage.name} reads {missing[0]}, which does not come before it in the method's "
                              f"stage list")
        values = stage_values(stage, cfg_dict)
        base = _leaf_defaults(defaults, values)
        reads = {r: out[r][0] for r in stage.reads}
        payload = {"kind": type(stage).__name__, "reads": reads,
                   "values": {k: v for k, v in values.items() if k not in base or base[k] != v},
                   "format_version": getattr(stage, "format_version", 1)}
        out[stage.name] = (config_hash(payload), values, reads)
    return out


def _leaf_defaults(defaults: dict, values: dict) -> dict:
    out = {}
    for key in values:
        try:
            out[key] = get_path(defaults, key)
        except (KeyError, AttributeError, TypeError):  # e.g. a key inside a mapping such as lr_mult
            pass
    return out


def explain_change(old: dict, values: dict, reads: dict, cfg: Config | None = None) -> str:
    """What differs between a marker ``old`` and the current values / input fingerprints, for the log. With
    ``cfg``, a path the marker does not list (declared by a later weakseg) is named only when it is not at its
    default: at its default it is not in the fingerprint either."""
    base = _leaf_defaults(default_values(cfg), values) if cfg is not None else {}
    if old.get("format") != FORMAT:
        return "its outputs were made by an older weakseg (no per-stage fingerprint)"
    parts = []
    before = old.get("values", {})
    for key in sorted(set(before) | set(values)):
        if key in before and before[key] != values.get(key, "<absent>"):
            parts.append(f"{key} changed ({before[key]!r} → {values.get(key, '<absent>')!r})")
        elif key not in before and not (key in base and base[key] == values[key]):
            parts.append(f"{key} set ({values[key]!r})")
    for name in sorted(set(old.get("reads", {})) | set(reads)):
        if old.get("reads", {}).get(name) != reads.get(name):
            parts.append(f"input stage {name} changed")
    return "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "") or "its settings changed"


# ----------------------------------------------------------------------------------------------------------------
# selection and the run


def method_stages(cfg: Config) -> list:
    stages = METHODS[cfg.method.name].stages(cfg)
    if not stages:
        raise ConfigError(f"method {cfg.method.name!r} is single-stage: use `weakseg train`")
    return stages


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


def _clear(sdir: Path) -> None:
    if wdist.is_main() and sdir.exists():
        shutil.rmtree(sdir)
    wdist.barrier()


def _load_weights(module, path: Path) -> None:
    module.load_state_dict(load_checkpoint(path)["model"], strict=True)


def _evaluate(method, dataset, out_dir: Path, *, cfg: Config, meta, device, amp_dtype) -> dict:
    method.to(device)
    return evaluate(method, dataset, cfg.eval, meta, out_dir, device, mean=cfg.data.mean, std=cfg.data.std,
                    amp_dtype=amp_dtype, channels_last=cfg.engine.channels_last)


def make_context(cfg: Config, device: torch.device) -> StageContext:
    meta = builders.dataset_meta(cfg)
    amp_dtype = autocast_dtype(cfg.eval.amp, device)  # inference stages: fp32 unless eval.amp asks
    return StageContext(cfg=cfg, work_dir=resolve_work_dir(cfg), meta=meta, device=device, amp_dtype=amp_dtype,
                        evaluate=functools.partial(_evaluate, cfg=cfg, meta=meta, device=device, amp_dtype=amp_dtype),
                        load_weights=_load_weights)


def run_pipeline(cfg: Config, from_stage: str | None = None, only: list[str] | None = None,
                 force: bool = False) -> dict:
    """Run the selected stages; stages named by ``from_stage``/``only`` are redone when ``force``.

    Returns ``{stage: info}`` with the completion info of every stage that ran or was already complete.
    """
    from weakseg.engine.runtime import WorkDirLock

    device = wdist.init_distributed(cfg.engine.device)
    if cfg.engine.threads:  # per-image stages run in this process too, not only the trainer
        torch.set_num_threads(cfg.engine.threads)
    work_dir = resolve_work_dir(cfg)
    with WorkDirLock(work_dir, "weakseg run"):
        setup_logging(work_dir, "run.log")
        if wdist.is_main():
            write_text_atomic(work_dir / "config.yaml", dump_yaml(cfg))
        ctx = make_context(cfg, device)
        stages = method_stages(cfg)
        prints = fingerprints(stages, cfg)
        summary = {}
        for stage in select_stages(stages, from_stage, only):
            summary[stage.name] = _run_stage(stage, ctx, prints[stage.name], force and bool(from_stage or only))
    return summary


def stage_status(cfg: Config) -> list[dict]:
    """For every stage of ``cfg``'s method: ``name``, ``kind``, ``state`` (complete | stale | unfinished | not run),
    ``why`` (what changed, for stale or unfinished stages), ``section`` (a training stage's typed section) and
    ``doc``. Reads the markers only; runs nothing."""
    work_dir = resolve_work_dir(cfg)
    stages = method_stages(cfg)
    prints = fingerprints(stages, cfg)
    rows = []
    for stage in stages:
        h, values, reads = prints[stage.name]
        sdir = work_dir / stage.name
        state, why = "not run", ""
        if (sdir / DONE).exists():
            old = load_json(sdir / DONE)
            fresh = old.get("fingerprint") == h
            state, why = ("complete", "") if fresh else ("stale", explain_change(old, values, reads, cfg))
        elif (sdir / STARTED).exists():
            old = load_json(sdir / STARTED)
            state = "unfinished"
            why = "resumes" if old.get("fingerprint") == h else "restarts: " + explain_change(old, values, reads, cfg)
        rows.append({"name": stage.name, "kind": type(stage).__name__, "state": state, "why": why,
                     "section": getattr(stage, "section", None), "doc": stage.doc})
    return rows


def _run_stage(stage, ctx: StageContext, fingerprint: tuple[str, dict, dict], force: bool) -> dict:
    h, values, reads = fingerprint
    sdir = ctx.dir(stage.name)
    if force:
        log.info("stage %s: removing previous outputs (forced re-run)", stage.name)
        _clear(sdir)
    done = sdir / DONE
    if done.exists():
        old = load_json(done)
        if old.get("fingerprint") == h:
            log.info("stage %s: complete (%s), skipped", stage.name, done)
            return old
        log.info("stage %s: re-running: %s", stage.name, explain_change(old, values, reads, ctx.cfg))
        _clear(sdir)
    elif (sdir / STARTED).exists():
        old = load_json(sdir / STARTED)
        if old.get("fingerprint") != h:
            log.info("stage %s: discarding an unfinished run made with other settings: %s", stage.name,
                     explain_change(old, values, reads, ctx.cfg))
            _clear(sdir)
        else:
            log.info("stage %s: resuming an unfinished run", stage.name)
    for needed in stage.reads:
        marker = ctx.dir(needed) / DONE
        if not marker.exists() or load_json(marker).get("fingerprint") != reads[needed]:
            raise FileNotFoundError(f"stage {stage.name} reads {ctx.dir(needed)}, which is not complete for the "
                                    f"current settings: run stage {needed} first (e.g. --from {needed})")
    marker = {"stage": stage.name, "format": FORMAT, "fingerprint": h, "values": values, "reads": reads}
    if wdist.is_main():
        write_json_atomic(sdir / STARTED, marker)
    wdist.barrier()
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
    info.update(marker, seconds=round(time.time() - t0, 1))
    if wdist.is_main():
        write_json_atomic(sdir / DONE, info)
        (sdir / STARTED).unlink(missing_ok=True)
    wdist.barrier()
    log.info("stage %s: done in %.1f s", stage.name, info["seconds"])
    return info


# ----------------------------------------------------------------------------------------------------------------
# the three kinds of stage


def stage_config(cfg: Config, section: Any) -> Config:
    """The run config a training stage trains with: the stage section's model / optim / schedule / batch / best in
    place of the run's (engine and data settings otherwise kept)."""
    if section is None:
        return cfg
    # periodic validation on data.val_list is for the final network; a stage selects with its own ``best``
    engine = dataclasses.replace(cfg.engine, batch_size=section.batch_size, best=section.best, eval_interval=0)
    return dataclasses.replace(cfg, model=section.model, optim=section.optim, schedule=section.schedule,
                               engine=engine)


def _run_train(stage: TrainStage, ctx: StageContext, sdir: Path) -> dict:
    # the stage builds its network before the Trainer seeds: seed here too, so that the initial weights (and so the
    # whole stage) do not depend on what ran earlier in this process (other stages, per-image work done here)
    seed_everything(ctx.cfg.engine.seed + wdist.rank())
    job = stage.build(ctx)
    section = get_path(ctx.cfg, stage.section) if stage.section else None
    trainer = Trainer(stage_config(ctx.cfg, section), resume=True, method=job.module, train_dataset=job.dataset,
                      work_dir=sdir, holdout_dataset=job.holdout)
    path = trainer.fit()
    setup_logging(ctx.work_dir, "run.log")  # the trainer logged into the stage folder
    info = {"checkpoint": str(path), "iterations": trainer.iters}
    if (sdir / "model_best.pth").is_file():
        info["best_checkpoint"] = str(sdir / "model_best.pth")
    return info


def stage_workers(requested: int | None, device: torch.device, todo: int) -> int:
    """Processes per rank for a per-image stage: ``engine.stage_workers``, or on CPU the cores of this rank (at
    most one per 4 items, so that tiny stages do not pay for process start-up); 1 on CUDA."""
    if requested is not None:
        return max(1, requested)
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // wdist.world_size(), todo // 4))


def _claim(counter, total: int) -> int:
    """The next unclaimed index of the shared item list (≥ ``total``: nothing left)."""
    with counter.get_lock():
        index = counter.value
        counter.value = index + 1
    return index


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _helper_context():
    """Where helpers come from: a fork server where the platform has one. The server is a fresh interpreter that
    imports torch and weakseg once per ``weakseg run`` and never runs a torch op, so forking it is safe (no thread
    pool exists yet) and a helper starts in milliseconds instead of importing torch again (≈ 2 s) for every stage.
    Elsewhere: spawn (fork is unsafe once torch's thread pools exist in this process)."""
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["torch", "weakseg.methods"])  # ignored once the server runs
        return context
    return mp.get_context("spawn")


def _helper_loop(setup, process, ext: str, ctx: StageContext, sdir: Path, todo: list[str], counter, done,
                 errors, main: int) -> None:
    """A helper of a per-image stage: load the stage state once, then take items until none is left."""
    torch.set_num_threads(1)  # one process per core
    try:
        state = setup(ctx)
        while _alive(main):  # an orphan (the run was killed) stops instead of racing a resumed run
            index = _claim(counter, len(todo))
            if index >= len(todo):
                return
            process(state, todo[index], sdir / f"{todo[index]}{ext}")
            with done.get_lock():
                done.value += 1
    except BaseException as exc:  # noqa: BLE001 - handed to the main process, which re-raises it
        with counter.get_lock():
            counter.value = len(todo)  # the others stop after their current item
        try:
            errors.put(exc)
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled: its text
            errors.put(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _process_in_parallel(stage: PerImageStage, ctx: StageContext, sdir: Path, todo: list[str], workers: int,
                         bar) -> None:
    """``workers`` processes share ``todo``: this one and ``workers − 1`` helpers (:func:`_helper_context`), each
    taking the next unclaimed item. This process starts at once while the helpers load the stage state, so a short
    stage is not slower than one process."""
    context = _helper_context()
    counter, done, errors = context.Value("l", 0), context.Value("l", 0), context.Queue()
    helpers = [context.Process(target=_helper_loop, daemon=True,
                               args=(stage.setup, stage.process, stage.ext, ctx, sdir, todo, counter, done,
                                     errors, os.getpid()))
               for _ in range(workers - 1)]
    for helper in helpers:
        helper.start()
    shown = 0

    def show() -> None:
        nonlocal shown
        if done.value > shown:
            bar.update(done.value - shown)
            shown = done.value

    try:
        with num_threads(1):
            state = stage.setup(ctx)
            while errors.empty():
                index = _claim(counter, len(todo))
                if index >= len(todo):
                    break
                stage.process(state, todo[index], sdir / f"{todo[index]}{stage.ext}")
                with done.get_lock():
                    done.value += 1
                show()
        while any(h.is_alive() for h in helpers) and errors.empty():
            for helper in helpers:
                helper.join(timeout=0.2)
            show()
    except BaseException:
        with counter.get_lock():
            counter.value = len(todo)
        raise
    finally:
        for helper in helpers:
            helper.join(timeout=30)
            if helper.is_alive():
                helper.terminate()
    show()
    if not errors.empty():
        raise errors.get()
    failed = [h.exitcode for h in helpers if h.exitcode]
    if failed:
        raise RuntimeError(f"stage {stage.name}: a worker process died (exit code {failed[0]})")


def _run_per_image(stage: PerImageStage, ctx: StageContext, sdir: Path) -> dict:
    items = stage.items(ctx)
    if not items:
        raise ValueError(f"stage {stage.name}: nothing to process")
    mine = wdist.shard(items)
    todo = [i for i in mine if not (sdir / f"{i}{stage.ext}").exists()]
    workers = stage_workers(ctx.cfg.engine.stage_workers, ctx.device, len(todo))
    log.info("stage %s: %d items (%d on this rank, %d left, %d process%s)", stage.name, len(items), len(mine),
             len(todo), workers, "es" if workers > 1 else "")
    sdir.mkdir(parents=True, exist_ok=True)
    if wdist.is_main():  # temporaries of an item a killed run was writing (its output was never renamed into place)
        for tmp in sdir.rglob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
    wdist.barrier()
    if todo:
        bar = progress(total=len(todo), desc=stage.name)
        if workers == 1:
            state = stage.setup(ctx)
            for item in todo:
                stage.process(state, item, sdir / f"{item}{stage.ext}")
                bar.update(1)
        else:
            _process_in_parallel(stage, ctx, sdir, todo, workers, bar)
        bar.close()
    wdist.barrier()
    missing = [i for i in items if not (sdir / f"{i}{stage.ext}").exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name}: {len(missing)} outputs missing after the run (e.g. {missing[0]})")
    return {"format_version": stage.format_version, "count": len(items), "ext": stage.ext}


def _run_eval(stage: EvalStage, ctx: StageContext, sdir: Path) -> dict:
    metrics = stage.run(ctx)
    if wdist.is_main():
        sdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sdir / "metrics.json", metrics)
    return {"miou": metrics.get("miou")}
