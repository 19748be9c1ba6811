"""A derivative explained step by step, for a student: the formula with its sums, the
differential by the product rule, the substitution ∂A_ij/∂A_pq = δ_ip δ_jq, the δ
elimination, the result, its shape in the chosen layout and its matrix form.

    >>> print(ed.explain("C_ik = A_ij B_jk", wrt="A_pq"))      # doctest: +SKIP
"""

from __future__ import annotations


from . import simplify as S
from .errors import EinderivError
from .export.matrix import dimension_names, matrix_form
from .export.text import format_expr, format_indices, split_term
from .ir import Delta, Expr, Func, Power, Tensor, Term
from .parser import split_tensor

__all__ = ["explain", "matrix_form"]


def explain(src, wrt=None, of=None, layout="numerator", depends=None, sizes=None) -> str:
    """The derivation of ``diff(src, wrt, ...)`` as numbered steps of text.

    Without ``wrt`` the differential alone is explained.
    """
    from .program import Program, parse
    from .transforms import diff, differential
    program = src if isinstance(src, Program) else parse(src, sizes=sizes)
    if isinstance(src, Program):
        sizes = None
    names = [st.name for st in program.statements]
    given_of = of
    of = of or names[-1]
    if of not in names:
        raise EinderivError(f"of='{of}' is not defined by the program (it defines: {', '.join(names)})")
    upto = program.statements[:names.index(of) + 1]
    wrt_list = [] if wrt is None else list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
    out = _Steps()

    # the derivative first: it validates wrt, layout and depends with the core's own messages
    d = diff(program, wrt_list, of=given_of, layout=layout, depends=depends) if wrt_list else None
    # a Derivative differentiated again continues its wrt list: explain the new entries only
    inherited = len(getattr(program, "wrt", ())) if given_of is None else 0
    var_entries = list(d.wrt)[inherited:] if d is not None else []

    intro = f"Differentiate {_lhs(upto[-1])}"
    if (len(program.statements) == 1 and program.source.strip() and "\n" not in program.source.strip()
            and not hasattr(program, "wrt")):
        intro = f"Differentiate {program.source.strip().rstrip(';')}"
    if d is not None:
        intro += " with respect to " + ", then ".join(var_entries)
        intro += f" ({_layout_name(layout)} layout)." if isinstance(layout, str) and layout in (
            "numerator", "denominator") else f" (layout {_layout_text(layout)})."
    else:
        intro += ": its differential."
    out.text(intro)

    out.step("The formula, every sum written out" if len(upto) == 1 else
             "The program, every sum written out")
    for st in upto:
        out.line(f"{_lhs(st)} = {format_expr(st.expr, set(st.indices))}")
    form = matrix_form(_slice(program, of))
    if form.exists:
        out.note("in matrix form: " + "; ".join(str(form).split("\n")))
    out.note(_shapes_sentence(program))

    if depends:
        if wrt_list:
            out.step("The tensors given by depends= are functions of " + ", ".join(sorted(set(depends.values()))))
            out.line("their derivatives stay as inputs: " + ", ".join(
                f"∂{k}/∂{v} = d{k}d{v}" for k, v in depends.items()))
        return _finish(out, d, program, layout)

    dprog = differential(program, of=of)
    rules = _rules(upto)
    out.step("The differential, by " + rules if len(upto) == 1 else
             "The differential, one statement at a time (" + rules + "; an intermediate's "
             "differential carries the earlier ones: the chain rule)")
    for st in dprog.statements:
        if st.name.startswith("d") and st.name[1:] in names:
            out.line(f"{_lhs(st)} = {format_expr(st.expr, set(st.indices))}")
    dform = matrix_form(dprog)
    if dform.exists:
        lines = [l for l in str(dform).split("\n") if l.startswith("d")]
        out.note("in matrix form: " + "; ".join(lines))
    if d is None:
        return out.render()

    first = var_entries[0]
    var, var_idx = split_tensor(first)
    consts = [n for n in program.inputs if n != var and _reads(upto, n)]
    dims = _input_dims(program, var)
    out.step(f"Substitute ∂{var}{format_indices(_generic(len(var_idx)))}/∂{first} = "
             + (" ".join(f"δ_{a}{b}" for a, b in zip(_generic(len(var_idx)), var_idx)) or "1")
             + f" for d{var}" + (f"; {_and(consts)} {'does' if len(consts) == 1 else 'do'} not depend on {var}: "
                                 + ", ".join(f"d{c} = 0" for c in consts) if consts else ""))
    intermediates = [st for st in upto if st.name != of]
    for st in upto:
        label_lhs = _jacobian_label(st, first, var_idx)
        dst = dprog.statement("d" + st.name) if ("d" + st.name) in dprog.outputs or _has(dprog, "d" + st.name) else None
        if dst is None:
            continue
        if st.name == var:      # the variable itself, cut loose from its definition
            out.line(f"{label_lhs} = " + " ".join(f"δ_{a}{b}" for a, b in zip(st.indices, var_idx))
                     + f"   ({var} is the variable: its own definition is not differentiated)")
            continue
        expr = _substitute(dst.expr, var, var_idx, dims, {s.name for s in intermediates}, first)
        if expr is None:
            out.line(f"{label_lhs} = 0")
            continue
        out.line(f"{label_lhs} = {format_expr(expr, frozenset())}")
    if intermediates:
        out.note("(the chain rule: d" + intermediates[0].name + "/d" + var + "_"
                 + "".join(intermediates[0].indices) + "".join(var_idx) + " stands for "
                 + _jacobian_label(intermediates[0], first, var_idx) + ", found above)")
    elimination = _elimination_note(dprog, upto, var, var_idx, dims, {s.name for s in intermediates}, first)
    out.step("Eliminate the δ" + (f": {elimination}" if elimination else "") +
             ("" if len(upto) == 1 else ", statement by statement"))
    for st in upto:
        one = diff(program, [first], of=st.name, layout="numerator", depends=depends)
        out.line(f"{one.label(one.output)} = {format_expr(one.output.expr, set(one.output.indices))}")
    if len(var_entries) > 1:
        out.step("Differentiate again, the same way, with respect to " + ", then ".join(var_entries[1:]))
        for k in range(2, len(var_entries) + 1):
            partial = diff(program, var_entries[:k], of=of, layout="numerator")
            out.line(f"{partial.label(partial.output)} = "
                     f"{format_expr(partial.output.expr, set(partial.output.indices))}")
    return _finish(out, d, program, layout)


