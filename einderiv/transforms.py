"""Programs built from programs: ``diff`` (Jacobians, Hessians, any order and layout),
``differential`` (forward mode, JVP) and ``vjp`` (a backward pass), each by the chain rule
through the intermediate statements, with the results simplified and the intermediates
they reuse folded back in.
"""

from __future__ import annotations

from . import simplify as S
from .diff import delta_seed, derive, rename_result
from .errors import EinderivError
from .export.text import format_indices
from .ir import Delta, Expr, Func, Power, Size, Tensor, Term, fresh_index, rename_expr, tensor_names
from .parser import split_tensor, _Fail, _IDENT
from .program import Derivative, Program
from .semantics import Analysis, Statement, analyze, underscore_hint

__all__ = ["diff", "differential", "vjp"]

WRT_LETTERS = "pqrstuvwxyzabcdefghijklmno"      # fresh index names for wrt="A"


def _as_analysis(src, sizes) -> tuple[Analysis, str, str | None]:
    """What to differentiate, the source text, and the default ``of``: a formula string,
    or a built Program itself (a Derivative's own statements and result, so that
    ``diff(diff(f, x), x)`` is the second derivative)."""
    if isinstance(src, Program):
        if sizes:
            raise EinderivError("sizes= goes with the formula text, not with a parsed Program: "
                                "give it to parse() with the text, or to evaluate()")
        earlier = getattr(src, "_analysis", None)
        inputs = dict(src._inputs)
        # an input the result no longer reads (x in the Hessian A + Aᵀ of x'Ax) is still a
        # variable of the program: differentiating again by it gives 0, not an error
        for name in getattr(src, "_unused", ()):
            inputs.setdefault(name, earlier.inputs[name])
        unsized = getattr(earlier, "unsized", None)
        size_only = getattr(earlier, "size_only", frozenset())
        analysis = Analysis(src.statements, inputs, {k: list(v) for k, v in src._members.items()},
                            dict(src._sizes), unsized, size_only)
        return analysis, src.source, src.outputs[-1]
    if not isinstance(src, str):
        raise EinderivError(f"expected a formula string or a Program, got {type(src).__name__}")
    return analyze(src, sizes), src, None


def _parse_wrt(entry, analysis: Analysis, what="wrt"):
    if not isinstance(entry, str):
        raise EinderivError(f"{what} entries are strings like 'A' or 'A_pq', got {entry!r}")
    try:
        name, indices = split_tensor(entry.strip())
    except _Fail as fail:
        raise EinderivError(f"{what}='{entry}': {fail.message}") from None
    return name, indices


def _variable_dims(name, analysis, depends):
    if name in analysis.inputs:
        return analysis.inputs[name]
    for st in analysis.statements:
        if st.name == name:
            return st.dims
    if depends and name in depends.values():
        return None  # an outside variable: its dimensions come from the Jacobians given
    known = ", ".join(analysis.inputs) or "none"
    glued = [n for n in analysis.inputs if n.startswith(name) and n[len(name):].isalpha()
             and len(n) - len(name) <= 4]
    hint = underscore_hint(glued[0], len(name)) if glued else ""
    raise EinderivError(f"cannot differentiate with respect to '{name}': it is not a tensor of "
                        f"the program (inputs: {known}){hint}")


def _statement_map(analysis, of, default=None):
    names = [st.name for st in analysis.statements]
    if of is None:
        of = default or names[-1]
    if of not in names:
        raise EinderivError(f"of='{of}' is not defined by the program (it defines: {', '.join(names)})")
    upto = names.index(of) + 1
    return of, {st.name: st for st in analysis.statements[:upto]}


def _needed(statements: dict, exprs) -> list:
    """The statements that the given expressions read, transitively, in program order."""
    want = set()
    stack = [n for e in exprs for n in tensor_names(e)]
    while stack:
        n = stack.pop()
        if n in statements and n not in want:
            want.add(n)
            stack.extend(tensor_names(statements[n].expr))
    return [st for name, st in statements.items() if name in want]


