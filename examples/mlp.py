"""A small MLP, 256-1024-1024-10 (fp32): the runtime benchmark's overhead-bound model."""

from __future__ import annotations

import torch
from torch import nn

INPUTS = ["x:batch,256:FP32"]
OUTPUTS = ["logits"]


class MLP(nn.Module):
    def __init__(self, d_in: int = 256, hidden: int = 1024, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()
