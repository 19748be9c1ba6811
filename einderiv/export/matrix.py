"""Index notation → matrix notation: products, transposes, trace, diag, Hadamard ⊙, outer
products, Kronecker ⊗, the ones vector 𝟙 and the identity I.

A term is a small tensor network of factors with at most two axes; it is reduced by
contracting over summed indices (matrix products), merging factors on the same indices
(Hadamard products), summing lone indices against 𝟙 and turning vectors that meet three
indices into ``diag(v)``. Where that fails there is no matrix form, and none is printed.
Every form is also checked numerically against the index form before it is returned, so a
wrong matrix form can never be shown.

    >>> print(ed.matrix_form(ed.diff("L = A_ij X_jk B_ki", wrt="X")))
    ∂L/∂X = Aᵀ Bᵀ   (denominator layout: the shape of X)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np

from ..errors import EinderivError
from ..ir import Delta, Expr, Func, Power, Size, Tensor, Term
from ..simplify import const_value
from .text import format_number

__all__ = ["MatrixForm", "matrix_form", "NoMatrixForm", "dimension_names"]

MINUS = "−"


class NoMatrixForm(Exception):
    """Raised inside the translation when a term has no matrix form (with the reason)."""


# --- the matrix AST ---------------------------------------------------------------------------
# shapes are (row dimension or None, column dimension or None); None is an axis of length 1

@dataclass(frozen=True)
class Sym:
    name: str
    shape0: tuple
    t: bool = False

    @property
    def shape(self):
        return self.shape0[::-1] if self.t else self.shape0


@dataclass(frozen=True)
class Ones:
    dim: str
    t: bool = False

    @property
    def shape(self):
        return (None, self.dim) if self.t else (self.dim, None)


@dataclass(frozen=True)
class Ident:
    dim: str

    @property
    def shape(self):
        return (self.dim, self.dim)


@dataclass(frozen=True)
class SizeOf:
    dim: str
    shape = (None, None)


@dataclass(frozen=True)
class Mul:
    """coeff · scalars · (matrix product of the rest, in order)."""
    coeff: object
    factors: tuple

    @property
    def shape(self):
        mats = [f for f in self.factors if f.shape != (None, None)]
        if not mats:
            return (None, None)
        return (mats[0].shape[0], mats[-1].shape[1])


@dataclass(frozen=True)
class Sum:
    terms: tuple  # of Mul

    @property
    def shape(self):
        for t in self.terms:
            if t.shape != (None, None):
                return t.shape
        return (None, None)


@dataclass(frozen=True)
class Had:
    factors: tuple

    @property
    def shape(self):
        return self.factors[0].shape


@dataclass(frozen=True)
class Fn:
    name: str
    arg: object

    @property
    def shape(self):
        return self.arg.shape


@dataclass(frozen=True)
class Pw:
    base: object
    exponent: object  # a scalar node

    @property
    def shape(self):
        return self.base.shape


@dataclass(frozen=True)
class DiagVec:
    """diag(M): the diagonal of a square matrix, as a column vector."""
    arg: object

    @property
    def shape(self):
        return (self.arg.shape[0], None)


@dataclass(frozen=True)
class DiagMat:
    """diag(v): the square matrix with v on its diagonal."""
    arg: object

    @property
    def shape(self):
        d = self.arg.shape[0] if self.arg.shape[0] is not None else self.arg.shape[1]
        return (d, d)


@dataclass(frozen=True)
class Trace:
    arg: object
    shape = (None, None)


@dataclass(frozen=True)
class Kron:
    left: object
    right: object

    @property
    def shape(self):  # only used for display decisions
        return ("kron", "kron")


@dataclass(frozen=True)
class Transp:
    arg: object

    @property
    def shape(self):
        return self.arg.shape[::-1]


def is_scalar(node) -> bool:
    return node.shape == (None, None)


def transpose(node):
    """Push a transpose to the leaves: (AB)ᵀ = BᵀAᵀ, f(X)ᵀ = f(Xᵀ), (A ⊙ B)ᵀ = Aᵀ ⊙ Bᵀ."""
    if is_scalar(node) or isinstance(node, (Ident, DiagMat)):
        return node
    if isinstance(node, Sym):
        return Sym(node.name, node.shape0, not node.t)
    if isinstance(node, Ones):
        return Ones(node.dim, not node.t)
    if isinstance(node, Mul):
        scalars = [f for f in node.factors if is_scalar(f)]
        mats = [transpose(f) for f in node.factors if not is_scalar(f)][::-1]
        return Mul(node.coeff, tuple(scalars + mats))
    if isinstance(node, Sum):
        return make_sum([transpose(t) for t in node.terms])  # keeps the order unless A + Aᵀ
    if isinstance(node, Had):
        return Had(tuple(transpose(f) for f in node.factors))
    if isinstance(node, Fn):
        return Fn(node.name, transpose(node.arg))
    if isinstance(node, Pw):
        return Pw(transpose(node.base), node.exponent)
    if isinstance(node, Transp):
        return node.arg
    return Transp(node)


def mul(coeff, *factors) -> Mul:
    """A flattened product; nested single-term products merge into it."""
    out = []
    for f in factors:
        if isinstance(f, Mul) and (not is_scalar(f) or all(is_scalar(g) for g in f.factors)):
            coeff = coeff * f.coeff
            out.extend(f.factors)
        elif isinstance(f, Sum) and len(f.terms) == 1:
            coeff = coeff * f.terms[0].coeff
            out.extend(f.terms[0].factors)
        else:
            out.append(f)
    # I in a product with something else disappears
    if len(out) > 1:
        kept = [f for f in out if not isinstance(f, Ident)]
        if kept and any(not is_scalar(f) for f in kept):
            out = kept
    return Mul(coeff, tuple(out))


# --- IR → matrix AST --------------------------------------------------------------------------

@dataclass
class Op:
    node: object
    row: Optional[str]
    col: Optional[str]

    @property
    def indices(self):
        return [i for i in (self.row, self.col) if i is not None]

    def flipped(self):
        return Op(transpose(self.node), self.col, self.row)


def _flip_cost(op, needed) -> int:
    """Transposing a bare symbol reads better than transposing a product."""
    if not needed:
        return 0
    return 1 if isinstance(op.node, (Sym, Ones, Ident, DiagMat)) else 2


def _make_op(node, row, col) -> Op:
    if row is not None and row == col:
        return Op(DiagVec(node), row, None)
    return Op(node, row, col)


class _Translator:
    def __init__(self, program):
        self.program = program
        self.shapes = {}
        for name, dims in program._inputs.items():
            self.shapes[name] = tuple(dims)
        for st in program.statements:
            self.shapes[st.name] = tuple(st.dims)
        self.counter = itertools.count()

    def fresh(self):
        return f"_m{next(self.counter)}"

    # -- leaves
    def factor_op(self, f, dims):
        if isinstance(f, Tensor):
            axes = self.shapes.get(f.name, f.dims)
            if len(f.indices) > 2:
                raise NoMatrixForm(f"{f.name} has {len(f.indices)} axes")
            shape0 = (tuple(axes) + (None, None))[:2]
            sym = Sym(f.name, shape0)
            idx = (tuple(f.indices) + (None, None))[:2]
            return _make_op(sym, idx[0], idx[1])
        if isinstance(f, Delta):
            if f.a == f.b:
                return Op(Mul(Fraction(1), ()), None, None)
            return Op(Ident(f.dim), f.a, f.b)
        if isinstance(f, Size):
            return Op(SizeOf(f.dim), None, None)
        if isinstance(f, Func):
            inner = self.expr_node(f.arg, f.arg.indices)
            idx = (tuple(f.arg.indices) + (None, None))[:2]
            return _make_op(Fn(f.name, inner), idx[0], idx[1])
        if isinstance(f, Power):
            inner = self.expr_node(f.base, f.base.indices)
            idx = (tuple(f.base.indices) + (None, None))[:2]
            n = const_value(f.exponent)
            if n == 1:
                return _make_op(inner, idx[0], idx[1])
            exponent = Mul(n, ()) if n is not None else self.expr_node(f.exponent, ())
            return _make_op(Pw(inner, exponent), idx[0], idx[1])
        raise NoMatrixForm(f"cannot translate {type(f).__name__}")

    def expr_node(self, e: Expr, order):
        """The matrix form of an expression, rows along order[0] and columns along order[1]."""
        if len(e.indices) > 2:
            raise NoMatrixForm(f"a subexpression has {len(e.indices)} free indices")
        order = tuple(order)
        dims = e.dim_map
        terms = [self.term_node(t, order, dims) for t in e.terms]
        if not terms:
            raise NoMatrixForm("the expression is zero")
        return factor_sum(terms)

    def term_node(self, term: Term, order, dims) -> Mul:
        free = set(order)
        ops = []
        scalars = []
        term_dim = dict(dims)
        for f in term.factors:
            from ..ir import factor_dims
            term_dim.update(factor_dims(f))
            op = self.factor_op(f, term_dim)
            if op.indices:
                ops.append(op)
            else:
                scalars.append(op.node)
        ops, more = self.reduce(ops, free, term_dim)
        scalars.extend(more)
        row = order[0] if len(order) > 0 else None
        col = order[1] if len(order) > 1 else None
        return mul(term.coeff, *scalars, *self.assemble(ops, row, col, term_dim))

    # -- the reduction
    def degree(self, ops, free):
        deg = {}
        for op in ops:
            for i in op.indices:
                deg[i] = deg.get(i, 0) + 1
        return deg

    def reduce(self, ops, free, dims):
        scalars = []
        while True:
            scalar_ops = [op for op in ops if not op.indices]
            if scalar_ops:
                scalars.extend(op.node for op in scalar_ops)
                ops = [op for op in ops if op.indices]
            deg = self.degree(ops, free)
            if self._contract(ops, free, deg):
                continue
            if self._hadamard(ops):
                continue
            if self._sum_out(ops, free, deg, dims):
                continue
            if self._diag(ops, free, deg):
                continue
            break
        deg = self.degree(ops, free)
        for i, k in deg.items():
            if i not in free:
                raise NoMatrixForm(f"index {i} is summed over {k} factors at once")
            if k > 1:
                raise NoMatrixForm(f"a free index meets {k} matrices")
        return ops, scalars

    def _contract(self, ops, free, deg):
        best = None
        for i, k in deg.items():
            if i in free or k != 2:
                continue
            a, b = [n for n, op in enumerate(ops) if i in op.indices]
            for x, y in ((a, b), (b, a)):
                key = (_flip_cost(ops[x], ops[x].col != i) + _flip_cost(ops[y], ops[y].row != i), x > y)
                if best is None or key < best[0]:
                    best = (key, i, x, y)
        if best is None:
            return False
        _, i, a, b = best
        left, right = ops[a], ops[b]
        if set(left.indices) == set(right.indices) and len(left.indices) == 2:
            other = [j for j in left.indices if j != i][0]
            if other not in free and deg.get(other) == 2:
                # Σ_ij M_ij N_ji = tr(MN)
                left = left if left.col == i else left.flipped()
                right = right if right.row == i else right.flipped()
                ops[a] = Op(Trace(mul(Fraction(1), left.node, right.node)), None, None)
                del ops[b]
                return True
        left = left if left.col == i else left.flipped()
        right = right if right.row == i else right.flipped()
        product = mul(Fraction(1), left.node, right.node)
        if left.row is not None and left.row == right.col:
            new = Op(DiagVec(product), left.row, None)
        elif left.row is None and right.col is None:
            new = Op(product, None, None)
        else:
            new = Op(product, left.row, right.col)
        ops[min(a, b)] = new
        del ops[max(a, b)]
        return True

    def _hadamard(self, ops):
        for a, b in itertools.combinations(range(len(ops)), 2):
            left, right = ops[a], ops[b]
            if set(left.indices) != set(right.indices):
                continue
            if (left.row, left.col) != (right.row, right.col):
                right = right.flipped()
            parts = []
            for node in (left.node, right.node):
                parts.extend(node.factors if isinstance(node, Had) else [node])
            ops[a] = Op(Had(tuple(parts)), left.row, left.col)
            del ops[b]
            return True
        return False

    def _sum_out(self, ops, free, deg, dims):
        for i, k in deg.items():
            if i in free or k != 1:
                continue
            n = next(n for n, op in enumerate(ops) if i in op.indices)
            op = ops[n]
            if isinstance(op.node, DiagVec) and op.col is None and op.row == i:
                ops[n] = Op(Trace(op.node.arg), None, None)
                return True
            if op.row == i:
                op = op.flipped()
            if op.row is None:          # a vector vᵀ: 𝟙ᵀv
                ops[n] = Op(mul(Fraction(1), Ones(dims[i], True), transpose(op.node)), None, None)
            else:                       # M 𝟙
                ops[n] = Op(mul(Fraction(1), op.node, Ones(dims[i])), op.row, None)
            return True
        return False

    def _diag(self, ops, free, deg):
        for n, op in enumerate(ops):
            if len(op.indices) != 1:
                continue
            i = op.indices[0]
            if deg[i] + (i in free) < 3:
                continue
            other = next(m for m, o in enumerate(ops) if m != n and i in o.indices)
            j = self.fresh()
            o = ops[other]
            ops[other] = Op(o.node, j if o.row == i else o.row, j if o.col == i else o.col)
            vec = op.node if op.col is None else transpose(op.node)
            ops[n] = Op(DiagMat(vec), i, j)
            return True
        return False

    def assemble(self, ops, row, col, dims):
        """The remaining factors (each on free indices only) as one matrix product."""
        if row is None and col is None:
            return [op.node for op in ops]
        by_set = {frozenset(op.indices): op for op in ops}
        both = by_set.get(frozenset(i for i in (row, col) if i is not None))
        if both is not None and len(both.indices) == 2:
            if (both.row, both.col) != (row, col):
                both = both.flipped()
            return [both.node]
        out = []
        for index, as_row in ((row, True), (col, False)):
            if index is None:
                continue
            op = by_set.get(frozenset([index]))
            if op is None:
                node = Ones(dims[index])
                op = Op(node, index, None)
            if as_row and op.row != index:
                op = op.flipped()
            if not as_row and op.col != index:
                op = op.flipped()
            out.append(op.node)
        return out


def factor_sum(terms):
    """Σ c_k L M_k R with a common left factor L or right factor R → L (Σ c_k M_k) R."""
    if len(terms) == 1:
        return terms[0]
    mats = [[f for f in t.factors if not is_scalar(f)] for t in terms]
    scal = [[f for f in t.factors if is_scalar(f)] for t in terms]
    left, right = [], []
    while all(len(m) > 1 for m in mats) and all(m[-1] == mats[0][-1] for m in mats):
        right.insert(0, mats[0][-1])
        mats = [m[:-1] for m in mats]
    while all(len(m) > 1 for m in mats) and all(m[0] == mats[0][0] for m in mats):
        left.append(mats[0][0])
        mats = [m[1:] for m in mats]
    if not left and not right:
        return make_sum(terms)
    inner = [Mul(t.coeff, tuple(s + m)) for t, s, m in zip(terms, scal, mats)]
    return mul(Fraction(1), *left, make_sum(inner), *right)


def make_sum(terms):
    """A sum in the given order; a sum of bare symbols puts untransposed ones first (A + Aᵀ)."""
    if all(isinstance(t, Mul) and len(t.factors) == 1 and isinstance(t.factors[0], Sym) for t in terms):
        terms = sorted(terms, key=_transposes)
    return Sum(tuple(terms))


def _transposes(node) -> int:
    if isinstance(node, (Sym, Ones)):
        return int(node.t)
    if isinstance(node, Transp):
        return 1
    if isinstance(node, (Mul, Had)):
        return sum(_transposes(f) for f in node.factors)
    if isinstance(node, Sum):
        return sum(_transposes(f) for f in node.terms)
    return 0


# --- rendering --------------------------------------------------------------------------------

class _Text:
    T = "ᵀ"
    ONES = "𝟙"
    HAD = " ⊙ "
    KRON = " ⊗ "

    def __init__(self, dim_names, concat=True):
        self.dim_names = dim_names
        self.concat = concat   # "AXB", "Ax": only when every name is one letter (else GB = G B?)

    def name(self, s):
        return s

    def number(self, c):
        return format_number(c)

    def render(self, node, ctx="top") -> str:
        if isinstance(node, Sym):
            return self.name(node.name) + (self.T if node.t and node.shape0 != (None, None) else "")
        if isinstance(node, Ones):
            return self.ONES + (self.T if node.t else "")
        if isinstance(node, Ident):
            return "I"
        if isinstance(node, SizeOf):
            return self.dim_names.get(node.dim, "n")
        if isinstance(node, Trace):
            return self.call("tr", self.render(node.arg))
        if isinstance(node, DiagVec) or isinstance(node, DiagMat):
            return self.call("diag", self.render(node.arg))
        if isinstance(node, Fn):
            return self.call(node.name, self.render(node.arg))
        if isinstance(node, Transp):
            return self.paren(self.render(node.arg, "atom"), node.arg) + self.T
        if isinstance(node, Pw):
            return self.power(node)
        if isinstance(node, Had):
            body = self.HAD.join(self.render(f, "had") for f in node.factors)
            return self.wrap(body) if ctx in ("mul", "had", "atom") else body
        if isinstance(node, Kron):
            body = self.render(node.left, "had") + self.KRON + self.render(node.right, "had")
            return self.wrap(body) if ctx in ("mul", "had", "atom") else body
        if isinstance(node, Sum):
            body = self.sum(node)
            return self.wrap(body) if ctx != "top" else body
        if isinstance(node, Mul):
            if node.coeff == 1 and len(node.factors) == 1 and not _is_division(node.factors[0]):
                return self.render(node.factors[0], ctx)
            body, negative = self.mul(node)
            if negative:
                body = "-" + body if self.ascii else MINUS + body
            if ctx == "top" or (ctx != "atom" and len(node.factors) <= 1 and not negative
                                and node.coeff == 1):
                return body
            return self.wrap(body)
        raise TypeError(node)

    ascii = False

    def wrap(self, s):
        return "(" + s + ")"

    def paren(self, s, node):
        if isinstance(node, (Sym, Ones, Ident, Fn, Trace, DiagVec, DiagMat)):
            return s
        return s if s.startswith("(") and s.endswith(")") else self.wrap(s)

    def call(self, name, arg):
        return f"{name}({arg})"

    def power(self, node):
        n = const_value_node(node.exponent)
        base = self.render(node.base, "atom")
        if _lone(node.base, Pw):
            base = self.wrap(base)
        scalar = is_scalar(node.base)
        if n is not None:
            text = self.number(n)
            if n < 0 or "/" in text:
                text = "(" + text + ")"
        else:
            text = "(" + self.render(node.exponent) + ")"
        return base + ("^" if scalar else "^∘") + text

    def sum(self, node) -> str:
        out = []
        for k, t in enumerate(node.terms):
            body, negative = self.mul(t)
            if k == 0:
                out.append((MINUS if not self.ascii else "-") + body if negative else body)
            else:
                out.append((f" {MINUS} " if not self.ascii else " - ") + body if negative else " + " + body)
        return "".join(out)

    def mul(self, node: Mul):
        """(text without sign, negative?)"""
        c = node.coeff
        negative = c < 0
        c = -c if negative else c
        numer, denom = [], []
        for f in node.factors:
            if isinstance(f, Pw) and is_scalar(f.base):
                n = const_value_node(f.exponent)
                if n is not None and n < 0:
                    inv = Pw(f.base, Mul(-n, ())) if n != -1 else f.base
                    denom.append(inv)
                    continue
            numer.append(f)
        scal = [f for f in numer if is_scalar(f)]
        mats = [f for f in numer if not is_scalar(f)]
        pieces = []
        if c != 1 or not numer:
            pieces.append(self.number(c))
        lone = len(numer) == 1 and c == 1 and not negative and not denom and not isinstance(numer[0], Sum)
        if lone:
            return self.render(numer[0], "top"), negative
        pieces.extend(self.render(f, "mul") for f in scal)
        chain = self.chain(mats)
        body = " ".join(p for p in pieces + ([chain] if chain else []))
        for d in denom:
            body += " / " + self.render(d, "atom")
        return body, negative

    def chain(self, mats) -> str:
        out = ""
        prev = None
        for f in mats:
            text = self.render(f, "mul")
            if prev is None:
                out = text
            else:
                out += self.joiner(prev, f, text) + text
            prev = f
        return out

    def joiner(self, prev, f, text):
        if not self.concat:
            return " "
        if text.startswith("(") and isinstance(prev, Sym) and None not in prev.shape0:
            return ""
        if (isinstance(prev, Sym) and not prev.t and len(prev.name) == 1 and prev.name.isupper()
                and None not in prev.shape0 and isinstance(f, Sym) and len(f.name) == 1):
            return ""
        return " "


class _Latex(_Text):
    T = "^{\\top}"
    ONES = "\\mathbf{1}"
    HAD = " \\odot "
    KRON = " \\otimes "

    def name(self, s):
        from .latex import _name
        return _name(s)

    ascii = True

    def number(self, c):
        if isinstance(c, Fraction) and c.denominator != 1:
            return rf"\frac{{{c.numerator}}}{{{c.denominator}}}"
        return format_number(c)

    def wrap(self, s):
        return r"\left(" + s + r"\right)"

    def paren(self, s, node):
        if isinstance(node, (Sym, Ones, Ident, Fn, Trace, DiagVec, DiagMat)):
            return s
        return s if s.startswith(r"\left(") else self.wrap(s)

    def call(self, name, arg):
        from ..functions import FUNCTIONS
        if name in ("tr", "diag"):
            head = r"\operatorname{" + name + "}"
        elif name in FUNCTIONS:
            head = FUNCTIONS[name].latex
        else:
            head = r"\operatorname{" + name + "}"
        return head + r"\left(" + arg + r"\right)"

    def power(self, node):
        n = const_value_node(node.exponent)
        base = self.render(node.base, "atom")
        if _lone(node.base, Pw):
            base = self.wrap(base)
        elif "^" in base and not base.endswith(r"\right)"):
            base = "{" + base + "}"      # A^{\top}^{\circ 2} is a double superscript in TeX
        text = self.number(n) if n is not None else self.render(node.exponent)
        if is_scalar(node.base):
            return base + "^{" + text + "}"
        return base + "^{\\circ " + text + "}"

    def mul(self, node: Mul):
        c = node.coeff
        negative = c < 0
        c = -c if negative else c
        numer, denom = [], []
        for f in node.factors:
            if isinstance(f, Pw) and is_scalar(f.base):
                n = const_value_node(f.exponent)
                if n is not None and n < 0:
                    denom.append(Pw(f.base, Mul(-n, ())) if n != -1 else f.base)
                    continue
            numer.append(f)
        scal = [f for f in numer if is_scalar(f)]
        mats = [f for f in numer if not is_scalar(f)]
        lone = len(numer) == 1 and c == 1 and not negative and not denom and not isinstance(numer[0], Sum)
        if lone:
            return self.render(numer[0], "top"), negative
        pieces = [self.render(f, "mul") for f in scal]
        chain = self.chain(mats)
        body = " ".join(pieces + ([chain] if chain else []))
        if denom:
            body = r"\frac{" + (body or "1") + "}{" + " ".join(self.render(d, "top") for d in denom) + "}"
        if c != 1 or not body:
            body = (self.number(c) + " " + body).strip()
        return body, negative

    def joiner(self, prev, f, text):
        return " "

    def sum(self, node) -> str:
        out = []
        for k, t in enumerate(node.terms):
            body, negative = self.mul(t)
            if k == 0:
                out.append("-" + body if negative else body)
            else:
                out.append((" - " + body) if negative else " + " + body)
        return "".join(out)


def _lone(node, kind) -> bool:
    """Whether a node is (a product of just) one node of this kind."""
    while isinstance(node, Mul) and node.coeff == 1 and len(node.factors) == 1:
        node = node.factors[0]
    return isinstance(node, kind)


def _is_division(f) -> bool:
    if isinstance(f, Pw) and is_scalar(f.base):
        n = const_value_node(f.exponent)
        return n is not None and n < 0
    return False


def const_value_node(node):
    if isinstance(node, Mul) and not node.factors:
        return node.coeff
    return None


# --- numeric evaluation of the matrix AST ------------------------------------------------------

def evaluate_node(node, env, size):
    """The value of a matrix expression as a 2-D numpy array (vectors are n×1 or 1×n)."""
    from ..functions import FUNCTIONS
    if isinstance(node, Sym):
        value = env[node.name]
        return value.T if node.t else value
    if isinstance(node, Ones):
        v = np.ones((size[node.dim], 1))
        return v.T if node.t else v
    if isinstance(node, Ident):
        return np.eye(size[node.dim])
    if isinstance(node, SizeOf):
        return np.array([[float(size[node.dim])]])
    if isinstance(node, Mul):
        value = float(node.coeff)
        acc = None
        for f in node.factors:
            v = evaluate_node(f, env, size)
            if is_scalar(f):
                value = value * v[0, 0]
            else:
                acc = v if acc is None else acc @ v
        return value * acc if acc is not None else np.array([[value]])
    if isinstance(node, Sum):
        out = None
        for t in node.terms:
            v = evaluate_node(t, env, size)
            out = v if out is None else out + v
        return out
    if isinstance(node, Had):
        out = evaluate_node(node.factors[0], env, size)
        for f in node.factors[1:]:
            out = out * evaluate_node(f, env, size)
        return out
    if isinstance(node, Fn):
        return FUNCTIONS[node.name].numpy(evaluate_node(node.arg, env, size))
    if isinstance(node, Pw):
        e = evaluate_node(node.exponent, env, size)[0, 0]
        return np.power(evaluate_node(node.base, env, size), e)
    if isinstance(node, DiagVec):
        return np.diag(evaluate_node(node.arg, env, size)).reshape(-1, 1)
    if isinstance(node, DiagMat):
        return np.diag(evaluate_node(node.arg, env, size).ravel())
    if isinstance(node, Trace):
        return np.array([[np.trace(evaluate_node(node.arg, env, size))]])
    if isinstance(node, Kron):
        return np.kron(evaluate_node(node.left, env, size), evaluate_node(node.right, env, size))
    if isinstance(node, Transp):
        return evaluate_node(node.arg, env, size).T
    raise TypeError(node)


def _as_matrix(value) -> np.ndarray:
    value = np.asarray(value, dtype=float)
    if value.ndim == 0:
        return value.reshape(1, 1)
    if value.ndim == 1:
        return value.reshape(-1, 1)
    return value


# --- the public object ------------------------------------------------------------------------

_LETTERS = "MNPQRSTUVWKLFGHJ"


def dimension_names(program) -> dict:
    """A capital letter for every dimension, in order of the inputs' axes: A (M×N), B (N×P)."""
    names = {}
    letters = iter(_LETTERS)
    for dims in program._inputs.values():
        for d in dims:
            if d not in names:
                if d.startswith("="):
                    names[d] = "n_" + d[1:]
                    continue
                names[d] = next(letters, None) or f"D{len(names)}"
    for st in program.statements:
        for d in st.dims:
            if d not in names:
                names[d] = "n_" + d.lstrip("=") if d.startswith("=") else f"D{len(names)}"
    for d in program._members:          # a size only sizes= gives: sum_j(1) is n_j
        if d not in names and d.startswith("="):
            names[d] = "n_" + d[1:]
    return names


