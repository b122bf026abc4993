"""Toy-sized stand-ins shared by the tests."""

from types import SimpleNamespace

import torch.nn.functional as F
from torch import nn


class TinyBackbone(nn.Module):
    """Four conv stages, channels 8/16/32/32 at reductions 4/8/16/16 (the backbone interface, toy sized)."""

    def __init__(self):
        super().__init__()
        spec = [(3, 8, 4), (8, 16, 2), (16, 32, 2), (32, 32, 1)]
        self.stages = nn.ModuleList(nn.Conv2d(i, o, 3, stride=s, padding=1) for i, o, s in spec)
        self.feature_info, red = [], 1
        for (_, o, s), m in zip(spec, self.stages):
            red *= s
            self.feature_info.append(SimpleNamespace(channels=o, reduction=red, module=m))

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = F.relu(stage(x))
            feats.append(x)
        return feats
