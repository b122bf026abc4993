"""Process-level runtime helpers shared by the trainer, the stage runner, the CLI and the demo: logging set-up,
progress bars, seeding and random-state capture, CPU threads, the one-run-per-work-folder lock, and the unwrapping
of errors raised inside DataLoader workers.

Reproducibility design (exact resume): every training sample's augmentation draws from random generators seeded by
(seed, rank, stream position) of that sample (:func:`sample_seed`, applied by :func:`isolated_rng` around the
dataset call), never from a DataLoader worker's running state. The augmentation of sample k is therefore the same
whichever worker loads it, whatever ``num_workers`` is, and whether or not the run was interrupted; the main
process's own random states (dropout, random choices inside ``training_step``) are saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from weakseg.utils import dist as wdist

log = logging.getLogger("weakseg")


# ----------------------------------------------------------------------------------------------------------------
# logging and progress


def setup_logging(work_dir: Path | None = None, name: str = "train.log") -> None:
    """Log to stderr (rank 0 only) and, when ``work_dir`` is given, append to ``work_dir/name``."""
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
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(work_dir / name)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    log.propagate = False


def log_file() -> Path | None:
    """The file the ``weakseg`` logger writes to (None when it logs to stderr only)."""
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.flush()
            return Path(h.baseFilename)
    return None


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
             main_only: bool = True):
    """A tqdm progress bar on stderr, redrawn at most every 2 s; disabled on ranks other than 0 when
    ``main_only`` (every rank would otherwise draw its own bar)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=2.0,
                file=sys.stderr, disable=main_only and not wdist.is_main())


# ----------------------------------------------------------------------------------------------------------------
# threads and seeds


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


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's legacy global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def sample_seed(seed: int, rank: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of rank ``rank``'s training stream (stable across runs,
    processes and platforms: numpy's SeedSequence hashing, not Python's salted ``hash``)."""
    lo, hi = np.random.SeedSequence([int(seed), int(rank), int(position)]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31 | int(lo) >> 1) & (2**63 - 1)


def rng_state() -> dict:
    """The random states of this process (torch CPU and CUDA, numpy's global generator, python's ``random``) as
    tensors and plain numbers, loadable with ``torch.load(weights_only=True)``."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "python_version": int(version),
        "python_state": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (entries that are absent are left alone, so that checkpoints of
    older versions still load)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy_keys" in state:
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                             int(state.get("numpy_has_gauss", 0)), float(state.get("numpy_cached_gaussian", 0.0))))
    if "python_state" in state:
        random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python_state"].tolist()),
                         state.get("python_gauss")))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block with its own random streams and give the caller's back afterwards.

    With ``seed``, python's ``random``, numpy's global generator and torch's CPU generator are seeded from it inside
    the block (a sample's augmentation becomes a function of the seed alone). Either way the CPU random states of
    the process are the same after the block as before it, so work done inside (an evaluation, a sample loaded in
    the main process) never shifts the training's random stream. CUDA generators are not touched: code that draws
    on the GPU inside the block must not rely on this.
    """
    saved_torch = torch.get_rng_state()
    saved_np = np.random.get_state()
    saved_py = random.getstate()
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams stay the caller's
            np.random.seed(seed % 2**32)
            random.seed(seed)
        yield
    finally:
        torch.set_rng_state(saved_torch)
        np.random.set_state(saved_np)
        random.setstate(saved_py)


# ----------------------------------------------------------------------------------------------------------------
# errors from DataLoader workers

_WORKER_RE = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """An exception re-raised by a DataLoader from one of its workers carries the worker's whole traceback as its
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ... DataError: <message>").
    Return an exception of the same type whose message is the original one; any other exception is returned as is.
    """
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
    m = _WORKER_RE.match(text)
    if m is None:
        return exc
    cls = type(exc)
    names = [f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__]
    cut = -1
    for name in names:  # the traceback ends with "<qualified type name>: <message>"
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            cut = at + len(name) + 3
            break
    message = text[cut:].strip() if cut >= 0 else text.strip().splitlines()[-1]
    try:
        new = cls(message)
    except Exception:  # a type that cannot be built from one message: keep the original
        return exc
    new.__cause__ = exc
    return new


# ----------------------------------------------------------------------------------------------------------------
# one run per work folder


class WorkDirBusy(RuntimeError):
    """Another live process is running in this work folder."""


class WorkDirLock:
    """An exclusive lock on ``<work_dir>/.weakseg.lock`` held while a run writes there (``with WorkDirLock(d):``).

    The lock is an OS file lock (``filelock``), which the kernel releases when the process ends, however it ends:
    a crashed or killed run never leaves the folder locked. A second run is refused at once with
    :class:`WorkDirBusy`, naming the process that holds it (read from ``.weakseg.lock.owner``). Only rank 0 of a
    torchrun job locks; the other ranks write where rank 0 tells them.
    """

    NAME = ".weakseg.lock"

    def __init__(self, work_dir: str | os.PathLike, what: str = "run"):
        self.work_dir = Path(work_dir)
        self.what = what
        self._lock = None

    def __enter__(self) -> "WorkDirLock":
        if wdist.env_rank() != 0:  # torchrun's RANK: the process group may not be initialised yet
            return self
        from filelock import FileLock, Timeout

        self.work_dir.mkdir(parents=True, exist_ok=True)
        owner = self.work_dir / (self.NAME + ".owner")
        lock = FileLock(str(self.work_dir / self.NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = owner.read_text(encoding="utf-8").strip()
            except OSError:
                holder = "another process"
            raise WorkDirBusy(f"{self.work_dir}: already in use by {holder}; wait for it to finish or choose "
                              f"another engine.work_dir") from None
        self._lock = lock
        with contextlib.suppress(OSError):  # the owner note only improves the message; the lock is what counts
            owner.write_text(f"process {os.getpid()} ({self.what})\n", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.work_dir / (self.NAME + ".owner")).unlink()
            self._lock.release()
            self._lock = None
