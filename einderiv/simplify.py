"""Canonicalizing constructors: every Expr is built here, already simplified.

A term is simplified in its context (the set of free indices of its Expr): Kronecker deltas
that touch a summed index are eliminated by renaming (``Σ_j δ_ij B_jk = B_ik``), ``δ_ii``
becomes 1 or the size of the dimension, equal factors are merged into powers, constants are
folded, and summed indices get canonical names so that like terms merge and zeros vanish.
"""

from __future__ import annotations

import itertools
import math
import operator
from fractions import Fraction

from .errors import EinderivError
from .ir import (
    ONE, Delta, Expr, Func, Power, Size, Tensor, Term, factor_dims, factor_indices, fresh_index,
    remember, rename_factor, rename_term, term_dims, term_indices,
)

__all__ = [
    "expr", "const", "zero", "factor_expr", "add", "mul", "scale", "contract", "func",
    "power", "const_value", "is_zero", "MAX_TERMS", "group", "has_delta",
]

MAX_TERMS = 20000  # a derivative growing past this many terms raises instead of hanging


def _number(value):
    """Keep exact rationals exact; turn an integral float into a Fraction. A constant beyond
    float64 raises (evaluation could not hold it)."""
    if isinstance(value, Fraction):
        return _within_float(value)
    if isinstance(value, int):
        return _within_float(Fraction(value))
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return Fraction(int(value))
    return value


FLOAT_MAX_BITS = 1024  # |c| < 2^1024 is what float64 holds


def _within_float(c: Fraction) -> Fraction:
    if c.numerator and abs(c.numerator).bit_length() - c.denominator.bit_length() >= FLOAT_MAX_BITS - 1:
        try:
            float(c)
        except OverflowError:
            digits = int((abs(c.numerator).bit_length() - c.denominator.bit_length()) * math.log10(2))
            raise EinderivError(f"a constant of about 1e{digits} is beyond float64 "
                                "(at most about 1.8e308)") from None
    return c


def _power_of_number(c, n):
    """``c ^ n`` for numbers: exact while the result stays small, else in float64."""
    if isinstance(n, Fraction) and n.denominator == 1:
        c = Fraction(c)
        size = max(abs(c.numerator).bit_length(), c.denominator.bit_length())
        if size * abs(n.numerator) <= 4 * FLOAT_MAX_BITS:
            return _within_float(c ** int(n))
    elif c < 0:
        raise EinderivError(f"({c})^{n} is not a real number")
    try:
        result = float(c) ** float(n)
    except OverflowError:
        result = math.inf
    except ZeroDivisionError:
        raise EinderivError("division by zero: 0 raised to a negative power") from None
    if not math.isfinite(result):
        raise EinderivError(f"({float(c):.6g})^({float(n):.6g}) is beyond float64 (at most about 1.8e308)")
    return _decimal(result)


def times(a, b):
    """``a · b`` for coefficients, without arithmetic when one of them is the common 1."""
    if a is ONE:
        return b
    if b is ONE:
        return a
    return a * b


# --- keys: a total order on factors, summed indices masked -----------------------------------

def _name(index, mask):
    return "*" if index in mask else index


_KEYS: dict = {}


def factor_key(factor, mask=frozenset(), own=None):
    """A sortable key of a factor (summed indices in ``mask`` shown as ``*``), memoized.

    The key without a mask is memoized under the factor itself. With one, only the factor's
    own indices of ``mask`` matter, so the memo is keyed on those: the factors of one long
    product share hits, and a hit does not compare the whole mask. ``own`` is
    ``factor_indices(factor)`` where the caller has it already. A masked key of a tensor, a
    δ or a size is short: spelling it out costs less than a memo lookup."""
    if mask:
        kind = type(factor)
        if kind is Tensor or kind is Delta or kind is Size:
            return _factor_key(factor, mask)
        mask = mask.intersection(factor_indices(factor) if own is None else own)
        if mask:
            cache_key = (factor, mask)
            key = _KEYS.get(cache_key)
            if key is None:
                key = remember(_KEYS, cache_key, _factor_key(factor, mask))
            return key
    key = _KEYS.get(factor)
    if key is None:
        key = remember(_KEYS, factor, _factor_key(factor, mask))
    return key


# A key is flat: a tuple of ``OPEN``, ``CLOSE`` and ``(2, atom)`` items that orders exactly as
# the nested tuple it spells out, but compares in time linear in its length (nested tuples
# compare in time quadratic in their depth, which made deeply nested functions slow).
# The keys are spelled out item by item below (no generators): they are built for every
# factor of every term simplified.
_OPEN, _CLOSE = (1,), (0,)
_SIZE, _DELTA, _TENSOR, _FUNC, _POWER = (2, 0), (2, 1), (2, 2), (2, 3), (2, 4)


_TWO = itertools.repeat(2)


