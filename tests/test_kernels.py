"""The compiled numpy contractions (and the symmetric Gram kernel) agree with numpy.einsum."""

import random

import numpy as np
import opt_einsum as oe
import pytest

import einderiv as ed
from einderiv import kernels
from einderiv.kernels import compile_contraction, compile_gram


def _random_einsum(seed):
    rnd = random.Random(seed)
    letters = "abcdef"
    sizes = {c: rnd.randint(1, 4) for c in letters}
    subs = ["".join(rnd.choice(letters[:5]) for _ in range(rnd.randint(0, 3)))
            for _ in range(rnd.randint(1, 4))]
    used = sorted(set("".join(subs)))
    out = "".join(c for c in used if rnd.random() < 0.5)
    rnd.shuffle(list(out))
    return ",".join(subs) + "->" + out, [tuple(sizes[c] for c in s) for s in subs]


@pytest.mark.parametrize("seed", range(400))
def test_matches_einsum(seed):
    subs, shapes = _random_einsum(seed)
    rng = np.random.default_rng(seed)
    ops = [rng.normal(size=s) for s in shapes]
    path, _ = oe.contract_path(subs, *shapes, shapes=True)
    fn = compile_contraction(subs, shapes, path)
    assert fn is not None
    np.testing.assert_allclose(fn(*ops), np.einsum(subs, *ops), rtol=1e-12, atol=1e-12)


def test_batched_matmul_and_transposed_output():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 5, 2))
    subs = "bij,bjk->kbi"
    path, _ = oe.contract_path(subs, a, b)
    fn = compile_contraction(subs, [a.shape, b.shape], path)
    np.testing.assert_allclose(fn(a, b), np.einsum(subs, a, b), rtol=1e-12)


# --- weighted Gram products: Σ_C R[C,F] R[C,F'] w[C] as a symmetric rank-k update ------------

GRAMS = [
    # subscripts, shapes, refs (the same name: the same array)
    ("ab,ac->bc", [(30, 9), (30, 9)], ("X", "X")),
    ("ab,ac,a->bc", [(30, 9), (30, 9), (30,)], ("X", "X", "w")),
    ("ab,ac,a,a->cb", [(30, 9), (30, 9), (30,), (30,)], ("X", "X", "u", "v")),
    ("abc,abd,ba->cd", [(5, 6, 9), (5, 6, 9), (6, 5)], ("X", "X", "w")),
    ("abc,abd,a->dc", [(5, 6, 9), (5, 6, 9), (5,)], ("X", "X", "w")),
    ("abc,abd,a->dc", [(25, 1, 9), (25, 1, 9), (25,)], ("X", "X", "w")),
    ("acb,adb,ba->dc", [(5, 9, 6), (5, 9, 6), (6, 5)], ("X", "X", "w")),
    ("abcd,abef->cedf", [(9, 2, 3, 4), (9, 2, 3, 4)], ("X", "X")),
]


@pytest.mark.parametrize("sign", ["positive", "negative", "mixed", "zero"])
@pytest.mark.parametrize("coeff", [1.0, 2.5, -3.0])
@pytest.mark.parametrize("case", range(len(GRAMS)))
def test_gram_matches_einsum(case, coeff, sign, monkeypatch):
    monkeypatch.setattr(kernels, "GRAM_MIN_WORK", 0)     # small arrays, same code path
    subs, shapes, refs = GRAMS[case]
    rng = np.random.default_rng(case)
    arrays = {}
    for ref, shape in zip(refs, shapes):
        if ref not in arrays:
            arrays[ref] = rng.normal(size=shape)
            if ref != "X":
                arrays[ref] = {"positive": np.abs(arrays[ref]), "negative": -np.abs(arrays[ref]),
                               "mixed": arrays[ref], "zero": 0 * arrays[ref]}[sign]
    ops = [arrays[r] for r in refs]
    fn = compile_gram(subs, shapes, refs, coeff)
    assert fn is not None
    got = fn(*ops)
    want = coeff * np.einsum(subs, *ops)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    if subs.split("->")[1] in ("bc", "cb", "cd", "dc") and sign != "mixed":
        assert np.array_equal(got, got.T)      # one syrk: an exactly symmetric result


@pytest.mark.parametrize("subs, shapes, refs", [
    ("ab,ac->bc", [(30, 9), (30, 9)], ("X", "Y")),                 # two different arrays
    ("ab,ca->bc", [(9, 9), (9, 9)], ("X", "X")),                   # XᵀXᵀ: not a Gram
    ("ab,ac,b->bc", [(30, 9), (30, 9), (9,)], ("X", "X", "w")),    # weight on a free index
    ("ab,ac->abc", [(30, 9), (30, 9)], ("X", "X")),                # the summed index is kept
    ("ab,ac->bc", [(30, 3), (30, 3)], ("X", "X")),                 # too few columns to gain
    ("a,b->ab", [(300,), (300,)], ("x", "x")),                     # an outer product
    ("ab,ac->bc", [(4, 30), (4, 30)], ("X", "X")),                 # too little summed
])
def test_gram_declines(subs, shapes, refs, monkeypatch):
    monkeypatch.setattr(kernels, "GRAM_MIN_WORK", 0)
    assert compile_gram(subs, shapes, refs, 1.0) is None


def test_gram_only_where_it_saves_time():
    assert compile_gram("ab,ac,a->bc", [(200, 20), (200, 20), (200,)], ("X", "X", "w"), 1.0) is None
    assert compile_gram("ab,ac,a->bc", [(1000, 100), (1000, 100), (1000,)], ("X", "X", "w"),
                        1.0) is not None


def test_gram_in_a_logistic_hessian():
    """The Hessian of the logistic loss goes through the Gram kernel and stays correct,
    including weights of any sign (y_i² σ(1-σ) ≥ 0 here; a made-up sign flip below)."""
    rng = np.random.default_rng(5)
    X, w, y = rng.normal(size=(600, 30)), rng.normal(size=30), np.sign(rng.normal(size=600))
    H = ed.diff("L = softplus(-y_i sum_j(X_ij w_j))", ["w_p", "w_q"])
    u = -y * (X @ w)
    s = 1 / (1 + np.exp(-u))
    np.testing.assert_allclose(H.evaluate(X=X, w=w, y=y), (X.T * (s * (1 - s))) @ X,
                               rtol=1e-12, atol=1e-12)
    G = ed.diff("L = c_i (sum_j(X_ij w_j))^2", ["w_p", "w_q"])
    c = rng.normal(size=600)
    np.testing.assert_allclose(G.evaluate(X=X, w=w, c=c), 2 * (X.T * c) @ X,
                               rtol=1e-12, atol=1e-12)
