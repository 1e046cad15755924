"""RuntimeImage: the runtime image a Deployment runs, always referenced by digest.

Two sources, chosen by the args:

* build: ``pulumi up`` builds ``runtime/Dockerfile`` (``gpu``) or ``runtime/Dockerfile.cpu`` (``cpu``)
  with Pulumi's docker-build provider (BuildKit) and pushes it, either to a private ECR repository
  that this component declares (immutable tags except the moving ``build-<variant>`` tag, scan on
  push, KMS, a lifecycle rule), or to a repository the cluster pulls from (e.g. kind's local
  registry ``localhost:5001/...``). The reference is ``<repository>@<digest>`` from the build's
  ``digest`` output, so the Deployment changes exactly when the image does and a tag moved later
  changes nothing that runs. Needs a Docker engine with buildx where ``pulumi up`` runs.
* prebuilt: an image already pinned by digest (``repo@sha256:...``, e.g. from the release workflow
  ``.github/workflows/release.yml``) is passed through; a tag alone is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

TYPE = "inferstack:runtime_image:RuntimeImage"
DOCKERFILES = {"gpu": "runtime/Dockerfile", "cpu": "runtime/Dockerfile.cpu"}
PLATFORMS = ("linux/amd64", "linux/arm64")
#: registry/repository@sha256:<64 hex>: an image pinned by digest.
PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[a-f0-9]{64}$")
#: a repository an image is pushed to: host[:port]/path, lowercase, no tag or digest.
REPOSITORY = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)+$")


@dataclass
class RuntimeImageArgs:
    variant: str = "gpu"
    """``gpu`` (runtime/Dockerfile) or ``cpu`` (runtime/Dockerfile.cpu). Default gpu."""
    image: str | None = None
    """A prebuilt image pinned by digest (``repo@sha256:<64 hex>``). Exactly one of ``image``,
    ``ecr_repository`` and ``repository`` is set."""
    ecr_repository: str | None = None
    """Build, and push to this ECR repository, which the component creates. Default none."""
    repository: str | None = None
    """Build, and push to this existing repository (``host[:port]/path``), without credentials (a
    local registry; log in with ``docker login`` for another). Default none."""
    context: str = "."
    """Build context, relative to the project root (where ``pulumi up`` runs). Default ``.``."""
    platform: str = "linux/amd64"
    """Image platform. Default linux/amd64."""
    force_delete: bool = False
    """Let ``pulumi destroy`` delete the ECR repository with its images (dev). Default false."""
    keep_images: int = 20
    """ECR lifecycle: keep the newest N images. Default 20."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on the ECR repository. Default none."""


class RuntimeImage(pulumi.ComponentResource):
    image: pulumi.Output[str]
    """The image reference by digest: ``<repository>@sha256:...``."""
    digest: pulumi.Output[str] | None
    """The build's digest (build only)."""
    repository_url: pulumi.Output[str] | None
    """The ECR repository URL (ECR only)."""

    def __init__(self, name: str, args: RuntimeImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        _validate(args)
        super().__init__(TYPE, name, None, opts)
        self.repository_url = None
        self.digest = None
        if args.image is not None:
            self.image = pulumi.Output.from_input(args.image)
            self.register_outputs({"image": self.image})
            return
        registries: list[docker_build.RegistryArgs] = []
        if args.ecr_repository is not None:
            repo = _ecr_repository(name, args, self)
            token = aws.ecr.get_authorization_token_output(
                registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            registries.append(
                docker_build.RegistryArgs(
                    address=repo.repository_url, username=token.user_name, password=token.password
                )
            )
            repository: pulumi.Output[str] = repo.repository_url
            self.repository_url = repo.repository_url
        else:
            repository = pulumi.Output.from_input(str(args.repository))
        built = docker_build.Image(
            f"{name}-build",
            context=docker_build.BuildContextArgs(location=args.context),
            dockerfile=docker_build.DockerfileArgs(location=DOCKERFILES[args.variant]),
            platforms=[docker_build.Platform(args.platform)],
            # One moving tag per variant (excluded from the repository's immutability); what runs is
            # the digest below, never this tag.
            tags=[repository.apply(lambda r: f"{r}:build-{args.variant}")],
            push=True,
            registries=registries,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.digest = built.digest
        self.image = pulumi.Output.all(repository, built.digest).apply(lambda v: by_digest(v[0], v[1]))
        self.register_outputs(
            {"image": self.image, "digest": self.digest, "repository_url": self.repository_url}
        )


def by_digest(repository: str, digest: str) -> str:
    """``repository@digest``; refuses an empty digest (an image that was not pushed)."""
    if not digest.startswith("sha256:"):
        raise ValueError(f"RuntimeImage: the build of {repository} returned no registry digest ({digest!r})")
    return f"{repository}@{digest}"


def _ecr_repository(name: str, args: RuntimeImageArgs, parent: pulumi.Resource) -> aws.ecr.Repository:
    child = pulumi.ResourceOptions(parent=parent)
    repo = aws.ecr.Repository(
        f"{name}-repository",
        name=args.ecr_repository,
        # Tags are immutable except the moving build-<variant> tag; deployments use digests.
        image_tag_mutability="IMMUTABLE_WITH_EXCLUSION",
        image_tag_mutability_exclusion_filters=[{"filter": "build-*", "filter_type": "WILDCARD"}],
        image_scanning_configuration={"scan_on_push": True},
        encryption_configurations=[{"encryption_type": "KMS"}],
        force_delete=args.force_delete,
        tags=args.tags,
        opts=child,
    )
    aws.ecr.LifecyclePolicy(
        f"{name}-lifecycle",
        repository=repo.name,
        policy=json.dumps(
            {
                "rules": [
                    {
                        "rulePriority": 1,
                        "description": f"keep the newest {args.keep_images} images",
                        "selection": {
                            "tagStatus": "any",
                            "countType": "imageCountMoreThan",
                            "countNumber": args.keep_images,
                        },
                        "action": {"type": "expire"},
                    }
                ]
            }
        ),
        opts=child,
    )
    return repo


def _validate(args: RuntimeImageArgs) -> None:
    sources = [s for s in (args.image, args.ecr_repository, args.repository) if s is not None]
    if len(sources) != 1:
        raise ValueError(
            "RuntimeImageArgs: set exactly one of image (prebuilt, by digest), ecr_repository (build, "
            "push to ECR) and repository (build, push to that registry)"
        )
    if args.variant not in DOCKERFILES:
        raise ValueError(
            f"RuntimeImageArgs.variant: {args.variant!r}; expected one of {', '.join(DOCKERFILES)}"
        )
    if args.image is not None and not PINNED_IMAGE.match(args.image):
        raise ValueError(
            f"RuntimeImageArgs.image: {args.image!r}; expected an image pinned by digest, "
            "repo@sha256:<64 hex> (a tag can move under a running Deployment)"
        )
    ecr = args.ecr_repository
    if ecr is not None and not re.match(r"^[a-z0-9][a-z0-9._/-]{1,255}$", ecr):
        raise ValueError(
            f"RuntimeImageArgs.ecr_repository: {args.ecr_repository!r}; expected lowercase "
            "a-z, 0-9, '.', '_', '-', '/'"
        )
    if args.repository is not None and not REPOSITORY.match(args.repository):
        raise ValueError(
            f"RuntimeImageArgs.repository: {args.repository!r}; expected host[:port]/path in lowercase, "
            "without a tag or digest"
        )
    if args.platform not in PLATFORMS:
        raise ValueError(
            f"RuntimeImageArgs.platform: {args.platform!r}; expected one of {', '.join(PLATFORMS)}"
        )
