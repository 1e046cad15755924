"""The runtime image: built by `pulumi up` and deployed by its digest, or prebuilt and pinned by digest.
No stack references an image that nothing publishes."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from inferstack.components import config
from inferstack.components.program import main
from inferstack.components.runtime_image import RuntimeImage, RuntimeImageArgs
from pulumi_harness import Program, container, load_stack, resolve, run_program

IMAGE = "docker-build:index:Image"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PINNED = "ghcr.io/acme/inferstack-runtime@sha256:" + "ab" * 32


def _run(stack: str, **overrides: Any) -> Program:
    cfg = copy.deepcopy(load_stack(stack))
    if stack == "prod":
        cfg["inferstack:authToken"] = "prod-token"
    cfg.update({f"inferstack:{k}": v for k, v in overrides.items()})
    return run_program(main, cfg, stack=stack)


def _built_refs(p: Program) -> dict[str, str]:
    """urn of each docker-build Image -> the reference by digest that its push produced."""
    refs = {}
    for img in p.of_type(IMAGE):
        state = p.outputs_of(img.urn)
        refs[img.urn] = f"{img.inputs['tags'][0].rsplit(':', 1)[0]}@{state['digest']}"
    return refs


def _images(value: Any) -> list[str]:
    """Every value under an ``image`` key, anywhere in a resource's inputs."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "image" and isinstance(v, str):
                found.append(v)
            else:
                found.extend(_images(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_images(v))
    return found


def test_dev_builds_the_gpu_dockerfile_pushes_to_ecr_and_deploys_the_digest() -> None:
    p = _run("dev")
    (img,) = p.of_type(IMAGE)
    assert img.inputs["dockerfile"]["location"] == "runtime/Dockerfile", img.urn
    assert img.inputs["push"] is True, img.urn
    repo = p.one("aws:ecr/repository:Repository")
    url = p.outputs_of(repo.urn)["repositoryUrl"]
    (registry,) = img.inputs["registries"]
    assert registry["address"] == url and registry["password"] == "ecr-password", img.urn
    digest = p.outputs_of(img.urn)["digest"]
    image = container(p)["image"]
    assert image == f"{url}@{digest}", f"the Deployment runs {image}, not the pushed digest {digest}"
    assert container(p)["imagePullPolicy"] == "IfNotPresent", "a digest cannot change: no pull each start"


def test_local_builds_the_cpu_dockerfile_into_a_registry_the_cluster_reaches() -> None:
    p = _run("local")
    (img,) = p.of_type(IMAGE)
    assert img.inputs["dockerfile"]["location"] == "runtime/Dockerfile.cpu", img.urn
    assert img.inputs["tags"] == ["localhost:5001/inferstack-runtime:build-cpu"], img.urn
    assert not p.of_type("aws:ecr/repository:Repository")
    assert container(p)["image"] == f"localhost:5001/inferstack-runtime@{p.outputs_of(img.urn)['digest']}"


def test_the_ecr_repository_keeps_release_tags_immutable() -> None:
    p = _run("prod")
    repo = p.one("aws:ecr/repository:Repository")
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION", repo.urn
    moving = [{"filter": "build-*", "filterType": "WILDCARD"}]
    assert repo.inputs["imageTagMutabilityExclusionFilters"] == moving, repo.urn
    assert repo.inputs["imageScanningConfiguration"]["scanOnPush"] is True, repo.urn


@pytest.mark.parametrize("stack", ["local", "dev", "prod"])
def test_every_image_a_stack_runs_is_the_builds_digest_or_pinned_by_digest(stack: str) -> None:
    p = _run(stack)
    built = set(_built_refs(p).values())
    seen = 0
    for r in p.resources:
        if not r.custom:
            continue
        for image in _images(r.inputs):
            seen += 1
            assert DIGEST.search(image), f"{r.urn} runs {image}: not pinned by digest"
            if p.of_type(IMAGE):
                assert image in built, f"{r.urn} runs {image}, which this stack's build did not push"
    assert seen, f"stack {stack} declares no image at all"


def test_a_prebuilt_image_by_digest_is_used_as_is_and_nothing_is_built() -> None:
    p = _run("dev", runtimeImage={"gpu": PINNED})
    assert not p.of_type(IMAGE) and not p.of_type("aws:ecr/repository:Repository")
    assert container(p)["image"] == PINNED


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"runtimeImage": {"gpu": "ghcr.io/acme/inferstack-runtime:0.1.0-gpu"}}, "runtimeImage.gpu"),
        ({"runtimeImage": {}}, "runtimeImage.gpu"),
    ],
)
def test_a_prebuilt_image_without_digest_is_a_config_error(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        _run("dev", **overrides)
    msg = str(info.value)
    assert msg.startswith(f"inferstack:{key}:") and "@sha256:" in msg and "release workflow" in msg, msg


def test_a_models_own_image_must_be_pinned_too() -> None:
    cfg = copy.deepcopy(load_stack("dev"))
    cfg["inferstack:models"][0]["image"] = "ghcr.io/acme/inferstack-runtime:latest"
    with pytest.raises(config.ConfigError, match=r"models\[0\]\.image.*sha256"):
        run_program(main, cfg, stack="dev")
    cfg["inferstack:models"][0]["image"] = PINNED
    p = run_program(main, cfg, stack="dev")
    assert container(p)["image"] == PINNED and not p.of_type(IMAGE)


def test_ecr_is_aws_only() -> None:
    with pytest.raises(config.ConfigError, match="runtimeImage.registry.*AWS only"):
        _run("local", runtimeImage={"build": True, "registry": "ecr"})


def test_component_refuses_a_tag_and_an_ambiguous_source() -> None:
    with pytest.raises(ValueError, match="RuntimeImageArgs.image.*digest"):
        run_program(lambda: RuntimeImage("rt", RuntimeImageArgs(image="ghcr.io/x/runtime:1")))
    with pytest.raises(ValueError, match="exactly one"):
        run_program(lambda: RuntimeImage("rt", RuntimeImageArgs()))
    with pytest.raises(ValueError, match="RuntimeImageArgs.repository"):
        run_program(lambda: RuntimeImage("rt", RuntimeImageArgs(repository="localhost:5001/x:tag")))
    p = run_program(lambda: RuntimeImage("rt", RuntimeImageArgs(variant="cpu", repository="registry.io/x")))
    assert resolve(p.result.image) == f"registry.io/x@{p.outputs_of(p.one(IMAGE).urn)['digest']}"
