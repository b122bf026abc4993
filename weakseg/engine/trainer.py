"""Iteration-based trainer: SGD/AdamW, poly or warm-up+cosine schedules, AMP, DDP (torchrun), checkpoints every N
iterations written atomically, exact ``resume``, best-snapshot selection (``engine.best``), NaN/inf loss handling,
a progress bar and TensorBoard.

The trainer knows nothing about any particular method: it calls ``method(batch, step)`` (→ ``training_step``),
sums the entries whose key starts with ``loss_`` and logs every entry.

Exact resume: a run killed at any point and resumed from its newest checkpoint ends with the same weights, metrics
and log lines as the uninterrupted run (bit for bit on CPU with the same threads; within numerical noise on CUDA).
What makes it so:

* the data stream is a function of the seed: epoch e is a permutation seeded by (seed, e), and the resumed sampler
  starts at the stream position of the checkpoint;
* each sample's augmentation draws from generators seeded by (seed, rank, stream position)
  (:func:`weakseg.engine.runtime.sample_seed`), not from a DataLoader worker's running state, so it does not
  depend on which worker loads it, on ``data.num_workers`` or on an interruption;
* the checkpoint holds the model, optimiser, AMP scaler, the random states of the main process (torch CPU/CUDA,
  numpy, python), the running loss averages, the best-snapshot state and the number of skipped steps; the LR
  schedule is a pure function of the iteration;
* evaluations during training run with the main process's random states set aside (:func:`isolated_rng`), so they
  never shift the training stream;
* log continuity: the checkpoint records how long ``train.log`` was; on resume, lines written after it (by the
  interrupted run, for iterations that are now redone) are moved to ``train.interrupted.log``, and TensorBoard
  events after the checkpoint's iteration are purged, so no iteration is logged twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from weakseg.engine import builders
from weakseg.engine.amp import autocast, autocast_dtype
from weakseg.engine.best import BestTracker, describe_split, selection_dataset
from weakseg.engine.checkpoint import (latest_checkpoint, load_checkpoint, prune_checkpoints, restore_rng,
                                       save_checkpoint)
from weakseg.engine.config import Config, ConfigError, config_differences, dump_yaml, resolve_work_dir, to_dict
from weakseg.engine.runtime import (WorkDirLock, cpu_threads, isolated_rng, log_file, progress, sample_seed,
                                    seed_everything, setup_logging, unwrap_worker_error)
from weakseg.engine.schedule import lr_factor
from weakseg.utils import dist as wdist
from weakseg.utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger("weakseg")

__all__ = ["Trainer", "train", "InfiniteSampler", "make_loader", "NonFiniteLossError",
           "setup_logging"]  # setup_logging: re-exported while callers move to weakseg.engine.runtime

# config keys a resumed run may change without a warning
_RESUME_MAY_CHANGE = ("name", "schedule.iters", "engine.work_dir", "engine.log_interval", "engine.ckpt_interval",
                      "engine.eval_interval", "engine.keep_ckpts", "engine.tensorboard", "engine.device",
                      "engine.threads", "data.num_workers", "eval")

LOG_NAME = "train.log"
INTERRUPTED_LOG_NAME = "train.interrupted.log"


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration, the losses and the last good checkpoint."""


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# data


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices for one rank: epoch e is a permutation seeded by (seed, e), split
    ``perm[rank::world]`` (dropping the tail so every rank gets the same count); starts after ``start`` samples of
    this rank so that a resumed run continues the same stream."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True, start: int = 0):
        if size < world:
            raise ValueError(f"the training set has {size} samples, fewer than the {world} ranks")
        self.size, self.seed, self.rank, self.world, self.shuffle, self.start = size, seed, rank, world, shuffle, start
        self.per_rank = size // world

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                perm = torch.randperm(self.size, generator=g).tolist()
            else:
                perm = list(range(self.size))
            mine = perm[self.rank: self.per_rank * self.world: self.world]
            yield from mine[offset:]
            offset = 0
            epoch += 1

    def __len__(self) -> int:  # an infinite stream; DataLoader only needs this for progress estimates
        return 2**62


class PositionedSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler that starts at stream position ``start``: yields (position, index) pairs, so that
    the dataset wrapper can seed each sample's augmentation from its position in the stream."""

    def __init__(self, sampler: Sampler[int], start: int = 0):
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for k, index in enumerate(self.sampler):
            yield self.start + k, index

    def __len__(self) -> int:
        return len(self.sampler)


class SeededSamples(Dataset):
    """``dataset[index]`` under random states seeded by (seed, rank, position): takes the (position, index) pairs
    of :class:`PositionedSampler`. Whichever process loads the sample, its augmentation is the same, and the
    loading process's own random states are left as they were."""

    def __init__(self, dataset, seed: int, rank: int = 0):
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        position, index = key
        with isolated_rng(sample_seed(self.seed, self.rank, position)):
            return self.dataset[index]


def make_loader(dataset, batch_size: int, num_workers: int, sampler=None, shuffle: bool = False,
                drop_last: bool = False, seed: int = 0) -> DataLoader:
    # a private generator: creating the loader's iterator draws a base seed from it, not from the global stream,
    # so that building a loader never shifts the training's random state
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0, pin_memory=False,
        generator=torch.Generator().manual_seed(seed),
    )


# ----------------------------------------------------------------------------------------------------------------
# optimiser


def build_optimizer(cfg: Config, groups: dict[str, list[nn.Parameter]]) -> torch.optim.Optimizer:
    """One optimiser param group per named group; ``optim.lr_mult`` / ``wd_mult`` are keyed by group name."""
    o = cfg.optim
    for key, mult in (("optim.lr_mult", o.lr_mult), ("optim.wd_mult", o.wd_mult)):
        unknown = set(mult) - set(groups)
        if unknown:
            raise ConfigError(f"{key}: unknown parameter group(s) {sorted(unknown)}; the model has {sorted(groups)}")
    param_groups = []
    for name, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        param_groups.append({
            "params": params, "name": name, "lr_mult": o.lr_mult.get(name, 1.0),
            "lr": o.lr * o.lr_mult.get(name, 1.0), "weight_decay": o.weight_decay * o.wd_mult.get(name, 1.0),
        })
    if not param_groups:
        raise ValueError("the method has no trainable parameters")
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum)
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g["lr_mult"] * factor
    return base_lr * factor


# ----------------------------------------------------------------------------------------------------------------
# trainer


class _TensorBoard:
    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if enabled and wdist.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed: scalars go only to the log
                log.info("tensorboard is not installed; scalars are written to the log only")
            else:
                # purge_step hides the events that an interrupted run wrote after the checkpoint it resumes from
                self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _trim_log(path: Path, length: int | None) -> None:
    """Cut ``path`` back to ``length`` bytes, appending the cut lines to ``train.interrupted.log`` beside it: they
    were written by an interrupted run for iterations that the resumed run does again."""
    if length is None or not path.is_file() or path.stat().st_size <= length:
        return
    with open(path, "rb") as f:
        f.seek(length)
        tail = f.read()
    with open(path.parent / INTERRUPTED_LOG_NAME, "ab") as f:
        f.write(tail)
    with open(path, "r+b") as f:
        f.truncate(length)


