"""Arrays: sizes, missing/extra inputs, axes, dtypes, complex, NaN/inf, zero-size axes,
and the memory guard (README "Decisions where the specification is silent")."""

from __future__ import annotations

import numpy as np
import pytest

import einderiv as ed

MATMUL = "C_ik = A_ij B_jk"


def _ones(*shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


# ---------------------------------------------------------------------------
# sizes and inputs
# ---------------------------------------------------------------------------

def test_size_mismatch_names_index_tensors_and_sizes():
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(MATMUL).evaluate(A=_ones(2, 3), B=_ones(4, 5))
    msg = str(info.value)
    assert "'j'" in msg or " j " in msg, msg
    assert "A" in msg and "B" in msg, msg
    assert "3" in msg and "4" in msg, msg


def test_size_mismatch_within_one_tensor():
    with pytest.raises(ed.EinderivError) as info:
        ed.parse("t = A_ii").evaluate(A=_ones(2, 3))
    msg = str(info.value)
    assert "i" in msg and "A" in msg and "2" in msg and "3" in msg, msg


def test_size_mismatch_across_statements():
    src = "h_i = x_i; L_j = h_j y_j"
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(src).evaluate(x=_ones(2), y=_ones(3))
    assert "2" in str(info.value) and "3" in str(info.value)


def test_size_mismatch_in_derivative_evaluation():
    d = ed.diff(MATMUL, wrt="A_pq")
    with pytest.raises(ed.EinderivError) as info:
        d.evaluate(A=_ones(2, 3), B=_ones(4, 5))
    assert "3" in str(info.value) and "4" in str(info.value)


def test_sizes_argument_conflicting_with_array():
    with pytest.raises(ed.EinderivError):
        ed.parse("y_i = x_i").evaluate(x=_ones(3), sizes={"i": 4})


def test_missing_input():
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(MATMUL).evaluate(A=_ones(2, 3))
    assert "B" in str(info.value)


def test_extra_input():
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(MATMUL).evaluate(A=_ones(2, 3), B=_ones(3, 2), Z=_ones(1))
    assert "Z" in str(info.value)


@pytest.mark.parametrize("shape", [(2,), (2, 3, 1), (), (2, 3, 4, 5)])
def test_wrong_number_of_axes(shape):
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(MATMUL).evaluate(A=np.ones(shape), B=_ones(3, 2))
    msg = str(info.value)
    assert "A" in msg and str(len(shape)) in msg, msg


def test_non_array_input():
    for bad in ["abc", None, {"a": 1}, [[1, 2], [3]]]:
        try:
            ed.parse("y_i = x_i").evaluate(x=bad)
        except ed.EinderivError as e:
            assert str(e).strip()
        except (TypeError, ValueError) as e:   # numpy's own conversion errors
            assert not isinstance(e, RecursionError)


def test_python_lists_and_scalars_are_accepted():
    prog = ed.parse("L = x_i A_ij x_j")
    got = prog.evaluate(x=[1.0, 2.0], A=[[1.0, 0.0], [0.0, 1.0]])
    assert np.isclose(got, 5.0)
    assert np.isclose(ed.parse("L = a b").evaluate(a=2.0, b=3), 6.0)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

def test_integer_inputs_promote_to_float64():
    a = np.arange(6).reshape(2, 3)
    b = np.arange(6).reshape(3, 2)
    got = ed.parse(MATMUL).evaluate(A=a, B=b)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a @ b)
    d = ed.diff("L = x_i^2", wrt="x").evaluate(x=np.array([1, 2, 3]))
    assert d.dtype == np.float64
    np.testing.assert_array_equal(d, [2.0, 4.0, 6.0])


def test_boolean_inputs_promote_to_float64():
    got = ed.parse("L = x_i y_i").evaluate(x=np.array([True, False]), y=np.array([True, True]))
    assert np.asarray(got).dtype == np.float64 and got == 1.0


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    got = ed.parse(MATMUL).evaluate(A=a, B=b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5)
    d = ed.diff("L = tanh(sum_j(W_ij x_j))", wrt="W").evaluate(W=a, x=b[:, 0])
    assert d.dtype == np.float32


