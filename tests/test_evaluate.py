"""Evaluation: cached plans, δ written through diagonal views, input checks, backends."""

import tracemalloc

import numpy as np
import opt_einsum as oe
import pytest

import einderiv as ed
from einderiv import evaluate as ev

rng = np.random.default_rng(3)


def test_second_evaluate_does_no_path_search_and_no_parsing(monkeypatch):
    d = ed.diff("L = (sum_j(A_ij x_j) - b_i)^2", wrt="x")
    A, x, b = rng.normal(size=(5, 4)), rng.normal(size=4), rng.normal(size=5)
    first = d.evaluate(A=A, x=x, b=b)
    calls = []
    monkeypatch.setattr(oe, "contract_path", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(oe, "contract_expression", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    import einderiv.parser as parser
    monkeypatch.setattr(parser, "parse_text", lambda *a: calls.append(a))
    second = d.evaluate(A=A, x=x, b=b)
    assert calls == []
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, 2 * A.T @ (A @ x - b), rtol=1e-12)


def test_new_shapes_compile_a_new_plan():
    d = ed.diff("C_ik = A_ij B_jk", wrt="A_pq")
    for m in (2, 3):
        A, B = rng.normal(size=(m, 4)), rng.normal(size=(4, 5))
        assert d.evaluate(A=A, B=B).shape == (m, 5, m, 4)


@pytest.mark.parametrize("src, wrt, shapes", [
    ("C_ik = A_ij B_jk", "A_pq", dict(A=(40, 32), B=(32, 36))),
    ("C_bik = A_bij B_bjk", "A", dict(A=(8, 12, 14), B=(8, 14, 16))),
    ("y_i = tanh(sum_j(W_ij x_j) + b_i)", "W", dict(W=(120, 100), x=(100,), b=(120,))),
])
def test_delta_jacobians_are_never_materialized_through_an_identity(src, wrt, shapes):
    d = ed.diff(src, wrt=wrt)
    arrays = {k: rng.normal(size=s) for k, s in shapes.items()}
    d.evaluate(**arrays)  # compile
    tracemalloc.start()
    out = d.evaluate(**arrays)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = sum(a.nbytes for a in arrays.values())
    assert peak <= 1.2 * (inputs + out.nbytes), (peak, inputs, out.nbytes)


def test_delta_result_values():
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(4, 5))
    J = ed.diff("C_ik = A_ij B_jk", wrt="A_pq").evaluate(A=A, B=B)
    np.testing.assert_array_equal(J, np.einsum("ip,qk->ikpq", np.eye(3), B))


def test_intermediates_are_computed_once():
    calls = []
    real = np.tanh
    from einderiv import functions
    entry = functions.FUNCTIONS["tanh"]
    counting = lambda u: calls.append(1) or real(u)  # noqa: E731
    object.__setattr__(entry, "numpy", counting)
    try:
        d = ed.diff("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2 + h_i", wrt="W")
        W, x, t = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=3)
        d.evaluate(W=W, x=x, t=t)
    finally:
        object.__setattr__(entry, "numpy", real)
    assert len(calls) == 1


def test_missing_input():
    with pytest.raises(ed.InputError, match="missing input array: B"):
        ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones((2, 3)))


def test_extra_input():
    with pytest.raises(ed.InputError, match="unexpected input: Z"):
        ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones((2, 3)), B=np.ones((3, 4)), Z=1)


def test_wrong_number_of_axes():
    with pytest.raises(ed.InputError, match="'A' has 1 axis.*2 indices"):
        ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones(3), B=np.ones((3, 4)))


def test_size_mismatch_names_index_tensors_and_sizes():
    with pytest.raises(ed.IndexSizeError) as info:
        ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones((2, 3)), B=np.ones((4, 5)))
    message = str(info.value)
    for part in ("'j'", "A", "B", "3", "4"):
        assert part in message


def test_no_silent_broadcasting_across_terms():
    with pytest.raises(ed.IndexSizeError):
        ed.parse("C_ij = A_ij + B_ij").evaluate(A=np.ones((2, 3)), B=np.ones((2, 1)))


def test_sizes_disagreeing_with_arrays():
    prog = ed.parse("y_i = x_i", sizes={"i": 3})
    with pytest.raises(ed.IndexSizeError, match="sizes gives index 'i' size 3"):
        prog.evaluate(x=np.ones(4))


def test_integer_inputs_are_promoted_and_float32_is_kept():
    prog = ed.parse("C_ik = A_ij B_jk")
    out = prog.evaluate(A=np.ones((2, 3), dtype=int), B=np.ones((3, 4), dtype=int))
    assert out.dtype == np.float64
    d = ed.diff("C_ik = A_ij B_jk", wrt="A")
    out32 = d.evaluate(A=np.ones((2, 3), np.float32), B=np.ones((3, 4), np.float32))
    assert out32.dtype == np.float32


