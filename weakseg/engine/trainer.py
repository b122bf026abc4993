"""Iteration-based trainer: SGD/AdamW, poly or warm-up+cosine schedules, AMP, DDP (torchrun), checkpoints every N
iterations written atomically, ``resume`` that continues where a run stopped, a progress bar and TensorBoard.

The trainer knows nothing about any particular method: it calls ``method(batch, step)`` (→ ``training_step``),
sums the entries whose key starts with ``loss_`` and logs every entry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from weakseg.engine import builders
from weakseg.engine.amp import autocast, autocast_dtype
from weakseg.engine.checkpoint import (latest_checkpoint, load_checkpoint, prune_checkpoints, restore_rng,
                                       save_checkpoint)
from weakseg.engine.config import Config, ConfigError, config_differences, dump_yaml, resolve_work_dir, to_dict
from weakseg.engine.schedule import lr_factor
from weakseg.utils import dist as wdist
from weakseg.utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger("weakseg")

# config keys a resumed run may change without a warning
_RESUME_MAY_CHANGE = ("name", "schedule.iters", "engine.work_dir", "engine.log_interval", "engine.ckpt_interval",
                      "engine.eval_interval", "engine.keep_ckpts", "engine.tensorboard", "engine.device",
                      "engine.threads", "data.num_workers", "eval")


# ----------------------------------------------------------------------------------------------------------------
# process set-up


def setup_logging(work_dir: Path | None = None, name: str = "train.log") -> None:
    """Log to stderr (rank 0 only) and to ``work_dir/name``."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if not wdist.is_main():
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(work_dir / name)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def cpu_threads(requested: int | None, num_workers: int, device: torch.device) -> int:
    """Intra-op threads for this process: ``engine.threads`` when set; otherwise, on CPU, the cores of this
    process (torch's default, which accounts for torchrun's OMP_NUM_THREADS) minus the DataLoader workers that
    share them. On small machines this matters a lot: when a loader worker preempts one of two OpenMP threads,
    every parallel region waits for it (measured here: 6.8 s/it with 2 threads + 1 worker on 2 busy cores, 1.5 s/it
    with 1 thread)."""
    if requested:
        return requested
    default = torch.get_num_threads()
    if device.type != "cpu":
        return default
    return max(1, min(default, (os.cpu_count() or 1) - num_workers))


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


