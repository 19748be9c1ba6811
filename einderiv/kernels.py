"""Fast numpy contractions for compiled plans: opt_einsum chooses the path once, and each
pairwise step runs as transpose → reshape → matmul with every permutation and shape fixed in
advance, so a call costs little more than the BLAS call itself.
"""

from __future__ import annotations

import math

import numpy as np
import opt_einsum as oe

__all__ = ["compile_contraction", "compile_gram"]

OUTER_BY_BLAS = 4096     # outer products with at least this many entries go through np.dot


def _prepare(sub: str, out_keep: set, shape: tuple):
    """A callable that takes one operand to distinct indices, summing those nobody else needs.

    Returns (function or None, new subscript, new shape).
    """
    seen = []
    for c in sub:
        if c not in seen:
            seen.append(c)
    keep = [c for c in seen if c in out_keep]
    size = {c: n for c, n in zip(sub, shape)}
    if len(seen) == len(sub) and keep == list(sub):
        return None, sub, tuple(shape)
    expr = f"{sub}->{''.join(keep)}"
    return (lambda a: np.einsum(expr, a)), "".join(keep), tuple(size[c] for c in keep)


def _pair(sa: str, sb: str, so: str, shape_a, shape_b):
    """``einsum(sa,sb->so)`` as one matmul; the operands have distinct indices."""
    first_free = next((c for c in so if not (c in sa and c in sb)), None)
    if first_free is not None and first_free not in sa:
        # the output starts with b's indices: compute b·a so no transpose is left over
        sa, sb, shape_a, shape_b = sb, sa, shape_b, shape_a
        inner = _pair(sa, sb, so, shape_a, shape_b)
        if getattr(inner, "writes", False):
            def swapped(a, b, out=None):
                return inner(b, a, out=out)
            swapped.writes = True
            return swapped
        return lambda a, b: inner(b, a)
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
    shape3_a = (nb, na, nc)
    shape3_b = (nb, nc, nbb)
    result_order = batch + free_a + free_b
    result_shape = tuple(size[c] for c in result_order)
    perm_out = tuple(result_order.index(c) for c in so)
    identity_out = perm_out == tuple(range(len(perm_out)))

    if not contracted:
        # no sum: a broadcast product, not a matmul with an inner dimension of 1; size-1 axes
        # are inserted (never a copy) so that it can also write straight into ``out``
        shape_a_b = tuple(size[c] for c in batch + free_a) + (1,) * len(free_b)
        shape_b_b = (tuple(size[c] for c in batch) + (1,) * len(free_a)
                     + tuple(size[c] for c in free_b))
        back = tuple(so.index(c) for c in result_order)
        # a large outer product is faster as BLAS's rank-1 product (np.dot with an inner
        # dimension of 1: 21 µs against 34 µs for 300×300) than as a broadcast multiply
        outer = not batch and na * nbb >= OUTER_BY_BLAS

        view_a = _reshaped(perm_a, shape_a_b, shape_a)
        view_b = _reshaped(perm_b, shape_b_b, shape_b)

        def run(a, b, out=None):
            if out is None and outer:
                c = np.dot(a.transpose(perm_a).reshape(na, 1),
                           b.transpose(perm_b).reshape(1, nbb)).reshape(result_shape)
                return c if identity_out else c.transpose(perm_out)
            a_b = view_a(a)
            b_b = view_b(b)
            if out is not None:
                np.multiply(a_b, b_b, out=out.transpose(back))
                return out
            c = np.multiply(a_b, b_b)
            return c if identity_out else c.transpose(perm_out)
        run.writes = True
        return run

    if nb == 1:
        # one matrix product: 2-D views keep transposes as BLAS flags instead of copies; a
        # vector or a matrix already in place goes in as it is (no reshape, no transpose)
        vec_a = len(sa) == 1 and not free_a
        vec_b = len(sb) == 1 and not free_b
        if vec_a and vec_b:
            vec_a = vec_b = False          # a dot product: keep a 0-d array, not a scalar
        prep_a = _matrix_view(perm_a, (na, nc), vec_a, shape_a)
        prep_b = _matrix_view(perm_b, (nc, nbb), vec_b, shape_b)
        product_shape = (() if vec_a else (na,)) + (() if vec_b else (nbb,))
        post = _result_view(product_shape, result_shape, perm_out, identity_out)

        def run(a, b):
            return post(np.matmul(prep_a(a), prep_b(b)))
        return run

    def run(a, b):
        a3 = a.transpose(perm_a).reshape(shape3_a)
        b3 = b.transpose(perm_b).reshape(shape3_b)
        c = np.matmul(a3, b3).reshape(result_shape)
        return c if identity_out else c.transpose(perm_out)

    return run


