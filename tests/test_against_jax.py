"""einderiv's Jacobians and Hessians against jax.jacobian / jax.hessian (float64).

Each formula comes with a reference function written by hand with jax.numpy (Matrix
Cookbook identities, losses, small networks, attention, contractions).  For every formula
einderiv's Jacobian with respect to one or two inputs is compared in numerator,
denominator and an explicit layout; for scalar outputs the Hessian (and, with two inputs,
the mixed second derivative) is compared with jax too.
"""

import os
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import einderiv as ed  # noqa: E402
from reference import (  # noqa: E402
    assert_close,
    evaluate,
    fresh_letters,
    permute_layout,
    random_inputs,
)

RTOL = 1e-9
ATOL_REL = 1e-11

I, J, K = 3, 4, 2


class Case:
    def __init__(self, id, src, out, shapes, fn, wrt, positive=(), unit=()):
        self.id = id
        self.src = src
        self.out = out                  # index letters of the output, in LHS order
        self.shapes = shapes
        self.fn = fn                    # jax reference: fn(**arrays) -> output
        self.wrt = wrt                  # one or two input names
        self.positive = positive
        self.unit = unit

    def arrays(self):
        seed = sum(map(ord, self.id))
        return random_inputs(self.shapes, seed=seed, positive=self.positive, unit=self.unit)


def sig(x):
    return jax.nn.sigmoid(x)


def softplus(x):
    return jax.nn.softplus(x)


