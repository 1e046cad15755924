"""The Pulumi program: validate the stack's config, declare the InferenceStack, export its outputs.

``__main__.py`` at the project root calls ``main()``. ``inferstack plan`` calls it too, offline,
under ``pulumi.runtime.set_mocks`` with the stack's config set through ``pulumi.runtime.set_config``:
the program reads config only through ``pulumi.Config``, and resolves relative paths (model
packages) against the project root, the directory of ``Pulumi.yaml``, not the working directory.

Stack outputs: ``endpointUrl`` and ``modelUri`` (the first model), ``endpoints`` and ``modelUris``
(every model by name), ``bucketName``, ``clusterName``, ``kubeconfig`` (secret), ``target`` and,
with an ECR repository, ``runtimeRepository``.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
from inferstack.components import config
from inferstack.components.inference_stack import InferenceStack, InferenceStackArgs

STACK_RESOURCE_NAME = "inferstack"


def main(project_dir: str | Path | None = None) -> InferenceStack:
    """Declare the whole stack; raises ``config.ConfigError`` before any resource on bad config."""
    cfg = config.load(Path(project_dir) if project_dir is not None else None)
    stack = InferenceStack(STACK_RESOURCE_NAME, InferenceStackArgs(config=cfg))
    first = cfg.models[0].name
    pulumi.export("target", cfg.target)
    pulumi.export("endpointUrl", stack.endpoints[first])
    pulumi.export("modelUri", stack.model_uris[first])
    pulumi.export("endpoints", stack.endpoints)
    pulumi.export("modelUris", stack.model_uris)
    pulumi.export("bucketName", stack.bucket_name)
    pulumi.export("clusterName", stack.cluster_name)
    pulumi.export("kubeconfig", pulumi.Output.secret(stack.kubeconfig))
    if stack.runtime_repository is not None:
        pulumi.export("runtimeRepository", stack.runtime_repository)
    return stack
