"""IR → readable text in the language itself, with every summation written out.

``sum_j(A_ij B_jk)`` shows where each sum stands; summed indices get the first free letters
of ``i j k l m n a b c ...``; a negative power is written as a division.
"""

from __future__ import annotations

from fractions import Fraction

from ..ir import Delta, Expr, Func, Power, Size, Tensor, Term, rename_term, term_dims, term_indices
from ..simplify import const_value

__all__ = ["format_expr", "format_statement", "format_number", "format_indices", "dummy_letters",
           "split_term"]

POOL = "ijklmnabcdefghorstuvwxyz" + "αβγεζηθκλμνξπρστυφχψω"


MAX_SHOWN_DENOMINATOR = 10**6   # a fraction with a longer denominator is shown as a decimal


def format_number(c) -> str:
    if isinstance(c, Fraction):
        if c.denominator == 1:
            if abs(c.numerator) >= 10**16 and Fraction(repr(float(c))) == c:
                return repr(float(c))  # 1e+300, not 301 digits (reads back exactly)
            return str(c.numerator)
        d = c.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:
            return _exact_decimal(c)
        if c.denominator > MAX_SHOWN_DENOMINATOR:
            return repr(float(c))  # (1/2)^(1/3) / 3 as 0.26456684199469993, not 3968…/15…0
        return f"{c.numerator}/{c.denominator}"
    return repr(float(c))


def _exact_decimal(c: Fraction) -> str:
    """Every digit of a number whose denominator divides a power of ten."""
    from decimal import Decimal, localcontext
    with localcontext() as ctx:
        ctx.prec = max(50, len(str(c.numerator)) + len(str(c.denominator)) + 5)
        text = str(Decimal(c.numerator) / Decimal(c.denominator))
    if "E" in text:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}e{int(exponent)}"
    return text


def format_indices(indices) -> str:
    if not indices:
        return ""
    if all(len(i) == 1 for i in indices):
        return "_" + "".join(indices)
    if len(indices) == 1:
        return "_{" + indices[0] + ",}"  # y_{out,}: y_{out} would be three indices (SPEC §1)
    return "_{" + ",".join(indices) + "}"


def dummy_letters(count: int, taken: set) -> list[str]:
    out = []
    for letter in POOL:
        if len(out) == count:
            return out
        if letter not in taken:
            out.append(letter)
    n = 0
    while len(out) < count:
        name = f"s{n}"
        n += 1
        if name not in taken:
            out.append(name)
    return out


def split_term(term: Term, free, taken: set, bindings: dict | None = None):
    """Rename a term's summed indices to letters; return (term, summed letters).

    With ``bindings`` (letter → dimension, shared by a whole statement) a letter is never
    reused for another dimension, because a statement gives one index name one size.

    A summed index that no tensor or δ of the term carries (only the index list of a
    broadcast group names it: Σ_l (h / sin(h)) over an l of B) would be a letter that the
    text ties to nothing; the term gets the size of its dimension instead, Σ_l f = n_l f.
    """
    dummies = [i for i in term_indices(term) if i not in free]
    if not dummies:
        return term, []
    hidden = [i for i in dummies if not _carried(i, term.factors)]
    if hidden:
        dims = term_dims(term.factors)
        sizes = tuple(Size(dims[i]) for i in hidden)
        dummies = [i for i in dummies if i not in hidden]
        term = Term(term.coeff, term.factors + sizes)
        taken = set(taken) | set(hidden)       # never a letter of a shown index
        if not dummies:
            return term, []
    if bindings is None:
        letters = dummy_letters(len(dummies), set(taken) | set(free))
        return rename_term(term, dict(zip(dummies, letters))), letters
    dims = term_dims(term.factors)
    blocked = set(taken) | set(free)
    letters = []
    for d in dummies:
        for letter in _letters():
            if letter in blocked or letter in letters:
                continue
            bound = bindings.get(letter)
            if bound is None or bound == dims.get(d):
                break
        bindings.setdefault(letter, dims.get(d))
        letters.append(letter)
    return rename_term(term, dict(zip(dummies, letters))), letters


def _carried(index, factors) -> bool:
    """Whether a tensor or a δ among ``factors`` (inside functions and powers too) carries
    ``index``, so that the text ties its letter to a dimension."""
    stack = list(factors)
    while stack:
        f = stack.pop()
        kind = type(f)
        if kind is Tensor:
            if index in f.indices:
                return True
        elif kind is Delta:
            if index in (f.a, f.b):
                return True
        elif kind is Func or kind is Power:
            e = f.arg if kind is Func else f.base
            if index in e.indices:    # free there: every term of e means this index
                stack.extend(g for t in e.terms for g in t.factors)
    return False


