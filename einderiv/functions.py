"""The elementwise functions: value (per array library), export template and derivative.

One table, one entry per function. ``derivative(u)`` builds f'(u) as an expression in u,
so higher derivatives come from the same rules. ``step`` and ``sign`` are the derivatives
of ``relu`` and ``abs`` (zero derivative, taken as 0 at the kink).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from . import simplify as S

__all__ = ["FUNCTIONS", "USER_FUNCTIONS", "Function"]


@dataclass(frozen=True)
class Function:
    name: str
    numpy: Callable                 # numpy ufunc-like
    templates: dict                 # target -> source template with {x}; module aliases np/torch/jnp
    derivative: Callable            # u (Expr) -> f'(u) (Expr)
    latex: str


def _sigmoid(x):
    """σ(x) = 1 / (1 + e^-x) = e^min(x,0) / (1 + e^-|x|): no exponential above 1, so nothing
    overflows and σ keeps its relative precision far below zero (σ(-40) = 4.2e-18, which
    0.5 (1 + tanh(x/2)) rounds to 0)."""
    return np.exp(np.minimum(x, 0.0)) / (1.0 + np.exp(-np.abs(x)))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _relu(x):
    return np.maximum(x, 0.0)


def _step(x):
    return np.heaviside(x, 0.0)


def _f(name, u):
    return S.func(name, u)


def _pow(u, n):
    return S.power(u, S.const(n))


def _one_minus(e):
    return S.add(S.const(1, e.dim_map), S.scale(e, -1))


FUNCTIONS: dict[str, Function] = {}


def deffunc(name, numpy_fn, numpy_t, torch_t, jax_t, derivative, latex=None):
    FUNCTIONS[name] = Function(name, numpy_fn,
                               {"numpy": numpy_t, "torch": torch_t, "jax": jax_t},
                               derivative, latex or f"\\operatorname{{{name}}}")


# name      numpy      numpy source               torch source                         jax source                     f'(u)
deffunc("exp", np.exp, "np.exp({x})", "torch.exp({x})", "jnp.exp({x})", lambda u: _f("exp", u), r"\exp")
deffunc("log", np.log, "np.log({x})", "torch.log({x})", "jnp.log({x})", lambda u: _pow(u, -1), r"\log")
deffunc("sqrt", np.sqrt, "np.sqrt({x})", "torch.sqrt({x})", "jnp.sqrt({x})",
        lambda u: S.scale(_pow(u, Fraction(-1, 2)), Fraction(1, 2)), r"\sqrt")
deffunc("sin", np.sin, "np.sin({x})", "torch.sin({x})", "jnp.sin({x})", lambda u: _f("cos", u), r"\sin")
deffunc("cos", np.cos, "np.cos({x})", "torch.cos({x})", "jnp.cos({x})",
        lambda u: S.scale(_f("sin", u), -1), r"\cos")
deffunc("tan", np.tan, "np.tan({x})", "torch.tan({x})", "jnp.tan({x})",
        lambda u: S.add(S.const(1, u.dim_map), _pow(_f("tan", u), 2)), r"\tan")
deffunc("tanh", np.tanh, "np.tanh({x})", "torch.tanh({x})", "jnp.tanh({x})",
        lambda u: _one_minus(_pow(_f("tanh", u), 2)), r"\tanh")
deffunc("sinh", np.sinh, "np.sinh({x})", "torch.sinh({x})", "jnp.sinh({x})", lambda u: _f("cosh", u), r"\sinh")
deffunc("cosh", np.cosh, "np.cosh({x})", "torch.cosh({x})", "jnp.cosh({x})", lambda u: _f("sinh", u), r"\cosh")
deffunc("sigmoid", _sigmoid, "np.exp(np.minimum({x}, 0.0)) / (1.0 + np.exp(-np.abs({x})))",
        "torch.sigmoid({x})", "jax.nn.sigmoid({x})",
        lambda u: S.add(_f("sigmoid", u), S.scale(_pow(_f("sigmoid", u), 2), -1)), r"\sigma")
deffunc("softplus", _softplus, "np.logaddexp(0.0, {x})",
        "torch.logaddexp({x}, torch.zeros_like({x}))", "jnp.logaddexp(0.0, {x})",
        lambda u: _f("sigmoid", u))
deffunc("relu", _relu, "np.maximum({x}, 0.0)", "torch.relu({x})", "jnp.maximum({x}, 0.0)",
        lambda u: _f("step", u))
deffunc("abs", np.abs, "np.abs({x})", "torch.abs({x})", "jnp.abs({x})", lambda u: _f("sign", u))
deffunc("step", _step, "np.heaviside({x}, 0.0)", "torch.heaviside({x}, torch.zeros_like({x}))",
        "jnp.heaviside({x}, 0.0)", lambda u: S.zero(u.dim_map))
deffunc("sign", np.sign, "np.sign({x})", "torch.sign({x})", "jnp.sign({x})",
        lambda u: S.zero(u.dim_map))

# the functions of the language (SPEC §1); step and sign are accepted too, as derivatives print them
USER_FUNCTIONS = tuple(FUNCTIONS)


def backend_function(name: str, backend: str):
    """The callable computing ``name`` elementwise for an array library."""
    if backend == "numpy":
        return FUNCTIONS[name].numpy
    if backend == "torch":
        import torch
        table = {
            "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "sin": torch.sin,
            "cos": torch.cos, "tan": torch.tan, "tanh": torch.tanh, "sinh": torch.sinh,
            "cosh": torch.cosh, "sigmoid": torch.sigmoid, "relu": torch.relu, "abs": torch.abs,
            "sign": torch.sign,
            "softplus": lambda x: torch.logaddexp(x, torch.zeros_like(x)),
            "step": lambda x: torch.heaviside(x, torch.zeros_like(x)),
        }
        return table[name]
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        table = {
            "exp": jnp.exp, "log": jnp.log, "sqrt": jnp.sqrt, "sin": jnp.sin, "cos": jnp.cos,
            "tan": jnp.tan, "tanh": jnp.tanh, "sinh": jnp.sinh, "cosh": jnp.cosh,
            "sigmoid": jax.nn.sigmoid, "relu": lambda x: jnp.maximum(x, 0.0), "abs": jnp.abs,
            "sign": jnp.sign, "softplus": lambda x: jnp.logaddexp(0.0, x),
            "step": lambda x: jnp.heaviside(x, 0.0),
        }
        return table[name]
    # dask and other numpy-protocol libraries: numpy's ufuncs dispatch to them
    return FUNCTIONS[name].numpy
