"""The immutable intermediate representation: tensors, deltas, functions and powers in
sum-of-products form, with named indices.

An ``Expr`` is a sum of ``Term``s over a set of index names (its ``indices``, kept sorted,
with the dimension of each in ``dims``). Every index of a term that is not an index of its
``Expr`` is summed within that term (einsum semantics); a term that lacks an index of its
``Expr`` is broadcast along it. A ``Term`` is a coefficient times a tuple of factors.
Nodes are only ever built through the constructors of :mod:`einderiv.simplify`, so every
node that exists is already canonical.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Union

__all__ = [
    "Tensor", "Delta", "Size", "Func", "Power", "Term", "Expr", "Factor", "Number",
    "factor_indices", "factor_dims", "term_dims", "term_indices", "rename_factor", "fresh_index", "rename_term", "rename_expr",
    "expr_all_indices", "tensor_names", "is_private",
]

Number = Union[Fraction, float]
DimRef = str  # "A.0": axis 0 of input A; "=j": the size given for index j by sizes=

_fresh_counter = itertools.count()


def fresh_index() -> str:
    """A new private index name, never typed by a user (user indices are letters)."""
    return f"_{next(_fresh_counter)}"


def is_private(index: str) -> bool:
    return index.startswith("_")


def _cached_identity(*fields, hashed=None):
    """Class decorator: ``__hash__`` computed once and cached in ``_hash`` (nodes are dictionary
    keys all through simplification), and ``__eq__`` that compares the cached hashes first, so
    unequal deep nodes differ in O(1) instead of a walk down both trees. The class's
    ``__init__`` takes ``fields`` in order (see :func:`_slot_init`). ``hashed(node)``, where
    given, is what is hashed: a tuple that hashes as the fields do."""
    key = operator.attrgetter(*fields)
    hashed = hashed or key

    def decorate(cls):
        cls.__init__ = _slot_init(cls, fields)
        set_hash = cls._hash.__set__   # the slot's own setter: the node is frozen

        def __hash__(self):
            h = self._hash
            if not h:
                h = hash(hashed(self)) or 1
                set_hash(self, h)
            return h

        def __eq__(self, other):
            if self is other:
                return True
            if type(other) is not cls:
                return NotImplemented
            return hash(self) == hash(other) and key(self) == key(other)

        def __reduce__(self):
            """Pickled by its fields, without the cached hash: a str hashes differently in
            another process, where a stale hash made equal nodes unequal."""
            return cls, key(self)

        cls.__hash__, cls.__eq__, cls.__reduce__ = __hash__, __eq__, __reduce__
        return cls
    return decorate


def _slot_init(cls, fields):
    """An ``__init__`` that sets the slots of a frozen node through their descriptors.

    The dataclass ``__init__`` of a frozen class calls ``object.__setattr__`` once per
    field, which made building a node about 2.5 times slower (a derivative builds hundreds);
    assigning to a field afterwards still raises ``FrozenInstanceError``."""
    set_hash = cls._hash.__set__
    if len(fields) == 2:
        set_a, set_b = (getattr(cls, f).__set__ for f in fields)

        def __init__(self, a, b):
            set_a(self, a)
            set_b(self, b)
            set_hash(self, 0)
        return __init__
    set_a, set_b, set_c = (getattr(cls, f).__set__ for f in fields)
    default = {f.name: f.default for f in dataclasses.fields(cls)}[fields[2]]

    def __init__(self, a, b, c=default):
        if c is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}() needs its {fields[2]}")
        set_a(self, a)
        set_b(self, b)
        set_c(self, c)
        set_hash(self, 0)
    return __init__


@_cached_identity("name", "indices", "dims")
@dataclass(frozen=True, slots=True, init=False)
class Tensor:
    """An input or intermediate tensor ``A_ij``; repeated indices read its diagonal."""
    name: str
    indices: tuple[str, ...]
    dims: tuple = ()
    _hash: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Delta:
    """The Kronecker delta ``δ_ab`` (``a < b``); ``dim`` is the dimension both run over."""
    a: str
    b: str
    dim: DimRef


@dataclass(frozen=True, slots=True)
class Size:
    """The size of a dimension, left by ``Σ_i δ_ii`` or by summing a broadcast term."""
    dim: DimRef
    label: str = field(compare=False, default="n")


@_cached_identity("name", "arg")
@dataclass(frozen=True, slots=True, init=False)
class Func:
    """An elementwise function of an expression: its indices are the argument's."""
    name: str
    arg: "Expr"
    _hash: int = field(default=0, compare=False, repr=False)


