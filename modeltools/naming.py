"""Names of a package's tensors, and a graph that carries nothing of the machine it was built on.

Output names come from what ``forward()`` returns, never from the graph's operators:

- a dict keeps its keys (``{"logits": a, "probs": b}`` -> ``logits``, ``probs``), a namedtuple (or
  any structure PyTorch flattens with names) its fields; nested names are joined with ``.``
  (``{"a": (x, y)}`` -> ``a.0``, ``a.1``);
- a tensor, tuple or list is ``output_0``, ``output_1``, ... in order.

``--output`` names bind to those keys when the structure has names (a set that differs from the
keys is an error, so an order cannot silently swap two outputs), and by position when it has none.

:func:`normalize` rewrites the saved graph so that its inputs and outputs carry exactly those names
(an internal value that already has one is renamed out of the way) and drops the exporter's
per-node metadata and doc strings (source file paths, stack traces, module names), so the same
module and weights give the same bytes wherever they are exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferstack.errors import InferstackError

#: The prefix of positional output names.
POSITIONAL = "output_"


class NamingError(InferstackError):
    """Output names that do not fit what the model returns."""


def _key_text(key: Any) -> str | None:
    """The name in one step of a pytree key path; None for a position in a sequence."""
    from torch.utils._pytree import GetAttrKey, MappingKey, SequenceKey

    if isinstance(key, MappingKey):
        return str(key.key)
    if isinstance(key, GetAttrKey):
        return str(key.name)
    if isinstance(key, SequenceKey):
        return None
    return str(getattr(key, "key", getattr(key, "name", key)))


def output_names(result: Any, chosen: list[str]) -> list[str]:
    """The names of the tensors in ``result`` (what forward returned), in the order PyTorch
    flattens them, which is the exported graph's order.

    ``chosen`` (``--output``) must name every output: when the structure has names it must be the
    same set (it then binds by name), otherwise one name per output in order. Raises
    :class:`NamingError` with the expected names.
    """
    import torch
    from torch.utils._pytree import SequenceKey, tree_flatten_with_path

    leaves = [(path, v) for path, v in tree_flatten_with_path(result)[0] if isinstance(v, torch.Tensor)]
    if not leaves:
        raise NamingError("the model returns no tensor")
    structured = any(_key_text(k) is not None for path, _ in leaves for k in path)
    if structured:
        names = [
            ".".join(str(k.idx) if isinstance(k, SequenceKey) else str(_key_text(k)) for k in path)
            if path
            else f"{POSITIONAL}{i}"
            for i, (path, _) in enumerate(leaves)
        ]
        if len(set(names)) != len(names):
            raise NamingError(f"the model's output names are not unique: {', '.join(names)}")
        if chosen and sorted(chosen) != sorted(names):
            raise NamingError(
                f"--output {', '.join(chosen)}: the model returns named outputs {', '.join(names)}; "
                "--output must name exactly those (they bind by name, in any order), or leave it out"
            )
        return names
    if chosen and len(chosen) != len(leaves):
        raise NamingError(f"--output names {len(chosen)} tensor(s), the model returns {len(leaves)}")
    return list(chosen) if chosen else [f"{POSITIONAL}{i}" for i in range(len(leaves))]


def _graphs(graph: Any) -> list[Any]:
    """The graph and every subgraph inside it (If/Loop/Scan bodies), depth first."""
    import onnx

    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found += _graphs(g)
    return found


def _strip(proto: Any) -> None:
    """Drop doc strings and metadata that name the build machine's files, modules and stacks."""
    proto.doc_string = ""
    del proto.metadata_props[:]
    for func in proto.functions:
        func.doc_string = ""
        del func.metadata_props[:]
        for node in func.node:
            node.doc_string = ""
            del node.metadata_props[:]
    for g in _graphs(proto.graph):
        g.doc_string = ""
        del g.metadata_props[:]
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
        for v in [*g.input, *g.output, *g.value_info]:
            v.doc_string = ""
            del v.metadata_props[:]
        for t in g.initializer:
            t.doc_string = ""
            del t.metadata_props[:]