@dataclass
class Statement_:
    label: str
    node: object
    name: str
    indices: tuple
    kron: bool = False


class MatrixForm:
    """The matrix notation of a program or derivative, or the reason there is none.

    ``str()`` gives one line per statement and the layout; ``.latex()`` the LaTeX;
    ``.evaluate(**arrays)`` the value computed from the matrix expression with numpy (the
    same array as ``program.evaluate`` when the form exists); ``.exists`` says whether it does.
    """

    def __init__(self, program, statements, reason=None, note=""):
        self.program = program
        self.statements = statements
        self.reason = reason
        self.note = note
        self.dim_names = dimension_names(program)

    def _concat(self) -> bool:
        names = list(self.program._inputs) + [s.name.lstrip("∂↦") for s in self.statements]
        return all(len(n) == 1 for n in names)

    @property
    def exists(self) -> bool:
        return self.reason is None

    @property
    def expr(self):
        return self.statements[-1].node if self.exists else None

    def text(self) -> str:
        """The matrix expression of the result alone, e.g. ``Aᵀ Bᵀ``."""
        if not self.exists:
            return ""
        return _Text(self.dim_names, self._concat()).render(self.statements[-1].node)

    def __str__(self):
        if not self.exists:
            return (f"no matrix form: {self.reason}; in index form:\n{self.program}")
        r = _Text(self.dim_names, self._concat())
        lines = [f"{s.label} = {r.render(s.node)}" for s in self.statements]
        if self.note:
            lines[-1] += f"   ({self.note})"
        return "\n".join(lines)

    def __repr__(self):
        return f"<MatrixForm: {self}>"

    def latex(self) -> str:
        if not self.exists:
            return r"\text{no matrix form: " + self.reason.replace("_", r"\_") + "}"
        r = _Latex(self.dim_names)
        lines = [f"{_label_latex(s.label)} = {r.render(s.node)}" for s in self.statements]
        if len(lines) == 1:
            return lines[0]
        return r"\begin{aligned}" + r" \\ ".join(l.replace(" = ", " &= ", 1) for l in lines) + r"\end{aligned}"

    def _repr_latex_(self):
        return "$$" + self.latex() + "$$"

    def evaluate(self, sizes=None, **arrays):
        """The result computed from the matrix expression, in the program's axis order."""
        if not self.exists:
            raise EinderivError(f"no matrix form: {self.reason}")
        size = _dim_sizes(self.program, arrays, sizes)
        env = {k: _as_matrix(v) for k, v in arrays.items()}
        value = None
        for s in self.statements:
            value = evaluate_node(s.node, env, size)
            if s.kron:
                break
            env[s.name] = value
        last = self.statements[-1]
        shape = tuple(size[d] for d in self.program.output.dims)
        if last.kron:
            return _unkron(value, shape)
        return value.reshape(shape)