def _finish(out, d, program, layout):
    out.step("The result")
    for st in d.statements:
        out.line(f"{d.label(st)} = {format_expr(st.expr, set(st.indices))}")
    names = dimension_names(program)
    shape = "×".join(names.get(x, "?") for x in d.output.dims) or "a scalar (no axes)"
    order = ", ".join(d.indices)
    if isinstance(layout, str) and layout == "numerator":
        how = f"the axes of {d.of} first, then those of {', '.join(d.wrt)}"
    elif isinstance(layout, str) and layout == "denominator":
        how = f"the axes of {', '.join(d.wrt)} first, then those of {d.of}"
    else:
        how = "the order given"
    out.step(f"Shape in {_layout_name(layout)} layout ({how})")
    out.line(f"axes ({order}): {shape}" if d.indices else "a scalar (no axes)")
    form = matrix_form(d)
    out.step("Matrix form")
    if form.exists:
        for line in str(form).split("\n"):
            out.line(line)
    else:
        out.line(f"none ({form.reason}); the index form above is the answer")
    return out.render()


# --- helpers -------------------------------------------------------------------------------------

class _Steps:
    def __init__(self):
        self.lines = []
        self.n = 0

    def text(self, s):
        self.lines.append(s)

    def step(self, title):
        self.n += 1
        self.lines.append("")
        self.lines.append(f"{self.n}. {title}:")

    def line(self, s):
        self.lines.append("     " + s)

    def note(self, s):
        self.lines.append("     " + s)

    def render(self):
        return "\n".join(self.lines)


def _lhs(st) -> str:
    return st.name + format_indices(st.indices)


def _layout_name(layout):
    return layout if isinstance(layout, str) and layout in ("numerator", "denominator") else "the given"


def _layout_text(layout):
    return layout if isinstance(layout, str) else " ".join(layout)


def _generic(n):
    return tuple("ijklmn"[:n])


def _and(names):
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _reads(statements, name):
    from .ir import tensor_names
    return any(name in tensor_names(st.expr) for st in statements)


def _has(program, name):
    return any(st.name == name for st in program.statements)


def _input_dims(program, name):
    if name in program._inputs:
        return program._inputs[name]
    for st in program.statements:
        if st.name == name:
            return st.dims
    raise EinderivError(f"'{name}' is not a tensor of the program")


def _slice(program, of):
    """The program up to the statement ``of`` (for its matrix form)."""
    from .program import Program
    names = [st.name for st in program.statements]
    statements = program.statements[:names.index(of) + 1]
    p = Program(statements, (of,), program._inputs, program._members, program._sizes, source=program.source)
    return p


def _shapes_sentence(program) -> str:
    names = dimension_names(program)
    parts = []
    for name, dims in program._inputs.items():
        if dims:
            parts.append(f"{name} is {'×'.join(names[d] for d in dims)}")
        else:
            parts.append(f"{name} is a scalar")
    return "shapes: " + ", ".join(parts) if parts else ""