def _atoms(indices, mask):
    """The atoms of index names, those in ``mask`` shown as ``*n``, n the first place the
    index takes among ``indices`` (``B_kkk`` and ``B_iij`` differ with k, i, j masked), an
    iterator."""
    if mask and not mask.isdisjoint(indices):
        first = {}
        indices = [f"*{first.setdefault(i, n)}" if i in mask else i
                   for n, i in enumerate(indices)]
    return zip(_TWO, indices)


def _factor_key(factor, mask):
    kind = type(factor)
    if kind is Tensor:
        return (_OPEN, _TENSOR, (2, factor.name), _OPEN, *_atoms(factor.indices, mask), _CLOSE,
                _CLOSE)
    if kind is Func:
        return (_OPEN, _FUNC, (2, factor.name), *expr_key(factor.arg, mask), _CLOSE)
    if kind is Power:
        return (_OPEN, _POWER, *expr_key(factor.base, mask), *expr_key(factor.exponent, mask),
                _CLOSE)
    if kind is Delta:
        return (_OPEN, _DELTA, (2, _name(factor.a, mask)), (2, _name(factor.b, mask)), _CLOSE)
    if kind is Size:
        return (_OPEN, _SIZE, (2, factor.dim), _CLOSE)
    raise TypeError(factor)


def expr_key(e: Expr, mask=frozenset()):
    """The flat key of ``((indices), ((coeff, (factor keys)), ...))``.

    With indices of ``mask`` among the expression's, the terms and their factors are keyed
    in the order of their masked keys, not in the expression's order: that order rests on
    the names the mask hides."""
    inner = mask.intersection(e.indices) if mask else mask
    if inner:
        shown = sorted(["*" if i in inner else i for i in e.indices])
        parts = [_OPEN, _OPEN, *zip(_TWO, shown), _CLOSE, _OPEN]
        keyed = []
        for t in e.terms:
            term = [_OPEN, (2, _coeff_key(t.coeff)), _OPEN]
            for key in sorted([factor_key(f, inner) for f in t.factors]):
                term += key
            term += (_CLOSE, _CLOSE)
            keyed.append(tuple(term))
        for key in sorted(keyed):
            parts += key
    else:
        parts = [_OPEN, _OPEN, *zip(_TWO, e.indices), _CLOSE, _OPEN]
        for t in e.terms:
            parts += (_OPEN, (2, _coeff_key(t.coeff)), _OPEN)
            for f in t.factors:
                parts += factor_key(f, inner)
            parts += (_CLOSE, _CLOSE)
    parts += (_CLOSE, _CLOSE)
    return tuple(parts)


def _coeff_key(c):
    """``float(c)``; for a Fraction the same correctly rounded quotient without the
    generic ``numbers.Rational.__float__``."""
    if c is ONE:
        return 1.0
    if type(c) is Fraction:
        return c.numerator / c.denominator
    return float(c)


# --- constants -------------------------------------------------------------------------------

def zero(dims: dict | None = None) -> Expr:
    dims = dims or {}
    order = tuple(sorted(dims))
    return Expr(order, tuple(map(dims.__getitem__, order)), ())


def const(value, dims: dict | None = None) -> Expr:
    value = _number(value)
    if value == 0:
        return zero(dims)
    dims = dims or {}
    order = tuple(sorted(dims))
    return Expr(order, tuple(map(dims.__getitem__, order)), (Term(value, ()),))


def is_zero(e: Expr) -> bool:
    return not e.terms


def const_value(e: Expr):
    """The number an expression without indices or factors stands for, else None."""
    if e.indices:
        return None
    if not e.terms:
        return Fraction(0)
    if len(e.terms) == 1 and not e.terms[0].factors:
        return e.terms[0].coeff
    return None


def factor_expr(factor) -> Expr:
    """The expression made of one factor."""
    if type(factor) is Tensor:  # already canonical: no δ, no power, every index free
        dims = dict(zip(factor.indices, factor.dims))
        order = tuple(sorted(dims))
        return Expr(order, tuple(map(dims.__getitem__, order)), (Term(ONE, (factor,)),))
    return expr(factor_dims(factor), [Term(ONE, (factor,))])


# --- the term normalizer ---------------------------------------------------------------------

_REBUILT: dict = {}


def _rebuild(e: Expr) -> Expr:
    """Re-canonicalize an expression and every expression nested in it, innermost first
    (memoized: the same nested expression is often shared by many factors)."""
    hit = _REBUILT.get(e)
    if hit is None:
        hit = remember(_REBUILT, e, _rebuild_all(e))
    return hit


def _rebuild_all(e: Expr) -> Expr:
    terms = []
    for t in e.terms:
        coeff = t.coeff
        factors = []
        for f in t.factors:
            # a function or a power goes through its constructor: a nested δ_ii that became 1
            # leaves 1^3, which folds; the constructors give one term, or none for a zero
            rebuilt = _recanon(f)
            if rebuilt is None:
                factors.append(f)
            elif not rebuilt:
                break
            else:
                (r,) = rebuilt
                coeff = times(coeff, r.coeff)
                factors.extend(r.factors)
        else:
            terms.append(Term(coeff, tuple(factors)))
    return expr(e.dim_map, terms)


