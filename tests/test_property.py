"""Property tests: thousands of random programs against independent references.

Every program comes from ``strategies.generate_program`` (see its docstring): random
statements, index patterns, functions, sums, deltas and powers, with inputs kept inside
each function's domain.  The references never use einderiv:

* values: ``GeneratedProgram.evaluate``, a plain numpy evaluator of the tree (broadcast,
  then sum each top-level term over the letters its left-hand side lacks);
* first derivatives, differentials and VJPs: 5-point central finite differences (float64)
  of that evaluator;
* Hessians: Richardson-extrapolated mixed second differences;
* optionally ``jax.jacobian`` of the same evaluator written in ``jax.numpy``.

The seeds are fixed (``derandomize=True``), so every CI run checks the same programs
(``PROGRAMS_PER_RUN`` in all).  A failure prints the program text, the input shapes and
the seeds (hypothesis ``note``); ``strategies.shrink`` reduces a failing program to a
minimal one.
"""

from __future__ import annotations

import os
import random
import re
import time

import numpy as np
import pytest
from hypothesis import assume, HealthCheck, Phase, given, note, reject, settings
from hypothesis import strategies as st

import einderiv as ed
from strategies import (
    WRT_LETTERS, fd_directional, fd_hessian, fd_jacobian, programs, random_inputs,
)

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
except Exception:  # pragma: no cover - jax is optional
    jax = None

# EINDERIV_PROPERTY_SCALE=0.1 runs a tenth of the programs (quick local checks)
_SCALE = float(os.environ.get("EINDERIV_PROPERTY_SCALE", "1"))
N_JACOBIAN = max(1, int(600 * _SCALE))
N_HESSIAN = max(1, int(200 * _SCALE))
N_DIFFERENTIAL = max(1, int(500 * _SCALE))
N_ROUND_TRIP = max(1, int(650 * _SCALE))
N_JAX = max(1, int(60 * _SCALE))
PROGRAMS_PER_RUN = N_JACOBIAN + N_HESSIAN + N_DIFFERENTIAL + N_ROUND_TRIP + N_JAX

# seeds fixed; shrinking a seed means nothing (use strategies.shrink on the program instead)
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

RTOL_1 = 1e-6      # first derivatives vs finite differences
RTOL_2 = 1e-5      # second derivatives vs finite differences


# Known core bugs at the last run (docs/reliability.md lists them with their programs):
#  B4  parse() keeps only ~14 significant digits of a number literal, so a folded constant
#      does not survive str() -> parse()  (test_bug_folded_constant_round_trip)
#  B7  a δ term broadcast along an index loses that index's size
#      (test_bug_broadcast_delta_term_loses_a_size_factor)
#  B8  exported numpy code breaks when an intermediate is a constant ('h = 1.5'):
#      '(t2)[None]' / '.shape' on a Python float (test_bug_export_with_a_constant_intermediate)
#      (the Hessian and differential failures of the random programs shrink to it, e.g.
#      differential of 'g_l = B_lk; L = (g_l g_u + δ_ul W_m)' misses the factor n_l)
# The property tests hit these on some of their programs; the markers are strict, so a test
# that starts passing fails until its marker is removed.
_XFAIL_B1 = pytest.mark.xfail(strict=True, reason="core bugs B7, B8 (see docs/reliability.md): "
                              "some random programs give wrong derivatives or broken exports")
_XFAIL_TEXT = pytest.mark.xfail(strict=True, reason="core bug B4 (see docs/reliability.md): "
                                "number literals lose digits, so text does not round-trip")


def _settings(n):
    return settings(derandomize=True, max_examples=n, deadline=None, phases=_PHASES,
                    suppress_health_check=_HEALTH, database=None, print_blob=False)


def _core_args(obj, arrays):
    """The arrays a Program / Derivative asks for, by its own ``inputs``."""
    missing = [n for n in obj.inputs if n not in arrays]
    assert not missing, f"the result needs unknown inputs {missing}: {obj.inputs}"
    return {n: arrays[n] for n in obj.inputs}