def _rules(statements) -> str:
    used = ["the sum rule"]
    product = func = power = False
    names = set()

    def visit(e: Expr):
        nonlocal product, func, power
        for t in e.terms:
            if len(t.factors) > 1:
                product = True
            for f in t.factors:
                if isinstance(f, Func):
                    func = True
                    names.add(f.name)
                    visit(f.arg)
                elif isinstance(f, Power):
                    if S.const_value(f.exponent) != 1:
                        power = True
                    visit(f.base)

    for st in statements:
        visit(st.expr)
    if product:
        used.append("the product rule d(fg) = df g + f dg")
    if power:
        used.append("the power rule d(u^n) = n u^(n-1) du")
    if func:
        used.append("the chain rule d f(u) = f'(u) du for " + ", ".join(sorted(names)))
    return ", ".join(used[:-1]) + " and " + used[-1] if len(used) > 1 else used[0]


def _jacobian_label(st, entry, var_idx) -> str:
    return f"d{st.name}{format_indices(st.indices)}/d{entry}"


def _substitute(e: Expr, var, var_idx, dims, intermediates, entry):
    """``e`` (a differential) with dVAR → δ's, d(intermediate) → its Jacobian, other d's → 0.
    Returns a non-canonical Expr (deltas kept) over e's indices and the wrt indices."""
    wdims = dict(zip(var_idx, dims))

    def sub_expr(x: Expr):
        terms = []
        for t in x.terms:
            nt = sub_term(t)
            if nt is not None:
                terms.append(nt)
        if not terms:
            return None
        extra = {i: d for i, d in wdims.items() if any(_mentions(t, i) for t in terms)}
        dm = {**x.dim_map, **extra}
        order = tuple(sorted(dm))
        return Expr(order, tuple(dm[i] for i in order), tuple(terms))

    def sub_term(t: Term):
        factors = []
        for f in t.factors:
            if isinstance(f, Tensor) and f.name == "d" + var:
                for i, w, dd in zip(f.indices, var_idx, dims):
                    a, b = sorted((i, w))
                    factors.append(Delta(a, b, dd))
            elif isinstance(f, Tensor) and f.name.startswith("d") and f.name[1:] in intermediates:
                name = f"d{f.name[1:]}/d{var}"
                factors.append(Tensor(name, tuple(f.indices) + tuple(var_idx),
                                      tuple(f.dims) + tuple(dims)))
            elif isinstance(f, Tensor) and f.name.startswith("d"):
                return None
            elif isinstance(f, Power) and S.const_value(f.exponent) == 1 and _has_tangent(f.base):
                base = sub_expr(f.base)
                if base is None:
                    return None
                factors.append(Power(base, f.exponent))
            else:
                factors.append(f)
        return Term(t.coeff, tuple(factors))

    return sub_expr(e)


def _mentions(t: Term, index) -> bool:
    from .ir import term_indices
    return index in term_indices(t)


def _has_tangent(e: Expr) -> bool:
    for t in e.terms:
        for f in t.factors:
            if isinstance(f, Tensor) and f.name.startswith("d"):
                return True
            if isinstance(f, Power) and _has_tangent(f.base):
                return True
    return False


def _elimination_note(dprog, statements, var, var_idx, dims, intermediates, entry) -> str:
    """One concrete instance of the rule Σ_j δ_jq f_j = f_q, from the substituted terms."""
    if not var_idx:
        return f"there is none ({var} is a scalar: ∂{var}/∂{var} = 1)"
    for st in statements:
        name = "d" + st.name
        if not _has(dprog, name):
            continue
        e = _substitute(dprog.statement(name).expr, var, var_idx, dims, intermediates, entry)
        if e is None:
            continue
        found = _find_summed_delta(e, set(), set())
        if found:
            f, summed, kept = found
            return (f"a δ_{f.a}{f.b} inside a sum over {summed} sets {summed} = {kept} "
                    f"and the sum disappears (Σ_{summed} δ_{f.a}{f.b} f_{summed} = f_{kept})")
    return "each δ joining two free indices stays (it is a zero/one pattern of the result)"


def _find_summed_delta(e: Expr, outer_summed: set, taken: set):
    free = set(e.indices)
    for t in e.terms:
        t2, letters = split_term(t, free, taken)
        summed = set(letters) | (outer_summed & free)
        inner_taken = set(taken) | free | set(letters)
        for f in t2.factors:
            if isinstance(f, Delta) and (f.a in summed or f.b in summed):
                s, k = (f.a, f.b) if f.a in summed else (f.b, f.a)
                return f, s, k
            if isinstance(f, Power):
                hit = _find_summed_delta(f.base, summed | outer_summed, inner_taken)
                if hit:
                    return hit
    return None
