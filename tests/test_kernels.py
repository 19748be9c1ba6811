"""The compiled numpy contractions agree with numpy.einsum on random einsums."""

import random

import numpy as np
import opt_einsum as oe
import pytest

from einderiv.kernels import compile_contraction


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