def _scale(x):
    """The size of an array's entries, at least 1 (absolute tolerances are relative to it)."""
    return max(1.0, float(np.max(np.abs(x)))) if np.size(x) else 1.0


def assert_close(got, want, rtol, what, atol_rel=None):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(want)), f"{what}: the reference is not finite (generator bug)"
    scale = _scale(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=(atol_rel or rtol) * scale, err_msg=what)


def _converged(fd, *args, h, what, tol, **kwargs):
    """``fd(*args, h=h)`` when it agrees with ``fd(*args, h=h/4)``; otherwise the program is
    too steep for a float64 finite-difference reference at these inputs and is skipped
    (``reject``): a reference that has not converged cannot judge the core."""
    a = fd(*args, h=h, **kwargs)
    b = fd(*args, h=h / 4, **kwargs)
    scale = _scale(b)
    if not np.all(np.isfinite(b)) or np.max(np.abs(a - b), initial=0.0) > tol * scale:
        note(f"{what}: finite differences do not converge; program skipped")
        reject()
    return b


def _describe(p, seed):
    note(f"program (generator seed {p.seed}, input seed {seed}):\n{p.text}")
    note(f"input shapes: {p.shapes}; index sizes: {p.sizes}")


def _wrt_spec(rng, name, ndim, letters, allow_bare=True):
    if ndim == 0:
        return name
    r = rng.random()
    if allow_bare and r < 0.15:
        return name
    if r < 0.3:
        return f"{name}_{{{letters}}}"
    if r < 0.38 and ndim > 1:
        return f"{name}_{{{','.join(letters)}}}"
    return f"{name}_{letters}"


def _exec_export(d, arrays, shapes=False):
    """The exported numpy function's result; with ``shapes`` the paths and the kernel steps
    (transposes, matmuls, Gram products) are written into the source."""
    src = d.to_source("numpy", shapes={n: np.shape(arrays[n]) for n in d.inputs} if shapes else None)
    assert "def derivative(" in src
    ns = {}
    exec(compile(src, "<einderiv export>", "exec"), ns)
    return ns["derivative"](*[arrays[n] for n in d.inputs])


# ---------------------------------------------------------------------------
# values, first derivatives in every layout, exported numpy code
# ---------------------------------------------------------------------------

def check_value_and_jacobian(p, seed):
    _describe(p, seed)
    rng = random.Random(seed)
    arrays = random_inputs(p, seed)

    prog = ed.parse(p.text)
    assert set(prog.inputs) == set(p.inputs)
    assert_close(prog.evaluate(**_core_args(prog, arrays)), p.evaluate(arrays), 1e-9, "value")

    of = None
    if len(p.statements) > 1 and rng.random() < 0.15:
        of = rng.choice([s.name for s in p.statements[:-1]])
    out = p.out_letters[of or p.output]
    w = rng.choice(p.inputs)
    nd = len(p.shapes[w])
    wl = WRT_LETTERS[:nd]
    kind = rng.choice(["default", "numerator", "denominator", "explicit", "explicit-list"])
    wrt = _wrt_spec(rng, w, nd, wl, allow_bare=not kind.startswith("explicit"))
    natural = tuple(out) + tuple(wl)
    if kind in ("default", "numerator"):
        order = natural
    elif kind == "denominator":
        order = tuple(wl) + tuple(out)
    else:
        order = tuple(rng.sample(natural, len(natural)))
    kwargs = {}
    if kind != "default":
        kwargs["layout"] = ("".join(order) if kind == "explicit" else list(order)) \
            if kind.startswith("explicit") else kind
    if of is not None:
        kwargs["of"] = of
    source = prog if rng.random() < 0.3 else p.text
    note(f"diff(wrt={wrt!r}, {kwargs})")
    d = ed.diff(source, wrt=wrt, **kwargs)
    note(f"derivative:\n{d}")
    if wrt == w and nd:      # fresh names: only the output part of the order is known
        n_out = len(out)
        if kind == "denominator":
            assert tuple(d.indices[nd:]) == tuple(out)
        else:
            assert tuple(d.indices[:n_out]) == tuple(out)
    else:
        assert tuple(d.indices) == order, (d.indices, order)

    jac = _converged(fd_jacobian, p, arrays, w, of=of, h=2e-4, what="jacobian", tol=RTOL_1 / 10)
    want = np.transpose(jac, [natural.index(c) for c in order]) if order else jac
    got = d.evaluate(**_core_args(d, arrays))
    assert_close(got, want, RTOL_1, "jacobian vs finite differences")

    exported = _exec_export(d, arrays)
    assert_close(exported, got, 1e-10, "exported numpy code vs evaluate")
    exported = _exec_export(d, arrays, shapes=True)
    assert_close(exported, got, 1e-10, "exported numpy code for fixed shapes vs evaluate")


