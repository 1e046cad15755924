"""The ``--input NAME:DIMS:DTYPE`` parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from inferstack.modeltools.spec import SpecError, parse_input, parse_inputs, random_arrays

from inferstack import datatypes

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
fixed = st.integers(min_value=1, max_value=4096)
dtypes = st.sampled_from([d for d in datatypes.V2_NAMES if d != "BYTES"])


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, list[int | str], str]:
    name = draw(names)
    dim_names = draw(st.lists(names, max_size=4, unique=True))
    dims: list[int | str] = draw(st.lists(fixed, max_size=4))
    for n in dim_names:
        dims.insert(draw(st.integers(0, len(dims))), n)
    return name, dims, draw(dtypes)


@given(specs())
def test_any_valid_spec_parses_to_its_parts_and_prints_back(case: tuple[str, list[int | str], str]) -> None:
    name, dims, dtype = case
    text = f"{name}:{','.join(str(d) for d in dims)}:{dtype}"
    spec = parse_input(text)
    assert spec.name == name
    assert spec.datatype == dtype
    assert [d.size if not d.dynamic else d.name for d in spec.dims] == dims
    assert str(spec) == text
    assert parse_input(str(spec)) == spec
    for i, d in enumerate(spec.dims):
        # a dynamic first dimension is exported with batch 2, never 1 (the exporter would specialise it)
        assert d.example == (d.size if not d.dynamic else (2 if i == 0 else 8))


@given(st.sampled_from(["float32", "FP32", "fp32", "float"]), st.sampled_from(["int64", "INT64"]))
def test_numpy_and_v2_spellings_are_the_same_datatype(f: str, i: str) -> None:
    assert parse_input(f"x:batch,3:{f}").datatype == "FP32"
    assert parse_input(f"ids:batch,7:{i}").datatype == "INT64"


@given(st.integers(2, 512))
def test_example_size_of_a_dynamic_dim_can_be_set(n: int) -> None:
    spec = parse_input(f"x:batch,seq={n},64:FP32")
    assert spec.example_shape == (2, n, 64)
    assert spec.dims[1].dynamic and spec.dims[1].name == "seq"
    assert spec.shape_with_batch(5) == (5, n, 64)


def test_scalar_input_has_no_dims() -> None:
    spec = parse_input("t::FP32")
    assert spec.dims == () and spec.example_shape == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("x:batch,3", "expected NAME:DIMS:DTYPE"),
        ("x:batch,3:FP32:extra", "value range 'extra' must be LOW..HIGH"),
        ("x:batch,3:FP32:0..1:more", "expected NAME:DIMS:DTYPE"),
        ("1x:batch,3:FP32", "input name '1x'"),
        ("x:batch,,3:FP32", "dimension 2 is empty"),
        ("x:batch,0:FP32", "dimension 2 is 0"),
        ("x:batch,-1:FP32", "dimension 2 '-1' is neither a size"),
        ("x:batch,3:float128", "unknown datatype 'float128'"),
        ("x:batch,3:BYTES", "BYTES inputs cannot be exported"),
        ("x:batch,batch:FP32", "'batch' appears twice"),
        ("x:batch,seq=1:FP32", "example size of dynamic dimension 'seq'"),
        ("x:batch,seq=abc:FP32", "example size of dynamic dimension 'seq'"),
    ],
)
def test_malformed_specs_name_the_part(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_input(text)
    assert needle in str(e.value)
    assert repr(text) in str(e.value)


def test_inputs_must_be_unique_and_share_examples() -> None:
    with pytest.raises(SpecError, match="'x' is given twice"):
        parse_inputs(["x:batch,3:FP32", "x:batch,4:FP32"])
    with pytest.raises(SpecError, match="at least one --input"):
        parse_inputs([])
    with pytest.raises(SpecError, match="'n' has example size 4 here"):
        parse_inputs(["a:batch,n=3:FP32", "b:batch,n=4:FP32"])
    a, b = parse_inputs(["ids:batch,seq:INT64", "mask:batch,seq:BOOL"])
    assert a.example_shape == b.example_shape == (2, 8)


def test_random_arrays_follow_the_specs_and_the_seed() -> None:
    specs = parse_inputs(["x:batch,3:FP32", "ids:batch,5:INT64", "m:batch:BOOL"])
    one = random_arrays(specs, 7, seed=3)
    assert one["x"].shape == (7, 3) and one["x"].dtype.name == "float32"
    assert one["ids"].shape == (7, 5) and one["ids"].dtype.name == "int64"
    assert one["ids"].min() >= 0 and one["ids"].max() <= 9
    assert one["m"].dtype.name == "bool"
    again = random_arrays(specs, 7, seed=3)
    assert all((one[k] == again[k]).all() for k in one)
    assert random_arrays(specs, None, seed=0)["x"].shape == (2, 3)
