"""Fast numpy contractions for compiled plans: opt_einsum chooses the path once, and each
pairwise step runs as transpose → reshape → matmul with every permutation and shape fixed in
advance, so a call costs little more than the BLAS call itself.

Every piece is built twice from the same decisions: as a callable (``compile_contraction``,
``compile_gram``: what ``evaluate`` runs) and as a numpy expression (``contraction_source``,
``gram_source``: what ``to_source("numpy", shapes=...)`` writes), so exported code follows
the same plan.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

__all__ = ["compile_contraction", "contraction_source", "compile_gram", "gram_source",
           "gram", "GRAM_HELPER", "smallest_operand"]

OUTER_BY_BLAS = 4096     # outer products with at least this many entries go through np.dot


def smallest_operand(shapes, result_size):
    """Which operand a coefficient should scale instead of the (larger) result: the index of
    the smallest operand, or None when none is smaller than the result."""
    sizes = [math.prod(shape) for shape in shapes]
    k = min(range(len(sizes)), key=sizes.__getitem__)
    return k if sizes[k] < result_size else None


# --- views: (callable, source template) pairs ------------------------------------------------

def _same(a):
    return a


def _transposed(a):
    return a.T


_SAME = (_same, "{}")
_T = (_transposed, "{}.T")


def _view(perm, new_shape, shape):
    """``a.transpose(perm).reshape(new_shape)`` with the calls that change nothing left out."""
    perm, new_shape, shape = tuple(perm), tuple(new_shape), tuple(shape)
    identity = perm == tuple(range(len(perm)))
    if identity and shape == new_shape:
        return _SAME
    if perm == (1, 0) and (shape[1], shape[0]) == new_shape:
        return _T
    if identity:
        return (lambda a: a.reshape(new_shape)), "{}.reshape(%r)" % (new_shape,)
    if tuple(shape[k] for k in perm) == new_shape:
        return (lambda a: a.transpose(perm)), "{}.transpose(%r)" % (perm,)
    return (lambda a: a.transpose(perm).reshape(new_shape),
            "{}.transpose(%r).reshape(%r)" % (perm, new_shape))


def _einsum_op(expr):
    return (lambda a: np.einsum(expr, a)), "np.einsum(%r, {})" % expr


def _prepare(sub: str, out_keep: set, shape: tuple):
    """The op taking one operand to distinct indices, summing those nobody else needs.

    Returns (op or None, new subscript, new shape).
    """
    seen = list(dict.fromkeys(sub))
    keep = [c for c in seen if c in out_keep]
    size = dict(zip(sub, shape))
    if len(seen) == len(sub) and keep == list(sub):
        return None, sub, tuple(shape)
    return _einsum_op(f"{sub}->{''.join(keep)}"), "".join(keep), tuple(size[c] for c in keep)


# --- one pair of operands ----------------------------------------------------------------

def _pair(sa: str, sb: str, so: str, shape_a, shape_b):
    """``einsum(sa,sb->so)`` as one matmul (or broadcast product); the operands have
    distinct indices. Returns (callable, source) where ``source(a, b)`` is the expression."""
    first_free = next((c for c in so if not (c in sa and c in sb)), None)
    if first_free is not None and first_free not in sa:
        # the output starts with b's indices: compute b·a so no transpose is left over
        inner, inner_source = _pair(sb, sa, so, shape_b, shape_a)
        if getattr(inner, "writes", False):
            def swapped(a, b, out=None):
                return inner(b, a, out=out)
            swapped.writes = True
        else:
            def swapped(a, b):
                return inner(b, a)
        return swapped, (lambda a, b: inner_source(b, a))
    size = dict(zip(sa, shape_a))
    size.update(zip(sb, shape_b))
    batch = [c for c in sa if c in sb and c in so]
    contracted = [c for c in sa if c in sb and c not in so]
    free_a = [c for c in sa if c not in sb]
    free_b = [c for c in sb if c not in sa]
    perm_a = tuple(sa.index(c) for c in batch + free_a + contracted)
    perm_b = tuple(sb.index(c) for c in batch + contracted + free_b)
    nb = math.prod(size[c] for c in batch)
    na = math.prod(size[c] for c in free_a)
    nbb = math.prod(size[c] for c in free_b)
    nc = math.prod(size[c] for c in contracted)
    result_order = batch + free_a + free_b
    result_shape = tuple(size[c] for c in result_order)
    perm_out = tuple(result_order.index(c) for c in so)

    def back_to_output(product_shape):
        """The product (of ``product_shape``) in the pair's output axes."""
        if product_shape == result_shape:
            return _view(perm_out, tuple(result_shape[k] for k in perm_out), result_shape)
        shaped = "{}.reshape(%r)" % (result_shape,)
        if perm_out == tuple(range(len(perm_out))):
            return (lambda c: c.reshape(result_shape)), shaped
        return (lambda c: c.reshape(result_shape).transpose(perm_out),
                shaped + ".transpose(%r)" % (perm_out,))

    if not contracted:
        # no sum: a broadcast product, not a matmul with an inner dimension of 1; size-1 axes
        # are inserted (never a copy) so that it can also write straight into ``out``
        shape_a_b = tuple(size[c] for c in batch + free_a) + (1,) * len(free_b)
        shape_b_b = (tuple(size[c] for c in batch) + (1,) * len(free_a)
                     + tuple(size[c] for c in free_b))
        back = tuple(so.index(c) for c in result_order)
        (view_a, src_a), (view_b, src_b) = _view(perm_a, shape_a_b, shape_a), _view(perm_b, shape_b_b, shape_b)
        post, src_post = back_to_output(result_shape)
        if not batch and na * nbb >= OUTER_BY_BLAS:
            # a large outer product is faster as BLAS's rank-1 product (np.dot with an inner
            # dimension of 1: 21 µs against 34 µs for 300×300) than as a broadcast multiply
            (col, src_col), (row, src_row) = _view(perm_a, (na, 1), shape_a), _view(perm_b, (1, nbb), shape_b)
            post2, src_post2 = back_to_output((na, nbb))

            def run(a, b, out=None):
                if out is None:
                    return post2(np.dot(col(a), row(b)))
                np.multiply(view_a(a), view_b(b), out=out.transpose(back))
                return out

            def source(a, b):
                return src_post2.format(f"np.dot({src_col.format(a)}, {src_row.format(b)})")
        else:
            def run(a, b, out=None):
                if out is not None:
                    np.multiply(view_a(a), view_b(b), out=out.transpose(back))
                    return out
                return post(np.multiply(view_a(a), view_b(b)))

            def source(a, b):
                return src_post.format(f"({src_a.format(a)} * {src_b.format(b)})")
        run.writes = True
        return run, source

    if nb == 1:
        # one matrix product: 2-D views keep transposes as BLAS flags instead of copies; a
        # vector or a matrix already in place goes in as it is (no reshape, no transpose)
        vec_a = len(sa) == 1 and not free_a
        vec_b = len(sb) == 1 and not free_b
        if vec_a and vec_b:
            vec_a = vec_b = False          # a dot product: keep a 0-d array, not a scalar
        prep_a, src_a = _SAME if vec_a else _view(perm_a, (na, nc), shape_a)
        prep_b, src_b = _SAME if vec_b else _view(perm_b, (nc, nbb), shape_b)
        post, src_post = back_to_output((() if vec_a else (na,)) + (() if vec_b else (nbb,)))
    else:
        prep_a, src_a = _view(perm_a, (nb, na, nc), shape_a)
        prep_b, src_b = _view(perm_b, (nb, nc, nbb), shape_b)
        post, src_post = back_to_output((nb, na, nbb))
    run = _around(np.matmul, prep_a, prep_b, post)

    def source(a, b):
        return src_post.format(f"({src_a.format(a)} @ {src_b.format(b)})")
    return run, source


