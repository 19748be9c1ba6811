#!/usr/bin/env python
"""einderiv benchmark (issue 5): compiled symbolic derivatives vs automatic differentiation.

    python benchmarks/run.py            # full run (a few minutes)
    python benchmarks/run.py --quick    # under a minute: shorter timing windows, smaller sympy cap

One process, float64, one thread for every library. Every peer's result is checked against
JAX (np.allclose) before it is timed; a peer that disagrees is reported, never timed.
Writes benchmarks/results/latest.{md,json,png} and prints the markdown report.
See benchmarks/README.md for what each column means.
"""

# --- one thread for every library: must happen before numpy / jax / torch are imported ----
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"
_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if _XLA not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_ENABLE_X64"] = "1"


def _pin_to_one_cpu():
    """Run the whole process on one CPU. The environment variables above are not enough:
    XLA's CPU runtime ignores ``intra_op_parallelism_threads`` and spread a JAX Hessian over
    1.6 cores on this machine; an affinity mask holds every library to one core.
    ``--all-cores`` (checked here, before any thread pool starts) leaves the mask alone."""
    import sys as _sys
    if "--all-cores" in _sys.argv or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


PINNED_CPU = _pin_to_one_cpu()

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import platform
import signal
import statistics
import subprocess
import sys
import time
import timeit
import traceback
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))          # the repository's einderiv, even if another is installed

import numpy as np

from cases import CASES, sympy_derive

PAIRED_ROUNDS, PAIRED_ROUNDS_QUICK = 21, 7   # alternating rounds of the paired ratios
MEMORY_CASES = (1, 6, 10)             # delta-structured Jacobians: the memory target applies
SIZES = ("small", "medium")

# peer keys, in table order, with column headers
PEERS = [
    ("einderiv", "einderiv evaluate"),
    ("exported", "exported numpy"),
    ("closed", "numpy closed form"),
    ("jax_fwd", "jax fwd"),
    ("jax_rev", "jax rev"),
    ("jax_hess", "jax hess / grad"),
    ("jax_fwdrev", "jax fwd∘rev"),
    ("jax_revfwd", "jax rev∘fwd"),
    ("torch_fwd", "torch fwd"),
    ("torch_rev", "torch rev"),
    ("torch_hess", "torch hess / grad"),
]
JAX_KEYS = [k for k, _ in PEERS if k.startswith("jax")]
TORCH_KEYS = [k for k, _ in PEERS if k.startswith("torch")]


# ============================================================================ configuration

class Config:
    def __init__(self, args):
        self.quick = args.quick
        self.target = 0.005 if args.quick else 0.2       # autorange window per measurement (s)
        self.slow_s = 0.05                               # --quick: slower peers timed once
        self.repeat = 5 if args.quick else 7             # repeats; the median is reported
        self.sympy_budget = 0.5 if args.quick else 10.0  # cap per sympy derivation (s)
        self.cases = [c for c in CASES if not args.cases or c.id in args.cases]
        self.sizes = args.sizes
        self.use_torch = not args.no_torch
        self.use_sympy = not args.no_sympy
        self.out = Path(args.out)
        self.prefix = args.prefix


# ============================================================================ libraries

NOTES = []


def load_jax():
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    class NS:
        sum = staticmethod(jnp.sum)
        exp = staticmethod(jnp.exp)
        log = staticmethod(jnp.log)
        tanh = staticmethod(jnp.tanh)
        einsum = staticmethod(jnp.einsum)
        softplus = staticmethod(jax.nn.softplus)
    return jax, NS


def load_torch():
    try:
        import torch
        import torch.func  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the machine
        NOTES.append(f"torch not importable ({type(e).__name__}: {e}); torch columns skipped.")
        return None, None
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    class NS:
        sum = staticmethod(torch.sum)
        exp = staticmethod(torch.exp)
        log = staticmethod(torch.log)
        tanh = staticmethod(torch.tanh)
        einsum = staticmethod(torch.einsum)
        softplus = staticmethod(torch.nn.functional.softplus)
    return torch, NS


def load_einderiv():
    try:
        import einderiv as ed
        ed.diff  # noqa: B018
        return ed
    except Exception as e:
        NOTES.append(f"einderiv not importable ({type(e).__name__}: {e}); einderiv columns empty.")
        return None


def jax_variants(jax, kind):
    jf, jr = jax.jacfwd, jax.jacrev
    if kind == "jacobian":
        return {"jax_fwd": lambda f: jf(f), "jax_rev": lambda f: jr(f)}
    if kind == "gradient":
        return {"jax_fwd": lambda f: jf(f), "jax_rev": lambda f: jr(f),
                "jax_hess": lambda f: jax.grad(f)}
    return {"jax_fwd": lambda f: jf(jf(f)), "jax_rev": lambda f: jr(jr(f)),
            "jax_hess": lambda f: jax.hessian(f),
            "jax_fwdrev": lambda f: jf(jr(f)), "jax_revfwd": lambda f: jr(jf(f))}


