"""ModelStore: the private, versioned, encrypted S3 bucket that holds model packages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:model_store:ModelStore"


@dataclass
class ModelStoreArgs:
    bucket_prefix: str = "inferstack-models"
    """Bucket name prefix; the provider appends a unique suffix. Default ``inferstack-models``."""
    bucket_name: str | None = None
    """The exact bucket name instead (no suffix), e.g. Tencent COS's ``<name>-<appid>``. Default none."""
    force_destroy: bool = False
    """Let ``pulumi destroy`` delete a non-empty bucket (dev). Default false."""
    protect: bool = False
    """prod: ``protect`` and ``retain_on_delete`` on the bucket and its key, so no ``pulumi up`` or
    ``destroy`` deletes the models. Excludes ``force_destroy``. Default false."""
    noncurrent_version_days: int = 30
    """Days before a replaced object version expires. Default 30."""
    kms: bool = True
    """SSE-KMS with a dedicated, rotated key. Default true; S3-compatible stores without a KMS
    (MinIO without KES) set false and rely on the store's own encryption."""
    block_public_access: bool = True
    """The four S3 public-access blocks. Default true; stores without that API (MinIO) set false."""
    require_tls: bool = True
    """Bucket policy denying every request not made over TLS. Default true; a local store served over
    plain http (kind + MinIO) sets false."""
    abort_incomplete_upload_days: int | None = 7
    """Days before an unfinished multipart upload is discarded; None leaves the rule out (stores
    whose lifecycle API lacks it). Default 7."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every taggable resource. Default none."""


class ModelStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str] | None

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.force_destroy and args.protect:
            raise ValueError("ModelStoreArgs.force_destroy: true is not allowed with protect: true")
        if not 1 <= args.noncurrent_version_days <= 3650:
            raise ValueError(
                f"ModelStoreArgs.noncurrent_version_days: {args.noncurrent_version_days}; expected 1..3650"
            )
        if args.bucket_name is not None and not re.match(
            r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", args.bucket_name
        ):
            raise ValueError(
                f"ModelStoreArgs.bucket_name: {args.bucket_name!r}; expected an S3 bucket name "
                "(3-63 characters of a-z, 0-9, '.', '-')"
            )
        super().__init__(TYPE, name, None, opts)
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=args.protect)
        child = pulumi.ResourceOptions(parent=self)

        key = None
        if args.kms:
            key = aws.kms.Key(
                f"{name}-key",
                description=f"{name}: model store encryption",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                tags=args.tags,
                opts=keep,
            )
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=args.bucket_name,
            bucket_prefix=None if args.bucket_name else args.bucket_prefix + "-",
            force_destroy=args.force_destroy,
            tags=args.tags,
            opts=keep,
        )
        blocks: list[pulumi.Resource] = []
        if args.block_public_access:
            blocks.append(
                aws.s3.BucketPublicAccessBlock(
                    f"{name}-public-access",
                    bucket=bucket.id,
                    block_public_acls=True,
                    block_public_policy=True,
                    ignore_public_acls=True,
                    restrict_public_buckets=True,
                    opts=child,
                )
            )
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        if key is not None:
            aws.s3.BucketServerSideEncryptionConfiguration(
                f"{name}-encryption",
                bucket=bucket.id,
                rules=[
                    {
                        "apply_server_side_encryption_by_default": {
                            "sse_algorithm": "aws:kms",
                            "kms_master_key_id": key.arn,
                        },
                        "bucket_key_enabled": True,
                    }
                ],
                opts=child,
            )
        rule: Any = {
            "id": "expire-noncurrent-versions",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_version_days},
        }
        if args.abort_incomplete_upload_days is not None:
            rule["abort_incomplete_multipart_upload"] = {
                "days_after_initiation": args.abort_incomplete_upload_days
            }
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=[rule], opts=child)
        if args.require_tls:
            aws.s3.BucketPolicy(
                f"{name}-tls-only",
                bucket=bucket.id,
                policy=bucket.arn.apply(_tls_only_policy),
                # S3 rejects a bucket policy while the public-access block is still being applied.
                opts=pulumi.ResourceOptions(parent=self, depends_on=blocks),
            )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.kms_key_arn = key.arn if key is not None else None
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "kms_key_arn": self.kms_key_arn,
            }
        )


def _tls_only_policy(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )
