"""Turn an export SOURCE into something PyTorch can run and export.

SOURCE is one of:

- a ``torch.export`` program (``model.pt2``), loaded with ``torch.export.load``;
- ``package.module:factory`` or ``path/to/file.py:factory``: a callable that returns the
  ``nn.Module``; ``--weights`` then loads a state dict into it (``weights_only=True``, so the
  weights file cannot run code);
- a pickled whole module (``.pth``/``.pt``), only with ``--trust-pickle``: unpickling runs code
  that the file names, so it is refused unless the user says the file is trusted.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferstack.modeltools._text import first_line

from inferstack.errors import InferstackError

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".bin")
_EXIT_HINT = "a factory must return the module; guard script code with if __name__ == '__main__'"


class SourceError(InferstackError):
    """The model source cannot be loaded."""


@dataclass(frozen=True)
class Source:
    """What the user pointed at; enough to load the model again (in the parity subprocess)."""

    spec: str
    weights: str | None = None
    trust_pickle: bool = False

    @property
    def kind(self) -> str:
        if self.spec.endswith(".pt2"):
            return "exported-program"
        if self.spec.endswith(PICKLE_SUFFIXES) and ":" not in Path(self.spec).name:
            return "pickle"
        return "factory"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "weights": self.weights, "trust_pickle": self.trust_pickle}


def _split_factory(spec: str) -> tuple[str, str]:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SourceError(
            f"{spec}: not a model source; use model.pt2, package.module:factory, path/to/file.py:factory "
            "or a pickled module with --trust-pickle"
        )
    return target, attr


def _import_target(target: str) -> Any:
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise SourceError(f"{target}: file not found")
        # A stable name (not hash(), which changes per process): the exporter writes the module's
        # name into the graph, and the same file must give the same package.
        name = f"_inferstack_source_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
        if name in sys.modules:  # imported before in this process: registrations must not repeat
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SourceError(f"{target}: cannot be imported as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SystemExit as e:
            del sys.modules[name]
            raise SourceError(f"{target}: importing it called sys.exit({e.code}) ({_EXIT_HINT})") from None
        except Exception as e:
            del sys.modules[name]
            raise SourceError(f"{target}: importing it failed: {first_line(e)}") from e
        return module
    # Like `python -m`, a module in the working directory is importable by its name.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(target)
    except SystemExit as e:
        raise SourceError(f"{target}: importing it called sys.exit({e.code}) ({_EXIT_HINT})") from None
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name):
            raise SourceError(f"{target}: no such Python module (is the package installed?)") from e
        raise SourceError(f"{target}: importing it failed: {first_line(e)}") from e
    except Exception as e:
        raise SourceError(f"{target}: importing it failed: {first_line(e)}") from e


def _load_factory(source: Source) -> torch.nn.Module:
    import torch

    target, attr = _split_factory(source.spec)
    module = _import_target(target)
    factory = getattr(module, attr, None)
    if factory is None:
        raise SourceError(f"{source.spec}: {target} has no attribute {attr!r}")
    if not callable(factory):
        raise SourceError(f"{source.spec}: {attr!r} is not callable")
    try:
        model = factory()
    except SystemExit as e:
        raise SourceError(f"{source.spec}: the factory called sys.exit({e.code}) ({_EXIT_HINT})") from None
    except Exception as e:
        raise SourceError(f"{source.spec}: the factory raised {first_line(e)}") from e
    if not isinstance(model, torch.nn.Module):
        raise SourceError(
            f"{source.spec}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    if source.weights:
        _load_weights(model, source.weights)
    return model


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    import pickle

    import torch

    path = Path(weights)
    if not path.is_file():
        raise SourceError(f"{weights}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SourceError(
            f"{weights}: not a plain state dict (weights_only loading refused it: {first_line(e)}); "
            "save it with torch.save(model.state_dict(), PATH)"
        ) from e
    except Exception as e:
        raise SourceError(f"{weights}: cannot be read as a PyTorch state dict: {first_line(e)}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SourceError(f"{weights}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0] if lines else ""
        raise SourceError(f"{weights}: does not fit the module: {detail}") from e


def _load_pickle(source: Source) -> torch.nn.Module:
    import torch

    path = Path(source.spec)
    if not path.is_file():
        raise SourceError(f"{source.spec}: file not found")
    if not source.trust_pickle:
        raise SourceError(
            f"{source.spec}: refusing to unpickle a whole module, because unpickling runs code named in "
            "the file; pass --trust-pickle if you trust it, or save a state dict instead "
            "(torch.save(model.state_dict(), 'weights.pt')) and export with "
            "'package.module:factory --weights weights.pt'"
        )
    # The pickle names its classes by module (``mymodel.Net``); like ``python script.py`` beside
    # them, the file's own directory is importable, so a model saved next to its code loads.
    here = str(path.resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except SystemExit as e:
        raise SourceError(f"{source.spec}: unpickling it called sys.exit({e.code})") from None
    except ModuleNotFoundError as e:
        raise SourceError(
            f"{source.spec}: cannot be unpickled: the module {e.name!r} that defines its class is not "
            f"importable from {here} or the installed packages (install it, or export with a factory)"
        ) from e
    except Exception as e:
        raise SourceError(f"{source.spec}: cannot be unpickled: {first_line(e)}") from e
    if not isinstance(obj, torch.nn.Module):
        hint = ""
        if isinstance(obj, dict):
            hint = " (it looks like a state dict: export with a factory and --weights)"
        raise SourceError(f"{source.spec}: holds a {type(obj).__name__}, not a torch.nn.Module{hint}")
    return obj


def _load_program(source: Source) -> torch.export.ExportedProgram:
    import torch

    path = Path(source.spec)
    if not path.is_file():
        raise SourceError(f"{source.spec}: file not found")
    try:
        return torch.export.load(path)
    except Exception as e:
        raise SourceError(f"{source.spec}: not a torch.export program: {first_line(e)}") from e


def load(source: Source) -> torch.nn.Module | torch.export.ExportedProgram:
    """Load the model in eval mode (or the exported program as it was saved)."""
    if source.weights and source.kind != "factory":
        raise SourceError(f"--weights {source.weights}: only a factory source (module:factory) takes weights")
    if source.kind == "exported-program":
        return _load_program(source)
    model = _load_pickle(source) if source.kind == "pickle" else _load_factory(source)
    return model.eval()


def runnable(model: Any) -> Any:
    """A callable for parity: the module itself, or the exported program's module."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


@dataclass(frozen=True)
class Binding:
    """How named input tensors are passed to ``forward()``: by parameter name, never by position.

    ``positional`` are the names of positional-only parameters (passed in order), ``keyword`` the
    rest, in the order of ``forward()``'s parameters; ``order`` is the order the traced graph takes
    them in.
    """

    positional: tuple[str, ...]
    keyword: tuple[str, ...]

    @property
    def order(self) -> tuple[str, ...]:
        return self.positional + self.keyword

    def split(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for ``forward(*args, **kwargs)``."""
        return tuple(values[n] for n in self.positional), {n: values[n] for n in self.keyword}


def bind_inputs(model: Any, names: list[str]) -> Binding:
    """Bind ``--input`` names to the parameters of ``forward()`` by name (any order).

    A single input of a ``forward()`` with a single parameter binds to it whatever its name. Raises
    :class:`SourceError` naming the input when a name is not a parameter (the error lists
    the parameters), when a required parameter has no input, or when ``forward`` takes only
    ``*args`` (which has no names to bind to).
    """
    fn = runnable(model)
    try:
        params = list(inspect.signature(fn.forward if hasattr(fn, "forward") else fn).parameters.values())
    except (TypeError, ValueError):
        raise SourceError("cannot read the parameters of the model's forward()") from None
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(names) == 1 and len(named) == 1 and len(params) == 1:
        # One tensor for a forward(self, x) of one parameter: nothing can be swapped, so any name
        # binds (nn.Sequential's parameter is called ``input``).
        return Binding((names[0],), ())
    listing = ", ".join(p.name for p in named) or "none"
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    by_name = {p.name: p for p in named}
    for n in names:
        if n not in by_name and not any_keyword:
            star = " and *args, which cannot be bound by name" if len(named) < len(params) else ""
            raise SourceError(
                f"--input {n}: forward() has no parameter {n!r}; its parameters are {listing}{star}"
            )
    given = set(names)
    # A torch.export program's module takes the arguments it was exported with by position
    # (its input spec says how many), whatever its signature says.
    in_spec = getattr(fn, "_in_spec", None)
    by_position = in_spec.child(0).num_children if in_spec is not None else 0
    positional: list[str] = []
    for i, p in enumerate(named):
        if p.name in given:
            if p.kind is p.POSITIONAL_ONLY or i < by_position:
                if len(positional) != named.index(p):
                    raise SourceError(
                        f"--input {p.name}: forward() takes it by position after parameters with no --input "
                        f"({listing})"
                    )
                positional.append(p.name)
        elif p.default is p.empty:
            raise SourceError(
                f"forward() parameter {p.name!r} has no --input (its parameters are {listing}); "
                f"add --input {p.name}:DIMS:DTYPE"
            )
    keyword = [p.name for p in named if p.name in given and p.name not in positional]
    keyword += [n for n in names if n not in by_name]  # taken by **kwargs, in the order given
    return Binding(tuple(positional), tuple(keyword))


def call(model: Any, values: Mapping[str, Any]) -> Any:
    """Run the model on named tensors, each passed to the ``forward()`` parameter of its name."""
    fn = runnable(model)
    args, kwargs = bind_inputs(fn, list(values)).split(values)
    return fn(*args, **kwargs)