def _unkron(value, shape):
    """Undo vec: rows and columns are column-major vecs of the leading and trailing axes."""
    return value.reshape(tuple(shape), order="F")


def _label_latex(label: str) -> str:
    """``∂L/∂X``, ``∂²L/∂x∂y``, ``∂vec(F)/∂vec(X)`` and ``d(∂L/∂x)`` in LaTeX, names
    as the index form writes them (Greek letters, multi-letter names upright)."""
    if label.startswith("d(") and label.endswith(")"):
        return r"d\left(" + _label_latex(label[2:-1]) + r"\right)"
    if "/" in label:
        num, den = label.split("/", 1)
        return r"\frac{" + _partials_latex(num) + "}{" + _partials_latex(den) + "}"
    return _partials_latex(label)


def _partials_latex(text: str) -> str:
    from .latex import _name, split_order
    out = []
    for piece in text.split("∂"):
        if not piece and not out:
            continue                         # the text starts with ∂
        order, piece = split_order(piece)
        if piece.startswith("vec(") and piece.endswith(")"):
            name = r"\operatorname{vec}(" + _name(piece[4:-1]) + ")"
        else:
            name = _name(piece)
        if text.startswith("∂"):
            name = (r"\partial " if order is None else r"\partial^{%d} " % order) + name
        out.append(name)
    return "".join(out)


