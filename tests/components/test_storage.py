"""ModelStore, ModelArtifact and RuntimeImage alone, under Pulumi's mocks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pulumi
import pytest
from inferstack.components.model_artifact import ModelArtifact, ModelArtifactArgs
from inferstack.components.model_store import ModelStore, ModelStoreArgs
from pulumi_harness import resolve, run_program

from inferstack.manifest import load_manifest, write_manifest

BUCKET = "aws:s3/bucket:Bucket"


def _store(**kw: object) -> ModelStore:
    return ModelStore("store", ModelStoreArgs(**kw))  # type: ignore[arg-type]


def test_bucket_blocks_public_access_is_versioned_kms_encrypted_and_tls_only() -> None:
    p = run_program(lambda: _store(bucket_prefix="models"))
    bucket = p.one(BUCKET)
    pab = p.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert pab.inputs.get(flag) is True, f"{pab.urn}: {flag} is {pab.inputs.get(flag)}"
    assert pab.inputs["bucket"] == bucket.inputs["bucketPrefix"] + "20260101abcdef", pab.urn

    versioning = p.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled", versioning.urn

    key = p.one("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True, key.urn
    sse = p.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    rule = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "aws:kms", sse.urn
    assert rule["kmsMasterKeyId"].endswith(f"key/{key.name}"), f"{sse.urn}: not the stack's key: {rule}"

    policy = p.one("aws:s3/bucketPolicy:BucketPolicy")
    doc = json.loads(policy.inputs["policy"])
    deny = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}, policy.urn
    assert deny[0]["Principal"] == "*" and deny[0]["Action"] == "s3:*", policy.urn
    assert pab.urn in policy.dependencies, f"{policy.urn}: must wait for the public-access block"

    lifecycle = p.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    rule = lifecycle.inputs["rules"][0]
    assert rule["status"] == "Enabled" and rule["noncurrentVersionExpiration"]["noncurrentDays"] == 30, (
        lifecycle.urn
    )

    bucket_name = resolve(p.result.bucket_name)
    assert bucket_name.startswith("models-"), bucket_name


def test_prod_store_is_protected_and_retained_dev_store_is_force_destroyed() -> None:
    prod = run_program(lambda: _store(protect=True))
    for typ in (BUCKET, "aws:kms/key:Key"):
        r = prod.one(typ)
        assert r.protect and r.retain_on_delete, f"{r.urn}: protect={r.protect} retain={r.retain_on_delete}"
        assert not r.inputs.get("forceDestroy"), r.urn
    dev = run_program(lambda: _store(force_destroy=True))
    b = dev.one(BUCKET)
    assert b.inputs["forceDestroy"] is True and not b.protect and not b.retain_on_delete, b.urn


def test_s3_compatible_store_leaves_out_the_aws_only_apis() -> None:
    p = run_program(lambda: _store(kms=False, block_public_access=False, require_tls=False))
    types = {r.type for r in p.resources}
    assert "aws:s3/bucketVersioning:BucketVersioning" in types
    assert "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration" in types
    for gone in (
        "aws:kms/key:Key",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketPolicy:BucketPolicy",
    ):
        assert gone not in types


def test_store_args_are_checked_before_anything_is_declared() -> None:
    with pytest.raises(ValueError, match="force_destroy"):
        run_program(lambda: _store(force_destroy=True, protect=True))
    with pytest.raises(ValueError, match="noncurrent_version_days"):
        run_program(lambda: _store(noncurrent_version_days=0))


def _artifact(package: Path) -> ModelArtifact:
    return ModelArtifact("tiny", ModelArtifactArgs(bucket="models-bucket", package_dir=package))


def test_artifact_uploads_every_file_under_a_prefix_with_the_revision(tiny_package: Path) -> None:
    manifest = load_manifest(tiny_package)
    p = run_program(lambda: _artifact(tiny_package))
    objects = p.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    revision = hashlib.sha256((tiny_package / "manifest.json").read_bytes()).hexdigest()
    prefix = f"models/{manifest.name}/{revision}/"
    keys = sorted(o.inputs["key"] for o in objects)
    assert keys == sorted(prefix + f for f in [*(f.path for f in manifest.files), "manifest.json"]), keys
    for o in objects:
        assert o.inputs["bucket"] == "models-bucket", o.urn
        rel = o.inputs["key"].removeprefix(prefix)
        assert o.inputs["source"].path == str(tiny_package / rel), o.urn
    assert resolve(p.result.uri) == f"s3://models-bucket/{prefix}"


def test_a_changed_model_gets_a_new_prefix_an_unchanged_one_keeps_it(
    tiny_package: Path, tmp_path: Path
) -> None:
    before = resolve(run_program(lambda: _artifact(tiny_package)).result.uri)
    again = resolve(run_program(lambda: _artifact(tiny_package)).result.uri)
    assert before == again

    changed = tmp_path / "pkg"
    shutil.copytree(tiny_package, changed)
    manifest = load_manifest(changed)
    model = changed / manifest.model_file
    model.write_bytes(model.read_bytes() + b"\x00")  # a different model file...
    from inferstack.manifest import Manifest, file_entries

    new = Manifest(
        **{**manifest.__dict__, "files": file_entries(changed, [manifest.model_file]), "digest": ""}
    )
    write_manifest(changed, new)  # ...correctly packaged
    after = resolve(run_program(lambda: _artifact(changed)).result.uri)
    revision = hashlib.sha256((changed / "manifest.json").read_bytes()).hexdigest()
    assert after != before and after.endswith(f"/{revision}/")


def test_a_manifest_only_change_gets_a_new_prefix(tiny_package: Path, tmp_path: Path) -> None:
    """The same model file with a different max batch size in its manifest is a different
    package for the runtime: it must roll out too."""
    before = resolve(run_program(lambda: _artifact(tiny_package)).result.uri)
    changed = tmp_path / "pkg"
    shutil.copytree(tiny_package, changed)
    manifest = load_manifest(changed)
    from inferstack.manifest import Manifest

    write_manifest(changed, Manifest(**{**manifest.__dict__, "max_batch_size": manifest.max_batch_size + 1}))
    assert load_manifest(changed).digest == manifest.digest  # the files are the same...
    after = resolve(run_program(lambda: _artifact(changed)).result.uri)
    assert after != before  # ...but the package is not


def test_artifact_refuses_a_tampered_package(tiny_package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pkg"
    shutil.copytree(tiny_package, bad)
    (bad / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ValueError, match="model.onnx"):
        run_program(lambda: _artifact(bad))
    with pytest.raises(ValueError, match="package_dir"):
        run_program(lambda: _artifact(tmp_path / "missing"))


def test_outputs_are_registered_not_empty() -> None:
    p = run_program(lambda: _store())
    assert isinstance(p.result.bucket_arn, pulumi.Output)
    assert resolve(p.result.bucket_arn).startswith("arn:aws:s3:::")


def test_lifecycle_discards_stale_multipart_uploads_unless_the_store_lacks_the_rule() -> None:
    rule = run_program(lambda: _store()).one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
    )
    assert rule.inputs["rules"][0]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 7, rule.urn
    other = run_program(lambda: _store(abort_incomplete_upload_days=None)).one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
    )
    assert "abortIncompleteMultipartUpload" not in other.inputs["rules"][0], other.urn
