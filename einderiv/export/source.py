"""Lowered plan → standalone Python source for numpy (with opt_einsum), torch or jax.

The generated function follows the same plan as ``evaluate``: one contraction per term,
temporaries for functions and powers, δ terms added into a diagonal view of the output.
User text appears in the source only as identifiers the grammar has already validated.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
import unicodedata
from typing import NamedTuple

import opt_einsum as oe

from ..errors import EinderivError
from ..evaluate import _LETTERS, ExprStep, FuncStep, PowerStep, _subscripts, delta_classes
from ..functions import FUNCTIONS
from ..kernels import GRAM_HELPER, contraction_source, gram_source, smallest_operand

__all__ = ["generate"]

_MODULES = {"np", "oe", "torch", "jax", "jnp", "math", "dtype", "device", "out", "view", "_v", "_WIDE"}
# the generated code calls builtins (str, getattr, next, ValueError, ...): a program name
# equal to one of them is written with a trailing underscore, never shadowing it
_BUILTINS = frozenset(dir(builtins))

_HEADER = {
    "numpy": "import numpy as np\nimport opt_einsum as oe\n",
    "torch": "import numpy as np\nimport torch\n",
    "jax": "import jax\nimport jax.numpy as jnp\n\n_WIDE = ('float64', 'int64', 'uint64')\n",
}

_CONTRACT = '''
_PATHS = {}


def _contract(subscripts, *operands):
    """opt_einsum with the contraction path searched once per shapes, then reused."""
    key = (subscripts,) + tuple(op.shape for op in operands)
    expression = _PATHS.get(key)
    if expression is None:
        expression = _PATHS[key] = oe.contract_expression(subscripts, *key[1:])
    return expression(*operands)
'''

_TENSOR = '''
def _tensor(x, device):
    """A numpy array or list as a torch tensor on `device` (a reversed view such as x[::-1]
    copied first: torch cannot hold negative strides)."""
    x = np.asarray(x)
    if min(x.strides, default=0) < 0:
        x = x.copy()
    return torch.as_tensor(x, device=device)
'''

_DIAG = {
    "torch": '''
def _diagonal(out, groups):
    """A view of `out` where the axes of each group run together."""
    shape = [out.shape[g[0]] for g in groups]
    strides = [sum(out.stride(k) for k in g) for g in groups]
    return out.as_strided(shape, strides, out.storage_offset())
''',
    "jax": '''
def _add_diagonal(out, value, groups):
    """out + value written along the diagonal where the axes of each group run together."""
    index = [None] * out.ndim
    for position, g in enumerate(groups):
        n = out.shape[g[0]]
        shape = [1] * len(groups)
        shape[position] = n
        for k in g:
            index[k] = jnp.arange(n).reshape(shape)
    return out.at[tuple(index)].add(value)
''',
}


def _ident(name: str, taken: set) -> str:
    """A safe Python identifier for a program name (inputs keep theirs where possible).
    Python reads identifiers in NFKC form (the ligature 'ﬁ' is 'fi', a bold '𝐡' is 'h'), so
    names are compared, and written, in that form."""
    name = unicodedata.normalize("NFKC", name)
    base = name if name.isidentifier() else "".join(c if (c.isalnum() or c == "_") else "_" for c in name)
    base = base.strip("_") or "t"
    if not base.isidentifier():
        base = "t_" + base
    if keyword.iskeyword(base) or base in _MODULES or base in _BUILTINS or base.startswith("_"):
        base = base + "_"
    candidate = base
    n = 1
    while candidate in taken:
        candidate = f"{base}{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _carried(dim, input_dims) -> bool:
    return any(dim in dims for dims in input_dims.values())


def _shape_expr(dim, names, input_dims, program):
    for name, dims in input_dims.items():
        if dim in dims:
            return f"{names[name]}.shape[{dims.index(dim)}]"
    if dim.startswith("="):
        index = dim[1:]
        if index in program._sizes:
            return str(program._sizes[index])
        return f"size_{index}"
    raise EinderivError(f"no input carries dimension {dim}")  # pragma: no cover


# per target: an input as the library's array, the input as numpy.result_type reads it
# (torch's dtype by its numpy name: torch.float32 -> 'float32'), and the cast to `dtype`
_AS_ARRAY = {"numpy": "{n} = np.asarray({n})",
             "torch": "{n} = {n} if torch.is_tensor({n}) else _tensor({n}, device)",
             "jax": "{n} = jnp.asarray({n})"}
_TYPE_OF = {"numpy": "{n}", "torch": "str({n}.dtype).removeprefix('torch.')", "jax": "{n}"}
_IS_BFLOAT16 = {"numpy": "{n}.dtype.kind == 'V'", "torch": "{n}.dtype is torch.bfloat16",
                "jax": "{n}.dtype.kind == 'V'"}
_CAST = {"numpy": "{n} = {n}.astype(dtype, copy=False)", "torch": "{n} = {n}.to(dtype)",
         "jax": "{n} = {n}.astype(dtype)"}


def _input_prologue(inputs, target):
    """The lines that give every input one real dtype, as ``evaluate`` does, by numpy's rule
    on every target: dtype = result_type(inputs, 1.0), so integers and booleans become
    float64, float32 and float16 are kept, int32 with float32 is float64; complex and
    bfloat16 (which numpy cannot compute with) refused."""
    refuse = "complex inputs: this function computes with real arrays"
    bfloat16 = ("bfloat16 inputs: numpy, whose dtype rules this function follows, has no "
                "bfloat16; convert them first (x.float() for a torch tensor, "
                "x.astype('float32') for a jax or numpy array)")
    lines = []
    if target == "jax":
        wide = " or ".join(f"str(getattr({n}, 'dtype', '')) in _WIDE" for n in inputs)
        lines += [f"if ({wide}) and not jax.config.read('jax_enable_x64'):",
                  "    raise TypeError('64-bit inputs while jax has 64-bit numbers off: call "
                  "jax.config.update(\"jax_enable_x64\", True) first')"]
    if target == "torch":
        # the device of the tensors given: arrays converted and the zeros made go there too
        lines.append(f"device = next((v.device for v in ({', '.join(inputs)},) if torch.is_tensor(v)), None)")
    lines += [_AS_ARRAY[target].format(n=n) for n in inputs]
    # one attribute test per input (str(dtype) would cost about 3 µs each, every call)
    lines += [f"if {' or '.join(_IS_BFLOAT16[target].format(n=n) for n in inputs)}:",
              f"    raise TypeError({bfloat16!r})"]
    listed = ", ".join(_TYPE_OF[target].format(n=n) for n in inputs)
    lines += [f"dtype = {'jnp' if target == 'jax' else 'np'}.result_type({listed}, 1.0)",
              "if dtype.kind == 'c':", f"    raise TypeError({refuse!r})"]
    if target == "torch":
        lines.append("dtype = getattr(torch, dtype.name)")
    return lines + [_CAST[target].format(n=n) for n in inputs]


def generate(program, target: str, name: str, shapes=None) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise EinderivError(f"{name!r} is not a valid Python function name")
    if name in _BUILTINS or name in _MODULES:
        raise EinderivError(f"name={name!r} would hide Python's or the generated code's own "
                            f"'{name}' inside the function; choose another name")
    plan = program._lowered()
    taken = set(_MODULES) | {name, "_diagonal", "_add_diagonal", "_gram", "_contract", "_PATHS", "_tensor"}
    names = {}
    for inp in plan.inputs:
        names[inp] = _ident(inp, taken)
    size_params = sorted({d[1:] for st in program.statements for d in st.dims
                          if d.startswith("=") and d[1:] not in program._sizes}
                         | {d[1:] for ds in plan.input_dims.values() for d in ds if d.startswith("=")}
                         | {d[1:] for step in plan.steps if isinstance(step, ExprStep)
                            for term in step.terms for d in term.sizes
                            if d.startswith("=") and not _carried(d, plan.input_dims)}
                         - set(program._sizes))
    # fixed contraction paths when shapes are known
    dim_size = None
    if shapes is not None:
        from ..evaluate import resolve_sizes
        _check_shapes(shapes, plan.input_dims)
        dim_size = resolve_sizes(plan.input_dims, program._members,
                                 {k: tuple(v) for k, v in shapes.items()}, program._sizes)

    lines = _input_prologue([names[i] for i in plan.inputs], target) if plan.inputs else []
    if dim_size is not None and target == "numpy" and plan.inputs:
        lines += _shape_guard(plan.inputs, names, shapes)
    helpers = set()
    temp_count = 0
    for step in plan.steps:
        if step.target not in names:
            temp_count += 1
            label = step.target if not step.target.startswith(("%", "∂", "↦")) else f"t{temp_count}"
            names[step.target] = _ident(label, taken)
        tgt = names[step.target]
        if isinstance(step, FuncStep):
            lines.append(f"{tgt} = " + FUNCTIONS[step.func].templates[target].format(x=names[step.source]))
        elif isinstance(step, PowerStep):
            src = names[step.source]
            if isinstance(step.exponent, str):
                lines.append(f"{tgt} = {src} ** {names[step.exponent]}")
            elif step.exponent == 1.0:
                lines.append(f"{tgt} = {src}")
            elif step.exponent == 2.0:
                lines.append(f"{tgt} = {src} * {src}")
            else:
                lines.append(f"{tgt} = {src} ** {step.exponent!r}")
        elif isinstance(step, ExprStep):
            _expr_lines(step, tgt, names, plan, program, target, dim_size, lines, helpers)
    outs = list(plan.outputs.items())
    if len(outs) == 1 and program._result_keys is None:
        lines.append(f"return {names[outs[0][1][0]]}")
    else:
        keys = program._result_keys or {}
        items = ", ".join(f"{keys.get(n, n)!r}: {names[ref]}" for n, (ref, _) in outs)
        lines.append(f"return {{{items}}}")

    params = [names[i] for i in plan.inputs] + [f"size_{s}" for s in size_params]
    doc = _docstring(program, plan, names)
    body = "\n".join("    " + line for line in lines)
    head = _HEADER[target]
    extra = _DIAG[target] if "diagonal" in helpers else ""
    if target == "torch":
        extra = _TENSOR + extra
    if "gram" in helpers:
        extra = "\n\n" + GRAM_HELPER + extra
    if target == "numpy" and dim_size is None and "_contract(" in body:
        extra = _CONTRACT + extra
    if target == "numpy" and "oe." not in body and "_contract(" not in body:
        head = head.replace("import opt_einsum as oe\n", "")
    return (f"{head}{extra}\n\ndef {name}({', '.join(params)}):\n{doc}{body}\n")


def _shape_guard(inputs, names, shapes):
    """Code written for ``shapes=`` reshapes with those sizes: other shapes are refused with
    a message (they could otherwise reshape without error into a wrong result)."""
    fixed = {n: tuple(int(s) for s in shapes[n]) for n in inputs}
    test = " or ".join(f"{names[n]}.shape != {fixed[n]!r}" for n in inputs)
    got = ", ".join(f"{n} {{{names[n]}.shape}}" for n in inputs)
    shown = repr(fixed).replace("{", "{{").replace("}", "}}")
    message = (f"this function was exported for shapes={shown}; got {got}: export it again "
               "with these shapes, or without shapes= for any shapes")
    return [f"if {test}:", f"    raise ValueError(f{message!r})"]


def _check_shapes(shapes, input_dims):
    """shapes= gives every input a shape with one length per axis of the formula."""
    if not isinstance(shapes, dict):
        raise EinderivError(f"shapes must be a dict like {{'A': (40, 32)}}, got {type(shapes).__name__}")
    missing = [n for n in input_dims if n not in shapes]
    if missing:
        raise EinderivError(f"shapes= gives no shape for {', '.join(missing)} (the inputs are "
                            f"{', '.join(input_dims)})")
    for name, dims in input_dims.items():
        shape = shapes[name]
        try:
            # whole numbers only: int() would read 2.5 as 2 and the string "23" as (2, 3)
            if isinstance(shape, (str, bytes)) or any(isinstance(n, bool) for n in shape):
                raise TypeError
            shape = tuple(operator.index(n) for n in shape)
        except TypeError:
            raise EinderivError(f"shapes['{name}'] must be a tuple of whole-number sizes, "
                                f"got {shape!r}") from None
        if len(shape) != len(dims) or any(n < 0 for n in shape):
            raise EinderivError(f"shapes['{name}'] is {shape}, but the formula uses {name} with "
                                f"{len(dims)} ind{'ex' if len(dims) == 1 else 'ices'}")


def _docstring(program, plan, names):
    text = str(program).replace("\\", "\\\\").replace('"""', "'''")
    lines = ['    """' + text.splitlines()[0]]
    for extra in text.splitlines()[1:]:
        lines.append("    " + extra)
    lines.append("")
    lines.append("    Inputs (axes by index):")
    for inp, dims in plan.input_dims.items():
        axes = ", ".join(_axis_label(program, inp, k, d) for k, d in enumerate(dims))
        lines.append(f"        {names[inp]}[{axes}]")
    for out, (ref, axes) in plan.outputs.items():
        st = program.statement(out)
        lines.append(f"    Returns {program.label(st).split(' = ')[0]} with axes ({', '.join(axes)}).")
    lines.append('    """')
    return "\n".join(lines) + "\n"