def _recanon(factor):
    """Rebuild a factor's nested expressions after a rename (they may have merged indices)."""
    if isinstance(factor, Func):
        return func(factor.name, _rebuild(factor.arg)).terms
    if isinstance(factor, Power):
        base = _rebuild(factor.base)
        rebuilt = power(base, factor.exponent)
        if len(rebuilt.terms) > 1:
            return (Term(ONE, (Power(base, factor.exponent),)),)
        return rebuilt.terms
    return None


def _eliminate_deltas(factors: list, free: set):
    """δ elimination: Σ_j δ_ij f_j = f_i; δ_ii = 1 elementwise, n_i when summed alone."""
    changed = True
    while changed:
        changed = False
        for n, f in enumerate(factors):
            if not isinstance(f, Delta):
                continue
            rest = factors[:n] + factors[n + 1:]
            if f.a == f.b:
                if f.a not in free and not any(f.a in factor_indices(g) for g in rest):
                    rest.append(Size(f.dim, f.a))
                factors[:] = rest
                changed = True
                break
            if f.a not in free:
                old, new = f.a, f.b
            elif f.b not in free:
                old, new = f.b, f.a
            else:
                continue
            factors[:] = [rename_factor(g, {old: new}) for g in rest]
            if new not in free and not any(new in factor_indices(g) for g in factors):
                factors.append(Size(f.dim, new))  # Σ_ab δ_ab = n: the range of b stays
            changed = True
            break


def _base_and_exponent(factor):
    """Split ``g^n`` (numeric n) into (g, n), g a factor or a sum (an Expr); else (factor, 1)."""
    if isinstance(factor, Power):
        n = const_value(factor.exponent)
        base = factor.base
        if n is not None:
            if (len(base.terms) == 1 and base.terms[0].coeff == 1
                    and len(base.terms[0].factors) == 1
                    and set(factor_indices(base.terms[0].factors[0])) == set(base.indices)):
                return base.terms[0].factors[0], n
            return base, n
    return factor, ONE


def _power_of(base, n):
    """Rebuild ``base ^ n`` from a factor or an Expr base."""
    if isinstance(base, Expr):
        return Power(base, const(n))
    if n == 1:
        return base
    return Power(factor_expr(base), const(n))


def has_delta(e: Expr) -> bool:
    return any(isinstance(f, Delta) for t in e.terms for f in t.factors)


def group(e: Expr) -> Expr:
    """Keep a sum of two or more δ-free terms together as one factor ``(a + b)`` in a product,
    instead of multiplying it out; a sum holding a δ is multiplied out so the δ can go."""
    if len(e.terms) < 2 or has_delta(e):
        return e
    common = _common_factor([t.coeff for t in e.terms])
    if common != 1:
        e = Expr(e.indices, e.dims, tuple(Term(_number(t.coeff / common), t.factors) for t in e.terms))
    return Expr(e.indices, e.dims, (Term(common, (Power(e, const(1)),)),))


def _common_factor(coeffs):
    """The largest rational that divides every coefficient (sign of the first kept)."""
    if not all(isinstance(c, Fraction) for c in coeffs):
        return ONE
    num = 0
    den = 1
    for c in coeffs:
        num = math.gcd(num, c.numerator)
        den = den * c.denominator // math.gcd(den, c.denominator)
    g = Fraction(num, den)
    if all(c < 0 for c in coeffs):
        g = -g
    return g if g != 0 else ONE


def _merge_powers(factors: list, free: set) -> list:
    """f^a f^b = f^(a+b) for factors over the same indices."""
    if len(factors) < 2:
        return factors
    for f in factors:
        if type(f) is Power:
            break
    else:   # no powers: only a repeated factor merges
        kept = [f for f in factors if type(f) is not Delta and type(f) is not Size]
        if len(set(kept)) == len(kept):
            return factors
    groups: dict = {}
    for n, f in enumerate(factors):
        kind = type(f)
        if kind is Delta or kind is Size:
            groups[("unmerged", n)] = (f, ONE)
            continue
        base, exponent = _base_and_exponent(f) if kind is Power else (f, ONE)
        seen = groups.get(base)
        groups[base] = (base, exponent) if seen is None else (base, seen[1] + exponent)
    if len(groups) == len(factors):
        return factors
    merged = []
    for base, n in groups.values():
        if n == 0:
            lost = set(base.indices if isinstance(base, Expr) else factor_indices(base)) - free
            if lost:  # keep g^0 so a summed index does not silently lose its range
                merged.append(Power(base if isinstance(base, Expr) else factor_expr(base), const(0)))
        else:
            merged.append(_power_of(base, n))
    return merged