def _letters():
    yield from POOL
    n = 0
    while True:
        yield f"s{n}"
        n += 1


def _exponent_of(factor):
    if isinstance(factor, Power):
        n = const_value(factor.exponent)
        if n is not None and n < 0:
            return n
    return None


def _atomic_base(base: Expr) -> bool:
    if len(base.terms) != 1:
        return False
    t = base.terms[0]
    if t.coeff != 1 or len(t.factors) != 1:
        return not t.factors and t.coeff >= 0 and not isinstance(t.coeff, float)
    if set(term_indices(t)) - set(base.indices):
        return True  # printed as sum_j(...)
    return isinstance(t.factors[0], (Tensor, Func, Delta, Size))


def _format_power(base: Expr, n, taken, bindings=None) -> str:
    body = format_expr(base, taken, bindings)
    if not _atomic_base(base):
        body = f"({body})"
    if n == 1:
        return body
    text = format_number(n)
    if not (isinstance(n, Fraction) and n >= 0 and (n.denominator == 1 or "/" not in text)):
        text = f"({text})"
    return f"{body}^{text}"


def format_factor(f, taken: set, bindings=None) -> str:
    if isinstance(f, Tensor):
        return f.name + format_indices(f.indices)
    if isinstance(f, Delta):
        return "δ" + format_indices((f.a, f.b))
    if isinstance(f, Size):
        for letter, dim in (bindings or {}).items():
            if dim == f.dim:
                return f"sum_{letter}(1)"  # Σ_i 1, the size of i: reads back as written
        if f.dim.startswith("="):
            return f"sum_{f.dim[1:]}(1)"
        tensor, _, axis = f.dim.rpartition(".")
        return f"size({tensor},{axis})"
    if isinstance(f, Func):
        return f"{f.name}({format_expr(f.arg, taken, bindings)})"
    if isinstance(f, Power):
        n = const_value(f.exponent)
        if n is not None:
            return _format_power(f.base, n, taken, bindings)
        body = format_expr(f.base, taken, bindings)
        if not _atomic_base(f.base):
            body = f"({body})"
        return f"{body}^({format_expr(f.exponent, taken, bindings)})"
    raise TypeError(f)


def format_term(term: Term, free, taken: set, bindings=None) -> tuple[str, bool]:
    """A term as text (without its sign) and whether it is negative."""
    term, letters = split_term(term, free, taken, bindings)
    inner_taken = set(taken) | set(free) | set(letters)
    numer, denom = [], []
    for f in term.factors:
        n = _exponent_of(f)
        if n is None:
            numer.append(format_factor(f, inner_taken, bindings))
        else:
            denom.append(_format_power(f.base, -n, inner_taken, bindings))
    c = term.coeff
    negative = c < 0
    c = -c if negative else c
    parts = []
    if c != 1 or not numer:
        parts.append(format_number(c))
    body = " ".join(parts + numer)
    for d in denom:
        body += f" / {d}"
    if letters:
        lead = ""
        if c != 1 and numer:
            lead = format_number(c) + " "
            body = " ".join(numer) + "".join(f" / {d}" for d in denom)
        shown = sorted(letters, key=lambda c: (POOL.find(c) if c in POOL else len(POOL), c))
        body = f"{lead}sum{format_indices(shown)}({body})"
    return body, negative


def format_expr(e: Expr, taken: set = frozenset(), bindings=None) -> str:
    """An expression as text, summations explicit."""
    if not e.terms:
        return "0"
    out = []
    for n, t in enumerate(e.terms):
        text, negative = format_term(t, e.indices, taken, bindings)
        if n == 0:
            out.append(f"-{text}" if negative else text)
        else:
            out.append(f" - {text}" if negative else f" + {text}")
    return "".join(out)


def format_statement(e: Expr, lhs_indices, lhs_dims) -> str:
    """The right-hand side of a statement, written so that it reads back as the same
    statement: a summed letter is reused across terms only for the same dimension, and a
    size prints as ``sum_i(1)`` with a letter of that dimension."""
    bindings = dict(zip(lhs_indices, lhs_dims))
    format_expr(e, set(lhs_indices), bindings)          # first pass: every letter's dimension
    return format_expr(e, set(lhs_indices), bindings)