def _same(a):
    return a


def _transposed(a):
    return a.T


def _reshaped(perm, new_shape, shape):
    """``a.transpose(perm).reshape(new_shape)``, or nothing where that changes nothing."""
    if perm == tuple(range(len(perm))):
        return _same if tuple(shape) == tuple(new_shape) else (lambda a: a.reshape(new_shape))
    return lambda a: a.transpose(perm).reshape(new_shape)


def _matrix_view(perm, shape2, vector, shape):
    """The operand (of ``shape``) as the 2-D matrix (or the vector) a matmul takes, in as few
    calls as can be."""
    if vector:
        return _same
    if perm == (1, 0) and (shape[1], shape[0]) == shape2:
        return _transposed
    if perm == tuple(range(len(perm))):
        if tuple(shape) == shape2:
            return _same
        return lambda a: a.reshape(shape2)
    return lambda a: a.transpose(perm).reshape(shape2)


def _result_view(product_shape, result_shape, perm_out, identity_out):
    """The matmul's product back in the pair's output axes."""
    if product_shape == result_shape:
        if identity_out:
            return _same
        if perm_out == (1, 0):
            return _transposed
        return lambda c: c.transpose(perm_out)
    if identity_out:
        return lambda c: c.reshape(result_shape)
    return lambda c: c.reshape(result_shape).transpose(perm_out)


def compile_contraction(subs: str, shapes: list, path):
    """A numpy callable for ``subs`` along ``path`` (from ``opt_einsum.contract_path``)."""
    ins, out = subs.split("->")
    parts = ins.split(",")
    if len(parts) == 1:
        expr = subs
        return lambda a: np.einsum(expr, a)
    if len(parts) == 2:
        f1, _, _ = _prepare(parts[0], set(parts[1] + out), shapes[0])
        f2, _, _ = _prepare(parts[1], set(parts[0] + out), shapes[1])
        if f1 is None and f2 is None:
            # one pair with nothing to prepare: the pair kernel is the whole contraction
            return _pair(parts[0], parts[1], out, tuple(shapes[0]), tuple(shapes[1]))
    # replay the path symbolically to fix every step now
    steps = []
    subs_list = list(parts)
    shapes_list = [tuple(s) for s in shapes]
    for pair in path:
        pair = tuple(sorted(pair, reverse=True))
        picked = [(subs_list.pop(k), shapes_list.pop(k), k) for k in pair]
        others = "".join(subs_list) + out
        if len(picked) == 1:
            (s, shp, k), = picked
            keep = set(others)
            fn, new_s, new_shape = _prepare(s, keep, shp)
            steps.append(("one", k, fn or (lambda a: a)))
            subs_list.append(new_s)
            shapes_list.append(new_shape)
            continue
        if len(picked) != 2:
            return None
        (s1, shp1, k1), (s2, shp2, k2) = picked
        keep1 = set(others) | set(s2)
        keep2 = set(others) | set(s1)
        f1, s1n, shp1n = _prepare(s1, keep1, shp1)
        f2, s2n, shp2n = _prepare(s2, keep2, shp2)
        result = "".join(c for c in dict.fromkeys(s1n + s2n) if c in set(others))
        mm = _pair(s1n, s2n, result, shp1n, shp2n)
        size = dict(zip(s1n, shp1n))
        size.update(zip(s2n, shp2n))
        steps.append(("two", (k1, k2), (f1, f2, mm)))
        subs_list.append(result)
        shapes_list.append(tuple(size[c] for c in result))
    final = subs_list[0]
    if len(subs_list) != 1:
        return None
    if final != out:
        if sorted(final) != sorted(out) or len(set(final)) != len(final):
            last = f"{final}->{out}"
            finish = lambda a: np.einsum(last, a)  # noqa: E731
        else:
            perm = tuple(final.index(c) for c in out)
            finish = lambda a: a.transpose(perm)  # noqa: E731
    else:
        finish = None

    last = len(steps) - 1
    direct = finish is None and bool(steps) and steps[-1][0] == "two" and getattr(
        steps[-1][2][2], "writes", False)

    def run(*operands, out=None):
        """The contraction; with ``out`` (axes in the output's order) it is written there."""
        ops = list(operands)
        for n, (kind, where, fns) in enumerate(steps):
            if kind == "one":
                ops.append(fns(ops.pop(where)))
            else:
                k1, k2 = where
                a = ops.pop(k1)
                b = ops.pop(k2)
                f1, f2, mm = fns
                if f1 is not None:
                    a = f1(a)
                if f2 is not None:
                    b = f2(b)
                if n == last and out is not None and direct:
                    return mm(a, b, out=out)
                ops.append(mm(a, b))
        result = ops[0]
        if finish is not None:
            result = finish(result)
        if out is not None:
            np.copyto(out, result)
            return out
        return result

    run.writes = True
    return run