def _around(op, prep_a, prep_b, post):
    """``post(op(prep_a(a), prep_b(b)))`` with the identity views left out (a bare
    ``np.matmul`` where nothing needs a transpose or a reshape) and plain transposes
    written inline (``.T`` costs less than a call)."""
    if post is _same:
        if prep_a is _same:
            if prep_b is _same:
                return op
            if prep_b is _transposed:
                return lambda a, b: op(a, b.T)
            return lambda a, b: op(a, prep_b(b))
        if prep_a is _transposed:
            if prep_b is _same:
                return lambda a, b: op(a.T, b)
            if prep_b is _transposed:
                return lambda a, b: op(a.T, b.T)
        if prep_b is _same:
            return lambda a, b: op(prep_a(a), b)
        return lambda a, b: op(prep_a(a), prep_b(b))
    if prep_a is _same and prep_b is _same:
        return lambda a, b: post(op(a, b))
    return lambda a, b: post(op(prep_a(a), prep_b(b)))


# --- a whole contraction along an opt_einsum path ------------------------------------------

def _plan(subs: str, shapes: list, path):
    """The steps of ``subs`` along ``path``, fixed now: ``("pair", (k1, k2), (op1, op2, kernel,
    source))`` and ``("one", k, op)`` over a list of operands (popping k, appending the result),
    then an optional ``finish`` op; or ``("single", kernel, source)`` for a lone pair.
    None where the path has steps of more than two operands."""
    ins, out = subs.split("->")
    parts = ins.split(",")
    if len(parts) == 1:
        return [("one", 0, _einsum_op(subs))], None
    if len(parts) == 2:
        f1, _, _ = _prepare(parts[0], set(parts[1] + out), shapes[0])
        f2, _, _ = _prepare(parts[1], set(parts[0] + out), shapes[1])
        if f1 is None and f2 is None:
            # one pair with nothing to prepare: the pair kernel is the whole contraction
            return [("single",) + _pair(parts[0], parts[1], out, tuple(shapes[0]), tuple(shapes[1]))], None
    steps = []
    subs_list = list(parts)
    shapes_list = [tuple(s) for s in shapes]
    for pair in path:
        pair = tuple(sorted(pair, reverse=True))
        picked = [(subs_list.pop(k), shapes_list.pop(k), k) for k in pair]
        others = "".join(subs_list) + out
        if len(picked) == 1:
            (s, shp, k), = picked
            op, new_s, new_shape = _prepare(s, set(others), shp)
            steps.append(("one", k, op or _SAME))
            subs_list.append(new_s)
            shapes_list.append(new_shape)
            continue
        if len(picked) != 2:
            return None
        (s1, shp1, k1), (s2, shp2, k2) = picked
        op1, s1n, shp1n = _prepare(s1, set(others) | set(s2), shp1)
        op2, s2n, shp2n = _prepare(s2, set(others) | set(s1), shp2)
        result = "".join(c for c in dict.fromkeys(s1n + s2n) if c in set(others))
        kernel, source = _pair(s1n, s2n, result, shp1n, shp2n)
        size = dict(zip(s1n, shp1n))
        size.update(zip(s2n, shp2n))
        steps.append(("pair", (k1, k2), (op1, op2, kernel, source)))
        subs_list.append(result)
        shapes_list.append(tuple(size[c] for c in result))
    if len(subs_list) != 1:
        return None
    final = subs_list[0]
    finish = None
    if final != out:
        if sorted(final) != sorted(out) or len(set(final)) != len(final):
            finish = _einsum_op(f"{final}->{out}")
        else:
            perm = tuple(final.index(c) for c in out)
            finish = (lambda a: a.transpose(perm)), "{}.transpose(%r)" % (perm,)
    return steps, finish


