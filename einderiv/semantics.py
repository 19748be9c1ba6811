"""Syntax tree → IR: who is free, who is summed, and which dimension every index runs over.

Each top-level term of a right-hand side is summed over its indices that the left-hand side
lacks (einsum semantics); a term that lacks a left-hand index is broadcast along it. One index
name has one size in a statement; sizes flow between statements through the tensors, and
each dimension is named by the first input axis that carries it (``"A.0"``) or by
``sizes=`` (``"=j"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import simplify as S
from .errors import EinderivError, EinderivSyntaxError, IndexSizeError
from .ir import Delta, Expr, Size, Tensor, Term
from .parser import Node, Stmt, parse_text, syntax_error

__all__ = ["Statement", "Analysis", "analyze"]


@dataclass(frozen=True, slots=True)
class Statement:
    """``name_indices = expr``: the left-hand indices in their axis order, and the IR."""
    name: str
    indices: tuple[str, ...]
    dims: tuple[str, ...]
    expr: Expr


@dataclass(frozen=True)
class Analysis:
    statements: tuple[Statement, ...]
    inputs: dict            # input name -> tuple of dimensions, one per axis
    members: dict           # dimension -> list of (tensor, axis, index name, line)
    sizes: dict             # index name -> size given by the user
    unsized: dict = None    # dimension -> (index, statement, line) that only sizes= can give
    size_only: frozenset = frozenset()  # inputs only size(A,k) reads: they may have more axes


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        parent = self.parent
        root = parent.setdefault(x, x)
        if root is x:
            return x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


_GREEK = {"beta", "zeta", "eta", "iota", "mu", "nu", "xi", "pi", "rho", "tau", "phi", "chi", "psi"}


def _missing_underscore(rhs, index) -> str:
    """A hint where a name without indices reads like a tensor whose '_' was forgotten:
    ``Wij`` for ``W_ij``."""
    for node in _walk(rhs):
        if node.kind == "tensor" and not node.value[1]:
            name = node.value[0]
            if (1 < len(name) <= 4 and index in name[1:] and name[1:].isalpha()
                    and name.lower() not in _GREEK):
                return underscore_hint(name, 1)
    return ""


def underscore_hint(glued: str, at: int) -> str:
    """`` (did you mean W_ij? ...)`` for a name ``Wij`` whose indices start at ``at``."""
    return f" (did you mean {glued[:at]}_{glued[at:]}? indices follow '_')"


def _walk(node: Node):
    """Every node of a tree, without recursion."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for c in reversed(n.children):
            stack.append(c[1] if isinstance(c, tuple) else c)


def _check_sizes_arg(sizes):
    if sizes is None:
        return {}
    if not isinstance(sizes, dict):
        raise EinderivError(f"sizes must be a dict like {{'j': 5}}, got {type(sizes).__name__}")
    out = {}
    for k, v in sizes.items():
        if not isinstance(k, str):
            raise EinderivError(f"sizes keys are index names, got {k!r}")
        if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 0:
            raise EinderivError(f"sizes['{k}'] must be a non-negative integer, got {v!r}")
        out[k] = int(v)
    return out