def _from_text_label(label: str) -> str:
    """A Program's text label (``dL/dx_p``, ``d(dL/dx_p)``) the way matrix forms write
    derivatives (``∂L/∂x``, ``d(∂L/∂x)``): partials, no indices."""
    if label.startswith("d(") and label.endswith(")"):
        return "d(" + _from_text_label(label[2:-1]) + ")"
    if "/" in label and label.startswith("d"):
        num, den = label.split("/", 1)
        return ("∂" + num[1:].split("_")[0] + "/"
                + "".join("∂" + p[1:].split("_")[0] for p in den.split(" ")))
    return label.split("_")[0]


def _dim_sizes(program, arrays, sizes):
    size = {}
    for name, dims in program._inputs.items():
        if name in arrays:
            for d, n in zip(dims, np.shape(arrays[name])):
                size.setdefault(d, n)
    for k, v in {**program._sizes, **(sizes or {})}.items():
        size.setdefault("=" + k, v)
    return size


def _symbol(name: str) -> str:
    return name


def _derivative_label(d) -> str:
    of = d.of
    names = [w.split("_")[0] for w in d.wrt]
    order = len(names)
    top = ("∂" if order == 1 else f"∂{_sup(order)}") + of
    return top + "/" + "".join("∂" + n for n in names)