def _refined_keys(factors, own, dummies):
    """Sort keys with summed indices masked, refined by what each summed index touches
    (``own``: the indices of each factor): the masked keys of the factors holding it, with
    the axes it takes there (in ``X_ji A_jk X_ki`` the two ``X`` differ by the axis of ``A``
    each shares). None of it depends on the names of the summed indices."""
    base = [factor_key(f, dummies, idx) for f, idx in zip(factors, own)]
    touches = {d: [] for d in dummies}
    for f, key, idx in zip(factors, base, own):
        tensor = type(f) is Tensor
        for index in idx:
            if index in touches:
                axes = tuple([a for a, i in enumerate(f.indices) if i == index]) if tensor else ()
                touches[index].append((key, axes))
    for keys in touches.values():
        keys.sort()
    refined = []
    for f, key, idx in zip(factors, base, own):
        seen = [tuple(touches[i]) for i in idx if i in touches]
        if type(f) is not Tensor:
            seen.sort()        # a function's indices are listed by name
        refined.append((key, tuple(seen)))
    return refined


def _index_sequences(factor, mask):
    """The indices of ``mask`` (the summed indices being named) in the order they first
    appear when the factor is written out, nested ones included: a tuple of such sequences,
    one for each way the ties inside the factor can go.

    Inside a nested expression the terms and their factors are taken in the order of their
    keys with ``mask`` and the expression's own summed indices shown as ``*`` (the order the
    expression is printed in depends on the names being chosen from this sequence). Terms or
    factors that tie on those keys (``exp(B_iki + B_kjk)``, i, j, k summed outside) give one
    sequence for each of their orders, up to ``_MAX_SEQUENCES``; past that, just the first."""
    kind = type(factor)
    if kind is Tensor:
        return (factor.indices,)
    if kind is Delta:
        return ((factor.a, factor.b),)
    if kind is Func or kind is Power:
        e = factor.arg if kind is Func else factor.base
        key = (factor, mask.intersection(e.indices))
        hit = _SEQUENCES.get(key)
        if hit is None:
            hit = remember(_SEQUENCES, key, _nested_sequences(e, key[1]))
        return hit
    return ((),)


_SEQUENCES: dict = {}
_MAX_SEQUENCES = 8


def _nested_sequences(e: Expr, mask):
    """:func:`_index_sequences` of a function or power of ``e``."""
    if not mask:
        return ((),)
    holding = []      # (term, its factors that hold indices of mask)
    for t in e.terms:
        held = [g for g in t.factors if not mask.isdisjoint(factor_indices(g))]
        if held:
            holding.append((t, held))
    if len(holding) == 1 and len(holding[0][1]) == 1:
        # one factor holds them all: nothing to order here
        (g,) = holding[0][1]
        inner = mask.union(i for i in factor_indices(g) if i not in e.indices)
        rest = [i for i in e.indices if i in mask]
        return tuple(tuple(dict.fromkeys([i for i in sub if i in mask] + rest))
                     for sub in _index_sequences(g, inner))
    entries = []      # (term, the orders of its factors that hold mask, its inner mask)
    for t, held in holding:
        inner = mask.union(i for g in t.factors for i in factor_indices(g)
                           if i not in e.indices)
        if len(held) > 1:
            keys = [factor_key(g, inner) for g in held]
            orders = _tied_orders(sorted(range(len(held)), key=keys.__getitem__), keys)
            entries.append((t, [[held[n] for n in order] for order in orders], inner))
        else:
            entries.append((t, [held], inner))
    term_orders = [list(range(len(entries)))]
    if len(entries) > 1:
        keys = [(_coeff_key(t.coeff), sorted([factor_key(g, inner) for g in t.factors]))
                for t, _, inner in entries]
        term_orders = _tied_orders(sorted(range(len(entries)), key=keys.__getitem__), keys)
    sequences = {}
    for term_order in term_orders:
        for held_orders in itertools.product(*[entries[n][1] for n in term_order]):
            items = [(g, entries[n][2]) for n, held in zip(term_order, held_orders) for g in held]
            for subs in itertools.product(*[_index_sequences(g, inner) for g, inner in items]):
                seq = {}
                for sub in subs:
                    for i in sub:
                        if i in mask:
                            seq[i] = None
                # indices that no term holds (the expression is broadcast along them) last
                for i in e.indices:
                    if i in mask:
                        seq[i] = None
                sequences[tuple(seq)] = None
                if len(sequences) > _MAX_SEQUENCES:
                    return (next(iter(sequences)),)
    return tuple(sequences)


_FRESH: dict = {}


def _has_fresh(e: Expr) -> bool:
    """Whether a nested expression holds a summed index moved aside by a rename."""
    hit = _FRESH.get(e)
    if hit is None:
        hit = remember(_FRESH, e, _scan_fresh(e))
    return hit


