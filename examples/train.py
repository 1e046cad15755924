"""Train an example model for a few seconds on its synthetic task and save its state dict.

    python -m inferstack.examples.train cnn --seconds 5 --out build/cnn.pt --data build/cnn-data.npz

The saved file is a plain state dict, so export takes it without trusting a pickle::

    inferstack export inferstack.examples.cnn:build --weights build/cnn.pt \\
        --input image:batch,3,32,32:FP32 --output logits --out build/cnn
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from inferstack.examples import data


@dataclass
class TrainResult:
    steps: int
    seconds: float
    train_accuracy: float  # on the last batches
    test_accuracy: float  # on held-out samples


def evaluate(model: object, x: np.ndarray, labels: np.ndarray) -> float:
    import torch

    assert isinstance(model, torch.nn.Module)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 256):
            logits = model(torch.from_numpy(x[i : i + 256]))
            correct += int((logits.argmax(dim=1).numpy() == labels[i : i + 256]).sum())
    return correct / len(x)


#: batch size and learning rate per example: small batches, so that a few seconds are many steps
SETTINGS = {"cnn": (32, 5e-3), "transformer": (16, 1e-3), "mlp": (64, 1e-3)}


def train(kind: str, seconds: float = 5.0, seed: int = 0, min_steps: int = 5) -> tuple[object, TrainResult]:
    """Train ``inferstack.examples.<kind>.build()`` for about ``seconds``, and at least ``min_steps``.

    Returns the model (in eval mode) and its scores.
    """
    import torch

    batch, lr = SETTINGS[kind]
    module = importlib.import_module(f"inferstack.examples.{kind}")
    model = module.build()
    torch.manual_seed(seed)
    x_train, y_train = data.make(kind, 2048, seed=seed)
    x_test, y_test = data.make(kind, 512, seed=seed + 1000)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    steps = 0
    recent: list[float] = []
    gen = torch.Generator().manual_seed(seed)
    while time.perf_counter() - start < seconds or steps < min_steps:
        idx = torch.randint(0, len(xt), (batch,), generator=gen)
        logits = model(xt[idx])
        loss = loss_fn(logits, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        recent = [*recent[-9:], float((logits.argmax(1) == yt[idx]).float().mean())]
    elapsed = time.perf_counter() - start
    model.eval()
    return model, TrainResult(steps, elapsed, float(np.mean(recent)), evaluate(model, x_test, y_test))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["cnn", "transformer", "mlp"])
    parser.add_argument("--seconds", type=float, default=5.0, help="training time (default 5)")
    parser.add_argument("--out", type=Path, required=True, help="where to save the state dict (.pt)")
    parser.add_argument("--data", type=Path, help="also write held-out samples + labels (.npz) for optimize")
    parser.add_argument("--samples", type=int, default=512, help="samples in --data (default 512)")
    parser.add_argument("--min-steps", type=int, default=5, help="train at least this many steps (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    model, result = train(args.kind, args.seconds, args.seed, args.min_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    assert isinstance(model, torch.nn.Module)
    torch.save(model.state_dict(), args.out)
    print(
        f"{args.kind}: {result.steps} steps in {result.seconds:.1f} s, "
        f"train accuracy {result.train_accuracy:.3f}, held-out accuracy {result.test_accuracy:.3f} "
        f"(chance {1 / data.CLASSES:.2f}) -> {args.out}"
    )
    if args.data:
        args.data.parent.mkdir(parents=True, exist_ok=True)
        data.save_npz(str(args.data), args.kind, args.samples, seed=args.seed + 2000)
        print(f"held-out data: {args.samples} samples with labels -> {args.data}")


if __name__ == "__main__":
    main()