def test_mixed_dtypes_follow_numpy_result_type():
    a = np.ones((2, 3), dtype=np.float32)
    b = np.ones((3, 2), dtype=np.float64)
    assert ed.parse(MATMUL).evaluate(A=a, B=b).dtype == np.result_type(a, b)
    c = np.ones((3, 2), dtype=np.int64)
    assert ed.parse(MATMUL).evaluate(A=a, B=c).dtype == np.result_type(a, np.float64) or \
        ed.parse(MATMUL).evaluate(A=a, B=c).dtype == np.float32


def test_complex_inputs_raise_a_clear_error():
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(MATMUL).evaluate(A=_ones(2, 3) * 1j, B=_ones(3, 2))
    assert "complex" in str(info.value) and "A" in str(info.value)
    with pytest.raises(ed.EinderivError):
        ed.diff(MATMUL, wrt="A").evaluate(A=_ones(2, 3), B=_ones(3, 2).astype(complex))


# ---------------------------------------------------------------------------
# NaN, inf, zero-size axes
# ---------------------------------------------------------------------------

def test_nan_and_inf_propagate():
    x = np.array([1.0, np.nan, np.inf, -np.inf])
    with np.errstate(all="ignore"):
        got = ed.parse("y_i = exp(x_i) + x_i^2").evaluate(x=x)
        want = np.exp(x) + x ** 2
        np.testing.assert_array_equal(got, want)
        d = ed.diff("y_i = tanh(x_i) x_i", wrt="x").evaluate(x=x)
    assert d.shape == (4, 4)
    assert np.isnan(d[1, 1])
    assert np.isfinite(d[0, 0])
    with np.errstate(all="ignore"):
        s = ed.parse("L = x_i").evaluate(x=x[:2])
    assert np.isnan(s)


def test_nan_in_a_contraction_does_not_crash():
    a = np.ones((2, 3))
    a[0, 1] = np.nan
    with np.errstate(all="ignore"):
        got = ed.parse(MATMUL).evaluate(A=a, B=_ones(3, 2))
        g = ed.vjp(MATMUL, wrt="B", cotangent="G").evaluate(A=a, B=_ones(3, 2), G=_ones(2, 2))
    assert np.isnan(got[0]).all() and np.isfinite(got[1]).all()
    assert np.isnan(g[1]).all()


def test_division_by_zero_gives_inf_not_an_exception():
    with np.errstate(all="ignore"):
        got = ed.parse("y_i = 1 / x_i").evaluate(x=np.array([0.0, 2.0]))
    assert np.isinf(got[0]) and got[1] == 0.5


@pytest.mark.parametrize("shape_a, shape_b", [((0, 3), (3, 2)), ((2, 0), (0, 2)), ((0, 0), (0, 0))])
def test_zero_size_axes(shape_a, shape_b):
    a, b = np.ones(shape_a), np.ones(shape_b)
    got = ed.parse(MATMUL).evaluate(A=a, B=b)
    np.testing.assert_array_equal(got, a @ b)
    d = ed.diff(MATMUL, wrt="A_pq").evaluate(A=a, B=b)
    assert d.shape == (shape_a[0], shape_b[1]) + shape_a
    v = ed.vjp(MATMUL, wrt="A", cotangent="G").evaluate(A=a, B=b, G=np.ones((shape_a[0], shape_b[1])))
    np.testing.assert_array_equal(v, np.ones((shape_a[0], shape_b[1])) @ b.T)


def test_zero_size_sum_is_zero():
    assert ed.parse("L = sum_i(exp(x_i))").evaluate(x=np.ones(0)) == 0.0
    assert ed.parse("L = log(sum_i(exp(x_i)))").evaluate(x=np.array([0.0])) == 0.0


# ---------------------------------------------------------------------------
# the memory guard
# ---------------------------------------------------------------------------