CASES = [
    # -- linear and quadratic forms, traces (Matrix Cookbook)
    Case("linear-form", "L = a_i x_i", "", {"a": (I,), "x": (I,)},
         lambda a, x: a @ x, ["x", "a"]),
    Case("quadratic-form", "L = x_i A_ij x_j", "", {"x": (I,), "A": (I, I)},
         lambda x, A: x @ A @ x, ["x", "A"]),
    Case("quadratic-plus-linear", "L = x_i A_ij x_j + b_i x_i + c", "",
         {"x": (I,), "A": (I, I), "b": (I,), "c": ()},
         lambda x, A, b, c: x @ A @ x + b @ x + c, ["x", "b"]),
    Case("tr-AX", "L = A_ij X_ji", "", {"A": (I, J), "X": (J, I)},
         lambda A, X: jnp.trace(A @ X), ["X", "A"]),
    Case("tr-AXB", "L = A_ij X_jk B_ki", "", {"A": (I, J), "X": (J, K), "B": (K, I)},
         lambda A, X, B: jnp.trace(A @ X @ B), ["X", "B"]),
    Case("tr-XtAX", "L = X_ji A_jk X_ki", "", {"X": (J, I), "A": (J, J)},
         lambda X, A: jnp.trace(X.T @ A @ X), ["X", "A"]),
    Case("tr-XX", "L = X_ij X_ji", "", {"X": (I, I)},
         lambda X: jnp.trace(X @ X), ["X"]),
    Case("tr-AXBXt", "L = A_ij X_jk B_kl X_il", "", {"A": (I, I), "X": (I, K), "B": (K, K)},
         lambda A, X, B: jnp.trace(A @ X @ B @ X.T), ["X", "B"]),
    Case("frobenius-squared", "L = X_ij X_ij", "", {"X": (I, J)},
         lambda X: jnp.sum(X * X), ["X"]),
    Case("frobenius-norm", "L = sqrt(sum_ij(X_ij X_ij))", "", {"X": (I, J)},
         lambda X: jnp.sqrt(jnp.sum(X * X)), ["X"]),
    Case("aXb", "L = a_i X_ij b_j", "", {"a": (I,), "X": (I, J), "b": (J,)},
         lambda a, X, b: a @ X @ b, ["X", "a"]),
    Case("mahalanobis", "L = (x_i - m_i) P_ij (x_j - m_j)", "",
         {"x": (I,), "m": (I,), "P": (I, I)},
         lambda x, m, P: (x - m) @ P @ (x - m), ["x", "P"]),
    Case("trace", "t = A_ii", "", {"A": (I, I)}, lambda A: jnp.trace(A), ["A"]),
    Case("trace-cube", "t = A_ij A_jk A_ki", "", {"A": (I, I)},
         lambda A: jnp.trace(A @ A @ A), ["A"]),
    Case("diagonal", "d_i = A_ii", "i", {"A": (I, I)}, lambda A: jnp.diag(A), ["A"]),
    Case("diag-times-matrix", "C_ij = A_ii B_ij", "ij", {"A": (I, I), "B": (I, J)},
         lambda A, B: jnp.diag(A)[:, None] * B, ["A", "B"]),
    # -- regression losses
    Case("least-squares", "L = (sum_j(A_ij x_j) - y_i)^2", "",
         {"A": (I, J), "x": (J,), "y": (I,)},
         lambda A, x, y: jnp.sum((A @ x - y) ** 2), ["x", "A"]),
    Case("least-squares-trap", "L = (A_ij x_j - y_i)^2", "",
         {"A": (I, J), "x": (J,), "y": (I,)},
         lambda A, x, y: jnp.sum((A * x[None, :] - y[:, None]) ** 2), ["x", "y"]),
    Case("least-squares-half", "L = 0.5 (sum_j(A_ij x_j) - y_i)^2", "",
         {"A": (I, J), "x": (J,), "y": (I,)},
         lambda A, x, y: 0.5 * jnp.sum((A @ x - y) ** 2), ["x"]),
    Case("ridge", "L = (sum_j(A_ij x_j) - y_i)^2 + lam x_k x_k", "",
         {"A": (I, J), "x": (J,), "y": (I,), "lam": ()},
         lambda A, x, y, lam: jnp.sum((A @ x - y) ** 2) + lam * x @ x, ["x", "lam"],
         positive=("lam",)),
    Case("half-squared-error", "L = (x_i - y_i)^2 / 2", "", {"x": (I,), "y": (I,)},
         lambda x, y: jnp.sum((x - y) ** 2) / 2, ["x"]),
    # -- classification losses
    Case("logistic-softplus", "L = softplus(-y_i sum_j(X_ij w_j))", "",
         {"X": (I, J), "w": (J,), "y": (I,)},
         lambda X, w, y: jnp.sum(softplus(-y * (X @ w))), ["w", "X"]),
    Case("logistic-sigmoid-log",
         "L = -(y_i log(sigmoid(sum_j(X_ij w_j))) + (1 - y_i) log(1 - sigmoid(sum_j(X_ij w_j))))",
         "", {"X": (I, J), "w": (J,), "y": (I,)},
         lambda X, w, y: -jnp.sum(y * jnp.log(sig(X @ w)) + (1 - y) * jnp.log(1 - sig(X @ w))),
         ["w", "X"], unit=("y",)),
    Case("hinge-softplus", "L = softplus(1 - y_i sum_j(X_ij w_j))", "",
         {"X": (I, J), "w": (J,), "y": (I,)},
         lambda X, w, y: jnp.sum(softplus(1 - y * (X @ w))), ["w"]),
    Case("softmax-cross-entropy", "L = -y_i log(exp(z_i) / sum_j(exp(z_j)))", "",
         {"y": (J,), "z": (J,)},
         lambda y, z: -jnp.sum(y * jnp.log(jnp.exp(z) / jnp.sum(jnp.exp(z)))), ["z", "y"],
         unit=("y",)),
    Case("cross-entropy", "L = -y_i log(p_i)", "", {"y": (I,), "p": (I,)},
         lambda y, p: -jnp.sum(y * jnp.log(p)), ["p", "y"], positive=("p",)),
    Case("log-sum-exp", "L = log(sum_i(exp(x_i)))", "", {"x": (J,)},
         lambda x: jnp.log(jnp.sum(jnp.exp(x))), ["x"]),
    Case("row-log-sum-exp", "L = log(sum_j(exp(S_ij)))", "", {"S": (I, J)},
         lambda S: jnp.sum(jnp.log(jnp.sum(jnp.exp(S), axis=1))), ["S"]),
    Case("softmax", "p_i = exp(x_i) / sum_j(exp(x_j))", "i", {"x": (J,)},
         lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x)), ["x"]),
    Case("sigmoid-sum-outside", "L = sigmoid(a_i x_i)", "", {"a": (I,), "x": (I,)},
         lambda a, x: jnp.sum(sig(a * x)), ["x", "a"]),
    Case("sigmoid-of-dot", "L = sigmoid(sum_i(a_i x_i))", "", {"a": (I,), "x": (I,)},
         lambda a, x: sig(a @ x), ["x", "a"]),
    # -- networks (programs)
    Case("mlp-vector-output",
         "h_i = tanh(sum_j(W1_ij x_j) + b1_i); y_k = sum_i(W2_ki h_i) + b2_k", "k",
         {"W1": (I, J), "x": (J,), "b1": (I,), "W2": (K, I), "b2": (K,)},
         lambda W1, x, b1, W2, b2: W2 @ jnp.tanh(W1 @ x + b1) + b2, ["W1", "x"]),
    Case("mlp-loss",
         "h_i = tanh(sum_j(W1_ij x_j) + b1_i)\no_k = W2_ki h_i + b2_k\nL = (o_k - t_k)^2", "",
         {"W1": (I, J), "x": (J,), "b1": (I,), "W2": (K, I), "b2": (K,), "t": (K,)},
         lambda W1, x, b1, W2, b2, t: jnp.sum((W2 @ jnp.tanh(W1 @ x + b1) + b2 - t) ** 2),
         ["W1", "W2"]),
    Case("mlp-relu-softplus", "h_i = relu(sum_j(W_ij x_j)); L = softplus(v_i h_i)", "",
         {"W": (I, J), "x": (J,), "v": (I,)},
         lambda W, x, v: jnp.sum(softplus(v * jax.nn.relu(W @ x))), ["W", "v"]),
    Case("mlp-sigmoid-xent",
         "z_i = W_ij x_j + b_i; h_i = sigmoid(z_i); L = -y_i log(h_i) - (1 - y_i) log(1 - h_i)",
         "", {"W": (I, J), "x": (J,), "b": (I,), "y": (I,)},
         lambda W, x, b, y: -jnp.sum(y * jnp.log(sig(W @ x + b)))
         - jnp.sum((1 - y) * jnp.log(1 - sig(W @ x + b))), ["W", "b"], unit=("y",)),
    Case("variance-program", "m = sum_i(x_i) / 4; v_i = x_i - m; L = v_i v_i", "", {"x": (J,)},
         lambda x: jnp.sum((x - jnp.mean(x)) ** 2), ["x"]),
    Case("scalar-intermediate-exponent", "s = x_i x_i; y_i = x_i^s", "i", {"x": (I,)},
         lambda x: x ** (x @ x), ["x"], positive=("x",)),
    Case("batched-matmul-loss", "C_bik = A_bij B_bjk; L = C_bik C_bik", "",
         {"A": (K, K, I), "B": (K, I, K)},
         lambda A, B: jnp.sum(jnp.einsum("bij,bjk->bik", A, B) ** 2), ["A", "B"]),
    # -- attention
    Case("attention-loss",
         "S_ij = Q_id K_jd; P_ij = exp(S_ij) / sum_k(exp(S_ik)); L = P_ij V_ij", "",
         {"Q": (I, K), "K": (J, K), "V": (I, J)},
         lambda Q, K, V: jnp.sum(jax.nn.softmax(Q @ K.T, axis=1) * V), ["Q", "K"]),

    Case("attention-scores-softmax",
         "S_ij = Q_id K_jd; P_ij = exp(S_ij) / sum_k(exp(S_ik))", "ij",
         {"Q": (I, K), "K": (J, K)},
         lambda Q, K: jax.nn.softmax(Q @ K.T, axis=1), ["Q", "K"]),
    Case("attention-output",
         "S_ij = 0.5 Q_id K_jd; P_ij = exp(S_ij) / sum_k(exp(S_ik)); O_ie = P_ij V_je", "ie",
         {"Q": (I, K), "K": (J, K), "V": (J, K)},
         lambda Q, K, V: jax.nn.softmax(0.5 * Q @ K.T, axis=1) @ V, ["Q", "V"]),
    # -- contractions
    Case("matvec", "y_i = A_ij x_j", "i", {"A": (I, J), "x": (J,)},
         lambda A, x: A @ x, ["A", "x"]),
    Case("affine-tanh", "y_i = tanh(sum_j(W_ij x_j) + b_i)", "i",
         {"W": (I, J), "x": (J,), "b": (I,)},
         lambda W, x, b: jnp.tanh(W @ x + b), ["W", "b"]),
    Case("tanh-sum-outside", "y_i = tanh(W_ij x_j + b_i)", "i",
         {"W": (I, J), "x": (J,), "b": (I,)},
         lambda W, x, b: jnp.sum(jnp.tanh(W * x[None, :] + b[:, None]), axis=1), ["W", "b"]),
    Case("matmul", "C_ik = A_ij B_jk", "ik", {"A": (I, J), "B": (J, K)},
         lambda A, B: A @ B, ["A", "B"]),
    Case("triple-product", "D_il = A_ij B_jk C_kl", "il",
         {"A": (I, J), "B": (J, K), "C": (K, I)},
         lambda A, B, C: A @ B @ C, ["B", "C"]),
    Case("batched-matmul", "C_bik = A_bij B_bjk", "bik",
         {"A": (K, I, J), "B": (K, J, K)},
         lambda A, B: jnp.einsum("bij,bjk->bik", A, B), ["A", "B"]),
    Case("gram-XtX", "G_ij = X_ki X_kj", "ij", {"X": (J, I)},
         lambda X: X.T @ X, ["X"]),
    Case("AAt", "C_ij = A_ik A_jk", "ij", {"A": (I, J)},
         lambda A: A @ A.T, ["A"]),
    Case("3tensor-two-matrices", "C_il = T_ijk A_jl B_kl", "il",
         {"T": (I, J, K), "A": (J, I), "B": (K, I)},
         lambda T, A, B: jnp.einsum("ijk,jl,kl->il", T, A, B), ["T", "A"]),
    Case("3tensor-bilinear", "v_k = T_ijk x_i y_j", "k",
         {"T": (I, J, K), "x": (I,), "y": (J,)},
         lambda T, x, y: jnp.einsum("ijk,i,j->k", T, x, y), ["T", "x"]),
    Case("cubic-form", "L = T_ijk x_i x_j x_k", "", {"T": (I, I, I), "x": (I,)},
         lambda T, x: jnp.einsum("ijk,i,j,k->", T, x, x, x), ["x", "T"]),
    Case("outer", "C_ij = a_i b_j", "ij", {"a": (I,), "b": (J,)},
         lambda a, b: jnp.outer(a, b), ["a", "b"]),
    Case("hadamard", "C_ij = A_ij B_ij", "ij", {"A": (I, J), "B": (I, J)},
         lambda A, B: A * B, ["A"]),
    Case("broadcast-row", "C_ij = A_ij + b_i", "ij", {"A": (I, J), "b": (I,)},
         lambda A, b: A + b[:, None], ["A", "b"]),
    Case("broadcast-outer-sum", "C_ij = a_i + b_j", "ij", {"a": (I,), "b": (J,)},
         lambda a, b: a[:, None] + b[None, :], ["a", "b"]),
    Case("delta-plus-matrix", "y_i = delta_ij x_j + A_ij x_j", "i", {"x": (I,), "A": (I, I)},
         lambda x, A: x + A @ x, ["x", "A"]),
    Case("column-sum-scaled", "m_j = X_ij / 4", "j", {"X": (J, I)},
         lambda X: jnp.sum(X, axis=0) / 4, ["X"]),
    Case("scalar-times-vector", "y_i = s x_i", "i", {"s": (), "x": (I,)},
         lambda s, x: s * x, ["s", "x"]),
    # -- division, powers, roots, elementwise functions
    Case("division", "y_i = x_i / z_i", "i", {"x": (I,), "z": (I,)},
         lambda x, z: x / z, ["x", "z"], positive=("z",)),
    Case("division-precedence", "y_i = x_i / z_i w_i", "i", {"x": (I,), "z": (I,), "w": (I,)},
         lambda x, z, w: x / z * w, ["z", "w"], positive=("z",)),
    Case("normalize-by-sum", "p_i = x_i / sum_j(x_j)", "i", {"x": (J,)},
         lambda x: x / jnp.sum(x), ["x"], positive=("x",)),
    Case("cube", "y_i = x_i^3", "i", {"x": (I,)}, lambda x: x ** 3, ["x"]),
    Case("power-1.5", "y_i = x_i^1.5", "i", {"x": (I,)}, lambda x: x ** 1.5, ["x"],
         positive=("x",)),
    Case("power-minus-2", "y_i = x_i^(-2)", "i", {"x": (I,)}, lambda x: x ** -2.0, ["x"],
         positive=("x",)),
    Case("power-tensor-exponent", "y_i = x_i^a", "i", {"x": (I,), "a": ()},
         lambda x, a: x ** a, ["x", "a"], positive=("x",)),
    Case("sum-squares-squared", "L = sum_i(x_i x_i)^2", "", {"x": (I,)},
         lambda x: jnp.sum(x * x) ** 2, ["x"]),
    Case("sqrt-norm", "n = sqrt(sum_i(x_i x_i))", "", {"x": (J,)},
         lambda x: jnp.sqrt(jnp.sum(x * x)), ["x"]),
    Case("unit-vector", "u_i = x_i / sqrt(sum_j(x_j x_j))", "i", {"x": (J,)},
         lambda x: x / jnp.sqrt(jnp.sum(x * x)), ["x"]),
    Case("gaussian", "L = exp(-x_i x_i)", "", {"x": (I,)},
         lambda x: jnp.sum(jnp.exp(-x * x)), ["x"]),
    Case("log1p-square", "L = log(x_i x_i + 1)", "", {"x": (I,)},
         lambda x: jnp.sum(jnp.log(x * x + 1)), ["x"]),
    Case("trig-mix", "y_i = sin(x_i) cos(x_i) + tan(x_i) / 2", "i", {"x": (I,)},
         lambda x: jnp.sin(x) * jnp.cos(x) + jnp.tan(x) / 2, ["x"], unit=("x",)),
    Case("hyperbolic-mix", "y_i = sinh(x_i) + cosh(x_i) tanh(x_i)", "i", {"x": (I,)},
         lambda x: jnp.sinh(x) + jnp.cosh(x) * jnp.tanh(x), ["x"]),
    Case("abs-log", "L = abs(x_i) x_i z_i + log(z_i) z_i", "", {"x": (I,), "z": (I,)},
         lambda x, z: jnp.sum(jnp.abs(x) * x * z) + jnp.sum(jnp.log(z) * z), ["x", "z"],
         positive=("z",)),
    Case("sqrt-exp", "y_i = sqrt(x_i) exp(-x_i)", "i", {"x": (I,)},
         lambda x: jnp.sqrt(x) * jnp.exp(-x), ["x"], positive=("x",)),
]