def _scan_fresh(e: Expr) -> bool:
    for t in e.terms:
        for f in t.factors:
            for i in factor_indices(f):
                if i.startswith("_") and i[1:2].isdigit() and i not in e.indices:
                    return True
            if isinstance(f, Func) and _has_fresh(f.arg):
                return True
            if isinstance(f, Power) and _has_fresh(f.base):
                return True
    return False


def _settle(f):
    """Re-canonicalize the nested expression of a factor whose summed indices were moved
    aside (a rename to canonical names goes through :func:`_resettle`)."""
    kind = type(f)
    if kind is Func:
        if _has_fresh(f.arg):
            return Func(f.name, expr(f.arg.dim_map, f.arg.terms))
    elif kind is Power:
        if _has_fresh(f.base):
            return Power(expr(f.base.dim_map, f.base.terms), f.exponent)
    return f


def _resettle(f, names: frozenset):
    """:func:`_settle` after a rename to ``names``, at every depth that the rename reached:
    a nested expression is sorted by the names of its free indices, so one inside it that
    holds a renamed index is re-canonicalized first."""
    kind = type(f)
    if kind is not Func and kind is not Power:
        return f
    e = f.arg if kind is Func else f.base
    terms = []
    for t in e.terms:
        factors = [_resettle(g, names) if not names.isdisjoint(factor_indices(g)) else g
                   for g in t.factors]
        terms.append(t if all(map(operator.is_, factors, t.factors))
                     else Term(t.coeff, tuple(factors)))
    e = expr(e.dim_map, terms)
    return Func(f.name, e) if kind is Func else Power(e, f.exponent)


_DUMMY_NAMES = tuple(f"_d{n}" for n in range(16))   # the first canonical names, when free


def _canonical_names(free):
    n = 0
    while True:
        name = f"_d{n}"
        n += 1
        if name not in free:
            yield name


def _canonicalize(factors: list, free: frozenset) -> tuple:
    """Canonical order of factors and canonical names for summed indices.

    Summed indices are named ``_d0, _d1, ...`` in the order they appear along the factors
    sorted by their refined keys (:func:`_refined_keys`, which do not see the names), so that
    products equal up to the names of their summed indices come out identical. Where factors
    tie on those keys (``A_i A_k T_jik``: the two ``A`` play symmetric roles), every order of
    the tied factors is tried and the smallest result kept; so is every order of terms or
    factors that tie inside a nested expression (``exp(B_iki + B_kjk)``)."""
    # nested sums left with moved names
    factors = [_settle(f) if type(f) in _NESTED else f for f in factors]
    own = [factor_indices(f) for f in factors]
    dummies = frozenset().union(*own).difference(free)
    if len(dummies) == 1:
        (d,), (name,) = dummies, _dummy_names(1, free)
        return _renamed_sorted(factors, own, dummies, {d: name})
    if dummies:
        holders = [k for k, idx in enumerate(own) if not dummies.isdisjoint(idx)]
        if len(holders) == 1:
            # one factor holds every summed index: its names do not depend on the order of
            # the factors
            orders = [holders]
        else:
            keys = _refined_keys(factors, own, dummies)
            orders = _tied_orders(sorted(holders, key=keys.__getitem__), keys)
        candidates = [_renamed_sorted(factors, own, dummies, mapping)
                      for order in orders
                      for mapping in _mappings(order, factors, dummies, free)]
        if len(candidates) == 1:
            return candidates[0]
        return min(candidates, key=lambda c: [factor_key(f) for f in c])
    if len(factors) > 1:
        factors.sort(key=factor_key)
    return tuple(factors)


_MAX_TIED_ORDERS = 720


def _tied_orders(order, keys):
    """``order`` (factor positions sorted by ``keys``) and, where neighbours tie, the other
    orders of each run of equal keys; just ``[order]`` past ``_MAX_TIED_ORDERS``."""
    runs = []
    start = 0
    for k in range(1, len(order) + 1):
        if k == len(order) or keys[order[k]] != keys[order[start]]:
            runs.append(order[start:k])
            start = k
    if len(runs) == len(order):
        return [order]
    count = 1
    for run in runs:
        count *= math.factorial(len(run))
    if count > _MAX_TIED_ORDERS:
        return [order]
    return [list(itertools.chain.from_iterable(choice))
            for choice in itertools.product(*[itertools.permutations(run) for run in runs])]


def _dummy_names(n, free):
    """The first ``n`` canonical names of summed indices that are not free indices."""
    names = _DUMMY_NAMES[:n]
    if len(names) == n and free.isdisjoint(names):
        return names
    return tuple(itertools.islice(_canonical_names(free), n))