def test_memory_guard_names_shape_and_bytes():
    prog = ed.parse(MATMUL)
    with pytest.raises(ed.EinderivError) as info:
        prog.evaluate(A=_ones(200, 300), B=_ones(300, 400), max_bytes=10_000)
    msg = str(info.value)
    assert "(200, 400)" in msg, msg
    assert "B" in msg or "byte" in msg.lower() or "KiB" in msg or "MiB" in msg, msg


def test_memory_guard_refuses_a_huge_outer_product_without_allocating():
    # 1e5 x 1e5 float64 = 80 GB: must be refused before numpy tries to allocate it
    prog = ed.parse("C_ij = x_i y_j")
    x = np.ones(100_000)
    with pytest.raises(ed.EinderivError) as info:
        prog.evaluate(x=x, y=x)
    assert "(100000, 100000)" in str(info.value)


def test_memory_guard_covers_derivatives_and_intermediates():
    # the Jacobian of an outer product is 4-D: 300^4 * 8 B = 64.8 GB
    d = ed.diff("C_ij = x_i y_j", wrt="x_p")
    x = np.ones(300)
    with pytest.raises(ed.EinderivError, match=r"the derivative has shape \(300, 300, 300\)") as info:
        d.evaluate(x=x, y=x, max_bytes=1_000_000)
    assert "∂" not in str(info.value)           # the internal name '∂C' showed before
    # an intermediate, not the result, is what is too big
    prog = ed.parse("h_ij = x_i y_j; L = h_ij")
    with pytest.raises(ed.EinderivError):
        prog.evaluate(x=np.ones(2000), y=np.ones(2000), max_bytes=1_000_000)


def test_set_memory_limit_is_global_and_restorable():
    old = ed.memory_limit()
    try:
        ed.set_memory_limit(10_000)
        with pytest.raises(ed.EinderivError):
            ed.parse(MATMUL).evaluate(A=_ones(100, 100), B=_ones(100, 100))
        # max_bytes= overrides it for one call
        ed.parse(MATMUL).evaluate(A=_ones(100, 100), B=_ones(100, 100), max_bytes=10 ** 9)
    finally:
        ed.set_memory_limit(None)
    assert ed.memory_limit() > 0
    ed.parse(MATMUL).evaluate(A=_ones(100, 100), B=_ones(100, 100))
    assert old > 0


def test_small_evaluations_pass_the_guard():
    got = ed.parse(MATMUL).evaluate(A=_ones(2, 3), B=_ones(3, 4), max_bytes=10_000)
    np.testing.assert_array_equal(got, np.full((2, 4), 3.0))


# ---------------------------------------------------------------------------
# the same dtype rules and array types on every backend
# ---------------------------------------------------------------------------

def _backend(name):
    if name == "torch":
        return pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax.numpy


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_complex_inputs_raise_on_every_backend(backend):
    """jax and torch used to accept complex inputs (abs' at 1+1j gave 0.707+0.707j)."""
    lib = _backend(backend)
    x = lib.tensor([1 + 1j]) if backend == "torch" else lib.array([1 + 1j])
    with pytest.raises(ed.InputError, match="complex"):
        ed.diff("y_i = abs(x_i)", wrt="x").evaluate(x=x, backend=backend)
    with pytest.raises(ed.InputError, match="complex"):
        ed.parse("y_i = x_i").evaluate(x=np.array([1 + 1j]), backend=backend)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("dtypes, want", [
    (("int64", "bool"), "float64"), (("int32", "int32"), "float64"),
    (("float32", "float32"), "float32"), (("float32", "float64"), "float64"),
])
def test_dtypes_follow_the_numpy_rules_on_every_backend(backend, dtypes, want):
    """Integers and booleans promote to float64, float32 stays, mixed inputs follow
    numpy.result_type — as on the numpy backend (torch kept int64 and bool before)."""
    lib = _backend(backend)
    A, B = np.ones((2, 3), dtype=dtypes[0]), np.ones((3, 4), dtype=dtypes[1])
    convert = (lambda a: lib.as_tensor(a)) if backend == "torch" else (lambda a: lib.asarray(a))
    for _ in range(2):      # the second call goes through the cached plan
        got = ed.parse(MATMUL).evaluate(A=convert(A), B=convert(B), backend=backend)
        assert str(got.dtype).replace("torch.", "") == want
        assert ed.parse(MATMUL).evaluate(A=A, B=B).dtype == np.dtype(want)
        np.testing.assert_array_equal(np.asarray(got), np.full((2, 4), 3.0))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_numpy_inputs_give_the_backends_arrays(backend):
    """SPEC §4: evaluate(backend=...) returns that library's arrays, also for numpy or list
    inputs (numpy inputs used to give numpy results; a list with torch 'had 0 axes')."""
    lib = _backend(backend)
    array_type = lib.Tensor if backend == "torch" else __import__("jax").Array
    d = ed.diff("C_ik = A_ij B_jk", wrt="A")
    A, B = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    for _ in range(2):
        got = d.evaluate(A=A, B=B.tolist(), backend=backend)
        assert isinstance(got, array_type)
        np.testing.assert_allclose(np.asarray(got), d.evaluate(A=A, B=B), rtol=1e-12)
    got = ed.parse("y_i = x_i").evaluate(x=[1.0, 2.0], backend=backend)
    assert isinstance(got, array_type) and tuple(got.shape) == (2,)