def _all_index_names(analysis) -> set:
    names = set()
    for st in analysis.statements:
        names.update(st.indices)
        from .ir import expr_all_indices
        names |= {i for i in expr_all_indices(st.expr) if not i.startswith("_")}
    return names


def _check_depends(depends, analysis, inherited=None):
    """``{"A": "X"}``: input A is an unknown function of X, whose Jacobian input is ``dAdX``
    (``inherited``: those a Derivative given to diff already has)."""
    inherited = inherited or {}
    if depends is None:
        return {}
    if not isinstance(depends, dict):
        raise EinderivError("depends= is a dict like {'A': 'X', 'B': 'X'}")
    out = {}
    names = set(analysis.inputs) | {st.name for st in analysis.statements}
    for k, v in depends.items():
        if not (isinstance(k, str) and isinstance(v, str) and _IDENT.match(k) and _IDENT.match(v)):
            raise EinderivError(f"depends entries are tensor names, got {k!r}: {v!r}")
        if inherited.get(k) == v:
            continue
        if k not in analysis.inputs:
            raise EinderivError(f"depends names '{k}', which is not an input of the program "
                                f"(inputs: {', '.join(analysis.inputs)})")
        if k == v:
            raise EinderivError(f"depends={{'{k}': '{v}'}} makes '{k}' a function of itself; "
                                f"name the variable it depends on")
        if f"d{k}d{v}" in names and inherited.get(f"d{k}d{v}") != v:
            raise EinderivError(f"the Jacobian of '{k}' with respect to '{v}' would be named "
                                f"'d{k}d{v}', which the program already uses; rename one of them")
        out[k] = v
    return out


def _layout_order(layout, out_idx, wrt_idx):
    natural = list(out_idx) + [i for w in wrt_idx for i in w]
    if layout in (None, "numerator"):
        return tuple(natural)
    if layout == "denominator":
        return tuple([i for w in wrt_idx for i in w] + list(out_idx))
    if isinstance(layout, str):
        if all(len(i) == 1 for i in natural):
            order = tuple(layout.replace(" ", "").replace(",", ""))
        else:
            order = tuple(p.strip() for p in layout.split(","))
    elif isinstance(layout, (list, tuple)) and all(isinstance(i, str) for i in layout):
        order = tuple(layout)
    else:
        raise EinderivError(f"layout must be 'numerator', 'denominator' or an order of the "
                            f"indices {''.join(natural)}, got {layout!r}")
    if sorted(order) != sorted(natural):
        raise EinderivError(f"layout '{layout if isinstance(layout, str) else ''.join(order)}' is not an "
                            f"order of the result's indices {' '.join(natural)} "
                            f"(or 'numerator' / 'denominator')")
    return order


def _continued_layout(layout, before, out_idx, base, wrt_idx):
    """(layout, axis order) of a derivative of a Derivative's result, stated for the whole
    derivative its label names, ∂ⁿy/∂w1 ... ∂wn (SPEC §4): numerator is y's axes then every
    wrt entry's, denominator every wrt entry's (the earlier ones first) then y's. Without
    ``layout`` the earlier layout goes on; after an explicit order the new wrt axes follow
    the earlier result's axes, and that order is the layout."""
    _, base_idx, _, base_lists = base
    if layout is None:
        if before not in ("numerator", "denominator"):
            order = tuple(out_idx) + tuple(i for w in wrt_idx for i in w)
            return order, order
        layout = before
    return layout, _layout_order(layout, base_idx, list(base_lists) + list(wrt_idx))


