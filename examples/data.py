"""Synthetic data sets for the example models, with labels that are a function of the input.

Each class has a fixed random prototype; a sample is a scaled prototype of its class plus noise,
and its label is the class whose prototype correlates best with the sample, so a model can learn
it exactly and accuracy, top-1 agreement and calibration mean something. Same seed, same data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = 10
_PROTOTYPE_SEED = 1234  # prototypes are part of the task: fixed, whatever the sample seed


def _smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-frequency 3x32x32 patterns (8x8 noise upsampled), so that convolutions find them."""
    coarse = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)


def _prototypes(kind: str) -> np.ndarray:
    rng = np.random.default_rng(_PROTOTYPE_SEED)
    if kind == "cnn":
        return _smooth_images(rng, CLASSES)
    if kind == "transformer":
        from inferstack.examples.transformer import FEATURES, SEQ

        # one feature vector per class, repeated along the sequence: mean pooling recovers it
        per_token = rng.standard_normal((CLASSES, 1, FEATURES)).astype(np.float32)
        return np.repeat(per_token, SEQ, axis=1)
    if kind == "mlp":
        return rng.standard_normal((CLASSES, 256)).astype(np.float32)
    raise ValueError(f"unknown example {kind!r}; choose cnn, transformer or mlp")


#: prototype strength against unit noise, per example: easy enough to learn in a few seconds on a
#: CPU, hard enough that a quantized model can disagree with the fp32 one near class boundaries
SIGNAL = {"cnn": 2.0, "transformer": 0.2, "mlp": 1.0}


def make(kind: str, n: int, seed: int = 0, signal: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples (float32, the model's input shape) and their labels (int64)."""
    protos = _prototypes(kind)
    signal = SIGNAL[kind] if signal is None else signal
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, CLASSES, n)
    if kind == "cnn":
        noise = _smooth_images(rng, n)
    else:
        noise = rng.standard_normal((n, *protos.shape[1:])).astype(np.float32)
    x = (signal * protos[chosen] + noise).astype(np.float32)
    flat_p = protos.reshape(CLASSES, -1)
    flat_p = flat_p / np.linalg.norm(flat_p, axis=1, keepdims=True)
    labels = np.argmax(x.reshape(n, -1) @ flat_p.T, axis=1).astype(np.int64)
    return x, labels


def input_name(kind: str) -> str:
    """The example model's input name, as its INPUTS spec gives it."""
    import importlib

    module = importlib.import_module(f"inferstack.examples.{kind}")
    return str(module.INPUTS[0].split(":", 1)[0])


def save_npz(path: str, kind: str, n: int, seed: int = 1) -> None:
    """An .npz for ``inferstack optimize --data``: the input array under its name, plus ``labels``."""
    x, labels = make(kind, n, seed)
    arrays: dict[str, Any] = {input_name(kind): x, "labels": labels}
    np.savez(path, **arrays)
