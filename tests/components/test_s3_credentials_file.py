"""The credentials file InferenceService mounts on an S3-compatible store is what the runtime's S3
client really signs with: the Secret's rendered file, written where the pod would see it, lets the
runtime download a package from moto's standalone S3 server with no key in the environment; the same
process without ``AWS_SHARED_CREDENTIALS_FILE`` finds no credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pulumi
from inferstack.components.inference_service import InferenceService, InferenceServiceArgs, S3Credentials
from pulumi_harness import container, env_of, run_program

from inferstack.manifest import sha256_file

BUCKET = "models"
PREFIX = "models/tiny-linear/v1"

FETCH = """
import sys
from pathlib import Path
from inferstack.runtime.source import resolve
src = resolve(sys.argv[1], Path(sys.argv[2]))
print(src.model_path)
"""


def _upload(endpoint: str, package: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="uploader",
        aws_secret_access_key="uploader",
    )
    client.create_bucket(Bucket=BUCKET)
    for f in package.iterdir():
        client.upload_file(str(f), BUCKET, f"{PREFIX}/{f.name}")


def _fetch(env: dict[str, str], cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FETCH, f"s3://{BUCKET}/{PREFIX}/", str(cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runtime_downloads_with_the_mounted_credentials_file_only(
    moto_s3: str, tiny_package: Path, tmp_path: Path
) -> None:
    _upload(moto_s3, tiny_package)
    p = run_program(
        lambda: InferenceService(
            "tiny",
            InferenceServiceArgs(
                model_name="tiny",
                image="inferstack-runtime:cpu",
                model_uri=f"s3://{BUCKET}/{PREFIX}/",
                bucket=BUCKET,
                model_prefix=f"{PREFIX}/",
                gpus=0,
                s3_credentials=S3Credentials("minio", pulumi.Output.secret("minio-secret")),
                s3_endpoint=moto_s3,
            ),
        )
    )
    c = container(p)
    pod_env = env_of(c)
    secret = p.one("kubernetes:core/v1:Secret", "s3")
    # the Secret's keys become files under the mount path, as the kubelet lays them out
    mount = next(m for m in c["volumeMounts"] if m["name"] == "s3-credentials")
    root = tmp_path / "pod"
    for key, content in secret.inputs["stringData"].items():
        target = root / mount["mountPath"].lstrip("/") / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    creds_file = root / pod_env["AWS_SHARED_CREDENTIALS_FILE"].lstrip("/")
    assert creds_file.is_file(), "AWS_SHARED_CREDENTIALS_FILE must point into the mounted Secret"

    home = tmp_path / "home"  # no ~/.aws of this machine
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base = {
        **clean,
        "HOME": str(home),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata fallback
        "AWS_ENDPOINT_URL_S3": pod_env["AWS_ENDPOINT_URL_S3"],
        "AWS_REGION": pod_env["AWS_REGION"],
    }

    ok = _fetch({**base, "AWS_SHARED_CREDENTIALS_FILE": str(creds_file)}, tmp_path / "cache")
    assert ok.returncode == 0, ok.stderr
    model = Path(ok.stdout.strip())
    assert sha256_file(model) == sha256_file(tiny_package / "model.onnx")

    without = _fetch(base, tmp_path / "cache-2")
    assert without.returncode != 0
    assert "Unable to locate credentials" in without.stderr