def diff(src, wrt, of=None, layout=None, depends=None, sizes=None) -> Derivative:
    """The derivative of a program's output with respect to one or more tensors.

    With respect to an intermediate ``h`` (or the output itself) it is the partial derivative
    with ``h`` cut loose from its definition, as if ``h`` were an input: ∂h_i/∂h_p = δ_ip.
    ``layout`` is numerator by default; for a Derivative's result the layout of the whole
    derivative, the Derivative's own by default.

    >>> print(ed.diff("C_ik = A_ij B_jk", wrt="A_pq"))
    dC_ik/dA_pq = δ_ip B_qk
    """
    analysis, source, default_of = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of, default_of)
    inherited = dict(getattr(src, "_depends", {}))   # a Derivative's depends= and Jacobians
    depends = {**inherited, **_check_depends(depends, analysis, inherited)}
    wrt_list = [wrt] if isinstance(wrt, str) else list(wrt) if isinstance(wrt, (list, tuple)) else None
    if not wrt_list:
        raise EinderivError("wrt= names the variable: 'A', 'A_pq', or a list for higher derivatives")
    entries = [(entry, *_parse_wrt(entry, analysis)) for entry in wrt_list]
    cut = {name for _, name, _ in entries if name in statements}
    chain = {n: st for n, st in statements.items() if n not in cut}
    target = statements[of]
    taken = _all_index_names(analysis) | set(target.indices)
    out_idx = target.indices
    current = S.factor_expr(Tensor(of, out_idx, target.dims)) if of in cut else target.expr
    inputs = dict(analysis.inputs)
    members = {k: list(v) for k, v in analysis.members.items()}
    derived = dict(depends)            # tensor -> variable it depends on (Jacobians too)
    program_names = (set(analysis.inputs) | {st.name for st in analysis.statements}) - set(inherited)
    wrt_names, wrt_user_idx, renames = [], [], {}
    cone = _cone(statements, of)
    used_user = set(out_idx)
    outside = {}                       # a variable outside the program -> its first wrt entry
    for entry, name, given in entries:
        dims = _variable_dims(name, analysis, depends)
        if dims is None:
            dims = _outside_dims(name, given, inputs, outside)
        if given and len(given) != len(dims):
            seen = f" (wrt='{outside[name]}')" if name in outside else ""
            raise EinderivError(f"wrt='{entry}' has {len(given)} ind{'ex' if len(given) == 1 else 'ices'} "
                                f"but {name} has {len(dims)}{seen}")
        outside.setdefault(name, entry)
        _check_depends_chains(derived, name, chain, current)
        if not given:
            letters = [c for c in WRT_LETTERS if c not in taken and c not in used_user]
            if len(letters) < len(dims):
                raise EinderivError("ran out of fresh index letters; name the wrt indices")
            given = tuple(letters[:len(dims)])
        repeated = [i for i in dict.fromkeys(given) if given.count(i) > 1]
        if repeated:
            raise EinderivError(f"wrt='{entry}': the index '{repeated[0]}' repeats; a derivative "
                                f"takes one index per axis of {name}, all different (e.g. "
                                f"{name}_{''.join(WRT_LETTERS[:len(given)])})")
        for i in given:
            if i in used_user:
                raise EinderivError(f"wrt index '{i}' is already an index of the result "
                                    f"({' '.join(sorted(used_user))}); choose other names")
            used_user.add(i)
        private = tuple(fresh_index() for _ in dims)
        renames.update(zip(private, given))
        wrt_names.append(name)
        wrt_user_idx.append(given)
        current = _jacobian_pass(current, chain, name, private, dims, derived, inputs, members,
                                 program_names)
        # a declared dependence of an input the output reads, whose Jacobian the derivative
        # did not read (it cancelled), is still an input: the same arrays serve whatever the
        # formula simplifies to, and the Jacobian carries the variable's sizes
        for k, v in depends.items():
            if v == name and k in analysis.inputs and k in cone:
                own = analysis.inputs[k]
                if _jacobian_input(k, own, own, name, private, dims, inputs, members,
                                   program_names):
                    derived[f"d{k}d{name}"] = name
    result = rename_expr(current, renames)
    members = {d: [(t, a, renames.get(i, i), line) for t, a, i, line in group]
               for d, group in members.items()}
    result = S.factor_common(fold_intermediates(result, list(statements.values())))
    # a derivative of a Derivative's result continues its label (d²L/dx_p dx_q) and layout
    base = getattr(src, "_label_parts", None) if of == default_of else None
    if base is not None:
        layout, order = _continued_layout(layout, src.layout, out_idx, base, wrt_user_idx)
    else:
        layout = "numerator" if layout is None else layout
        order = _layout_order(layout, out_idx, wrt_user_idx)
    dim_map = result.dim_map
    for i in order:
        if i not in dim_map:
            raise EinderivError(f"internal: result index {i} without dimension")  # pragma: no cover
    result = S.expr(dim_map, result.terms)
    rname = "∂" + of
    base_of, base_idx, base_names, base_lists = base or (of, out_idx, [], [])
    parts = (base_of, base_idx, base_names + wrt_names, base_lists + wrt_user_idx)
    label = _derivative_label(*parts)
    result_st = Statement(rname, order, tuple(dim_map[i] for i in order), result)
    kept = _needed(statements, [result]) + [result_st]
    keep = cone | (set(inputs) - set(analysis.inputs))
    inputs, members = _used_inputs(kept, inputs, members, keep)
    d = Derivative(kept, (rname,), inputs, members, analysis.sizes,
                   labels={rname: label}, source=source, of=base_of,
                   wrt=[n + format_indices(i) for n, i in zip(parts[2], parts[3])],
                   layout=layout)
    d._analysis = analysis
    d._unused = frozenset(analysis.inputs) - set(inputs)
    # the Jacobians of declared dependences the output does not read: accepted, ignored
    d._offered = frozenset(f"d{k}d{v}" for k, v in derived.items() if v in wrt_names) - set(inputs)
    d._label_parts = parts
    d._depends = {k: v for k, v in derived.items() if k in inputs}
    return d


