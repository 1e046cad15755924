"""RuntimeImage: the reference of the runtime image the Deployments run.

Two ways, chosen by the args:

* prebuilt: an image reference (e.g. ``ghcr.io/inferstack/runtime:0.1.0-gpu``) passed through.
* ECR: a private ECR repository (immutable tags, scan on push, a lifecycle rule) is declared and the
  reference is ``<repository URL>:<tag>``. The image is built and pushed outside Pulumi, so the program
  needs no Docker engine or extra provider (``pulumi-docker-build`` is not a dependency)::

      aws ecr get-login-password --region <region> \
        | docker login --username AWS --password-stdin <account>.dkr.ecr.<region>.amazonaws.com
      docker build -f runtime/Dockerfile -t <repository URL>:<tag> .
      docker push <repository URL>:<tag>

  ``pulumi stack output runtimeRepository`` prints the repository URL after the first ``pulumi up``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:runtime_image:RuntimeImage"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class RuntimeImageArgs:
    image: str | None = None
    """A prebuilt image reference. Exactly one of ``image`` and ``ecr_repository`` is set."""
    ecr_repository: str | None = None
    """Name of the ECR repository to create (``image`` unset). Default none."""
    tag: str = "0.1.0-gpu"
    """Tag of the image in the ECR repository. Default ``0.1.0-gpu``."""
    force_delete: bool = False
    """Let ``pulumi destroy`` delete the repository with its images (dev). Default false."""
    keep_images: int = 20
    """ECR lifecycle: keep the newest N images. Default 20."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on the repository. Default none."""


class RuntimeImage(pulumi.ComponentResource):
    image: pulumi.Output[str]
    repository_url: pulumi.Output[str] | None

    def __init__(self, name: str, args: RuntimeImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if (args.image is None) == (args.ecr_repository is None):
            raise ValueError("RuntimeImageArgs: set exactly one of image (prebuilt) and ecr_repository")
        if args.ecr_repository is not None and not _TAG.match(args.tag):
            raise ValueError(
                f"RuntimeImageArgs.tag: {args.tag!r}; expected [A-Za-z0-9_.-], up to 128 characters"
            )
        if args.ecr_repository is not None and not re.match(
            r"^[a-z0-9][a-z0-9._/-]{1,255}$", args.ecr_repository
        ):
            raise ValueError(
                f"RuntimeImageArgs.ecr_repository: {args.ecr_repository!r}; expected lowercase "
                "a-z, 0-9, '.', '_', '-', '/'"
            )
        super().__init__(TYPE, name, None, opts)
        self.repository_url = None
        if args.image is not None:
            self.image = pulumi.Output.from_input(args.image)
        else:
            repo = aws.ecr.Repository(
                f"{name}-repository",
                name=args.ecr_repository,
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS"}],
                force_delete=args.force_delete,
                tags=args.tags,
                opts=pulumi.ResourceOptions(parent=self),
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
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.repository_url = repo.repository_url
            self.image = repo.repository_url.apply(lambda url: f"{url}:{args.tag}")
        self.register_outputs({"image": self.image, "repository_url": self.repository_url})
