"""Programs and derivatives: the public objects (``diff``, ``differential`` and ``vjp``, which
build them from other programs, are in transforms.py).

A :class:`Program` is a list of statements with outputs; it evaluates, prints and exports
itself. A :class:`Derivative` is a Program whose output is a derivative, with its layout.
"""

from __future__ import annotations

import sys
from collections import namedtuple

import numpy as np

from .errors import EinderivError, IndexSizeError, InputError
from .evaluate import check_memory_limit, compile_plan, lower, memory_limit, resolve_sizes
from .export.text import format_indices, format_statement
from .semantics import Statement, analyze

__all__ = ["Program", "Derivative", "EinsumTerm", "ElementwiseStep", "parse"]

# target[target_indices] += coefficient · Π sizes · einsum(subscripts, *operands), whose axes
# are ``indices``: broadcast along the other target axes, and written only where the index
# pairs of ``diagonal`` are equal (a Kronecker δ). A constant term has no operands and
# subscripts ''. ``sizes`` are size factors as the text form writes them (size(A,1), sum_j(1)).
EinsumTerm = namedtuple("EinsumTerm", "target subscripts operands coefficient indices "
                        "target_indices diagonal sizes", defaults=((), (), (), ()))
# target = function(operand), or operand ** exponent (function "pow"), elementwise
ElementwiseStep = namedtuple("ElementwiseStep", "target function operand exponent")

_OPTIONS = frozenset(("sizes", "backend", "max_bytes"))     # evaluate's keywords
_BACKENDS = ("numpy", "torch", "jax", "dask")


