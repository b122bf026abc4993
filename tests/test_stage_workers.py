"""Per-image stages over several processes (engine.pipeline._process_in_parallel): the main process and spawned
helpers share the items, each exactly once; an error in a helper reaches the caller as the same exception."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from weakseg.engine.pipeline import _process_in_parallel


def _setup(ctx):
    """ctx = (main pid, folder, helper fails): a helper announces itself once it is ready."""
    main, folder, helper_fails = ctx
    if os.getpid() != main:
        (folder / "helper.ready").write_text("")
    return {"main": main, "folder": folder, "helper_fails": helper_fails}


def _process(state, item: str, path: Path) -> None:
    in_main = os.getpid() == state["main"]
    if in_main and item == "im000":  # hold the main process on its first item until a helper is working
        deadline = time.time() + 120
        while not (state["folder"] / "helper.ready").exists() and time.time() < deadline:
            time.sleep(0.05)
    if not in_main and state["helper_fails"]:
        raise ValueError(f"{item}.png: not an image")
    path.write_text(f"{item} {'main' if in_main else 'helper'}")


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


STAGE = SimpleNamespace(name="toy", setup=_setup, process=_process, ext=".txt")


def test_items_are_shared_between_the_main_process_and_a_helper(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    todo = [f"im{i:03d}" for i in range(40)]
    bar = _Bar()
    _process_in_parallel(STAGE, (os.getpid(), tmp_path, False), out, todo, workers=2, bar=bar)
    outputs = {p.stem: p.read_text().split() for p in out.glob("*.txt")}
    assert sorted(outputs) == todo and bar.n == 40  # every item exactly once (one file each), all counted
    assert all(name == item for item, (name, _) in outputs.items())
    assert {who for _, who in outputs.values()} == {"main", "helper"}


def test_an_error_in_a_helper_is_raised_by_the_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    todo = [f"im{i:03d}" for i in range(40)]
    with pytest.raises(ValueError, match=r"im\d{3}\.png: not an image"):
        _process_in_parallel(STAGE, (os.getpid(), tmp_path, True), out, todo, workers=2, bar=_Bar())
    assert len(list(out.glob("*.txt"))) < 40  # the run stopped early
