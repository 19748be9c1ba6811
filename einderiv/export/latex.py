"""IR → LaTeX: ``\\sum_{j}`` for every sum, ``\\delta_{ip}``, fractions for divisions."""

from __future__ import annotations

import re
from fractions import Fraction

from ..ir import Delta, Expr, Func, Power, Size, Tensor, Term, term_indices
from ..simplify import const_value
from .text import MAX_SHOWN_DENOMINATOR, format_number, split_term

__all__ = ["expr_latex", "program_latex", "label_latex"]

_GREEK = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\epsilon", "ζ": r"\zeta",
    "η": r"\eta", "θ": r"\theta", "κ": r"\kappa", "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu",
    "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma", "τ": r"\tau", "υ": r"\upsilon",
    "φ": r"\phi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega",
}


def _name(text: str) -> str:
    out = "".join(_GREEK.get(c, c) for c in text)
    if len(text) > 1 and out == text:
        return r"\mathrm{" + text + "}"
    return out


def _sub(indices) -> str:
    if not indices:
        return ""
    sep = "" if all(len(i) == 1 for i in indices) else ","
    return "_{" + sep.join(_name(i) for i in indices) + "}"


def _number(c) -> str:
    if isinstance(c, Fraction) and 1 < c.denominator <= MAX_SHOWN_DENOMINATOR:
        return rf"\frac{{{c.numerator}}}{{{c.denominator}}}"
    text = format_number(c)
    mantissa, e, power = text.partition("e")
    if not e:
        return text
    return rf"{mantissa} \cdot 10^{{{int(power)}}}"       # 2e+20 → 2 \cdot 10^{20}


def _atomic(base: Expr) -> bool:
    r"""A base that needs no parentheses under an exponent: one tensor, function or δ, and
    no sum (``(\sum_i x_i)^2`` is not ``\sum_i x_i^2``)."""
    if len(base.terms) != 1:
        return False
    t = base.terms[0]
    summed = any(i not in base.indices for i in term_indices(t))
    return (t.coeff == 1 and len(t.factors) == 1 and not summed
            and isinstance(t.factors[0], (Tensor, Func, Delta)))


def factor_latex(f, taken) -> str:
    if isinstance(f, Tensor):
        return _name(f.name) + _sub(f.indices)
    if isinstance(f, Delta):
        return r"\delta" + _sub((f.a, f.b))
    if isinstance(f, Size):
        if f.dim.startswith("="):
            return r"n_{" + f.dim[1:] + "}"
        tensor, _, axis = f.dim.rpartition(".")
        return r"\operatorname{size}(" + _name(tensor) + "," + axis + ")"
    if isinstance(f, Func):
        from ..functions import FUNCTIONS
        return FUNCTIONS[f.name].latex + r"\left(" + expr_latex(f.arg, taken) + r"\right)"
    if isinstance(f, Power):
        body = expr_latex(f.base, taken)
        if not _atomic(f.base):
            body = r"\left(" + body + r"\right)"
        n = const_value(f.exponent)
        if n == 1:
            return body
        if n == Fraction(1, 2):
            return r"\sqrt{" + expr_latex(f.base, taken) + "}"
        exp = _number(n) if n is not None else expr_latex(f.exponent, taken)
        return body + "^{" + exp + "}"
    raise TypeError(f)


def term_latex(term: Term, free, taken) -> tuple[str, bool]:
    term, letters = split_term(term, free, taken)
    inner = set(taken) | set(free) | set(letters)
    numer, denom, reciprocals = [], [], []
    for f in term.factors:
        n = const_value(f.exponent) if isinstance(f, Power) else None
        if n is not None and n < 0:
            denom.append(factor_latex(Power(f.base, _const(-n)), inner))
            reciprocals.append(f.base if n == -1 else None)
        else:
            numer.append(factor_latex(f, inner))
    if len(denom) == 1 and reciprocals[0] is not None:   # the whole denominator: no parentheses
        denom = [expr_latex(reciprocals[0], inner)]
    c = term.coeff
    negative = c < 0
    c = -c if negative else c
    body = " ".join(numer)
    if denom:
        body = r"\frac{" + (body or "1") + "}{" + " ".join(denom) + "}"
    if letters:
        body = r"\sum" + _sub(letters) + " " + (body or "1")
    if c != 1 or not body:
        body = (_number(c) + " " + body).strip()
    return body, negative


def _const(n):
    from ..simplify import const
    return const(n)


def expr_latex(e: Expr, taken=frozenset()) -> str:
    if not e.terms:
        return "0"
    out = []
    for k, t in enumerate(e.terms):
        text, negative = term_latex(t, e.indices, taken)
        if k == 0:
            out.append("-" + text if negative else text)
        else:
            out.append((" - " if negative else " + ") + text)
    return "".join(out)


def label_latex(program, st) -> str:
    return _label_latex(program.label(st))


_ORDER = re.compile(r"^(?:[²³⁴⁵⁶⁷⁸⁹]|\^\d+)")
_SUPERSCRIPT_DIGITS = {c: n for n, c in enumerate("²³⁴⁵⁶⁷⁸⁹", start=2)}


def split_order(text: str):
    """The order a label writes before a name and the rest: ``²L`` → (2, "L"), ``^12L`` →
    (12, "L"), ``L`` → (None, "L")."""
    found = _ORDER.match(text)
    if found is None:
        return None, text
    mark = found.group(0)
    return _SUPERSCRIPT_DIGITS.get(mark) or int(mark[1:]), text[found.end():]


def _label_latex(label: str) -> str:
    """``dL/dx_p`` as a fraction of partials, ``d²L/dx_p dx_q`` (or ``d^12L/...``) with its
    order, ``d(dL/dx_p)`` (the differential of a derivative) as d of that fraction."""
    if label.startswith("d(") and label.endswith(")"):
        return r"d\left(" + _label_latex(label[2:-1]) + r"\right)"
    if "/" in label and label.startswith("d"):
        num, den = label.split("/", 1)
        parts = den.split(" ")
        order = len(parts)
        _, head = split_order(num[1:])
        name, _, idx = head.partition("_")
        top = (r"\partial^{%d} " % order if order > 1 else r"\partial ") + _name(name) + (_sub(_idx(idx)) if idx else "")
        bottom = " ".join(r"\partial " + _name(p[1:].partition("_")[0]) + _sub(_idx(p[1:].partition("_")[2])) for p in parts)
        return r"\frac{" + top + "}{" + bottom + "}"
    name, _, idx = label.partition("_")
    return _name(name) + (_sub(_idx(idx)) if idx else "")


def _idx(text):
    if text.startswith("{"):
        inner = text[1:-1]
        return tuple(i for i in inner.split(",") if i) if "," in inner else tuple(inner)
    return tuple(text)


def program_latex(program) -> str:
    lines = [label_latex(program, st) + " = " + expr_latex(st.expr, set(st.indices))
             for st in program.statements]
    if len(lines) == 1:
        return lines[0]
    return r"\begin{aligned}" + r" \\ ".join(l.replace(" = ", " &= ", 1) for l in lines) + r"\end{aligned}"