def test_complex_is_a_clear_error():
    with pytest.raises(ed.InputError, match="complex"):
        ed.parse("y_i = x_i").evaluate(x=np.ones(3, complex))


def test_memory_guard():
    d = ed.diff("C_ik = A_ij B_jk", wrt="A")
    with pytest.raises(ed.EinderivError, match=r"shape \(1000, 1000, 1000, 1000\).*memory limit"):
        d.evaluate(A=np.ones((1000, 1000)), B=np.ones((1000, 1000)), max_bytes=10**9)
    ed.set_memory_limit(10**6)
    try:
        with pytest.raises(ed.EinderivError, match="memory limit"):
            ed.diff("C_ik = A_ij B_jk", wrt="A").evaluate(A=np.ones((30, 30)), B=np.ones((30, 30)))
    finally:
        ed.set_memory_limit(None)


def test_nan_and_inf_propagate():
    out = ed.parse("y_i = exp(x_i)").evaluate(x=np.array([np.nan, np.inf, 0.0]))
    assert np.isnan(out[0]) and np.isinf(out[1]) and out[2] == 1.0


def test_zero_size_axes():
    out = ed.diff("C_ik = A_ij B_jk", wrt="A").evaluate(A=np.ones((0, 3)), B=np.ones((3, 2)))
    assert out.shape == (0, 2, 0, 3)


