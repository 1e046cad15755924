"""ModelArtifact: a packaged model directory uploaded under a prefix named by its content hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from inferstack.errors import InferstackError
from inferstack.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file, verify_files

TYPE = "inferstack:model_artifact:ModelArtifact"


@dataclass
class ModelArtifactArgs:
    bucket: pulumi.Input[str]
    """Name of the bucket to upload into (e.g. ``ModelStore.bucket_name``). Required."""
    package_dir: Path
    """A model package directory: the files its manifest.json lists, and manifest.json. Required."""
    key_root: str = "models"
    """First part of the object keys: ``<key_root>/<model name>/<revision>/<file>``. Default ``models``."""


class ModelArtifact(pulumi.ComponentResource):
    """Uploads every file of the package and its manifest under ``models/<name>/<revision>/``.

    The revision is the sha256 of manifest.json, which lists every file's sha256 and every setting
    the runtime reads from it (max batch size, signature): the prefix (and the ``uri`` output the
    Deployment receives) changes exactly when the package changes, a model file or only its
    manifest; a new package rolls out, an unchanged one leaves the Deployment alone. The manifest
    holds no timestamp or build path, so re-exporting the same model and weights gives the same
    revision. Each file is checked against its sha256 before upload. ``digest`` is the hash of the
    files alone.
    """

    prefix: str
    revision: str
    digest: str
    uri: pulumi.Output[str]
    keys: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: ModelArtifactArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        package = Path(args.package_dir)
        if not package.is_dir():
            raise ValueError(f"ModelArtifactArgs.package_dir: {package} is not a directory")
        if not args.key_root or args.key_root.strip("/") != args.key_root:
            raise ValueError(
                f"ModelArtifactArgs.key_root: {args.key_root!r}; expected a name without slashes "
                "at either end"
            )
        try:
            manifest: Manifest = load_manifest(package)
            verify_files(package, manifest)
        except InferstackError as e:
            raise ValueError(f"ModelArtifactArgs.package_dir: {e}") from None
        super().__init__(TYPE, name, None, opts)

        self.digest = manifest.digest
        self.revision = sha256_file(package / MANIFEST_NAME)
        self.prefix = f"{args.key_root}/{manifest.name}/{self.revision}/"
        objects = []
        for rel in [*(f.path for f in manifest.files), MANIFEST_NAME]:
            objects.append(
                aws.s3.BucketObjectv2(
                    f"{name}-{rel.replace('/', '-')}",
                    bucket=args.bucket,
                    key=self.prefix + rel,
                    source=pulumi.FileAsset(str(package / rel)),
                    content_type="application/json" if rel.endswith(".json") else "application/octet-stream",
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        # The URI waits for every upload, so whatever consumes it starts after the files exist.
        self.keys = pulumi.Output.all(*[o.key for o in objects])
        self.uri = pulumi.Output.all(args.bucket, self.keys).apply(lambda v: f"s3://{v[0]}/{self.prefix}")
        self.register_outputs(
            {"prefix": self.prefix, "revision": self.revision, "digest": self.digest, "uri": self.uri,
             "keys": self.keys}
        )