def _sup(n):
    return {2: "²", 3: "³", 4: "⁴"}.get(n, f"^{n}")


def _layout_note(d) -> str:
    """Which axis of the result is which, as the matrix is written: from the result's own
    axis order, so an explicit layout (``layout="qp"``) is described as it is, never as the
    default it reverses."""
    st = d.output
    if not d.wrt or not st.indices:
        return ""
    wrt_names = [w.split("_")[0] for w in d.wrt]
    entry, name = {}, {}                 # result index -> its wrt entry (x_p) / tensor (x)
    for w, n in zip(d.wrt, wrt_names):
        for i in _wrt_indices(w):
            entry[i], name[i] = w, n
    n_out = sum(1 for i in st.indices if i not in entry)
    layout = d.layout if isinstance(d.layout, str) else "".join(d.layout)
    named = f"{layout} layout" if layout in ("numerator", "denominator") else f"layout {layout}"
    if n_out == 0 and len(wrt_names) == 1:
        own = tuple(_wrt_indices(d.wrt[0]))
        if tuple(st.indices) == own:
            return f"denominator layout: the shape of {wrt_names[0]}"
        if len(st.indices) == 2:
            return f"layout {''.join(st.indices)}: the transpose of the shape of {wrt_names[0]}"
        return f"layout {''.join(st.indices)}"
    if len(st.indices) == 1:
        (i,) = st.indices
        return f"a vector along {entry[i]}" if n_out == 0 else named
    if len(st.indices) != 2:
        return named
    rows, cols = st.indices
    if n_out == 0:
        return f"rows {entry[rows]}, columns {entry[cols]}"
    return f"{named}: rows {name.get(rows, d.of)}, columns {name.get(cols, d.of)}"


def _wrt_indices(w):
    from ..parser import split_tensor
    return split_tensor(w)[1]


def matrix_form(program, check=True) -> MatrixForm:
    """The matrix notation of a program or derivative (``MatrixForm``; check ``.exists``).

    >>> print(ed.matrix_form(ed.diff("L = a_i X_ij b_j", wrt="X")))
    ∂L/∂X = a bᵀ   (denominator layout: the shape of X)
    """
    from ..program import Derivative, Program, parse
    if isinstance(program, str):
        program = parse(program)
    elif not isinstance(program, Program):
        raise EinderivError(f"matrix_form takes a formula string or a Program, got "
                            f"{type(program).__name__}")
    tr = _Translator(program)
    statements = []
    is_derivative = isinstance(program, Derivative)
    try:
        for name, dims in program._inputs.items():
            if len(dims) > 2:
                raise NoMatrixForm(f"{name} has {len(dims)} axes")
        for st in program.statements:
            last = st.name == program.outputs[-1]
            if len(program.outputs) > 1 and st.name in program.outputs:
                raise NoMatrixForm("the program has several outputs")
            if last and is_derivative:
                label = _derivative_label(program)
            elif st.name in program._labels:
                label = _from_text_label(program._labels[st.name])
            else:
                label = st.name.lstrip("∂↦")
            if len(st.indices) > 2:
                if last and len(st.indices) <= 4 and is_derivative:
                    statements.append(_kron_statement(tr, program, st, label))
                    continue
                raise NoMatrixForm(f"{program.label(st)} has {len(st.indices)} axes")
            node = tr.expr_node(st.expr, st.indices)
            statements.append(Statement_(label, node, st.name, st.indices))
    except NoMatrixForm as why:
        return MatrixForm(program, [], reason=str(why))
    note = ""
    if is_derivative:
        note = _layout_note(program)
        if statements[-1].kron:
            note = f"{note}, vec stacks columns" if note else "vec stacks columns"
    form = MatrixForm(program, statements, note=note)
    if check and not _check(form):
        return MatrixForm(program, [], reason="the matrix translation did not match the index "
                                              "form numerically (a bug in einderiv)")
    return form