def _cone(statements: dict, of) -> set:
    """The names that ``of`` reads, directly or through the intermediates it uses."""
    cone = _needed(statements, [statements[of].expr]) + [statements[of]]
    return {n for st in cone for n in tensor_names(st.expr)}


def _used_inputs(statements, inputs: dict, members: dict, keep: set) -> tuple[dict, dict]:
    """The inputs named in ``keep`` (those the differentiated result reads, and the new
    ones: Jacobians, tangents, the cotangent), and the first other input along any
    dimension of ``statements`` none of those carries (its size comes from that array): a
    left-hand axis, or a size the statements read (``size(B,0) / x``, the derivative of
    ``sum_j(log(x + B_j - B_j))``, reads B's length and nothing else of B)."""
    kept = {n for n in inputs if n in keep}
    carried = {d for n in kept for d in inputs[n]}
    wanted = {d for st in statements for d in st.dims} | _sizes_read(statements)
    for n, dims in inputs.items():
        if n not in kept and any(d in wanted and d not in carried for d in dims):
            kept.add(n)
            carried.update(dims)
    members = {d: [m for m in group if m[0] in kept or m[0] == "sizes"] for d, group in members.items()}
    return ({n: dims for n, dims in inputs.items() if n in kept},
            {d: group for d, group in members.items() if group})


def _sizes_read(statements) -> set:
    """The dimensions of every size and δ factor in ``statements``, nested ones included
    (each shared subexpression visited once): ``2 size(B,1)`` reads no B but needs its size."""
    found, seen = set(), set()
    stack = [st.expr for st in statements]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        for t in e.terms:
            for f in t.factors:
                kind = type(f)
                if kind is Size or kind is Delta:
                    found.add(f.dim)
                elif kind is Func:
                    stack.append(f.arg)
                elif kind is Power:
                    stack.extend((f.base, f.exponent))
    return found


def _outside_dims(name, given, inputs, outside):
    """The dimensions ``name.0, name.1, ...`` of a variable the program does not have (only
    depends= mentions it): as many as an earlier pass gave it (a Jacobian input carries
    them), else as many as ``given`` names."""
    known = {d for dims in inputs.values() for d in dims if d.startswith(name + ".")}
    count = len(known) or len(given or ())
    if count:
        return tuple(f"{name}.{k}" for k in range(count))
    raise EinderivError(f"'{name}' is not in the program; with depends= name its indices, "
                        f"e.g. wrt='{name}_pq'")