class Trainer:
    """Trains ``cfg.method`` on ``cfg.data`` for ``cfg.schedule`` iterations.

    Args:
        cfg: the resolved run config.
        resume: False (start fresh; refuses to overwrite a work dir that has checkpoints), True (continue from the
            newest checkpoint in the work dir, or start fresh when there is none), or a checkpoint path.
        method: an already built method (multi-stage pipelines pass their stage network); default: from cfg.
        train_dataset: an already built training dataset; default: from cfg and the method's supervision.
        work_dir: output folder; default: ``engine.work_dir`` or ``work_dirs/<name>``.
        holdout_dataset: the dataset ``engine.best`` scores on (eval transforms, with ``label``), for callers that
            build their own training set; default: from ``engine.best.split`` (see :mod:`weakseg.engine.best`).
    """

    def __init__(self, cfg: Config, resume: bool | str = False, method=None, train_dataset=None,
                 work_dir: Path | None = None, holdout_dataset=None):
        self.cfg = cfg
        self.device = wdist.init_distributed(cfg.engine.device)
        torch.set_num_threads(cpu_threads(cfg.engine.threads, cfg.data.num_workers, self.device))
        self.rank, self.world = wdist.rank(), wdist.world_size()
        self.work_dir = Path(work_dir) if work_dir is not None else resolve_work_dir(cfg)
        self.ckpt_dir = self.work_dir / "checkpoints"
        ckpt_path = self._resume_path(resume)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
        if ckpt is not None and wdist.is_main():
            _trim_log(self.work_dir / LOG_NAME, (ckpt.get("trainer") or {}).get("log_bytes"))
        setup_logging(self.work_dir, LOG_NAME)
        seed_everything(cfg.engine.seed + self.rank)

        if cfg.engine.batch_size % self.world:
            raise ConfigError(f"engine.batch_size = {cfg.engine.batch_size} (global) is not divisible by the "
                              f"{self.world} ranks")
        self.per_rank_batch = cfg.engine.batch_size // self.world

        self.meta = builders.dataset_meta(cfg)
        self.method = method if method is not None else builders.build_method(cfg, self.meta.num_classes)
        if train_dataset is None:
            train_dataset = builders.build_train_dataset(cfg, self.method.supervision, self.meta)
        self.train_dataset = train_dataset
        best = cfg.engine.best
        self.best = BestTracker(metric=best.metric, split=describe_split(best) if holdout_dataset is None
                                else "holdout (given by the caller)")
        self.best_dataset = None
        if best.interval:
            self.best_dataset = holdout_dataset if holdout_dataset is not None else \
                selection_dataset(cfg, self.meta, self.train_dataset)
            if best.split == "val" and holdout_dataset is None:
                log.warning("engine.best.split = val: model_best.pth is selected on the val split, so its val "
                            "score is optimistic")
        if len(self.train_dataset) == 0:
            raise ValueError(f"{cfg.data.root}/{cfg.data.train_list}: the training list is empty")
        self.iters = builders.derive_iters(cfg, len(self.train_dataset))
        self.amp_dtype = autocast_dtype(cfg.engine.amp, self.device)

        self.method.to(self.device)
        if cfg.engine.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if cfg.engine.sync_bn or cfg.model.norm == "syncbn":
            if self.device.type == "cuda" and self.world > 1:
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            else:
                log.info("SyncBatchNorm needs CUDA and more than one rank; using per-rank BatchNorm")
        self.optimizer = build_optimizer(cfg, self.method.param_groups())
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.start_iter = 0
        self.running: dict[str, float] = {}  # exponential moving averages of the logged scalars
        self.skipped = 0  # steps skipped for a non-finite loss (engine.nonfinite = skip)
        self.last_checkpoint: Path | None = ckpt_path
        if resume is not False and ckpt_path is None:
            log.info("no checkpoint in %s, starting from iteration 0", self.ckpt_dir)
        if ckpt is not None:
            self._restore(ckpt, ckpt_path)

        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.find_unused_parameters,
            )
        else:
            self.model = self.method

    # -- checkpoints -------------------------------------------------------------------------------------------

    @property
    def best_path(self) -> Path:
        return self.work_dir / "model_best.pth"

    def _resume_path(self, resume: bool | str) -> Path | None:
        if resume is False:
            if latest_checkpoint(self.ckpt_dir) is not None:
                raise FileExistsError(f"{self.ckpt_dir} already holds checkpoints: pass --resume to continue that run "
                                      f"or choose another engine.work_dir")
            return None
        return latest_checkpoint(self.ckpt_dir) if resume is True else Path(resume)

    def _restore(self, ckpt: dict, path: Path) -> None:
        self.method.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt)
        state = ckpt.get("trainer") or {}
        self.running = {k: float(v) for k, v in (state.get("running") or {}).items()}
        self.skipped = int(state.get("skipped", 0))
        self.best.load_state_dict(state.get("best") or {})
        self.start_iter = int(ckpt["iteration"])
        log.info("resumed from %s at iteration %d", path, self.start_iter)
        # extending the schedule or changing logging is what resuming is for; anything else means the finished
        # part of the run was trained with other settings than the ones asked for now
        changed = config_differences(ckpt.get("config") or {}, to_dict(self.cfg), ignore=_RESUME_MAY_CHANGE)
        if changed:
            log.warning("%s was trained with different settings than the current config (resuming anyway; use "
                        "another engine.work_dir for a fresh run): %s", path, "; ".join(changed))

    def _trainer_state(self, iteration: int) -> dict:
        # the log's length marks where a resumed run continues it; the end-of-run checkpoint marks nothing, since
        # no iteration after it was logged (a finished run extended with --resume keeps its whole log)
        log_path = log_file() if iteration < self.iters else None
        return {"running": dict(self.running), "skipped": self.skipped, "best": self.best.state_dict(),
                "log_bytes": log_path.stat().st_size if log_path is not None and log_path.is_file() else None}

    def save(self, iteration: int, final: bool = False) -> Path:
        path = self.work_dir / "model_final.pth" if final else self.ckpt_dir / f"iter_{iteration:07d}.pth"
        if wdist.is_main():
            save_checkpoint(path, model_state=self.method.state_dict(), optimizer=None if final else self.optimizer,
                            scaler=None if final else self.scaler, iteration=iteration, config=to_dict(self.cfg),
                            extra={"classes": list(self.meta.classes)},
                            trainer_state=None if final else self._trainer_state(iteration))
            if not final:
                prune_checkpoints(self.ckpt_dir, self.cfg.engine.keep_ckpts)
        wdist.barrier()
        if not final:
            self.last_checkpoint = path
        return path

    # -- loop --------------------------------------------------------------------------------------------------

    def _next_batch(self, data_iter) -> dict:
        try:
            return next(data_iter)
        except Exception as exc:  # a worker's error arrives wrapped in its whole traceback: show its own message
            plain = unwrap_worker_error(exc)
            if plain is exc:
                raise
            raise plain from exc

    def _nonfinite(self, it: int, losses: dict[str, torch.Tensor]) -> bool:
        """True when a loss of iteration ``it`` is NaN/inf (on any rank) and the step must be skipped; raises
        :class:`NonFiniteLossError` when the run must stop."""
        bad = [k for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())]
        flag = torch.tensor([float(len(bad))], device=self.device)
        if self.world > 1:  # every rank must take the same decision, or DDP's gradient all-reduce hangs
            torch.distributed.all_reduce(flag)
        if flag.item() == 0:
            return False
        what = ", ".join(f"{k} = {float(losses[k].detach().float().mean())}" for k in bad) or "on another rank"
        last = self.last_checkpoint if self.last_checkpoint is not None else "none yet"
        if self.cfg.engine.nonfinite == "skip" and self.skipped < self.cfg.engine.max_skipped:
            self.skipped += 1
            log.warning("iteration %d: non-finite loss (%s); step skipped (%d skipped so far, engine.max_skipped "
                        "= %d)", it, what, self.skipped, self.cfg.engine.max_skipped)
            return True
        extra = (f" after {self.skipped} skipped steps (engine.max_skipped)"
                 if self.cfg.engine.nonfinite == "skip" else "")
        raise NonFiniteLossError(f"{self.work_dir}: non-finite loss at iteration {it} ({what}); training stopped"
                                 f"{extra}; the last good checkpoint is {last} (resume with --resume; "
                                 f"engine.nonfinite = skip skips such steps)")

    def _select(self, done: int, tb: _TensorBoard) -> None:
        """Score the model on the selection split and keep ``model_best.pth`` when it is the best so far."""
        from weakseg.engine.evaluator import evaluate

        ev = dataclasses.replace(self.cfg.eval, save_predictions=False, save_overlays=0)
        with isolated_rng():
            metrics = evaluate(self.method, self.best_dataset, ev, self.meta, self.work_dir / "selection",
                               self.device, mean=self.cfg.data.mean, std=self.cfg.data.std,
                               amp_dtype=autocast_dtype(self.cfg.eval.amp, self.device),
                               channels_last=self.cfg.engine.channels_last, progress=False)
        self.method.train()
        metric = self.best.metric
        improved = self.best.update(done, metrics)
        tb.scalars({f"best/{metric}": metrics[metric]}, done)
        if improved and wdist.is_main():
            save_checkpoint(self.best_path, model_state=self.method.state_dict(), iteration=done,
                            config=to_dict(self.cfg), extra={"classes": list(self.meta.classes),
                                                             "best": self.best.summary(self.best_path)})
        wdist.barrier()
        log.info("selection at it %d on %s: %s %.4f (best %.4f at it %d)", done, self.best.split, metric,
                 metrics[metric], self.best.value if self.best.value is not None else float("nan"),
                 self.best.iteration)

    def fit(self) -> Path:
        cfg, e = self.cfg, self.cfg.engine
        if wdist.is_main():
            write_text_atomic(self.work_dir / "config.yaml", dump_yaml(cfg))
        log.info("training %s (%s) for %d iterations, global batch %d on %d %s rank(s), amp %s, %d samples",
                 cfg.name, cfg.method.name, self.iters, e.batch_size, self.world, self.device.type,
                 self.amp_dtype, len(self.train_dataset))
        final = self.work_dir / "model_final.pth"
        if self.start_iter >= self.iters and final.exists():
            log.info("already trained (%s)", final)
            return final
        start = self.start_iter * self.per_rank_batch  # stream position of this rank's next sample
        sampler = PositionedSampler(InfiniteSampler(len(self.train_dataset), seed=e.seed, rank=self.rank,
                                                    world=self.world, start=start), start)
        loader = make_loader(SeededSamples(self.train_dataset, e.seed, self.rank), self.per_rank_batch,
                             cfg.data.num_workers, sampler=sampler, drop_last=True, seed=e.seed)
        tb = _TensorBoard(self.work_dir / "tb", e.tensorboard,
                          purge_step=self.start_iter + 1 if self.start_iter else None)
        self.method.train()
        data_iter = iter(loader)
        # closed however the loop ends, so that an error message starts on a line of its own
        with progress(total=self.iters, initial=self.start_iter, desc=cfg.name) as bar:
            running = self.running
            t0 = time.time()
            for it in range(self.start_iter, self.iters):
                lr = set_lr(self.optimizer, cfg.optim.lr, lr_factor(
                    it, name=cfg.schedule.name, iters=self.iters, power=cfg.schedule.power,
                    warmup_iters=cfg.schedule.warmup_iters, warmup_ratio=cfg.schedule.warmup_ratio,
                    min_lr_ratio=cfg.schedule.min_lr_ratio))
                batch = to_device(self._next_batch(data_iter), self.device, e.channels_last)
                with autocast(self.device, self.amp_dtype):
                    out = self.model(batch, it)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                if not losses:
                    raise RuntimeError(f"{cfg.method.name}.training_step returned no loss_* entry")
                self.optimizer.zero_grad(set_to_none=True)
                skip = self._nonfinite(it, losses)
                if not skip:
                    loss = sum(v.float() for v in losses.values())
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                        self.scaler.unscale_(self.optimizer)
                    else:
                        loss.backward()
                    if cfg.optim.grad_clip:
                        nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.grad_clip)
                    if self.scaler is not None:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()

                    for k, v in out.items():
                        if isinstance(v, torch.Tensor) and v.numel() == 1:
                            value = float(v.detach())
                            running[k] = 0.9 * running[k] + 0.1 * value if k in running else value
                done = it + 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(running.get(k, 0) for k in losses):.4f}", lr=f"{lr:.2e}", refresh=False)
                if done % e.log_interval == 0 or done == self.iters:
                    tb.scalars({f"train/{k}": v for k, v in running.items()} | {"train/lr": lr}, done)
                    if wdist.is_main():
                        rate = (done - self.start_iter) / max(time.time() - t0, 1e-9)
                        skipped = f"  ({self.skipped} steps skipped)" if self.skipped else ""
                        log.info("it %d/%d  lr %.3e  %s%s  (%.2f it/s)", done, self.iters, lr,
                                 "  ".join(f"{k} {v:.4f}" for k, v in running.items()), skipped, rate)
                if e.eval_interval and done % e.eval_interval == 0 and done < self.iters:
                    metrics = self.evaluate(self.work_dir / f"eval_iter_{done:07d}", save=False)
                    tb.scalars({"val/miou": metrics["miou"]}, done)
                    self.method.train()
                if self.best_dataset is not None and (done % e.best.interval == 0 or done == self.iters):
                    self._select(done, tb)
                # the checkpoint comes after this iteration's evaluations, so that it holds their results
                if e.ckpt_interval and done % e.ckpt_interval == 0 and done < self.iters:
                    self.save(done)
        tb.close()
        self.save(self.iters)  # a resumable checkpoint at the end, then the model-only final file
        path = self.save(self.iters, final=True)
        log.info("training finished in %.1f min: %s", (time.time() - t0) / 60, path)
        return path

    def evaluate(self, out_dir: Path, save: bool = True) -> dict:
        """mIoU on ``data.val_list`` (without touching the training's random streams)."""
        from weakseg.engine.evaluator import evaluate

        dataset = builders.build_eval_dataset(self.cfg, self.meta)
        ev = dataclasses.replace(self.cfg.eval, save_predictions=save and self.cfg.eval.save_predictions,
                                 save_overlays=self.cfg.eval.save_overlays if save else 0)
        with isolated_rng():
            return evaluate(self.method, dataset, ev, self.meta, out_dir, self.device, mean=self.cfg.data.mean,
                            std=self.cfg.data.std, amp_dtype=autocast_dtype(self.cfg.eval.amp, self.device),
                            channels_last=self.cfg.engine.channels_last)


def train(cfg: Config, resume: bool | str = False, evaluate_after: bool = True) -> dict:
    """Train and (optionally) evaluate on ``data.val_list``; returns ``{"checkpoint": path, "metrics": ...}`` plus
    ``"best"`` (the selected snapshot, its selection split and score, and its val metrics) when ``engine.best`` is
    on. Holds the work folder's lock (:class:`~weakseg.engine.runtime.WorkDirLock`) while it runs."""
    with WorkDirLock(resolve_work_dir(cfg), "weakseg train"):
        trainer = Trainer(cfg, resume=resume)
        path = trainer.fit()
        result: dict = {"checkpoint": str(path)}
        if evaluate_after:
            result["metrics"] = trainer.evaluate(trainer.work_dir / "eval")
        if trainer.best_dataset is not None and trainer.best_path.is_file():
            result["best"] = trainer.best.summary(trainer.best_path)
            if evaluate_after:
                trainer.method.load_state_dict(load_checkpoint(trainer.best_path)["model"])
                result["best"]["metrics"] = trainer.evaluate(trainer.work_dir / "eval_best")
        if wdist.is_main():
            write_json_atomic(trainer.work_dir / "result.json", result)
    return result