@pytest.mark.parametrize("library, backend", [
    ("torch", "torch"), ("torch", "numpy"), ("jax", "jax"), ("jax", "numpy"), ("jax", "torch"),
])
def test_bfloat16_inputs_are_refused_with_the_conversion(library, backend):
    """bfloat16 was "not a real number type" (or "not an array: Got unsupported ScalarType")
    depending on the backend and on whether jax had been imported. numpy, whose dtype rules
    every backend follows, has no bfloat16 arithmetic (its einsum refuses ml_dtypes' one),
    so no backend computes with it; the message says so and how to convert."""
    lib = _backend(library)
    if backend != library:
        _backend(backend)
    x = lib.ones(3, dtype=lib.bfloat16)
    for p in (ed.parse("y_i = x_i w_i"), ed.diff("L = x_i w_i", wrt="x")):
        with pytest.raises(ed.InputError, match=r"input 'x' is bfloat16.*x\.float\(\).*astype"):
            p.evaluate(x=x, w=np.ones(3, np.float32), backend=backend)
    x32 = x.float() if library == "torch" else x.astype("float32")
    got = ed.parse("y_i = x_i w_i").evaluate(x=x32, w=np.full(3, 2.0, np.float32), backend=backend)
    np.testing.assert_array_equal(np.asarray(got), np.full(3, 2.0, np.float32))