# ---------------------------------------------------------------------------
# Hessians of scalar results
# ---------------------------------------------------------------------------

def check_hessian(p, seed):
    _describe(p, seed)
    rng = random.Random(seed)
    arrays = random_inputs(p, seed)
    small = [n for n in p.inputs if int(np.prod(p.shapes[n])) <= 27] or list(p.inputs)
    w = rng.choice(small)
    nd = len(p.shapes[w])
    a, b = WRT_LETTERS[:nd], WRT_LETTERS[nd:2 * nd]
    if nd and rng.random() < 0.2:
        wrt, order = [w, w], None
    else:
        wrt, order = [f"{w}_{a}" if nd else w, f"{w}_{b}" if nd else w], tuple(a + b)
    layout = rng.choice(["numerator", "denominator"])
    note(f"diff(wrt={wrt!r}, layout={layout!r})")
    d = ed.diff(p.text, wrt=wrt, layout=layout)
    note(f"hessian:\n{d}")
    if order is not None:
        assert tuple(d.indices) == order
    assert len(d.indices) == 2 * nd
    got = d.evaluate(**_core_args(d, arrays))
    want = _converged(fd_hessian, p, arrays, w, h=6e-4, what="hessian", tol=RTOL_2 / 10)
    assert_close(got, want, RTOL_2, "hessian vs finite differences")


# ---------------------------------------------------------------------------
# forward mode (differential) and reverse mode (vjp)
# ---------------------------------------------------------------------------

def check_differential_and_vjp(p, seed):
    _describe(p, seed)
    rng = random.Random(seed)
    arrays = random_inputs(p, seed)
    tangents = random_inputs(p, seed + 1)

    dprog = ed.differential(p.text)
    note(f"differential:\n{dprog}")
    args = {}
    for n in dprog.inputs:
        if n in arrays:
            args[n] = arrays[n]
        else:
            assert n.startswith("d") and n[1:] in tangents, (n, dprog.inputs)
            args[n] = tangents[n[1:]]
    want = _converged(fd_directional, p, arrays, tangents, h=2e-4, what="directional", tol=RTOL_1 / 10)
    assert_close(dprog.evaluate(**args), want, RTOL_1,
                 "differential vs directional finite differences")

    out_shape = p.out_shapes[p.output]
    g = np.random.default_rng(seed + 2).standard_normal(out_shape)
    if rng.random() < 0.3 and len(p.inputs) > 1:
        names = list(p.inputs)
        v = ed.vjp(p.text, wrt=names, cotangent="G")
        note(f"vjp:\n{v}")
        res = v.evaluate(**_core_args(v, {**arrays, "G": g}))
        assert isinstance(res, dict) and set(res) == set(names), res
    else:
        names = [rng.choice(p.inputs)]
        v = ed.vjp(p.text, wrt=names[0], cotangent="G")
        note(f"vjp:\n{v}")
        res = {names[0]: v.evaluate(**_core_args(v, {**arrays, "G": g}))}
    for n in names:
        jac = _converged(fd_jacobian, p, arrays, n, h=2e-4, what="jacobian", tol=RTOL_1 / 10)
        want = np.tensordot(g, jac, axes=len(out_shape))
        assert_close(res[n], want, RTOL_1, f"vjp wrt {n} vs G . jacobian")


