"""IR → a plan of einsums, compiled once per (program, shapes) and run as a thin call.

Lowering turns every statement into steps: one einsum per term (opt_einsum
``contract_expression``, its path chosen once), elementwise functions and powers of nested
expressions as temporaries computed once (common subexpressions share them, intermediates of
the program included), and a Kronecker delta that survives in a result as a write into a
diagonal view of the output — never an identity matrix in a contraction.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import os
import string
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import opt_einsum as oe

from .errors import EinderivError, IndexSizeError
from .functions import backend_function
from .ir import Delta, Expr, Func, Power, Size, Tensor, rename_expr, term_dims, term_indices
from .kernels import compile_contraction, compile_gram, smallest_operand
from .simplify import const_value

__all__ = ["lower", "Plan", "compile_plan", "set_memory_limit", "memory_limit", "ExprStep"]

_LETTERS = string.ascii_letters


# --- lowering: shape-independent ---------------------------------------------------------------

@dataclass
class EinsumTerm:
    """coeff · Π sizes · einsum(operands) added into the output (through δ views)."""
    coeff: float
    sizes: tuple             # dimensions whose size multiplies the term
    operands: list           # [(ref, indices)]
    deltas: list             # [(a, b)] free deltas: write into the diagonal a == b


class _TermPlan(NamedTuple):
    """One term of an ExprStep bound to shapes (what the runners unpack)."""
    coeff: float             # what is left to multiply by (sizes folded in)
    refs: tuple              # operand references in the environment
    fn: object               # the contraction callable, None for a constant
    deltas: list             # δ pairs: the term goes into a diagonal view
    expand: tuple            # index that broadcasts the value over missing view axes
    full: bool               # the value has every view axis (no broadcasting)
    fresh: bool              # fn returns a new array (two or more operands)
    groups: object           # output axes of each δ class (None without δ)
    call: object             # env -> fn(operands)


@dataclass
class ExprStep:
    """target = Σ terms, axes in ``order`` (dimensions ``dims``)."""
    target: str
    order: tuple
    dims: tuple
    terms: list


@dataclass
class FuncStep:
    target: str
    func: str
    source: str


@dataclass
class PowerStep:
    target: str
    source: str
    exponent: object          # a float, or the name of a 0-d temporary


@dataclass
class Plan:
    steps: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)      # result name -> (ref, axes order)
    inputs: tuple = ()
    input_dims: dict = field(default_factory=dict)   # name -> tuple of dimensions


def _canonical(node_indices, node):
    """A key for a node up to the names of its free indices, and the order of those indices
    that the key's placeholders ``#0, #1, ...`` stand for.

    The placeholders are assigned by trying the orders of the free indices and keeping the
    smallest key, so ``tanh(W_ij x_bj)`` over (b, i) and over (n, i) get the same key. A
    large node (a nested group of a Hessian through many layers) takes the sorted order only:
    each order tried re-canonicalizes all of it. Any order gives a correct key (the key is
    the renamed node itself); the search only finds more common subexpressions.
    """
    from .simplify import expr as canon, expr_key, factor_key
    names = sorted(node_indices)
    orders = [tuple(names)]
    if 1 < len(names) <= 4:
        size = len(expr_key(node) if isinstance(node, Expr) else factor_key(node))
        if size <= _SEARCHED_KEY_SIZE:
            orders = itertools.permutations(names)
    best = None
    for order in orders:
        mapping = {i: f"#{k}" for k, i in enumerate(order)}
        if isinstance(node, Func):
            arg = rename_expr(node.arg, mapping)
            key = Func(node.name, canon(arg.dim_map, arg.terms))
            rank = factor_key(key)
        elif isinstance(node, Power):
            base = rename_expr(node.base, mapping)
            key = Power(canon(base.dim_map, base.terms), node.exponent)
            rank = factor_key(key)
        else:
            key = rename_expr(node, mapping)
            key = canon(key.dim_map, key.terms)
            rank = expr_key(key)
        if best is None or rank < best[0]:
            best = (rank, key, tuple(order))
    return best[1], best[2]


_SEARCHED_KEY_SIZE = 4000   # key atoms of a node up to which _canonical tries every order


class _Lowering:
    def __init__(self):
        self.plan = Plan()
        self.cache = {}       # canonical node -> temp name (axes: canonical order)
        self.count = 0
        self.statement = None   # the statement being lowered (named by error messages)

    def temp(self):
        self.count += 1
        return f"%t{self.count}"

    def register(self, name, indices, expr: Expr):
        """Let later occurrences of the same function/power reuse a statement's value."""
        if len(expr.terms) == 1 and expr.terms[0].coeff == 1 and len(expr.terms[0].factors) == 1:
            f = expr.terms[0].factors[0]
            if isinstance(f, (Func, Power)) and set(term_indices(expr.terms[0])) == set(indices):
                key, order = _canonical(indices, f)
                # the statement's axes are `indices`; record how canonical axes map onto them
                self.cache.setdefault(key, (name, tuple(indices), order))

    def operand(self, factor, prefer=None):
        """(ref, index names per axis) for a Func or Power factor, computed once; a new
        temporary takes the axis order ``prefer`` where one is given (its consumer's)."""
        key, order = _canonical(factor_indices_of(factor), factor)
        hit = self.cache.get(key)
        if hit is not None:
            ref, axes, canon_order = hit
            rename = dict(zip(canon_order, order))
            return ref, tuple(rename[a] for a in axes)
        if isinstance(factor, Func):
            src, src_axes = self.expr_value(factor.arg, prefer=prefer)
            target = self.temp()
            self.plan.steps.append(FuncStep(target, factor.name, src))
            result = (target, src_axes)
        else:
            src, src_axes = self.expr_value(factor.base, prefer=prefer)
            n = const_value(factor.exponent)
            if n is None:
                exp_ref, _ = self.expr_value(factor.exponent)
                exponent = exp_ref
            else:
                exponent = float(n)
            if exponent == 1.0:  # a parenthesized group: its value is the sum itself
                result = (src, src_axes)
            else:
                target = self.temp()
                self.plan.steps.append(PowerStep(target, src, exponent))
                result = (target, src_axes)
        # cache in canonical terms: axes of the temp as names of `order`
        pos = {i: k for k, i in enumerate(order)}
        self.cache[key] = (result[0], tuple(f"#{pos[a]}" for a in result[1]),
                           tuple(f"#{k}" for k in range(len(order))))
        return result

    def expr_value(self, e: Expr, order=None, target=None, prefer=None):
        """A reference holding ``e``; returns (ref, axes). A lone factor is reused as is.

        ``order`` fixes the axes (a statement's); otherwise a new temporary takes ``prefer``
        (its consumer's order), else the order of an operand with all of its indices, so
        that elementwise steps and their consumers see the same memory layout.
        """
        if order is None and len(e.terms) == 1 and e.terms[0].coeff == 1:
            t = e.terms[0]
            if len(t.factors) == 1 and set(term_indices(t)) == set(e.indices):
                f = t.factors[0]
                if isinstance(f, (Func, Power)):
                    return self.operand(f, prefer)
                if isinstance(f, Tensor) and len(set(f.indices)) == len(f.indices):
                    return f.name, f.indices
        key = None
        if order is None and target is None:
            # a nested expression seen before (Σ_i exp(x_i) in both 1/S and 1/S²) is reused
            key, canon_order = _canonical(e.indices, e)
            key = ("expr", key)
            hit = self.cache.get(key)
            if hit is not None:
                ref, axes, hit_order = hit
                back = dict(zip(hit_order, canon_order))
                return ref, tuple(back[a] for a in axes)
        want = order if order is not None else prefer
        dims = e.dim_map
        terms = []
        for t in e.terms:
            operands, deltas, sizes = [], [], []
            for f in t.factors:
                if isinstance(f, Tensor):
                    operands.append((f.name, f.indices))
                elif isinstance(f, Delta):
                    deltas.append((f.a, f.b))
                elif isinstance(f, Size):
                    sizes.append(f.dim)
                else:
                    operands.append(self.operand(f, _restricted(want, factor_indices_of(f))))
            if len({i for _, idx in operands for i in idx}) > len(_LETTERS):
                keep = set(e.indices) | {i for pair in deltas for i in pair}
                operands = self.narrow(operands, keep, {**term_dims(t.factors), **dims},
                                       self.statement)
            terms.append(EinsumTerm(float(t.coeff), tuple(sizes), operands, deltas))
        if order is None:
            order = _layout(e.indices, prefer, [idx for term in terms for _, idx in term.operands])
        order = tuple(order)
        target = target or self.temp()
        self.plan.steps.append(ExprStep(target, order, tuple(dims[i] for i in order), terms))
        if key is not None:
            position = {i: f"#{k}" for k, i in enumerate(canon_order)}
            self.cache[key] = (target, tuple(position[i] for i in order),
                               tuple(f"#{k}" for k in range(len(canon_order))))
        return target, order

    def narrow(self, operands, keep, dims, where=None):
        """Operands of a term with more distinct indices than einsum has letters (52), e.g.
        the gradient of a 100-layer chain: connected groups of them are contracted into
        temporaries first, each over the indices the rest of the term or ``keep`` (the
        term's free and δ indices) still needs, until what is left fits one einsum."""
        rest = list(operands)
        while len({i for _, idx in rest for i in idx}) > len(_LETTERS):
            for start in range(len(rest)):
                group, axes = _connected_group(rest, start, keep)
                if group is not None:
                    break
            else:
                count = len({i for _, idx in rest for i in idx})
                raise EinderivError(f"a term{f' of {where}' if where else ''} keeps {count} distinct "
                                    f"indices, more than einsum's {len(_LETTERS)} letters")
            target = self.temp()
            self.plan.steps.append(ExprStep(target, axes, tuple(dims[i] for i in axes),
                                            [EinsumTerm(1.0, (), [rest[k] for k in group], [])]))
            rest = [op for k, op in enumerate(rest) if k not in group] + [(target, axes)]
        return rest