def torch_variants(tf, kind):
    if kind == "jacobian":
        return {"torch_fwd": lambda f: tf.jacfwd(f), "torch_rev": lambda f: tf.jacrev(f)}
    if kind == "gradient":
        return {"torch_fwd": lambda f: tf.jacfwd(f), "torch_rev": lambda f: tf.jacrev(f),
                "torch_hess": lambda f: tf.grad(f)}
    return {"torch_fwd": lambda f: tf.jacfwd(tf.jacfwd(f)),
            "torch_rev": lambda f: tf.jacrev(tf.jacrev(f)),
            "torch_hess": lambda f: tf.hessian(f)}


VARIANT_LABELS = {
    "jacobian": {"jax_fwd": "jacfwd", "jax_rev": "jacrev",
                 "torch_fwd": "jacfwd", "torch_rev": "jacrev"},
    "gradient": {"jax_fwd": "jacfwd", "jax_rev": "jacrev", "jax_hess": "grad",
                 "torch_fwd": "jacfwd", "torch_rev": "jacrev", "torch_hess": "grad"},
    "hessian": {"jax_fwd": "jacfwd(jacfwd)", "jax_rev": "jacrev(jacrev)", "jax_hess": "hessian",
                "jax_fwdrev": "jacfwd(jacrev)", "jax_revfwd": "jacrev(jacfwd)",
                "torch_fwd": "jacfwd(jacfwd)", "torch_rev": "jacrev(jacrev)",
                "torch_hess": "hessian"},
}


# ============================================================================ measuring

def _autorange(timer, target):
    """timeit.Timer.autorange with a configurable window (1, 2, 5, 10, 20, 50, ... calls)."""
    i = 1
    while True:
        for j in (1, 2, 5):
            number = i * j
            if timer.timeit(number) >= target:
                return number
        i *= 10


def measure(fn, cfg):
    """Median per-call time (µs) of >= 5 autoranged repeats."""
    timer = timeit.Timer(fn)
    if cfg.target >= 0.2:
        number, _ = timer.autorange()
    else:
        number = _autorange(timer, cfg.target)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    per = [t / number for t in timer.repeat(repeat=cfg.repeat, number=number)]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # cores in use while timing: 1.0 for a single-threaded peer, more if it ran threads
    return {"median_us": statistics.median(per) * 1e6, "min_us": min(per) * 1e6,
            "number": number, "repeat": cfg.repeat, "cpu_per_wall": round(cpu / wall, 2)}


class _Timeout(BaseException):
    """Raised by SIGALRM inside a capped computation (BaseException: `except Exception` in the
    measured library does not swallow it; the timer re-fires every 50 ms in case a bare
    `except:` does)."""


class _Alarm:
    def __init__(self):
        self.armed = False
        self.expired = False

    def handler(self, signum, frame):
        self.expired = True
        if self.armed:
            raise _Timeout()


@contextlib.contextmanager
def alarm(seconds):
    state = _Alarm()
    old = signal.signal(signal.SIGALRM, state.handler)
    state.armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield state
    finally:
        state.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def timed_budget(fn, budget, setup=None, runs=5):
    """Up to `runs` timed calls within `budget` seconds in total; capped ('>budget') when not
    even one finishes in time. Returns the timing dict and the last result."""
    times = []
    result = None
    start = time.perf_counter()
    try:
        with alarm(budget):
            for _ in range(runs):
                if setup:
                    setup()
                t0 = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t0)
                if time.perf_counter() - start + times[-1] > budget:
                    break
    except _Timeout:
        pass
    times = [t for t in times if t <= budget]
    if not times:
        return {"capped": True, "budget_s": budget}, None
    return {"median_us": statistics.median(times) * 1e6, "runs": len(times)}, result


def check(res, ref):
    res = np.asarray(res)
    if res.shape != ref.shape:
        return f"shape {res.shape} != JAX {ref.shape}"
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    if not np.allclose(res, ref, rtol=1e-6, atol=1e-9 * scale):
        err = float(np.max(np.abs(res - ref)))
        return f"values differ from JAX (max abs err {err:.3g})"
    return None