def _check_depends_chains(derived, name, statements, current):
    """Refuse ``A`` depending on ``v`` where ``v`` itself depends on ``name`` (through
    depends= or an intermediate that reads it): ∂A/∂name = ∂A/∂v · ∂v/∂name would need the
    unknown Jacobian dAdv contracted with ∂v/∂name, which einderiv does not form. A cycle
    (A on B, B on A) is such a chain too."""
    if not derived:
        return
    read = {n for st in _needed(statements, [current]) for n in tensor_names(st.expr)}
    read |= set(tensor_names(current))

    def reaches(start):
        """Whether ``name`` is reached from ``start`` through depends= and the statements
        (a walk with a stack: a program may chain thousands of statements)."""
        stack, seen = [start], set()
        while stack:
            v = stack.pop()
            if v == name:
                return True
            if v not in seen:
                seen.add(v)
                stack.extend([derived[v]] if v in derived else [])
                stack.extend(tensor_names(statements[v].expr) if v in statements else [])
        return False

    for k, v in derived.items():
        if k in read and v != name and reaches(v):
            raise EinderivError(
                f"depends: '{k}' depends on '{v}', which depends on '{name}' in turn; einderiv "
                f"does not chain unknown Jacobians: declare depends={{'{k}': '{name}'}} and pass "
                f"the Jacobian d{k}d{name} (= d{k}d{v} · d{v}d{name})")


def fold_intermediates(e: Expr, statements) -> Expr:
    """Write ``h_i`` where a result repeats the definition of an intermediate
    ``h_i = tanh(...)``: the text reads better and the value is computed once."""
    from .evaluate import _canonical
    from .ir import factor_indices, factor_dims
    table = {}
    pending = {}   # kind -> definitions of that kind not yet in the table

    def _kind(f, depth):
        return (f.name if isinstance(f, Func) else "^", len(factor_indices(f)), depth)

    for st in statements:
        ex = st.expr
        if len(ex.terms) == 1 and ex.terms[0].coeff == 1 and len(ex.terms[0].factors) == 1:
            f = ex.terms[0].factors[0]
            if isinstance(f, (Func, Power)) and set(factor_indices(f)) == set(st.indices):
                pending.setdefault(_kind(f, _nesting(f, {})), []).append((st, f))
    if not pending:
        return e
    kinds = set(pending)

    def lookup(kind, key):
        """The definition with this canonical key; the definitions of a kind are put in
        canonical form only when a factor of that kind first turns up."""
        for st, f in pending.pop(kind, ()):
            k, order = _canonical(st.indices, f)
            table[k] = (st, order)
        return table.get(key)
    # Only a factor of the kind, index count and nesting depth of a definition can repeat it;
    # canonicalizing every nested factor instead made deep nesting take minutes.
    memo: dict = {}   # id(factor) -> (folded factor, its depth, the factor kept alive)

    def fold_expr(x: Expr) -> tuple:
        changed = False
        terms = []
        depth = 0
        for t in x.terms:
            factors = []
            for f in t.factors:
                g, d = fold_factor(f)
                depth = max(depth, d)
                changed |= g is not f
                factors.append(g)
            terms.append(Term(t.coeff, tuple(factors)))
        return (S.expr(x.dim_map, terms) if changed else x), depth

    def fold_factor(f):
        hit = memo.get(id(f))
        if hit is None:
            hit = memo[id(f)] = (*_fold_factor(f), f)
        return hit[0], hit[1]

    def _fold_factor(f):
        if isinstance(f, Func):
            inner, depth = fold_expr(f.arg)
            if inner is not f.arg:
                f = Func(f.name, inner)
        elif isinstance(f, Power):
            inner, depth = fold_expr(f.base)
            depth = max(depth, fold_expr(f.exponent)[1])
            if inner is not f.base:
                f = Power(inner, f.exponent)
        else:
            return f, 0
        depth += 1
        if _kind(f, depth) not in kinds:
            return f, depth
        key, order = _canonical(factor_indices(f), f)
        hit = lookup(_kind(f, depth), key)
        if hit is None:
            return f, depth
        st, st_order = hit
        position = {i: k for k, i in enumerate(st_order)}
        idx = tuple(order[position[i]] for i in st.indices)
        dims = factor_dims(f)
        return Tensor(st.name, idx, tuple(dims[i] for i in idx)), 0

    return fold_expr(e)[0]