# ---------------------------------------------------------------------------
# round trips through the text form
# ---------------------------------------------------------------------------

def _derivative_text_value(d, p, arrays, result_sizes):
    """The text of ``d`` re-parsed and evaluated: (value, the sizes= it asked for).

    ``str(d)`` writes the left-hand side as ``dC_ik/dA_pq``, which the parser does not read:
    the last line gets ``R_<d.indices>`` instead. ``sizes=`` is given, as a user would, only
    for the indices the re-parse says no array carries (an index of the result that only a δ
    carries; a left-hand index of an intermediate that simplification emptied, ``h_i = 0``).
    sizes= is for such indices (SPEC §2); a size for every index of the result would also
    reach a letter that names another dimension in another statement, and contradict it.
    """
    text = str(d)
    lines = text.split("\n")
    lhs, rhs = lines[-1].split(" = ", 1)
    name = "R" + (("_" + "".join(d.indices)) if d.indices else "")
    src = "\n".join(lines[:-1] + [f"{name} = {rhs}"])
    given = {}
    while True:
        try:
            back = ed.parse(src, sizes=given)
            kw = {"sizes": given} if given else {}
            return back.evaluate(**_core_args(back, arrays), **kw), given
        except ed.IndexSizeError as err:
            asked = re.search(r"index '(\w+)' of '(\w+)'", str(err))
            if asked is None or asked.group(1) in given:
                raise
            index, stmt = asked.groups()
            given[index] = result_sizes[index] if stmt == "R" else p.sizes[index]


def check_round_trips(p, seed):
    """parse(str(parse(s))) means the same program (same values)."""
    _describe(p, seed)
    prog = ed.parse(p.text)
    try:
        again = ed.parse(str(prog))
    except ed.IndexSizeError as err:
        # simplification cancelled every term that carried a left-hand index (g - g): the
        # text then needs sizes=, like any formula with such an index; nothing to compare
        assert "left-hand index" in str(err), str(err)
        assume(False)
    note(f"str(parse(s)):\n{prog}")
    arrays = random_inputs(p, seed)
    assert_close(again.evaluate(**_core_args(again, arrays)), prog.evaluate(**_core_args(prog, arrays)),
                 1e-12, "parse(str(parse(s))) vs parse(s)")


def check_derivative_round_trips(p, seed):
    """The text of a derivative re-parses to the same values."""
    _describe(p, seed)
    rng = random.Random(seed)
    arrays = random_inputs(p, seed)
    w = rng.choice(p.inputs)
    nd = len(p.shapes[w])
    wrt = _wrt_spec(rng, w, nd, WRT_LETTERS[:nd])
    d = ed.diff(p.text, wrt=wrt)
    got = d.evaluate(**_core_args(d, arrays))
    note(f"str(derivative):\n{d}")
    value, given = _derivative_text_value(d, p, arrays, dict(zip(d.indices, got.shape)))
    note(f"sizes= given to the re-parsed text: {given}")
    if not np.allclose(value, got, rtol=1e-10, atol=1e-10 * _scale(got)):
        _skip_if_rounding_dominates(d, arrays, got, 1e-10)
    assert_close(value, got, 1e-10, "str(derivative) re-parsed vs the derivative")


