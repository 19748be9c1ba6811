#!/usr/bin/env python
"""Where does a compiled einderiv `evaluate` spend its time? (a helper for issue 5)

    python benchmarks/profile_evaluate.py 7 small          # case 7, small size
    python benchmarks/profile_evaluate.py 4 medium --calls 2000 --top 25

Prints: the per-call time of evaluate, of the exported numpy function and of the closed form;
the derivative einderiv derived and its einsums; then cProfile's top functions (tottime) over
many warm evaluate calls, with per-call microseconds.
"""
import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import cProfile
import pstats
import sys
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import numpy as np

from cases import CASES


def per_call(fn, target=0.2):
    t = timeit.Timer(fn)
    n, _ = t.autorange()
    return min(t.repeat(5, n)) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", type=int)
    ap.add_argument("size", choices=["small", "medium"])
    ap.add_argument("--calls", type=int, default=0, help="evaluate calls to profile")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()

    import einderiv as ed
    case = next(c for c in CASES if c.id == a.case)
    arrays = case.make(case.dims[a.size], np.random.default_rng(0))
    d = ed.diff(case.formula, wrt=case.wrt)
    kw = {n: arrays[n] for n in d.inputs}
    d.evaluate(**kw)
    print(f"case {case.id} {a.size} {case.dims[a.size]}\n{d}\n")
    with_terms = getattr(d, "einsum", None)
    if with_terms:
        for t in d.einsum():
            print("  ", t)
    ns = {}
    exec(d.to_source("numpy"), ns)
    pos = [arrays[n] for n in d.inputs]
    e = per_call(lambda: d.evaluate(**kw))
    x = per_call(lambda: ns["derivative"](*pos))
    c = per_call(lambda: case.closed(**arrays))
    print(f"\nper call (min of 5): evaluate {e:.1f} µs, exported {x:.1f} µs, closed form {c:.1f} µs")
    calls = a.calls or max(50, int(2e6 / max(e, 1)))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        d.evaluate(**kw)
    pr.disable()
    st = pstats.Stats(pr)
    st.sort_stats("tottime")
    print(f"\ncProfile over {calls} evaluate calls (µs per evaluate call; profiler inflates "
          f"small functions):")
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        rows.append((tt, ct, nc, f"{Path(fname).name}:{line}({func})"))
    rows.sort(reverse=True)
    print(f"{'tottime/call':>13} {'cumtime/call':>13} {'ncalls/call':>12}  function")
    for tt, ct, nc, name in rows[: a.top]:
        print(f"{tt / calls * 1e6:13.2f} {ct / calls * 1e6:13.2f} {nc / calls:12.1f}  {name}")


if __name__ == "__main__":
    main()