_GROUP_INDICES = 26   # indices of one partial contraction of a term too wide for einsum


def _connected_group(operands, start, keep):
    """Positions of operands connected to ``operands[start]`` through shared indices (at
    most ``_GROUP_INDICES`` indices in all) and the axes their contraction keeps; (None,
    None) when contracting them would not remove an index."""
    group = [start]
    seen = set(operands[start][1])
    while True:
        # the connected operand that brings the fewest new indices (a chain grows link by link)
        best = min(((len(set(idx) - seen), k) for k, (_, idx) in enumerate(operands)
                    if k not in group and not seen.isdisjoint(idx)), default=None)
        if best is None or len(seen) + best[0] > _GROUP_INDICES:
            break
        seen.update(operands[best[1]][1])
        group.append(best[1])
    outside = set(keep)
    for k, (_, idx) in enumerate(operands):
        if k not in group:
            outside.update(idx)
    axes = tuple(i for i in dict.fromkeys(i for k in group for i in operands[k][1]) if i in outside)
    if len(axes) >= len(seen):    # nothing summed away (a lone operand may sum its own axes)
        return None, None
    return set(group), axes


def _restricted(order, indices):
    """``order`` cut down to ``indices`` when it holds all of them, else None."""
    if order is None or not set(indices) <= set(order):
        return None
    return tuple(i for i in order if i in indices)