assert len(CASES) >= 45
assert len({c.id for c in CASES}) == len(CASES)
CASE_BY_ID = {c.id: c for c in CASES}

# formulas that are linear in their first wrt input: the true Hessian is exactly zero, and
# the test then checks that einderiv's Hessian is zero (of the right shape) too
ZERO_HESSIAN = {"linear-form", "tr-AX", "tr-AXB", "aXb", "trace"}


def _is_scalar(case):
    return case.out == ""


def _jobs():
    jobs = []
    for c in CASES:
        for w in c.wrt:
            for layout in ("numerator", "denominator", "explicit"):
                jobs.append((c.id, "jacobian", (w,), layout))
        if _is_scalar(c):
            w = c.wrt[0]
            jobs.append((c.id, "hessian", (w, w), "numerator"))
            jobs.append((c.id, "hessian", (w, w), "explicit"))
            if len(c.wrt) == 2:
                jobs.append((c.id, "mixed", tuple(c.wrt), "numerator"))
    return jobs


JOBS = _jobs()
_JAX_CACHE = {}


def jax_reference(case, wrt_names):
    """jax's derivative of case.fn wrt the names in order: out axes, then each wrt's axes."""
    key = (case.id, wrt_names)
    if key not in _JAX_CACHE:
        arrays = case.arrays()
        jarr = {k: jnp.asarray(v) for k, v in arrays.items()}
        argnames = list(wrt_names)
        uniq = list(dict.fromkeys(argnames))

        def f(*vals):
            kw = dict(jarr)
            kw.update(zip(uniq, vals))
            return case.fn(**kw)

        pos = [uniq.index(n) for n in argnames]
        g = f
        for p in pos:  # nest: the first wrt's axes come first after the output axes
            g = jax.jacobian(g, argnums=p)
        # jit: one compilation per reference is faster than op-by-op dispatch here
        ref = np.asarray(jax.jit(g)(*[jarr[n] for n in uniq]), dtype=np.float64)
        # the forward value too, to check the formula means what the reference says
        fwd = np.asarray(f(*[jarr[n] for n in uniq]), dtype=np.float64)
        _JAX_CACHE[key] = (arrays, fwd, ref)
    return _JAX_CACHE[key]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_value(case):
    arrays, fwd, _ = jax_reference(case, (case.wrt[0],))
    got = evaluate(ed.parse(case.src), arrays, fwd.shape)
    assert_close(got, fwd, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(fwd).max()), nonzero=False,
                 what=f"value of {case.src!r}")


