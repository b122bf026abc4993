"""benchmarks/bench_engine.py: every listed network builds from its preset, and the FLOP count of a training step
(which the efficiency figures divide by) matches a hand count on a one-convolution network."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_engine"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_networks_resolve_to_their_presets(bench):
    from weakseg.engine.config import load_config

    expected = {"blpseg-r101": ("blpseg", "resnet101s", "uper", 32),
                "deeplabv2-r101": ("full", "resnet101", "deeplabv2", 8),
                "cdsp-r101": ("full", "resnet101", "deeplabv3plus", 8),
                "horse-blpseg": ("blpseg", "mobilenet_v2", "uper", 32),
                "horse-pce": ("partial_ce", "mobilenet_v2", "uper", 32)}
    for key, net in bench.NETWORKS.items():
        cfg = load_config(bench.ROOT / "configs" / net.preset, list(net.overrides))
        if key in expected:
            assert (cfg.method.name, cfg.model.backbone, cfg.model.head, cfg.model.output_stride) == expected[key]
    for pair in bench.RATIO_PAIRS["cpu"]:  # BLPSeg vs the plain network with the same decoder width
        a, b = (load_config(bench.ROOT / "configs" / bench.NETWORKS[k].preset) for k in pair)
        assert a.method.name == "blpseg" and b.method.name == "partial_ce"
        assert a.method.decoder_channels == b.model.head_kwargs["channels"]
        assert bench.NETWORKS[pair[0]].size == bench.NETWORKS[pair[1]].size


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

    def forward(self, batch, step):
        return {"loss_x": self.conv(batch["image"]).square().mean()}


def test_flop_count_of_a_training_step(bench):
    method = OneConv()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    batch = {"image": torch.randn(2, 3, 5, 5, requires_grad=False)}
    # forward 2·(N·H·W·Cout)·(Cin·9); backward: weight gradient only (the image needs none), the same count
    conv = 2 * (2 * 5 * 5 * 4) * (3 * 9)
    assert bench.count_flops(method, opt, batch, torch.device("cpu")) == 2 * conv
