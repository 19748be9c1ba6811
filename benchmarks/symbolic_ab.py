#!/usr/bin/env python
"""Interleaved A/B timing of einderiv's symbolic step (parse + diff + simplify) on the ten
benchmark cases, as benchmarks/run.py run_symbolic() times it: ``ed.diff(formula + "\\n# run N",
wrt=...)`` with a fresh comment per call.

    python benchmarks/symbolic_ab.py /path/to/old/checkout .          # A = old, B = this one
    python benchmarks/symbolic_ab.py . --rounds 30 --cases 9 3        # one checkout alone

Each checkout runs in its own worker process (pinned to one CPU with ``--cpu``); the driver
alternates them round by round, so that a noisy machine slows both alike. Per case it prints
the minimum per-call time over all rounds, ``cold`` (einderiv's symbolic memos cleared before
every call: the honest figure) and ``warm`` (memos kept, as a long-running benchmark sees).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[1])
import einderiv as ed
from einderiv import ir, simplify
from cases import CASES
cases = {c.id: c for c in CASES}
memos = [getattr(m, n) for m, n in ((ir, "_RENAMED"), (simplify, "_KEYS"), (simplify, "_REBUILT"),
                                    (simplify, "_FRESH"), (simplify, "_NORMAL"),
                                    (simplify, "_SEQUENCES")) if hasattr(m, n)]
run = 0
for line in sys.stdin:
    case_id, mode, calls = line.split()
    case = cases[int(case_id)]
    best = float("inf")
    gc.collect()
    for _ in range(int(calls)):
        run += 1
        text = f"{case.formula}\n# run {run}"
        if mode == "cold":
            for m in memos:
                m.clear()
        t0 = time.perf_counter()
        ed.diff(text, wrt=case.wrt)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps(best * 1e3), flush=True)
"""


def start(checkout, cpu):
    cmd = [sys.executable, "-c", WORKER, str(Path(checkout).resolve()), str(HERE)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()))
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def ask(worker, case_id, mode, calls):
    worker.stdin.write(f"{case_id} {mode} {calls}\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkouts", nargs="+", help="one or two einderiv checkouts (A, then B)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20, help="calls per case per round")
    ap.add_argument("--cases", type=int, nargs="*", default=list(range(1, 11)))
    ap.add_argument("--cpu", type=int, default=0)
    a = ap.parse_args()
    workers = [start(c, a.cpu) for c in a.checkouts]
    best = {}
    for r in range(a.rounds):
        for case_id in a.cases:
            for mode in ("cold", "warm"):
                order = workers if r % 2 == 0 else workers[::-1]
                for w in order:
                    ms = ask(w, case_id, mode, a.calls)
                    k = (workers.index(w), case_id, mode)
                    best[k] = min(best.get(k, ms), ms)
    for w in workers:
        w.stdin.close()
        w.wait()
    names = "AB"
    head = "case " + "".join(f"  cold {names[i]}  warm {names[i]}" for i in range(len(workers)))
    if len(workers) == 2:
        head += "   cold B/A  warm B/A"
    print(head)
    for case_id in a.cases:
        row = f"{case_id:>4} "
        for i in range(len(workers)):
            row += f"  {best[i, case_id, 'cold']:6.3f}  {best[i, case_id, 'warm']:6.3f}"
        if len(workers) == 2:
            row += "".join(f"   {best[1, case_id, m] / best[0, case_id, m]:7.2f}" for m in ("cold", "warm"))
        print(row)


if __name__ == "__main__":
    main()