def _mappings(order, factors, dummies, free):
    """Summed index → canonical name, in order of first appearance along the factors
    ``order``: one mapping for each way the ties inside them go (:func:`_index_sequences`),
    up to ``_MAX_SEQUENCES``; past that, just the first."""
    names = _dummy_names(len(dummies), free)
    mapping = {}
    for pos, k in enumerate(order):
        if len(mapping) == len(dummies):
            break
        f = factors[k]
        sequences = (f.indices,) if type(f) is Tensor else _index_sequences(f, dummies)
        if len(sequences) > 1:
            return _tied_mappings(order, pos, factors, dummies, names, mapping)
        _name_new(mapping, sequences[0], dummies, names)
    return [mapping]


def _name_new(mapping, sequence, dummies, names):
    """Give the summed indices of ``sequence`` that ``mapping`` lacks the next ``names``."""
    for index in sequence:
        if index in dummies and index not in mapping:
            mapping[index] = names[len(mapping)]


def _tied_mappings(order, start, factors, dummies, names, mapping):
    """:func:`_mappings` from the factor ``order[start]`` on, given ``mapping`` so far."""
    found = {}

    def walk(pos, mapping):
        if len(mapping) == len(dummies) or pos == len(order):
            found.setdefault(tuple(mapping.items()), mapping)
            return
        f = factors[order[pos]]
        for seq in (f.indices,) if type(f) is Tensor else _index_sequences(f, dummies):
            more = dict(mapping)
            _name_new(more, seq, dummies, names)
            walk(pos + 1, more)
            if len(found) > _MAX_SEQUENCES:
                return

    walk(start, mapping)
    mappings = list(found.values())
    return mappings[:1] if len(mappings) > _MAX_SEQUENCES else mappings


def _renamed_sorted(factors, own, dummies, mapping):
    """The factors with their summed indices renamed by ``mapping``, sorted by their keys."""
    # one simultaneous rename, so canonical names never capture each other
    rename = {d: name for d, name in mapping.items() if name != d}
    if rename:
        names = frozenset(rename.values())
        factors = [_resettle(rename_factor(f, rename), names)
                   if not dummies.isdisjoint(idx) else f for f, idx in zip(factors, own)]
    else:
        factors = list(factors)
    if len(factors) > 1:
        factors.sort(key=factor_key)
    return tuple(factors)


_NESTED = (Func, Power)


_NORMAL: dict = {}


def normalize_term(coeff, factors, free) -> Term | None:
    """Simplify one product in the context of the free indices ``free``; None if zero."""
    hit = _normalized(coeff, tuple(factors), frozenset(free))
    return None if hit is None else Term(*hit)


def _normalized(coeff, factors: tuple, free: frozenset):
    """(coefficient, canonical factors) of a product, or None if it is zero."""
    if coeff is not ONE:
        coeff = _within_float(coeff) if type(coeff) is Fraction else _number(coeff)
        if not coeff:
            return None
    if len(factors) < 2 and (not factors or (type(factors[0]) is Tensor
                                              and free.issuperset(factors[0].indices))):
        return coeff, factors   # a number, or one tensor over free indices: nothing to do
    key = (factors, free)
    hit = _NORMAL.get(key)
    if hit is None:
        hit = remember(_NORMAL, key, _normalize_factors(list(factors), free))
    if hit is False:
        return None
    multiplier, canonical = hit
    if multiplier is ONE or multiplier == 1:
        return coeff, canonical
    return _number(coeff * multiplier), canonical


def _normalize_factors(factors: list, free):
    """(multiplier, canonical factors) of a product, or False when it is zero."""
    coeff = ONE
    has_delta = False
    for f in factors:
        kind = type(f)
        if kind is Power and is_zero(f.base):
            n = const_value(f.exponent)
            if n is not None and n > 0:
                return False
        elif kind is Delta:
            has_delta = True
    if has_delta:
        before = {f for f in factors if isinstance(f, (Func, Power))}   # a set: n cos factors
        _eliminate_deltas(factors, free)
        if before and any(isinstance(f, (Func, Power)) for f in factors):
            rebuilt = []
            for f in factors:
                if isinstance(f, (Func, Power)) and f not in before:
                    terms = _recanon(f)
                    if terms is None:
                        rebuilt.append(f)
                        continue
                    if not terms:
                        return False
                    (t,) = terms
                    coeff = _number(coeff * t.coeff)
                    rebuilt.extend(t.factors)
                else:
                    rebuilt.append(f)
            factors = rebuilt
    return coeff, _canonicalize(_merge_powers(factors, free), free)


