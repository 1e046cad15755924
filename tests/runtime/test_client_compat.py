"""Clients written for Triton and KServe, unchanged, against the real server: tritonclient.grpc
(sync, callback and asyncio), tritonclient.http (sync, async and asyncio), the raw gRPC stub with
typed ``contents``, and kserve's ``InferenceRESTClient`` / ``InferenceGRPCClient``, the way Triton's
client examples call them (``simple``: INPUT0, INPUT1 INT32 [-1, 16] -> OUTPUT0 = sum, OUTPUT1 =
difference, max batch 8; ``simple_string``: the same on BYTES holding decimal integers;
``simple_identity``: BYTES identity; ``scores``/``scores_whole``: FP32 [batch, 4, 5] with and
without batching, and ``image``: an NCHW image input, for the classification extension and the
input format). One server (``--model-repository`` with ``--model-control explicit``) serves every
test.

The last sections hold what those clients check in Triton's own words or behaviour: the
classification extension, a load's configuration override, the texts of unknown models and
versions, a malformed version, raw plus typed contents, the input format, and the gRPC calls
the server does not serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
import tritonclient.http.aio as tha
from runtime_harness import Served, package, save_graph, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

ADD_SUB = '''
import torch
from torch import nn


class AddSub(nn.Module):
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

    def forward(self, INPUT0, INPUT1):
        return INPUT0 + INPUT1, INPUT0 - INPUT1


def build():
    return AddSub().eval()
'''


SCORES = '''
import torch
from torch import nn


class Scores(nn.Module):
    """OUTPUT0 = 2 * INPUT0 (FP32, [batch, 4, 5]: what a classifier's scores look like to the
    classification extension); OUTPUT1 = INPUT0 > 0 (BOOL, which it cannot classify)."""

    def forward(self, INPUT0):
        return INPUT0 * 2.0, INPUT0 > 0


def build():
    return Scores().eval()
'''


IMAGE = '''
import torch
from torch import nn


class Pool(nn.Module):
    """An image classifier's shape: INPUT0 [batch, 3, 8, 8] (NCHW) -> OUTPUT0 [batch, 3], each
    channel's mean as its class score."""

    def forward(self, INPUT0):
        return INPUT0.mean(dim=(2, 3))


def build():
    return Pool().eval()