@pytest.mark.parametrize("job", JOBS, ids=["-".join([j[0], j[1], *j[2], j[3]]) for j in JOBS])
def test_against_jax(job):
    case_id, kind, wrt_names, layout = job
    case = CASE_BY_ID[case_id]
    arrays, _, ref_num = jax_reference(case, wrt_names)

    # name the wrt indices with letters the formula does not use
    ranks = [len(case.shapes[n]) for n in wrt_names]
    letters = fresh_letters(case.src, sum(ranks), avoid=case.out)
    groups, pos = [], 0
    for r in ranks:
        groups.append("".join(letters[pos:pos + r]))
        pos += r
    wrt_specs = [n + ("_" + g if g else "") for n, g in zip(wrt_names, groups)]
    wrt_arg = wrt_specs[0] if kind == "jacobian" else wrt_specs

    if layout == "explicit":
        layout_arg = "".join(reversed(list(case.out) + [c for g in groups for c in g]))
    else:
        layout_arg = layout
    ref = permute_layout(ref_num, case.out, groups, layout_arg)

    d = ed.diff(case.src, wrt=wrt_arg, layout=layout_arg)
    want = tuple(layout_arg) if layout == "explicit" else tuple(
        (list(case.out) + list("".join(groups))) if layout == "numerator"
        else (list("".join(groups)) + list(case.out)))
    assert tuple(d.indices) == want, (tuple(d.indices), want)
    got = evaluate(d, arrays, ref.shape)
    scale = float(np.abs(ref).max())
    nonzero = not (kind == "hessian" and case_id in ZERO_HESSIAN)
    assert_close(got, ref, rtol=RTOL, atol=ATOL_REL * max(1.0, scale), nonzero=nonzero,
                 what=f"{kind} of {case.src!r} wrt {wrt_specs} layout={layout_arg!r}")


def test_there_are_enough_formulas():
    assert len(CASES) >= 45
    assert len(JOBS) >= 3 * len(CASES)