def _skip_if_rounding_dominates(obj, arrays, value, rtol):
    """Skip (``reject``) a program whose value moves by more than a tenth of the tolerance
    when its inputs move by a relative 1e-15 (a few ulps): float64 does not determine it to
    the tolerance, so an evaluation in another order (the re-parsed text) cannot be judged."""
    rng = np.random.default_rng(0)
    moved = {n: np.asarray(arrays[n]) * (1 + 1e-15 * rng.uniform(-1, 1, np.shape(arrays[n])))
             for n in obj.inputs}
    drift = np.max(np.abs(np.asarray(obj.evaluate(**_core_args(obj, moved))) - value), initial=0.0)
    if drift > rtol * _scale(value) / 10:
        note(f"a relative 1e-15 change of the inputs moves the value by {drift:.3g}; skipped")
        reject()


# ---------------------------------------------------------------------------
# jax.jacobian of the same reference (optional)
# ---------------------------------------------------------------------------

@pytest.mark.skipif(jax is None, reason="jax is not installed")
@_settings(N_JAX)
@given(programs(max_statements=3), st.integers(0, 2 ** 32 - 1))
def test_jacobian_matches_jax(p, seed):
    _describe(p, seed)
    rng = random.Random(seed)
    arrays = random_inputs(p, seed)
    w = rng.choice(p.inputs)
    nd = len(p.shapes[w])

    def f(x):
        return p.evaluate({**arrays, w: x}, xp=jnp)

    want = np.asarray(jax.jit(jax.jacobian(f))(jnp.asarray(arrays[w])))
    d = ed.diff(p.text, wrt=f"{w}_{WRT_LETTERS[:nd]}" if nd else w)
    note(f"derivative:\n{d}")
    assert_close(d.evaluate(**_core_args(d, arrays)), want, 1e-8, "jacobian vs jax.jacobian")


# ---------------------------------------------------------------------------
# expression growth: high derivatives finish in seconds
# ---------------------------------------------------------------------------

def test_fourth_derivative_of_six_factor_product_is_fast():
    src = "L = A_ij B_jk C_kl D_lm E_mn F_ni"
    rng = np.random.default_rng(0)
    arrays = {n: rng.uniform(0.5, 1.5, (2, 2)) for n in "ABCDEF"}
    t0 = time.perf_counter()
    d = ed.diff(src, wrt=["A_ab", "C_cd", "E_ef", "B_gh"])
    got = d.evaluate(**_core_args(d, arrays))
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"fourth derivative took {elapsed:.1f} s"
    # L = tr(ABCDEF) is multilinear: d4L / dA_ab dC_cd dE_ef dB_gh = δ_bg δ_hc D_de F_fa
    want = np.einsum("bg,hc,de,fa->abcdefgh", np.eye(2), np.eye(2), arrays["D"], arrays["F"])
    assert_close(got, want, 1e-12, "fourth derivative of a product")


def test_fourth_derivative_wrt_one_factor_of_six_is_fast():
    src = "L = x_i x_i x_j x_j x_k x_k"   # (x.x)^3
    x = np.array([0.3, -0.7, 1.1])
    t0 = time.perf_counter()
    d = ed.diff(src, wrt=["x_a", "x_b", "x_c", "x_e"])
    got = d.evaluate(x=x)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"fourth derivative took {elapsed:.1f} s"
    # closed form of the 4th derivative of s^3, s = x.x
    s = x @ x
    eye = np.eye(3)
    sym_dd = (np.einsum("ab,ce->abce", eye, eye) + np.einsum("ac,be->abce", eye, eye)
              + np.einsum("ae,bc->abce", eye, eye))
    xx_d = sum(np.einsum(f"{p}{q},{r}{t}->abce", np.outer(x, x), eye)
               for p, q, r, t in [("a", "b", "c", "e"), ("a", "c", "b", "e"), ("a", "e", "b", "c"),
                                  ("b", "c", "a", "e"), ("b", "e", "a", "c"), ("c", "e", "a", "b")])
    # D1 = 6 s^2 x_a, D2 = 24 s x_a x_b + 6 s^2 δ_ab,
    # D3 = 48 x_a x_b x_c + 24 s (δ_ab x_c + δ_ac x_b + δ_bc x_a),
    # D4 = 24 s (δ_ab δ_ce + δ_ac δ_be + δ_ae δ_bc) + 48 (the six x x δ pairings)
    want = 24 * s * sym_dd + 48 * xx_d
    assert_close(got, want, 1e-10, "fourth derivative of (x.x)^3")


