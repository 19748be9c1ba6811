"""Independent numerical references for the einderiv tests.

Nothing here uses einderiv's differentiation: derivatives are central finite differences
in float64 of plain numpy functions written by hand.  The only einderiv-facing helpers
(``evaluate`` and ``split_wrt``) just call the public interface and check what it returns.

Conventions
-----------
* A reference function ``f`` takes keyword arrays and returns an array (or a float).
* ``fd_jacobian(f, inputs, wrt_name, eps)`` returns ``out_shape + wrt_shape``:
  numerator layout, the order ``jax.jacobian`` uses.
* ``permute_layout(ref, out_letters, wrt_letters, layout)`` turns such a numerator-layout
  array into the denominator layout or into an explicit order of index letters.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "fd_jacobian",
    "fd_derivative",
    "random_inputs",
    "permute_layout",
    "layout_letters",
    "split_wrt",
    "index_letters",
    "fresh_letters",
    "evaluate",
    "assert_close",
]


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------

_STENCILS = {
    # offsets (in units of eps) and weights of the central first-derivative stencils
    2: ((1.0, -1.0), (0.5, -0.5)),
    4: ((2.0, 1.0, -1.0, -2.0), (-1.0 / 12.0, 8.0 / 12.0, -8.0 / 12.0, 1.0 / 12.0)),
}


def fd_jacobian(f, inputs, wrt_name, eps=1e-6, stencil=2):
    """Central finite-difference Jacobian of ``f(**inputs)`` with respect to ``inputs[wrt_name]``.

    Returns an array of shape ``out_shape + wrt_shape`` (numerator layout), float64.
    ``stencil=2`` is the classic (f(x+h) - f(x-h)) / 2h, error O(h^2); ``stencil=4`` is the
    five-point formula, error O(h^4), which is accurate enough to be nested for higher
    derivatives (use eps ~ 1e-3 there).
    """
    offsets, weights = _STENCILS[stencil]
    base = {k: np.array(v, dtype=np.float64, copy=True) for k, v in inputs.items()}
    x0 = base[wrt_name]
    out0 = np.asarray(f(**base), dtype=np.float64)
    jac = np.zeros(out0.shape + x0.shape, dtype=np.float64)
    flat_jac = jac.reshape(out0.shape + (x0.size,))
    for n in range(x0.size):
        acc = np.zeros(out0.shape, dtype=np.float64)
        for off, w in zip(offsets, weights):
            x = x0.copy()
            x.reshape(-1)[n] += off * eps
            args = dict(base)
            args[wrt_name] = x
            acc = acc + w * np.asarray(f(**args), dtype=np.float64)
        flat_jac[..., n] = acc / eps
    return jac


def fd_derivative(f, inputs, wrt_names, eps=None, stencil=None):
    """Derivative of ``f`` wrt the list ``wrt_names`` (nested finite differences).

    ``wrt_names=["x", "x"]`` is the Hessian, shape ``out + x.shape + x.shape`` (axes of the
    first entry first).  One name: a plain ``fd_jacobian``.  For more than one name the
    five-point stencil is used with eps = 1e-3 (nesting the two-point stencil with a tiny
    step would amplify rounding error).
    """
    if isinstance(wrt_names, str):
        wrt_names = [wrt_names]
    wrt_names = list(wrt_names)
    if stencil is None:
        stencil = 2 if len(wrt_names) == 1 else 4
    if eps is None:
        eps = 1e-6 if len(wrt_names) == 1 else 1e-3

    g = f
    for name in wrt_names[:-1]:
        g = _jac_function(g, name, eps, stencil)
    return fd_jacobian(g, inputs, wrt_names[-1], eps=eps, stencil=stencil)


def _jac_function(f, name, eps, stencil):
    def jf(**kw):
        return fd_jacobian(f, kw, name, eps=eps, stencil=stencil)

    return jf


# ---------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------


def random_inputs(shapes, seed=0, positive=(), unit=()):
    """Random float64 arrays.

    ``shapes``: {name: shape}.  Names in ``positive`` get values in [0.5, 2] (safe for
    log, sqrt, division, real powers).  Names in ``unit`` get values in [0.1, 0.9].  All
    other names get values of random sign with magnitude in [0.3, 1.3]: never near zero,
    so relu and abs are evaluated away from their kinks.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        if name in positive:
            a = rng.uniform(0.5, 2.0, size=shape)
        elif name in unit:
            a = rng.uniform(0.1, 0.9, size=shape)
        else:
            a = rng.uniform(0.3, 1.3, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        out[name] = np.asarray(a, dtype=np.float64)
    return out


# ---------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------


def layout_letters(out_letters, wrt_letters, layout="numerator"):
    """The axis order (a list of index letters) a layout asks for.

    ``out_letters``: the output's indices (string or sequence).  ``wrt_letters``: a list of
    index groups, one per ``wrt`` entry (e.g. ``["pq"]`` or ``["p", "q"]``).
    """
    out = list(out_letters)
    wrt = [c for group in wrt_letters for c in group]
    if layout == "numerator":
        return out + wrt
    if layout == "denominator":
        return wrt + out
    order = list(layout)
    if sorted(order) != sorted(out + wrt):
        raise ValueError(f"explicit layout {layout!r} is not a permutation of {out + wrt}")
    return order


def permute_layout(ref, out_letters, wrt_letters, layout):
    """Permute a numerator-layout array (out axes, then each wrt group's axes) to ``layout``."""
    ref = np.asarray(ref)
    num = layout_letters(out_letters, wrt_letters, "numerator")
    if ref.ndim != len(num):
        raise ValueError(f"array of rank {ref.ndim} but {len(num)} index letters {num}")
    target = layout_letters(out_letters, wrt_letters, layout)
    return np.transpose(ref, [num.index(c) for c in target])


# ---------------------------------------------------------------------------
# formula text helpers (plain string handling, no einderiv)
# ---------------------------------------------------------------------------

_IDX_RE = re.compile(r"_(\{[^}]*\}|[A-Za-z\u0370-\u03ff]+)")


def index_letters(src):
    """Every index letter used in a formula written with one-letter indices."""
    letters = set()
    for m in _IDX_RE.finditer(src):
        group = m.group(1).strip("{}")
        letters.update(c for c in group if c.isalpha())
    return letters


def fresh_letters(src, n, avoid=()):
    """``n`` one-letter index names that do not occur as indices in ``src``."""
    used = index_letters(src) | set(avoid)
    pool = [c for c in "pqrstuvwmnoghefcdablxyz" if c not in used]
    if len(pool) < n:
        raise ValueError("not enough fresh letters")
    return pool[:n]


def split_wrt(spec):
    """``"A_pq"`` -> ("A", "pq"); ``"A"`` -> ("A", "")."""
    if "_" in spec:
        name, idx = spec.split("_", 1)
        return name, idx.strip("{}")
    return spec, ""


# ---------------------------------------------------------------------------
# evaluating an einderiv program and comparing
# ---------------------------------------------------------------------------


def evaluate(prog, arrays, expected_shape=None, **kwargs):
    """Evaluate an einderiv Program with the arrays it declares as inputs.

    Only the names in ``prog.inputs`` are passed (a derivative may no longer need some of
    the original inputs).  If the program cannot find the size of an index that way (for
    example ``2 δ_pq`` needs no array at all), the sizes of its result axes are passed with
    ``sizes=`` -- the documented way to give a size that no array carries.
    """
    missing = [k for k in prog.inputs if k not in arrays]
    if missing:
        raise AssertionError(f"program needs inputs {missing} that the test does not have; "
                             f"inputs={prog.inputs}")
    args = {k: arrays[k] for k in prog.inputs}
    try:
        out = prog.evaluate(**args, **kwargs)
    except ValueError:
        if expected_shape is None or "sizes" in kwargs:
            raise
        sizes = dict(zip(prog.indices, expected_shape))
        out = prog.evaluate(**args, sizes=sizes, **kwargs)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return np.asarray(out)


def assert_close(got, ref, rtol=1e-6, atol=None, atol_rel=1e-8, nonzero=True, what=""):
    """Compare shapes exactly, then values.

    ``atol`` defaults to ``atol_rel * max(1, max|ref|)``: finite differences carry an
    absolute error proportional to the scale of the values involved, so entries that are
    exactly zero in the truth come out as ~1e-10 in the reference.  With ``nonzero`` the
    reference must not be (numerically) all zero, so a test cannot pass vacuously.
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != expected {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values in result"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if nonzero:
        assert scale > 1e-6, f"{what}: reference is all zero; test would be vacuous"
    if atol is None:
        atol = atol_rel * max(1.0, scale)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=what)
