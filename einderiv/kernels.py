"""Fast numpy contractions for compiled plans: opt_einsum chooses the path once, and each
pairwise step runs as transpose → reshape → matmul with every permutation and shape fixed in
advance, so a call costs little more than the BLAS call itself.
"""

from __future__ import annotations

import math

import numpy as np
import opt_einsum as oe

__all__ = ["compile_contraction"]


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
        # no sum: a broadcast product, not a matmul with an inner dimension of 1
        def run(a, b):
            a3 = a.transpose(perm_a).reshape((nb, na, 1))
            b3 = b.transpose(perm_b).reshape((nb, 1, nbb))
            c = np.multiply(a3, b3).reshape(result_shape)
            return c if identity_out else c.transpose(perm_out)
        return run

    if nb == 1:
        # one matrix product: 2-D views keep transposes as BLAS flags instead of copies
        shape2_a, shape2_b = (na, nc), (nc, nbb)

        def run(a, b):
            c = np.matmul(a.transpose(perm_a).reshape(shape2_a),
                          b.transpose(perm_b).reshape(shape2_b)).reshape(result_shape)
            return c if identity_out else c.transpose(perm_out)
        return run

    def run(a, b):
        a3 = a.transpose(perm_a).reshape(shape3_a)
        b3 = b.transpose(perm_b).reshape(shape3_b)
        c = np.matmul(a3, b3).reshape(result_shape)
        return c if identity_out else c.transpose(perm_out)

    return run


def compile_contraction(subs: str, shapes: list, path):
    """A numpy callable for ``subs`` along ``path`` (from ``opt_einsum.contract_path``)."""
    ins, out = subs.split("->")
    parts = ins.split(",")
    if len(parts) == 1:
        expr = subs
        return lambda a: np.einsum(expr, a)
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

    def run(*operands):
        ops = list(operands)
        for kind, where, fns in steps:
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
                ops.append(mm(a, b))
        result = ops[0]
        return finish(result) if finish is not None else result

    return run


def _check(subs, shapes, seed=0):  # pragma: no cover - a debugging aid
    rng = np.random.default_rng(seed)
    ops = [rng.normal(size=s) for s in shapes]
    path, _ = oe.contract_path(subs, *shapes, shapes=True)
    fn = compile_contraction(subs, shapes, path)
    return np.abs(fn(*ops) - np.einsum(subs, *ops)).max()
