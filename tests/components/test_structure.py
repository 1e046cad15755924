"""components/ reads as the list of what a stack can contain: one ComponentResource per module, its
type token ``inferstack:<module>:<ClassName>``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import inferstack.components as package
import pulumi

ADD_ONS = ("keda", "keda_http_addon", "prometheus", "dcgm_exporter", "grafana", "autoscaling")


def _components() -> dict[str, list[type]]:
    found: dict[str, list[type]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found[info.name] = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, pulumi.ComponentResource) and c.__module__ == module.__name__
        ]
    return found


def test_one_component_per_module_with_its_type_token() -> None:
    found = _components()
    for name in ADD_ONS:
        assert found.get(name), f"components/{name}.py declares no ComponentResource"
    for name, classes in found.items():
        if not classes:
            continue  # config, program: no resources of their own
        assert len(classes) == 1, f"components/{name}.py declares {[c.__name__ for c in classes]}"
        module = importlib.import_module(f"{package.__name__}.{name}")
        token = str(module.TYPE)
        assert token == f"inferstack:{name}:{classes[0].__name__}", f"components/{name}.py: {token}"
