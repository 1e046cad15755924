"""Names mean what they say: --input binds to forward()'s parameters by name, outputs keep the
names of what forward returns; checked on real exports with onnxruntime against PyTorch."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from modeltools_helpers import assert_one_line_error, load_models, read_manifest, run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_harness import start_server  # noqa: E402

NAMED_MODELS = textwrap.dedent(
    '''
    from collections import namedtuple

    import torch
    from torch import nn


    class Masked(nn.Module):
        """Token ids through an embedding, weighted by the mask: swapping the two changes the answer."""

        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 4)

        def forward(self, input_ids, attention_mask):
            weights = attention_mask.unsqueeze(-1).float()
            return (self.embedding(input_ids) * weights).sum(1)


    def masked():
        torch.manual_seed(0)
        return Masked().eval()


    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            logits = self.fc(x)
            return {"logits": logits, "probs": torch.softmax(logits, -1)}


    def heads():
        torch.manual_seed(0)
        return Heads().eval()


    class Gapped(nn.Module):
        """An optional parameter between the two inputs: only binding by name reaches the mask."""

        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.types = nn.Embedding(2, 4)

        def forward(self, input_ids, token_type_ids=None, attention_mask=None):
            h = self.embedding(input_ids)
            if token_type_ids is not None:
                h = h + self.types(token_type_ids)
            if attention_mask is not None:
                h = h * attention_mask.unsqueeze(-1).float()
            return h.sum(1)


    def gapped():
        torch.manual_seed(0)
        return Gapped().eval()


    Pair = namedtuple("Pair", ["scores", "embedding"])


    class Fields(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return Pair(torch.tanh(self.fc(x)), x * 2)


    def fields():
        torch.manual_seed(0)
        return Fields().eval()


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = torch.tanh(self.fc(x))
            return y, y * 3


    def plain():
        torch.manual_seed(0)
        return Plain().eval()


    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return torch.tanh(self.fc(x)) * 2


    def scaled():
        torch.manual_seed(0)
        return Scaled().eval()


    class Repeats(nn.Module):
        """Returns its input and one tensor twice: outputs that are no value of their own."""

        def forward(self, x):
            y = x * 2
            return x, y, y


    def repeats():
        return Repeats()


    class Broadcasts(nn.Module):
        """Adds a (2, 8) tensor: the exporter fixes the batch to 2, without an error of its own."""

        def forward(self, x):
            return x + torch.ones(2, 8)


    def broadcasts():
        return Broadcasts()


    class Specializes(nn.Module):
        def forward(self, x):
            return x.reshape(2, -1)


    def specializes():
        return Specializes()
    '''
)


@pytest.fixture(scope="module")
def named_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("namedsrc") / "named_models.py"
    path.write_text(NAMED_MODELS)
    return path


def _export(out: Path, source: str, *args: str) -> Path:
    r = run_cli("export", source, "--out", str(out), *args)
    assert r.exit_code == 0, r.stderr
    return out


def _run(pkg: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    s = ort.InferenceSession(str(pkg / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds), strict=True))


def _torch(models: Path, factory: str, **inputs: np.ndarray) -> Any:
    model = getattr(load_models(models), factory)()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()})


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_inputs_bind_by_name_in_any_order(tmp_path: Path, named_models: Path, exporter: str) -> None:
    pkg = _export(
        tmp_path / "masked",
        f"{named_models}:masked",
        "--input",
        "attention_mask:batch,6:INT64",
        "--input",
        "input_ids:batch,6:INT64",
        "--exporter",
        exporter,
    )
    assert read_manifest(pkg)["exporter"] == exporter
    assert sorted(t["name"] for t in read_manifest(pkg)["inputs"]) == ["attention_mask", "input_ids"]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 10, (3, 6)).astype(np.int64)
    mask = rng.integers(0, 2, (3, 6)).astype(np.int64)
    (got,) = _run(pkg, {"input_ids": ids, "attention_mask": mask}).values()
    expected = _torch(named_models, "masked", input_ids=ids, attention_mask=mask).numpy()
    swapped = _torch(named_models, "masked", input_ids=mask, attention_mask=ids).numpy()
    assert not np.allclose(expected, swapped)  # the test can tell a swap
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_an_input_after_an_optional_parameter_binds_to_its_own(
    tmp_path: Path, named_models: Path, exporter: str
) -> None:
    """forward(input_ids, token_type_ids=None, attention_mask=None) with input_ids and attention_mask:
    the mask reaches attention_mask with either exporter, never the token_type_ids position."""
    pkg = _export(
        tmp_path / "gapped",
        f"{named_models}:gapped",
        "--input",
        "input_ids:batch,6:INT64",
        "--input",
        "attention_mask:batch,6:INT64",
        "--exporter",
        exporter,
    )
    assert read_manifest(pkg)["exporter"] == exporter
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 10, (3, 6)).astype(np.int64)
    mask = (np.arange(6) < np.array([[2], [6], [4]])).astype(np.int64)
    (got,) = _run(pkg, {"input_ids": ids, "attention_mask": mask}).values()
    expected = _torch(named_models, "gapped", input_ids=ids, attention_mask=mask).numpy()
    by_position = _torch(named_models, "gapped", input_ids=ids, token_type_ids=mask).numpy()
    assert not np.allclose(expected, by_position)  # the test can tell the two bindings apart
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_input_that_is_not_a_parameter_is_refused_with_the_parameters(
    tmp_path: Path, named_models: Path
) -> None:
    r = run_cli(
        "export",
        f"{named_models}:masked",
        "-i",
        "ids:batch,6:INT64",
        "-i",
        "attention_mask:batch,6:INT64",
        "-o",
        tmp_path / "o",
    )
    assert_one_line_error(r, "--input ids", "no parameter 'ids'", "input_ids, attention_mask")
    assert not (tmp_path / "o").exists()


def test_a_parameter_without_an_input_is_refused(tmp_path: Path, named_models: Path) -> None:
    r = run_cli("export", f"{named_models}:masked", "-i", "input_ids:batch,6:INT64", "-o", tmp_path / "o")
    assert_one_line_error(r, "'attention_mask' has no --input")


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dict_outputs_keep_their_keys_whatever_the_output_order(
    tmp_path: Path, named_models: Path, exporter: str
) -> None:
    pkg = _export(
        tmp_path / "heads",
        f"{named_models}:heads",
        "--input",
        "x:batch,6:FP32",
        "--output",
        "probs",
        "--output",
        "logits",
        "--exporter",
        exporter,
    )
    assert read_manifest(pkg)["exporter"] == exporter
    assert [t["name"] for t in read_manifest(pkg)["outputs"]] == ["logits", "probs"]
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    expected = _torch(named_models, "heads", x=x)
    np.testing.assert_allclose(got["probs"], expected["probs"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["logits"], expected["logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["probs"].sum(-1), 1.0, atol=1e-5)


def test_served_dict_outputs_answer_under_their_keys(tmp_path: Path, named_models: Path) -> None:
    """The real server and tritonclient: each requested output is the tensor of its key."""
    import tritonclient.http as http

    pkg = _export(
        tmp_path / "heads",
        f"{named_models}:heads",
        "-i",
        "x:batch,6:FP32",
        "--output",
        "probs",
        "--output",
        "logits",
    )
    server = start_server(pkg)
    try:
        client = http.InferenceServerClient(server.address)
        x = np.random.default_rng(8).standard_normal((3, 6)).astype(np.float32)
        inp = http.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        asked = [http.InferRequestedOutput("probs"), http.InferRequestedOutput("logits")]
        result = client.infer(server.name, [inp], outputs=asked)
        expected = _torch(named_models, "heads", x=x)
        np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"].numpy(), atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"].numpy(), atol=1e-5)
    finally:
        server.stop()


def test_dict_outputs_without_output_flags_are_named_by_their_keys(
    tmp_path: Path, named_models: Path
) -> None:
    pkg = _export(tmp_path / "heads", f"{named_models}:heads", "--input", "x:batch,6:FP32")
    assert [t["name"] for t in read_manifest(pkg)["outputs"]] == ["logits", "probs"]


def test_output_names_that_are_not_the_keys_are_refused(tmp_path: Path, named_models: Path) -> None:
    r = run_cli(
        "export",
        f"{named_models}:heads",
        "-i",
        "x:batch,6:FP32",
        "--output",
        "a",
        "--output",
        "b",
        "-o",
        tmp_path / "o",
    )
    assert_one_line_error(r, "--output a, b", "named outputs logits, probs")


def test_namedtuple_outputs_keep_their_fields(tmp_path: Path, named_models: Path) -> None:
    pkg = _export(tmp_path / "fields", f"{named_models}:fields", "--input", "x:batch,6:FP32")
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    assert list(got) == ["scores", "embedding"]
    np.testing.assert_allclose(got["embedding"], x * 2, atol=1e-6)
    np.testing.assert_allclose(got["scores"], _torch(named_models, "fields", x=x).scores.numpy(), atol=1e-5)


def test_unnamed_outputs_are_numbered_never_named_after_graph_ops(tmp_path: Path, named_models: Path) -> None:
    pkg = _export(tmp_path / "plain", f"{named_models}:plain", "--input", "x:batch,6:FP32")
    x = np.random.default_rng(5).standard_normal((2, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    assert list(got) == ["output_0", "output_1"]
    np.testing.assert_allclose(got["output_1"], got["output_0"] * 3, atol=1e-5)


def test_an_output_name_that_an_internal_value_holds_still_exports(
    tmp_path: Path, named_models: Path
) -> None:
    """The exporter calls the Tanh value ``tanh`` and the product ``mul``; naming the outputs the
    other way round makes each name collide with an internal value."""
    pkg = _export(
        tmp_path / "plain",
        f"{named_models}:plain",
        "--input",
        "x:batch,6:FP32",
        "--output",
        "mul",
        "--output",
        "tanh",
    )
    x = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    y, y3 = _torch(named_models, "plain", x=x)
    assert list(got) == ["mul", "tanh"]
    np.testing.assert_allclose(got["mul"], y.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["tanh"], y3.numpy(), atol=1e-5)


def test_an_output_named_like_an_inner_value_still_exports(tmp_path: Path, named_models: Path) -> None:
    """``tanh`` is the exporter's name of the inner Tanh value; the output (its double) takes it."""
    pkg = _export(tmp_path / "scaled", f"{named_models}:scaled", "-i", "x:batch,6:FP32", "--output", "tanh")
    x = np.random.default_rng(7).standard_normal((3, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    np.testing.assert_allclose(got["tanh"], _torch(named_models, "scaled", x=x).numpy(), atol=1e-5)


def test_an_input_or_a_tensor_returned_twice_gets_outputs_of_its_own(
    tmp_path: Path, named_models: Path
) -> None:
    pkg = _export(tmp_path / "repeats", f"{named_models}:repeats", "-i", "x:batch,6:FP32")
    x = np.random.default_rng(9).standard_normal((2, 6)).astype(np.float32)
    got = _run(pkg, {"x": x})
    assert list(got) == ["output_0", "output_1", "output_2"]
    np.testing.assert_array_equal(got["output_0"], x)
    np.testing.assert_allclose(got["output_1"], x * 2)
    np.testing.assert_allclose(got["output_2"], x * 2)


def test_a_dynamic_dimension_the_module_fixes_is_an_error_naming_it(
    tmp_path: Path, named_models: Path
) -> None:
    r = run_cli("export", f"{named_models}:broadcasts", "-i", "x:batch,8:FP32", "-o", tmp_path / "o")
    assert_one_line_error(r, "--input x", "dimension 1 ('batch')", "declared dynamic", "fixed it to 2")
    assert not (tmp_path / "o").exists()


def test_a_dynamic_dimension_the_export_fixed_is_an_error_naming_it(
    tmp_path: Path, named_models: Path
) -> None:
    model = load_models(named_models).specializes()
    program = torch.export.export(model, (torch.zeros(2, 8),))  # no dynamic shapes: all fixed
    pt2 = tmp_path / "fixed.pt2"
    torch.export.save(program, pt2)
    r = run_cli("export", pt2, "-i", "x:batch,8:FP32", "-o", tmp_path / "o")
    assert_one_line_error(r, "--input x", "dimension 1 ('batch')", "declared dynamic", "fixed it to 2")
    assert not (tmp_path / "o").exists()


def test_graph_outputs_that_share_a_value_get_one_each(tmp_path: Path) -> None:
    """A graph (as another exporter may write it) whose outputs are its input and one value twice:
    each output gets a value of its own under its name, and onnxruntime runs it."""
    import onnx
    from inferstack.modeltools.naming import normalize
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("x", "y", "y", "x")]
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [info[0]], info[1:])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    normalize(path, ["input"], ["a", "b", "c"])
    onnx.checker.check_model(str(path))
    x = np.array([[1.0, -2.0]], np.float32)
    got = _run(tmp_path, {"input": x})
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["a"], -x)
    np.testing.assert_array_equal(got["b"], -x)
    np.testing.assert_array_equal(got["c"], x)
