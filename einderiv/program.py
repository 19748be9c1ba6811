"""Programs and derivatives: the public objects, and the builders behind ``diff``,
``differential`` and ``vjp``.

A :class:`Program` is a list of statements with outputs; it evaluates, prints and exports
itself. A :class:`Derivative` is a Program whose output is a derivative, with its layout.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import simplify as S
from .diff import delta_seed, derive, rename_result
from .errors import EinderivError, IndexSizeError, InputError
from .evaluate import compile_plan, lower, memory_limit, resolve_sizes
from .export.text import format_indices, format_statement
from .ir import Expr, Tensor, Term, fresh_index, rename_expr, tensor_names
from .parser import split_tensor, _Fail, _IDENT
from .semantics import Analysis, Statement, analyze

__all__ = ["Program", "Derivative", "EinsumTerm", "parse", "diff", "differential", "vjp"]

EinsumTerm = namedtuple("EinsumTerm", "target subscripts operands coefficient")

WRT_LETTERS = "pqrstuvwxyzabcdefghijklmno"


class Program:
    """A parsed program: statements, inputs and outputs. ``str()`` shows every sum."""

    def __init__(self, statements, outputs, inputs, members, sizes, labels=None, source=""):
        self.statements = tuple(statements)
        self.outputs = tuple(outputs)
        self._inputs = dict(inputs)           # name -> dimensions of its axes
        self._members = members
        self._sizes = dict(sizes)
        self._labels = dict(labels or {})
        self.source = source
        self._plan = None
        self._compiled = {}
        self._result_keys = None

    # -- description ------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple:
        """Names of the input arrays, in order of first appearance."""
        return tuple(self._inputs)

    @property
    def output(self) -> Statement:
        return self.statement(self.outputs[-1])

    @property
    def indices(self) -> tuple:
        """Axis order of the (last) output."""
        return self.output.indices

    def statement(self, name) -> Statement:
        for st in self.statements:
            if st.name == name:
                return st
        raise EinderivError(f"no statement defines '{name}'")

    def label(self, st: Statement) -> str:
        return self._labels.get(st.name) or st.name + format_indices(st.indices)

    def __str__(self):
        return "\n".join(f"{self.label(st)} = {format_statement(st.expr, st.indices, st.dims)}"
                         for st in self.statements)

    def __repr__(self):
        return f"<{type(self).__name__}: {str(self)!s}>"

    def __eq__(self, other):
        if not isinstance(other, Program):
            return NotImplemented
        return (self.statements == other.statements and self.outputs == other.outputs)

    def __hash__(self):
        return hash((self.statements, self.outputs))

    def _repr_latex_(self):
        return "$$" + self.latex() + "$$"

    def latex(self) -> str:
        from .export.latex import program_latex
        return program_latex(self)

    def einsum(self) -> list:
        """Every term as an einsum: (target, subscripts, operand names, coefficient)."""
        from .evaluate import ExprStep
        out = []
        for step in self._lowered().steps:
            if isinstance(step, ExprStep):
                for term in step.terms:
                    out.append(_einsum_term(step, term))
        return out

    def to_source(self, target="numpy", name="derivative", shapes=None) -> str:
        """Standalone Python source of a function over the inputs (numpy, torch or jax).

        ``shapes={"A": (40, 32), ...}`` writes the numpy contraction paths into the source;
        without it the generated function searches each path once per shapes and reuses it.
        """
        from .export import to_source
        return to_source(self, target, name=name, shapes=shapes)

    # -- evaluation -------------------------------------------------------------------------
    def _lowered(self):
        if self._plan is None:
            self._plan = lower(self.statements, set(self.outputs), self._inputs)
        return self._plan

    def evaluate(self, sizes=None, backend="numpy", max_bytes=None, **arrays):
        """The output's value for these input arrays (a dict for several outputs).

        >>> ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones((2, 3)), B=np.ones((3, 4))).shape
        (2, 4)
        """
        # a plan is reused for the same backend, array types, shapes and dtypes; anything but
        # plain ndarrays on the numpy backend (lists, np.matrix, torch tensors) is converted
        # by _prepare on every call
        compiled = None
        if sizes is None and max_bytes is None:
            try:
                key = (backend, tuple([(k, type(v), v.shape, v.dtype) for k, v in arrays.items()]))
            except AttributeError:
                key = None
            else:
                compiled = self._compiled.get(key)
        else:
            key = None
        if compiled is None:
            arrays = self._prepare(arrays, backend)
            compiled = self._compile(arrays, sizes, backend, max_bytes)
            if key is not None and (backend != "numpy"
                                    or all(t is np.ndarray for _, t, _, _ in key[1])):
                self._compiled[key] = compiled
        elif backend == "numpy":
            if compiled.cast:
                arrays = {k: np.asarray(v, dtype=compiled.dtype) for k, v in arrays.items()}
        env = compiled(arrays)          # our own dict (keyword arguments): temporaries go in
        if compiled.single is not None:
            return env[compiled.single]
        return {self._result_keys.get(name, name) if self._result_keys else name: env[ref]
                for name, (ref, _) in compiled.outputs.items()}

    def _prepare(self, arrays, backend):
        missing = [n for n in self._inputs if n not in arrays]
        if missing:
            raise InputError(f"missing input array{'s' if len(missing) > 1 else ''}: "
                             f"{', '.join(missing)} (the inputs are {', '.join(self._inputs)})")
        extra = [n for n in arrays if n not in self._inputs]
        if extra:
            raise InputError(f"unexpected input{'s' if len(extra) > 1 else ''}: {', '.join(extra)} "
                             f"(the inputs are {', '.join(self._inputs) or 'none'})")
        out = {}
        for name, value in arrays.items():
            if backend == "numpy":
                try:
                    value = np.asarray(value)
                except Exception as err:  # noqa: BLE001 - any conversion failure is a user error
                    raise InputError(f"input '{name}' is not an array: {err}") from None
                if value.dtype.kind == "c":
                    raise InputError(f"input '{name}' is complex; einderiv evaluates real arrays only")
                if value.dtype.kind not in "fiub":
                    raise InputError(f"input '{name}' has dtype {value.dtype}, not a real number type")
            shape = tuple(getattr(value, "shape", ()))
            ndim = len(self._inputs[name])
            if len(shape) != ndim:
                raise InputError(f"input '{name}' has {len(shape)} ax{'i' if len(shape) == 1 else 'e'}s "
                                 f"(shape {shape}) but the formula uses it with {ndim} "
                                 f"ind{'ex' if ndim == 1 else 'ices'}")
            out[name] = value
        return out

    def _compile(self, arrays, sizes, backend, max_bytes):
        from .semantics import _check_sizes_arg
        given = _check_sizes_arg(sizes)
        sizes = {**self._sizes, **given}
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        output_dims = {}
        for name in self.outputs:
            st = self.statement(name)
            for index, dim in zip(st.indices, st.dims):
                output_dims.setdefault(index, []).append(dim)
        dim_size = resolve_sizes(self._inputs, self._members, shapes, sizes, output_dims,
                                 strict=set(given))
        if backend == "numpy":
            dtypes = [a.dtype for a in arrays.values()]
            dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
            if dtype.kind in "iub":
                dtype = np.dtype(np.float64)
        else:
            dtype = np.float64
            for a in arrays.values():
                dt = getattr(a, "dtype", None)
                try:
                    dtype = np.dtype(str(dt).replace("torch.", ""))
                    break
                except TypeError:
                    continue
        unsized = getattr(getattr(self, "_analysis", None), "unsized", None) or {}
        for d in list(self._members) + [d for st in self.statements for d in st.dims]:
            if d not in dim_size:
                index, name, line = unsized.get(d, (d.lstrip("="), None, None))
                where = f"line {line}: index '{index}' of '{name}'" if name else f"index '{index}'"
                raise IndexSizeError(f"{where} has no size: no input tensor carries it; "
                                     f"give it with sizes={{'{index}': n}}")
        if backend not in ("numpy", "torch", "jax", "dask"):
            import importlib
            try:
                importlib.import_module(backend.split(".")[0])
            except (ImportError, ValueError):
                raise EinderivError(f"backend '{backend}' is not installed (numpy, torch, jax and "
                                    "dask are supported; others that opt_einsum knows work too)") from None
        limit = max_bytes if max_bytes is not None else memory_limit()
        compiled = compile_plan(self._lowered(), dim_size, dtype, backend, limit)
        compiled.cast = backend == "numpy" and any(a.dtype != dtype for a in arrays.values())
        if compiled.cast:  # this first call's arrays; later calls cast in evaluate()
            arrays.update({k: v.astype(dtype) for k, v in arrays.items()})
        return compiled

    def matrix(self):
        """Matrix notation (``Aᵀ Bᵀ``, ``a bᵀ``, ...), or the reason there is none."""
        from .export.matrix import matrix_form
        return matrix_form(self)


def _einsum_term(step, term):
    from .evaluate import _subscripts
    order = step.order
    operands = list(term.operands)
    coeff = term.coeff
    subs = _subscripts(operands, [i for i in order if any(i in idx for _, idx in operands)]) if operands else "->"
    names = tuple(ref for ref, _ in operands)
    if term.deltas:
        subs += "  (into the diagonal " + ", ".join(f"{a}={b}" for a, b in term.deltas) + ")"
    if term.sizes:
        subs += "  (times " + " ".join(f"n({d.lstrip('=')})" for d in term.sizes) + ")"
    return EinsumTerm(step.target, subs, names, coeff)


class Derivative(Program):
    """A derivative: a Program whose output is ∂of/∂wrt in the chosen layout."""

    def __init__(self, *args, of=None, wrt=(), layout="numerator", **kw):
        super().__init__(*args, **kw)
        self.of = of
        self.wrt = tuple(wrt)
        self.layout = layout


# --- building programs -----------------------------------------------------------------------

def _as_analysis(src, sizes) -> tuple[Analysis, str]:
    if isinstance(src, Program):
        if sizes:
            raise EinderivError("sizes= goes with the formula text, not with a parsed Program")
        return src._analysis, src.source
    if not isinstance(src, str):
        raise EinderivError(f"expected a formula string or a Program, got {type(src).__name__}")
    return analyze(src, sizes), src


def parse(src: str, sizes=None) -> Program:
    """Parse a program.

    >>> print(ed.parse("C_ik = A_ij B_jk"))
    C_ik = sum_j(A_ij B_jk)
    """
    analysis = analyze(src, sizes)
    prog = Program(analysis.statements, (analysis.statements[-1].name,), analysis.inputs,
                   analysis.members, analysis.sizes, source=src)
    prog._analysis = analysis
    return prog


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
    raise EinderivError(f"cannot differentiate with respect to '{name}': it is not a tensor of "
                        f"the program (inputs: {known})")


def _statement_map(analysis, of):
    names = [st.name for st in analysis.statements]
    if of is None:
        of = names[-1]
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


def _check_depends(depends, analysis):
    if depends is None:
        return {}
    if not isinstance(depends, dict):
        raise EinderivError("depends= is a dict like {'A': 'X', 'B': 'X'}")
    out = {}
    for k, v in depends.items():
        if not (isinstance(k, str) and isinstance(v, str) and _IDENT.match(k) and _IDENT.match(v)):
            raise EinderivError(f"depends entries are tensor names, got {k!r}: {v!r}")
        if k not in analysis.inputs:
            raise EinderivError(f"depends names '{k}', which is not an input of the program "
                                f"(inputs: {', '.join(analysis.inputs)})")
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
    elif isinstance(layout, (list, tuple)):
        order = tuple(layout)
    else:
        raise EinderivError(f"layout must be 'numerator', 'denominator' or an order of the "
                            f"indices {''.join(natural)}, got {layout!r}")
    if sorted(order) != sorted(natural):
        raise EinderivError(f"layout '{layout if isinstance(layout, str) else ''.join(order)}' is not an "
                            f"order of the result's indices {' '.join(natural)} "
                            f"(or 'numerator' / 'denominator')")
    return order


def diff(src, wrt, of=None, layout="numerator", depends=None, sizes=None) -> Derivative:
    """The derivative of a program's output with respect to one or more tensors.

    >>> print(ed.diff("C_ik = A_ij B_jk", wrt="A_pq"))
    dC_ik/dA_pq = δ_ip B_qk
    """
    analysis, source = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of)
    depends = _check_depends(depends, analysis)
    wrt_list = [wrt] if isinstance(wrt, str) else list(wrt) if isinstance(wrt, (list, tuple)) else None
    if not wrt_list:
        raise EinderivError("wrt= names the variable: 'A', 'A_pq', or a list for higher derivatives")
    target = statements[of]
    taken = _all_index_names(analysis) | set(target.indices)
    current = target.expr
    out_idx = target.indices
    inputs = dict(analysis.inputs)
    members = {k: list(v) for k, v in analysis.members.items()}
    derived = dict(depends)            # tensor -> variable it depends on (Jacobians too)
    wrt_names, wrt_user_idx, renames = [], [], {}
    used_user = set(out_idx)
    for entry in wrt_list:
        name, given = _parse_wrt(entry, analysis)
        dims = _variable_dims(name, analysis, depends)
        if dims is None:
            jac_ndim = _depends_ndim(name, derived, given)
            dims = tuple(f"{name}.{k}" for k in range(jac_ndim))
        if given and len(given) != len(dims):
            raise EinderivError(f"wrt='{entry}' has {len(given)} ind{'ex' if len(given) == 1 else 'ices'} "
                                f"but {name} has {len(dims)}")
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
        current = _jacobian_pass(current, statements, name, private, dims, derived, inputs, members)
    result = rename_expr(current, renames)
    result = S.factor_common(fold_intermediates(result, list(statements.values())))
    order = _layout_order(layout, out_idx, wrt_user_idx)
    dim_map = result.dim_map
    for i in order:
        if i not in dim_map:
            raise EinderivError(f"internal: result index {i} without dimension")  # pragma: no cover
    result = S.expr(dim_map, result.terms)
    rname = "∂" + of
    label = _derivative_label(of, out_idx, wrt_names, wrt_user_idx)
    result_st = Statement(rname, order, tuple(dim_map[i] for i in order), result)
    forward = _needed(statements, [result])
    d = Derivative(forward + [result_st], (rname,), inputs, members, analysis.sizes,
                   labels={rname: label}, source=source, of=of,
                   wrt=[n + format_indices(i) for n, i in zip(wrt_names, wrt_user_idx)],
                   layout=layout)
    d._analysis = analysis
    return d


def _depends_ndim(name, derived, given):
    if given:
        return len(given)
    raise EinderivError(f"'{name}' is not in the program; with depends= name its indices, "
                        f"e.g. wrt='{name}_pq'")


def fold_intermediates(e: Expr, statements) -> Expr:
    """Write ``h_i`` where a result repeats the definition of an intermediate
    ``h_i = tanh(...)``: the text reads better and the value is computed once."""
    from .evaluate import _canonical
    from .ir import Func, Power, factor_indices, factor_dims
    table = {}
    kinds = set()

    def _kind(f, depth):
        return (f.name if isinstance(f, Func) else "^", len(factor_indices(f)), depth)

    for st in statements:
        ex = st.expr
        if len(ex.terms) == 1 and ex.terms[0].coeff == 1 and len(ex.terms[0].factors) == 1:
            f = ex.terms[0].factors[0]
            if isinstance(f, (Func, Power)) and set(factor_indices(f)) == set(st.indices):
                key, order = _canonical(st.indices, f)
                table[key] = (st, order)
                kinds.add(_kind(f, _nesting(f, {})))
    if not table:
        return e
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
        hit = table.get(key)
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


def _jacobian_pass(current, statements, name, private, dims, derived, inputs, members):
    """One derivative with respect to ``name`` (indices ``private``), the chain rule through
    the intermediates memoized."""
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
            if jac not in inputs:
                inputs[jac] = tuple(inputs.get(t.name, t.dims)) + tuple(dims)
                base = inputs.get(t.name, t.dims)
                for axis, d in enumerate(tuple(base) + tuple(dims)):
                    members.setdefault(d, []).append((jac, axis, d, None))
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
    analysis, source = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of)
    names = set(analysis.inputs) | set(statements)
    for n in list(analysis.inputs) + list(statements):
        if "d" + n in names:
            raise EinderivError(f"the tangent of '{n}' would be named 'd{n}', which the program "
                                f"already uses; rename one of them")
    inputs = dict(analysis.inputs)
    members = {k: list(v) for k, v in analysis.members.items()}
    for n, dims in analysis.inputs.items():
        inputs["d" + n] = dims
        for axis, d in enumerate(dims):
            members.setdefault(d, []).append(("d" + n, axis, d, None))
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
    needed = _needed(all_st, [final.expr])
    program = Program(needed + [final], ("d" + of,), inputs, members, analysis.sizes, source=source)
    program._analysis = analysis
    return program


def vjp(src, wrt, cotangent="G", of=None, sizes=None) -> Program:
    """The vector-Jacobian product Σ_out G_out ∂out/∂wrt, by one backward sweep.

    >>> print(ed.vjp("y_i = sum_j(W_ij x_j)", wrt="x"))
    Gx_j = sum_i(G_i W_ij)
    """
    analysis, source = _as_analysis(src, sizes)
    of, statements = _statement_map(analysis, of)
    single = isinstance(wrt, str)
    wrt_names = [wrt] if single else list(wrt)
    if not wrt_names:
        raise EinderivError("wrt= names at least one input")
    if not (isinstance(cotangent, str) and _IDENT.match(cotangent)):
        raise EinderivError(f"cotangent must be a tensor name, got {cotangent!r}")
    taken_names = set(analysis.inputs) | set(statements)
    if cotangent in taken_names:
        raise EinderivError(f"the cotangent name '{cotangent}' is already used by the program")
    for w in wrt_names:
        if not isinstance(w, str) or w not in analysis.inputs and w not in statements:
            raise EinderivError(f"cannot take the vjp with respect to {w!r}: not a tensor of the "
                                f"program (inputs: {', '.join(analysis.inputs)})")
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
        base = f"{cotangent}{n}"
        while base in taken_names:
            base += "_"
        taken_names.add(base)
        return base

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
    results = []
    keys = {}
    for w in wrt_names:
        idx = axis_names(w)
        dims = dims_of(w)
        if w in carriers and w != of:
            e = S.factor_expr(carriers[w])
        else:
            e = bars.get(w, S.zero(dict(zip(idx, dims))))
        name = bar_name(w) if w not in carriers else "↦" + w
        results.append(Statement(name, idx, dims, S.factor_common(S.expr(dict(zip(idx, dims)), e.terms))))
        keys[name] = w
    all_st = {**statements, **{s.name: s for s in bar_statements}}
    needed = _needed(all_st, [r.expr for r in results])
    program = Program(needed + results, tuple(r.name for r in results), inputs, members,
                      analysis.sizes, source=source)
    program._analysis = analysis
    if not single:
        program._result_keys = keys
    return program
