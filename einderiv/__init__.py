"""einderiv: an index-notation derivative compiler.

    >>> import einderiv as ed
    >>> print(ed.diff("C_ik = A_ij B_jk", wrt="A_pq"))
    dC_ik/dA_pq = δ_ip B_qk
"""

import sys as _sys

from .errors import EinderivError, EinderivSyntaxError, IndexSizeError, InputError
from .evaluate import memory_limit, set_memory_limit
from .program import Derivative, EinsumTerm, ElementwiseStep, Program, parse
from .transforms import diff, differential, vjp
from .explain import explain, matrix_form

__all__ = [
    "parse", "diff", "differential", "vjp", "explain", "matrix_form", "Program", "Derivative", "EinsumTerm", "ElementwiseStep",
    "EinderivError", "EinderivSyntaxError", "IndexSizeError", "InputError",
    "set_memory_limit", "memory_limit", "__version__",
]

__version__ = "0.1.0"

# nested formulas recurse once per level; MAX_DEPTH in the parser keeps this bound safe
if _sys.getrecursionlimit() < 10000:
    _sys.setrecursionlimit(10000)