def test_tenth_derivative_of_exp_sum_is_fast_and_exact():
    src = "L = exp(sum_i(x_i))"
    x = np.array([0.1, -0.2, 0.05])
    wrt = [f"x_{c}" for c in "abcdefghjk"]
    t0 = time.perf_counter()
    d = ed.diff(src, wrt=wrt)
    got = d.evaluate(x=x)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"tenth derivative took {elapsed:.1f} s"
    assert got.shape == (3,) * 10
    # every mixed 10th partial derivative of exp(sum x) is exp(sum x)
    np.testing.assert_allclose(got, np.full((3,) * 10, np.exp(x.sum())), rtol=1e-12)
    assert len(str(d)) < 200, f"like terms were not merged: {str(d)[:300]}"


@_settings(N_JACOBIAN)
@given(programs(), st.integers(0, 2 ** 32 - 1))
def test_value_and_jacobian_match_reference(p, seed):
    check_value_and_jacobian(p, seed)


@_settings(N_HESSIAN)
@given(programs(scalar_output=True, max_statements=2, max_depth=1), st.integers(0, 2 ** 32 - 1))
def test_hessian_matches_finite_differences(p, seed):
    check_hessian(p, seed)


@_settings(N_DIFFERENTIAL)
@given(programs(max_depth=1), st.integers(0, 2 ** 32 - 1))
def test_differential_and_vjp_match_jacobian(p, seed):
    check_differential_and_vjp(p, seed)


@_settings(N_ROUND_TRIP)
@given(programs(max_depth=1), st.integers(0, 2 ** 32 - 1))
def test_text_round_trips(p, seed):
    check_round_trips(p, seed)


@_settings(300)
@given(programs(max_depth=1), st.integers(0, 2 ** 32 - 1))
def test_derivative_text_round_trips(p, seed):
    check_derivative_round_trips(p, seed)


@pytest.mark.xfail(strict=False, reason="known limitation (about 7% of these programs): a "
                   "coefficient with a denominator over 10^6 prints as its nearest float "
                   "(0.999449822159508), which reads back as another fraction; a dimension is "
                   "named after the first axis that gives it; a nested expression broadcast along "
                   "an index keeps it. The values agree (test_text_round_trips)")
@_settings(200)
@given(programs(max_depth=1), st.integers(0, 2 ** 32 - 1))
def test_text_round_trips_to_an_equal_ir(p, seed):
    _describe(p, seed)
    prog = ed.parse(p.text)
    assert ed.parse(str(prog)) == prog


# ---------------------------------------------------------------------------
# minimal programs of the core bugs the random programs found (strict xfail: when a bug
# is fixed the test XPASSes, fails, and its marker must go)
# ---------------------------------------------------------------------------

def _fd_core(prog, arrays, wrt, h=1e-6):
    """Central differences of einderiv's own evaluate (independent of its derivatives)."""
    x = np.asarray(arrays[wrt], dtype=np.float64)
    f0 = np.asarray(prog.evaluate(**_core_args(prog, arrays)))
    jac = np.zeros(f0.shape + x.shape)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fp = prog.evaluate(**_core_args(prog, {**arrays, wrt: xp}))
        fm = prog.evaluate(**_core_args(prog, {**arrays, wrt: xm}))
        jac[(...,) + idx] = (np.asarray(fp) - np.asarray(fm)) / (2 * h)
    return jac


def test_fixed_merged_terms_capture_summation_indices():
    b = np.arange(1.0, 10.0).reshape(3, 3) / 10
    x = np.array(0.7)
    d = ed.diff("L = B_jj B_kk exp(x) x", wrt="x")
    want = np.exp(x) * (1 + x) * np.trace(b) ** 2
    np.testing.assert_allclose(d.evaluate(B=b, x=x), want, rtol=1e-12)