def _nesting(f, memo: dict) -> int:
    """How deeply functions and powers nest in a factor (a tensor: 0, tanh(x_i): 1)."""
    from .ir import Func, Power
    if not isinstance(f, (Func, Power)):
        return 0
    depth = memo.get(id(f))
    if depth is None:
        parts = (f.arg,) if isinstance(f, Func) else (f.base, f.exponent)
        depth = 1 + max((_nesting(g, memo) for x in parts for t in x.terms for g in t.factors),
                        default=0)
        memo[id(f)] = depth
    return depth


def _derivative_label(of, out_idx, names, idx_lists):
    order = len(names)
    sup = {1: "", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹"}.get(order, f"^{order}")
    den = " ".join(f"d{n}{format_indices(i)}" for n, i in zip(names, idx_lists))
    return f"d{sup}{of}{format_indices(out_idx)}/{den}"


def _axis_index(members, dim, tensor, axis, default):
    """The index name the formula gives ``tensor``'s axis ``axis`` (for messages and the
    docstrings of exported code: never the internal dimension name)."""
    for t, a, index, _ in members.get(dim, ()):
        if t == tensor and a == axis:
            return index
    return default


def _jacobian_input(tensor, tensor_dims, tensor_indices, name, private, dims, inputs, members,
                    program_names):
    """Make ``d{tensor}d{name}`` an input, the Jacobian of a depends= input: its axes are the
    tensor's, then the variable's (shown by the tensor's own index names, ``tensor_indices``
    where it has none). Whether it is new."""
    jac = f"d{tensor}d{name}"
    if jac in program_names:
        raise EinderivError(f"the Jacobian of '{tensor}' with respect to '{name}' would be "
                            f"named '{jac}', which the program already uses; rename one of them")
    if jac in inputs:
        return False
    base = inputs.get(tensor, tensor_dims)
    inputs[jac] = tuple(base) + tuple(dims)
    shown = [_axis_index(members, d, tensor, axis, i)
             for axis, (d, i) in enumerate(zip(base, tensor_indices))] + list(private)
    for axis, d in enumerate(tuple(base) + tuple(dims)):
        members.setdefault(d, []).append((jac, axis, shown[axis], None))
    return True


def _jacobian_pass(current, statements, name, private, dims, derived, inputs, members,
                   program_names=frozenset()):
    """One derivative with respect to ``name`` (indices ``private``), the chain rule through
    the intermediates memoized; ``statements`` are those the chain rule goes through."""
    wrt = dict(zip(private, dims))
    variable_seed = delta_seed(name, private, dims)
    memo = {}
    new_derived = {}

    def seed(t: Tensor):
        if t.name == name:
            return variable_seed(t)
        if t.name in statements and t.name != name:
            if t.name not in memo:
                memo[t.name] = None  # cycle guard (programs are acyclic)
                memo[t.name] = derive(statements[t.name].expr, seed, wrt)
            d = memo[t.name]
            if d is None or S.is_zero(d):
                return None
            return rename_result(d, statements[t.name].indices, t.indices)
        if derived.get(t.name) == name:
            jac = f"d{t.name}d{name}"
            if _jacobian_input(t.name, t.dims, t.indices, name, private, dims, inputs,
                               members, program_names):
                new_derived[jac] = name
            idx = t.indices + private
            dd = dict(zip(t.indices, t.dims))
            dd.update(wrt)
            return S.expr(dd, [Term(S.ONE, (Tensor(jac, idx, tuple(t.dims) + tuple(dims)),))])
        return None

    try:
        result = derive(current, seed, wrt)
    except RecursionError:
        raise EinderivError("the formula nests too deeply to differentiate") from None
    derived.update(new_derived)
    return result


def differential(src, of=None, sizes=None) -> Program:
    """The differential (forward mode): each input A gets a tangent dA of its shape.

    >>> print(ed.differential("C_ik = A_ij B_jk"))
    dC_ik = sum_j(A_ij dB_jk) + sum_j(B_jk dA_ij)
    """
    analysis, source, default_of = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of, default_of)
    names = set(analysis.inputs) | set(statements)
    for n in list(analysis.inputs) + list(statements):
        if "d" + n in names and isinstance(src, Program) and "d" + n in analysis.inputs:
            raise EinderivError(f"cannot take the differential of a program with both '{n}' and "
                                f"'d{n}' as inputs (a differential's own tangents would collide); "
                                f"for second derivatives use diff(..., wrt=[...])")
        if "d" + n in names:
            raise EinderivError(f"the tangent of '{n}' would be named 'd{n}', which the program "
                                f"already uses; rename one of them")
    inputs = dict(analysis.inputs)
    members = {k: list(v) for k, v in analysis.members.items()}
    for n, dims in analysis.inputs.items():
        inputs["d" + n] = dims
        for axis, d in enumerate(dims):
            members.setdefault(d, []).append(("d" + n, axis, _axis_index(members, d, n, axis, d), None))
    nonzero = set()

    def seed(t: Tensor):
        if t.name in analysis.inputs or t.name in nonzero:
            e = S.expr(dict(zip(t.indices, t.dims)), [Term(S.ONE, (Tensor("d" + t.name, t.indices, t.dims),))])
            return e
        return None

    dstatements = []
    for st in statements.values():
        e = S.factor_common(fold_intermediates(derive(st.expr, seed, {}), list(statements.values())))
        nonzero.add(st.name)
        dstatements.append(Statement("d" + st.name, st.indices, st.dims, e))
    all_st = {**statements, **{s.name: s for s in dstatements}}
    final = all_st["d" + of]
    kept = _needed(all_st, [final.expr]) + [final]
    keep = _cone(statements, of)
    inputs, members = _used_inputs(kept, inputs, members, keep | {"d" + n for n in keep})
    # a Derivative's result ∂L shows as dL/dx_p; its tangent as d(dL/dx_p), not d∂L_p
    shown = getattr(src, "_labels", {})
    labels = {st.name: shown.get(st.name) or f"d({shown[st.name[1:]]})" for st in kept
              if st.name in shown or (st.name[:1] == "d" and st.name[1:] in shown)}
    program = Program(kept, ("d" + of,), inputs, members, analysis.sizes, labels=labels,
                      source=source)
    program._analysis = analysis
    program._unused = frozenset(analysis.inputs) - set(inputs)
    program._offered = frozenset("d" + n for n in analysis.inputs) - set(inputs)
    return program