def compile_contraction(subs: str, shapes: list, path):
    """A numpy callable for ``subs`` along ``path`` (from ``opt_einsum.contract_path``);
    ``fn(*operands, out=view)`` writes the result into ``view`` instead."""
    planned = _plan(subs, shapes, path)
    if planned is None:
        return None
    steps, finish = planned
    if steps[0][0] == "single":
        return steps[0][1]
    if len(steps) == 1 and steps[0][0] == "one" and finish is None:
        return steps[0][2][0]
    last = len(steps) - 1
    direct = finish is None and steps[-1][0] == "pair" and getattr(steps[-1][2][2], "writes", False)

    def run(*operands, out=None):
        ops = list(operands)
        for n, (kind, where, fns) in enumerate(steps):
            if kind == "one":
                ops.append(fns[0](ops.pop(where)))
                continue
            k1, k2 = where
            a = ops.pop(k1)
            b = ops.pop(k2)
            op1, op2, kernel, _ = fns
            if op1 is not None:
                a = op1[0](a)
            if op2 is not None:
                b = op2[0](b)
            if n == last and out is not None and direct:
                return kernel(a, b, out=out)
            ops.append(kernel(a, b))
        result = ops[0]
        if finish is not None:
            result = finish[0](result)
        if out is not None:
            np.copyto(out, result)
            return out
        return result

    run.writes = True
    run.tree = lambda leaves: _tree(steps, finish, leaves)
    return run