class Program:
    """A parsed program: statements, inputs and outputs. ``str()`` shows every sum."""

    # inputs of the program a derivative came from that its result does not read: accepted by
    # evaluate and ignored, so one dict of arrays serves the program and its derivatives
    _unused = frozenset()
    # arrays the transform offered that its result turned out not to read: the tangent dA of
    # a differential that simplified to 0, the Jacobian dAdX of a depends= input that
    # cancelled; accepted by evaluate and ignored, as the SPEC's names promise them
    _offered = frozenset()

    def __init__(self, statements, outputs, inputs, members, sizes, labels=None, source=""):
        self.statements = tuple(statements)
        self.outputs = tuple(outputs)
        self._inputs = dict(inputs)           # name -> dimensions of its axes
        self._members = members
        self._sizes = dict(sizes)
        self._labels = dict(labels or {})
        self.source = source
        self._plan = None
        self._compiled = {}
        self._result_keys = None

    # -- description ------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple:
        """Names of the input arrays, in order of first appearance."""
        return tuple(self._inputs)

    @property
    def output(self) -> Statement:
        return self.statement(self.outputs[-1])

    @property
    def indices(self) -> tuple:
        """Axis order of the (last) output."""
        return self.output.indices

    def statement(self, name) -> Statement:
        for st in self.statements:
            if st.name == name:
                return st
        raise EinderivError(f"no statement defines '{name}'")

    def label(self, st: Statement) -> str:
        return self._labels.get(st.name) or st.name + format_indices(st.indices)

    def __str__(self):
        return "\n".join(f"{self.label(st)} = {format_statement(st.expr, st.indices, st.dims)}"
                         for st in self.statements)

    def __repr__(self):
        return f"<{type(self).__name__}: {str(self)!s}>"

    def __eq__(self, other):
        if not isinstance(other, Program):
            return NotImplemented
        return (self.statements == other.statements and self.outputs == other.outputs)

    def __hash__(self):
        return hash((self.statements, self.outputs))

    def _repr_latex_(self):
        return "$$" + self.latex() + "$$"

    def latex(self) -> str:
        from .export.latex import program_latex
        return program_latex(self)

    def einsum(self) -> list:
        """The steps evaluate runs, in order: every term as an ``EinsumTerm`` (a valid
        ``np.einsum`` subscripts string, operand names, coefficient, δ diagonal, size factors),
        and every elementwise function or power that defines a temporary as an
        ``ElementwiseStep``.

        >>> ed.diff("C_ik = A_ij B_jk", wrt="A_pq").einsum()[0].subscripts
        'ab->ba'
        """
        from .evaluate import ExprStep, FuncStep
        out = []
        for step in self._lowered().steps:
            if isinstance(step, ExprStep):
                for term in step.terms:
                    out.append(_einsum_term(step, term, self._members))
            elif isinstance(step, FuncStep):
                out.append(ElementwiseStep(step.target, step.func, step.source, None))
            else:
                out.append(ElementwiseStep(step.target, "pow", step.source, step.exponent))
        return out

    def to_source(self, target="numpy", name="derivative", shapes=None) -> str:
        """Standalone Python source of a function over the inputs (numpy, torch or jax).

        ``shapes={"A": (40, 32), ...}`` writes the numpy contraction paths into the source;
        without it the generated function searches each path once per shapes and reuses it.
        """
        from .export import to_source
        return to_source(self, target, name=name, shapes=shapes)

    # -- evaluation -------------------------------------------------------------------------
    def _lowered(self):
        if self._plan is None:
            self._plan = lower(self.statements, set(self.outputs), self._inputs)
        return self._plan

    def evaluate(self, /, *args, **kwargs):
        """The output's value for these input arrays (a dict for several outputs).

        Arrays by keyword, or as one dict (``evaluate({"A": a, "B": b})``); the options are
        ``sizes={"j": 5}``, ``backend="numpy" | "torch" | "jax" | "dask"`` and ``max_bytes=``.
        A keyword that names an input is that array, even ``backend`` or ``sizes``; pass the
        arrays as a dict to give the option of the same name too.

        >>> ed.parse("C_ik = A_ij B_jk").evaluate(A=np.ones((2, 3)), B=np.ones((3, 4))).shape
        (2, 4)
        """
        if args or not _OPTIONS.isdisjoint(kwargs):
            arrays, sizes, backend, max_bytes = self._arguments(args, kwargs)
        else:
            arrays, sizes, backend, max_bytes = kwargs, None, "numpy", None
        # a plan is reused for the same backend, array types, shapes and dtypes; anything but
        # plain ndarrays on the numpy backend (lists, np.matrix, torch tensors) is converted
        # by _prepare on every call, and every call on the other backends
        compiled = None
        if sizes is None and max_bytes is None:
            try:
                key = (backend, tuple([(k, type(v), v.shape, v.dtype) for k, v in arrays.items()]))
            except AttributeError:
                key = None
            else:
                compiled = self._compiled.get(key)
        else:
            key = None
        if compiled is None:
            arrays, dtype = self._prepare(arrays, backend)
            compiled = self._compile(arrays, sizes, backend, max_bytes, dtype)
            if key is not None and (backend != "numpy"
                                    or all(t is np.ndarray for _, t, _, _ in key[1])):
                self._compiled[key] = compiled
        elif backend == "numpy":
            if compiled.cast:
                arrays = {k: np.asarray(v, dtype=compiled.dtype) for k, v in arrays.items()}
        else:
            arrays, _ = self._prepare(arrays, backend)
        env = compiled(arrays)          # our own dict (keyword arguments): temporaries go in
        if compiled.single is not None and self._result_keys is None:
            return env[compiled.single]     # (a vjp with a wrt list gives a dict, one name too)
        return {self._result_keys.get(name, name) if self._result_keys else name: env[ref]
                for name, (ref, _) in compiled.outputs.items()}

    def _arguments(self, args, kwargs):
        """Split evaluate's arguments into (arrays, sizes, backend, max_bytes)."""
        if len(args) > 1 or (args and not isinstance(args[0], dict)):
            shown = ", ".join(f"{n}=..." for n in self._inputs) or "no arrays"
            raise InputError(f"evaluate takes the arrays by keyword, evaluate({shown}), or as one "
                             f"dict; got {len(args)} positional argument{'s' if len(args) > 1 else ''}")
        if args:
            arrays, options = dict(args[0]), kwargs
            unknown = [k for k in options if k not in _OPTIONS]
            if unknown:
                raise InputError(f"with a dict of arrays the keywords are options "
                                 f"({', '.join(sorted(_OPTIONS))}); got {', '.join(unknown)}: put "
                                 f"every array in the dict")
        else:
            arrays = {k: v for k, v in kwargs.items() if k in self._inputs or k not in _OPTIONS}
            options = {k: v for k, v in kwargs.items() if k not in arrays}
        backend = options.get("backend", "numpy")
        if backend not in _BACKENDS:
            raise EinderivError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, "
                                f"got {backend!r}")
        if backend != "numpy" and backend not in sys.modules:
            import importlib.util
            if importlib.util.find_spec(backend) is None:
                raise EinderivError(f"backend '{backend}' is not installed")
        max_bytes = options.get("max_bytes")
        if max_bytes is not None:
            check_memory_limit(max_bytes)
        return arrays, options.get("sizes"), backend, max_bytes

    def _prepare(self, arrays, backend):
        """The arrays checked and converted to the backend's arrays of one real dtype: the
        numpy result type of the inputs, integers and booleans promoted to float64."""
        missing = [n for n in self._inputs if n not in arrays]
        if missing:
            raise InputError(f"missing input array{'s' if len(missing) > 1 else ''}: "
                             f"{', '.join(missing)} (the inputs are {', '.join(self._inputs)})")
        extra = [n for n in arrays
                 if n not in self._inputs and n not in self._unused and n not in self._offered]
        if extra:
            raise InputError(f"unexpected input{'s' if len(extra) > 1 else ''}: {', '.join(extra)} "
                             f"(the inputs are {', '.join(self._inputs) or 'none'})")
        out, dtypes = {}, []
        # an input only size(A,k) reads: its axes up to the largest k are known, it may have more
        size_only = getattr(getattr(self, "_analysis", None), "size_only", ())
        for name, value in arrays.items():
            if name not in self._inputs:
                continue          # an input of the source program that this result does not read
            value, dtype = _as_backend_array(name, value, backend)
            shape = tuple(value.shape)
            ndim = len(self._inputs[name])
            if name in size_only and len(shape) < ndim:
                raise InputError(f"input '{name}' has {len(shape)} ax{'i' if len(shape) == 1 else 'e'}s "
                                 f"(shape {shape}) but the formula reads the length of its axis "
                                 f"{ndim - 1} (size({name},{ndim - 1}))")
            if len(shape) != ndim and name not in size_only:
                raise InputError(f"input '{name}' has {len(shape)} ax{'i' if len(shape) == 1 else 'e'}s "
                                 f"(shape {shape}) but the formula uses it with {ndim} "
                                 f"ind{'ex' if ndim == 1 else 'ices'}")
            out[name] = value
            # a Python number is weak, as in numpy, torch and jax: float32 arrays with G=1.0
            # stay float32 (its own dtype, float64, would widen them)
            dtypes.append(0.0 if type(arrays[name]) in (bool, int, float) else dtype)
        if backend == "torch":
            out = _one_torch_device(out, arrays)
        dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
        if dtype.kind in "iub":
            dtype = np.dtype(np.float64)
        if backend == "jax" and dtype.itemsize == 8 and not _jax_x64():
            raise InputError(
                f"backend='jax' would compute these {dtype} inputs in float32: jax has 64-bit "
                "numbers turned off. Call jax.config.update('jax_enable_x64', True) first, or "
                "pass float32 arrays")
        if backend != "numpy":
            for (name, value), dt in zip(out.items(), dtypes):
                if dt != dtype:
                    out[name] = _astype(value, dtype, backend)
        return out, dtype

    def _compile(self, arrays, sizes, backend, max_bytes, dtype):
        from .semantics import _check_sizes_arg
        given = _check_sizes_arg(sizes)
        sizes = {**self._sizes, **given}
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        output_dims = {}
        for name in self.outputs:
            st = self.statement(name)
            for index, dim in zip(st.indices, st.dims):
                output_dims.setdefault(index, []).append(dim)
        dim_size = resolve_sizes(self._inputs, self._members, shapes, sizes, output_dims,
                                 strict=set(given))
        unsized = getattr(getattr(self, "_analysis", None), "unsized", None) or {}
        for d in list(self._members) + [d for st in self.statements for d in st.dims]:
            if d not in dim_size:
                shown = next((i for _, _, i, _ in self._members.get(d, ())), None) or next(
                    (st.indices[st.dims.index(d)] for st in self.statements if d in st.dims),
                    d.lstrip("="))
                index, name, line = unsized.get(d, (shown, None, None))
                where = f"line {line}: index '{index}' of '{name}'" if name else f"index '{index}'"
                raise IndexSizeError(f"{where} has no size: no input tensor carries it; "
                                     f"give it with sizes={{'{index}': n}}")
        limit = max_bytes if max_bytes is not None else memory_limit()
        compiled = compile_plan(self._lowered(), dim_size, dtype, backend, limit)
        compiled.cast = backend == "numpy" and any(a.dtype != dtype for a in arrays.values())
        if compiled.cast:  # this first call's arrays; later calls cast in evaluate()
            arrays.update({k: v.astype(dtype) for k, v in arrays.items()})
        return compiled

    def matrix(self):
        """Matrix notation (``Aᵀ Bᵀ``, ``a bᵀ``, ...), or the reason there is none."""
        from .export.matrix import matrix_form
        return matrix_form(self)


