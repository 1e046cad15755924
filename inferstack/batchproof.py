"""A static proof that merging requests along the batch axis cannot change an answer.

:func:`prove_row_independence` follows the batch axis through an ONNX graph, from the inputs
(whose first dimension is named ``batch_dim``) to the outputs, and proves that row ``i`` of every
output depends on row ``i`` of the inputs alone (and on constants). A finite merged-vs-alone run
(:mod:`inferstack.batchcheck`) cannot prove that: a model may mix rows only at a batch of 6, for
large values or by less than a tolerance. The proof is conservative: an operator or attribute it
does not understand, anything that reduces, sorts, scans, filters or gathers along the batch axis,
the batch size flowing into data, control flow or a random operator touching batched values
makes it fail, with a one-line reason naming the node (name, operator) and why.

Every value of the graph is classified as one of

* *constant*: computed from initializers, ``Constant`` nodes and non-batch dimensions only (the
  runtime merges only rows whose non-batch dimensions agree, so these are the same for every row
  of a merge); 1-D integer constants keep their symbolic elements (an ``int``, or ``K``: a
  non-batch dimension) for shape bookkeeping;
* *size*: a small integer value that depends on the batch size ``N`` (``Shape`` of a batched
  tensor and what is computed from it); it may only be used as the shape argument of ``Reshape``,
  ``Expand``, ``ConstantOfShape``, ``Tile`` or ``Slice`` in a way that keeps the batch axis;
* *rows*: a batched tensor whose batch axis is at a known position and whose slice ``i`` along it
  depends on input row ``i`` only. Reshapes may fold other axes into the batch axis (attention
  folds the heads in, ``N * heads``, and a linear layer may run on ``seq * N``): the batch axis
  then has ``outer * N * inner`` entries, row ``i`` owning index ``(a * N + i) * inner + j``. A
  reshape is followed when it keeps the products before and after the batch size (so every row
  stays where it was in the flat order, :meth:`_Prover._reshape_rows`), with symbolic
  dimensions (named non-batch dimensions, constants, and products of them); only row-wise
  operators may see a folded axis, and every output must have it unfolded and first.

Every graph output must be *rows* with the batch axis first. Ranks come from
``onnx.shape_inference.infer_shapes``. Only the ONNX default domain (and a few row-wise
onnxruntime contrib operators) is understood. Needs onnx, not onnxruntime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Proof", "prove_row_independence"]

#: a symbolic element of a shape value: an int, "N" (the batch size), "d:<name>" (a named
#: non-batch dimension), a product ``(coefficient, (symbol, ...))`` of those, "K" (an unknown
#: non-batch quantity, the same for all rows of a merge) or "X" (derived from N, not a product)
Sym = int | str | tuple[int, tuple[str, ...]]
Mono = tuple[int, tuple[str, ...]]


def _mono(e: Sym) -> Mono | None:
    if isinstance(e, int):
        return (e, ())
    if isinstance(e, tuple):
        return e
    if e == "N" or e.startswith("d:"):
        return (1, (e,))
    return None


def _unmono(m: Mono) -> Sym:
    coef, syms = m
    if not syms:
        return coef
    if coef == 1 and len(syms) == 1:
        return syms[0]
    return (coef, tuple(sorted(syms)))


def _mul(*ms: Mono) -> Mono:
    coef, syms = 1, list[str]()
    for c, s in ms:
        coef *= c
        syms += s
    return (coef, tuple(sorted(syms)))


def _div(a: Mono, b: Mono) -> Mono | None:
    if b[0] == 0 or a[0] % b[0]:
        return None
    rest = list(a[1])
    for s in b[1]:
        if s not in rest:
            return None
        rest.remove(s)
    return (a[0] // b[0], tuple(rest))


def _has_n(e: Sym) -> bool:
    return e in ("N", "X") or (isinstance(e, tuple) and "N" in e[1])

_UNARY = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike",
    "Ceil", "Celu", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish",
    "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu",
    "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu", "Clip", "Dropout",
    # onnxruntime contrib (row-wise, elementwise)
    "FastGelu", "BiasGelu", "QuickGelu",
}
_NARY = {
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow",
    "PRelu", "Sub", "Sum", "Where", "Xor", "QuantizeLinear", "DequantizeLinear",
}
_REDUCE = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
}
_SPATIAL = {  # X: (N, C, ...) with constant weights: each image alone
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "LpPool", "GlobalLpPool", "InstanceNormalization", "LRN", "BatchNormalization",
    "SpaceToDepth", "DepthToSpace",
}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
           "Bernoulli"}
_CONTRIB = {"FastGelu", "BiasGelu", "QuickGelu", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization",
            "Gelu"}
_BIG = 2**62
#: operators that may see a batch axis with other axes folded into it (the heads of attention)
_FOLDED_OK = _UNARY | _NARY | _REDUCE | {
    "MatMul", "FusedMatMul", "Gemm", "Softmax", "LogSoftmax", "Transpose", "Reshape", "Unsqueeze",
    "Squeeze", "Gather", "Concat", "Split", "LayerNormalization", "TopK", "CumSum"}


@dataclass
class Proof:
    """``proven``: every output row depends on its input row alone; ``reason``: one line, the
    node and why when not proven, what was proven otherwise."""

    proven: bool
    reason: str


class _NotProven(Exception):
    pass


@dataclass
class _Const:
    sym: list[Sym] | None = None  # elements of a small 1-D/scalar integer constant
    scalar: bool = False


@dataclass
class _Size:
    sym: list[Sym]
    scalar: bool = False


@dataclass
class _Rows:
    axis: int
    rank: int
    #: the batch axis has N * inner entries, row i the block [i * inner, (i + 1) * inner)
    #: (attention folds the heads into the batch axis this way)
    inner: Sym = 1
    #: and the batch axis is that block repeated ``outer`` times (strided): N * inner * outer
    outer: Sym = 1


def _size(sym: list[Sym], scalar: bool) -> _Const | _Size:
    """A shape value: a constant unless an element depends on the batch size."""
    if any(_has_n(v) for v in sym):
        return _Size(sym, scalar)
    return _Const(sym, scalar)


_State = _Const | _Size | _Rows


def _sym_op(a: Sym, b: Sym, op: str) -> Sym:
    ma, mb = _mono(a), _mono(b)
    if op == "Mul" and ma is not None and mb is not None:
        return _unmono(_mul(ma, mb))
    if op == "Div" and ma is not None and mb is not None and (ma[1] or mb[1]):
        q = _div(ma, mb)
        if q is not None:
            return _unmono(q)
    if isinstance(a, int) and isinstance(b, int):
        try:
            if op == "Add":
                return a + b
            if op == "Sub":
                return a - b
            if op == "Mul":
                return a * b
            if op == "Div" and b:
                return a // b
            if op == "Max":
                return max(a, b)
            if op == "Min":
                return min(a, b)
        except Exception:  # noqa: BLE001 - symbolic only
            pass
        return "K"
    if _has_n(a) or _has_n(b):
        return "X"
    return "K"


class _Prover:
    def __init__(self, model: Any, batch_dim: str) -> None:
        from onnx import numpy_helper

        self.np = numpy_helper
        self.batch_dim = batch_dim
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.state: dict[str, _State] = {}
        self.inner: Sym = 1
        self.outer: Sym = 1
        #: dimensions the proof computed itself (a reshape's new shape; shape inference may
        #: only know them as unk__ names), as symbolic elements
        self.dims: dict[str, list[Sym]] = {}
        self.shapes: dict[str, list[int | str | None] | None] = {}
        self.values: dict[str, Any] = {}  # constant arrays (initializers, Constant nodes)
        g = model.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            self.shapes[vi.name] = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                     for d in t.shape.dim] if t.HasField("shape") else None)
        for init in g.initializer:
            self.shapes[init.name] = [int(d) for d in init.dims]
            self.state[init.name] = _Const()
            if init.data_location != init.EXTERNAL:  # external weights are not read: no symbols
                arr = numpy_helper.to_array(init)
                self.values[init.name] = arr
                self.state[init.name] = _Const(*self._sym_of(arr))

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _sym_of(arr: Any) -> tuple[list[Sym] | None, bool]:
        if arr.dtype.kind in "iu" and arr.ndim <= 1 and arr.size <= 64:
            return [int(v) for v in arr.reshape(-1)], arr.ndim == 0
        return None, False

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def const_ints(self, name: str, node: Any, what: str) -> list[int]:
        st = self.state.get(name)
        if isinstance(st, _Const) and st.sym is not None and all(isinstance(v, int) for v in st.sym):
            return [v for v in st.sym if isinstance(v, int)]
        raise self.fail(node, f"its {what} is not a known constant")

    def fail(self, node: Any, why: str) -> _NotProven:
        label = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
        return _NotProven(f"{label}: {why}")

    @staticmethod
    def attr(node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def out_rank(self, node: Any, i: int = 0) -> int:
        r = self.rank(node.output[i])
        if r is None:
            raise self.fail(node, "the rank of its output is unknown")
        return r

    # -- the walk ----------------------------------------------------------------------
    def run(self) -> Proof:
        g = self.model.graph
        inits = set(self.values)
        for vi in g.input:
            if vi.name in inits:
                continue
            dims = self.shapes.get(vi.name) or []
            if not dims or dims[0] != self.batch_dim:
                return Proof(False, f"input {vi.name!r} does not have {self.batch_dim!r} as its "
                                    "first dimension")
            self.state[vi.name] = _Rows(0, len(dims))
        try:
            for node in g.node:
                self.visit(node)
        except _NotProven as e:
            return Proof(False, str(e))
        for vo in g.output:
            st = self.state.get(vo.name)
            if not isinstance(st, _Rows) or st.axis != 0 or st.inner != 1 or st.outer != 1:
                what = ("a value that does not follow the batch" if not isinstance(st, _Rows)
                        else f"the batch axis at position {st.axis}")
                return Proof(False, f"output {vo.name!r} is {what}, not rows along its first axis")
        return Proof(True, f"every output row depends on its input row alone ({len(g.node)} nodes "
                           f"followed along {self.batch_dim!r})")

    def visit(self, node: Any) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") and not (node.domain == "com.microsoft" and op in _CONTRIB):
            raise self.fail(node, f"operator domain {node.domain!r} is not understood")
        ins = [self.state.get(n) if n else None for n in node.input]
        present = [s for n, s in zip(node.input, ins, strict=True) if n]
        if any(s is None for s in present):
            missing = next(n for n, s in zip(node.input, ins, strict=True) if n and s is None)
            raise self.fail(node, f"its input {missing!r} is not produced by the graph")
        batched = any(isinstance(s, _Rows) for s in present)
        sized = any(isinstance(s, _Size) for s in present)
        if op in ("If", "Loop", "Scan"):
            used = self._subgraph_inputs(node)
            if batched or sized or any(isinstance(self.state.get(n), (_Rows, _Size)) for n in used):
                raise self.fail(node, "control flow over batched values")
            for o in node.output:
                self.state[o] = _Const()
            return
        if op in _RANDOM:
            raise self.fail(node, "a random operator")
        if op == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = self.values.get(node.input[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                raise self.fail(node, "dropout in training mode is random")
        if op == "Constant":
            arr = self._constant_value(node)
            self.values[node.output[0]] = arr
            self.shapes[node.output[0]] = list(arr.shape)
            self.state[node.output[0]] = _Const(*self._sym_of(arr))
            return
        if not batched and not sized:  # constants in, constants out
            self._constant_node(node)
            return
        folds = {repr((s.inner, s.outer)): (s.inner, s.outer) for s in present if isinstance(s, _Rows)}
        if len(folds) > 1:
            raise self.fail(node, "its inputs fold other axes into the batch axis differently")
        self.inner, self.outer = next(iter(folds.values()), (1, 1))
        if (self.inner != 1 or self.outer != 1) and op not in _FOLDED_OK:
            raise self.fail(node, "other axes are folded into the batch axis here")
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            handler(node, ins)
        elif op in _UNARY or op in _NARY:
            self.elementwise(node, ins)
        elif op in _REDUCE or op in ("ArgMax", "ArgMin"):
            self.reduce(node, ins)
        elif op in _SPATIAL:
            self.spatial(node, ins)
        else:
            raise self.fail(node, "operator not understood by the proof")

    def _subgraph_inputs(self, node: Any) -> set[str]:
        names: set[str] = set()
        for a in node.attribute:
            graphs = [a.g] if a.HasField("g") else list(a.graphs)
            for sub in graphs:
                for n in sub.node:
                    names.update(n.input)
                    for a2 in n.attribute:
                        if a2.HasField("g") or len(a2.graphs):
                            names |= self._subgraph_inputs(n)
        return names

    def _constant_value(self, node: Any) -> Any:
        import numpy as np

        for a in node.attribute:
            if a.name == "value":
                return self.np.to_array(a.t)
            if a.name in ("value_int", "value_float"):
                return np.asarray(a.i if a.name == "value_int" else a.f)
            if a.name in ("value_ints", "value_floats"):
                return np.asarray(list(a.ints) if a.name == "value_ints" else list(a.floats))
        raise self.fail(node, "a constant of a kind the proof does not read")

    def _constant_node(self, node: Any) -> None:
        op = node.op_type
        sym: list[Sym] | None = None
        scalar = False
        if op == "Shape":
            sym = self._shape_sym(node, self.shapes.get(node.input[0]), None)
        elif op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice") or op in _NARY:
            size = self._size_node(node, allow_const=True)
            if size is not None:
                sym, scalar = size.sym, size.scalar
        for o in node.output:
            self.state[o] = _Const()
        if sym is not None:
            self.state[node.output[0]] = _Const(sym, scalar)

    def _shape_sym(self, node: Any, dims: list[int | str | None] | None, batch_axis: int | None) -> list[Sym]:
        if dims is None:
            raise self.fail(node, "the rank of its input is unknown")
        sym: list[Sym] = ["N" if i == batch_axis else d if isinstance(d, int)
                          else f"d:{d}" if d else "K" for i, d in enumerate(dims)]
        start = int(self.attr(node, "start", 0))
        end = self.attr(node, "end", None)
        return sym[start:] if end is None else sym[start:int(end)]

    def _sym(self, name: str) -> tuple[list[Sym], bool] | None:
        st = self.state.get(name)
        if isinstance(st, _Size):
            return st.sym, st.scalar
        if isinstance(st, _Const) and st.sym is not None:
            return st.sym, st.scalar
        return None

    def _size_node(self, node: Any, allow_const: bool = False) -> _Size | None:
        """Shape arithmetic on small integer values (symbolic elements); None when not that."""
        op = node.op_type
        args = [self._sym(n) if n else None for n in node.input]
        if not args or args[0] is None:
            return None
        sym, scalar = args[0]
        if op in ("Cast", "Identity"):
            return _Size(list(sym), scalar)
        if op == "Unsqueeze" and scalar:
            return _Size(list(sym), False)
        if op == "Squeeze" and not scalar and len(sym) == 1:
            return _Size(list(sym), True)
        if op == "Concat":
            if any(a is None for a in args):
                return None
            out: list[Sym] = []
            for a in args:
                assert a is not None
                out += a[0]
            return _Size(out, False)
        if op == "Gather" and len(args) == 2 and args[1] is not None and not scalar:
            idx, idx_scalar = args[1]
            if not all(isinstance(i, int) for i in idx):
                return None
            try:
                return _Size([sym[i] for i in idx if isinstance(i, int)], idx_scalar)
            except IndexError:
                return None
        if op == "Slice" and not scalar and all(a is not None for a in args[1:3]):
            starts, ends = args[1][0], args[2][0]  # type: ignore[index]
            steps = args[4][0] if len(args) > 4 and args[4] is not None else [1]
            plain = all(isinstance(v, int) for v in (*starts, *ends, *steps))
            lo, hi, step = starts[0], ends[0], steps[0]
            if len(starts) == 1 and len(ends) == 1 and plain and isinstance(lo, int) \
                    and isinstance(hi, int) and isinstance(step, int):
                return _Size(sym[lo:hi:step], False)
            return None
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(args) == 2 and args[1] is not None:
            lhs, rhs = sym, args[1][0]
            if len(lhs) == len(rhs) or len(lhs) == 1 or len(rhs) == 1:
                n = max(len(lhs), len(rhs))
                return _Size([_sym_op(lhs[i if len(lhs) > 1 else 0], rhs[i if len(rhs) > 1 else 0], op)
                              for i in range(n)], scalar and args[1][1])
        return None

    def _size_output(
        self, node: Any, why: str = "the batch size flows into a value the proof cannot follow"
    ) -> None:
        """``node`` computes on the batch size, not on rows: its output is that size (``_size_node``);
        ``self.fail(node, why)`` when the proof cannot follow the arithmetic."""
        size = self._size_node(node)
        if size is None:
            raise self.fail(node, why)
        self.state[node.output[0]] = _size(size.sym, size.scalar)

    def set_rows(self, node: Any, axis: int, outputs: int | None = None,
                 fold: tuple[Sym, Sym] | None = None) -> None:
        inner, outer = fold if fold is not None else (self.inner, self.outer)
        for i, o in enumerate(node.output[:outputs] if outputs else node.output):
            if o:
                self.state[o] = _Rows(axis, self.out_rank(node, i), inner, outer)

    # -- operator families -------------------------------------------------------------
    def elementwise(self, node: Any, ins: list[_State | None]) -> None:
        if not any(isinstance(s, _Rows) for s in ins):  # size arithmetic
            self._size_output(node)
            return
        if any(isinstance(s, _Size) for s in ins):
            raise self.fail(node, "the batch size flows into data")
        out = self.out_rank(node)
        axes = set()
        for s in ins:
            if isinstance(s, _Rows):
                axes.add(s.axis + out - s.rank)
        if len(axes) != 1:
            raise self.fail(node, "its inputs have the batch axis at different positions")
        axis = axes.pop()
        for n, s in zip(node.input, ins, strict=True):
            if n and isinstance(s, _Const):
                shape = self.shapes.get(n)
                if shape is None:
                    raise self.fail(node, f"the shape of its constant input {n!r} is unknown")
                pos = axis - (out - len(shape))
                if 0 <= pos < len(shape) and shape[pos] != 1:
                    raise self.fail(node, f"its constant input {n!r} does not broadcast along the batch axis")
        self.set_rows(node, axis)

    def reduce(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            raise self.fail(node, "the batch size flows into a reduction")
        if any(isinstance(s, _Size) for s in ins[1:]):
            raise self.fail(node, "the batch size flows into its axes")
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(self.attr(node, "axis", 0))]
        else:
            axes_attr = self.attr(node, "axes", None)
            if axes_attr is not None:
                axes = [int(a) for a in axes_attr]
            elif len(node.input) > 1 and node.input[1]:
                axes = self.const_ints(node.input[1], node, "axes")
            else:
                axes = []
            if not axes:
                if self.attr(node, "noop_with_empty_axes", 0):
                    self.set_rows(node, x.axis)
                    return
                raise self.fail(node, "a reduction over every axis, the batch axis included")
        axes = [a % x.rank for a in axes]
        if x.axis in axes:
            raise self.fail(node, "a reduction over the batch axis")
        keep = self.attr(node, "keepdims", 1)
        axis = x.axis if keep else x.axis - sum(1 for a in axes if a < x.axis)
        self.set_rows(node, axis)

    def spatial(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows) or x.axis != 0 or any(not isinstance(s, _Const) for s in ins[1:] if s):
            raise self.fail(node, "needs the batch axis first and constant weights")
        if node.op_type == "BatchNormalization" and self.attr(node, "training_mode", 0):
            raise self.fail(node, "batch statistics (training mode) mix rows")
        self.set_rows(node, 0, 1 if node.op_type in ("BatchNormalization", "MaxPool") else None)
        for o in node.output[1:]:
            if o:
                raise self.fail(node, "an extra output the proof does not follow")

    def _last_axis_norm(self, node: Any, ins: list[_State | None], first: int) -> None:
        x = ins[0]
        assert isinstance(x, _Rows)
        if x.axis >= first % x.rank:
            raise self.fail(node, "a normalization over the batch axis")
        for s in ins[1:]:
            if isinstance(s, _Size):
                raise self.fail(node, "the batch size flows into data")
        self.set_rows(node, x.axis)

    def op_LayerNormalization(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows) or any(not isinstance(s, _Const) for s in ins[1:] if s):
            raise self.fail(node, "needs batched data and constant scale and bias")
        self._last_axis_norm(node, ins, int(self.attr(node, "axis", -1)))

    def op_SimplifiedLayerNormalization(self, node: Any, ins: list[_State | None]) -> None:
        self.op_LayerNormalization(node, ins)

    def op_SkipLayerNormalization(self, node: Any, ins: list[_State | None]) -> None:
        x, skip = ins[0], ins[1]
        if not (isinstance(x, _Rows) and isinstance(skip, _Rows) and x == skip) \
                or any(not isinstance(s, _Const) for s in ins[2:] if s):
            raise self.fail(node, "needs two batched inputs of one layout and constant weights")
        self._last_axis_norm(node, [x], -1)

    op_SkipSimplifiedLayerNormalization = op_SkipLayerNormalization

    def _softmax(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            raise self.fail(node, "the batch size flows into data")
        axis = int(self.attr(node, "axis", -1 if self.opset >= 13 else 1)) % x.rank
        if (self.opset >= 13 and axis == x.axis) or (self.opset < 13 and x.axis >= axis):
            raise self.fail(node, "normalizes over the batch axis")
        self.set_rows(node, x.axis)

    op_Softmax = op_LogSoftmax = op_Hardmax = _softmax

    def op_CumSum(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            raise self.fail(node, "the batch size flows into data")
        (axis,) = self.const_ints(node.input[1], node, "axis")
        if axis % x.rank == x.axis:
            raise self.fail(node, "a cumulative sum over the batch axis")
        self.set_rows(node, x.axis)

    def op_TopK(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if isinstance(x, _Rows) and int(self.attr(node, "axis", -1)) % x.rank == x.axis:
            raise self.fail(node, "sorts along the batch axis")
        if not isinstance(x, _Rows) or not isinstance(ins[1], _Const):
            raise self.fail(node, "the batch size flows into its k")
        self.set_rows(node, x.axis)

    def op_MatMul(self, node: Any, ins: list[_State | None]) -> None:
        a, b = ins[0], ins[1]
        if isinstance(a, _Size) or isinstance(b, _Size):
            raise self.fail(node, "the batch size flows into data")
        ra = a.rank if isinstance(a, _Rows) else self.rank(node.input[0])
        rb = b.rank if isinstance(b, _Rows) else self.rank(node.input[1])
        if ra is None or rb is None or ra < 2 or rb < 2:
            raise self.fail(node, "a matrix product of vectors or of unknown rank")
        out = self.out_rank(node)
        axes = set()
        if isinstance(a, _Rows):
            if a.axis == ra - 1:
                raise self.fail(node, "contracts the batch axis")
            axes.add(a.axis + out - ra)
        if isinstance(b, _Rows):
            if b.axis == rb - 2:
                raise self.fail(node, "contracts the batch axis")
            if b.axis == rb - 1 and isinstance(a, _Rows):
                raise self.fail(node, "the batch axis of one factor meets another axis of the other")
            axes.add(b.axis + out - rb)
        for n, s, r in ((node.input[0], a, ra), (node.input[1], b, rb)):
            if isinstance(s, _Const) and axes:
                pos = next(iter(axes)) - (out - r)
                shape = self.shapes.get(n)
                if 0 <= pos < r - 2 and (shape is None or shape[pos] != 1):
                    raise self.fail(node, f"its constant input {n!r} does not broadcast along the batch axis")
        if len(axes) != 1:
            raise self.fail(node, "its inputs have the batch axis at different positions")
        self.set_rows(node, axes.pop())

    def op_FusedMatMul(self, node: Any, ins: list[_State | None]) -> None:
        if any(self.attr(node, a, 0) for a in ("transA", "transB", "transBatchA", "transBatchB")):
            raise self.fail(node, "a transposed product the proof does not follow")
        self.op_MatMul(node, ins)

    def op_Gemm(self, node: Any, ins: list[_State | None]) -> None:
        a = ins[0]
        trans_a = int(self.attr(node, "transA", 0))
        if not isinstance(a, _Rows) or a.axis != (1 if trans_a else 0) \
                or any(not isinstance(s, _Const) for s in ins[1:] if s):
            raise self.fail(node, "needs batched rows of A and constant B and C")
        if len(node.input) > 2 and node.input[2]:
            shape = self.shapes.get(node.input[2])
            if shape is None or (len(shape) == 2 and shape[0] != 1):
                raise self.fail(node, "its bias C does not broadcast along the batch axis")
        self.set_rows(node, 0)

    def op_Transpose(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            raise self.fail(node, "the batch size flows into data")
        perm = self.attr(node, "perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(x.rank)))
        known = self.dims.get(node.input[0])
        if known is not None and len(known) == len(perm):
            self.dims[node.output[0]] = [known[p] for p in perm]
        self.set_rows(node, perm.index(x.axis))

    def _axes(self, node: Any, what: str = "axes") -> list[int] | None:
        attr = self.attr(node, "axes", None)
        if attr is not None:
            return [int(a) for a in attr]
        if len(node.input) > 1 and node.input[1]:
            return self.const_ints(node.input[1], node, what)
        return None

    def op_Unsqueeze(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            self._size_output(node)
            return
        out = self.out_rank(node)
        axes = sorted(a % out for a in (self._axes(node) or []))
        axis = x.axis
        for a in axes:
            if a <= axis:
                axis += 1
        self.set_rows(node, axis)

    def op_Squeeze(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            self._size_output(node)
            return
        axes = self._axes(node)
        if axes is None:
            raise self.fail(node, "squeezes every axis of size 1, the batch axis of one row included")
        axes = [a % x.rank for a in axes]
        if x.axis in axes:
            raise self.fail(node, "removes the batch axis")
        self.set_rows(node, x.axis - sum(1 for a in axes if a < x.axis))

    def op_Flatten(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        axis = int(self.attr(node, "axis", 1)) % max(x.rank, 1) if isinstance(x, _Rows) else 0
        if not isinstance(x, _Rows) or x.axis != 0 or axis < 1:
            raise self.fail(node, "moves or merges the batch axis")
        self.set_rows(node, 0)

    def op_Reshape(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        shape = self._sym(node.input[1])
        if isinstance(x, _Size) and isinstance(ins[1], _Const) and shape is not None \
                and len(shape[0]) <= 1 and len(x.sym) == 1:  # a size as a scalar or a 1-vector
            self.state[node.output[0]] = _size(list(x.sym), not shape[0])
            return
        if not isinstance(x, _Rows) or shape is None:
            raise self.fail(node, "a reshape the proof cannot follow (data not batched or shape unknown)")
        sym = list(shape[0])
        if x.axis == 0 and x.inner == 1 and x.outer == 1 and sym and (
                sym[0] == "N" or (sym[0] == 0 and not self.attr(node, "allowzero", 0))) \
                and not any(_has_n(v) for v in sym[1:]):
            self.set_rows(node, 0)  # the batch size stays first: rows keep their blocks
            return
        axis, fold = self._reshape_rows(node, x, sym)
        self.set_rows(node, axis, fold=fold)

    def _reshape_rows(self, node: Any, x: _Rows, sym: list[Sym]) -> tuple[int, tuple[Sym, Sym]]:
        """Where the rows of a reshape go: the new batch axis and what is folded into it. Row
        ``i`` is a contiguous block of the input; it stays one when the dimensions before the
        batch axis keep their product and the rest (with what is folded in) keep theirs."""
        dims: list[Any] | None = self.dims.get(node.input[0]) or self.shapes.get(node.input[0])
        why = "the new shape does not keep each row a block of its own along one axis"
        if dims is None or len(dims) != x.rank:
            raise self.fail(node, why)
        inner, outer = _mono(x.inner), _mono(x.outer)
        if inner is None or outer is None:
            raise self.fail(node, why)
        ins: list[Mono] = []
        for i, d in enumerate(dims):
            m = _mul((1, ("N",)), inner, outer) if i == x.axis else \
                _mono(d) if isinstance(d, (int, tuple)) or (isinstance(d, str) and d.startswith("d:")) \
                else _mono(f"d:{d}") if d else None
            if m is None:
                raise self.fail(node, why)
            ins.append(m)
        outs: list[Mono | None] = []
        for i, v in enumerate(sym):
            if v == 0 and not self.attr(node, "allowzero", 0):
                if i >= len(ins):
                    raise self.fail(node, why)
                outs.append(ins[i])
            elif v == -1:
                outs.append(None)
            else:
                m = _mono(v)
                if m is None or (isinstance(v, int) and v < 0):
                    raise self.fail(node, why)
                outs.append(m)
        if outs.count(None) > 1:
            raise self.fail(node, why)
        if None in outs:
            known = [m for m in outs if m is not None]
            rest = _div(_mul(*ins), _mul(*known)) if known else _mul(*ins)
            if rest is None:
                raise self.fail(node, why)
            outs[outs.index(None)] = rest
        full = [m for m in outs if m is not None]
        with_n = [i for i, m in enumerate(full) if "N" in m[1]]
        if len(with_n) != 1 or full[with_n[0]][1].count("N") != 1:
            raise self.fail(node, why)
        b = with_n[0]
        folded = _div(full[b], (1, ("N",)))
        assert folded is not None
        # the flat index is (A * N + i) * M + r with A < before * outer and M = inner * after:
        # row i stays row i when both products are kept, whatever the axes around it
        new_outer = _div(_mul(outer, *ins[:x.axis]), _mul(*full[:b]))
        new_inner = _div(folded, new_outer) if new_outer is not None else None
        if new_outer is None or new_inner is None \
                or _mul(new_inner, *full[b + 1:]) != _mul(inner, *ins[x.axis + 1:]):
            raise self.fail(node, why)
        self.dims[node.output[0]] = [_unmono(m) for m in full]
        return b, (_unmono(new_inner), _unmono(new_outer))

    def _keeps_batch(self, node: Any, sym: list[Sym], axis: int) -> bool:
        return all(not _has_n(v) for i, v in enumerate(sym) if i != axis)

    def op_Expand(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        shape = self._sym(node.input[1])
        if isinstance(x, _Size) or shape is None:
            raise self.fail(node, "the batch size flows into data, or its shape is unknown")
        out = self.out_rank(node)
        sym = [1] * (out - len(shape[0])) + list(shape[0])
        if isinstance(x, _Rows):
            axis = x.axis + out - x.rank
            if sym[axis] not in ("N", 1) or not self._keeps_batch(node, sym, axis):
                raise self.fail(node, "expands the batch axis or by the batch size elsewhere")
            self.set_rows(node, axis)
            return
        # constant data repeated once per row: every row is the same constant
        positions = [i for i, v in enumerate(sym) if _has_n(v)]
        dshape = self.shapes.get(node.input[0])
        if len(positions) != 1 or sym[positions[0]] != "N" or dshape is None:
            raise self.fail(node, "expands by a value derived from the batch size")
        pos = positions[0] - (out - len(dshape))
        if 0 <= pos < len(dshape) and dshape[pos] != 1:
            raise self.fail(node, "expands constant data that is not 1 along the batch axis")
        self.set_rows(node, positions[0])

    def op_ConstantOfShape(self, node: Any, ins: list[_State | None]) -> None:
        shape = self._sym(node.input[0])
        if shape is None:
            raise self.fail(node, "its shape is unknown")
        positions = [i for i, v in enumerate(shape[0]) if _has_n(v)]
        if len(positions) != 1 or shape[0][positions[0]] != "N":
            raise self.fail(node, "a shape derived from the batch size")
        self.set_rows(node, positions[0])

    def op_Tile(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        reps = self._sym(node.input[1])
        if not isinstance(x, _Rows) or reps is None or reps[0][x.axis] != 1 \
                or not self._keeps_batch(node, reps[0], -1):
            raise self.fail(node, "repeats along the batch axis or by the batch size")
        self.set_rows(node, x.axis)

    def op_Slice(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            self._size_output(node)
            return
        starts = self._sym(node.input[1])
        ends = self._sym(node.input[2])
        if starts is None or ends is None:
            raise self.fail(node, "its starts or ends are unknown")
        n = len(starts[0])
        axes = (self.const_ints(node.input[3], node, "axes") if len(node.input) > 3 and node.input[3]
                else list(range(n)))
        steps = (self.const_ints(node.input[4], node, "steps") if len(node.input) > 4 and node.input[4]
                 else [1] * n)
        for a, s, e, st in zip(axes, starts[0], ends[0], steps, strict=True):
            if a % x.rank == x.axis:
                full = s == 0 and st == 1 and (e == "N" or (isinstance(e, int) and e >= _BIG))
                if not full:
                    raise self.fail(node, "slices the batch axis")
            elif any(_has_n(v) for v in (s, e)):
                raise self.fail(node, "slices by the batch size")
        self.set_rows(node, x.axis)

    def op_Gather(self, node: Any, ins: list[_State | None]) -> None:
        data, idx = ins[0], ins[1]
        axis = int(self.attr(node, "axis", 0))
        if isinstance(data, _Rows) and isinstance(idx, _Const):
            r_idx = self.rank(node.input[1])
            if r_idx is None:
                raise self.fail(node, "the rank of its indices is unknown")
            axis %= data.rank
            if axis == data.axis:
                raise self.fail(node, "gathers along the batch axis")
            self.set_rows(node, data.axis if data.axis < axis else data.axis + r_idx - 1)
            return
        if isinstance(data, _Const) and isinstance(idx, _Rows):
            r_data = self.rank(node.input[0])
            if r_data is None:
                raise self.fail(node, "the rank of its data is unknown")
            self.set_rows(node, axis % r_data + idx.axis)
            return
        if isinstance(data, _Rows) or isinstance(idx, _Rows):
            raise self.fail(node, "gathers with batched or batch-sized indices")
        self._size_output(node, "gathers with batched or batch-sized indices")

    def op_Concat(self, node: Any, ins: list[_State | None]) -> None:
        if not any(isinstance(s, _Rows) for s in ins):
            self._size_output(node)
            return
        if not all(isinstance(s, _Rows) for s in ins):
            raise self.fail(node, "concatenates batched with unbatched values")
        axes = {s.axis for s in ins if isinstance(s, _Rows)}
        out = self.out_rank(node)
        if len(axes) != 1 or int(self.attr(node, "axis", 0)) % out in axes:
            raise self.fail(node, "concatenates along the batch axis")
        self.set_rows(node, axes.pop())

    def op_Split(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows) or any(isinstance(s, _Size) for s in ins[1:]):
            raise self.fail(node, "splits by the batch size")
        if int(self.attr(node, "axis", 0)) % x.rank == x.axis:
            raise self.fail(node, "splits along the batch axis")
        self.set_rows(node, x.axis)

    def op_Shape(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows):
            raise self.fail(node, "the shape of a value derived from the batch size")
        sym = self._shape_sym(node, self.shapes.get(node.input[0]), x.axis)
        self.state[node.output[0]] = _size(sym, False)

    def op_Size(self, node: Any, ins: list[_State | None]) -> None:
        self.state[node.output[0]] = _Size(["X"], True)

    def op_Pad(self, node: Any, ins: list[_State | None]) -> None:
        x = ins[0]
        if not isinstance(x, _Rows) or any(isinstance(s, (_Size, _Rows)) for s in ins[1:]):
            raise self.fail(node, "pads by batched values")
        pads = (self.const_ints(node.input[1], node, "pads") if len(node.input) > 1
                else list(self.attr(node, "pads", [])))
        axes = (self.const_ints(node.input[3], node, "axes") if len(node.input) > 3 and node.input[3]
                else list(range(x.rank)))
        k = len(axes)
        for i, a in enumerate(axes):
            if a % x.rank == x.axis and (pads[i] != 0 or pads[i + k] != 0):
                raise self.fail(node, "pads the batch axis")
        if self.attr(node, "mode", b"constant") not in (b"constant", "constant"):
            raise self.fail(node, "a padding mode the proof does not follow")
        self.set_rows(node, x.axis)


def prove_row_independence(model: str | os.PathLike[str] | Any, batch_dim: str = "batch") -> Proof:
    """Prove (or fail to prove) that every output row of the ONNX model (a path or a
    ``ModelProto``) depends on its own input row alone, along the dimension named ``batch_dim``
    (the first of every input). Never raises for a graph it cannot follow: the proof fails with a
    one-line reason naming the node and why."""
    import onnx

    try:
        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(str(Path(model)), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - a graph the proof cannot read is not proven
        text = str(e).strip().splitlines()
        return Proof(False, f"shape inference failed: {type(e).__name__}: {text[0] if text else ''}"[:300])
    try:
        return _Prover(inferred, batch_dim).run()
    except _NotProven as e:
        return Proof(False, str(e))
    except Exception as e:  # noqa: BLE001 - a bug or a malformed graph: not proven
        return Proof(False, f"the proof cannot follow the graph: {type(e).__name__}: {e}"[:300])