@_cached_identity("base", "exponent")
@dataclass(frozen=True, slots=True, init=False)
class Power:
    """``base ^ exponent`` elementwise; the exponent is an expression without indices."""
    base: "Expr"
    exponent: "Expr"
    _hash: int = field(default=0, compare=False, repr=False)


Factor = Union[Tensor, Delta, Size, Func, Power]


ONE = Fraction(1)   # the coefficient of most terms


def _term_hashed(term):
    """(coeff, factors), with 1 for the shared ONE: hash(1) == hash(ONE), and
    Fraction.__hash__ (a modular inverse in Python) is not run for every term."""
    coeff = term.coeff
    return (1 if coeff is ONE else coeff, term.factors)


@_cached_identity("coeff", "factors", hashed=_term_hashed)
@dataclass(frozen=True, slots=True, init=False)
class Term:
    """``coeff · f1 · f2 ···``, summed over its indices that its Expr does not carry."""
    coeff: Number
    factors: tuple
    _hash: int = field(default=0, compare=False, repr=False)


@_cached_identity("indices", "dims", "terms")
@dataclass(frozen=True, slots=True, init=False)
class Expr:
    """A sum of terms over the index set ``indices`` (sorted), with dimensions ``dims``."""
    indices: tuple[str, ...]
    dims: tuple[DimRef, ...]
    terms: tuple[Term, ...]
    _hash: int = field(default=0, compare=False, repr=False)

    def dim_of(self, index: str) -> DimRef:
        return self.dims[self.indices.index(index)]

    @property
    def dim_map(self) -> dict:
        return dict(zip(self.indices, self.dims))


def factor_indices(factor) -> tuple[str, ...]:
    """The distinct indices a factor carries, in order of appearance."""
    kind = type(factor)
    if kind is Tensor:
        indices = factor.indices
        if len(indices) < 2 or (len(indices) == 2 and indices[0] != indices[1]):
            return indices
        return tuple(dict.fromkeys(indices))
    if kind is Func:
        return factor.arg.indices
    if kind is Power:
        return factor.base.indices
    if kind is Delta:
        return (factor.a,) if factor.a == factor.b else (factor.a, factor.b)
    if kind is Size:
        return ()
    raise TypeError(f"not a factor: {factor!r}")


def factor_dims(factor) -> dict:
    """The dimension of every index a factor carries."""
    if type(factor) is Tensor:
        return dict(zip(factor.indices, factor.dims))
    if isinstance(factor, Delta):
        return {factor.a: factor.dim, factor.b: factor.dim}
    if isinstance(factor, Size):
        return {}
    if isinstance(factor, Func):
        return factor.arg.dim_map
    if isinstance(factor, Power):
        return factor.base.dim_map
    raise TypeError(f"not a factor: {factor!r}")


def term_dims(factors) -> dict:
    dims = {}
    for factor in factors:
        dims.update(factor_dims(factor))
    return dims


def term_indices(term: Term) -> tuple[str, ...]:
    """Every index of a term, in order of first appearance."""
    factors = term.factors
    if len(factors) == 1:
        return factor_indices(factors[0])
    seen = {}
    for factor in factors:
        for index in factor_indices(factor):
            seen[index] = None   # a key seen before keeps its place
    return tuple(seen)