def _layout(indices, prefer, operand_axes):
    """The axis order of a new temporary over ``indices``: ``prefer`` when it is one, else
    the axes of the first operand that carries every index once, else ``indices``."""
    wanted = set(indices)
    for axes in ([prefer] if prefer is not None else []) + list(operand_axes):
        if len(axes) == len(wanted) and set(axes) == wanted:
            return tuple(axes)
    return tuple(indices)


def factor_indices_of(f):
    from .ir import factor_indices
    return factor_indices(f)


def lower(statements, outputs, inputs: dict) -> Plan:
    """The shape-independent plan of a program: statements in order, outputs by name."""
    lw = _Lowering()
    lw.plan.inputs = tuple(inputs)
    lw.plan.input_dims = dict(inputs)
    for st in statements:
        lw.statement = st.name
        lw.expr_value(st.expr, order=st.indices, target=st.name)
        lw.register(st.name, st.indices, st.expr)
        if st.name in outputs:
            lw.plan.outputs[st.name] = (st.name, st.indices)
    return lw.plan


# --- memory guard -----------------------------------------------------------------------------

_MEMORY_LIMIT = None


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def set_memory_limit(max_bytes):
    """Refuse evaluations whose arrays would need more than ``max_bytes`` (None: automatic,
    half of the memory available when the plan is compiled)."""
    global _MEMORY_LIMIT
    if max_bytes is not None:
        check_memory_limit(max_bytes)
    _MEMORY_LIMIT = max_bytes


def check_memory_limit(max_bytes):
    """Refuse anything but a positive number of bytes (``set_memory_limit``, ``max_bytes=``)."""
    if (isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, numbers.Real)
            or not max_bytes > 0):
        raise EinderivError(f"a memory limit must be a positive number of bytes, got {max_bytes!r}")


def memory_limit() -> int:
    return int(_MEMORY_LIMIT) if _MEMORY_LIMIT is not None else _available_memory() // 2


