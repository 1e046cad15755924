"""Run a Pulumi program in-process under Pulumi's mocks and record what it declares.

The program runs in its own thread, with a fresh :mod:`contextvars` context and event loop, so
Pulumi's ambient state (settings, config, root stack) starts empty every time and two plans in
one process do not see each other. A :class:`RecordingMonitor` sits where the engine would and
keeps every registration: type, name, parent, inputs, options (protect, retainOnDelete,
ignoreChanges), and the stack's outputs.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstack.errors import InferstackError
from inferstack.plan.mocks import PlanMocks
from inferstack.plan.stackconfig import StackConfig
from inferstack.plan.values import ValueConverter

DEFAULT_PROGRAM = "inferstack.components.program:main"


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str | None
    custom: bool
    inputs: dict[str, Any]
    provider: str | None = None
    protect: bool = False
    retain_on_delete: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    additional_secret_outputs: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    read: bool = False
    """True for ``Resource.get`` lookups of existing resources (read, never created or deleted)."""


@dataclass
class ProgramRun:
    config: StackConfig
    resources: dict[str, Registration]
    outputs: dict[str, Any]
    calls: list[str]
    stack_urn: str
    assumed_secrets: list[str] = field(default_factory=list)
    """Secret config keys the program asked for that the stack file lacks (set with
    ``pulumi config set --secret`` before ``pulumi up``); the plan stood in ``<secret>`` for them."""


def _provider_urn(ref: str) -> str | None:
    return ref.rsplit("::", 1)[0] if ref else None


def _make_monitor(converter: ValueConverter, mocks: PlanMocks) -> Any:
    from pulumi.runtime.mocks import MockMonitor

    class RecordingMonitor(MockMonitor):
        def __init__(self) -> None:
            super().__init__(mocks)
            self.recorded: dict[str, Registration] = {}
            self.outputs_by_urn: dict[str, dict[str, Any]] = {}
            self.stack_urn = ""

        def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
            response = super().RegisterResource(request)
            if request.type == "pulumi:pulumi:Stack":
                self.stack_urn = response.urn
                return response
            self.recorded[response.urn] = Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent or None,
                custom=bool(request.custom),
                inputs=converter.struct(request.object),
                provider=_provider_urn(request.provider),
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                ignore_changes=sorted(request.ignoreChanges),
                depends_on=sorted(set(request.dependencies)),
                property_dependencies={
                    k: sorted(set(v.urns)) for k, v in request.propertyDependencies.items() if v.urns
                },
                additional_secret_outputs=sorted(request.additionalSecretOutputs),
                delete_before_replace=bool(request.deleteBeforeReplace),
            )
            return response

        def ReadResource(self, request: Any) -> Any:  # noqa: N802
            response = super().ReadResource(request)
            self.recorded[response.urn] = Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent or None,
                custom=True,
                inputs={"id": request.id},
                provider=_provider_urn(request.provider),
                read=True,
            )
            return response

        def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
            self.outputs_by_urn[request.urn] = converter.struct(request.outputs)
            return super().RegisterResourceOutputs(request)

    return RecordingMonitor()


def load_program(spec: str) -> Callable[[], Any]:
    """``package.module:function`` or ``path/to/file.py:function``."""
    target, _, attr = spec.partition(":")
    attr = attr or "main"
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InferstackError(f"program {spec!r}: {path} does not exist")
        module_name = f"_inferstack_plan_program_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise InferstackError(f"program {spec!r}: cannot import {e.name}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InferstackError(f"program {spec!r}: {target} has no function {attr!r}")
    return fn


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


_CWD_LOCK = threading.Lock()


def plaintext_secret_error(key: str, stack: str) -> InferstackError:
    """A secret found in plain text in ``Pulumi.<stack>.yaml``, and how to set it encrypted."""
    return InferstackError(
        f"{key}: a secret in plain text in Pulumi.{stack}.yaml; remove it there and set it encrypted "
        f"with `pulumi config set --secret '{key}' <value> --stack {stack}`"
    )


@contextmanager
def _stand_in_for_missing_secrets(assumed: list[str], config: StackConfig) -> Iterator[None]:
    """A plan has no secrets: a secret the stack file lacks reads as ``<secret>`` and is recorded;
    one the stack file holds in plain text (not ``secure:``) is refused."""
    import pulumi

    from inferstack.plan.values import SECRET

    original_get, original_require = pulumi.Config.get_secret, pulumi.Config.require_secret

    def secret_of(self: pulumi.Config, key: str) -> Any:
        full = self.full_key(key)
        if self._get(key) is None:
            assumed.append(full)
            return pulumi.Output.secret(SECRET)
        if full not in config.secret_keys:
            raise plaintext_secret_error(full, config.stack)
        return None

    def get_secret(self: pulumi.Config, key: str, default: str | None = None) -> Any:
        if default is None or self._get(key) is not None:
            standin = secret_of(self, key)
            if standin is not None:
                return standin
        return original_get(self, key, default)

    def require_secret(self: pulumi.Config, key: str) -> Any:
        standin = secret_of(self, key)
        return standin if standin is not None else original_require(self, key)

    pulumi.Config.get_secret = get_secret  # type: ignore[method-assign]
    pulumi.Config.require_secret = require_secret  # type: ignore[method-assign]
    try:
        yield
    finally:
        pulumi.Config.get_secret = original_get  # type: ignore[method-assign]
        pulumi.Config.require_secret = original_require  # type: ignore[method-assign]


def run_program(program: Callable[[], Any], config: StackConfig) -> ProgramRun:
    """Run ``program`` as ``pulumi up`` would, against mocks; return everything it declared."""
    import pulumi
    from pulumi.runtime import config as pulumi_config
    from pulumi.runtime.mocks import set_mocks
    from pulumi.runtime.stack import run_in_stack

    region = config.values.get("aws:region", "us-east-1")
    mocks = PlanMocks(region=region)
    monitor = _make_monitor(ValueConverter(config.root), mocks)
    failure: list[BaseException] = []
    assumed: list[str] = []

    def body() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            pulumi_config.set_all_config(dict(config.values), list(config.secret_keys))
            set_mocks(mocks, project=config.project, stack=config.stack, preview=False, monitor=monitor)
            # set_mocks made a finished root stack; run_in_stack needs to make its own, as the
            # Pulumi language host does, so that pulumi.export() lands on it.
            pulumi.runtime.settings.ROOT.set(None)
            loop.run_until_complete(run_in_stack(program))
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            failure.append(e)
        finally:
            loop.close()

    with _CWD_LOCK, _working_directory(config.root), _stand_in_for_missing_secrets(assumed, config):
        thread = threading.Thread(target=contextvars.Context().run, args=(body,), name="inferstack-plan")
        thread.start()
        thread.join()
    if failure:
        e = failure[0]
        if isinstance(e, InferstackError):
            raise e
        raise InferstackError(
            f"the program failed under stack {config.stack!r}: {type(e).__name__}: {e}"
        ) from e
    return ProgramRun(
        config=config,
        resources=monitor.recorded,
        outputs=monitor.outputs_by_urn.get(monitor.stack_urn, {}),
        calls=list(mocks.calls),
        stack_urn=monitor.stack_urn,
        assumed_secrets=sorted(set(assumed)),
    )