def _worker_init(worker_id: int) -> None:
    # numpy-based transforms draw from a generator seeded by torch's per-worker seed, which DataLoader derives from
    # the base seed, the rank-specific generator state and the worker id
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset, batch_size: int, num_workers: int, sampler=None, shuffle: bool = False,
                drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=num_workers, drop_last=drop_last, worker_init_fn=_worker_init,
        persistent_workers=num_workers > 0, pin_memory=False,
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
    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled and wdist.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed: scalars go only to the log
                log.info("tensorboard is not installed; scalars are written to the log only")
            else:
                self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Trains ``cfg.method`` on ``cfg.data`` for ``cfg.schedule`` iterations.

    Args:
        cfg: the resolved run config.
        resume: False (start fresh; refuses to overwrite a work dir that has checkpoints), True (continue from the
            newest checkpoint in the work dir, or start fresh when there is none), or a checkpoint path.
        method: an already built method (multi-stage pipelines pass their stage network); default: from cfg.
        train_dataset: an already built training dataset; default: from cfg and the method's supervision.
        work_dir: output folder; default: ``engine.work_dir`` or ``work_dirs/<name>``.
    """

    def __init__(self, cfg: Config, resume: bool | str = False, method=None, train_dataset=None,
                 work_dir: Path | None = None):
        self.cfg = cfg
        self.device = wdist.init_distributed(cfg.engine.device)
        torch.set_num_threads(cpu_threads(cfg.engine.threads, cfg.data.num_workers, self.device))
        self.rank, self.world = wdist.rank(), wdist.world_size()
        self.work_dir = Path(work_dir) if work_dir is not None else resolve_work_dir(cfg)
        self.ckpt_dir = self.work_dir / "checkpoints"
        setup_logging(self.work_dir)
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
        self._resume(resume)

        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.find_unused_parameters,
            )
        else:
            self.model = self.method

    # -- checkpoints -------------------------------------------------------------------------------------------

    def _resume(self, resume: bool | str) -> None:
        if resume is False:
            if latest_checkpoint(self.ckpt_dir) is not None:
                raise FileExistsError(f"{self.ckpt_dir} already holds checkpoints: pass --resume to continue that run "
                                      f"or choose another engine.work_dir")
            return
        path = latest_checkpoint(self.ckpt_dir) if resume is True else Path(resume)
        if path is None:
            log.info("no checkpoint in %s, starting from iteration 0", self.ckpt_dir)
            return
        ckpt = load_checkpoint(path)
        self.method.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt)
        self.start_iter = int(ckpt["iteration"])
        log.info("resumed from %s at iteration %d", path, self.start_iter)
        # extending the schedule or changing logging is what resuming is for; anything else means the finished
        # part of the run was trained with other settings than the ones asked for now
        changed = config_differences(ckpt.get("config") or {}, to_dict(self.cfg), ignore=_RESUME_MAY_CHANGE)
        if changed:
            log.warning("%s was trained with different settings than the current config (resuming anyway; use "
                        "another engine.work_dir for a fresh run): %s", path, "; ".join(changed))

    def save(self, iteration: int, final: bool = False) -> Path:
        path = self.work_dir / "model_final.pth" if final else self.ckpt_dir / f"iter_{iteration:07d}.pth"
        if wdist.is_main():
            save_checkpoint(path, model_state=self.method.state_dict(), optimizer=None if final else self.optimizer,
                            scaler=None if final else self.scaler, iteration=iteration, config=to_dict(self.cfg),
                            extra={"classes": list(self.meta.classes)})
            if not final:
                prune_checkpoints(self.ckpt_dir, self.cfg.engine.keep_ckpts)
        wdist.barrier()
        return path

    # -- loop --------------------------------------------------------------------------------------------------

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
        sampler = InfiniteSampler(len(self.train_dataset), seed=e.seed, rank=self.rank, world=self.world,
                                  start=self.start_iter * self.per_rank_batch)
        loader = make_loader(self.train_dataset, self.per_rank_batch, cfg.data.num_workers, sampler=sampler,
                             drop_last=True)
        tb = _TensorBoard(self.work_dir / "tb", e.tensorboard)
        self.method.train()
        data_iter = iter(loader)
        bar = None
        if wdist.is_main():
            from tqdm import tqdm

            bar = tqdm(total=self.iters, initial=self.start_iter, desc=cfg.name, dynamic_ncols=True, mininterval=2.0,
                       file=sys.stderr)
        running: dict[str, float] = {}
        t0 = time.time()
        for it in range(self.start_iter, self.iters):
            lr = set_lr(self.optimizer, cfg.optim.lr, lr_factor(
                it, name=cfg.schedule.name, iters=self.iters, power=cfg.schedule.power,
                warmup_iters=cfg.schedule.warmup_iters, warmup_ratio=cfg.schedule.warmup_ratio,
                min_lr_ratio=cfg.schedule.min_lr_ratio))
            batch = to_device(next(data_iter), self.device, e.channels_last)
            with autocast(self.device, self.amp_dtype):
                out = self.model(batch, it)
            losses = {k: v for k, v in out.items() if k.startswith("loss_")}
            if not losses:
                raise RuntimeError(f"{cfg.method.name}.training_step returned no loss_* entry")
            loss = sum(v.float() for v in losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at iteration {it}: "
                                         f"{ {k: float(v) for k, v in losses.items()} }")
            self.optimizer.zero_grad(set_to_none=True)
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
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(running.get(k, 0) for k in losses):.4f}", lr=f"{lr:.2e}", refresh=False)
            if done % e.log_interval == 0 or done == self.iters:
                tb.scalars({f"train/{k}": v for k, v in running.items()} | {"train/lr": lr}, done)
                if wdist.is_main():
                    rate = (done - self.start_iter) / max(time.time() - t0, 1e-9)
                    log.info("it %d/%d  lr %.3e  %s  (%.2f it/s)", done, self.iters, lr,
                             "  ".join(f"{k} {v:.4f}" for k, v in running.items()), rate)
            if e.ckpt_interval and done % e.ckpt_interval == 0 and done < self.iters:
                self.save(done)
            if e.eval_interval and done % e.eval_interval == 0 and done < self.iters:
                metrics = self.evaluate(self.work_dir / f"eval_iter_{done:07d}", save=False)
                tb.scalars({"val/miou": metrics["miou"]}, done)
                self.method.train()
        if bar is not None:
            bar.close()
        tb.close()
        self.save(self.iters)  # a resumable checkpoint at the end, then the model-only final file
        path = self.save(self.iters, final=True)
        log.info("training finished in %.1f min: %s", (time.time() - t0) / 60, path)
        return path

    def evaluate(self, out_dir: Path, save: bool = True) -> dict:
        from weakseg.engine.evaluator import evaluate

        dataset = builders.build_eval_dataset(self.cfg, self.meta)
        ev = dataclasses.replace(self.cfg.eval, save_predictions=save and self.cfg.eval.save_predictions,
                                 save_overlays=self.cfg.eval.save_overlays if save else 0)
        return evaluate(self.method, dataset, ev, self.meta, out_dir, self.device, mean=self.cfg.data.mean,
                        std=self.cfg.data.std, amp_dtype=autocast_dtype(self.cfg.eval.amp, self.device),
                        channels_last=self.cfg.engine.channels_last)


def train(cfg: Config, resume: bool | str = False, evaluate_after: bool = True) -> dict:
    """Train and (optionally) evaluate on ``data.val_list``; returns ``{"checkpoint": path, "metrics": ...}``."""
    trainer = Trainer(cfg, resume=resume)
    path = trainer.fit()
    result = {"checkpoint": str(path)}
    if evaluate_after:
        result["metrics"] = trainer.evaluate(trainer.work_dir / "eval")
    if wdist.is_main():
        write_json_atomic(trainer.work_dir / "result.json", result)
    return result