def expr(dims: dict, terms) -> Expr:
    """The canonical Expr over the index set ``dims`` (index → dimension) with these terms."""
    free = frozenset(dims)
    if not isinstance(terms, (list, tuple)):
        terms = list(terms)
    if len(terms) == 1:
        lone = _lone_term(terms[0], free)
        if lone is not None:
            order = tuple(sorted(free))
            return Expr(order, tuple(map(dims.__getitem__, order)), lone)
    merged: dict = {}
    pending = list(terms)
    while pending:
        t = pending.pop()
        hit = _normalized(t.coeff, t.factors, free)
        if hit is None:
            continue
        coeff, factors = hit
        if len(factors) == 1 and type(factors[0]) is Power:
            lone = factors[0]
            if len(lone.base.terms) > 1 and const_value(lone.exponent) == 1:
                # a parenthesized sum that multiplies nothing is just its terms
                avoid = free | set(factor_indices(lone))
                pending.extend(Term(times(coeff, g.coeff), g.factors) for g in _lift(lone.base, avoid))
                continue
        count = len(merged)
        old = merged.setdefault(factors, coeff)
        if len(merged) == count:   # like terms: add the coefficients
            merged[factors] = _number(old + coeff)
    if len(merged) > MAX_TERMS:
        raise EinderivError(
            f"the expression grew to {len(merged)} terms (limit {MAX_TERMS}); "
            "differentiate fewer times or simplify the formula")
    kept = [Term(c, f) for f, c in merged.items() if c is ONE or c]   # a coefficient not 0
    if len(kept) > 1:
        kept.sort(key=lambda t: (tuple([factor_key(f) for f in t.factors]), _coeff_key(t.coeff)))
    order = tuple(sorted(free))
    return Expr(order, tuple(map(dims.__getitem__, order)), tuple(kept))


def _lone_term(term, free):
    """The terms of the Expr made of one term, when that needs no merging: ``()`` for a
    zero, ``(term,)`` for a product; None when it is a lone parenthesized sum, which
    :func:`expr` spreads into its terms."""
    hit = _normalized(term.coeff, term.factors, free)
    if hit is None:
        return ()
    coeff, factors = hit
    if (len(factors) == 1 and type(factors[0]) is Power and len(factors[0].base.terms) > 1
            and const_value(factors[0].exponent) == 1):
        return None
    return (Term(coeff, factors),) if coeff is ONE or coeff else ()


# --- algebra ---------------------------------------------------------------------------------

def _lift(e: Expr, avoid: set):
    """The terms of ``e`` with summed indices renamed away from ``avoid``, and a δ_kk marker
    for every index k of ``e`` that a term lacks (so a broadcast keeps its range)."""
    out = []
    for t in e.terms:
        idx = term_indices(t)
        mapping = {i: fresh_index() for i in idx if i not in e.indices and i in avoid}
        t = rename_term(t, mapping)
        missing = [k for k in e.indices if k not in idx]
        if missing:
            dims = e.dim_map
            t = Term(t.coeff, t.factors + tuple(Delta(k, k, dims[k]) for k in missing))
        out.append(t)
    return out


def add(*exprs: Expr) -> Expr:
    """Elementwise sum, broadcast over the union of the indices."""
    dims = {}
    for e in exprs:
        dims.update(e.dim_map)
    free = set(dims)
    terms = []
    for e in exprs:
        for t in e.terms:
            idx = term_indices(t)
            mapping = {i: fresh_index() for i in idx if i not in e.indices and i in free}
            terms.append(rename_term(t, mapping))
    return expr(dims, terms)


def scale(e: Expr, c) -> Expr:
    c = _number(c)
    if c == 0:
        return zero(e.dim_map)
    return Expr(e.indices, e.dims, tuple(Term(_number(t.coeff * c), t.factors) for t in e.terms))


def mul(*exprs: Expr) -> Expr:
    """Elementwise product (no summation), distributed into a sum of products."""
    dims = {}
    for e in exprs:
        dims.update(e.dim_map)
    products = [Term(ONE, ())]
    if sum(1 for e in exprs if any(t.factors for t in e.terms)) > 1:
        # a sum times something that is not a number: keep the sum together
        exprs = [group(e) for e in exprs]
    for e in exprs:
        if is_zero(e):
            return zero(dims)
        avoid = set(dims)
        for p in products:
            avoid.update(term_indices(p))
        lifted = _lift(e, avoid)
        if len(products) * len(lifted) > MAX_TERMS:
            raise EinderivError(
                f"the product expands to {len(products) * len(lifted)} terms "
                f"(limit {MAX_TERMS})")
        products = [Term(times(p.coeff, t.coeff), p.factors + t.factors)
                    for p in products for t in lifted]
    return expr(dims, products)


def contract(e: Expr, summed) -> Expr:
    """``Σ_{summed} e``: a term that lacks a summed index is multiplied by its size."""
    summed = [i for i in dict.fromkeys(summed)]
    dims = e.dim_map
    for i in summed:
        dims.pop(i, None)
    terms = []
    for t in e.terms:
        idx = set(term_indices(t))
        markers = tuple(Delta(k, k, e.dim_of(k)) for k in summed if k in e.indices and k not in idx)
        terms.append(Term(t.coeff, t.factors + markers))
    return expr(dims, terms)