def vjp(src, wrt, cotangent="G", of=None, sizes=None) -> Program:
    """The vector-Jacobian product Σ_out G_out ∂out/∂wrt, by one backward sweep.

    >>> print(ed.vjp("y_i = sum_j(W_ij x_j)", wrt="x"))
    Gx_j = sum_i(G_i W_ij)
    """
    analysis, source, default_of = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of, default_of)
    single = isinstance(wrt, str)
    wrt_names = [wrt] if single else list(wrt)
    if not wrt_names:
        raise EinderivError("wrt= names at least one input")
    if not (isinstance(cotangent, str) and _IDENT.match(cotangent)):
        raise EinderivError(f"cotangent must be a tensor name, got {cotangent!r}")
    taken_names = set(analysis.inputs) | set(statements)
    if cotangent in taken_names:
        raise EinderivError(f"the cotangent name '{cotangent}' is already used by the program")
    later = {st.name for st in analysis.statements} - set(statements)
    for w in wrt_names:
        if isinstance(w, str) and "_" in w and w.split("_")[0] in set(analysis.inputs) | set(statements):
            raise EinderivError(f"vjp's wrt takes tensor names without indices: '{w.split('_')[0]}', "
                                f"not '{w}' (the result has the axes of {w.split('_')[0]})")
        if isinstance(w, str) and w in later:
            raise EinderivError(f"cannot take the vjp with respect to '{w}': it is computed after "
                                f"of='{of}', which does not depend on it")
        if not isinstance(w, str) or w not in analysis.inputs and w not in statements:
            raise EinderivError(f"cannot take the vjp with respect to {w!r}: not a tensor of the "
                                f"program (inputs: {', '.join(analysis.inputs)})")
    repeated = sorted({w for w in wrt_names if wrt_names.count(w) > 1})
    if repeated:
        raise EinderivError(f"wrt lists '{repeated[0]}' more than once")
    target = statements[of]
    inputs = dict(analysis.inputs)
    inputs[cotangent] = target.dims
    members = {k: list(v) for k, v in analysis.members.items()}
    for axis, d in enumerate(target.dims):
        members.setdefault(d, []).append((cotangent, axis, target.indices[axis], None))

    # which statements depend on a wrt tensor
    depends_on = {}
    for st in statements.values():
        reads = tensor_names(st.expr)
        depends_on[st.name] = any(r in wrt_names or depends_on.get(r, False) for r in reads)

    def bar_name(n):
        name = f"{cotangent}{n}"
        if name in taken_names:
            raise EinderivError(f"the cotangent of '{n}' would be named '{name}', which the program "
                                f"already uses; rename it or choose another cotangent= name")
        return name

    def axis_names(n):
        if n in statements:
            return statements[n].indices
        dims = analysis.inputs[n]
        return tuple("pqrstuvw"[k] if k < 8 else f"a{k}" for k in range(len(dims)))

    def dims_of(n):
        return statements[n].dims if n in statements else analysis.inputs[n]

    bars: dict = {}
    bar_statements = []
    out_tensor = Tensor(cotangent, target.indices, target.dims)
    carriers = {of: out_tensor}
    for st in reversed(list(statements.values())):
        if st.name not in carriers:
            if st.name not in bars:
                continue
            e = bars.pop(st.name)
            bname = bar_name(st.name)
            bar_statements.append(Statement(bname, st.indices, st.dims, S.factor_common(e)))
            carriers[st.name] = Tensor(bname, st.indices, st.dims)
        carrier = carriers[st.name]
        carrier_expr = S.factor_expr(carrier)
        for r in dict.fromkeys(tensor_names(st.expr)):
            if r not in wrt_names and not (r in statements and depends_on.get(r)):
                continue
            if r in wrt_names and r in statements and r != st.name:
                pass
            dims = dims_of(r)
            private = tuple(fresh_index() for _ in dims)
            jac = derive(st.expr, delta_seed(r, private, dims), dict(zip(private, dims)))
            if S.is_zero(jac):
                continue
            contrib = S.contract(S.mul(carrier_expr, jac), st.indices)
            contrib = rename_expr(contrib, dict(zip(private, axis_names(r))))
            contrib = fold_intermediates(contrib, list(statements.values()))
            bars[r] = S.add(bars[r], contrib) if r in bars else contrib
    # an intermediate's result is its cotangent statement itself (Gh); the output's is G
    results, keys = [], {}
    for w in wrt_names:
        idx, dims = axis_names(w), dims_of(w)
        if w in carriers and w != of:
            name = carriers[w].name
        else:
            e = S.factor_expr(out_tensor) if w == of else bars.get(w, S.zero(dict(zip(idx, dims))))
            name = bar_name(w)
            results.append(Statement(name, idx, dims, S.factor_common(S.expr(dict(zip(idx, dims)), e.terms))))
        keys[name] = w
    all_st = {**statements, **{s.name: s for s in bar_statements}}
    want = {st.name for st in _needed(all_st, [r.expr for r in results] + [all_st[n].expr for n in keys if n in all_st])}
    kept = [st for n, st in all_st.items() if n in want or n in keys] + results
    inputs, members = _used_inputs(kept, inputs, members, _cone(statements, of) | {cotangent})
    program = Program(kept, tuple(keys), inputs, members, analysis.sizes, source=source)
    program._analysis = analysis
    program._unused = frozenset(analysis.inputs) - set(inputs)
    if not single:
        program._result_keys = keys
    return program