def _kron_statement(tr, program, st, label):
    """A 3- or 4-axis derivative as ∂vec(F)/∂vec(X) = G ⊗ F' (column-major vec)."""
    d = program
    n_wrt = sum(len(_wrt_indices(w)) for w in d.wrt)
    if len(d.wrt) != 1:
        raise NoMatrixForm(f"the result has {len(st.indices)} axes")
    out_idx = tuple(i for i in st.indices if i not in _wrt_indices(d.wrt[0]))
    wrt_idx = tuple(_wrt_indices(d.wrt[0]))
    if n_wrt > 2 or len(out_idx) > 2:
        raise NoMatrixForm(f"the result has {len(st.indices)} axes")
    wrt_name = d.wrt[0].split("_")[0]
    own = tuple(getattr(d, "_label_parts", (None, out_idx))[1])    # d.of's own axis order
    if tuple(st.indices) == own + wrt_idx:
        rows, cols = own, wrt_idx
    elif tuple(st.indices) == wrt_idx + own:
        rows, cols = wrt_idx, own
    elif d.layout not in ("numerator", "denominator"):
        layout = d.layout if isinstance(d.layout, str) else "".join(d.layout)
        raise NoMatrixForm(f"layout '{layout}' orders the axes ({', '.join(st.indices)}), neither "
                           f"{d.of}'s then {wrt_name}'s nor the reverse; the vec and Kronecker form "
                           f"is written for those two orders")
    else:
        raise NoMatrixForm(f"the result has {len(st.indices)} axes")
    r1, r2 = (rows + (None, None))[:2]
    c1, c2 = (cols + (None, None))[:2]
    dims = st.expr.dim_map
    terms = []
    for term in st.expr.terms:
        terms.append(_kron_term(tr, term, (r1, c1), (r2, c2), dims))
    node = terms[0] if len(terms) == 1 else Sum(tuple(terms))
    of_name = d.of
    num = f"vec({of_name})" if len(out_idx) == 2 else of_name
    den = f"vec({wrt_name})" if len(wrt_idx) == 2 else wrt_name
    return Statement_(f"∂{num}/∂{den}", node, st.name, st.indices, kron=True)