def _apply1(f, node):
    return lambda env: f(node(env))


def _apply2(kernel, a, b):
    return lambda env: kernel(a(env), b(env))


def _tree(steps, finish, leaves):
    """The contraction as nested closures over ``leaves`` (one callable per operand, e.g. a
    lookup in an environment): the operand list of ``compile_contraction`` is resolved now,
    so a call is one closure per step and nothing else."""
    nodes = list(leaves)
    for kind, where, fns in steps:
        if kind == "one":
            nodes.append(_apply1(fns[0], nodes.pop(where)))
            continue
        k1, k2 = where
        a, b = nodes.pop(k1), nodes.pop(k2)
        op1, op2, kernel, _ = fns
        if op1 is not None:
            a = _apply1(op1[0], a)
        if op2 is not None:
            b = _apply1(op2[0], b)
        nodes.append(_apply2(kernel, a, b))
    result, = nodes
    return result if finish is None else _apply1(finish[0], result)


def contraction_source(subs: str, shapes: list, path, operands: list) -> str:
    """The numpy expression computing ``subs`` over the operand expressions, following the
    same steps as ``compile_contraction``."""
    steps, finish = _plan(subs, shapes, path)
    if steps[0][0] == "single":
        return steps[0][2](*operands)
    ops = list(operands)
    for kind, where, fns in steps:
        if kind == "one":
            ops.append(fns[1].format(ops.pop(where)))
            continue
        k1, k2 = where
        a, b = ops.pop(k1), ops.pop(k2)
        op1, op2, _, source = fns
        if op1 is not None:
            a = op1[1].format(a)
        if op2 is not None:
            b = op2[1].format(b)
        ops.append(source(a, b))
    return finish[1].format(ops[0]) if finish is not None else ops[0]


# --- weighted Gram matrices: half the work of a matmul ------------------------------------

GRAM_MIN_COLUMNS = 8     # below these a symmetric product saves less than it costs to set up
GRAM_MIN_SUMMED = 16     # (an outer product x_p x_q, with nothing summed, is never one)
GRAM_MIN_WORK = 1 << 18  # multiply-adds of the gemm it replaces (≈ 5 µs on one core)


def gram(r, w=None):
    """``Σ_c r[c, f] r[c, g] w[c]`` for a matrix r and a column of weights w (None: ones).

    With weights of one sign, ``y = √|w|·r`` and ``±yᵀy``: numpy hands ``y.T @ y`` to BLAS
    ``syrk`` (half the multiplications of ``gemm``, an exactly symmetric result). Weights of
    mixed sign (or not floating point) take one ``gemm``.
    """
    if w is None:
        return r.T @ r
    if w.dtype.kind == "f":
        if w.min() >= 0.0:
            y = np.sqrt(w) * r
            return y.T @ y
        if w.max() <= 0.0:
            y = np.sqrt(-w) * r
            g = y.T @ y
            np.negative(g, out=g)
            return g
    return r.T @ (w * r)


# the helper as exported code defines it (the same function, under a private name)
GRAM_HELPER = inspect.getsource(gram).replace("def gram(", "def _gram(", 1)