'''


def _export(work: Path, code: str, name: str, inputs: list[str], outputs: list[str],
            formats: dict[str, str] | None = None) -> Path:
    """A PyTorch module (``code``'s ``build()``) exported by ``inferstack export``'s own code path
    (max batch 8)."""
    from inferstack.modeltools.export import ExportOptions, export
    from inferstack.modeltools.loading import Source
    from inferstack.modeltools.spec import parse_inputs

    source = work / f"{name}.py"
    source.write_text(code)
    opts = ExportOptions(
        source=Source(spec=f"{source}:build"),
        inputs=parse_inputs(inputs),
        outputs=outputs,
        name=name,
        max_batch_size=8,
        out=work / name,
        input_formats=formats or {},
    )
    _, out = export(opts)
    return out


def _export_add_sub(work: Path) -> Path:
    """The 'simple' model."""
    return _export(work, ADD_SUB, "simple", ["INPUT0:batch,16:int32", "INPUT1:batch,16:int32"],
                   ["OUTPUT0", "OUTPUT1"])


def _string_models(work: Path, repo: Path) -> Path:
    """``simple_string`` in the repository and ``simple_identity`` outside it (given as a PATH).
    BYTES cannot be computed by a PyTorch module, so these are ONNX graphs: Cast string->INT32,
    Add/Sub, Cast INT32->string; and Identity."""
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [
            h.make_node("Cast", ["INPUT0"], ["a"], to=T.INT32),
            h.make_node("Cast", ["INPUT1"], ["b"], to=T.INT32),
            h.make_node("Add", ["a", "b"], ["s"]),
            h.make_node("Sub", ["a", "b"], ["d"]),
            h.make_node("Cast", ["s"], ["OUTPUT0"], to=T.STRING),
            h.make_node("Cast", ["d"], ["OUTPUT1"], to=T.STRING),
        ],
        "simple_string",
        [h.make_tensor_value_info(n, T.STRING, ["batch", 16]) for n in ("INPUT0", "INPUT1")],
        [h.make_tensor_value_info(n, T.STRING, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    package(repo / "simple_string", [save_graph(graph, work / "simple_string.onnx")], "simple_string", 8)
    graph = h.make_graph(
        [h.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [h.make_tensor_value_info("INPUT0", T.STRING, ["batch", "n"])],
        [h.make_tensor_value_info("OUTPUT0", T.STRING, ["batch", "n"])],
    )
    onnx_file = save_graph(graph, work / "simple_identity.onnx")
    return package(work / "simple_identity", [onnx_file], "simple_identity", 8)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the model repository, simple_identity's package outside it)."""
    work = tmp_path_factory.mktemp("client-compat")
    repo = work / "repository"
    repo.mkdir()
    simple = _export_add_sub(work)
    shutil.copytree(simple, repo / "simple")
    shutil.copytree(simple, repo / "simple_reload")  # the model the repository test unloads and loads
    identity = _string_models(work, repo)
    scores = _export(work, SCORES, "scores", ["INPUT0:batch,4,5:fp32"], ["OUTPUT0", "OUTPUT1"])
    shutil.copytree(scores, repo / "scores")
    # the same graph served without batching (max_batch_size 0): classified as one entry
    package(repo / "scores_whole", [scores / "model.onnx"], "scores_whole", 0)
    image = _export(work, IMAGE, "image", ["INPUT0:batch,3,8,8:fp32"], ["OUTPUT0"], {"INPUT0": "NCHW"})
    shutil.copytree(image, repo / "image")
    return repo, identity


@pytest.fixture(scope="module")
def server(repository: tuple[Path, Path]) -> Iterator[Served]:
    repo, identity = repository
    s = start_server(
        identity, "--model-repository", str(repo), "--model-control", "explicit", "--drain-timeout-s", "1"
    )
    yield s
    s.stop()


IN0 = np.arange(16, dtype=np.int32).reshape(1, 16)
IN1 = np.full((1, 16), -3, dtype=np.int32)


def _client(protocol: str, s: Served) -> Any:
    return (
        tg.InferenceServerClient(s.grpc_address)
        if protocol == "grpc"
        else th.InferenceServerClient(s.address)
    )


def _inputs(mod: Any, a: np.ndarray = IN0, b: np.ndarray = IN1, binary: bool = True) -> list[Any]:
    out = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        t = mod.InferInput(name, list(data.shape), "INT32")
        if mod is th:
            t.set_data_from_numpy(data, binary_data=binary)
        else:
            t.set_data_from_numpy(data)
        out.append(t)
    return out


def _check_add_sub(result: Any, a: np.ndarray = IN0, b: np.ndarray = IN1) -> None:
    sum_, diff = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert sum_.dtype == np.int32 and diff.dtype == np.int32
    np.testing.assert_array_equal(sum_, a + b)
    np.testing.assert_array_equal(diff, a - b)


# -- inference -------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_simple_add_sub(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    result = c.infer("simple", _inputs(mod), outputs=outputs, request_id="req-7", headers={"test": "1"})
    _check_add_sub(result)
    response = result.get_response()
    if protocol == "grpc":
        assert (response.id, response.model_version) == ("req-7", "1")
    else:
        assert (response["id"], response["model_version"]) == ("req-7", "1")
    # a batch of 8 rows (the model's max batch size); one output only
    a = np.arange(128, dtype=np.int32).reshape(8, 16)
    b = np.arange(128, dtype=np.int32)[::-1].reshape(8, 16).copy()
    result = c.infer("simple", _inputs(mod, a, b), outputs=[mod.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_simple_http_json_tensors_and_compression(server: Served) -> None:
    c = th.InferenceServerClient(server.address)
    outputs = [th.InferRequestedOutput("OUTPUT0", binary_data=False), th.InferRequestedOutput("OUTPUT1")]
    _check_add_sub(c.infer("simple", _inputs(th, binary=False), outputs=outputs))
    for algorithm in ("gzip", "deflate"):
        result = c.infer(
            "simple",
            _inputs(th),
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        _check_add_sub(result)


def test_grpc_callback_and_asyncio(server: Served) -> None:
    c = tg.InferenceServerClient(server.grpc_address)
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    for _ in range(4):
        c.async_infer("simple", _inputs(tg), callback=lambda result, error: done.put((result, error)))
    for _ in range(4):
        result, error = done.get(timeout=10)
        assert error is None
        _check_add_sub(result)

    async def aio() -> list[Any]:
        async with tga.InferenceServerClient(server.grpc_address) as ac:
            assert await ac.is_model_ready("simple")
            stats = await ac.get_inference_statistics("simple", as_json=True)
            assert stats["model_stats"][0]["name"] == "simple"
            return list(await asyncio.gather(*(ac.infer("simple", _inputs(tg)) for _ in range(4))))

    for result in asyncio.run(aio()):
        _check_add_sub(result)


def test_http_async_and_asyncio(server: Served) -> None:
    c = th.InferenceServerClient(server.address, concurrency=4)
    pending = [c.async_infer("simple", _inputs(th)) for _ in range(4)]
    for p in pending:
        _check_add_sub(p.get_result())

    async def aio() -> list[Any]:
        ac = tha.InferenceServerClient(server.address)
        try:
            return list(await asyncio.gather(*(ac.infer("simple", _inputs(th)) for _ in range(4))))
        finally:
            await ac.close()

    for result in asyncio.run(aio()):
        _check_add_sub(result)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_strings(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    a = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    b = np.array([[b"7"] * 16], dtype=np.object_)
    inputs = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
    if mod is th:  # one tensor binary, one JSON, as Triton's HTTP string example sends them
        inputs[0].set_data_from_numpy(a, binary_data=True)
        inputs[1].set_data_from_numpy(b, binary_data=False)
    else:
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
    result = c.infer("simple_string", inputs)
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == [i + 7 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == [i - 7 for i in range(16)]
    # BYTES identity with an embedded NUL and control bytes (valid UTF-8), binary both ways
    data = np.array([[b"he\x00llo", b"\x00\x01\x02\x03"] * 8], dtype=np.object_)
    t = mod.InferInput("INPUT0", [1, 16], "BYTES")
    t.set_data_from_numpy(data)
    np.testing.assert_array_equal(c.infer("simple_identity", [t]).as_numpy("OUTPUT0"), data)


def test_grpc_typed_contents_with_the_raw_stub(server: Served) -> None:
    """``contents.int_contents`` and ``contents.bytes_contents`` instead of raw bytes, as Triton's
    explicit-content gRPC examples send them; outputs come back in ``raw_output_contents``."""
    from tritonclient.utils import deserialize_bytes_tensor

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple", id="typed")
        for name, data in (("INPUT0", IN0), ("INPUT1", IN1)):
            t = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            t.contents.int_contents.extend(data.ravel().tolist())
        response = stub.ModelInfer(request)
        assert response.id == "typed" and [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
        got = [np.frombuffer(raw, np.int32).reshape(1, 16) for raw in response.raw_output_contents]
        np.testing.assert_array_equal(got[0], IN0 + IN1)
        np.testing.assert_array_equal(got[1], IN0 - IN1)

        request = service_pb2.ModelInferRequest(model_name="simple_string")
        for name, values in (("INPUT0", [str(i) for i in range(16)]), ("INPUT1", ["1"] * 16)):
            t = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
            t.contents.bytes_contents.extend(v.encode() for v in values)
        response = stub.ModelInfer(request)
        sums = deserialize_bytes_tensor(response.raw_output_contents[0])
        assert [int(x) for x in sums] == [i + 1 for i in range(16)]


# -- metadata, configuration, statistics -------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_metadata_and_config_as_clients_parse_them(server: Served, protocol: str) -> None:
    c = _client(protocol, server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("simple", "1")
    assert not c.is_model_ready("simple", "2")
    if protocol == "grpc":
        meta = c.get_model_metadata("simple")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("INPUT0", "INT32", [-1, 16]),
            ("INPUT1", "INT32", [-1, 16]),
        ]
        config = c.get_model_config("simple").config  # parsed into tritonclient's ModelConfig
        assert config.name == "simple" and config.max_batch_size == 8
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("INPUT0", tg.model_config_pb2.TYPE_INT32, [16]),
            ("INPUT1", tg.model_config_pb2.TYPE_INT32, [16]),
        ]
        assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]
    else:
        meta = c.get_model_metadata("simple", "1")
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
            ("OUTPUT0", "INT32", [-1, 16]),
            ("OUTPUT1", "INT32", [-1, 16]),
        ]
        config = c.get_model_config("simple")
        assert config["max_batch_size"] == 8
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
            ("INPUT0", "TYPE_INT32", [16]),
            ("INPUT1", "TYPE_INT32", [16]),
        ]
    server_meta = c.get_server_metadata()
    extensions = server_meta.extensions if protocol == "grpc" else server_meta["extensions"]
    assert {"model_repository", "statistics", "model_configuration"} <= set(extensions)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_statistics_count_what_was_run(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)

    def stats() -> dict[str, Any]:
        got = c.get_inference_statistics("simple", "1", **({"as_json": True} if protocol == "grpc" else {}))
        (model,) = got["model_stats"]
        assert model["name"] == "simple" and model["version"] == "1"
        return model

    before = stats()
    rows = np.arange(48, dtype=np.int32).reshape(3, 16)
    for _ in range(5):
        c.infer("simple", _inputs(mod, rows, rows))
    after = stats()
    # the gRPC JSON form writes 64-bit counters as strings (protobuf's JSON mapping)
    count = lambda m, *keys: int(m[keys[0]][keys[1]]["count"]) if len(keys) == 2 else int(m[keys[0]])  # noqa: E731
    assert count(after, "inference_stats", "success") - count(before, "inference_stats", "success") == 5
    assert count(after, "inference_count") - count(before, "inference_count") == 15
    every = c.get_inference_statistics(**({"as_json": True} if protocol == "grpc" else {}))
    assert {"simple", "simple_string", "simple_identity"} <= {m["name"] for m in every["model_stats"]}


# -- the model repository ----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_repository_index_unload_load(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)

    def index() -> dict[str, dict[str, Any]]:
        got = c.get_model_repository_index(**({"as_json": True} if protocol == "grpc" else {}))
        rows = got["models"] if protocol == "grpc" else got
        return {m["name"]: m for m in rows}

    assert {"simple", "simple_reload", "simple_string", "simple_identity"} <= set(index())
    assert index()["simple_reload"]["state"] == "READY"
    try:
        c.unload_model("simple_reload")
        assert not c.is_model_ready("simple_reload")
        assert index()["simple_reload"]["state"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException):
            c.infer("simple_reload", _inputs(mod))
        _check_add_sub(c.infer("simple", _inputs(mod)))  # the others keep serving
    finally:
        c.load_model("simple_reload")
    assert c.is_model_ready("simple_reload")
    assert index()["simple_reload"]["state"] == "READY"
    _check_add_sub(c.infer("simple_reload", _inputs(mod)))


# -- kserve's clients ---------------------------------------------------------------------------------
KSERVE_SCRIPT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

http_url, grpc_address = sys.argv[1], sys.argv[2]
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), -3, dtype=np.int32)

def request(binary):
    inputs = []
    for name, data in (("INPUT0", A), ("INPUT1", B)):
        t = InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(data, binary_data=binary)
        inputs.append(t)
    return InferRequest(model_name="simple", infer_inputs=inputs, request_id="k1")

def outputs(response):
    return {o.name: o.as_numpy().tolist() for o in response.outputs}

async def main():
    got = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    try:
        got["rest_health"] = [await rest.is_server_live(http_url), await rest.is_server_ready(http_url),
                              await rest.is_model_ready(http_url, "simple")]
        for binary in (False, True):
            r = await rest.infer(http_url, request(binary), model_name="simple")
            got[f"rest_binary={binary}"] = [r.id, outputs(r)]
    finally:
        await rest.close()
    g = InferenceGRPCClient(grpc_address, retries=0, timeout=10)
    try:
        got["grpc_health"] = [await g.is_server_live(), await g.is_server_ready(),
                              await g.is_model_ready("simple")]
        r = await g.infer(request(True))
        got["grpc"] = [r.id, r.model_version, outputs(r)]
    finally:
        await g.close()
    print(json.dumps(got))

asyncio.run(main())
"""


def test_kserve_rest_and_grpc_clients(server: Served) -> None:
    """kserve's clients in a child process: kserve registers its gRPC messages (package
    ``inference``) in protobuf's default pool, as tritonclient.grpc does; one process cannot hold
    both."""
    out = subprocess.run(
        [sys.executable, "-c", KSERVE_SCRIPT, server.url, server.grpc_address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {"OUTPUT0": (IN0 + IN1).tolist(), "OUTPUT1": (IN0 - IN1).tolist()}
    assert got["rest_health"] == [True, True, True] and got["grpc_health"] == [True, True, True]
    assert got["rest_binary=False"] == ["k1", expected]
    assert got["rest_binary=True"] == ["k1", expected]
    assert got["grpc"] == ["k1", "1", expected]


# -- where the server answers differently from Triton ------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_message_as_triton(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    for call in (
        lambda: c.infer("wrong_model_name", _inputs(mod)),
        lambda: c.get_model_metadata("wrong_model_name"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert str(e.value.message()).startswith("Request for unknown model: 'wrong_model_name' is not found")
        assert str(e.value.status()) in ("404", "StatusCode.NOT_FOUND")  # the protocol's resource status
    # a version that is well formed and not served: Triton's "version N" variant, still NOT_FOUND
    for call in (
        lambda: c.infer("simple", _inputs(mod), model_version="2"),
        lambda: c.get_model_metadata("simple", "2"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert str(e.value.message()).startswith("Request for unknown model: 'simple' version 2 is not found")
        assert str(e.value.status()) in ("404", "StatusCode.NOT_FOUND")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_load_unknown_model_message_as_triton(server: Served, protocol: str) -> None:
    c = _client(protocol, server)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("wrong_model_name")
    assert "failed to load" in str(e.value.message())


def test_malformed_version_as_triton(server: Served) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple", model_version="wrong_specification")
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(
                range(16)
            )
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "failed to get model version from specified version string 'wrong_specification'" in str(
        e.value.details()
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_malformed_version_every_route(server: Served, protocol: str) -> None:
    """Not a decimal integer (or negative): 400 / INVALID_ARGUMENT with Triton's text on inference,
    metadata, configuration and statistics; never NOT_FOUND."""
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    for version, phrase in (
        ("wrong_specification", "failed to get model version from specified version string"),
        ("1a", "failed to get model version from specified version string '1a'"),
        ("-1", "invalid model version specified '-1'"),
    ):
        for call in (
            lambda v=version: c.infer("simple", _inputs(mod), model_version=v),
            lambda v=version: c.get_model_metadata("simple", v),
            lambda v=version: c.get_model_config("simple", v),
            lambda v=version: c.get_inference_statistics("simple", v),
        ):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert phrase in str(e.value.message()), e.value.message()
            assert str(e.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    _check_add_sub(c.infer("simple", _inputs(mod), model_version="1"))


def test_raw_and_typed_contents_together_as_triton(server: Served) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(
                range(16)
            )
        request.raw_input_contents.append(np.arange(8, dtype=np.int32).tobytes())
        request.inputs[0].contents.int_contents[:] = list(range(8, 16))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents field must not be specified when using raw_input_contents for 'INPUT0'" in str(
        e.value.details()
    )
    # one raw entry per input, and typed contents on the second one too
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
        request.inputs[1].contents.int_contents.extend(range(16))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(e.value.details()).startswith(
        "contents field must not be specified when using raw_input_contents for 'INPUT1' for model 'simple'")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_load_with_config_override(server: Served, protocol: str) -> None:
    """Triton's repository extension: a load's ``config`` (JSON) may lower max_batch_size or turn
    merging off; the answer follows the new configuration. What cannot be honoured (a raise above
    the package's 8, another value of a field the server reports, a field it does not have, text
    that is not a configuration) is refused with 'failed to load' and the old model keeps
    serving."""
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)

    def config() -> dict[str, Any]:
        if protocol == "grpc":
            return dict(c.get_model_config("simple_reload", as_json=True)["config"])
        return dict(c.get_model_config("simple_reload"))

    def served_batch() -> int:
        return int(config().get("max_batch_size", 0))  # (protobuf's JSON leaves out a zero)

    rows = lambda n: np.arange(16 * n, dtype=np.int32).reshape(n, 16)  # noqa: E731
    try:
        c.load_model("simple_reload", config='{"max_batch_size": 4}')
        assert served_batch() == 4
        _check_add_sub(c.infer("simple_reload", _inputs(mod, rows(4), rows(4))), rows(4), rows(4))
        with pytest.raises(InferenceServerException, match="exceeds the model's max batch size 4"):
            c.infer("simple_reload", _inputs(mod, rows(5), rows(5)))
        # Triton's own example writes the number as a string (protobuf's JSON mapping)
        c.load_model("simple_reload", config='{"max_batch_size":"2"}')
        assert served_batch() == 2
        # a configuration read back and sent again with one change (gRPC's JSON has 64-bit
        # numbers as strings)
        whole = config()
        whole["max_batch_size"] = 3
        c.load_model("simple_reload", config=json.dumps(whole))
        assert served_batch() == 3
        # merging off: the batch axis is part of the dims now
        c.load_model("simple_reload", config='{"max_batch_size": 0}')
        assert served_batch() == 0
        assert [[int(d) for d in i["dims"]] for i in config()["input"]] == [[-1, 16], [-1, 16]]
        _check_add_sub(c.infer("simple_reload", _inputs(mod, rows(6), rows(6))), rows(6), rows(6))
        for text, phrase in (
            # Triton's example of a malformed configuration
            ('"parameters": {"config": {{"max_batch_size": "16"}}}', "not valid JSON"),
            ("[4]", "must be a JSON object"),
            ('{"max_batch_size": 16}', "max_batch_size 16 is outside 0..8"),
            ('{"max_batch_size": -1}', "max_batch_size -1 is outside 0..8"),
            ('{"max_batch_size": 2, "platform": "tensorrt_plan"}', "sets 'platform'"),
            ('{"response_cache": {"enable": true}}', "response_cache"),
            ('{"name": "simple", "max_batch_size": 2}', "names model 'simple'"),
            ('{"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}', "sets 'input'"),
        ):
            with pytest.raises(InferenceServerException) as e:
                c.load_model("simple_reload", config=text)
            message = str(e.value.message())
            assert "failed to load" in message and phrase in message, (text, message)
            assert str(e.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
            assert served_batch() == 0  # the old model keeps serving, unchanged
            _check_add_sub(c.infer("simple_reload", _inputs(mod, rows(6), rows(6))), rows(6), rows(6))
    finally:
        c.load_model("simple_reload")
    assert served_batch() == 8  # a load without a configuration reads the package's again


# -- the classification extension ---------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_extension(server: Served, protocol: str) -> None:
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    result = c.infer("simple", _inputs(mod), outputs=[mod.InferRequestedOutput("OUTPUT0", class_count=2)])
    top = result.as_numpy("OUTPUT0")
    # Triton: per row, the k largest as "value:index" strings, largest first
    assert top.shape == (1, 2)
    assert [bytes(x).decode() for x in top[0]] == ["12:15", "11:14"]


def _scores_input(mod: Any, data: np.ndarray) -> list[Any]:
    t = mod.InferInput("INPUT0", list(data.shape), "FP32")
    t.set_data_from_numpy(data)
    return [t]


def _expected_top(scores: np.ndarray, k: int) -> list[list[str]]:
    """The reference: numpy's argsort (stable: ties lowest index first) of each flattened row of
    onnxruntime's answer, NaN last; values as C's printf("%f") writes them."""
    rows = scores.reshape(scores.shape[0], -1)
    out = []
    for row in rows:
        nan = np.isnan(row)
        order = sorted(range(row.size), key=lambda i: (nan[i], 0 if nan[i] else -row[i], i))  # noqa: B023
        out.append([f"{row[i]:f}:{i}" for i in order[:k]])
    return out


def _parse_image_client(result: Any, name: str, batched: bool) -> list[list[tuple[float, int]]]:
    """What Triton's image_client.py postprocess does with a classification answer: each element
    split at ':' into value and index (and label when present)."""
    array = result.as_numpy(name)
    rows = array if batched else [array]
    parsed = []
    for row in rows:
        entries = []
        for x in row:
            cls = (x.decode() if isinstance(x, bytes) else "".join(chr(b) for b in x)).split(":")
            entries.append((float(cls[0]), int(cls[1])))
        parsed.append(entries)
    return parsed


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_against_onnxruntime(server: Served, repository: tuple[Path, Path],
                                            protocol: str) -> None:
    """Top k of each row of a [batch, 4, 5] FP32 output, compared with numpy's argsort of what
    onnxruntime computes from the same graph: ties, a NaN, k below, at and above the 20 classes."""
    import onnxruntime as ort

    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    rng = np.random.default_rng(7)
    data = rng.standard_normal((3, 4, 5)).astype(np.float32)
    data[1, 0, :3] = 9.0  # a four-way tie above every other value of row 1
    data[1, 2, 2] = 9.0
    data[2, 3, 4] = np.nan  # ranks last
    config = c.get_model_config("scores", **({"as_json": True} if protocol == "grpc" else {}))
    assert (config["config"] if protocol == "grpc" else config)["max_batch_size"] == 8
    session = ort.InferenceSession(
        str(repository[0] / "scores" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (reference, _) = session.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": data})
    for k in (1, 3, 20, 64):
        outputs = [mod.InferRequestedOutput("OUTPUT0", class_count=k), mod.InferRequestedOutput("OUTPUT1")]
        result = c.infer("scores", _scores_input(mod, data), outputs=outputs)
        top = result.as_numpy("OUTPUT0")
        assert top.dtype == np.object_ and top.shape == (3, min(k, 20))
        assert [[x.decode() for x in row] for row in top] == _expected_top(reference, k)
        # the other output is answered as a tensor, unchanged
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), data > 0)
        parsed = _parse_image_client(result, "OUTPUT0", batched=True)
        assert [i for _, i in parsed[1][:4]] == [0, 1, 2, 12][: min(k, 4)]
    if protocol == "http":  # the same, as JSON strings
        result = c.infer("scores", _scores_input(th, data),
                         outputs=[th.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=3)])
        assert result.get_output("OUTPUT0")["datatype"] == "BYTES"
        assert result.get_output("OUTPUT0")["data"] == [x for row in _expected_top(reference, 3) for x in row]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_without_batching(server: Served, protocol: str) -> None:
    """A model served with max_batch_size 0 is classified as one entry: shape [k], the indexes
    run over the whole flattened tensor."""
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    data = np.arange(40, dtype=np.float32).reshape(2, 4, 5) / 8
    result = c.infer("scores_whole", _scores_input(mod, data),
                     outputs=[mod.InferRequestedOutput("OUTPUT0", class_count=3)])
    top = result.as_numpy("OUTPUT0")
    assert top.shape == (3,)
    assert [x.decode() for x in top] == ["9.750000:39", "9.500000:38", "9.250000:37"]
    assert _parse_image_client(result, "OUTPUT0", batched=False) == [[(9.75, 39), (9.5, 38), (9.25, 37)]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_refusals(server: Served, protocol: str) -> None:
    """A BOOL output cannot be classified (Triton: 'class result not available ... unsupported
    type'), nor a BYTES one; each a 400 / INVALID_ARGUMENT naming the output; the server keeps
    serving."""
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    data = np.ones((1, 4, 5), dtype=np.float32)
    cases = [
        ("scores", _scores_input(mod, data), "OUTPUT1", "unsupported type 'BOOL'"),
    ]
    strings = mod.InferInput("INPUT0", [1, 2], "BYTES")
    strings.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    cases.append(("simple_identity", [strings], "OUTPUT0", "unsupported type 'BYTES'"))
    for model, inputs, output, phrase in cases:
        with pytest.raises(InferenceServerException) as e:
            c.infer(model, inputs, outputs=[mod.InferRequestedOutput(output, class_count=2)])
        assert phrase in str(e.value.message()) and repr(output) in str(e.value.message())
        assert str(e.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    _check_add_sub(c.infer("simple", _inputs(mod)))


def test_classification_count_must_be_a_positive_integer(server: Served) -> None:
    """Zero, a negative count or another type of parameter: 400 / INVALID_ARGUMENT, as Triton
    ('invalid value for 'classification' parameter')."""
    import http.client

    for value in (0, -2, "3", 2.5, True):
        body = json.dumps({
            "inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": value}}],
        })
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.request("POST", "/v2/models/simple/infer", body, {"content-type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        assert response.status == 400, (value, text)
        assert "'classification' parameter" in text
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for param in ({"int64_param": 0}, {"int64_param": -1}, {"string_param": "2"}, {"bool_param": True}):
            request = service_pb2.ModelInferRequest(model_name="simple")
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(
                    range(16))
            out = request.outputs.add(name="OUTPUT0")
            out.parameters["classification"].CopyFrom(service_pb2.InferParameter(**param))
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, param
            assert "'classification' parameter" in str(e.value.details())


# -- gRPC calls the server does not serve ------------------------------------------------------------
def test_grpc_unserved_extensions_say_so(server: Served) -> None:
    """Shared memory, trace and log settings and streaming answer UNIMPLEMENTED naming the
    extension (grpcio's default would be "Method not found!"); served calls are untouched."""
    c = tg.InferenceServerClient(server.grpc_address)
    calls = [
        (c.get_system_shared_memory_status, "the system shared memory extension (SystemSharedMemoryStatus)"),
        (lambda: c.register_system_shared_memory("r", "/k", 64), "system shared memory extension"),
        (lambda: c.unregister_cuda_shared_memory("r"), "the CUDA shared memory extension"),
        (c.get_trace_settings, "the trace extension (TraceSetting)"),
        (c.get_log_settings, "the logging extension (LogSettings)"),
    ]
    for call, phrase in calls:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.UNIMPLEMENTED" and phrase in str(e.value.message())
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        # the refusal comes as the stream opens: the request may find the stream closed already
        with contextlib.suppress(InferenceServerException):
            c.async_stream_infer("simple", _inputs(tg))
        result, error = got.get(timeout=10)
        assert result is None and "streaming inference (ModelStreamInfer) is not supported" in str(error)
    finally:
        c.stop_stream()
    with grpc.insecure_channel(server.grpc_address) as channel:
        other = channel.unary_unary("/inference.GRPCInferenceService/NoSuchCall")
        with pytest.raises(grpc.RpcError) as rpc:
            other(b"")
        assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "NoSuchCall is not served" in str(rpc.value.details())
    _check_add_sub(c.infer("simple", _inputs(tg)))
    assert c.is_server_ready()


# -- input format, as image clients read it -----------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_image_client_reads_the_input_format(server: Served, repository: tuple[Path, Path],
                                             protocol: str) -> None:
    """What Triton's image_client.py does: read the input's format and dims from the model
    configuration to lay out the image (NCHW: c, h, w = dims), then infer with class_count and
    parse 'value:index'. The format comes from the package (``--input-format INPUT0=NCHW``)."""
    mod: Any = tg if protocol == "grpc" else th
    c = _client(protocol, server)
    manifest = json.loads((repository[0] / "image" / "manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == "NCHW"
    if protocol == "grpc":
        config = c.get_model_config("image").config
        meta = c.get_model_metadata("image")
        input_config, input_meta = config.input[0], meta.inputs[0]
        fmt = input_config.format
        nchw, nhwc = tg.model_config_pb2.ModelInput.FORMAT_NCHW, tg.model_config_pb2.ModelInput.FORMAT_NHWC
        dims, max_batch = list(input_config.dims), config.max_batch_size
        datatype = input_meta.datatype
    else:
        config = c.get_model_config("image")
        meta = c.get_model_metadata("image")
        input_config, input_meta = config["input"][0], meta["inputs"][0]
        fmt, nchw, nhwc = input_config["format"], "FORMAT_NCHW", "FORMAT_NHWC"
        dims, max_batch = input_config["dims"], config["max_batch_size"]
        datatype = input_meta["datatype"]
    assert fmt in (nchw, nhwc) and fmt == nchw  # image_client exits on any other format
    assert max_batch == 8 and len(dims) == 3
    ch, h, w = dims  # image_client: NCHW -> c, h, w = dims
    assert (ch, h, w) == (3, 8, 8) and datatype == "FP32"
    # two "images": channel means 0.5/0.25/0.75 and 0.1/0.9/0.2
    images = np.stack([np.stack([np.full((h, w), v, np.float32) for v in means])
                       for means in ((0.5, 0.25, 0.75), (0.1, 0.9, 0.2))])
    t = mod.InferInput("INPUT0", list(images.shape), datatype)
    t.set_data_from_numpy(images)
    result = c.infer("image", [t], outputs=[mod.InferRequestedOutput("OUTPUT0", class_count=2)])
    parsed = _parse_image_client(result, "OUTPUT0", batched=True)
    assert [[i for _, i in row] for row in parsed] == [[2, 0], [1, 2]]
    assert [[round(v, 4) for v, _ in row] for row in parsed] == [[0.75, 0.5], [0.9, 0.2]]
    # a model without a format says FORMAT_NONE (gRPC: the enum's zero)
    if protocol == "grpc":
        none = tg.model_config_pb2.ModelInput.FORMAT_NONE
        assert c.get_model_config("simple").config.input[0].format == none
    else:
        assert c.get_model_config("simple")["input"][0]["format"] == "FORMAT_NONE"
