"""Model sources: local package, bare .onnx, file://, s3:// against moto's standalone S3 server,
https:// against a local TLS server with a self-signed certificate; each file's sha256 is checked
before onnxruntime sees it, and a mismatch refuses to start naming the file and both hashes."""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.server
import ipaddress
import re
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from inferstack.runtime.errors import ModelLoadError
from inferstack.runtime.source import resolve
from runtime_harness import Served

from inferstack.errors import ChecksumMismatch
from inferstack.manifest import sha256_file


def _check_infer(s: Served, package: Path, ort_run) -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    inp = th.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    got = th.InferenceServerClient(s.address).infer(s.name, [inp]).as_numpy("y")
    np.testing.assert_allclose(got, ort_run(package / "mlp.onnx", {"x": x})[0], rtol=1e-6)


def _tampered_copy(src: Path, dest: Path) -> tuple[Path, str, str]:
    shutil.copytree(src, dest)
    data = dest / "mlp.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # same size, different bytes
    expected = sha256_file(data)
    data.write_bytes(bytes(raw))
    return data, expected, sha256_file(data)


# -- local -----------------------------------------------------------------------------------------
def test_local_package_and_file_uri_resolve_to_the_verified_model(mlp_package: Path, tmp_path: Path) -> None:
    for uri in (str(mlp_package), mlp_package.as_uri(), (mlp_package / "manifest.json").as_uri()):
        source = resolve(uri, tmp_path)
        assert source.model_path == mlp_package / "mlp.onnx"
        assert source.manifest is not None and source.default_name == "mlp"


def test_local_checksum_mismatch_names_the_file_and_both_hashes(mlp_package: Path, tmp_path: Path) -> None:
    _, expected, actual = _tampered_copy(mlp_package, tmp_path / "pkg")
    with pytest.raises(ChecksumMismatch) as info:
        resolve(str(tmp_path / "pkg"), tmp_path / "cache")
    message = str(info.value)
    assert "mlp.onnx.data" in message and expected in message and actual in message


@pytest.mark.parametrize(
    "uri,message",
    [
        ("http://example.com/model", "plain http:// is not allowed"),
        ("ftp://example.com/model", "unsupported scheme 'ftp'"),
        ("/definitely/not/here", "no such file or directory"),
        ("s3:///no-bucket", "needs a bucket"),
    ],
)
def test_bad_sources_are_refused_with_the_reason(uri: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve(uri, tmp_path)


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="manifest.json: not found"):
        resolve(str(tmp_path), tmp_path / "cache")


def test_bare_onnx_file_uri_serves(serve, mlp_package: Path, ort_run) -> None:
    s = serve((mlp_package / "mlp.onnx").as_uri(), "--name", "plain")
    assert s.name == "plain"
    config = th.InferenceServerClient(s.address).get_model_config("plain")
    assert config["max_batch_size"] == 64  # a bare .onnx with a dynamic batch axis
    _check_infer(s, mlp_package, ort_run)


def test_local_mismatch_refuses_to_start(serve, mlp_package: Path, tmp_path: Path) -> None:
    _, expected, actual = _tampered_copy(mlp_package, tmp_path / "pkg")
    s = serve(tmp_path / "pkg", wait_ready=False)
    assert s.wait_exit() == 1
    out = s.log()
    assert f"checksum mismatch for {tmp_path / 'pkg'}/mlp.onnx.data" in out
    assert expected in out and actual in out
    assert "Traceback" not in out