def expr_all_indices(expr: Expr) -> set:
    """Every index name used anywhere in an expression, nested ones included."""
    names = set(expr.indices)
    for term in expr.terms:
        for factor in term.factors:
            names.update(factor_indices(factor))
            if isinstance(factor, Func):
                names |= expr_all_indices(factor.arg)
            elif isinstance(factor, Power):
                names |= expr_all_indices(factor.base)
    return names


def tensor_names(expr: Expr) -> list[str]:
    """Names of the tensors an expression reads, in order of first appearance."""
    found = {}

    def visit(e: Expr):
        for term in e.terms:
            for factor in term.factors:
                if isinstance(factor, Tensor):
                    found.setdefault(factor.name, None)
                elif isinstance(factor, Func):
                    visit(factor.arg)
                elif isinstance(factor, Power):
                    visit(factor.base)
                    visit(factor.exponent)

    visit(expr)
    return list(found)


# --- renaming -------------------------------------------------------------------------------

def rename_factor(factor, mapping: dict):
    """A factor with its indices renamed by ``mapping``; the factor itself where none is."""
    kind = type(factor)
    if kind is Tensor:
        indices = factor.indices
        renamed = tuple(map(mapping.get, indices, indices))
        return factor if renamed == indices else Tensor(factor.name, renamed, factor.dims)
    if kind is Delta:
        a, b = mapping.get(factor.a, factor.a), mapping.get(factor.b, factor.b)
        if b < a:
            a, b = b, a
        if a == factor.a and b == factor.b:
            return factor
        return Delta(a, b, factor.dim)
    if kind is Size:
        return factor
    if kind is Func:
        arg = rename_expr(factor.arg, mapping)
        return factor if arg is factor.arg else Func(factor.name, arg)
    if kind is Power:
        base = rename_expr(factor.base, mapping)
        return factor if base is factor.base else Power(base, factor.exponent)
    raise TypeError(f"not a factor: {factor!r}")


def rename_term(term: Term, mapping: dict) -> Term:
    """Rename indices of a term (free and summed alike); the caller avoids capture."""
    if not mapping:
        return term
    factors = [rename_factor(f, mapping) for f in term.factors]
    if all(map(operator.is_, factors, term.factors)):
        return term
    return Term(term.coeff, tuple(factors))


def rename_expr(expr: Expr, mapping: dict) -> Expr:
    """Rename the free indices of ``expr`` by ``mapping`` without capturing summed ones.

    Several free indices may map to one name (a diagonal): the result is the expression
    restricted to that diagonal. The result is not re-canonicalized; callers that merge
    indices pass it through :func:`einderiv.simplify.expr` again.
    """
    mapping = {k: v for k, v in mapping.items() if k in expr.indices and k != v}
    if not mapping:
        return expr
    key = (expr, tuple(mapping.items()))
    hit = _RENAMED.get(key)
    if hit is None:
        hit = remember(_RENAMED, key, _renamed(expr, mapping))
    return hit


MEMO_SIZE = 20000   # entries per memo: the largest derivatives measured need under 14,000


def remember(memo: dict, key, value):
    """Store ``value`` under ``key`` and return it. A full memo is emptied first, so that a
    long-running process that differentiates many programs stays small."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


# an expression nested in n factors (cos(sin(sin(x_i))) in the derivative of sin^n) is renamed
# once, not once per factor that holds it
_RENAMED: dict = {}


def _renamed(expr: Expr, mapping: dict) -> Expr:
    targets = set(mapping.values())
    new_terms = []
    for term in expr.terms:
        local = mapping
        for index in term_indices(term):
            if index in targets and index not in expr.indices:
                if local is mapping:
                    local = dict(mapping)
                local[index] = fresh_index()  # a summed index would be captured: move it
        new_terms.append(rename_term(term, local))
    new_dims = {}
    for index, dim in zip(expr.indices, expr.dims):
        new_dims.setdefault(mapping.get(index, index), dim)
    order = tuple(sorted(new_dims))
    return Expr(order, tuple(map(new_dims.__getitem__, order)), tuple(new_terms))