@pytest.mark.parametrize("src, shapes, seed, atol", [
    # merged terms captured indices of different sizes
    ("h = softplus(2 A_nn + A_jj) B_kkn; L = h h + h", {"A": (2, 2), "B": (3, 3, 2)}, 1, 0.0),
    # a five-factor product with two contractions
    ("L = A_vl A_jl B_jli A_uk B_unn", {"A": (3, 2), "B": (3, 2, 2)}, 2, 0.0),
    # a Jacobian through a diagonal of an intermediate
    ("h_njim = A_nu (A_jk + A_jk A_{i,k}) A_mk\nL_i = h_jijj / A_{j,v}", {"A": (2, 2)}, 3, 1e-6),
], ids=["merged-terms-of-different-sizes", "five-factor-product", "diagonal-of-an-intermediate"])
def test_fixed_jacobians_against_finite_differences(src, shapes, seed, atol):
    rng = np.random.default_rng(seed)
    arrays = {name: rng.uniform(0.5, 1.5, shape) for name, shape in shapes.items()}
    d = ed.diff(src, wrt="A_pq")
    want = _fd_core(ed.parse(src), arrays, "A")
    np.testing.assert_allclose(d.evaluate(**_core_args(d, arrays)), want, rtol=1e-6, atol=atol)


def test_fixed_text_form_ties_dummies_across_terms():
    prog = ed.parse("L = A_ij + B_jk")
    a, b = np.ones((2, 3)), np.ones((3, 4))
    assert prog.evaluate(A=a, B=b) == 18.0
    again = ed.parse(str(prog))
    assert again == prog
    assert again.evaluate(A=a, B=b) == 18.0


def test_fixed_text_form_of_a_size_factor_does_not_parse():
    prog = ed.parse("L = sum_i(x_i + y)")
    again = ed.parse(str(prog))
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(again.evaluate(x=x, y=0.5), prog.evaluate(x=x, y=0.5))


def test_fixed_folded_constant_round_trip():
    prog = ed.parse("L = tan(0.5) x")
    assert ed.parse(str(prog)) == prog


def test_fixed_broadcast_delta_term_keeps_its_size_factor():
    c = np.arange(1.0, 7.0).reshape(2, 3) / 10
    got = ed.parse("L = (C_lm C_nm + delta_nl)").evaluate(C=c)
    want = np.einsum("lm,nm->", c, c) + 3 * 2
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fixed_export_with_a_constant_intermediate():
    d = ed.diff("h = 2; L = A_l h^2", wrt="A")
    a = np.array([0.5, 1.0, 1.5])
    ns = {}
    exec(compile(d.to_source("numpy"), "<export>", "exec"), ns)
    np.testing.assert_allclose(ns["derivative"](a), d.evaluate(A=a))
    np.testing.assert_allclose(d.evaluate(A=a), [4.0, 4.0, 4.0])


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.int64])
@pytest.mark.parametrize("shapes", [False, True])
def test_fixed_export_negates_integer_inputs_as_floats(dtype, shapes):
    """A lone minus in exported code once negated in the input's own type: uint8 wrapped
    (-1 → 255), bool raised. Exported code must give evaluate's (float) values."""
    arrays = {"W": np.array([[1, 0], [1, 1]]).astype(dtype), "b": np.array([1, 0]).astype(dtype),
              "x": np.array([1, 1]).astype(dtype)}
    for src, wrt in [("y_i = b_i - W_ij x_j", "x_p"), ("z = sigmoid(-x_l)", "x_p")]:
        d = ed.diff(src, wrt)
        sub = {k: arrays[k] for k in d.inputs}
        got = np.asarray(_exec_export(d, sub, shapes=shapes))
        want = d.evaluate(**sub)
        assert got.dtype.kind == "f"
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