def test_jax_without_64_bit_numbers_refuses_float64_instead_of_narrowing():
    """jax's default (x64 off) turned float64 and integer inputs into float32 silently."""
    jax = pytest.importorskip("jax")
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        p = ed.parse("y = x_i x_i")
        for x in (np.array([1 + 1e-12]), np.array([3], dtype=np.int64)):
            with pytest.raises(ed.InputError, match="jax_enable_x64"):
                p.evaluate(x=x, backend="jax")
        got = p.evaluate(x=np.array([1.5], dtype=np.float32), backend="jax")
        assert got.dtype == np.float32 and float(got) == 2.25
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_a_python_number_does_not_widen_float32(backend):
    """A Python number is weak, as in numpy, torch and jax: float32 weights with the
    cotangent G=1.0 and a target t=0.5 gave float64 gradients, and with jax (64-bit off)
    an InputError about 'float64 inputs' although every array was float32."""
    jax = pytest.importorskip("jax")
    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        v = ed.vjp("L = (sum_i(w_i x_i) - t)^2", wrt=["w", "x"])
        w, x = np.array([0.5, -1.0, 2.0], np.float32), np.array([1.0, 3.0, -0.5], np.float32)
        convert = {"numpy": np.asarray, "jax": jax.numpy.asarray,
                   "torch": lambda a: pytest.importorskip("torch").from_numpy(a)}[backend]
        got = v.evaluate(w=convert(w), x=convert(x), t=0.5, G=1, backend=backend)
        residual = float(w.astype(np.float64) @ x.astype(np.float64)) - 0.5
        for name, other in (("w", x), ("x", w)):
            assert str(got[name].dtype).replace("torch.", "") == "float32"
            np.testing.assert_allclose(np.asarray(got[name]), 2 * residual * other, rtol=1e-6)
        strong = v.evaluate(w=w, x=x, t=np.float64(0.5), G=1.0)      # a numpy float64 is not weak
        assert strong["w"].dtype == np.float64
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("src", ["y_i = sum_j(A_ij x_j) + 0.1", "y_i = 1 - x_i", "y_i = x_i + 2 x_i"])
def test_dask_keeps_float32_with_constant_terms(src):
    da = pytest.importorskip("dask.array")
    p = ed.parse(src)
    r = np.random.default_rng(0)
    arrays = {"A": r.normal(size=(3, 4)).astype(np.float32), "x": r.normal(size=4).astype(np.float32)}
    if "A_ij" not in src:
        arrays = {"x": arrays["x"]}
    want = p.evaluate(**arrays)
    got = p.evaluate(**{k: da.from_array(v, chunks=2) for k, v in arrays.items()}, backend="dask")
    assert want.dtype == np.float32
    assert got.dtype == np.float32 and got.compute().dtype == np.float32
    np.testing.assert_allclose(got.compute(), want, rtol=1e-6)


def test_masked_entries_are_refused_not_dropped():
    p = ed.parse("L = x_i x_i")
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(ed.InputError, match="masked"):
        p.evaluate(x=x)
    assert float(p.evaluate(x=x.filled(0.0))) == 10.0
    assert float(p.evaluate(x=np.ma.masked_array([1.0, 2.0]))) == 5.0    # nothing masked


def test_a_jax_array_on_the_torch_backend_gives_no_warning():
    # np.asarray of a jax array is read-only, and torch.as_tensor warned about it
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    import warnings
    a = jnp.asarray(np.arange(6.0, dtype=np.float32).reshape(2, 3))
    b = np.ones((3, 2), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ed.parse("C_ik = A_ij B_jk").evaluate(A=a, B=b, backend="torch")
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), np.asarray(a) @ b)


def test_a_tensor_that_requires_grad_on_the_numpy_backend_names_the_torch_backend():
    torch = pytest.importorskip("torch")
    W, x = torch.ones(2, 3, requires_grad=True), torch.ones(3)
    p = ed.parse("y_i = W_ij x_j")
    with pytest.raises(ed.InputError, match=r"input 'W' is not an array.*backend='torch'"):
        p.evaluate(W=W, x=x)
    got = p.evaluate(W=W, x=x, backend="torch")
    assert got.requires_grad and got.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "dask"])
def test_reversed_and_strided_views_are_inputs_like_any_other(backend):
    """x[::-1] (negative strides) and A[:, ::-2]: torch cannot hold negative strides, and
    backend='torch' and the exported torch code raised torch's ValueError on them."""
    if backend != "numpy":
        _backend(backend) if backend != "dask" else pytest.importorskip("dask.array")
    x = np.arange(4.0)[::-1]
    A = np.arange(24.0).reshape(4, 6)[:, ::-2]
    d = ed.diff("y_j = sum_i(A_ij x_i^2)", wrt="x")
    want = 2 * A * x[:, None]                      # dy_j/dx_p = 2 A_pj x_p, numerator layout
    got = np.asarray(d.evaluate(A=A, x=x, backend=backend)).transpose(1, 0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    target = "numpy" if backend == "dask" else backend
    for shapes in (None, {"A": A.shape, "x": x.shape}):
        ns = {}
        exec(d.to_source(target, shapes=shapes), ns)
        got = np.asarray(ns["derivative"](A, x)).transpose(1, 0)
        np.testing.assert_allclose(got, want, rtol=1e-12)