def _axis_label(program, tensor, axis, dim):
    for t, a, index, _ in program._members.get(dim, ()):
        if t == tensor and a == axis:
            return index
    return f"axis{axis}"


def _contract_call(subs, operands, target, dim_size, shapes_of):
    args = ", ".join(operands)
    if target == "numpy":
        if dim_size is not None:
            # shapes known: the same steps evaluate runs (transposes, matmuls), written out
            path, _ = oe.contract_path(subs, *shapes_of, shapes=True, optimize="auto")
            return contraction_source(subs, shapes_of, path, list(operands))
        return f"_contract({subs!r}, {args})"
    if target == "torch":
        return f"torch.einsum({subs!r}, {args})"
    return f"jnp.einsum({subs!r}, {args})"


class _Piece(NamedTuple):
    """One term of a sum, as source."""
    value: str               # the expression
    groups: object           # output axes of each δ class (None without δ)
    full: bool               # the value has every output axis
    sign: int                # -1 where a lone minus became "-=" / np.negative
    fresh: bool              # the expression builds a new array (safe to update in place)


def _expr_lines(step: ExprStep, tgt, names, plan, program, target, dim_size, lines, helpers):
    """Append the lines computing ``step`` into ``tgt``; ``helpers`` collects the helper
    functions the module will need ("gram", "diagonal")."""
    order = step.order
    shape = "(" + ", ".join(_shape_expr(d, names, plan.input_dims, program) for d in step.dims) + ("," if len(step.dims) == 1 else "") + ")"
    zeros = {"numpy": f"np.zeros({shape}, dtype=dtype)",
             "torch": f"torch.zeros({shape}, dtype=dtype, device=device)",
             "jax": f"jnp.zeros({shape}, dtype=dtype)"}[target]
    pieces = []
    for term in step.terms:
        coeff = term.coeff
        sign = -1 if coeff == -1.0 else 1      # a lone minus becomes "-=" below
        factor_text = [repr(coeff)] if coeff not in (1.0, -1.0) else []
        for d in term.sizes:
            factor_text.append(_shape_expr(d, names, plan.input_dims, program))
        if term.deltas:
            rep, view_axes, groups = delta_classes(order, term.deltas)
            operands = [(ref, tuple(rep.get(i, i) for i in idx)) for ref, idx in term.operands]
        else:
            view_axes, groups, operands = order, None, term.operands
        present = {i for _, idx in operands for i in idx}
        kept = tuple(i for i in view_axes if i in present)
        if operands:
            subs = _subscripts(operands, kept)
            shapes_of = None
            if dim_size is not None:
                shapes_of = [tuple(dim_size[d] for d in _dims_of(ref, plan, program)) for ref, _ in operands]
            args = [names[r] for r, _ in operands]
            value = None
            if target == "numpy" and dim_size is not None and len(operands) >= 2:
                # as evaluate does, with the shapes fixed: Xᵀ diag(w) X as one symmetric
                # product, or the coefficient (sizes included) on the smallest operand
                total = coeff * math.prod(dim_size[d] for d in term.sizes)
                value = gram_source(subs, shapes_of, tuple(r for r, _ in operands), total, args)
                if value is not None:
                    factor_text, sign = [], 1
                    helpers.add("gram")
                elif total != 1.0:
                    k = smallest_operand(shapes_of, math.prod(dim_size[step.dims[order.index(i)]]
                                                              for i in kept))
                    if k is not None:
                        args[k] = f"({total!r} * {args[k]})"
                        factor_text, sign = [], 1
            if value is None:
                value = _contract_call(subs, args, target, dim_size, shapes_of)
            if len(operands) == 1 and len(set(subs.split("->")[0])) == len(subs.split("->")[0]) and sorted(subs.split("->")[0]) == sorted(subs.split("->")[1]):
                ins, outs = subs.split("->")
                perm = tuple(ins.index(c) for c in outs)
                src = names[operands[0][0]]
                if perm == tuple(range(len(perm))):
                    value = src
                elif target == "torch":
                    value = f"{src}.permute{perm}"
                elif target == "jax":
                    value = f"jnp.transpose({src}, {perm})"
                else:
                    value = f"{src}.transpose({perm})"
        else:
            value = None
        if factor_text:
            value = " * ".join(factor_text + ([value] if value else []))
        elif value is None:
            value = "1.0"
        if len(kept) != len(view_axes):
            index = ", ".join(":" if i in present else "None" for i in view_axes)
            value = f"({value})[{index}]" if operands else value
        full = len(kept) == len(view_axes) and bool(operands)
        # a product or a scaled value is a new array; a lone operand (maybe transposed) is not
        fresh = full and (len(operands) >= 2 or bool(factor_text))
        pieces.append(_Piece(value, groups, full, sign, fresh))
    if len(pieces) == 1 and pieces[0].groups is None and pieces[0].full:
        value, sign = pieces[0].value, pieces[0].sign
        # -1.0 * (...): a float result even for integer or boolean inputs, as evaluate gives
        lines.append(f"{tgt} = {value}" if sign > 0 else f"{tgt} = -1.0 * ({value})")
        return
    if "dtype = " not in "\n".join(lines):
        # no inputs (the input prologue defines dtype otherwise): a program of constants
        lines.insert(0, {"numpy": "dtype = np.result_type(1.0)", "torch": "dtype, device = torch.float64, None",
                         "jax": "dtype = jnp.result_type(1.0)"}[target])
    if (target == "numpy" and len(pieces) == 2 and all(p.groups is None and p.full for p in pieces)
            and pieces[0].sign > 0):
        # a + b or a - b in one pass
        a, b = pieces
        ufunc = "np.add" if b.sign > 0 else "np.subtract"
        lines.append(f"{tgt} = {ufunc}({a.value}, {b.value}, dtype=dtype)")
        return
    start = None
    if target == "numpy":
        # the output starts from a full term (a new array is used as it is) instead of zeros
        start = next((k for k, p in enumerate(pieces) if p.groups is None and p.full and p.fresh),
                     next((k for k, p in enumerate(pieces) if p.groups is None and p.full), None))
    if start is None:
        lines.append(f"{tgt} = {zeros}")
    else:
        value, _, _, sign, fresh = pieces[start]
        if sign < 0:
            lines.append(f"{tgt} = np.negative({value}, dtype=dtype)")
        elif fresh:
            lines.append(f"{tgt} = np.asarray({value}, dtype=dtype)")
        else:
            lines.append(f"{tgt} = np.array({value}, dtype=dtype)")
    for k, (value, groups, _, sign, _) in enumerate(pieces):
        if k == start:
            continue
        op = "+" if sign > 0 else "-"
        if groups is None:
            if target == "jax":
                lines.append(f"{tgt} = {tgt} {op} {value}")
            else:
                lines.append(f"{tgt} {op}= {value}")
        else:
            if target != "numpy":
                helpers.add("diagonal")
            if target == "jax":
                lines.append(f"{tgt} = _add_diagonal({tgt}, {value if sign > 0 else '-1.0 * (' + value + ')'}, {groups!r})")
            else:
                lines.append(f"{_diagonal_view(tgt, groups, len(order), target)}[...] {op}= {value}")


def _diagonal_view(tgt, groups, ndim, target):
    """The writable view of ``tgt`` where the axes of each group run together: numpy's
    ``np.einsum('ikiq->ikq', out)`` (a view, writable since numpy 1.10); torch's as_strided."""
    if target != "numpy":
        return f"_diagonal({tgt}, {groups!r})"
    letter = {}
    for g, axes in enumerate(groups):
        for k in axes:
            letter[k] = _LETTERS[g]
    sub = "".join(letter[k] for k in range(ndim)) + "->" + _LETTERS[:len(groups)]
    return f"np.einsum({sub!r}, {tgt})"


def _dims_of(ref, plan, program):
    if ref in plan.input_dims:
        return plan.input_dims[ref]
    for step in plan.steps:
        if getattr(step, "target", None) == ref:
            if isinstance(step, ExprStep):
                # axes of an ExprStep follow its order
                return step.dims
            return _dims_of(step.source, plan, program)
    raise EinderivError(f"unknown reference {ref}")  # pragma: no cover

