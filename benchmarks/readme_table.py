#!/usr/bin/env python
"""The README's performance table, printed from a benchmark result file.

    python benchmarks/readme_table.py                      # benchmarks/results/latest.json
    python benchmarks/readme_table.py path/to/result.json

Copies numbers, computes nothing new but the geometric mean of closed form / JAX's best.
"""
import json
import math
import sys
from pathlib import Path


def _us(x):
    return f"{x:.0f} µs" if x >= 10 else f"{x:.1f} µs"


def _paired(p):
    """The alternating-round ratio with its quartiles, ≈ where they fall on both sides of 1."""
    if not p:
        return "–"
    tie = " ≈" if p["q1"] <= 1 <= p["q3"] else ""
    return f"{p['median']:.2g}× ({p['q1']:.2g}–{p['q3']:.2g}){tie}"


def main(path):
    res = json.loads(Path(path).read_text())
    m = res["meta"]
    rows = [r for r in res["rows"] if r["size"] == "medium"]
    print(f"Latest {m['mode']} run: commit {m.get('einderiv_commit')}, {m['date']}, "
          + ("pinned to one CPU" if m.get("pinned_cpu") is not None else "all cores") + ".")
    print()
    print("| # | case | medium size | einderiv `evaluate` | numpy closed form | JAX best "
          "| einderiv / JAX best | paired | einderiv / closed form |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    closed_over_jax = []
    for r in rows:
        p, best = r["peers"], r.get("jax_best") or {}
        ratios = r["ratios"]
        size = ",".join(str(v) for v in r["dims"].values())
        print(f"| {r['case']} | {r['name']} | {size} | {_us(p['einderiv']['median_us'])} "
              f"| {_us(p['closed']['median_us'])} | {_us(best['median_us'])} ({best['label']}) "
              f"| {ratios['einderiv_over_jax_best']:.2g}× | {_paired(r.get('paired', {}).get('jax_best'))} "
              f"| {ratios['einderiv_over_closed']:.3g}× |")
        closed_over_jax.append(p["closed"]["median_us"] / best["median_us"])
    g = res["geomeans"]
    med, sml = g.get("medium") or {}, g.get("small") or {}
    if med.get("einderiv_over_jax_best"):
        print(f"| | **geometric mean, medium** | | | | | **{med['einderiv_over_jax_best']:.2f}×** "
              f"({1 / med['einderiv_over_jax_best']:.1f}× faster) | | **{med['einderiv_over_closed']:.2f}×** |")
    if sml.get("einderiv_over_jax_best"):
        print(f"| | geometric mean, small | | | | | {sml['einderiv_over_jax_best']:.2f}× "
              f"| | {sml['einderiv_over_closed']:.2f}× |")
    if not closed_over_jax:
        return
    gm = math.exp(sum(map(math.log, closed_over_jax)) / len(closed_over_jax))
    print()
    print(f"Closed form vs JAX best, geometric mean over the medium cases: {1 / gm:.2f}× faster "
          "— about the most any numpy evaluator can gain over JAX here.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