def _fold(name, value):
    from .functions import FUNCTIONS
    import numpy as np
    with np.errstate(all="ignore"):
        result = float(FUNCTIONS[name].numpy(np.float64(value)))
    if not math.isfinite(result):
        raise EinderivError(f"{name}({value}) is not finite")
    return _decimal(result)


def _decimal(value: float):
    """A computed float as the exact decimal its shortest repr shows (prints and reads back
    as the same number)."""
    value = _number(value)
    return Fraction(repr(value)) if isinstance(value, float) else value


def func(name: str, arg: Expr) -> Expr:
    """``name(arg)`` elementwise; constant arguments are folded."""
    value = None
    if not arg.terms:
        value = Fraction(0)
    elif len(arg.terms) == 1 and not arg.terms[0].factors:
        value = arg.terms[0].coeff
    if value is not None:
        return const(_fold(name, value), arg.dim_map)
    # what expr() makes of the one factor: nothing to merge or sum, the argument settled
    return Expr(arg.indices, arg.dims, (Term(ONE, (_settle(Func(name, arg)),)),))


def power(base: Expr, exponent: Expr) -> Expr:
    """``base ^ exponent`` elementwise; the exponent has no indices."""
    if exponent.indices:
        raise EinderivError("an exponent must not carry indices")
    n = const_value(exponent)
    dims = base.dim_map
    if n is not None:
        if n == 0:
            return const(1, dims)
        if n == 1:
            return base
        if is_zero(base):
            if n > 0:
                return zero(dims)
            raise EinderivError("division by zero: 0 raised to a negative power")
        if len(base.terms) == 1:
            t = base.terms[0]
            if not t.factors:  # a number
                return const(_power_of_number(t.coeff, n), dims)
            has_sum = set(term_indices(t)) - set(base.indices)
            integral = isinstance(n, Fraction) and n.denominator == 1
            if integral and not has_sum:
                # (c f g)^n = c^n f^n g^n elementwise
                factors = []
                for f in t.factors:
                    b, m = _base_and_exponent(f)
                    factors.append(_power_of(b, m * n))
                return expr(dims, [Term(_power_of_number(t.coeff, n), tuple(factors))])
            if t.coeff != 1 and t.coeff > 0 and not integral:
                inner = Expr(base.indices, base.dims, (Term(ONE, t.factors),))
                return scale(power(inner, exponent), _power_of_number(t.coeff, n))
    return expr(dims, [Term(ONE, (Power(base, exponent),))])


def factor_common(e: Expr) -> Expr:
    """Take a factor shared by several terms out of them: Σ_t c_t r_t f = (Σ_t c_t r_t) f.

    ``sum_i(A_ip X_iq) + sum_i(A_pi X_iq)`` becomes ``sum_i((A_ip + A_pi) X_iq)``: one
    contraction instead of two, and the matrix form (A + Aᵀ) X shows. Indices of the rest
    that touch the shared factor or the result stay free in the group; the others are
    summed inside it. A group never holds a Kronecker delta.
    """
    terms = list(e.terms)
    free = set(e.indices)
    while len(terms) > 1:
        best = None
        counts: dict = {}
        for n, t in enumerate(terms):
            for f in dict.fromkeys(t.factors):
                if isinstance(f, Size):
                    continue
                rest = list(t.factors)
                rest.remove(f)
                if any(isinstance(g, Delta) for g in rest):
                    continue
                counts.setdefault(f, []).append(n)
        for f, members in counts.items():
            if len(members) >= 2 and (best is None or len(members) > len(counts[best])):
                best = f
        if best is None:
            break
        members = counts[best]
        keep = set(factor_indices(best)) | free
        group_dims = {}
        inner_terms = []
        for n in members:
            t = terms[n]
            rest = list(t.factors)
            rest.remove(best)
            dims = term_dims(rest)
            for i in term_indices(Term(ONE, tuple(rest))):
                if i in keep:
                    group_dims[i] = dims[i]
            inner_terms.append(Term(t.coeff, tuple(rest)))
        all_dims = {**term_dims([best]), **e.dim_map}
        for i in keep:
            if i in all_dims:
                pass
        inner = factor_common(expr(group_dims, inner_terms))
        if is_zero(inner):
            terms = [t for k, t in enumerate(terms) if k not in members]
            continue
        grouped = group(inner)
        # the group's own summed indices must not meet the indices of the outer term
        lifted = []
        for gt in grouped.terms:
            mapping = {i: fresh_index() for i in term_indices(gt) if i not in grouped.indices}
            lifted.append(rename_term(gt, mapping) if mapping else gt)
        new_terms = [Term(gt.coeff, gt.factors + (best,)) for gt in lifted]
        if len(grouped.terms) > 1:  # a δ inside: nothing gained
            break
        terms = [t for k, t in enumerate(terms) if k not in members] + new_terms
    if len(terms) == len(e.terms) and all(a is b for a, b in zip(terms, e.terms)):
        return e
    return expr(e.dim_map, terms)
