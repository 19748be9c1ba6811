"""Stops the run at once, saying what to install, when einderiv's dependencies are missing:
without this, pytest -x stopped at the first module that imports einderiv (tests/test_arrays.py)
with a bare ModuleNotFoundError."""
import importlib.util

import pytest

_NEEDED = ("numpy", "opt_einsum", "lark", "hypothesis")   # run time and the test extra


def pytest_configure(config):
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise pytest.UsageError(
            f"einderiv's tests need {', '.join(missing)}, not installed in this Python: run "
            "pip install \".[test]\" in the checkout first (the README's test command)")
