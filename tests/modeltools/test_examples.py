"""The example models, their synthetic tasks, the training script and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inferstack.examples import cnn, data, mlp, train, transformer


@pytest.mark.parametrize("kind", ["cnn", "transformer", "mlp"])
def test_labels_are_a_deterministic_function_of_the_input(kind: str) -> None:
    x, y = data.make(kind, 200, seed=3)
    x2, y2 = data.make(kind, 200, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.dtype == np.float32 and y.dtype == np.int64
    # the label is the class whose prototype correlates best with the sample
    protos = data._prototypes(kind).reshape(data.CLASSES, -1)
    protos = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    assert np.array_equal(np.argmax(x.reshape(200, -1) @ protos.T, axis=1), y)
    assert len(set(y.tolist())) >= 8  # not one class
    x3, _ = data.make(kind, 200, seed=4)
    assert not np.array_equal(x, x3)


def test_sample_shapes_fit_the_example_models() -> None:
    for kind, module in (("cnn", cnn), ("transformer", transformer), ("mlp", mlp)):
        x, _ = data.make(kind, 3)
        with torch.no_grad():
            logits = module.build()(torch.from_numpy(x))
        assert logits.shape == (3, data.CLASSES)
        assert data.input_name(kind) == module.INPUTS[0].split(":")[0]


def test_a_dozen_steps_of_training_learn_the_cnn_task() -> None:
    # counted in steps, not seconds, so that a busy machine gives the same result
    model, result = train.train("cnn", seconds=0.0, min_steps=12)
    assert result.steps == 12
    assert result.test_accuracy > 0.4, result  # chance is 0.10
    x, y = data.make("cnn", 256, seed=99)
    untrained = train.evaluate(cnn.build(), x, y)
    assert train.evaluate(model, x, y) > untrained + 0.1


def test_train_script_writes_a_plain_state_dict_and_labelled_data(tmp_path: Path) -> None:
    train.main(
        [
            "mlp",
            "--seconds",
            "0.5",
            "--out",
            str(tmp_path / "m.pt"),
            "--data",
            str(tmp_path / "d.npz"),
            "--samples",
            "32",
        ]
    )
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    model = mlp.build()
    model.load_state_dict(state)
    npz = np.load(tmp_path / "d.npz")
    assert set(npz.files) == {"x", "labels"} and npz["x"].shape == (32, 256) and npz["labels"].shape == (32,)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from inferstack.examples import demo

    assert (
        demo.main(["--workdir", str(tmp_path / "demo"), "--train-seconds", "3", "--bench-seconds", "0.3"])
        == 0
    )
    assert (tmp_path / "demo" / "cnn-opt" / "manifest.json").is_file()