def _einsum_term(step, term, members):
    from .evaluate import _subscripts
    from .export.text import format_factor
    from .ir import Size
    order = step.order
    operands = list(term.operands)
    indices = tuple(i for i in order if any(i in idx for _, idx in operands))
    subs = _subscripts(operands, indices) if operands else ""
    sizes = tuple(format_factor(Size(d), set()) for d in term.sizes)
    return EinsumTerm(step.target, subs, tuple(ref for ref, _ in operands), term.coeff,
                      indices, tuple(order), tuple(term.deltas), sizes)


_LIBRARY_BACKENDS = {"torch": "torch", "jax": "jax", "jaxlib": "jax", "dask": "dask"}


def _numpy_input(name, value):
    """``value`` as a numpy array of a real number type, else InputError."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise InputError(f"input '{name}' is a masked array with masked entries, which einderiv "
                         f"would ignore; fill them first ({name}.filled(value))")
    try:
        value = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - any conversion failure is a user error
        backend = _LIBRARY_BACKENDS.get(type(value).__module__.partition(".")[0])
        hint = f" (backend='{backend}' evaluates such arrays as they are)" if backend else ""
        raise InputError(f"input '{name}' is not an array: {err}{hint}") from None
    _check_dtype(name, value.dtype)
    return value


def _check_dtype(name, dtype):
    if dtype.kind == "c":
        raise InputError(f"input '{name}' is complex; einderiv evaluates real arrays only")
    if dtype.kind not in "fiub":
        raise InputError(f"input '{name}' has dtype {dtype}, not a real number type")


def _refuse_bfloat16(name, value):
    """bfloat16 (torch's, or jax's and ml_dtypes') is refused on every backend: numpy, whose
    dtype rules they all follow, has no bfloat16 arithmetic (its einsum refuses the type)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return
    if isinstance(dtype, np.dtype):                  # numpy, jax, ml_dtypes: no str() per call
        bad = dtype.kind == "V" and dtype.name == "bfloat16"
    else:
        bad = str(dtype) == "torch.bfloat16"
    if bad:
        raise _bfloat16_error(name)


def _bfloat16_error(name):
    return InputError(f"input '{name}' is bfloat16, which einderiv does not compute with "
                      f"(numpy, whose dtype rules every backend follows, has no bfloat16); "
                      f"convert it first: {name}.float() for a torch tensor, "
                      f"{name}.astype('float32') for a jax or numpy array")


_TORCH_DTYPES = {}   # torch dtype -> its numpy dtype, for the dtypes einderiv computes with


def _torch_dtype(name, tdtype):
    """numpy's dtype of a torch dtype (torch.float32 -> float32), by name; a dtype that
    passed is remembered (the lookup by name cost about 0.8 µs per input, every call)."""
    dtype = _TORCH_DTYPES.get(tdtype)
    if dtype is not None:
        return dtype
    tname = str(tdtype).replace("torch.", "")
    if tname == "bfloat16":
        raise _bfloat16_error(name)
    try:
        dtype = np.dtype(tname)
    except TypeError:
        raise InputError(f"input '{name}' has dtype {tdtype}, which einderiv does not "
                         "evaluate (float16, float32 and float64 it does)") from None
    _check_dtype(name, dtype)
    _TORCH_DTYPES[tdtype] = dtype
    return dtype


def _as_backend_array(name, value, backend):
    """(the backend's array, its numpy dtype): lists and arrays of other libraries are
    converted, so the result is the backend's array; complex and non-numeric inputs refused."""
    if backend == "torch":
        import torch
        if not isinstance(value, torch.Tensor):
            _refuse_bfloat16(name, value)
            value = _numpy_input(name, value)
            if not value.flags.writeable or any(s < 0 for s in value.strides):
                # a read-only buffer (a jax array's) would make torch warn on every call
                # (einderiv never writes into inputs, but torch cannot know that); a reversed
                # view (x[::-1]) torch cannot hold at all
                value = value.copy()
            value = torch.as_tensor(value)
        return value, _torch_dtype(name, value.dtype)
    _refuse_bfloat16(name, value)
    if backend == "numpy":
        value = _numpy_input(name, value)
        return value, value.dtype
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        if not isinstance(value, jax.Array):
            value = _numpy_input(name, value)
            dtype = value.dtype          # before jax narrows it (64-bit off): checked in _prepare
            value = jnp.asarray(value)
        else:
            dtype = np.dtype(value.dtype)
    else:
        import dask.array as da
        if not isinstance(value, da.Array):
            value = da.asarray(_numpy_input(name, value))
        if any(n != n for n in value.shape):      # NaN: chunk sizes not known yet
            raise InputError(f"input '{name}' is a dask array of unknown shape {value.shape}; "
                             f"call {name}.compute_chunk_sizes() first")
        dtype = np.dtype(value.dtype)
    _check_dtype(name, dtype)
    return value, dtype


def _one_torch_device(out: dict, given: dict) -> dict:
    """The torch inputs on one device, and the arrays converted from numpy or lists moved
    there; tensors given on different devices are an InputError naming them."""
    import torch
    device = converted = None
    for name, value in out.items():
        if not isinstance(given[name], torch.Tensor):
            converted = True
        elif device is None:
            device = value.device
        elif value.device != device:
            listed = ", ".join(f"'{n}' on {v.device}" for n, v in out.items()
                               if isinstance(given[n], torch.Tensor))
            raise InputError(f"the torch inputs are on different devices ({listed}); "
                             f"move them to one device")
    if device is None or not converted:
        return out
    return {n: v if isinstance(given[n], torch.Tensor) else v.to(device) for n, v in out.items()}


def _jax_x64():
    import jax
    return bool(jax.config.read("jax_enable_x64"))


def _astype(value, dtype, backend):
    if backend == "torch":
        import torch
        return value.to(getattr(torch, dtype.name))
    return value.astype(dtype)


class Derivative(Program):
    """A derivative: a Program whose output is ∂of/∂wrt in the chosen layout."""

    def __init__(self, *args, of=None, wrt=(), layout="numerator", **kw):
        super().__init__(*args, **kw)
        self.of = of
        self.wrt = tuple(wrt)
        self.layout = layout


def parse(src: str, sizes=None) -> Program:
    """Parse a program.

    >>> print(ed.parse("C_ik = A_ij B_jk"))
    C_ik = sum_j(A_ij B_jk)
    """
    analysis = analyze(src, sizes)
    prog = Program(analysis.statements, (analysis.statements[-1].name,), analysis.inputs,
                   analysis.members, analysis.sizes, source=src)
    prog._analysis = analysis
    return prog
