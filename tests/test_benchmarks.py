"""The benchmark harness (benchmarks/run.py) still runs, checks every peer against JAX, and
writes results the README table can be printed from. Timings are not asserted: the machines
are shared and noisy; only the shape of the report and the agreement of the results are."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("jax")


@pytest.mark.slow
def test_quick_benchmark_runs_and_every_einderiv_result_agrees(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "1,5,8,9",
         "--sizes", "small", "--no-sympy", "--no-torch", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads((tmp_path / "latest.json").read_text())
    assert [r["case"] for r in res["rows"]] == [1, 5, 8, 9]
    for row in res["rows"]:
        for peer in ("einderiv", "exported", "closed"):
            entry = row["peers"][peer]
            # a peer that disagreed with JAX would carry an error and no timing
            assert "error" not in entry, (row["case"], peer, entry)
            assert entry["median_us"] > 0
        assert row["jax_best"]["median_us"] > 0
        for other in ("jax_best", "closed"):            # the alternating-round comparisons
            paired = row["paired"][other]
            assert 0 < paired["q1"] <= paired["median"] <= paired["q3"]
        assert "def derivative(" in row["exported_source"]
        assert "opt_einsum" not in row["exported_source"]      # shapes given: kernels spelled out
    assert res["meta"]["pinned_cpu"] is not None or not hasattr(__import__("os"), "sched_setaffinity")
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"),
                            str(tmp_path / "latest.json")], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "geometric mean, small" in table.stdout
    report = (tmp_path / "latest.md").read_text()
    assert "| 9 | grad of 2-layer MLP loss wrt W1 | small" in report
    assert "## Targets of issue 5" in report