def _kron_term(tr, term, inner, outer, dims):
    """One term as coeff · (G ⊗ F) with F on the inner (row, col) pair, G on the outer."""
    from ..ir import factor_indices
    factors = list(term.factors)
    inner_set = {i for i in inner if i is not None}
    outer_set = {i for i in outer if i is not None}
    # connected components of the factor graph over summed indices
    free = inner_set | outer_set
    groups = []
    for f in factors:
        idx = set(factor_indices(f))
        merged = [g for g in groups if g[1] & idx - free]
        new = ([f], idx)
        for g in merged:
            groups.remove(g)
            new = (new[0] + g[0], new[1] | g[1])
        groups.append(new)
    inner_f, outer_f, scalar_f = [], [], []
    for fs, idx in groups:
        hit = idx & free
        if not hit:
            scalar_f.extend(fs)
        elif hit <= inner_set:
            inner_f.extend(fs)
        elif hit <= outer_set:
            outer_f.extend(fs)
        else:
            raise NoMatrixForm("the result has more than two axes and no Kronecker structure")

    def block(fs, pair):
        sub = Term(Fraction(1), tuple(fs))
        order = tuple(i for i in pair if i is not None)
        row, col = pair
        node = tr.term_node(sub, order, dims)
        if row is None and col is not None:      # a row block: 1 × n
            node = mul(Fraction(1), transpose(node))
        return node

    f_node = block(inner_f, inner)
    g_node = block(outer_f, outer)
    scal = []
    if scalar_f:
        scal = list(tr.term_node(Term(Fraction(1), tuple(scalar_f)), (), dims).factors)
    return mul(term.coeff, *scal, Kron(g_node, f_node))


def _check(form: MatrixForm) -> bool:
    """Evaluate the matrix form and the index form on random inputs; True when they agree."""
    program = form.program
    rng = np.random.default_rng(12345)
    size = {}
    for k, v in program._sizes.items():
        size["=" + k] = v
    candidates = iter([3, 4, 2, 5, 6, 7, 8, 9, 10, 11])
    arrays = {}
    for name, dims in program._inputs.items():
        for d in dims:
            if d not in size:
                size[d] = next(candidates, 3)
        arrays[name] = rng.uniform(0.5, 1.5, size=tuple(size[d] for d in dims))
    sizes = {}                          # indices that only sizes= sizes, left open at parse
    for group in program._members.values():
        for tensor, _, index, _ in group:
            if tensor == "sizes" and "=" + index not in size:
                size["=" + index] = sizes[index] = next(candidates, 3)
    sizes = sizes or None
    try:
        expected = np.asarray(program.evaluate(sizes=sizes, **arrays), dtype=float)
        got = np.asarray(form.evaluate(sizes=sizes, **arrays), dtype=float)
    except Exception:  # noqa: BLE001 - any failure means: do not show this form
        return False
    if expected.shape != got.shape:
        return False
    return bool(np.allclose(expected, got, rtol=1e-9, atol=1e-9, equal_nan=True))
