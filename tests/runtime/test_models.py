"""Several models in one server (PATH ... and --model-repository), Triton's statistics and model
repository extensions, and the access log: the real server with three real models (the MLP, the
datatypes model, a bare .onnx), driven by tritonclient.http and compared with onnxruntime run
directly."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as tc
from runtime_harness import DTYPE_CASES, Served, metric, start_server
from tritonclient.utils import InferenceServerException

Run = Callable[[Path, dict[str, np.ndarray]], list[np.ndarray]]


@pytest.fixture(scope="module")
def three(mlp_package: Path, dtypes_package: Path, fixed_onnx: Path) -> Served:
    s = start_server(mlp_package, str(dtypes_package), str(fixed_onnx))
    yield s  # type: ignore[misc]
    s.stop()


def _client(s: Served, concurrency: int = 1) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(s.address, concurrency=concurrency)


def _infer(client: tc.InferenceServerClient, model: str, name: str, array: np.ndarray, datatype: str,
           binary: bool) -> np.ndarray:
    inp = tc.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    result = client.infer(model, [inp])
    out = result.get_response()["outputs"][0]["name"]
    return result.as_numpy(out)  # type: ignore[no-any-return]


def test_every_model_is_served_with_its_own_metadata_and_config(three: Served) -> None:
    client = _client(three)
    assert client.is_server_ready()
    for name in ("mlp", "dtypes", "fixed"):
        assert client.is_model_ready(name)
        assert client.get_model_metadata(name)["name"] == name
        assert client.get_model_config(name)["name"] == name
    mlp_inputs = client.get_model_metadata("mlp")["inputs"]
    assert mlp_inputs == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert client.get_model_config("mlp")["max_batch_size"] == 16
    fixed_inputs = client.get_model_metadata("fixed")["inputs"]
    assert fixed_inputs == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]
    assert client.get_model_config("fixed")["max_batch_size"] == 0
    assert {i["name"] for i in client.get_model_metadata("dtypes")["inputs"]} >= {"f32", "i64", "s"}
    with pytest.raises(InferenceServerException,
                       match="Request for unknown model: 'nope' is not found.*'dtypes', 'fixed', 'mlp'"):
        client.get_model_metadata("nope")


def test_json_and_binary_inference_equal_onnxruntime_per_model_under_concurrency(
    three: Served, mlp_package: Path, fixed_onnx: Path, ort_run: Run
) -> None:
    rng = np.random.default_rng(7)
    cases = []
    for i in range(48):
        binary = i % 2 == 0
        if i % 3 == 0:
            x = rng.standard_normal((1 + i % 4, 16)).astype(np.float32)
            cases.append(("mlp", "x", x, "FP32", binary, ort_run(mlp_package / "mlp.onnx", {"x": x})[0]))
        elif i % 3 == 1:
            x = rng.standard_normal((2, 3)).astype(np.float32)
            cases.append(("fixed", "x", x, "FP32", binary, ort_run(fixed_onnx, {"x": x})[0]))
        else:  # every input of the datatypes model; the answer is its INT32 input
            x = rng.integers(-1000, 1000, (1 + i % 3, 3)).astype(np.int32)
            cases.append(("dtypes", "i32", x, "INT32", binary, x))
    client = _client(three, concurrency=8)

    def send(case: tuple) -> tc.InferAsyncRequest:  # type: ignore[type-arg]
        model, name, x, datatype, binary, _ = case
        inp = tc.InferInput(name, list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        inputs, outputs = [inp], None
        if model == "dtypes":
            for other, (v2, dtype, _) in DTYPE_CASES.items():
                if other != name:
                    value = np.full(x.shape, "a" if v2 == "BYTES" else 1, dtype=dtype)
                    extra = tc.InferInput(other, list(x.shape), v2)
                    extra.set_data_from_numpy(value, binary_data=binary)
                    inputs.append(extra)
            outputs = [tc.InferRequestedOutput("i32_out", binary_data=binary)]
        return client.async_infer(model, inputs, outputs=outputs)

    # tritonclient's async_infer: up to 8 requests in flight at once, the models interleaved
    sent = [send(case) for case in cases]
    for (model, _, _, _, _, expected), request in zip(cases, sent, strict=True):
        result = request.get_result()
        assert result.get_response()["model_name"] == model
        out = "i32_out" if model == "dtypes" else result.get_response()["outputs"][0]["name"]
        got = result.as_numpy(out)
        assert got.shape == expected.shape, model
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=model)


def test_two_models_with_one_name_are_refused_naming_both_paths(serve, mlp_package: Path,
                                                                tmp_path: Path) -> None:
    copy = tmp_path / "mlp-copy"
    shutil.copytree(mlp_package, copy)
    s = serve(mlp_package, str(copy), wait_ready=False)
    assert s.wait_exit() == 1
    out = s.log()
    assert f"two models are named 'mlp': {mlp_package} and {copy}" in out
    assert "Traceback" not in out


def test_name_applies_to_one_model_only(serve, mlp_package: Path, fixed_onnx: Path) -> None:
    s = serve(mlp_package, str(fixed_onnx), "--name", "m", wait_ready=False)
    assert s.wait_exit() == 1
    assert "--name / INFERSTACK_NAME: applies to one model" in s.log()


# -- statistics ----------------------------------------------------------------------------------
def _stats(client: tc.InferenceServerClient, name: str) -> dict:  # type: ignore[type-arg]
    stats = client.get_inference_statistics(name)["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == name
    return stats[0]  # type: ignore[no-any-return]


def test_statistics_count_the_requests_sent(serve, mlp_package: Path, fixed_onnx: Path) -> None:
    s = serve(mlp_package, str(fixed_onnx))
    client = _client(s)
    before = _stats(client, "mlp")
    assert before["inference_count"] == 0 and before["last_inference"] == 0
    rows_sent = 0
    for i in range(5):  # one at a time: each its own run
        rows = 1 + i % 3
        _infer(client, "mlp", "x", np.ones((rows, 16), np.float32), "FP32", binary=True)
        rows_sent += rows
    for _ in range(3):  # refused: wrong shape (400), counted as failures of this model
        r = httpx.post(f"{s.url}/v2/models/mlp/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 15], "data": [0.0] * 15}]})
        assert r.status_code == 400
    stats = _stats(client, "mlp")
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 5
    assert inference["fail"]["count"] == 3
    assert stats["inference_count"] == rows_sent
    assert stats["execution_count"] == 5
    assert inference["queue"]["count"] == 5 and inference["compute_infer"]["count"] == 5
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert stats["last_inference"] > 0
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == 5
    assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 2, 3}
    # the other model saw nothing
    other = _stats(client, "fixed")
    assert other["inference_count"] == 0 and other["inference_stats"]["fail"]["count"] == 0
    # every model, and one version
    every = client.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == ["fixed", "mlp"]
    assert client.get_inference_statistics("mlp", "1")["model_stats"][0]["inference_count"] == rows_sent
    with pytest.raises(InferenceServerException,
                       match="Request for unknown model: 'mlp' version 7 is not found"):
        client.get_inference_statistics("mlp", "7")


def test_metrics_carry_each_models_label_over_both_protocols(serve, mlp_package: Path,
                                                            fixed_onnx: Path) -> None:
    s = serve(mlp_package, str(fixed_onnx))
    http = _client(s)
    grpc_client = tg.InferenceServerClient(s.grpc_address)

    def over_grpc(model: str, array: np.ndarray) -> None:
        inp = tg.InferInput("x", list(array.shape), "FP32")
        inp.set_data_from_numpy(array)
        grpc_client.infer(model, [inp])

    sent = {"mlp": (3, 4, 2), "fixed": (1, 5, 0)}  # HTTP successes, gRPC successes, gRPC refusals
    shapes = {"mlp": (1, 16), "fixed": (2, 3)}
    for model, (over_http, ok, bad) in sent.items():
        for _ in range(over_http):
            _infer(http, model, "x", np.ones(shapes[model], np.float32), "FP32", binary=True)
        for _ in range(ok):
            over_grpc(model, np.ones(shapes[model], np.float32))
        for _ in range(bad):
            with pytest.raises(InferenceServerException):
                over_grpc(model, np.ones((1, 15), np.float32))
    with pytest.raises(InferenceServerException, match="unknown model"):
        over_grpc("nope", np.ones((1, 16), np.float32))
    grpc_client.close()
    text = httpx.get(f"{s.url}/metrics").text
    for model, (over_http, ok, bad) in sent.items():
        labels = f'model="{model}",version="1"'
        assert metric(text, f'inferstack_requests_total{{{labels},outcome="success"}}') == over_http + ok
        assert metric(text, f'inferstack_requests_total{{{labels},outcome="client_error"}}') == bad
        assert metric(text, f'inferstack_request_seconds_count{{{labels}}}') == over_http + ok + bad
        # one at a time: each success its own onnxruntime run
        assert metric(text, f'inferstack_batch_size_count{{{labels}}}') == over_http + ok
        assert metric(text, f'inferstack_inflight_requests{{{labels}}}') == 0
    # a request that named no served model: no model label (so clients cannot make new series)
    assert metric(text, 'inferstack_requests_total{model="",outcome="client_error"}') == 1
    assert 'model="nope"' not in text


def test_merged_requests_count_once_in_execution_count(serve, mlp_package: Path) -> None:
    # requests wait 300 ms for company: 8 concurrent requests share few runs
    s = serve(mlp_package, "--max-queue-delay-us", "300000")
    client = _client(s, concurrency=8)
    inp = tc.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(np.ones((2, 16), np.float32))
    for request in [client.async_infer("mlp", [inp]) for _ in range(8)]:
        assert request.get_result().as_numpy("y").shape == (2, 4)
    stats = _stats(client, "mlp")
    assert stats["inference_stats"]["success"]["count"] == 8
    assert stats["inference_count"] == 16
    assert stats["execution_count"] < 8
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == stats["execution_count"]
    assert stats["inference_stats"]["compute_infer"]["count"] == 8  # per request


# -- the model repository ----------------------------------------------------------------------------
@pytest.fixture
def repository(tmp_path: Path, mlp_package: Path, dtypes_package: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(mlp_package, root / "mlp")
    shutil.copytree(dtypes_package, root / "dtypes")
    return root


def test_a_repository_serves_every_package_under_its_folder_name(
    serve, repository: Path, mlp_package: Path, ort_run: Run
) -> None:
    shutil.move(repository / "mlp", repository / "classifier")
    s = serve(f"--model-repository={repository}")
    client = _client(s)
    assert client.is_server_ready()
    assert client.is_model_ready("classifier") and client.is_model_ready("dtypes")
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
    got = _infer(client, "classifier", "x", x, "FP32", binary=False)
    np.testing.assert_allclose(got, ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-5, atol=1e-6)
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [("classifier", "READY"), ("dtypes", "READY")]
    # load and unload are off unless --model-control explicit, with a clear error
    with pytest.raises(InferenceServerException, match="--model-control explicit"):
        client.unload_model("dtypes")
    with pytest.raises(InferenceServerException, match="--model-control explicit"):
        client.load_model("dtypes")
    assert client.is_model_ready("dtypes")


def test_load_unload_and_a_failed_load_that_leaves_the_old_model_serving(
    serve, repository: Path, mlp_package: Path, ort_run: Run
) -> None:
    s = serve(f"--model-repository={repository}", "--model-control", "explicit")
    client = _client(s)
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(3, 16)
    expected = ort_run(mlp_package / "mlp.onnx", {"x": x})[0]

    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'mlp' is not found"):
        _infer(client, "mlp", "x", x, "FP32", binary=True)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["mlp"]["state"] == "UNAVAILABLE" and index["dtypes"]["state"] == "READY"
    assert [m["name"] for m in client.get_model_repository_index(query_params=None)] == ["dtypes", "mlp"]
    assert client.is_server_ready()  # every model served is ready

    client.load_model("mlp")
    assert client.is_model_ready("mlp")
    np.testing.assert_allclose(_infer(client, "mlp", "x", x, "FP32", True), expected, rtol=1e-5, atol=1e-6)
    client.load_model("mlp")  # a reload replaces the model being served
    assert client.is_model_ready("mlp")
    np.testing.assert_allclose(_infer(client, "mlp", "x", x, "FP32", True), expected, rtol=1e-5, atol=1e-6)

    # tamper with the package: the reload is refused before anything is replaced
    weights = next(p for p in (repository / "mlp").iterdir() if p.name not in ("manifest.json", "mlp.onnx"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(InferenceServerException, match="failed to load model 'mlp'.*sha256"):
        client.load_model("mlp")
    assert client.is_model_ready("mlp")
    np.testing.assert_allclose(_infer(client, "mlp", "x", x, "FP32", True), expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(InferenceServerException,
                       match="failed to load 'nope', failed to poll from model repository: no model 'nope'"):
        client.load_model("nope")
    with pytest.raises(InferenceServerException, match="model 'nope' is not loaded"):
        client.unload_model("nope")


def test_unload_waits_for_the_requests_in_flight(serve, repository: Path) -> None:
    # each request waits 500 ms for company: the unload comes while they are queued
    s = serve(f"--model-repository={repository}", "--model-control", "explicit",
              "--max-queue-delay-us", "500000")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}

    def infer(_: int) -> httpx.Response:
        return httpx.post(f"{s.url}/v2/models/mlp/infer", json=body, timeout=10)

    with ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        pending = [pool.submit(infer, i) for i in range(3)]
        time.sleep(0.2)
        unloaded = httpx.post(f"{s.url}/v2/repository/models/mlp/unload", json={}, timeout=10)
        # answered only once the requests queued before it were (they wait 500 ms for company)
        assert time.monotonic() - started >= 0.45
        answers = [p.result(10) for p in pending]
    assert unloaded.status_code == 200
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(np.asarray(a.json()["outputs"][0]["data"]).shape == (4,) for a in answers)
    assert infer(0).status_code == 404
    assert not _client(s).is_model_ready("mlp")


def test_the_repository_api_needs_the_token_when_auth_is_on(serve, repository: Path) -> None:
    s = serve(f"--model-repository={repository}", "--model-control", "explicit",
              env={"INFERSTACK_AUTH_TOKEN": "s3cret"})
    for path in ("/v2/repository/index", "/v2/repository/models/mlp/unload",
                 "/v2/repository/models/mlp/load"):
        r = httpx.post(f"{s.url}{path}", json={})
        assert r.status_code == 401, path
    r = httpx.get(f"{s.url}/v2/models/stats")
    assert r.status_code == 401
    r = httpx.post(f"{s.url}/v2/repository/models/mlp/unload", json={},
                   headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    ready = httpx.get(f"{s.url}/v2/models/mlp/ready", headers={"Authorization": "Bearer s3cret"})
    assert ready.status_code == 404


# -- the access log ---------------------------------------------------------------------------------
def test_access_log_lines_in_json(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--access-log", "--log-format", "json")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    ok = httpx.post(f"{s.url}/v2/models/mlp/infer", json=body)
    assert ok.status_code == 200
    bad = httpx.post(f"{s.url}/v2/models/mlp/infer", json={"inputs": []})
    assert bad.status_code == 400
    missing = httpx.get(f"{s.url}/v2/models/nope")
    assert missing.status_code == 404
    s.stop()
    lines = [json.loads(line) for line in s.lines if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "inferstack.access"]
    assert len(access) == 3, s.log()
    first, second, third = access
    assert first["method"] == "POST" and first["path"] == "/v2/models/mlp/infer"
    assert first["model"] == "mlp" and first["status"] == 200 and first["bytes"] == len(ok.content)
    assert first["duration_ms"] >= 0 and "reason" not in first
    assert second["status"] == 400 and second["reason"] == bad.json()["error"]
    assert third["status"] == 404 and third["model"] == "nope" and third["reason"] == missing.json()["error"]
    assert any(line["message"].startswith("ready: model mlp") for line in lines)


def test_access_log_in_text_and_off_by_default(serve, mlp_package: Path) -> None:
    quiet = serve(mlp_package)
    assert httpx.get(f"{quiet.url}/v2/models/mlp").status_code == 200
    loud = serve(mlp_package, env={"INFERSTACK_ACCESS_LOG": "true"})
    assert httpx.get(f"{loud.url}/v2/models/mlp").status_code == 200
    assert httpx.get(f"{loud.url}/v2/models/mlp/nope").status_code == 404
    quiet.stop()
    loud.stop()
    assert "inferstack.access" not in quiet.log()
    access = [line for line in loud.lines if "inferstack.access" in line]
    assert len(access) == 2, loud.log()
    assert "GET /v2/models/mlp model=mlp status=200 bytes=" in access[0]
    assert "GET /v2/models/mlp/nope model=mlp status=404" in access[1]
    assert 'reason="no route for GET /v2/models/mlp/nope"' in access[1]


# -- one error table for both protocols ------------------------------------------------------------
def test_every_error_carries_its_grpc_status_code() -> None:
    grpc = pytest.importorskip("grpc")
    from inferstack.runtime import errors

    expected = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
                408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                504: "DEADLINE_EXCEEDED"}
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.HTTPError)]
    assert len(classes) >= 12
    for cls in classes:
        assert cls.grpc_code in grpc.StatusCode.__members__, cls
        if cls.status_code in expected:
            assert cls.grpc_code == expected[cls.status_code], cls
    # 503: unavailable while loading or draining; shedding is RESOURCE_EXHAUSTED
    assert errors.ServiceUnavailable.grpc_code == "UNAVAILABLE"
    assert errors.QueueFull.grpc_code == errors.Overloaded.grpc_code == "RESOURCE_EXHAUSTED"
