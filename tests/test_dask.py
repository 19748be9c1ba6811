"""Scale-out: a gradient over row-chunked dask arrays, on a LocalCluster with two workers."""

import numpy as np
import pytest

import einderiv as ed

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

LEAST_SQUARES = "L = (sum_j(A_ij x_j) - b_i)^2"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_gradient_over_row_chunks_on_two_workers(client):
    # the rows are made by dask, chunk by chunk on the workers (as data loaded with dask would
    # be), not shipped from this process inside the graph
    rows, cols = 200_000, 20
    chunks = rows // 8
    rng = da.random.default_rng(0)
    A_lazy = rng.normal(size=(rows, cols), chunks=(chunks, cols))
    b_lazy = rng.normal(size=rows, chunks=chunks)
    x = np.random.default_rng(0).normal(size=cols)
    grad = ed.diff(LEAST_SQUARES, wrt="x")
    lazy = grad.evaluate(backend="dask", A=A_lazy, x=da.from_array(x, chunks=cols), b=b_lazy)
    assert isinstance(lazy, da.Array)
    got = client.compute(lazy).result()
    A, b = client.compute([A_lazy, b_lazy], sync=True)       # the same numbers, for numpy
    expected = grad.evaluate(A=A, x=x, b=b)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(got, 2 * A.T @ (A @ x - b), rtol=1e-10)
    # the work was spread over both workers
    assert len(client.scheduler_info()["workers"]) == 2


def test_hessian_with_delta_on_dask():
    rng = np.random.default_rng(1)
    x = rng.normal(size=6)
    hess = ed.diff("L = log(sum_i(exp(x_i)))", wrt=["x", "x"])
    got = hess.evaluate(backend="dask", x=da.from_array(x, chunks=3)).compute()
    np.testing.assert_allclose(got, hess.evaluate(x=x), rtol=1e-12)


def test_delta_with_a_non_finite_diagonal_keeps_zeros_off_it():
    """dy_i/dx_p = δ_ip / x_i at x = 0: inf on the diagonal, 0 off it, as numpy writes it (a
    product with an identity made the off-diagonal entries 0 · inf = NaN before)."""
    x = np.array([1.0, 0.0, 2.0])
    d = ed.diff("y_i = log(x_i)", wrt="x")
    with np.errstate(divide="ignore"):
        got = d.evaluate(backend="dask", x=da.from_array(x)).compute()
    expected = np.diag([1.0, np.inf, 0.5])
    np.testing.assert_array_equal(got, expected)



def _trace_of_an_intermediate(A, x):
    h = np.einsum("k,i->ik", A, x)
    return np.trace(np.einsum("iv,k->kv", h, A))


@pytest.mark.parametrize("src, shapes, reference", [
    ("t = A_ii", {"A": (5, 5)}, lambda A: np.trace(A)),
    ("d_ij = A_iij", {"A": (5, 5, 2)}, lambda A: np.einsum("iij->ij", A)),
    # the trace of an intermediate that dask's own einsum chunked differently along its axes
    ("h_ik = A_k x_i; g_kv = h_iv A_k; L = g_vv", {"A": (3,), "x": (2,)}, _trace_of_an_intermediate),
], ids=["trace-of-an-input", "diagonal-of-an-input", "trace-of-an-intermediate"])
def test_a_repeated_index_over_differently_chunked_axes(src, shapes, reference):
    """dask's einsum reads the diagonal of one operand block by block and failed at compute
    time ('Shapes do not align', or numpy's 'collapsing index' error) when that operand's axes
    were chunked differently; einderiv gives those axes one chunking first."""
    rng = np.random.default_rng(2)
    arrays = {n: rng.normal(size=s) for n, s in shapes.items()}
    # odd axes chunked by 3, even axes whole: (5, 5) -> chunks (5, 3)
    lazy = {n: da.from_array(a, chunks=tuple(min(k, 3) if ax % 2 else k for ax, k in enumerate(a.shape)))
            for n, a in arrays.items()}
    want = reference(**arrays)
    for given in (arrays, lazy):
        got = ed.parse(src).evaluate(given, backend="dask").compute()
        np.testing.assert_allclose(got, want, rtol=1e-12)