def _all_names(proto: Any) -> set[str]:
    names: set[str] = set()
    for g in _graphs(proto.graph):
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _rename(proto: Any, old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` everywhere (graph names are global across subgraphs)."""
    for g in _graphs(proto.graph):
        for v in [*g.input, *g.output, *g.value_info, *g.initializer]:
            if v.name == old:
                v.name = new
        for node in g.node:
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new
            for i, n in enumerate(node.output):
                if n == old:
                    node.output[i] = new


def _free(taken: set[str], base: str) -> str:
    i = 1
    while f"{base}__{i}" in taken:
        i += 1
    return f"{base}__{i}"


def _set_names(proto: Any, inputs: list[str], outputs: list[str]) -> None:
    """Give the graph's inputs and outputs these names; an internal value that holds one of them
    is renamed out of the way (``tanh`` -> ``tanh__1``)."""
    from onnx import helper

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    if len(graph_inputs) != len(inputs) or len(graph.output) != len(outputs):
        raise NamingError(
            f"the exported graph has {len(graph_inputs)} input(s) and {len(graph.output)} output(s); "
            f"expected {len(inputs)} and {len(outputs)}"
        )
    taken = _all_names(proto) | set(inputs) | set(outputs)
    # An output that is an input, a weight or an output listed before (the same tensor returned
    # twice) gets a value of its own through an Identity node, so each name can be set alone.
    seen = {v.name for v in graph_inputs} | initializers
    for v in graph.output:
        if v.name in seen:
            fresh = _free(taken, v.name)
            taken.add(fresh)
            graph.node.append(helper.make_node("Identity", [v.name], [fresh], name=f"{fresh}_identity"))
            v.name = fresh
        seen.add(v.name)
    # Move ours to temporary names, then whatever still holds a wanted name, then take the names.
    moves = []
    for v, new in [*zip(graph_inputs, inputs, strict=True), *zip(graph.output, outputs, strict=True)]:
        tmp = _free(taken, "inferstack_tmp")
        taken.add(tmp)
        _rename(proto, v.name, tmp)
        moves.append((tmp, new))
    for name in sorted((set(inputs) | set(outputs)) & _all_names(proto)):
        fresh = _free(taken, name)
        taken.add(fresh)
        _rename(proto, name, fresh)
    for tmp, new in moves:
        _rename(proto, tmp, new)


def _set_dim_names(proto: Any, dims: dict[str, list[str | None]]) -> None:
    """Call each dynamic dimension of the inputs by its ``--input`` name, everywhere in the graph.

    The exporter names a dimension after its symbol, which for a ``torch.export`` program is
    ``s77`` rather than ``batch``; the runtime finds the batch axis by name.
    """
    mapping: dict[str, str] = {}
    for v in proto.graph.input:
        for d, name in zip(v.type.tensor_type.shape.dim, dims.get(v.name, []), strict=False):
            if name is None or not d.dim_param:
                continue
            if mapping.setdefault(d.dim_param, name) != name:
                raise NamingError(
                    f"--input {v.name}: dimensions {mapping[d.dim_param]!r} and {name!r} are one "
                    "dimension in the exported graph; give them one name"
                )
    if not mapping:
        return
    for g in _graphs(proto.graph):
        for v in [*g.input, *g.output, *g.value_info]:
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param in mapping:
                    d.dim_param = mapping[d.dim_param]


def normalize(
    model_path: Path, inputs: list[str], outputs: list[str], dims: dict[str, list[str | None]] | None = None
) -> None:
    """Name the saved graph's inputs and outputs (and, with ``dims``, the inputs' dynamic
    dimensions: input name -> a name per dimension, None for a fixed one), strip build-machine
    metadata, save in place.

    External weights stay where they are (the graph is read and written without them).
    """
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    _strip(proto)
    _set_names(proto, inputs, outputs)
    _set_dim_names(proto, dims or {})
    onnx.save(proto, str(model_path))
