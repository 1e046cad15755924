"""The runtime's S3 client addresses the bucket the way the store wants: path-style for MinIO/Ceph
(the default with a custom endpoint), virtual-hosted for Alibaba OSS and Tencent COS, which refuse
path-style requests. Checked on the URL botocore signs (no request leaves the process)."""

from __future__ import annotations

from typing import Any

import pytest
from inferstack.runtime import source
from inferstack.runtime.errors import ModelLoadError


def _client_url(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    import boto3

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", source.S3_ADDRESSING_STYLE_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-guangzhou")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    made: list[Any] = []
    real = boto3.client

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(boto3, "client", spy)
    source._s3_fetcher("s3://models-1250000000/m/", "models-1250000000", "m/")
    assert len(made) == 1
    url: str = made[0].generate_presigned_url(
        "get_object", Params={"Bucket": "models-1250000000", "Key": "m/x"}
    )
    return url


def test_virtual_style_for_oss_and_cos(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _client_url(
        monkeypatch,
        {
            "AWS_ENDPOINT_URL_S3": "https://cos.ap-guangzhou.myqcloud.com",
            "INFERSTACK_S3_ADDRESSING_STYLE": "virtual",
        },
    )
    assert url.startswith("https://models-1250000000.cos.ap-guangzhou.myqcloud.com/m/x?"), url


def test_path_style_by_default_with_a_custom_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _client_url(monkeypatch, {"AWS_ENDPOINT_URL_S3": "http://minio.minio:9000"})
    assert url.startswith("http://minio.minio:9000/models-1250000000/m/x?"), url


def test_a_bad_style_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="INFERSTACK_S3_ADDRESSING_STYLE='sideways'"):
        _client_url(monkeypatch, {"INFERSTACK_S3_ADDRESSING_STYLE": "sideways"})