def _check(subs, shapes, seed=0):  # pragma: no cover - a debugging aid
    rng = np.random.default_rng(seed)
    ops = [rng.normal(size=s) for s in shapes]
    path, _ = oe.contract_path(subs, *shapes, shapes=True)
    fn = compile_contraction(subs, shapes, path)
    return np.abs(fn(*ops) - np.einsum(subs, *ops)).max()


# --- weighted Gram matrices: half the work of a matmul ------------------------------------

GRAM_MIN_COLUMNS = 8     # below these a symmetric product saves less than it costs to set up
GRAM_MIN_SUMMED = 16     # (an outer product x_p x_q, with nothing summed, is never one)
GRAM_MIN_WORK = 1 << 18  # multiply-adds of the gemm it replaces (≈ 5 µs on one core)


def compile_gram(subs: str, shapes: list, refs: tuple, coeff: float):
    """``coeff · Σ_C R[C,F] R[C,F'] w[C]`` (a Hessian's ``Xᵀ diag(w) X``) as one symmetric
    rank-k update, or None when ``subs`` is not of that form.

    The two R operands must be the same array (``refs``) with the summed indices C at the
    same axes and the free indices F, F' (the whole output) at the others; every other
    operand is a weight over C. With ``s = √(coeff·w)``, the result is ``(s·R)ᵀ(s·R)``, which
    numpy hands to BLAS ``syrk`` (half the multiplications of ``gemm``, an exactly symmetric
    result). Weights of mixed sign fall back to one ``gemm`` at run time.
    """
    ins, out = subs.split("->")
    parts = ins.split(",")
    pair = None
    for a, b in ((a, b) for a in range(len(parts)) for b in range(a + 1, len(parts))):
        if refs[a] == refs[b] and len(parts[a]) == len(parts[b]):
            pair = (a, b)
            break
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
            or set(f1 + f2) & set(sa[k] for k in shared)):
        return None
    shape = shapes[a]
    n_summed = math.prod(shape[k] for k in shared)
    n_free = math.prod(shape[k] for k in free)
    if (n_free < GRAM_MIN_COLUMNS or n_summed < GRAM_MIN_SUMMED
            or n_summed * n_free * n_free < GRAM_MIN_WORK):
        return None
    to_2d = tuple(shared + free)
    free_shape = tuple(shape[k] for k in free)
    result = f1 + f2
    perm_out = tuple(result.index(c) for c in out)
    identity_out = perm_out == tuple(range(len(perm_out)))
    summed_shape = tuple(shape[k] for k in shared)
    weigh = [_aligned(parts[k], shapes[k], summed) for k in weights]
    coeff = float(coeff)

    def run(*operands):
        r = operands[a].transpose(to_2d).reshape(n_summed, n_free)
        if not weights:
            g = r.T @ r
            if coeff != 1.0:
                g *= coeff
        else:
            w = None
            for k, align in zip(weights, weigh):
                w = align(operands[k]) if w is None else w * align(operands[k])
            if coeff != 1.0:
                w = w * coeff
            w = np.broadcast_to(w, summed_shape).reshape(n_summed, 1)
            if w.dtype.kind != "f":
                g = r.T @ (w * r)
            elif w.min() >= 0.0:
                y = np.sqrt(w) * r
                g = y.T @ y
            elif w.max() <= 0.0:
                y = np.sqrt(-w) * r
                g = y.T @ y
                np.negative(g, out=g)
            else:
                g = r.T @ (w * r)
        g = g.reshape(free_shape + free_shape)
        return g if identity_out else g.transpose(perm_out)

    return run


def _aligned(sub: str, shape, target: str):
    """A function viewing an operand over ``sub`` as broadcastable along ``target``."""
    perm = tuple(sorted(range(len(sub)), key=lambda k: target.index(sub[k])))
    size = dict(zip(sub, shape))
    full = tuple(size.get(c, 1) for c in target)
    if perm == tuple(range(len(sub))):
        return lambda x: x.reshape(full)
    return lambda x: x.transpose(perm).reshape(full)