def test_require_gpu_fails_without_a_gpu_provider(serve, mlp_package: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal needs a CPU-only build")
    s = serve(mlp_package, "--require-gpu", wait_ready=False)
    assert s.wait_exit() == 1
    assert "--require-gpu / INFERSTACK_REQUIRE_GPU: no GPU execution provider is active" in s.log()


# -- s3 (moto_s3: tests/conftest.py) ------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_env(moto_s3: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": moto_s3,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _upload(s3_env: dict[str, str], bucket: str, prefix: str, directory: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for f in directory.iterdir():
        client.upload_file(str(f), bucket, f"{prefix}/{f.name}")


def test_s3_package_is_downloaded_verified_and_served(
    serve, s3_env, mlp_package: Path, ort_run, tmp_path: Path
) -> None:
    _upload(s3_env, "models", "mlp/v1", mlp_package)
    s = serve("s3://models/mlp/v1", "--cache-dir", str(tmp_path), env=s3_env)
    assert s.name == "mlp"
    _check_infer(s, mlp_package, ort_run)
    assert "downloading s3://models/mlp/v1/mlp.onnx.data" in s.log()
    cached = next(tmp_path.iterdir())
    assert sha256_file(cached / "mlp.onnx.data") == sha256_file(mlp_package / "mlp.onnx.data")


def test_s3_checksum_mismatch_refuses_to_start(serve, s3_env, mlp_package: Path, tmp_path: Path) -> None:
    _, expected, actual = _tampered_copy(mlp_package, tmp_path / "bad")
    _upload(s3_env, "models", "bad/v1", tmp_path / "bad")
    s = serve("s3://models/bad/v1", "--cache-dir", str(tmp_path / "cache"), env=s3_env, wait_ready=False)
    assert s.wait_exit() == 1
    out = s.log()
    assert (
        f"checksum mismatch for s3://models/bad/v1/mlp.onnx.data: manifest says sha256 {expected}, "
        f"file has sha256 {actual}"
    ) in out
    assert "ready:" not in out


def test_s3_missing_package_is_named(serve, s3_env, tmp_path: Path) -> None:
    _upload(s3_env, "models", "other", tmp_path)  # the bucket exists, the prefix does not
    s = serve("s3://models/nothing/here", "--cache-dir", str(tmp_path), env=s3_env, wait_ready=False)
    assert s.wait_exit() == 1
    assert "s3://models/nothing/here/manifest.json: not found" in s.log()


# -- https -----------------------------------------------------------------------------------------
def _self_signed(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``d``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = d / "cert.pem"
    key_pem = d / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_pem, key_pem


def _serve_tls(httpd: http.server.HTTPServer, cert_pem: Path, key_pem: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_pem, key_pem)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def tls_site(mlp_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTPS server over the package's parent directory, with a self-signed certificate."""
    d = tmp_path_factory.mktemp("tls")
    cert_pem, key_pem = _self_signed(d)

    class Handler(http.server.SimpleHTTPRequestHandler):
        """Serves the models directory; under /slow/ the manifest takes a second (a slow store)."""

        def do_GET(self) -> None:
            for prefix, scheme in (("/to-http/", "http"), ("/to-https/", "https")):
                if self.path.startswith(prefix):  # a store that redirects elsewhere
                    port = self.server.server_address[1]
                    self.send_response(302)
                    self.send_header("Location", f"{scheme}://127.0.0.1:{port}/{self.path[len(prefix):]}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if self.path.startswith("/slow/"):
                self.path = self.path[5:]
                if self.path.endswith("manifest.json"):
                    time.sleep(1.0)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Handler, directory=str(mlp_package.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _serve_tls(httpd, cert_pem, key_pem)
    yield f"https://127.0.0.1:{httpd.server_address[1]}", cert_pem
    httpd.shutdown()
    httpd.server_close()


def test_https_package_with_a_trusted_certificate(
    serve, tls_site, mlp_package: Path, ort_run, tmp_path: Path
) -> None:
    base, cert = tls_site
    s = serve(f"{base}/{mlp_package.name}", "--cache-dir", str(tmp_path), env={"SSL_CERT_FILE": str(cert)})
    _check_infer(s, mlp_package, ort_run)
    digest = hashlib.sha256(f"{base}/{mlp_package.name}".encode()).hexdigest()[:24]
    assert (tmp_path / digest / "manifest.json").is_file()


def test_https_with_an_untrusted_certificate_refuses(
    serve, tls_site, mlp_package: Path, tmp_path: Path
) -> None:
    base, _ = tls_site
    s = serve(f"{base}/{mlp_package.name}", "--cache-dir", str(tmp_path), wait_ready=False)
    assert s.wait_exit() == 1
    assert "CERTIFICATE_VERIFY_FAILED" in s.log() or "certificate verify failed" in s.log()


def test_not_ready_while_loading(serve, tls_site, mlp_package: Path, tmp_path: Path) -> None:
    base, cert = tls_site
    s = serve(
        f"{base}/slow/{mlp_package.name}",
        "--cache-dir",
        str(tmp_path),
        env={"SSL_CERT_FILE": str(cert)},
        wait_ready=False,
    )
    deadline = time.monotonic() + 30
    while not (m := re.search(r"listening on http://127.0.0.1:(\d+)", s.log())):
        assert time.monotonic() < deadline and s.proc.poll() is None, s.log()
        time.sleep(0.02)
    url = f"http://127.0.0.1:{m.group(1)}"
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    r = httpx.post(f"{url}/v2/models/mlp/infer", json={"inputs": []})
    assert r.status_code == 503 and r.json()["error"] == "the model is still loading"
    while "ready: model mlp" not in s.log():
        assert time.monotonic() < deadline and s.proc.poll() is None, s.log()
        time.sleep(0.02)
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


@pytest.fixture
def trust_site(tls_site, monkeypatch: pytest.MonkeyPatch) -> str:
    base, cert = tls_site
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return str(base)


def test_https_redirects_are_followed_only_to_https(
    trust_site: str, mlp_package: Path, tmp_path: Path
) -> None:
    source = resolve(f"{trust_site}/to-https/{mlp_package.name}", tmp_path)
    assert sha256_file(source.model_path) == sha256_file(mlp_package / "mlp.onnx")
    with pytest.raises(ModelLoadError, match=r"redirected to http://127\.0\.0\.1:\d+/mlp/manifest\.json; "
                       r"only https:// is followed"):
        resolve(f"{trust_site}/to-http/{mlp_package.name}", tmp_path)


def test_https_download_stops_at_the_manifest_size(
    trust_site: str, mlp_package: Path, tmp_path: Path
) -> None:
    # a store whose file is larger than the manifest says: reading stops past the listed size
    grown = mlp_package.parent / "grown"
    shutil.copytree(mlp_package, grown, dirs_exist_ok=True)
    listed = (grown / "mlp.onnx.data").stat().st_size
    with open(grown / "mlp.onnx.data", "ab") as fh:
        fh.write(b"\0" * (4 << 20))
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as info:
        resolve(f"{trust_site}/grown", cache)
    assert str(info.value) == (
        f"{trust_site}/grown/mlp.onnx.data: larger than the {listed} bytes the manifest lists; "
        "download stopped"
    )
    assert not list(cache.rglob("mlp.onnx.data")) and not list(cache.rglob(".part-*"))


def test_bad_remote_manifest_names_the_uri(trust_site: str, mlp_package: Path, tmp_path: Path) -> None:
    bad = mlp_package.parent / "bad-manifest"
    bad.mkdir(exist_ok=True)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        resolve(f"{trust_site}/bad-manifest", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{trust_site}/bad-manifest/manifest.json: not valid JSON"), message
    assert str(tmp_path) not in message


def test_https_cache_is_reused_and_stale_parts_removed(
    trust_site: str, mlp_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    uri = f"{trust_site}/{mlp_package.name}"
    first = resolve(uri, tmp_path)
    entry = first.model_path.parent
    inodes = {p.name: p.stat().st_ino for p in entry.iterdir()}
    stale, fresh = entry / ".part-crashed", entry / ".part-in-progress"
    stale.write_bytes(b"half a download")
    fresh.write_bytes(b"another process is writing this")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with caplog.at_level(logging.INFO, logger="inferstack.runtime"):
        second = resolve(uri, tmp_path)
    assert second.model_path == first.model_path
    # the verified files were kept, not downloaded again (same inodes); only the manifest is re-read
    for name in ("mlp.onnx", "mlp.onnx.data"):
        assert (entry / name).stat().st_ino == inodes[name]
        assert f"cached: {name}" in caplog.text
    assert f"downloading {uri}/mlp.onnx" not in caplog.text
    assert not stale.exists() and fresh.exists()


# -- every download stops at its budget ----------------------------------------------------------
def _s3_client(s3_env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_s3_download_stops_at_the_manifest_size(
    s3_env: dict[str, str], mlp_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the manifest was written for the real weights; the store now holds 4 MiB more under the key
    _upload(s3_env, "models", "grown/v1", mlp_package)
    listed = (mlp_package / "mlp.onnx.data").stat().st_size
    _s3_client(s3_env).put_object(
        Bucket="models", Key="grown/v1/mlp.onnx.data", Body=(mlp_package / "mlp.onnx.data").read_bytes()
        + b"\0" * (4 << 20)
    )
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as info:
        resolve("s3://models/grown/v1", cache)
    assert str(info.value) == (
        f"s3://models/grown/v1/mlp.onnx.data: larger than the {listed} bytes the manifest lists; "
        "download stopped"
    )
    assert not list(cache.rglob("mlp.onnx.data")) and not list(cache.rglob(".part-*"))


def test_s3_manifest_download_stops_at_its_own_cap(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferstack.manifest import MAX_MANIFEST_BYTES

    _upload(s3_env, "models", "other", tmp_path)  # the bucket
    _s3_client(s3_env).put_object(
        Bucket="models", Key="huge/manifest.json", Body=b" " * (MAX_MANIFEST_BYTES + 1)
    )
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ModelLoadError, match=rf"^s3://models/huge/manifest\.json: larger than the "
                       rf"{MAX_MANIFEST_BYTES} bytes a manifest\.json may have; download stopped$"):
        resolve("s3://models/huge", tmp_path / "cache")


@pytest.fixture
def endless_site(
    mlp_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, list[int]]]:
    """An HTTPS store on loopback whose mlp.onnx.data answer announces no size and sends 64 MiB
    more than the file (close-delimited); yields its base URL and the bytes it managed to send."""
    sent: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no size announced

        def do_GET(self) -> None:
            path = mlp_package / self.path.rsplit("/", 1)[-1]
            self.send_response(200)
            self.end_headers()
            data = path.read_bytes()
            total = 0
            try:
                self.wfile.write(data)
                total += len(data)
                if path.name == "mlp.onnx.data":
                    block = b"\0" * (1 << 20)
                    for _ in range(64):
                        self.wfile.write(block)
                        total += len(block)
            except OSError:  # the client hung up: what we want
                pass
            finally:
                sent.append(total)

        def log_message(self, *args: object) -> None:
            pass

    cert_pem, key_pem = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_pem))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    _serve_tls(httpd, cert_pem, key_pem)
    yield f"https://127.0.0.1:{httpd.server_address[1]}", sent
    httpd.shutdown()
    httpd.server_close()


def test_a_store_that_sends_more_than_the_manifest_is_cut_off(
    endless_site: tuple[str, list[int]], mlp_package: Path, tmp_path: Path
) -> None:
    base, sent = endless_site
    listed = (mlp_package / "mlp.onnx.data").stat().st_size
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as info:
        resolve(f"{base}/mlp", cache)
    assert str(info.value) == (
        f"{base}/mlp/mlp.onnx.data: larger than the {listed} bytes the manifest lists; download stopped"
    )
    assert not list(cache.rglob("mlp.onnx.data")) and not list(cache.rglob(".part-*"))
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # the client hung up long before the store's 64 MiB were through
    assert sent[-1] < listed + (32 << 20), sent


# -- every file the model reads is listed ----------------------------------------------------------
def _package_with_unlisted_weights(mlp_package: Path, dest: Path) -> Path:
    """A copy of the MLP package saved by onnx with its weights in ``weights.bin``, whose manifest
    lists only the graph: the weights would load unchecked."""
    import onnx

    from inferstack.manifest import Manifest, file_entries, load_manifest, write_manifest

    dest.mkdir()
    model = onnx.load(str(mlp_package / "mlp.onnx"))  # with its weights
    onnx.save_model(model, str(dest / "mlp.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (dest / "weights.bin").stat().st_size > 0
    m = load_manifest(mlp_package)
    write_manifest(dest, Manifest(**{**m.__dict__, "files": file_entries(dest, ["mlp.onnx"]), "digest": ""}))
    return dest


def test_unlisted_external_data_is_refused(mlp_package: Path, tmp_path: Path) -> None:
    pkg = _package_with_unlisted_weights(mlp_package, tmp_path / "pkg")
    with pytest.raises(ModelLoadError) as info:
        resolve(str(pkg), tmp_path / "cache")
    assert str(info.value) == (
        f"{pkg}: {pkg / 'mlp.onnx'}: loads external data 'weights.bin', which manifest.json does not "
        "list (every file the model reads must be listed with its sha256)"
    )


def test_unlisted_external_data_refuses_to_start_and_fails_verify(
    serve, mlp_package: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from inferstack.cli import app

    pkg = _package_with_unlisted_weights(mlp_package, tmp_path / "pkg")
    s = serve(pkg, wait_ready=False)
    assert s.wait_exit() == 1
    assert "loads external data 'weights.bin', which manifest.json does not list" in s.log()
    assert "Traceback" not in s.log() and "ready:" not in s.log()
    r = CliRunner().invoke(app, ["verify", str(pkg)], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.stdout
    row = next(ln for ln in r.stdout.splitlines() if " files " in ln)
    assert "FAIL" in row and "weights.bin" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_tampered_listed_weights_fail_verify(mlp_package: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inferstack.cli import app

    data, expected, actual = _tampered_copy(mlp_package, tmp_path / "pkg")
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "pkg")], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "checksum mismatch" in r.stdout + r.stderr and expected in r.stdout + r.stderr


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/outside.bin"])
def test_external_data_outside_the_package_is_refused(
    mlp_package: Path, tmp_path: Path, location: str
) -> None:
    import onnx

    from inferstack.manifest import Manifest, file_entries, load_manifest, write_manifest

    pkg = tmp_path / "pkg"
    shutil.copytree(mlp_package, pkg)
    model = onnx.load(str(pkg / "mlp.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(pkg / "mlp.onnx"))
    m = load_manifest(pkg)
    write_manifest(pkg, Manifest(**{**m.__dict__, "files": file_entries(pkg, ["mlp.onnx", "mlp.onnx.data"]),
                                    "digest": ""}))
    with pytest.raises(ModelLoadError, match=f"external data location '{re.escape(location)}' is outside "
                       "the package; refused"):
        resolve(str(pkg), tmp_path / "cache")
    # a bare .onnx has no manifest, but its external data stays in its folder all the same
    with pytest.raises(ModelLoadError, match="outside the model's folder; refused"):
        resolve(str(pkg / "mlp.onnx"), tmp_path / "cache")


# -- partial downloads of a process that is gone -------------------------------------------------
def test_partials_of_a_dead_owner_are_removed_at_start(
    trust_site: str, mlp_package: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from inferstack.runtime.source import part_prefix

    uri = f"{trust_site}/{mlp_package.name}"
    entry = resolve(uri, tmp_path).model_path.parent
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead_prefix = part_prefix(child.pid)  # named while it runs: its pid and start time
    finally:
        child.kill()
        child.wait()
    dead = entry / f"{dead_prefix}abc123"
    live = entry / f"{part_prefix()}def456"
    # this process's pid with another start time: a new process that got a dead one's pid
    host, pid, start, _ = part_prefix().removeprefix(".part-").split(".")
    reused = entry / f".part-{host}.{pid}.{int(start) + 1}.ghi789"
    for p in (dead, live, reused):
        p.write_bytes(b"half a download")  # fresh: the 10-minute rule would keep them all
    assert os.getpid() == int(pid)
    resolve(uri, tmp_path)
    assert not dead.exists() and not reused.exists()
    assert live.exists()


# -- a manifest that is not one -----------------------------------------------------------------
@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"name": "caf\xe9"}', "not UTF-8 text (byte 13)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels deep; not a manifest"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested more than 32 levels deep; not a manifest"),
    ],
    ids=["latin-1", "deeper-than-the-parser", "deep"],
)
def test_a_bad_manifest_is_one_line_for_serve_and_verify(
    serve, tmp_path: Path, content: bytes, message: str
) -> None:
    from typer.testing import CliRunner

    from inferstack.cli import app

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_bytes(content)
    s = serve(pkg, wait_ready=False)
    assert s.wait_exit() == 1
    assert f"{pkg / 'manifest.json'}: {message}" in s.log()
    assert "Traceback" not in s.log()
    r = CliRunner().invoke(app, ["verify", str(pkg)], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit | None), r.exception
    assert message in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_a_manifest_over_the_cap_is_not_read(tmp_path: Path) -> None:
    from inferstack.manifest import MAX_MANIFEST_BYTES

    (tmp_path / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ModelLoadError, match=f"larger than {MAX_MANIFEST_BYTES} bytes; not a manifest"):
        resolve(str(tmp_path), tmp_path / "cache")


def test_a_bare_remote_onnx_with_external_data_is_refused(
    trust_site: str, mlp_package: Path, tmp_path: Path
) -> None:
    # its weights would have to come unlisted and unhashed: only a package brings them
    uri = f"{trust_site}/{mlp_package.name}/mlp.onnx"
    expected = f"{uri}: the model loads external data; serve its package"
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        resolve(uri, tmp_path)
    assert not list(tmp_path.rglob("mlp.onnx*"))