def _gram_spec(subs: str, shapes: list, refs: tuple):
    """Where ``subs`` is ``Σ_C R[C,F] R[C,F'] w[C]``: which operands play R and w, and how."""
    ins, out = subs.split("->")
    parts = ins.split(",")
    pair = next(((a, b) for a in range(len(parts)) for b in range(a + 1, len(parts))
                 if refs[a] == refs[b] and len(parts[a]) == len(parts[b])), None)
    if pair is None:
        return None
    a, b = pair
    sa, sb = parts[a], parts[b]
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb):
        return None
    shared = [k for k in range(len(sa)) if sa[k] == sb[k]]
    free = [k for k in range(len(sa)) if sa[k] != sb[k]]
    f1, f2 = "".join(sa[k] for k in free), "".join(sb[k] for k in free)
    summed = "".join(sa[k] for k in shared)
    weights = [k for k in range(len(parts)) if k not in pair]
    if (not free or set(f1) & set(f2) or set(summed) & set(out)
            or sorted(out) != sorted(f1 + f2)
            or any(not set(parts[k]) <= set(summed) or len(set(parts[k])) != len(parts[k])
                   for k in weights)
            or set(f1 + f2) & set(summed)):
        return None
    shape = tuple(shapes[a])
    n_summed = math.prod(shape[k] for k in shared)
    n_free = math.prod(shape[k] for k in free)
    if (n_free < GRAM_MIN_COLUMNS or n_summed < GRAM_MIN_SUMMED
            or n_summed * n_free * n_free < GRAM_MIN_WORK):
        return None
    free_shape = tuple(shape[k] for k in free)
    result = f1 + f2
    return {
        "r": a,
        "r_view": _view(tuple(shared + free), (n_summed, n_free), shape),
        "weights": [(k, _aligned(parts[k], shapes[k], summed)) for k in weights],
        "covered": any(set(parts[k]) == set(summed) for k in weights),
        "summed_shape": tuple(shape[k] for k in shared), "column": (n_summed, 1),
        "square": free_shape + free_shape,
        "perm_out": tuple(result.index(c) for c in out),
    }


def _aligned(sub: str, shape, target: str):
    """The op viewing an operand over ``sub`` as broadcastable along ``target``."""
    perm = tuple(sorted(range(len(sub)), key=lambda k: target.index(sub[k])))
    size = dict(zip(sub, shape))
    full = tuple(size.get(c, 1) for c in target)
    return _view(perm, full, shape)


def _gram_back(spec):
    """The (n_free × n_free) Gram matrix in the output's axes: (callable, template)."""
    square, perm_out = spec["square"], spec["perm_out"]
    if len(square) == 2:
        return _view(perm_out, tuple(square[k] for k in perm_out), square)
    return (lambda g: g.reshape(square).transpose(perm_out),
            "{}.reshape(%r).transpose(%r)" % (square, perm_out))


def compile_gram(subs: str, shapes: list, refs: tuple, coeff: float):
    """``coeff · Σ_C R[C,F] R[C,F'] w[C]`` (a Hessian's ``Xᵀ diag(w) X``) through ``gram``
    (one symmetric rank-k update), or None when ``subs`` is not of that form or too small to
    gain. The two R operands must be the same array (``refs``) with the summed indices C at
    the same axes and the free indices F, F' (the whole output) at the others; every other
    operand is a weight over C. ``coeff`` goes into the weights (inside the square root).
    """
    spec = _gram_spec(subs, shapes, refs)
    if spec is None:
        return None
    a, (r_view, _), weights = spec["r"], spec["r_view"], spec["weights"]
    summed_shape, column, covered = spec["summed_shape"], spec["column"], spec["covered"]
    back = _gram_back(spec)[0]
    coeff = float(coeff)

    def run(*operands):
        r = r_view(operands[a])
        if not weights:
            g = gram(r)
            if coeff != 1.0:
                g *= coeff
            return back(g)
        w = None
        for k, (align, _) in weights:
            w = align(operands[k]) if w is None else w * align(operands[k])
        if coeff != 1.0:
            w = w * coeff
        w = w.reshape(column) if covered else np.broadcast_to(w, summed_shape).reshape(column)
        return back(gram(r, w))

    return run


def gram_source(subs: str, shapes: list, refs: tuple, coeff: float, operands: list):
    """The expression ``compile_gram`` evaluates, over operand expressions (it calls the
    ``_gram`` helper, ``GRAM_HELPER``), or None where the Gram kernel does not apply."""
    spec = _gram_spec(subs, shapes, refs)
    if spec is None:
        return None
    r = spec["r_view"][1].format(operands[spec["r"]])
    back = _gram_back(spec)[1]
    coeff = float(coeff)
    if not spec["weights"]:
        value = f"_gram({r})"
        return back.format(value if coeff == 1.0 else f"({coeff!r} * {value})")
    w = " * ".join(t.format(operands[k]) for k, (_, t) in spec["weights"])
    if coeff != 1.0:
        w = f"{w} * {coeff!r}"
    if spec["covered"]:
        w = f"({w}).reshape({spec['column']!r})"
    else:
        w = f"np.broadcast_to({w}, {spec['summed_shape']!r}).reshape({spec['column']!r})"
    return back.format(f"_gram({r}, {w})")