def peak_bytes(fn):
    """tracemalloc peak of new allocations during one call (numpy data buffers are traced)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        res = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, res


def _short(e):
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:160]


# ============================================================================ one case, one size

def run_peer(row, key, fn, ref, cfg, label=None):
    """Check fn() against ref, then time it. Records into row['peers'][key]; a timed fn is
    kept in row['_fns'] (not written out) for the paired comparisons."""
    entry = {"label": label}
    try:
        t0 = time.perf_counter()
        res = fn()
        first = time.perf_counter() - t0
        bad = check(res, ref)
    except Exception as e:
        entry["error"] = _short(e)
        row["peers"][key] = entry
        return None
    if bad:
        entry["error"] = "MISMATCH: " + bad
        row["peers"][key] = entry
        return None
    if cfg.quick and first > cfg.slow_s:
        # --quick only: a peer far slower than the others is reported from its checked call
        entry.update({"median_us": first * 1e6, "min_us": first * 1e6, "number": 1,
                      "repeat": 1, "single_call": True})
    else:
        entry.update(measure(fn, cfg))
        row["_fns"][key] = fn
    row["peers"][key] = entry
    return res


def paired_ratio(fn_a, fn_b, cfg):
    """The ratio of a's per-call time to b's, measured in alternating rounds (a b, b a, ...):
    a load that comes and goes slows both sides of a round alike, where two medians taken
    one after the other can each catch a different load. Returns the median of the per-round
    ratios and their quartiles."""
    window = 0.004 if cfg.quick else 0.02
    ta, tb = timeit.Timer(fn_a), timeit.Timer(fn_b)
    na, nb = _autorange(ta, window), _autorange(tb, window)
    ratios = []
    for r in range(PAIRED_ROUNDS_QUICK if cfg.quick else PAIRED_ROUNDS):
        if r % 2:
            b = tb.timeit(nb) / nb
            a = ta.timeit(na) / na
        else:
            a = ta.timeit(na) / na
            b = tb.timeit(nb) / nb
        ratios.append(a / b)
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "rounds": len(ratios)}


def run_case_size(case, which, cfg, jax, JNS, torch, TNS, ed):
    dims = case.dims[which]
    rng = np.random.default_rng(1000 + 10 * case.id + SIZES.index(which))
    arrays = case.make(dims, rng)
    args = [arrays[n] for n in case.args]
    row = {"case": case.id, "name": case.name, "size": which, "dims": dims,
           "formula": case.formula, "wrt": case.wrt, "kind": case.kind, "peers": {}, "notes": [],
           "_fns": {}}
    labels = VARIANT_LABELS[case.kind]

    # ---- JAX: the reference first (jacrev for first derivatives, hessian for second)
    jargs = [jax.device_put(a) for a in args]
    f = (lambda *a: case.f(JNS, *a))
    variants = jax_variants(jax, case.kind)
    ref_key = "jax_hess" if case.kind == "hessian" else "jax_rev"
    compiled = {}
    for key in [ref_key] + [k for k in variants if k != ref_key]:
        try:
            g = jax.jit(variants[key](f))
            t0 = time.perf_counter()
            g(*jargs).block_until_ready()
            compiled[key] = (g, time.perf_counter() - t0)
        except Exception as e:
            row["peers"][key] = {"label": labels.get(key), "error": _short(e)}
    if ref_key not in compiled:
        row["notes"].append("no JAX reference; case skipped")
        del row["_fns"]
        return row
    ref = np.asarray(compiled[ref_key][0](*jargs))
    row["shape"] = list(ref.shape)
    row["result_bytes"] = int(ref.nbytes)
    for key, (g, comp) in compiled.items():
        run_peer(row, key, (lambda g=g: g(*jargs).block_until_ready()), ref, cfg, labels.get(key))
        row["peers"][key]["compile_s"] = comp

    # ---- closed form
    run_peer(row, "closed", lambda: case.closed(**arrays), ref, cfg, "hand-written numpy")

    # ---- einderiv evaluate and exported source
    if ed is not None:
        try:
            t0 = time.perf_counter()
            d = ed.diff(case.formula, wrt=case.wrt)
            row["einderiv_diff_s"] = time.perf_counter() - t0
            row["einderiv_text"] = str(d)
            names = list(getattr(d, "inputs", None) or arrays)
            kw = {n: arrays[n] for n in names}
            try:
                first = d.evaluate(**kw)                 # the warm-up call (plan built, cached)
            except Exception as e:
                if kw.keys() == arrays.keys():
                    raise
                row["notes"].append(f"evaluate(**d.inputs) failed ({_short(e)}); passing all arrays")
                kw = dict(arrays)
                first = d.evaluate(**kw)
            second = d.evaluate(**kw)
            if isinstance(first, np.ndarray) and isinstance(second, np.ndarray) \
                    and np.shares_memory(first, second):
                row["notes"].append("evaluate returns the same buffer on every call")
            run_peer(row, "einderiv", lambda: d.evaluate(**kw), ref, cfg, "d.evaluate(**arrays)")
            # memory: tracemalloc peak of one evaluate call vs inputs + result
            in_bytes = sum(int(np.asarray(a).nbytes) for a in kw.values())
            peak, res = peak_bytes(lambda: d.evaluate(**kw))
            res_bytes = int(np.asarray(res).nbytes)
            row["memory"] = {"inputs_bytes": in_bytes, "result_bytes": res_bytes,
                             "peak_new_bytes": int(peak),
                             "ratio": (in_bytes + peak) / (in_bytes + res_bytes)}
            cpeak, cres = peak_bytes(lambda: case.closed(**arrays))
            cin = sum(int(a.nbytes) for a in arrays.values())
            row["memory"]["closed_ratio"] = (cin + cpeak) / (cin + int(np.asarray(cres).nbytes))
        except Exception as e:
            row["peers"].setdefault("einderiv", {"label": "d.evaluate(**arrays)",
                                                 "error": _short(e)})
            row["notes"].append("einderiv: " + _short(e))
            d = None
        if d is not None:
            try:
                # the shapes are known here, so the source spells out the same kernel steps
                src = d.to_source("numpy", shapes={n: arrays[n].shape for n in d.inputs})
                row["exported_source"] = src
                ns = {}
                exec(compile(src, f"<einderiv export case {case.id}>", "exec"), ns)
                fn = ns["derivative"]
                pos = [arrays[n] for n in d.inputs]
                run_peer(row, "exported", lambda: fn(*pos), ref, cfg,
                         "to_source('numpy', shapes=...)")
            except Exception as e:
                row["peers"]["exported"] = {"label": "to_source('numpy', shapes=...)",
                                            "error": _short(e)}

    # ---- torch.func
    if torch is not None:
        targs = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
        tf = (lambda *a: case.f(TNS, *a))
        for key, mk in torch_variants(torch.func, case.kind).items():
            g = mk(tf)
            run_peer(row, key, (lambda g=g: g(*targs)), ref, cfg, labels.get(key))

    # ---- summary ratios
    ok = lambda k: row["peers"].get(k, {}).get("median_us")   # noqa: E731
    jax_ok = {k: ok(k) for k in JAX_KEYS if ok(k)}
    if jax_ok:
        best = min(jax_ok, key=jax_ok.get)
        row["jax_best"] = {"key": best, "label": labels.get(best), "median_us": jax_ok[best]}
    torch_ok = {k: ok(k) for k in TORCH_KEYS if ok(k)}
    if torch_ok:
        best = min(torch_ok, key=torch_ok.get)
        row["torch_best"] = {"key": best, "label": labels.get(best), "median_us": torch_ok[best]}
    e, c, x = ok("einderiv"), ok("closed"), ok("exported")
    jb = row.get("jax_best", {}).get("median_us")
    row["ratios"] = {
        "einderiv_over_jax_best": e / jb if e and jb else None,
        "einderiv_over_closed": e / c if e and c else None,
        "exported_over_closed": x / c if x and c else None,
        "jax_best_over_closed": jb / c if jb and c else None,
    }
    # the two comparisons the targets judge, measured again in alternating rounds
    fns = row.pop("_fns")
    row["paired"] = {}
    if "einderiv" in fns:
        for other in (row.get("jax_best", {}).get("key"), "closed"):
            if other in fns:
                row["paired"][other if other == "closed" else "jax_best"] = \
                    paired_ratio(fns["einderiv"], fns[other], cfg)
    return row


# ============================================================================ symbolic step

def run_symbolic(case, cfg, ed):
    row = {"case": case.id, "formula": case.formula, "wrt": case.wrt, "notes": []}
    if ed is not None:
        counter = itertools.count()
        # a fresh comment line per call, so no cache keyed on the source string can answer
        variant = lambda: f"{case.formula}\n# run {next(counter)}"   # noqa: E731
        try:
            ed.diff(variant(), wrt=case.wrt)
        except Exception:
            variant = lambda: case.formula                           # noqa: E731
            row["notes"].append("comment suffix rejected; timing the plain string")
        for key, fn in (("einderiv_parse", lambda: ed.parse(variant())),
                        ("einderiv_diff", lambda: ed.diff(variant(), wrt=case.wrt))):
            try:
                first, _ = timed_budget(fn, 10.0, runs=1)
                if first.get("capped"):
                    row[key] = first
                elif first["median_us"] < 50_000:
                    row[key] = measure(fn, cfg)
                else:
                    row[key], _ = timed_budget(fn, 10.0 * 5)
            except Exception as e:
                row[key] = {"error": _short(e)}
        with contextlib.suppress(Exception):
            if ed.diff(case.formula, wrt=case.wrt) is ed.diff(case.formula, wrt=case.wrt):
                row["notes"].append("ed.diff returns a cached object for an identical string")
    if cfg.use_sympy:
        try:
            import sympy
            from sympy.core.cache import clear_cache
        except Exception as e:
            row["sympy_scalar"] = {"error": _short(e)}
            return row
        dims = case.dims["small"]
        row["sympy_scalar"], _ = timed_budget(lambda: sympy_derive(case, dims),
                                              cfg.sympy_budget, setup=clear_cache, runs=3)
        row["sympy_scalar"]["dims"] = dims
        clear_cache()
        tiny = {k: 3 for k in dims}
        row["sympy_tiny"], _ = timed_budget(lambda: sympy_derive(case, tiny),
                                            cfg.sympy_budget, setup=clear_cache, runs=3)
        row["sympy_tiny"]["dims"] = tiny
        clear_cache()
        if case.sympy_matrix is None:
            row["sympy_matrix"] = {"error": "not expressible in sympy matrix calculus"}
        else:
            try:
                r, expr = timed_budget(case.sympy_matrix, cfg.sympy_budget, setup=clear_cache)
                row["sympy_matrix"] = r
                if expr is not None:
                    r["text"] = str(expr)[:300]
            except Exception as e:
                row["sympy_matrix"] = {"error": "unsupported by sympy: " + _short(e)}
            clear_cache()
        row["sympy_version"] = sympy.__version__
    return row


# ============================================================================ reporting

def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt_us(v):
    if v is None:
        return "–"
    if v >= 1e5:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.3g} ms" if v < 1e4 else f"{v / 1e3:.1f} ms"
    return f"{v:.3g} µs" if v >= 10 else f"{v:.2f} µs"


def fmt_ratio(r, limit=None):
    if r is None:
        return "–"
    s = f"{r:.3g}×" if r < 100 else f"{r:.0f}×"
    if limit is not None:
        s += " ✓" if r <= limit else " ✗"
    return s


def fmt_paired(p, limit=None):
    """``0.98× (0.95–1.02) ✓``: the median paired ratio, its quartiles and the verdict
    (≈ where the quartiles fall on both sides of the limit)."""
    if not p:
        return "–"
    s = f"{p['median']:.3g}× ({p['q1']:.3g}–{p['q3']:.3g})"
    if limit is not None:
        s += " ✓" if p["median"] <= limit else " ✗"
        if p["q1"] <= limit <= p["q3"]:
            s += " ≈"
    return s


def fmt_sym(m):
    if m is None:
        return "–"
    if m.get("capped"):
        return f">{m['budget_s']:g} s"
    if "error" in m:
        return "n/a"
    return fmt_us(m["median_us"])


PAIRED_OF = {"einderiv_over_jax_best": "jax_best", "einderiv_over_closed": "closed"}


def evaluate_targets(rows, sym):
    med = [r for r in rows if r["size"] == "medium"]
    sml = [r for r in rows if r["size"] == "small"]

    def allmet(rs, key, lim):
        """Met where every case's ratio is within ``lim``: the paired ratio (alternating
        rounds) where measured, else the ratio of the two medians. A case whose paired
        ratios fall on both sides of ``lim`` (quartiles) is listed as a tie too."""
        paired_key = PAIRED_OF.get(key)
        missing = [r["case"] for r in rs if r["ratios"].get(key) is None]
        missing += [c.id for c in CASES if c.id not in [r["case"] for r in rs]]
        miss, ties = [], []
        for r in rs:
            p = r.get("paired", {}).get(paired_key)
            ratio = p["median"] if p else r["ratios"].get(key)
            if (ratio or 0) > lim:
                miss.append(r["case"])
            if p and p["q1"] <= lim <= p["q3"]:
                ties.append(r["case"])
        return {"met": not missing and not miss, "missed_cases": miss,
                "unmeasured_cases": missing, "ties": ties,
                "judged_by": "paired ratio" if paired_key else "ratio of medians"}

    gm_med = geomean([r["ratios"]["einderiv_over_jax_best"] for r in med])
    t = {}
    t["medium_not_slower_than_jax_best"] = allmet(med, "einderiv_over_jax_best", 1.0)
    t["medium_within_1.3x_closed_form"] = allmet(med, "einderiv_over_closed", 1.3)
    t["medium_geomean_5x_faster_than_jax_best"] = {
        "met": gm_med is not None and gm_med <= 0.2 and len(med) == 10
        and all(r["ratios"]["einderiv_over_jax_best"] for r in med),
        "geomean_einderiv_over_jax_best": gm_med,
        "speedup": 1 / gm_med if gm_med else None}
    t["small_not_slower_than_jax_best"] = allmet(sml, "einderiv_over_jax_best", 1.0)
    slow = [s["case"] for s in sym
            if not (s.get("einderiv_diff", {}).get("median_us") or 1e99) < 2000]
    t["symbolic_under_2ms"] = {"met": len(sym) == 10 and not slow, "missed_cases": slow}
    mem = [r for r in med if r["case"] in MEMORY_CASES]
    mmiss = [r["case"] for r in mem if not (r.get("memory", {}).get("ratio") or 1e99) <= 1.2]
    t["memory_within_1.2x"] = {"met": len(mem) == len(MEMORY_CASES) and not mmiss,
                               "missed_cases": mmiss,
                               "unmeasured_cases": [c for c in MEMORY_CASES
                                                    if c not in [r["case"] for r in mem]]}
    return t


def write_markdown(res, cfg):
    L = []
    m = res["meta"]
    L.append(f"# einderiv benchmark — {m['mode']} run, {m['date']}")
    L.append("")
    L.append(f"{m['machine']}; Python {m['python']}, numpy {m['numpy']}, jax {m['jax']}, "
             f"torch {m.get('torch') or 'absent'}, sympy {m.get('sympy') or 'absent'}, "
             f"einderiv {m.get('einderiv_commit') or '?'}. float64, "
             + (f"the process pinned to CPU {m['pinned_cpu']} (one core for every library); "
                if m.get("pinned_cpu") is not None else "all cores allowed (--all-cores); ")
             + f"median of {cfg.repeat} autoranged repeats "
             f"({'≥5 ms each; peers slower than 50 ms per call, marked ~, timed once' if cfg.quick else '≥0.2 s each'}); every result checked against JAX first.")
    L.append("")
    L.append("## Evaluation time per call (median)")
    L.append("")
    head = ["#", "case", "size"] + [h for _, h in PEERS] + ["ed / JAX-best", "paired",
                                                             "ed / closed", "paired",
                                                             "export / closed", "mem"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(head) - 3)) + "|")
    for r in res["rows"]:
        cells = [str(r["case"]), r["name"], f"{r['size']} ({','.join(map(str, r['dims'].values()))})"]
        best = r.get("jax_best", {}).get("key")
        for k, _ in PEERS:
            p = r["peers"].get(k)
            if p is None:
                cells.append("–")
            elif "error" in p:
                cells.append("✗ mismatch" if p["error"].startswith("MISMATCH") else "error")
            else:
                s = fmt_us(p["median_us"])
                if p.get("single_call"):
                    s = "~" + s
                cells.append(f"**{s}**" if k == best else s)
        ra = r.get("ratios", {})
        pa = r.get("paired", {})
        cells.append(fmt_ratio(ra.get("einderiv_over_jax_best"), None if pa.get("jax_best") else 1.0))
        cells.append(fmt_paired(pa.get("jax_best"), 1.0))
        cells.append(fmt_ratio(ra.get("einderiv_over_closed"),
                               1.3 if r["size"] == "medium" and not pa.get("closed") else None))
        cells.append(fmt_paired(pa.get("closed"), 1.3 if r["size"] == "medium" else None))
        cells.append(fmt_ratio(ra.get("exported_over_closed")))
        mem = r.get("memory", {}).get("ratio")
        if mem is None:
            cells.append("–")
        else:
            lim = 1.2 if (r["case"] in MEMORY_CASES and r["size"] == "medium") else None
            cells.append(fmt_ratio(mem, lim))
        L.append("| " + " | ".join(cells) + " |")
    for which in SIZES:
        g = res["geomeans"].get(which)
        if not g:
            continue
        cells = ["", f"**geometric mean, {which}**", ""] + [""] * len(PEERS)
        cells += [fmt_ratio(g["einderiv_over_jax_best"]), "", fmt_ratio(g["einderiv_over_closed"]),
                  "", fmt_ratio(g["exported_over_closed"]), ""]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Bold: JAX's best variant for the row. **jax hess / grad** is `jax.hessian` on Hessian "
             "cases and `jax.grad` on gradient cases; on Hessian cases *fwd* / *rev* are "
             "`jacfwd(jacfwd)` / `jacrev(jacrev)` (torch likewise). *mem*: (inputs + tracemalloc peak "
             "of one `evaluate`) / (inputs + result); target ≤ 1.2 on the medium δ-Jacobians 1, 6, 10. "
             "✗ mismatch / error: the peer disagreed with JAX or raised (see JSON), so it was not timed. "
             f"*paired*: einderiv and the peer timed again in {PAIRED_ROUNDS_QUICK if cfg.quick else PAIRED_ROUNDS} "
             "alternating rounds (a load that comes and goes slows both sides of a round alike); "
             "the median of the per-round ratios, with their quartiles; the targets are judged by it; "
             "≈: the quartiles fall on both sides of the limit (a tie within the noise).")
    L.append("")
    # ---- symbolic step
    L.append("## Symbolic step (derive once)")
    L.append("")
    L.append("| # | formula | wrt | einderiv parse | einderiv parse+diff+simplify | < 2 ms | "
             "sympy, scalars, every size 3 | sympy, scalars, small size | "
             "sympy matrix calculus |")
    L.append("|---:|---|---|---:|---:|:---:|---:|---:|---:|")
    for s in res["symbolic"]:
        d = s.get("einderiv_diff")
        ok = d and d.get("median_us") and d["median_us"] < 2000
        formula = s["formula"].replace("\n", "; ")
        cells = [str(s["case"]), f"`{formula}`", f"`{s['wrt']}`",
                 fmt_sym(s.get("einderiv_parse")), fmt_sym(d),
                 "✓" if ok else ("✗" if d else "–"),
                 fmt_sym(s.get("sympy_tiny")), fmt_sym(s.get("sympy_scalar")),
                 fmt_sym(s.get("sympy_matrix"))]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"sympy, scalars: the formula written with one `sympy.Symbol` per array element "
             f"(every index of size 3, or the case's *small* size), then `sympy.diff` of every output element by every "
             f"`wrt` element (building the expression included, `simplify()` not called, cache "
             f"cleared before each run), capped at {cfg.sympy_budget:g} s. sympy matrix calculus: "
             f"`MatrixSymbol` / `ArraySymbol` expressions differentiated with `.diff` (size-free, "
             f"unsimplified); n/a where sympy cannot express or differentiate the formula. "
             f"tensorgrad: {'not installed' if not res['meta'].get('tensorgrad') else res['meta']['tensorgrad']}.")
    L.append("")
    # ---- targets
    L.append("## Targets of issue 5")
    L.append("")
    t = res["targets"]

    def line(name, entry, extra=""):
        mark = "✓ met" if entry["met"] else "✗ not met"
        miss = entry.get("missed_cases")
        um = entry.get("unmeasured_cases")
        more = ""
        if miss:
            more += f" — missed on case(s) {', '.join(map(str, miss))}"
        if um:
            more += f" — not measured on case(s) {', '.join(map(str, um))}"
        if entry.get("ties"):
            more += (f" — a tie within the noise on case(s) {', '.join(map(str, entry['ties']))}"
                     " (the quartiles of the paired ratios fall on both sides of the limit)")
        if entry.get("judged_by") == "paired ratio":
            more += " — judged by the paired ratios"
        L.append(f"- {mark}: {name}{extra}{more}")
    line("medium cases: einderiv evaluate no slower than JAX's best",
         t["medium_not_slower_than_jax_best"])
    line("medium cases: einderiv evaluate within 1.3× of the numpy closed form",
         t["medium_within_1.3x_closed_form"])
    g = t["medium_geomean_5x_faster_than_jax_best"]
    line("medium cases: geometric mean ≥ 5× faster than JAX's best", g,
         f" (measured: {1 / g['geomean_einderiv_over_jax_best']:.3g}×)"
         if g.get("geomean_einderiv_over_jax_best") else "")
    line("small cases: einderiv evaluate no slower than JAX's best",
         t["small_not_slower_than_jax_best"])
    line("symbolic step (parse + diff + simplify) under 2 ms per case", t["symbolic_under_2ms"])
    line("memory peak of evaluate ≤ 1.2× inputs + result on medium cases 1, 6, 10",
         t["memory_within_1.2x"])
    L.append("")
    notes = list(res["meta"]["notes"])
    for r in res["rows"]:
        for n in r.get("notes", []):
            notes.append(f"case {r['case']} {r['size']}: {n}")
        for k, p in r["peers"].items():
            if "error" in p:
                notes.append(f"case {r['case']} {r['size']} {k}: {p['error']}")
            elif (p.get("cpu_per_wall") or 0) > 1.1:
                notes.append(f"case {r['case']} {r['size']} {k}: used "
                             f"{p['cpu_per_wall']:.2g} cores while timed")
    for s in res["symbolic"]:
        for n in s.get("notes", []):
            notes.append(f"case {s['case']} symbolic: {n}")
        for k in ("einderiv_parse", "einderiv_diff", "sympy_matrix", "sympy_scalar", "sympy_tiny"):
            if k in s and "error" in s[k]:
                notes.append(f"case {s['case']} {k}: {s[k]['error']}")
    if notes:
        L.append("## Notes")
        L.append("")
        L.extend(f"- {n}" for n in notes)
        L.append("")
    return "\n".join(L)


def write_png(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        res["meta"]["notes"].append(f"matplotlib not importable ({_short(e)}); no PNG written.")
        return False
    series = [("einderiv_over_jax_best", "einderiv / JAX best", "tab:blue"),
              ("einderiv_over_closed", "einderiv / numpy closed form", "tab:orange"),
              ("exported_over_closed", "exported numpy / closed form", "tab:green"),
              ("jax_best_over_closed", "JAX best / closed form (headroom)", "tab:gray")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, which in zip(axes, SIZES):
        rows = [r for r in res["rows"] if r["size"] == which]
        x = np.arange(len(rows))
        w = 0.8 / len(series)
        for i, (key, label, color) in enumerate(series):
            vals = [r["ratios"].get(key) or np.nan for r in rows]
            ax.bar(x + (i - 1.5) * w, vals, w, label=label, color=color)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.3, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(x, [str(r["case"]) for r in rows])
        ax.set_xlabel("case")
        ax.set_title(f"{which} sizes (lower is better for einderiv)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("time ratio (log scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"einderiv benchmark, {res['meta']['mode']} run — "
                 "solid line 1×, dashed 1.3× (closed-form target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def meta_info(cfg, jax, torch, ed):
    def ver(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "einderiv", "grammar"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += " + uncommitted changes"
    tg = None
    with contextlib.suppress(Exception):
        import tensorgrad  # noqa: F401
        tg = "installed but not wired in"
    if tg is None:
        NOTES.append("tensorgrad not installed; its column is omitted.")
    blas = None
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info
        blas = [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()]
    return {"mode": "quick" if cfg.quick else "full",
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{cpu}, {os.cpu_count()} CPUs", "python": platform.python_version(),
            "numpy": np.__version__, "jax": jax.__version__,
            "torch": torch.__version__ if torch is not None else None,
            "sympy": ver("sympy"), "opt_einsum": ver("opt_einsum"), "matplotlib": ver("matplotlib"),
            "einderiv_commit": commit, "tensorgrad": tg, "threadpools": blas,
            "pinned_cpu": PINNED_CPU,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "XLA_FLAGS")},
            "timing": {"autorange_target_s": cfg.target, "repeat": cfg.repeat,
                       "sympy_budget_s": cfg.sympy_budget},
            "notes": NOTES}


# ============================================================================ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timing windows (under a minute)")
    ap.add_argument("--cases", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="comma-separated case numbers (default: all ten)")
    ap.add_argument("--sizes", type=lambda s: s.split(","), default=list(SIZES),
                    help="small,medium (default both)")
    ap.add_argument("--all-cores", action="store_true",
                    help="do not pin the process to one CPU (libraries may then run threads)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-sympy", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder")
    ap.add_argument("--prefix", default="latest", help="output file name stem")
    cfg = Config(ap.parse_args(argv))

    t_start = time.perf_counter()
    jax, JNS = load_jax()
    torch, TNS = load_torch() if cfg.use_torch else (None, None)
    if not cfg.use_torch:
        NOTES.append("torch disabled (--no-torch).")
    ed = load_einderiv()
    meta = meta_info(cfg, jax, torch, ed)       # the commit of the einderiv just imported

    rows, sym = [], []
    for case in cfg.cases:
        for which in SIZES:
            if which not in cfg.sizes:
                continue
            t0 = time.perf_counter()
            try:
                row = run_case_size(case, which, cfg, jax, JNS, torch, TNS, ed)
            except Exception as e:
                traceback.print_exc()
                row = {"case": case.id, "name": case.name, "size": which,
                       "dims": case.dims[which], "peers": {}, "ratios": {},
                       "notes": [f"harness error: {_short(e)}"]}
            rows.append(row)
            print(f"[{time.perf_counter() - t_start:6.1f}s] case {case.id:2d} {which:6s} "
                  f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        sym.append(run_symbolic(case, cfg, ed))
        print(f"[{time.perf_counter() - t_start:6.1f}s] case {case.id:2d} symbolic",
              file=sys.stderr, flush=True)

    geo = {}
    for which in SIZES:
        rs = [r for r in rows if r["size"] == which and r.get("ratios")]
        if rs:
            geo[which] = {k: geomean([r["ratios"].get(k) for r in rs])
                          for k in ("einderiv_over_jax_best", "einderiv_over_closed",
                                    "exported_over_closed", "jax_best_over_closed")}
    res = {"meta": meta, "rows": rows, "symbolic": sym, "geomeans": geo}
    res["targets"] = evaluate_targets(rows, sym)
    res["meta"]["total_s"] = time.perf_counter() - t_start

    cfg.out.mkdir(parents=True, exist_ok=True)
    png_ok = write_png(res, cfg.out / f"{cfg.prefix}.png")
    md = write_markdown(res, cfg)
    if png_ok:
        md += f"\n![ratios]({cfg.prefix}.png)\n"
    (cfg.out / f"{cfg.prefix}.md").write_text(md)
    (cfg.out / f"{cfg.prefix}.json").write_text(json.dumps(res, indent=1, default=str))
    print(md)
    print(f"\n[total {res['meta']['total_s']:.1f}s] wrote {cfg.out}/{cfg.prefix}.{{md,json"
          f"{',png' if png_ok else ''}}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
