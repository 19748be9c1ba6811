"""Derivative rules, one per node type, and the chain rule through programs.

``derive(e, seed, wrt)`` differentiates an expression: ``seed(tensor)`` says what the
derivative of one tensor occurrence is (Kronecker deltas for the variable, an intermediate's
own derivative for the chain rule, a tangent ``dA`` for a differential, an unknown Jacobian
``dAdX`` for ``depends=``), ``wrt`` names the new free indices and their dimensions.
The results are simplified as they are built.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Callable, Optional

from . import simplify as S
from .functions import FUNCTIONS
from .ir import Delta, Expr, Func, Power, Size, Tensor, Term, rename_expr, term_indices

__all__ = ["derive", "delta_seed"]

Seed = Callable[[Tensor], Optional[Expr]]


def derive(e: Expr, seed: Seed, wrt: dict) -> Expr:
    """Sum rule: d(Σ_t t) = Σ_t dt; the result has the indices of ``e`` and of ``wrt``."""
    dims = {**e.dim_map, **wrt}
    pieces = []
    for term in e.terms:
        d = derive_term(term, e, seed, wrt)
        if d is not None:
            pieces.extend(d)
    return S.expr(dims, pieces)


def derive_term(term: Term, context: Expr, seed: Seed, wrt: dict):
    """Product rule: d(c f1 f2 ... fn) = Σ_k c f1 ... dfk ... fn.

    Summed indices of the term stay summed; ``dfk`` is distributed into the product, its
    own summed indices renamed apart.
    """
    out = []
    factors = term.factors
    free = set(context.indices) | set(wrt)
    for k, f in enumerate(factors):
        df = derive_factor(f, seed, wrt)
        if df is None or S.is_zero(df):
            continue
        others = factors[:k] + factors[k + 1:]
        rest = Expr((), (), (Term(term.coeff, others),))
        # rest carries no free indices of its own: everything in it is visible to df
        out.extend(_distribute(rest, df, free))
    return out


def _distribute(rest: Expr, df: Expr, free: set):
    """Terms of ``rest · df`` where the indices of ``rest``'s single term are all kept.

    A summed index of ``df`` is renamed only where it meets an index of ``rest`` or a free
    index of the result (``free``); the others keep their (canonical) names, so the product
    is already in canonical form more often and simplifies without a rename.
    """
    (r,) = rest.terms
    df = S.group(df)
    lifted = S._lift(df, set(term_indices(r)) | free)
    return [Term(S.times(r.coeff, t.coeff), r.factors + t.factors) for t in lifted]


@singledispatch
def derive_factor(f, seed: Seed, wrt: dict) -> Optional[Expr]:
    raise TypeError(f"no derivative rule for {type(f).__name__}")


@derive_factor.register
def _(f: Tensor, seed, wrt):
    """A tensor: whatever the seed says (δ_ip δ_jq for the variable itself, else 0)."""
    return seed(f)


@derive_factor.register
def _(f: Delta, seed, wrt):
    """A Kronecker delta is constant: dδ_ij = 0."""
    return None


@derive_factor.register
def _(f: Size, seed, wrt):
    """A size is constant."""
    return None


@derive_factor.register
def _(f: Func, seed, wrt):
    """Chain rule: d f(u) = f'(u) du, with f' from the function table."""
    du = derive(f.arg, seed, wrt)
    if S.is_zero(du):
        return None
    return S.mul(FUNCTIONS[f.name].derivative(f.arg), du)


@derive_factor.register
def _(f: Power, seed, wrt):
    """Power rule: d(u^n) = n u^(n-1) du; in general d(u^v) = u^v log u dv + v u^(v-1) du.

    The du term keeps u^(v-1), not u^v / u: at u = 0 with v = 2 that is 2 · 0 = 0, where
    u^v / u would be 0 / 0 = NaN. A base that is the number 0 has no dv term: 0^v = 0 for
    every v > 0.
    """
    du = derive(f.base, seed, wrt)
    n = S.const_value(f.exponent)
    if n is not None:
        if S.is_zero(du):
            return None
        return S.mul(S.scale(S.power(f.base, S.const(n - 1)), n), du)
    dv = derive(f.exponent, seed, wrt)
    parts = []
    here = S.power(f.base, f.exponent)
    if not S.is_zero(dv) and not S.is_zero(f.base):
        parts.append(S.mul(here, dv, S.func("log", f.base)))
    if not S.is_zero(du):
        less_one = S.power(f.base, S.add(f.exponent, S.const(-1)))
        parts.append(S.mul(f.exponent, less_one, du))
    if not parts:
        return None
    return S.add(*parts)


def delta_seed(name: str, wrt_indices: tuple, wrt_dims: tuple):
    """The seed of the variable ``name``: ∂A_ij/∂A_pq = δ_ip δ_jq."""

    def seed(t: Tensor):
        if t.name != name:
            return None
        dims = dict(zip(t.indices, t.dims))
        factors = []
        for i, w, d in zip(t.indices, wrt_indices, wrt_dims):
            a, b = sorted((i, w))
            factors.append(Delta(a, b, d))
            dims[w] = d
        return S.expr(dims, [Term(S.ONE, tuple(factors))])

    return seed


def rename_result(e: Expr, lhs: tuple, used: tuple) -> Expr:
    """An intermediate's derivative (over its left-hand indices) read with other indices."""
    mapping = dict(zip(lhs, used))
    renamed = rename_expr(e, mapping)
    if len(set(used)) != len(used):
        renamed = S.expr(renamed.dim_map, renamed.terms)
    return renamed

