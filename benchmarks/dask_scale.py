"""Scale-out demo: ∇x of ‖Ax − b‖² with A of 2,000,000 × 100 (1.6 GB) in row chunks.

    python benchmarks/dask_scale.py                      # a LocalCluster with 2 workers
    python benchmarks/dask_scale.py tcp://host:8786      # a running dask scheduler

The inputs are generated chunk by chunk on the workers, so no single process holds A; the
result is checked against numpy on the first 100,000 rows, which both can hold.
"""

import sys
import time

import dask.array as da
import numpy as np
from dask.distributed import Client, LocalCluster

import einderiv as ed

ROWS, COLS, CHUNK = 2_000_000, 100, 100_000


def main(address=None):
    if address:
        client = Client(address)
    else:
        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None))
    grad = ed.diff("L = (sum_j(A_ij x_j) - b_i)^2", wrt="x")
    print(grad)
    A = da.random.default_rng(0).standard_normal((ROWS, COLS), chunks=(CHUNK, COLS))
    b = da.random.default_rng(1).standard_normal(ROWS, chunks=CHUNK)
    x = np.random.default_rng(2).standard_normal(COLS)
    start = time.perf_counter()
    g = client.compute(grad.evaluate(backend="dask", A=A, x=da.from_array(x), b=b)).result()
    print(f"gradient over {ROWS:,} x {COLS} in {A.numblocks[0]} chunks: "
          f"{time.perf_counter() - start:.2f} s on {len(client.scheduler_info()['workers'])} workers")
    # the same formula on a part numpy can hold, against numpy's closed form
    a_small = A[:CHUNK].compute()
    b_small = b[:CHUNK].compute()
    part = grad.evaluate(backend="dask", A=A[:CHUNK], x=da.from_array(x), b=b[:CHUNK]).compute()
    np.testing.assert_allclose(part, 2 * a_small.T @ (a_small @ x - b_small), rtol=1e-9)
    print("first chunk agrees with numpy:", np.abs(part - grad.evaluate(A=a_small, x=x, b=b_small)).max())
    print("|grad| =", np.linalg.norm(g))
    client.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