def analyze(text: str, sizes=None) -> Analysis:
    """Parse and check a program; build the IR of every statement."""
    sizes = _check_sizes_arg(sizes)
    stmts = parse_text(text)
    uf = _UnionFind()
    defined: dict[str, Stmt] = {}
    input_ndim: dict[str, tuple] = {}     # name -> (ndim, line, column, text)
    where: dict = {}                      # union-find key -> (tensor, axis, index, line)
    index_names = set()
    size_refs = []
    absent = []                           # (statement, left-hand index) no term of it carries
    for n, st in enumerate(stmts):
        if st.name in defined:
            raise syntax_error(text, f"'{st.name}' is defined twice (first on line "
                               f"{defined[st.name].line})", st.line, st.column)
        if st.name in input_ndim:
            raise syntax_error(text, f"'{st.name}' is used before it is defined", st.line, st.column)
        if len(set(st.indices)) != len(st.indices):
            raise syntax_error(text, f"a left-hand index repeats in '{st.name}': "
                               f"{' '.join(st.indices)}", st.line, st.column)
        rhs_indices = set()
        for node in _walk(st.rhs):
            if node.kind == "tensor":
                name, idx = node.value
                rhs_indices.update(idx)
                if name == st.name:
                    raise syntax_error(text, f"'{name}' is used in its own definition",
                                       node.line, node.column)
                if name in defined:
                    want = len(defined[name].indices)
                    if len(idx) != want:
                        raise syntax_error(text, f"'{name}' has {want} indices (line "
                                           f"{defined[name].line}) but is used with {len(idx)}",
                                           node.line, node.column)
                elif name in input_ndim:
                    want, line, col, first = input_ndim[name]
                    if len(idx) != want:
                        raise syntax_error(text, f"input '{name}' is used with {want} indices "
                                           f"({first} on line {line}) and with {len(idx)}",
                                           node.line, node.column)
                else:
                    shown = name + ("_" + "".join(idx) if idx else "")
                    input_ndim[name] = (len(idx), node.line, node.column, shown)
                for axis, index in enumerate(idx):
                    key = ("T", name, axis)
                    uf.union(("I", n, index), key)
                    where.setdefault(key, (name, axis, index, node.line))
                    index_names.add(index)
            elif node.kind == "delta":
                a, b = node.value
                uf.union(("I", n, a), ("I", n, b))
                index_names.update((a, b))
                rhs_indices.update((a, b))
            elif node.kind == "sum":
                for index in node.value:
                    uf.find(("I", n, index))
                    index_names.add(index)
                rhs_indices.update(node.value)
            elif node.kind == "size":
                name, axis = node.value
                size_refs.append((name, axis, node, n))
        for axis, index in enumerate(st.indices):
            if index not in rhs_indices and index not in sizes:
                absent.append((n, index))
            uf.union(("I", n, index), ("T", st.name, axis))
            index_names.add(index)
        defined[st.name] = st

    size_only = _size_only_inputs(text, size_refs, input_ndim, defined)
    unknown = sorted(set(sizes) - index_names)
    if unknown:
        raise IndexSizeError(f"sizes gives index '{unknown[0]}', which the formula does not use "
                             f"(its indices: {' '.join(sorted(index_names))})")

    # name every dimension: its first input axis by name, else sizes=
    input_order = list(input_ndim)
    reps: dict = {}
    # the name of a dimension must not depend on the order tensors are written in
    for name in sorted(input_order):
        for axis in range(input_ndim[name][0]):
            root = uf.find(("T", name, axis))
            reps.setdefault(root, f"{name}.{axis}")
    # the index keys that sizes= gives a size
    sized = [key for key in uf.parent if key[0] == "I" and key[2] in sizes] if sizes else []
    for key in sized:
        reps.setdefault(uf.find(key), f"={key[2]}")
    for n, index in absent:
        if uf.find(("I", n, index)) not in reps:  # another statement may size it
            st = stmts[n]
            raise IndexSizeError(
                f"line {st.line}: left-hand index '{index}' of '{st.name}' appears in no term "
                f"of the right-hand side, so nothing gives its size; use it on the right or "
                f"give sizes={{'{index}': n}}{_missing_underscore(st.rhs, index)}")
    members: dict = {}
    for key, (name, axis, index, line) in where.items():
        if name in input_ndim:
            members.setdefault(reps[uf.find(key)], []).append((name, axis, index, line))
    reach = _sizes_reach(uf, reps, sized)
    given: dict = {}
    for key in sized:   # within one statement, one dimension, one size
        rep = reps[uf.find(key)]
        if rep in reach[key[2]]:
            given.setdefault((key[1], rep), {})[key[2]] = sizes[key[2]]
    for (n, dim_name), named in given.items():
        if len(set(named.values())) > 1:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(named.items()))
            axes = [f"axis {axis} of {name} ({index})" for name, axis, index, _ in
                    members.get(dim_name, ()) if index in named]
            tie = ("; they meet on " + ", ".join(dict.fromkeys(axes))) if axes else " (through a δ)"
            raise IndexSizeError(f"line {stmts[n].line}: sizes gives {shown}, but these indices "
                                 f"run along one dimension{tie}, so they need one size")
    # sizes= names the dimensions no input carries, and is checked at evaluate against the
    # arrays along every dimension it names
    for key in sized:
        entry = ("sizes", None, key[2], None)
        group = members.setdefault(reps[uf.find(key)], [])
        if entry not in group:
            group.append(entry)

    def dim(n, index, line=None, column=None):
        root = uf.find(("I", n, index))
        if root not in reps:
            # no input carries it: its size must come from sizes= when evaluating
            st = stmts[n]
            rep = reps[root] = f"={index}"
            members.setdefault(rep, []).append(("sizes", None, index, None))
            unsized[rep] = (index, st.name, st.line)
        return reps[root]

    unsized: dict = {}

    statements = []
    for n, st in enumerate(stmts):
        lhs_dims = {i: dim(n, i) for i in st.indices}
        rhs = _build_statement(text, st, n, dim, defined, lambda name, axis: reps[uf.find(("T", name, axis))])
        if rhs.dim_map != lhs_dims:  # a canonical rhs over the left-hand indices is the statement
            rhs = S.add(rhs, S.zero(lhs_dims))
        statements.append(Statement(st.name, st.indices, tuple(lhs_dims[i] for i in st.indices), rhs))
    inputs = {name: tuple(reps[uf.find(("T", name, a))] for a in range(input_ndim[name][0]))
              for name in input_order}
    return Analysis(tuple(statements), inputs, members, sizes, unsized, size_only)


