"""A transformer encoder classifier: 4 layers, width 256, over a sequence of 32 token embeddings.

It takes float features (batch, 32, 64), projects them to width 256, runs 4 encoder layers and
classifies the mean-pooled sequence into 10 classes: the compute-bound benchmark model.
"""

from __future__ import annotations

import torch
from torch import nn

SEQ = 32
FEATURES = 64
INPUTS = [f"x:batch,{SEQ},{FEATURES}:FP32"]
OUTPUTS = ["logits"]


class EncoderClassifier(nn.Module):
    def __init__(self, width: int = 256, layers: int = 4, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.proj = nn.Linear(FEATURES, width)
        self.pos = nn.Parameter(torch.randn(1, SEQ, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=width, nhead=heads, dim_feedforward=width * 4, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.proj(x) + self.pos)
        return self.head(h.mean(dim=1))


def build() -> nn.Module:
    torch.manual_seed(0)
    return EncoderClassifier().eval()
