"""The ten benchmark cases of issue 5.

Each case carries everything the harness needs, written independently of einderiv:

- the einderiv formula and ``wrt`` (numerator layout, so the result has JAX's axis order);
- a small and a medium size, and a generator of float64 inputs;
- ``f(ns, *args)``: the same function for JAX and torch (``ns`` supplies the few library
  functions that differ); the differentiated argument is always the first of ``args``;
- ``closed(**arrays)``: a hand-written numpy closed form of the derivative;
- ``sympy_scalar(dims)``: the derivation with explicit scalar sympy symbols at a given size;
- ``sympy_matrix()``: the derivation with sympy's matrix calculus (size-free), where sympy
  supports the expression at all (``None`` otherwise).

Kinds: ``jacobian`` (tensor output, first derivative), ``gradient`` (scalar output, first
derivative), ``hessian`` (scalar output, second derivative).
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


@dataclass
class Case:
    id: int
    name: str
    formula: str
    wrt: object                 # str or list of str, as passed to ed.diff
    kind: str                   # "jacobian" | "gradient" | "hessian"
    args: tuple                 # argument order of f; args[0] is differentiated
    dims: dict                  # {"small": {...}, "medium": {...}}
    make: Callable              # (dims, rng) -> {name: array}
    f: Callable                 # (ns, *args) -> output (JAX / torch)
    closed: Callable            # (**arrays) -> derivative (numpy)
    sympy_scalar: Callable      # (dims) -> (outputs, wrt_symbols); see sympy_derive
    sympy_matrix: Optional[Callable] = None
    size_note: str = ""
    notes: list = field(default_factory=list)

    def size_label(self, which):
        d = self.dims[which]
        return ",".join(f"{k}={v}" for k, v in d.items())


# ----------------------------------------------------------------------------- helpers

def _sigmoid(u):
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def _diag_view(out, spec):
    """A writeable strided view of ``out`` along repeated indices, e.g. 'ikiq->ikq'."""
    return np.einsum(spec, out)


# ----------------------------------------------------------------------------- sympy helpers
# imported lazily: the harness measures sympy under a time budget and sympy is optional

def _syms(name, shape):
    import sympy as sp
    arr = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        arr[idx] = sp.Symbol(name + "_" + "_".join(map(str, idx)) if idx else name)
    return arr


def _fn(func, arr):
    out = np.empty(arr.shape, dtype=object)
    for idx in np.ndindex(*arr.shape):
        out[idx] = func(arr[idx])
    return out


def _ssum(arr):
    import sympy as sp
    return sp.Add(*list(np.ravel(arr)))


def _dot(a, b):
    """Matrix product of object arrays using sympy.Add (faster and tidier than Python +)."""
    import sympy as sp
    a2 = a if a.ndim == 2 else a[None, :]
    b2 = b if b.ndim == 2 else b[:, None]
    out = np.empty((a2.shape[0], b2.shape[1]), dtype=object)
    for i in range(a2.shape[0]):
        for k in range(b2.shape[1]):
            out[i, k] = sp.Add(*[a2[i, j] * b2[j, k] for j in range(a2.shape[1])])
    if a.ndim == 1 and b.ndim == 1:
        return out[0, 0]
    if a.ndim == 1:
        return out[0]
    if b.ndim == 1:
        return out[:, 0]
    return out


# ============================================================================ the cases

CASES = []

# 1. C_ik = A_ij B_jk, dC/dA ---------------------------------------------------------
def _c1_make(d, rng):
    return {"A": rng.standard_normal((d["M"], d["N"])),
            "B": rng.standard_normal((d["N"], d["K"]))}


def _c1_closed(A, B):
    M, N = A.shape
    K = B.shape[1]
    out = np.zeros((M, K, M, N))
    _diag_view(out, "ikiq->ikq")[...] = B.T          # out[i,k,i,q] = B[q,k]
    return out


def _c1_sym(d):
    A, B = _syms("A", (d["M"], d["N"])), _syms("B", (d["N"], d["K"]))
    return _dot(A, B), A


def _c1_mat():
    import sympy as sp
    M, N, K = sp.symbols("M N K", integer=True, positive=True)
    A, B = sp.MatrixSymbol("A", M, N), sp.MatrixSymbol("B", N, K)
    return (A * B).diff(A)


CASES.append(Case(
    1, "dC/dA of C=AB", "C_ik = A_ij B_jk", "A_pq", "jacobian", ("A", "B"),
    {"small": dict(M=10, N=8, K=9), "medium": dict(M=40, N=32, K=36)},
    _c1_make, lambda ns, A, B: A @ B, _c1_closed, _c1_sym, _c1_mat))


# 2. Hessian of x'Ax ------------------------------------------------------------------
def _c2_make(d, rng):
    return {"x": rng.standard_normal(d["n"]), "A": rng.standard_normal((d["n"], d["n"]))}


def _c2_sym(d):
    x, A = _syms("x", (d["n"],)), _syms("A", (d["n"], d["n"]))
    return _dot(x, _dot(A, x)), x


def _c2_mat():
    import sympy as sp
    n = sp.Symbol("n", integer=True, positive=True)
    x, A = sp.MatrixSymbol("x", n, 1), sp.MatrixSymbol("A", n, n)
    return (x.T * A * x).diff(x).diff(x)


CASES.append(Case(
    2, "Hessian of x'Ax", "L = x_i A_ij x_j", ["x_p", "x_q"], "hessian", ("x", "A"),
    {"small": dict(n=40), "medium": dict(n=300)},
    _c2_make, lambda ns, x, A: x @ (A @ x), lambda x, A: A + A.T, _c2_sym, _c2_mat))


# 3. Hessian of least squares ----------------------------------------------------------
def _c3_make(d, rng):
    return {"A": rng.standard_normal((d["m"], d["n"])), "x": rng.standard_normal(d["n"]),
            "b": rng.standard_normal(d["m"])}


def _c3_sym(d):
    A, x, b = _syms("A", (d["m"], d["n"])), _syms("x", (d["n"],)), _syms("b", (d["m"],))
    r = _dot(A, x) - b
    return _ssum(_fn(lambda u: u ** 2, r)), x


def _c3_mat():
    import sympy as sp
    m, n = sp.symbols("m n", integer=True, positive=True)
    A, x, b = sp.MatrixSymbol("A", m, n), sp.MatrixSymbol("x", n, 1), sp.MatrixSymbol("b", m, 1)
    r = A * x - b
    return (r.T * r).diff(x).diff(x)


CASES.append(Case(
    3, "Hessian of least squares", "L = (sum_j(A_ij x_j) - b_i)^2", ["x_p", "x_q"], "hessian",
    ("x", "A", "b"),
    {"small": dict(m=40, n=20), "medium": dict(m=300, n=150)},
    _c3_make, lambda ns, x, A, b: ns.sum((A @ x - b) ** 2),
    lambda A, x, b: 2.0 * (A.T @ A), _c3_sym, _c3_mat))


# 4./5. logistic loss -------------------------------------------------------------------
def _logit_make(d, rng):
    return {"X": rng.standard_normal((d["m"], d["n"])) / np.sqrt(d["n"]),
            "w": rng.standard_normal(d["n"]),
            "y": rng.choice([-1.0, 1.0], size=d["m"])}


def _logit_f(ns, w, X, y):
    return ns.sum(ns.softplus(-y * (X @ w)))


def _c4_closed(X, w, y):
    u = -y * (X @ w)
    return X.T @ (-y * _sigmoid(u))


def _c5_closed(X, w, y):
    u = -y * (X @ w)
    s = _sigmoid(u)
    return (X.T * (s * (1.0 - s) * y * y)) @ X


def _logit_sym(d):
    import sympy as sp
    X, w, y = _syms("X", (d["m"], d["n"])), _syms("w", (d["n"],)), _syms("y", (d["m"],))
    z = _dot(X, w)
    return _ssum([sp.log(1 + sp.exp(-y[i] * z[i])) for i in range(d["m"])]), w


def _c4_mat():
    import sympy as sp
    m, n = sp.symbols("m n", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", m, n), sp.MatrixSymbol("w", n, 1), sp.MatrixSymbol("y", m, 1)
    z = -sp.hadamard_product(y, X * w)
    return (sp.OneMatrix(1, m) * z.applyfunc(lambda u: sp.log(1 + sp.exp(u)))).diff(w)


def _c5_mat():  # sympy's matrix calculus: second derivative of the above
    import sympy as sp
    m, n = sp.symbols("m n", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", m, n), sp.MatrixSymbol("w", n, 1), sp.MatrixSymbol("y", m, 1)
    z = -sp.hadamard_product(y, X * w)
    return (sp.OneMatrix(1, m) * z.applyfunc(lambda u: sp.log(1 + sp.exp(u)))).diff(w).diff(w)


LOGIT = "L = softplus(-y_i sum_j(X_ij w_j))"
CASES.append(Case(
    4, "grad of logistic loss", LOGIT, "w_p", "gradient", ("w", "X", "y"),
    {"small": dict(m=500, n=25), "medium": dict(m=4000, n=200)},
    _logit_make, _logit_f, _c4_closed, _logit_sym, _c4_mat))
CASES.append(Case(
    5, "Hessian of logistic loss", LOGIT, ["w_p", "w_q"], "hessian", ("w", "X", "y"),
    {"small": dict(m=200, n=20), "medium": dict(m=1000, n=100)},
    _logit_make, _logit_f, _c5_closed, _logit_sym, _c5_mat))


# 6. tanh layer, dy/dW ------------------------------------------------------------------
def _c6_make(d, rng):
    return {"W": rng.standard_normal((d["n"], d["m"])) / np.sqrt(d["m"]),
            "x": rng.standard_normal(d["m"]), "b": 0.1 * rng.standard_normal(d["n"])}


def _c6_closed(W, x, b):
    n, m = W.shape
    y = np.tanh(W @ x + b)
    out = np.zeros((n, n, m))
    np.multiply((1.0 - y * y)[:, None], x[None, :], out=_diag_view(out, "iiq->iq"))
    return out


def _c6_sym(d):
    import sympy as sp
    W, x, b = _syms("W", (d["n"], d["m"])), _syms("x", (d["m"],)), _syms("b", (d["n"],))
    return _fn(sp.tanh, _dot(W, x) + b), W


def _c6_mat():
    import sympy as sp
    n, m = sp.symbols("n m", integer=True, positive=True)
    W, x, b = sp.MatrixSymbol("W", n, m), sp.MatrixSymbol("x", m, 1), sp.MatrixSymbol("b", n, 1)
    return (W * x + b).applyfunc(sp.tanh).diff(W)


CASES.append(Case(
    6, "dy/dW of tanh layer", "y_i = tanh(sum_j(W_ij x_j) + b_i)", "W_pq", "jacobian",
    ("W", "x", "b"),
    {"small": dict(n=30, m=25), "medium": dict(n=120, m=100)},
    _c6_make, lambda ns, W, x, b: ns.tanh(W @ x + b), _c6_closed, _c6_sym, _c6_mat))


# 7. gradient of tr(X'AX) ---------------------------------------------------------------
def _c7_make(d, rng):
    return {"X": rng.standard_normal((d["m"], d["n"])),
            "A": rng.standard_normal((d["m"], d["m"]))}


def _c7_sym(d):
    X, A = _syms("X", (d["m"], d["n"])), _syms("A", (d["m"], d["m"]))
    P = _dot(A, X)                                   # (A X)_ki
    return _ssum(X * P), X                           # sum_ji X_ji (A X)_ji


def _c7_mat():
    import sympy as sp
    m, n = sp.symbols("m n", integer=True, positive=True)
    X, A = sp.MatrixSymbol("X", m, n), sp.MatrixSymbol("A", m, m)
    return sp.Trace(X.T * A * X).diff(X)


CASES.append(Case(
    7, "grad of tr(X'AX)", "L = X_ji A_jk X_ki", "X_pq", "gradient", ("X", "A"),
    {"small": dict(m=16, n=10), "medium": dict(m=64, n=40)},
    _c7_make, lambda ns, X, A: ns.einsum("ji,jk,ki->", X, A, X),
    lambda X, A: (A + A.T) @ X, _c7_sym, _c7_mat,
    size_note="X is m x n, A is m x m"))


# 8. Hessian of log-sum-exp -------------------------------------------------------------
def _c8_closed(x):
    e = np.exp(x - x.max())
    s = e / e.sum()
    H = np.multiply.outer(-s, s)
    H.flat[:: x.shape[0] + 1] += s
    return H


def _c8_sym(d):
    import sympy as sp
    x = _syms("x", (d["n"],))
    return sp.log(_ssum(_fn(sp.exp, x))), x


CASES.append(Case(
    8, "Hessian of log-sum-exp", "L = log(sum_i(exp(x_i)))", ["x_p", "x_q"], "hessian", ("x",),
    {"small": dict(n=40), "medium": dict(n=300)},
    lambda d, rng: {"x": rng.standard_normal(d["n"])},
    lambda ns, x: ns.log(ns.sum(ns.exp(x))), _c8_closed, _c8_sym, None))


# 9. 2-layer MLP, gradient wrt W1 ---------------------------------------------------------
MLP = ("h_ni = tanh(sum_j(W1_ij x_nj) + b1_i)\n"
       "y_nk = sum_i(W2_ki h_ni) + b2_k\n"
       "L = (y_nk - t_nk)^2")


def _c9_make(d, rng):
    B, I, H, O = d["batch"], d["inp"], d["hidden"], d["out"]
    return {"W1": rng.standard_normal((H, I)) / np.sqrt(I),
            "x": rng.standard_normal((B, I)),
            "b1": 0.1 * rng.standard_normal(H),
            "W2": rng.standard_normal((O, H)) / np.sqrt(H),
            "b2": 0.1 * rng.standard_normal(O),
            "t": rng.standard_normal((B, O))}


def _c9_f(ns, W1, x, b1, W2, b2, t):
    h = ns.tanh(x @ W1.T + b1)
    y = h @ W2.T + b2
    return ns.sum((y - t) ** 2)


def _c9_closed(W1, x, b1, W2, b2, t):
    h = np.tanh(x @ W1.T + b1)                        # (B, H)
    r = 2.0 * (h @ W2.T + b2 - t)                     # (B, O)
    dz = (r @ W2) * (1.0 - h * h)                     # (B, H)
    return dz.T @ x                                   # (H, I)


def _c9_sym(d):
    import sympy as sp
    B, I, H, O = d["batch"], d["inp"], d["hidden"], d["out"]
    W1, x, b1 = _syms("W1", (H, I)), _syms("x", (B, I)), _syms("b1", (H,))
    W2, b2, t = _syms("W2", (O, H)), _syms("b2", (O,)), _syms("t", (B, O))
    h = _fn(sp.tanh, _dot(x, W1.T) + b1)
    y = _dot(h, W2.T) + b2
    return _ssum(_fn(lambda u: u ** 2, y - t)), W1


def _c9_mat():
    import sympy as sp
    B, I, H, O = sp.symbols("B I H O", integer=True, positive=True)
    X, W1, b1 = sp.MatrixSymbol("X", B, I), sp.MatrixSymbol("W1", H, I), sp.MatrixSymbol("b1", H, 1)
    W2, b2, T = sp.MatrixSymbol("W2", O, H), sp.MatrixSymbol("b2", O, 1), sp.MatrixSymbol("T", O, B)
    h = (W1 * X.T + b1 * sp.OneMatrix(1, B)).applyfunc(sp.tanh)
    r = W2 * h + b2 * sp.OneMatrix(1, B) - T
    return sp.Trace(r.T * r).diff(W1)


CASES.append(Case(
    9, "grad of 2-layer MLP loss wrt W1", MLP, "W1_pq", "gradient",
    ("W1", "x", "b1", "W2", "b2", "t"),
    {"small": dict(batch=32, inp=8, hidden=16, out=4),
     "medium": dict(batch=128, inp=32, hidden=64, out=10)},
    _c9_make, _c9_f, _c9_closed, _c9_sym, _c9_mat,
    size_note="issue's (128, 32, 64, 10) read as batch=128, input=32, hidden=64, output=10"))


# 10. batched matmul, dC/dA ----------------------------------------------------------------
def _c10_make(d, rng):
    return {"A": rng.standard_normal((d["b"], d["i"], d["j"])),
            "B": rng.standard_normal((d["b"], d["j"], d["k"]))}


def _c10_closed(A, B):
    b, i, j = A.shape
    k = B.shape[2]
    out = np.zeros((b, i, k, b, i, j))
    _diag_view(out, "bikbir->bikr")[...] = B.transpose(0, 2, 1)[:, None, :, :]
    return out


def _c10_sym(d):
    A, B = _syms("A", (d["b"], d["i"], d["j"])), _syms("B", (d["b"], d["j"], d["k"]))
    C = np.stack([_dot(A[b], B[b]) for b in range(d["b"])])
    return C, A


def _c10_mat():
    from sympy.tensor.array.expressions import (ArraySymbol, ArrayContraction,
                                                ArrayTensorProduct, ArrayDiagonal)
    from sympy.tensor.array.expressions.arrayexpr_derivatives import array_derive
    import sympy as sp
    b, i, j, k = sp.symbols("b i j k", integer=True, positive=True)
    A, B = ArraySymbol("A", (b, i, j)), ArraySymbol("B", (b, j, k))
    # C_bik = sum_j A_bij B_bjk : diagonal over the two b axes, contraction over j
    C = ArrayContraction(ArrayDiagonal(ArrayTensorProduct(A, B), (0, 3)), (1, 2))
    return array_derive(C, A)


CASES.append(Case(
    10, "dC/dA of batched matmul", "C_bik = A_bij B_bjk", "A_pqr", "jacobian", ("A", "B"),
    {"small": dict(b=2, i=3, j=4, k=4), "medium": dict(b=8, i=12, j=14, k=16)},
    _c10_make, lambda ns, A, B: A @ B, _c10_closed, _c10_sym, _c10_mat))


# ------------------------------------------------------------------------- sympy derivation

def sympy_derive(case, dims):
    """Derive the case's derivative with explicit scalar sympy symbols (no simplify())."""
    import sympy as sp
    outs, wrt = case.sympy_scalar(dims)
    wrt = list(np.ravel(wrt))
    if case.kind == "jacobian":
        outs = np.ravel(outs)
        return [[sp.diff(o, v) for v in wrt] for o in outs]
    grad = [sp.diff(outs, v) for v in wrt]
    if case.kind == "gradient":
        return grad
    return [[sp.diff(g, v) for v in wrt] for g in grad]