def _human(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


# --- compiling for shapes ------------------------------------------------------------------------

def resolve_sizes(input_dims: dict, members: dict, arrays: dict, sizes: dict,
                  output_dims: dict | None = None, strict=None) -> dict:
    """The size of every dimension, checking that all tensors along it agree."""
    dim_size: dict = {}
    seen: dict = {}
    for name, dims in input_dims.items():
        shape = arrays[name]
        for axis, d in enumerate(dims):
            n = shape[axis]
            if d in dim_size and dim_size[d] != n:
                other_name, other_axis, other_n = seen[d]
                index = _index_name(members, d, name, axis)
                other_index = _index_name(members, d, other_name, other_axis)
                if index == other_index:
                    raise IndexSizeError(
                        f"index '{index}' has size {other_n} in {other_name} (axis {other_axis}) "
                        f"but {n} in {name} (axis {axis})")
                raise IndexSizeError(
                    f"index '{other_index}' has size {other_n} in {other_name} (axis {other_axis}) "
                    f"but index '{index}', which runs along it, has size {n} in {name} (axis {axis})")
            dim_size.setdefault(d, n)
            seen.setdefault(d, (name, axis, n))
    carried = set(dim_size)        # the dimensions the arrays give
    for index, n in sizes.items():
        targets = [d for d in (output_dims or {}).get(index, ())] if output_dims else []
        targets += [d for d, group in members.items()
                    if d not in targets and any(i == index for _, _, i, _ in group)]
        if not targets:
            if strict is None or index in strict:
                raise IndexSizeError(f"sizes gives index '{index}', which the formula does not use")
            continue
        unsized = [d for d in targets if d not in carried]
        if unsized and len(unsized) < len(targets):
            # the index names a dimension no array carries (j in y_i = h_i sum_j(1)) and, in
            # another statement, one an array carries (h_i = sum_j(W_ij x_j)): the size is for
            # the first; the others take theirs from the arrays
            targets = unsized
        for d in targets:
            if d in dim_size and dim_size[d] != n:
                name, ax, m = seen[d]
                where = f"{name} has size {m} along it (axis {ax})" if name != "sizes" else f"it is {m}"
                raise IndexSizeError(f"sizes gives index '{index}' size {n}, but {where}")
            dim_size.setdefault(d, n)
            seen.setdefault(d, ("sizes", None, n))
    return dim_size


def _index_name(members, d, tensor, axis):
    for t, a, index, _ in members.get(d, ()):
        if t == tensor and a == axis:
            return index
    return "?"


class Compiled:
    """A plan bound to sizes: a list of closures run in order over an environment dict."""

    def __init__(self, runners, outputs, result_dtype):
        self.runners = runners
        self.outputs = outputs
        self.dtype = result_dtype
        # the one result's reference, or None for several outputs
        self.single = next(iter(outputs.values()))[0] if len(outputs) == 1 else None

    def __call__(self, env):
        for run in self.runners:
            run(env)
        return env


def delta_classes(order, deltas):
    """Free indices that Kronecker deltas tie together (δ_ip: i and p run together).

    Returns ``rep`` (index → the first index of its class), ``view_axes`` (one per class, in
    the order of ``order``) and ``groups`` (the output axes of each class): the shape of the
    diagonal view a δ term is written into.
    """
    parent = {i: i for i in order}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in deltas:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    rep = {i: find(i) for i in order}
    view_axes = tuple(dict.fromkeys(rep[i] for i in order))
    groups = [[k for k, i in enumerate(order) if rep[i] == r] for r in view_axes]
    return rep, view_axes, groups


def _torch_view(out, groups):
    """A view of a torch tensor where the axes of each group run together."""
    shape = [out.shape[g[0]] for g in groups]
    strides = [sum(out.stride(k) for k in g) for g in groups]
    return out.as_strided(shape, strides, out.storage_offset())


def _diagonal_writer(order, deltas, out_shape, dtype):
    """A fast maker of the δ view for numpy: the merged shape and the axis groups are fixed
    now; a C-contiguous output gets its view through ``np.ndarray`` directly."""
    _, _, axis_groups = delta_classes(order, deltas)
    shape = tuple(out_shape[g[0]] for g in axis_groups)
    itemsize = np.dtype(dtype).itemsize
    c_strides = [itemsize] * len(out_shape)
    for k in range(len(out_shape) - 2, -1, -1):
        c_strides[k] = c_strides[k + 1] * max(out_shape[k + 1], 1)
    fixed = tuple(sum(c_strides[k] for k in g) for g in axis_groups)

    def view(out):
        if out.flags.c_contiguous and out.dtype == dtype and out.size:
            return np.ndarray(shape, dtype=dtype, buffer=out, strides=fixed)
        strides = [sum(out.strides[k] for k in g) for g in axis_groups]
        return np.lib.stride_tricks.as_strided(out, shape, strides, writeable=True)

    return view


def compile_plan(plan: Plan, dim_size: dict, dtype, backend: str, max_bytes: int):
    """Bind a plan to sizes and a backend: paths chosen, memory checked, closures built."""
    runners = []
    shapes = {}
    for name, dims in plan.input_dims.items():
        shapes[name] = tuple(dim_size[d] for d in dims)
    itemsize = np.dtype(dtype).itemsize
    total = 0

    def check_bytes(label, shape):
        nonlocal total
        n = math.prod(shape) * itemsize
        total += n
        if n > max_bytes or total > max_bytes:
            raise EinderivError(
                f"evaluating would need {_human(max(n, total))} ({label} has shape "
                f"{tuple(shape)}, {_human(n)}), above the memory limit of {_human(max_bytes)}; "
                "raise it with set_memory_limit() or max_bytes=, or use smaller inputs")

    for step in plan.steps:
        if isinstance(step, ExprStep):
            out_shape = tuple(dim_size[d] for d in step.dims)
            # a derivative's result is named ∂C inside; the user knows it as "the derivative"
            check_bytes("an intermediate" if step.target.startswith("%")
                        else "the derivative" if step.target.startswith("∂")
                        else f"the result '{step.target}'", out_shape)
            runners.append(_compile_expr(step, shapes, dim_size, dtype, backend, check_bytes))
            shapes[step.target] = out_shape
        elif isinstance(step, FuncStep):
            fn = backend_function(step.func, backend)
            shapes[step.target] = shapes[step.source]
            check_bytes("an intermediate", shapes[step.target])
            runners.append(_func_runner(step.target, fn, step.source))
        elif isinstance(step, PowerStep):
            shapes[step.target] = shapes[step.source]
            check_bytes("an intermediate", shapes[step.target])
            runners.append(_power_runner(step.target, step.source, step.exponent, backend))
    if backend in ("numpy", "torch"):
        # a result that may be a view of an input (y_i = x_i, y_ij = A_ji) is copied, so that
        # writing into it never changes the caller's array
        outputs = {ref for ref, _ in plan.outputs.values()}
        for k, step in enumerate(plan.steps):
            if step.target in outputs and _may_alias(step):
                runners[k] = _copied(runners[k], step.target, backend)
    return Compiled(runners, plan.outputs, dtype)


def _may_alias(step) -> bool:
    """Whether a step's value can be (a view of) another array: a lone operand, unscaled."""
    if isinstance(step, PowerStep):
        return step.exponent == 1.0
    if isinstance(step, ExprStep) and len(step.terms) == 1:
        term = step.terms[0]
        return (len(term.operands) == 1 and not term.deltas and not term.sizes
                and term.coeff == 1.0)
    return False


def _copied(run, target, backend):
    def copy_run(env):
        run(env)
        value = env[target]
        env[target] = value.clone() if backend == "torch" else np.array(value, copy=True)
    return copy_run


def _func_runner(target, fn, source):
    def run(env):
        env[target] = fn(env[source])
    return run


def _power_runner(target, source, exponent, backend):
    if isinstance(exponent, str):
        def run(env):
            env[target] = env[source] ** env[exponent]
        return run
    if exponent == 1.0:
        def run(env):
            env[target] = env[source]
        return run
    if exponent == 2.0:
        def run(env):
            x = env[source]
            env[target] = x * x
        return run
    if exponent == -1.0 and backend == "numpy":
        def run(env):
            env[target] = np.reciprocal(env[source])
        return run
    if exponent == 0.5 and backend == "numpy":
        def run(env):
            env[target] = np.sqrt(env[source])
        return run

    def run(env):
        env[target] = env[source] ** exponent
    return run


def _subscripts(operands, out_indices):
    letters = {}
    for _, idx in operands:
        for i in idx:
            if i not in letters:
                if len(letters) >= len(_LETTERS):
                    raise EinderivError("a term has more than 52 distinct indices")
                letters[i] = _LETTERS[len(letters)]
    for i in out_indices:
        if i not in letters:
            letters[i] = _LETTERS[len(letters)]
    ins = ",".join("".join(letters[i] for i in idx) for _, idx in operands)
    return f"{ins}->{''.join(letters[i] for i in out_indices)}"


def _compile_expr(step: ExprStep, shapes, dim_size, dtype, backend, check_bytes):
    order = step.order
    out_shape = tuple(dim_size[d] for d in step.dims)
    target = step.target
    plans = []
    for term in step.terms:
        coeff = term.coeff
        for d in term.sizes:
            coeff *= dim_size[d]
        # view axes: δ-linked free indices run together
        if term.deltas:
            rep, view_axes, groups = delta_classes(order, term.deltas)
            # an operand index linked to a representative is renamed to it
            operands = [(ref, tuple(rep.get(i, i) for i in idx)) for ref, idx in term.operands]
        else:
            view_axes, groups, operands = order, None, term.operands
        present = set()
        for _, idx in operands:
            present.update(idx)
        kept = tuple(i for i in view_axes if i in present)
        expand = tuple(slice(None) if i in present else None for i in view_axes)
        refs = tuple(ref for ref, _ in operands)
        fn = None
        if operands:
            subs = _subscripts(operands, kept)
            op_shapes = [shapes[ref] for ref, _ in operands]
            if backend == "numpy" and len(operands) >= 2:
                fn = compile_gram(subs, op_shapes, refs, coeff)
                if fn is not None:
                    coeff = 1.0          # the Gram kernel applies it (inside the square root)
            if fn is None:
                fn = _contraction(subs, op_shapes, operands, kept, backend, check_bytes)
        call = None
        if fn is not None:
            scale = None
            if coeff != 1.0 and len(operands) >= 2:
                # scale the smallest operand instead of the (larger) result: one pass saved
                k = smallest_operand([shapes[ref] for ref in refs],
                                     math.prod(dim_size[step.dims[order.index(i)]] for i in kept))
                if k is not None:
                    scale = (k, coeff)
                    coeff = 1.0
            call = _bind(fn, refs, scale)
            if scale is not None:
                fn = _scaled(fn, *scale)
        plans.append(_TermPlan(coeff, refs, fn, term.deltas, expand, len(kept) == len(view_axes),
                               len(operands) >= 2, groups, call))

    # fast path: one term, no δ, nothing broadcast: the einsum result is the value
    if len(plans) == 1 and not plans[0].deltas and plans[0].full and plans[0].fn is not None:
        coeff, refs, fn, _, _, _, fresh, _, call = plans[0]
        if coeff == 1.0:
            def run(env):
                env[target] = call(env)
        elif fresh and backend == "numpy":
            def run(env):
                value = call(env)
                if type(value) is np.ndarray:
                    np.multiply(value, coeff, out=value)  # a fresh result: scale in place
                    env[target] = value
                else:
                    env[target] = coeff * value
        else:
            def run(env):
                env[target] = coeff * call(env)
        return run

    if backend == "numpy":
        return _numpy_sum_runner(target, plans, order, out_shape, np.dtype(dtype))

    xp = "torch" if backend == "torch" else "functional"

    def run(env):
        out = None
        for coeff, refs, fn, deltas, expand, full, _, groups, call in plans:
            value = call(env) if call is not None else None
            if xp != "functional":
                if out is None and not deltas and full and value is not None:
                    out = _fresh_copy(value, coeff, xp, dtype)
                    continue
                if out is None:
                    out = _zeros(out_shape, dtype, xp, env, refs)
                view = _torch_view(out, groups) if deltas else out
                if value is None:
                    view += coeff
                elif coeff == 1.0:
                    view += value[expand] if not full else value
                else:
                    view += coeff * (value[expand] if not full else value)
            else:
                out = _functional_add(out, value, coeff, deltas, expand, order, out_shape, env, refs, backend, dtype)
        if out is None:
            out = _zeros(out_shape, dtype, xp, env, ()) if xp != "functional" else _functional_zeros(out_shape, backend, dtype, env)
        env[target] = out

    return run


def _bind(fn, refs, scale=None):
    """``env -> fn(env[ref], ...)``, without building an argument list per call; ``scale =
    (k, c)`` multiplies operand k by c first. A multi-step contraction is bound as its tree
    of closures (``fn.tree``), with the operands looked up where they are used."""
    tree = getattr(fn, "tree", None)
    if tree is not None:
        leaves = [operator.itemgetter(ref) for ref in refs]
        if scale is not None:
            k, c = scale
            ref = refs[k]
            leaves[k] = lambda env: env[ref] * c
        return tree(leaves)
    if scale is not None:
        fn = _scaled(fn, *scale)
    if len(refs) == 1:
        r0, = refs
        perm = getattr(fn, "perm", None)
        if perm is not None:             # numpy's transpose, called on the operand directly
            return (operator.itemgetter(r0) if perm == tuple(range(len(perm)))
                    else lambda env: env[r0].transpose(perm))
        return lambda env: fn(env[r0])
    if len(refs) == 2:
        r0, r1 = refs
        return lambda env: fn(env[r0], env[r1])
    get = operator.itemgetter(*refs)
    return lambda env: fn(*get(env))


def _scaled(fn, k, coeff):
    def run(*operands, **out):
        operands = list(operands)
        operands[k] = operands[k] * coeff
        return fn(*operands, **out)
    run.writes = getattr(fn, "writes", False)
    return run


def _numpy_sum_runner(target, plans, order, out_shape, dtype):
    """Σ terms into one numpy array with as few passes and allocations as possible:
    constants folded into one number, the first full term starting the output (in place
    when its einsum result is fresh), two full terms combined by one add, δ terms added
    through diagonal views."""
    const = sum(p.coeff for p in plans if p.fn is None and not p.deltas)
    terms = [p for p in plans if not (p.fn is None and not p.deltas)]
    writers = {tuple(p.deltas): _diagonal_writer(order, p.deltas, out_shape, dtype)
               for p in terms if p.deltas}
    writes_out = {p.fn for p in terms if getattr(p.fn, "writes", False)}

    def whole(p):
        """A term that can start the output: full, no δ, an einsum."""
        return p.full and not p.deltas and p.fn is not None

    terms.sort(key=lambda p: (not whole(p), p.coeff != 1.0))   # a + b − c, not −c + a + b
    starts = bool(terms) and whole(terms[0])
    pairable = (starts and len(terms) >= 2 and whole(terms[1])
                and terms[0].coeff == 1.0 and terms[1].coeff in (1.0, -1.0))
    if (starts and not pairable and not const and terms[0].coeff == 1.0 and terms[0].fresh
            and all(not p.deltas and p.fn is not None and p.coeff in (1.0, -1.0)
                    for p in terms[1:])):
        # the common shape of a statement with biases, y = W·x + b: a fresh product, then
        # broadcast additions in place (no zeros, no branching per call)
        first = terms[0].call
        adds = [(p.call, None if p.full else p.expand, p.coeff > 0) for p in terms[1:]]

        def run(env):
            out = first(env)
            if type(out) is not np.ndarray or out.dtype != dtype:
                out = np.array(out, dtype=dtype)
            for call, expand, plus in adds:
                value = call(env) if expand is None else call(env)[expand]
                if plus:
                    out += value
                else:
                    out -= value
            env[target] = out
        return run

    if (terms and not starts and not const and all(p.fn is not None for p in terms)
            and not (terms[0].full and terms[0].fn in writes_out)):
        # einsums added into zeros through their δ views or broadcast (y_ikpq = δ_ip B_qk):
        # the general loop below without its per-call branching
        # view (+|-)= value, or view += coeff · value (scale None: ±1 is the ufunc)
        adds = [(writers[tuple(p.deltas)] if p.deltas else None, p.call,
                 None if p.full else p.expand, np.subtract if p.coeff == -1.0 else np.add,
                 None if p.coeff in (1.0, -1.0) else p.coeff) for p in terms]

        def run(env):
            out = np.zeros(out_shape, dtype=dtype)
            for view_of, call, expand, op, scale in adds:
                view = out if view_of is None else view_of(out)
                value = call(env) if expand is None else call(env)[expand]
                op(view, value if scale is None else scale * value, out=view)
            env[target] = out
        return run

    if out_shape and pairable and len(terms) == 2 and not const:
        # a + b or a - b of two whole terms: one ufunc call
        first, second = terms[0].call, terms[1].call
        op = np.add if terms[1].coeff == 1.0 else np.subtract

        def run(env):
            env[target] = op(first(env), second(env), dtype=dtype)
        return run

    if (out_shape and const and len(terms) == 1 and whole(terms[0])
            and terms[0].coeff in (1.0, -1.0)):
        # c + a or c - a (1 - tanh², the derivative of tanh): one ufunc call
        only, c = terms[0].call, const
        if terms[0].coeff == 1.0:
            def run(env):
                env[target] = np.add(only(env), c, dtype=dtype)
        else:
            def run(env):
                env[target] = np.subtract(c, only(env), dtype=dtype)
        return run

    def run(env):
        pending = const
        rest = terms
        out = None
        if pairable:
            first, second = terms[0], terms[1]
            a = first.call(env)
            b = second.call(env)
            out = np.add(a, b, dtype=dtype) if second.coeff == 1.0 else np.subtract(a, b, dtype=dtype)
            if type(out) is not np.ndarray:
                out = np.asarray(out)
            rest = terms[2:]
        elif starts:
            coeff, refs, fn, _, _, _, fresh, _, call = terms[0]
            value = call(env)
            if fresh and type(value) is np.ndarray and value.dtype == dtype:
                if coeff != 1.0:
                    np.multiply(value, coeff, out=value)
                out = value
            elif coeff == 1.0:
                out = np.add(value, pending, dtype=dtype) if pending else np.array(value, dtype=dtype)
                pending = 0
            elif coeff == -1.0:
                out = np.subtract(pending, value, dtype=dtype) if pending else np.negative(value, dtype=dtype)
                pending = 0
            else:
                out = np.multiply(value, coeff, dtype=dtype)
            if type(out) is not np.ndarray:
                out = np.asarray(out)
            rest = terms[1:]
        zeros = False
        for coeff, refs, fn, deltas, expand, full, _, _, call in rest:
            if out is None:
                out = np.zeros(out_shape, dtype=dtype)
                zeros = True
            view = writers[tuple(deltas)](out) if deltas else out
            if fn is None:
                view += coeff
                zeros = False
                continue
            if zeros and full and fn in writes_out:
                # the first term into a zeroed output: computed straight into its view
                fn(*[env[r] for r in refs], out=view)
                if coeff != 1.0:
                    view *= coeff
                zeros = False
                continue
            zeros = False
            value = call(env)
            if not full:
                value = value[expand]
            if coeff == 1.0:
                view += value
            elif coeff == -1.0:
                view -= value
            else:
                view += coeff * value
        if out is None:
            out = np.full(out_shape, pending, dtype=dtype) if pending else np.zeros(out_shape, dtype=dtype)
        elif pending:
            out += pending
        env[target] = out

    return run


def _fresh_copy(value, coeff, xp, dtype):
    if xp == "torch":
        out = value.clone() if coeff == 1.0 else value * coeff
        return out.contiguous()
    if coeff == 1.0:
        return np.array(value, dtype=np.result_type(value.dtype, dtype), copy=True)
    # a 0-d result must stay an array so that later terms can be added in place
    return np.asarray(np.multiply(value, coeff, dtype=np.result_type(value.dtype, dtype)))


def _zeros(shape, dtype, xp, env, refs):
    if xp == "torch":
        import torch
        like = None
        for v in env.values():
            if isinstance(v, torch.Tensor):
                like = v
                break
        device = like.device if like is not None else None
        tdtype = like.dtype if like is not None else torch.float64
        return torch.zeros(shape, dtype=tdtype, device=device)
    return np.zeros(shape, dtype=dtype)


def _functional_zeros(shape, backend, dtype, env):
    if backend == "jax":
        import jax.numpy as jnp
        return jnp.zeros(shape, dtype=dtype)
    if backend == "dask":
        import dask.array as da
        return da.zeros(shape, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def _functional_add(out, value, coeff, deltas, expand, order, out_shape, env, refs, backend, dtype):
    """Immutable backends (jax, dask). With jax a δ term is scattered along the diagonal
    (``out.at[i, k, i, q].add``); with dask the δ axes are expanded with an identity of the
    same backend as a mask — documented as the one place an identity is formed."""
    if backend == "jax":
        import jax.numpy as xp
    elif backend == "dask":
        import dask.array as xp
    else:
        xp = np
    if value is None:
        value = xp.ones((), dtype=dtype)   # a constant term: in the result dtype (float32 stays)
    if coeff != 1.0:
        value = value * coeff
    if deltas:
        # value has the view axes (δ classes); expand each class back to its axes
        rep, view_axes, _ = delta_classes(order, deltas)
        view_axes = list(view_axes)
        find = rep.__getitem__
        value = value[expand] if expand else value
        value = xp.broadcast_to(value, tuple(out_shape[order.index(r)] for r in view_axes))
        if backend == "jax":
            if out is None:
                out = xp.zeros(out_shape, dtype=value.dtype)
            index = []
            for i in order:
                position = view_axes.index(find(i))
                shape = [1] * len(view_axes)
                shape[position] = out_shape[order.index(i)]
                index.append(xp.arange(shape[position]).reshape(shape))
            return out.at[tuple(index)].add(value)
        letters = {r: _LETTERS[k] for k, r in enumerate(view_axes)}
        extra = {}
        operands_sub = ["".join(letters[r] for r in view_axes)]
        sides = []
        for i in order:
            r = find(i)
            if r != i:
                extra[i] = _LETTERS[len(view_axes) + len(extra)]
                sides.append(out_shape[order.index(i)])
                operands_sub.append(letters[r] + extra[i])
        out_sub = "".join(extra.get(i, letters.get(i, "")) if find(i) != i else letters[i] for i in order)
        full = _dask_diagonal(",".join(operands_sub) + "->" + out_sub, value, sides, dtype)
    else:
        full = xp.broadcast_to(value[expand], out_shape) if expand else value
    return full if out is None else out + full


def _dask_diagonal(subs, value, sides, dtype):
    """``value`` spread onto the diagonals of its δ axes, 0 elsewhere: ``where(mask, spread,
    0)`` with ``mask = δ δ ...`` (identities) and ``spread`` the value broadcast along the
    δ's other axis (all-ones). Multiplying by the identity instead would turn an inf or NaN on
    the diagonal into NaN off it (0 · inf), where numpy's diagonal view leaves 0."""
    import dask.array as da
    ones = da.ones(value.shape, dtype=dtype)
    mask = oe.contract(subs, ones, *(da.eye(n, dtype=dtype) for n in sides), backend="dask")
    spread = oe.contract(subs, value, *(da.ones((n, n), dtype=dtype) for n in sides),
                         backend="dask")
    return da.where(mask != 0, spread, da.zeros((), dtype=dtype))


def _contraction(subs, op_shapes, operands, kept, backend, check_bytes):
    """The callable computing one einsum: a transpose, or an opt_einsum expression."""
    ins, out = subs.split("->")
    parts = ins.split(",")
    if len(parts) == 1 and len(set(parts[0])) == len(parts[0]) and sorted(parts[0]) == sorted(out):
        perm = tuple(parts[0].index(c) for c in out)
        if perm == tuple(range(len(perm))):
            def fn(a):              # the operand itself, on every backend
                return a
        elif backend == "torch":
            return lambda a: a.permute(*perm)
        elif backend == "jax":
            import jax.numpy as jnp
            return lambda a: jnp.transpose(a, perm)
        else:
            def fn(a):
                return a.transpose(perm)
        fn.perm = perm              # _bind reads the operand directly, without this wrapper
        return fn
    path, info = oe.contract_path(subs, *op_shapes, shapes=True, optimize="auto")
    if info.largest_intermediate:
        check_bytes("an einsum intermediate", (info.largest_intermediate,))
    if backend == "numpy":
        fast = compile_contraction(subs, op_shapes, path)
        if fast is not None:
            return fast
    expr = oe.contract_expression(subs, *op_shapes, optimize=path)
    if backend == "numpy":
        return expr
    if backend == "dask":
        unify = _dask_diagonal_chunks(parts)
        if unify:
            return lambda *arrays: expr(*unify(arrays), backend=backend)
    return lambda *arrays: expr(*arrays, backend=backend)


def _dask_diagonal_chunks(parts):
    """For dask: the operands with a repeated index (``aab``: a diagonal or a trace) get the
    chunks of that index's first axis on its other axes. dask's einsum reads such an operand
    block by block and fails at compute time when its axes are chunked differently (as the
    user's arrays may be, or dask's own einsum results are). None when no operand repeats."""
    repeats = {k: {ax: p.index(c) for ax, c in enumerate(p) if p.index(c) != ax}
               for k, p in enumerate(parts) if len(set(p)) < len(p)}
    if not repeats:
        return None

    def unify(arrays):
        return [a.rechunk({ax: a.chunks[first] for ax, first in repeats[k].items()}) if k in repeats
                else a for k, a in enumerate(arrays)]
    return unify