def _sizes_reach(uf, reps, sized) -> dict:
    """The dimensions each ``sizes=`` entry gives a size to (``sized``: the union-find keys of
    the indices sizes= names): those its index names that no input carries, when it names
    some (the other statements' letter of that name, an axis of an array, takes the array's
    size, as evaluate does); else all it names, to be checked against the arrays."""
    named: dict = {}
    for key in sized:
        named.setdefault(key[2], set()).add(reps[uf.find(key)])
    reach = {}
    for index, dims in named.items():
        free = {d for d in dims if d.startswith("=")}
        reach[index] = free or dims
    return reach


def _size_only_inputs(text, size_refs, input_ndim, defined) -> frozenset:
    """Check every ``size(A,k)``; a name that only ``size()`` reads becomes an input whose
    axes up to the largest k read are known (it may have more: ``L = size(x,0)``, the text of
    ``sum_i(x_i - x_i + 1)``, reads any x of at least one axis). Returns those names."""
    only = {}
    for name, axis, node, n in size_refs:
        if name not in input_ndim and name not in defined:
            only[name] = max(only.get(name, 0), axis + 1)
    for name, axis, node, n in size_refs:
        if name in defined or (name not in only and axis >= input_ndim[name][0]):
            ndim = input_ndim[name][0] if name in input_ndim else 0
            axes = ("no axes" if ndim == 0 else "1 axis, axis 0" if ndim == 1
                    else f"{ndim} axes, 0 to {ndim - 1}")
            what = (f"'{name}' has {axes}" if name in input_ndim
                    else f"'{name}' is not an input of the program")
            raise syntax_error(text, f"size({name},{axis}): {what}", node.line, node.column)
    for name, ndim in only.items():
        _, axis, node, _ = next(ref for ref in size_refs if ref[0] == name)
        input_ndim[name] = (ndim, node.line, node.column, f"size({name},{axis})")
    return frozenset(only)


def _build_statement(text, st: Stmt, n, dim, defined, input_dim) -> Expr:
    lhs = set(st.indices)

    def build(node: Node) -> Expr:
        """The node's expression; an error of the arithmetic (a constant beyond float64, a
        sum that grows too large) points at the innermost node that raised it."""
        try:
            return build_node(node)
        except EinderivSyntaxError:
            raise
        except EinderivError as err:
            raise syntax_error(text, str(err), node.line, node.column) from None

    def build_node(node: Node) -> Expr:
        kind = node.kind
        if kind == "num":
            return S.const(node.value)
        if kind == "tensor":
            name, idx = node.value
            factor = Tensor(name, idx, tuple(dim(n, i) for i in idx))
            return S.factor_expr(factor)
        if kind == "delta":
            a, b = sorted(node.value)
            d = dim(n, a)
            return S.expr({a: d, b: d}, [Term(S.ONE, (Delta(a, b, d),))])
        if kind == "call":
            return S.func(node.value, build(node.children[0]))
        if kind == "sum":
            arg = build(node.children[0])
            extra = [Size(dim(n, j), j) for j in node.value if j not in arg.indices]
            if extra:
                arg = S.mul(arg, S.expr({}, [Term(S.ONE, tuple(extra))]))
            return S.contract(arg, [j for j in node.value if j in arg.indices])
        if kind == "add":
            parts = []
            for op, child in node.children:
                e = build(child)
                parts.append(S.scale(e, -1) if op == "-" else e)
            return S.add(*parts)
        if kind == "mul":
            parts = []
            for op, child in node.children:
                e = build(child)
                if op == "/":
                    if S.is_zero(e):
                        raise syntax_error(text, "division by zero", child.line, child.column)
                    e = S.power(e, S.const(-1))
                parts.append(e)
            return S.mul(*parts)
        if kind == "group":
            return build(node.children[0])
        if kind == "size":
            name, axis = node.value
            return S.expr({}, [Term(S.ONE, (Size(input_dim(name, axis), name),))])
        if kind == "neg":
            return S.scale(build(node.children[0]), -1)
        if kind == "pow":
            base, exponent = node.children
            e = build(exponent)
            if e.indices:
                raise syntax_error(text, f"the exponent carries indices {', '.join(e.indices)}; "
                                   "an exponent must be a number or a scalar", exponent.line,
                                   exponent.column)
            try:
                return S.power(build(base), e)
            except EinderivError as err:
                raise syntax_error(text, str(err), node.line, node.column) from None
        raise AssertionError(kind)

    items = st.rhs.children if st.rhs.kind == "add" else (("+", st.rhs),)
    terms = []
    for op, child in items:
        e = build(child)
        summed = [i for i in e.indices if i not in lhs]
        if summed:
            e = S.contract(e, summed)
        terms.append(S.scale(e, -1) if op == "-" else e)
    if len(terms) == 1:  # already canonical
        return terms[0]
    try:
        return S.add(*terms)
    except EinderivError as err:  # e.g. 1e308 x_i + 1e308 x_i: a constant beyond float64
        raise syntax_error(text, str(err), st.rhs.line, st.rhs.column) from None