@pytest.mark.parametrize("src, wrt", [
    ("C_ik = A_ij B_jk", "A"),
    ("L = x_i A_ij x_j", ["x", "x"]),
    ("y_i = tanh(sum_j(A_ij x_j) + b_i)", "A"),
    ("L = log(sum_i(exp(x_i)))", ["x", "x"]),
])
@pytest.mark.parametrize("backend", ["torch", "jax", "dask"])
def test_backends_agree_with_numpy(src, wrt, backend):
    lib = pytest.importorskip({"torch": "torch", "jax": "jax", "dask": "dask.array"}[backend])
    d = ed.diff(src, wrt=wrt)
    shapes = {"A": (3, 3), "B": (3, 2), "x": (3,), "b": (3,)}
    arrays = {n: rng.normal(size=shapes[n]) for n in d.inputs}
    expected = d.evaluate(**arrays)
    if backend == "torch":
        converted = {k: lib.tensor(v) for k, v in arrays.items()}
    elif backend == "jax":
        import jax
        jax.config.update("jax_enable_x64", True)
        converted = {k: jax.numpy.asarray(v) for k, v in arrays.items()}
    else:
        converted = {k: lib.from_array(v, chunks=2) for k, v in arrays.items()}
    got = d.evaluate(backend=backend, **converted)
    if backend == "torch":
        assert isinstance(got, lib.Tensor)
        got = got.numpy()
    elif backend == "dask":
        got = got.compute()
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")     # np.matrix, on purpose
def test_plan_cache_does_not_skip_conversion_of_other_array_types():
    """A plan cached for one call must not let a second call's torch tensors, np.matrix or
    lists past the conversion to ndarray (the second call once crashed inside a kernel)."""
    p = ed.parse("C_ik = A_ij B_jk + A_ij")
    want = np.full((2, 3), 6.0)        # Σ_j A_ij B_jk + Σ_j A_ij
    inputs = [(np.matrix(np.ones((2, 3))), np.matrix(np.ones((3, 3)))),
              (np.ones((2, 3)).tolist(), np.ones((3, 3)).tolist())]
    try:
        import torch
        inputs.append((torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)))
    except ImportError:
        pass
    for A, B in inputs:
        for _ in range(2):
            got = p.evaluate(A=A, B=B)
            assert type(got) is np.ndarray
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src, wrt, dtype", [
    ("y_i = 3 tanh(sum_j(W_ij x_j))", "W_pq", np.float64),       # coefficient 3 on the δ term
    ("y_i = W_ij x_j u_i", "W_pq", np.float64),                  # δ_ip x_q u_i: a broadcast product
    ("y_i = W_ij x_j u_i", "W_pq", np.float32),
    ("C_ik = A_ij B_jk - A_ij A_jk", "A_pq", np.float64),        # two δ terms and a full term
    ("L = x_i A_ij x_j + x_i x_i", ["x_p", "x_q"], np.float64),  # δ_pq with a constant
])
def test_delta_terms_written_straight_into_the_output(src, wrt, dtype):
    """The first δ term goes into the zeroed output's diagonal view with out=; the result
    must equal the derivative built independently from np.einsum with explicit identities."""
    d = ed.diff(src, wrt)
    rng = np.random.default_rng(3)
    arrays = {"W": rng.normal(size=(5, 4)), "x": rng.normal(size=4), "u": rng.normal(size=5),
              "A": rng.normal(size=(4, 4)), "B": rng.normal(size=(4, 3))}
    if "A_jk" in src:
        arrays["B"] = rng.normal(size=(4, 4))       # C_ik from both terms: k runs along A's axis
    arrays = {k: v.astype(dtype) for k, v in arrays.items() if k in d.inputs}
    got = d.evaluate(**arrays)
    assert got.dtype == dtype
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    if src.startswith("y_i = 3"):
        y = np.tanh(a["W"] @ a["x"])
        want = 3 * np.einsum("ip,q->ipq", np.diag(1 - y ** 2), a["x"])
    elif src.startswith("y_i"):
        want = np.einsum("ip,q,i->ipq", np.eye(5), a["x"], a["u"])
    elif src.startswith("C_ik"):
        I = np.eye(4)
        want = (np.einsum("ip,qk->ikpq", I, a["B"]) - np.einsum("ip,qk->ikpq", I, a["A"])
                - np.einsum("ij,jp,kq->ikpq", a["A"], I, I))
    else:
        want = a["A"] + a["A"].T + 2 * np.eye(4)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_temporaries_take_their_consumers_axis_order():
    """tanh(W1·xᵀ + b1) is built in h's axis order (n, i) and (y - t) in t's, so no step
    transposes a temporary (a transposed operand makes every later elementwise pass strided)."""
    p = ed.diff("h_ni = tanh(sum_j(W1_ij x_nj) + b1_i); y_nk = sum_i(W2_ki h_ni) + b2_k; "
                "L = (y_nk - t_nk)^2", wrt="W1_pq")
    for term in p.einsum():
        if not isinstance(term, ed.EinsumTerm) or not term.operands:
            continue
        ins, out = term.subscripts.split("->")
        if len(term.operands) == 1 and term.operands[0].startswith("%"):
            assert ins == out, term
    r = np.random.default_rng(0)
    W1, x, b1 = r.normal(size=(6, 3)), r.normal(size=(5, 3)), r.normal(size=6)
    W2, b2, t = r.normal(size=(2, 6)), r.normal(size=2), r.normal(size=(5, 2))
    h = np.tanh(x @ W1.T + b1)
    want = (((h @ W2.T + b2 - t) * 2) @ W2 * (1 - h * h)).T @ x
    got = p.evaluate(W1=W1, x=x, b1=b1, W2=W2, b2=b2, t=t)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("src, want", [
    ("Y_ij = A_ij - B_ij", lambda A, B: A - B),
    ("Y_ij = -A_ij + B_ij", lambda A, B: B - A),
    ("Y_ij = A_ij + B_ji", lambda A, B: A + B.T),
    ("Y_ij = 1 - A_ij", lambda A, B: 1 - A),
    ("Y_ij = 2 + A_ij", lambda A, B: 2 + A),
    ("Y_ij = -A_ij - B_ij + 3", lambda A, B: 3 - A - B),
])
@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
def test_sums_of_whole_terms(src, want, dtype):
    """The one-ufunc runners for a ± b and c ± a: values and result dtypes (integers are
    promoted to float64, float32 is kept), twice through the cached plan."""
    p = ed.parse(src)
    A = np.arange(12).reshape(3, 4).astype(dtype)
    B = (np.arange(12).reshape(3, 4) * 3 - 7).astype(dtype)
    if "B_ji" in src:
        B = (np.arange(12).reshape(4, 3) * 3 - 7).astype(dtype)
    kw = {k: v for k, v in {"A": A, "B": B}.items() if k in p.inputs}
    expected = want(A.astype(np.float64), B.astype(np.float64))
    for _ in range(2):
        got = p.evaluate(**kw)
        assert got.dtype == (np.float32 if dtype == np.float32 else np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_multistep_contraction_with_a_scaled_operand():
    """Three operands along an opt_einsum path, bound as a tree of closures, the coefficient
    on the smallest operand; equal to np.einsum."""
    p = ed.parse("D_il = 2.5 A_ij B_jk C_kl")
    r = np.random.default_rng(1)
    A, B, C = r.normal(size=(30, 4)), r.normal(size=(4, 50)), r.normal(size=(50, 20))
    want = 2.5 * np.einsum("ij,jk,kl->il", A, B, C)
    for _ in range(2):
        np.testing.assert_allclose(p.evaluate(A=A, B=B, C=C), want, rtol=1e-12)


@pytest.mark.parametrize("build, arrays, where", [
    (lambda: ed.parse("L = x_j z_j", sizes={"j": 5}), dict(x=np.ones(3), z=np.ones(3)), "x has size 3"),
    (lambda: ed.parse("C_ik = A_ij B_jk", sizes={"j": 5}),
     dict(A=np.ones((2, 3)), B=np.ones((3, 4))), "A has size 3"),
    (lambda: ed.diff("C_ik = A_ij B_jk", wrt="A", sizes={"j": 5}),
     dict(A=np.ones((2, 3)), B=np.ones((3, 4))), "A has size 3"),
    (lambda: ed.parse("L = x_j z_j"), dict(x=np.ones(3), z=np.ones(3), sizes={"j": 5}), "x has size 3"),
])
def test_sizes_of_a_summed_index_are_checked_against_the_arrays(build, arrays, where):
    """sizes= for a summed index that contradicts the arrays is an error naming the index,
    both sizes and the tensor (it used to be ignored: x_j z_j gave 3.0)."""
    with pytest.raises(ed.IndexSizeError, match=f"index 'j' size 5, but {where}"):
        build().evaluate(**arrays)


def test_sizes_that_agree_with_the_arrays_are_accepted():
    p = ed.parse("L = x_j z_j", sizes={"j": 3})
    assert p.evaluate(x=np.ones(3), z=np.ones(3)) == 3.0
    assert p.evaluate(x=np.ones(3), z=np.ones(3), sizes={"j": 3}) == 3.0


@pytest.mark.parametrize("src, kw, arrays, want", [
    ("C_ik = A_ij B_jk", dict(wrt="X_pq", depends={"A": "X", "B": "X"}),
     dict(A=np.ones((2, 3)), B=np.ones((3, 4)), dAdX=np.ones((2, 3, 2, 5)), dBdX=np.ones((3, 4, 2, 2))),
     "index 'q' has size 5 in dAdX (axis 3) but 2 in dBdX (axis 3)"),
    ("C_ik = A_ij B_jk", dict(wrt="X_pq", depends={"A": "X"}),
     dict(A=np.ones((2, 3)), B=np.ones((3, 4)), dAdX=np.ones((3, 3, 2, 2))),
     "index 'i' has size 2 in A (axis 0) but 3 in dAdX (axis 0)"),
])
def test_size_errors_of_jacobian_inputs_name_user_indices(src, kw, arrays, want):
    with pytest.raises(ed.IndexSizeError) as err:
        ed.diff(src, **kw).evaluate(**arrays)
    assert str(err.value) == want


# --- evaluate's arguments: arrays by keyword or as one dict, options by name ----------------

@pytest.mark.parametrize("name", ["backend", "self", "sizes"])
def test_any_tensor_name_is_an_array_keyword(name):
    """A tensor named like one of evaluate's parameters is passed by keyword like any other
    (these used to raise TypeError or 'missing input')."""
    p = ed.parse(f"y_i = {name}_i x_i")
    got = p.evaluate(**{name: np.arange(2.0), "x": np.full(2, 3.0)})
    np.testing.assert_array_equal(got, [0.0, 3.0])


def test_a_dict_of_arrays_leaves_the_keywords_to_the_options():
    p = ed.parse("y_i = backend_i x_i")
    arrays = {"backend": np.arange(2.0), "x": np.full(2, 3.0)}
    np.testing.assert_array_equal(p.evaluate(arrays), [0.0, 3.0])
    with pytest.raises(ed.EinderivError, match="memory limit of 1 B"):
        p.evaluate(arrays, max_bytes=1)
    with pytest.raises(ed.InputError, match="the keywords are options .* got x: put every array"):
        ed.parse("y_i = z_i x_i").evaluate({"z": np.ones(2)}, x=np.ones(2))


def test_positional_arrays_are_refused_with_a_hint():
    """evaluate(A, B) used to take A as sizes= and report A and B missing."""
    with pytest.raises(ed.InputError, match=r"by keyword, evaluate\(A=\.\.\., B=\.\.\.\).*2 positional"):
        ed.parse("C_ik = A_ij B_jk").evaluate(np.ones((2, 3)), np.ones((3, 4)))


@pytest.mark.parametrize("backend", [None, "foo", "math", 3])
def test_unknown_backend_is_an_einderiv_error(backend):
    with pytest.raises(ed.EinderivError, match="backend must be one of 'numpy', 'torch'"):
        ed.parse("y_i = x_i").evaluate(x=np.ones(3), backend=backend)


@pytest.mark.parametrize("bad", [-1, 0, "1GB", True, float("nan")])
def test_max_bytes_is_checked_like_set_memory_limit(bad):
    with pytest.raises(ed.EinderivError, match="positive number of bytes"):
        ed.parse("y_i = x_i").evaluate(x=np.ones(3), max_bytes=bad)
    with pytest.raises(ed.EinderivError, match="positive number of bytes"):
        ed.set_memory_limit(bad)


def test_numpy_integers_are_memory_limits():
    """max_bytes=np.int64(...) was refused while sizes= took numpy integers."""
    np.testing.assert_array_equal(
        ed.parse("y_i = x_i").evaluate(x=np.ones(3), max_bytes=np.int64(10 ** 6)), np.ones(3))
    try:
        ed.set_memory_limit(np.int64(10 ** 9))
        assert ed.memory_limit() == 10 ** 9
    finally:
        ed.set_memory_limit(None)


# --- einsum(): the listing is executable ---------------------------------------------------

_ELEMENTWISE = {"tanh": np.tanh, "exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos,
                "sqrt": np.sqrt, "abs": np.abs, "sign": np.sign}


def _run_listing(program, arrays, sizes=None, results=None):
    """Execute program.einsum() with np.einsum and numpy ufuncs only: each term written into
    its target through identity matrices for δ pairs and ones for broadcast axes (an
    independent reading of the record's fields). ``results``: the shapes of the results, for
    axes that only a δ or a broadcast gives."""
    import re
    env = dict(arrays)
    listing = program.einsum()
    index_size = {}
    for t in listing:
        if isinstance(t, ed.EinsumTerm) and t.target in (results or {}):
            index_size.update({(t.target, i): n for i, n in zip(t.target_indices, results[t.target])})

    def learn_sizes(target):
        """Sizes of a target's indices from the operands of all its terms (defined by now)."""
        for t in listing:
            if isinstance(t, ed.EinsumTerm) and t.target == target and t.operands:
                ins, out = t.subscripts.split("->")
                letter_size = {}
                for sub, ref in zip(ins.split(","), t.operands):
                    letter_size.update(zip(sub, np.shape(env[ref])))
                for letter, index in zip(out, t.indices):
                    index_size[(t.target, index)] = letter_size[letter]

    def size_factor(text):
        m = re.fullmatch(r"size\((\w+),(\d+)\)", text)
        if m:
            return np.shape(env[m.group(1)])[int(m.group(2))]
        return sizes[re.fullmatch(r"sum_(\w+)\(1\)", text).group(1)]

    for t in listing:
        if isinstance(t, ed.ElementwiseStep):
            x = env[t.operand]
            if t.function == "pow":
                env[t.target] = x ** (env[t.exponent] if isinstance(t.exponent, str) else t.exponent)
            else:
                env[t.target] = _ELEMENTWISE[t.function](x)
            continue
        assert t.subscripts.count("->") == 1 or t.subscripts == "", t
        if t.target not in env:
            learn_sizes(t.target)
        value = t.coefficient * np.prod([size_factor(s) for s in t.sizes])
        if t.operands:
            value = value * np.einsum(t.subscripts, *[env[r] for r in t.operands])
        tied = {a: b for a, b in t.diagonal} | {b: a for a, b in t.diagonal}

        def n(index):
            for key in ((t.target, index), (t.target, tied.get(index))):
                if key in index_size:
                    return index_size[key]
            return sizes[index]
        letters = {i: chr(ord("a") + k) for k, i in enumerate(t.target_indices)}
        subs, ops = ["".join(letters[i] for i in t.indices)], [value]
        covered = set(t.indices)
        for a, b in t.diagonal:
            subs.append(letters[a] + letters[b])
            ops.append(np.eye(n(a)))
            covered |= {a, b}
        for i in t.target_indices:
            if i not in covered:
                subs.append(letters[i])
                ops.append(np.ones(n(i)))
        full = np.einsum(",".join(subs) + "->" + "".join(letters[i] for i in t.target_indices), *ops)
        env[t.target] = env.get(t.target, 0) + full
    return env


MLP = ("h_ni = tanh(sum_j(W1_ij x_nj) + b1_i); y_nk = sum_i(W2_ki h_ni) + b2_k; "
       "L = (y_nk - t_nk)^2")


@pytest.mark.parametrize("build, shapes, sizes", [
    (lambda: ed.diff("C_ik = A_ij B_jk", wrt="A_pq"), dict(A=(2, 3), B=(3, 4)), None),
    (lambda: ed.diff(MLP, wrt="W1_pq"),
     dict(W1=(6, 3), x=(5, 3), b1=(6,), W2=(2, 6), b2=(2,), t=(5, 2)), None),
    (lambda: ed.diff("L = log(sum_i(exp(x_i)))", wrt=["x", "x"]), dict(x=(4,)), None),
    (lambda: ed.diff("y_i = sum_j(x_i)", wrt="x", sizes={"j": 3}), dict(x=(4,)), {"j": 3}),
    (lambda: ed.diff("y_i = x_i^a", wrt="x"), dict(x=(3,), a=()), None),
    (lambda: ed.diff("y = 3 + x", wrt="x"), dict(x=()), None),
    (lambda: ed.vjp("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", wrt=["W", "x"]),
     dict(W=(3, 4), x=(4,), t=(3,), G=()), None),
])
def test_einsum_listing_reproduces_evaluate(build, shapes, sizes):
    """Every subscripts string is a valid np.einsum string (no annotations), every temporary
    is defined before use (function and power steps are listed), constants carry no einsum."""
    p = build()
    r = np.random.default_rng(0)
    arrays = {k: r.uniform(0.5, 1.5, size=s) for k, s in shapes.items()}
    want = p.evaluate(**arrays)
    results = dict(zip(p.outputs, [np.shape(w) for w in (want.values() if isinstance(want, dict) else [want])]))
    env = _run_listing(p, arrays, sizes, results)
    if isinstance(want, dict):
        for name, ref in zip(want, p.outputs):
            np.testing.assert_allclose(env[ref], want[name], rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(env[p.outputs[-1]], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("src, shape", [("y_i = x_i", (3,)), ("y_ij = A_ji", (2, 3)),
                                        ("h_i = x_i; y_i = h_i", (3,))])
def test_results_never_alias_the_inputs(src, shape):
    """y_i = x_i returned x itself, so writing into the result changed the caller's array."""
    p = ed.parse(src)
    name = p.inputs[0]
    a = np.arange(float(np.prod(shape))).reshape(shape)
    keep = a.copy()
    for _ in range(2):                       # the first call compiles, the second is cached
        out = p.evaluate(**{name: a})
        assert not np.shares_memory(out, a)
        out[...] = -1.0
        np.testing.assert_array_equal(a, keep)


@pytest.mark.parametrize("where", ["parse", "evaluate"])
def test_sizes_name_the_dimension_no_array_carries(where):
    """j is W's axis in the first statement and a free-standing sum in the second; sizes=
    gives the second (it raised 'W has size 3 along it' before)."""
    src = "h_i = sum_j(W_ij x_j); y_i = h_i sum_j(1)"
    W, x = rng.normal(size=(2, 3)), rng.normal(size=3)
    if where == "parse":
        got = ed.parse(src, sizes={"j": 4}).evaluate(W=W, x=x)
    else:
        got = ed.parse(src).evaluate(W=W, x=x, sizes={"j": 4})
    np.testing.assert_allclose(got, 4 * (W @ x), rtol=1e-12)
    with pytest.raises(ed.IndexSizeError, match="sizes gives index 'j' size 4, but x has size 3"):
        ed.parse("L = x_j z_j", sizes={"j": 4}).evaluate(x=np.ones(3), z=np.ones(3))


def test_a_depends_variable_without_a_size_is_named_by_its_wrt_index():
    """dL/dX_pq is zero when L does not read A; X is outside the program, so p and q get no
    size from any array; the message names p (it named the internal 'X.0' before)."""
    d = ed.diff("h_ij = A_ij; L = B_ii", wrt="X_pq", depends={"A": "X"})
    with pytest.raises(ed.IndexSizeError, match="index 'p' has no size.*sizes=\\{'p': n\\}"):
        d.evaluate(A=np.ones((2, 2)), B=np.ones((3, 3)))
    np.testing.assert_array_equal(
        d.evaluate(A=np.ones((2, 2)), B=np.ones((3, 3)), sizes={"p": 2, "q": 3}), np.zeros((2, 3)))


def test_torch_inputs_on_one_device_take_the_converted_ones_along():
    """A numpy array next to a torch tensor on another device (here 'meta', which any torch
    build has) goes to that device; it raised torch's RuntimeError about devices before."""
    torch = pytest.importorskip("torch")
    d = ed.diff("L = a x_i x_i", wrt="x")
    got = d.evaluate(a=np.array(2.0), x=torch.ones(3, device="meta"), backend="torch")
    assert got.device.type == "meta" and tuple(got.shape) == (3,)
    with pytest.raises(ed.InputError, match="'a' on meta.*'x' on cpu|'x' on cpu.*'a' on meta"):
        d.evaluate(a=torch.ones((), device="meta"), x=torch.ones(3), backend="torch")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_terms_added_into_zeros_through_views_match_numpy(dtype):
    """Statements with no term that can start the output (δ terms, broadcast terms) are
    summed into zeros through diagonal views, with coefficients 1, -1 and others, and
    identity and transposed operands; plain numpy gives the reference."""
    rng = np.random.default_rng(3)
    A, B, D = (rng.standard_normal(s).astype(dtype) for s in ((3, 4), (4, 4), (4, 4)))
    c, x, z = (rng.standard_normal(n).astype(dtype) for n in (4, 3, 5))
    d = ed.diff("C_ik = A_ij B_jk + A_ik c_k - 2 A_ij D_jk", wrt="A_pq")
    want = np.zeros((3, 4, 3, 4), dtype)
    for i in range(3):
        want[i, :, i, :] += (B - 2 * D).T
        for k in range(4):
            want[i, k, i, k] += c[k]
    for _ in range(2):                                    # the compiled plan, then its reuse
        got = d.evaluate(A=A, B=B, D=D, c=c)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=1e-5)
    for formula, want in (("y_ij = x_i - z_j", x[:, None] - z[None, :]),
                          ("y_ij = x_i - 2 z_j", x[:, None] - 2 * z[None, :]),
                          ("y_ij = 3 x_i + z_j", 3 * x[:, None] + z[None, :])):
        got = ed.parse(formula).evaluate(x=x, z=z)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_torch_dtypes_and_devices_are_checked_on_every_call():
    """The torch dtype → numpy dtype lookup is remembered per dtype and the device check runs
    in one pass: a float32 call before does not let a complex, bfloat16 or int8-with-float16
    call through, and a tensor on a second device is refused wherever it stands."""
    torch = pytest.importorskip("torch")
    d = ed.diff("L = a x_i x_i", wrt="x")
    x = np.array([1.0, -2.0, 3.0])
    for dtype in (torch.float32, torch.float64, torch.float16):
        got = d.evaluate(a=torch.tensor(2.0, dtype=dtype), x=torch.tensor(x, dtype=dtype),
                         backend="torch")
        assert got.dtype == dtype
        np.testing.assert_allclose(got.float().numpy(), 4.0 * x, rtol=1e-3)
    with pytest.raises(ed.InputError, match="input 'x' is complex"):
        d.evaluate(a=torch.tensor(2.0), x=torch.ones(3, dtype=torch.complex64), backend="torch")
    with pytest.raises(ed.InputError, match="input 'a' is bfloat16"):
        d.evaluate(a=torch.tensor(2.0, dtype=torch.bfloat16), x=torch.ones(3), backend="torch")
    got = d.evaluate(a=torch.tensor(2, dtype=torch.int8), x=torch.ones(3, dtype=torch.float16),
                     backend="torch")
    assert got.dtype == torch.float16      # numpy's rule: result_type(int8, float16)
    d3 = ed.diff("L = a b x_i x_i", wrt="x")
    with pytest.raises(ed.InputError, match="'a' on cpu.*'x' on meta"):
        d3.evaluate(a=torch.tensor(2.0), b=np.array(1.0), x=torch.ones(3, device="meta"),
                    backend="torch")
    got = d3.evaluate(a=np.array(2.0), b=np.array(3.0), x=torch.ones(3, device="meta"),
                      backend="torch")
    assert got.device.type == "meta"


def test_dask_array_of_unknown_shape_is_an_input_error():
    da = pytest.importorskip("dask.array")
    x = da.ones(6)
    x = x[x > 0]                      # chunk sizes unknown until computed
    d = ed.diff("L = x_i x_i", wrt="x")
    with pytest.raises(ed.InputError, match="input 'x'.*unknown.*compute_chunk_sizes"):
        d.evaluate(x=x, backend="dask")
    np.testing.assert_array_equal(d.evaluate(x=x.compute_chunk_sizes(), backend="dask").compute(),
                                  2 * np.ones(6))


# --- terms wider than einsum's 52 letters ------------------------------------------------------

def _tanh_chain(n):
    lines = ["h1_i = tanh(sum_j(W1_ij x_j))"]
    lines += [f"h{k}_i = tanh(sum_j(W{k}_ij h{k - 1}_j))" for k in range(2, n + 1)]
    return "\n".join(lines + [f"L = h{n}_i h{n}_i"])


def _tanh_chain_gradient(ws, x):
    """dL/dW1 of L = |h_n|², h_k = tanh(W_k h_{k-1}), h_0 = x, by plain backpropagation."""
    hs = [x]
    for w in ws:
        hs.append(np.tanh(w @ hs[-1]))
    g = 2 * hs[-1]
    for k in range(len(ws) - 1, 0, -1):
        g = ws[k].T @ (g * (1 - hs[k + 1] ** 2))
    return np.outer(g * (1 - hs[1] ** 2), x)


def test_a_term_with_more_indices_than_einsum_letters_is_contracted_in_parts():
    # 60 matrices in one term: 61 distinct indices, more than einsum's 52 letters
    n = 60
    names = [f"a{k}" for k in range(n + 1)]
    src = "y_{a0,a60} = " + " ".join(f"M{k}_{{{names[k]},{names[k + 1]}}}" for k in range(n))
    ms = [rng.normal(size=(2, 2)) for _ in range(n)]
    arrays = {f"M{k}": m for k, m in enumerate(ms)}
    prog = ed.parse(src)
    want = np.linalg.multi_dot(ms)
    np.testing.assert_allclose(prog.evaluate(**arrays), want, rtol=1e-10)
    namespace = {}
    exec(prog.to_source("numpy", name="f"), namespace)
    np.testing.assert_allclose(namespace["f"](**arrays), want, rtol=1e-10)
    for step in prog.einsum():
        ins, out = step.subscripts.split("->")
        assert len(set(ins.replace(",", ""))) <= 52


def test_53_separate_sums_in_one_term_are_summed_apart_and_53_free_axes_are_refused():
    names = [f"a{k}" for k in range(53)]
    factors = " ".join(f"v{k}_{{{names[k]},}}" for k in range(53))
    vs = {f"v{k}": rng.normal(size=2) for k in range(53)}
    np.testing.assert_allclose(ed.parse("L = " + factors).evaluate(**vs),
                               np.prod([v.sum() for v in vs.values()]), rtol=1e-12)
    outer = ed.parse("T_{" + ",".join(names) + "} = " + factors)
    with pytest.raises(ed.EinderivError, match="term of T keeps 53 distinct indices"):
        outer.evaluate(**{k: v[:1] for k, v in vs.items()})


def test_a_too_wide_term_inside_a_function_names_its_statement():
    # tanh of a product over 53 free indices of the argument: refused, and the message says
    # which statement holds the term (it named none when the term was nested)
    names = [f"a{k}" for k in range(53)]
    factors = " ".join(f"v{k}_{{{names[k]},}}" for k in range(53))
    vs = {f"v{k}": np.ones(1) for k in range(53)}
    with pytest.raises(ed.EinderivError, match="term of L keeps 53 distinct indices"):
        ed.parse(f"L = tanh({factors})").evaluate(**vs)


def test_gradient_through_a_60_layer_chain_matches_backpropagation():
    # its one term reads all 60 weight matrices: 61 summed and free indices
    n, m = 60, 3
    # orthogonal weights: the gradient neither vanishes nor explodes over 60 layers
    ws = [np.linalg.qr(rng.normal(size=(m, m)))[0] for _ in range(n)]
    x = rng.normal(size=m)
    d = ed.diff(_tanh_chain(n), wrt="W1")
    got = d.evaluate(x=x, **{f"W{k + 1}": w for k, w in enumerate(ws)})
    want = _tanh_chain_gradient(ws, x)
    assert np.abs(want).min() > 1e-8
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_a_large_nested_group_is_keyed_once_not_once_per_order_of_its_indices(monkeypatch):
    # The Hessian of a 12-layer chain nests a group over 4 indices whose text is ~70,000
    # characters; keying it under all 24 orders of those indices took seconds per group.
    from einderiv.simplify import expr_key
    d = ed.diff(_tanh_chain(12), wrt=["x_p", "x_q"])
    renamed = {}
    real = ev.rename_expr

    def counting(e, mapping):
        if len(expr_key(e)) > 5_000:    # above _SEARCHED_KEY_SIZE
            renamed[id(e)] = renamed.get(id(e), 0) + 1
        return real(e, mapping)

    monkeypatch.setattr(ev, "rename_expr", counting)
    d.einsum()
    # once as the group (a Power factor), once as the expression inside it: not 2 x 24 times
    assert renamed and max(renamed.values()) <= 2


def test_hessian_through_an_8_layer_chain_matches_finite_differences():
    n, m = 8, 3
    ws = [np.linalg.qr(rng.normal(size=(m, m)))[0] for _ in range(n)]
    x = rng.normal(size=m)

    def gradient(x):   # dL/dx by plain backpropagation
        hs = [x]
        for w in ws:
            hs.append(np.tanh(w @ hs[-1]))
        g = 2 * hs[-1]
        for k in range(n - 1, -1, -1):
            g = ws[k].T @ (g * (1 - hs[k + 1] ** 2))
        return g

    h = 1e-5
    want = np.stack([(gradient(x + h * e) - gradient(x - h * e)) / (2 * h) for e in np.eye(m)], axis=1)
    got = ed.diff(_tanh_chain(n), wrt=["x_p", "x_q"]).evaluate(x=x, **{f"W{k + 1}": w for k, w in enumerate(ws)})
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_a_differential_that_simplifies_to_zero_takes_its_tangents():
    """SPEC §4: every input A gets a tangent dA; dy_i = 0 (y_i = x_i / x_i) refused dx as
    an unexpected input. A name that is no tangent is still refused."""
    d = ed.differential("y_i = x_i / x_i")
    np.testing.assert_array_equal(d.evaluate(x=np.ones(3), dx=np.ones(3)), np.zeros(3))
    with pytest.raises(ed.InputError, match="unexpected input: dq"):
        d.evaluate(x=np.ones(3), dx=np.ones(3), dq=np.ones(3))


def test_the_jacobian_of_a_depends_input_is_accepted_where_the_output_does_not_read_it():
    """One dict of arrays serves every derivative: dAdX is accepted (and ignored) where the
    output L does not read A, as A itself is."""
    d = ed.diff("h_ij = A_ij; L = B_ii", wrt="X_pq", depends={"A": "X"})
    got = d.evaluate(A=np.ones((2, 2)), B=np.ones((3, 3)), dAdX=np.ones((2, 2, 2, 3)),
                     sizes={"p": 2, "q": 3})
    np.testing.assert_array_equal(got, np.zeros((2, 3)))
