"""The ``einderiv`` command line: diff, differential, vjp, check and explain.

Prints einderiv's errors as one message (with the caret under the column for a syntax error)
on stderr and exits 2, never with a traceback; ``check`` exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import numpy as np

__all__ = ["main"]

TARGETS = ("text", "latex", "einsum", "matrix", "numpy", "torch", "jax")

EPILOG = """\
examples:
  einderiv diff "C_ik = A_ij B_jk" --wrt A_pq
  einderiv diff "C_ik = A_ij B_jk" --wrt A_pq --layout denominator --to latex
  einderiv diff "L = A_ij X_jk B_ki" --wrt X --to matrix        # ∂L/∂X = Aᵀ Bᵀ
  einderiv diff "L = x_i A_ij x_j" --wrt x_p,x_q                # the Hessian
  einderiv diff model.ein --wrt W --of L --to numpy             # a program from a file
  echo "y_i = tanh(sum_j(W_ij x_j))" | einderiv diff - --wrt W  # "-" reads stdin
  einderiv diff "C_ik = A_ij B_jk" --wrt X_pq --depends A:X,B:X
  einderiv differential "C_ik = A_ij B_jk"
  einderiv vjp "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2" --wrt W
  einderiv check "L = x_i A_ij x_j" --wrt x --sizes i=3,j=3
  einderiv explain "C_ik = A_ij B_jk" --wrt A_pq

exit status: 0 success, 1 check found a mismatch, 2 user error (message on stderr)
"""


class UserError(Exception):
    """A mistake on the command line (not in the formula)."""


# --- argument parsing --------------------------------------------------------------------------

def _split_list(text: str) -> list:
    """Split on commas outside braces: 'x_p,x_q' → ['x_p', 'x_q']; W_{out,in} stays whole."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [p for p in out if p]


def _wrt(args) -> list:
    out = []
    for entry in args.wrt or []:
        out.extend(_split_list(entry))
    if not out:
        raise UserError("--wrt is required: the variable, e.g. --wrt A or --wrt A_pq")
    return out


def _sizes(text):
    if not text:
        return None
    sizes = {}
    for part in _split_list(text):
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip().isdigit():
            raise UserError(f"--sizes takes index=size pairs like i=3,j=4, got '{part}'")
        if name.strip() in sizes:
            raise UserError(f"--sizes gives '{name.strip()}' twice ({name.strip()}="
                            f"{sizes[name.strip()]} and {part.strip()})")
        sizes[name.strip()] = int(value)
    return sizes


def _depends(text):
    if not text:
        return None
    out = {}
    for part in _split_list(text):
        name, colon, var = part.partition(":")
        if not colon or not name.strip() or not var.strip():
            raise UserError(f"--depends takes name:variable pairs like A:X,B:X, got '{part}'")
        if name.strip() in out:
            raise UserError(f"--depends gives '{name.strip()}' twice")
        out[name.strip()] = var.strip()
    return out


def _layout(text):
    if text is None:
        return "numerator"
    if "," in text:
        return [p.strip() for p in text.split(",")]
    return text


def _read_formula(arg: str) -> str:
    # a file saved as "UTF-8 with BOM" starts with U+FEFF, which is not part of the formula
    if arg == "-":
        return sys.stdin.read().removeprefix("\ufeff")
    if os.path.isfile(arg):
        try:
            with open(arg, encoding="utf-8-sig") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read '{arg}': {err}") from None
    if "=" not in arg:
        raise UserError(f"'{arg}' is neither a formula (it has no '=') nor a file")
    return arg


_WRT_HELP = "variable: A, A_pq; repeat it or give a list x_p,x_q for higher order"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="einderiv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Derivatives of index-notation formulas (einsum semantics): "
                    "C_ik = A_ij B_jk sums over j.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"einderiv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, wrt=_WRT_HELP, layout=True, to=True, depends=True,
               sizes="sizes of indices no array carries"):
        p.add_argument("formula", help='the formula or program, a file with it, or "-" for stdin')
        if wrt:
            p.add_argument("--wrt", action="append", metavar="VAR", help=wrt)
        p.add_argument("--of", help="the left-hand name to differentiate (default: the last statement)")
        if layout:
            p.add_argument("--layout", help="numerator (default), denominator, or an index order like pqik")
        if depends:
            p.add_argument("--depends", metavar="A:X,B:X", help="A and B are unknown functions of X")
        p.add_argument("--sizes", metavar="i=3,j=4", help=sizes)
        if to:
            p.add_argument("--to", choices=TARGETS, default="text", help="output form (default: text)")

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("diff", help="the derivative", formatter_class=fmt,
                       epilog='example: einderiv diff "C_ik = A_ij B_jk" --wrt A_pq --to matrix')
    common(p)
    p = sub.add_parser("differential", help="the differential (forward mode: dC = dA B + A dB)",
                       formatter_class=fmt, epilog='example: einderiv differential "C_ik = A_ij B_jk"')
    common(p, wrt=False, layout=False, depends=False)
    p = sub.add_parser("vjp", help="the vector-Jacobian product (a backward pass)", formatter_class=fmt,
                       epilog='example: einderiv vjp "y_i = sum_j(W_ij x_j)" --wrt W,x')
    common(p, wrt="variables without indices: W, x; repeat it or give a list W,x (one result each)",
           layout=False, depends=False)
    p.add_argument("--cotangent", default="G", help="name of the cotangent input (default G)")
    p = sub.add_parser("check", help="compare the derivative with central finite differences",
                       formatter_class=fmt,
                       epilog='example: einderiv check "L = x_i A_ij x_j" --wrt x --sizes i=3,j=3')
    common(p, to=False, depends=False,
           sizes="sizes of the random inputs' indices (default: distinct small sizes 3, 4, 2, 5, ...)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default 0)")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--range", default="0.5,1.5", metavar="LO,HI",
                   help="interval of the random inputs (default 0.5,1.5); choose one inside the "
                        "domain of the formula's functions, e.g. --range 2,3 for log(x_i - 1)")
    p = sub.add_parser("explain", help="the derivation step by step", formatter_class=fmt,
                       epilog='example: einderiv explain "C_ik = A_ij B_jk" --wrt A_pq')
    common(p, to=False)
    return parser


# --- commands ----------------------------------------------------------------------------------

def _render(program, to: str) -> str:
    if to == "text":
        return str(program)
    if to == "latex":
        return program.latex()
    if to == "einsum":
        return "\n".join(_einsum_line(t) for t in program.einsum())
    if to == "matrix":
        from .export.matrix import matrix_form
        return str(matrix_form(program))
    return program.to_source(to).rstrip("\n")


def _einsum_line(t) -> str:
    """``target_ik += 2 * einsum('ab,bc->ac', A, B)  # axes i k``, a function step as
    ``%t2 = tanh(%t1)``, a constant term as ``target += 1``."""
    from .export.text import format_indices
    if not hasattr(t, "subscripts"):
        if t.function == "pow":
            exponent = t.exponent if isinstance(t.exponent, str) else f"{t.exponent:g}"
            return f"{t.target} = {t.operand} ** {exponent}"
        return f"{t.target} = {t.function}({t.operand})"
    factors = [f"{t.coefficient:g}"] if t.coefficient != 1 or not (t.operands or t.sizes) else []
    factors += list(t.sizes)
    if t.operands:
        factors.append(f"einsum('{t.subscripts}', {', '.join(t.operands)})")
    line = f"{t.target}{format_indices(t.target_indices)} += {' * '.join(factors)}"
    notes = []
    if t.operands and t.indices != t.target_indices:
        notes.append("axes " + (" ".join(t.indices) or "none"))
    if t.diagonal:
        notes.append("on the diagonal " + ", ".join(f"{a}={b}" for a, b in t.diagonal))
    return line + ("  # " + "; ".join(notes) if notes else "")


def cmd_diff(args):
    import einderiv as ed
    src = _read_formula(args.formula)
    d = ed.diff(src, wrt=_wrt(args), of=args.of, layout=_layout(args.layout),
                depends=_depends(args.depends), sizes=_sizes(args.sizes))
    print(_render(d, args.to))
    return 0


def cmd_differential(args):
    import einderiv as ed
    src = _read_formula(args.formula)
    print(_render(ed.differential(src, of=args.of, sizes=_sizes(args.sizes)), args.to))
    return 0


def cmd_vjp(args):
    import einderiv as ed
    src = _read_formula(args.formula)
    wrt = _wrt(args)
    p = ed.vjp(src, wrt=wrt[0] if len(wrt) == 1 else wrt, cotangent=args.cotangent, of=args.of,
               sizes=_sizes(args.sizes))
    print(_render(p, args.to))
    return 0


def cmd_explain(args):
    import einderiv as ed
    src = _read_formula(args.formula)
    wrt = _wrt(args) if args.wrt else None
    print(ed.explain(src, wrt=wrt, of=args.of, layout=_layout(args.layout),
                     depends=_depends(args.depends), sizes=_sizes(args.sizes)))
    return 0


def cmd_check(args):
    import einderiv as ed
    from .parser import split_tensor
    src = _read_formula(args.formula)
    sizes = _sizes(args.sizes)
    wrt = _wrt(args)
    layout = _layout(args.layout)
    program = ed.parse(src, sizes=sizes)
    names = [split_tensor(entry)[0] for entry in wrt]
    for name in names:
        if name not in program.inputs:
            raise UserError(f"check differentiates with respect to inputs only; '{name}' is not "
                            f"an input (inputs: {', '.join(program.inputs)})")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{flag} must be a finite number ≥ 0, got {value}")
    low, high = _range(args.range)
    d = ed.diff(src, wrt=wrt, of=args.of, layout=layout, sizes=sizes)
    d_num = ed.diff(src, wrt=wrt, of=args.of, layout="numerator", sizes=sizes)
    shapes = input_shapes(program, sizes)
    if any(0 in s for s in shapes.values()):
        empty = ", ".join(f"{n}{list(s)}" for n, s in shapes.items() if 0 in s)
        raise UserError(f"--sizes gives empty inputs ({empty}): there is nothing to compare")
    _check_input_bytes(shapes)
    _check_fd_work(names[-1], shapes)
    rng = np.random.default_rng(args.seed)
    arrays = {n: rng.uniform(low, high, size=s) for n, s in shapes.items()}
    with np.errstate(all="ignore"):     # a NaN is reported below, with a hint
        return _compare(args, src, wrt, sizes, d, d_num, shapes, arrays)


def _check_input_bytes(shapes):
    """Refuse --sizes whose random float64 inputs would not fit under the memory limit."""
    from .evaluate import _human, memory_limit
    need = sum(math.prod(s) for s in shapes.values()) * 8
    if need > memory_limit():
        shown = ", ".join(f"{n}{list(s)}" for n, s in shapes.items())
        raise UserError(f"--sizes: the random inputs {shown} would need {_human(need)}, above the "
                        f"memory limit of {_human(memory_limit())}; choose smaller sizes")


MAX_FD_ENTRIES = 20_000   # 2·N evaluations of the formula for N perturbed entries


def _check_fd_work(var, shapes):
    """Refuse --sizes under which central differences, two evaluations of the formula per
    entry of ``var`` (the last wrt variable), would run for minutes or hours."""
    n = math.prod(shapes[var])
    if n > MAX_FD_ENTRIES:
        raise UserError(f"--sizes: finite differences would evaluate the formula {2 * n} times "
                        f"({n} entries of {var}{list(shapes[var])}, at most {MAX_FD_ENTRIES}); "
                        f"choose smaller sizes")


def _compare(args, src, wrt, sizes, d, d_num, shapes, arrays):
    """Print the derivative and its agreement with central finite differences."""
    import einderiv as ed
    from .parser import split_tensor
    analytic = np.asarray(d.evaluate(**arrays), dtype=np.float64)
    # finite differences of the (n-1)-th derivative with respect to the n-th variable
    if len(wrt) == 1:
        lower = ed.parse(src, sizes=sizes) if args.of is None else None
        if lower is None:
            lower = _output_program(src, args.of, sizes)
    else:
        lower = ed.diff(src, wrt=wrt[:-1], of=args.of, layout="numerator", sizes=sizes)
    var = split_tensor(wrt[-1])[0] if "_" in wrt[-1] else wrt[-1]
    rounding = {}
    numeric = central_differences(lambda a: np.asarray(lower.evaluate(**a), dtype=np.float64),
                                  arrays, var, rounding=rounding)
    bound = rounding["bound"]
    order = [d_num.indices.index(i) for i in d.indices]
    if numeric.ndim:
        numeric, bound = np.transpose(numeric, order), np.transpose(bound, order)
    if analytic.shape == numeric.shape and not (np.isfinite(analytic).all()
                                                and np.isfinite(numeric).all()):
        raise UserError(f"cannot check: the values are not finite at the random inputs in "
                        f"[{args.range.replace(',', ', ')}], which may be outside the domain of a "
                        "function of the formula (log, sqrt, a power of a negative number); "
                        "choose an interval inside it with --range LO,HI")
    print(d)
    size_text = ", ".join(f"{n}{list(s)}" for n, s in shapes.items())
    print(f"finite differences (central, float64, seed {args.seed}; inputs {size_text}):")
    if analytic.shape != numeric.shape:
        print(f"shape mismatch: derivative {analytic.shape}, finite differences {numeric.shape}")
        return 1
    err = np.abs(analytic - numeric)
    max_abs = float(err.max()) if err.size else 0.0
    scale = float(np.abs(numeric).max()) if numeric.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    # an entry agrees within the tolerances, plus what float64 cannot resolve in the
    # difference of two large values (sum_i(exp(x_i)) over [1, 20]: |f| ~ 1e9, f' ~ 4)
    allowed = args.atol + args.rtol * np.abs(numeric) + ROUNDING_SAFETY * bound
    ok = bool(np.all(err <= allowed))
    print(f"max abs error {max_abs:.3g}, max rel error {max_rel:.3g}: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def _range(text):
    """``--range LO,HI`` as two finite floats with LO < HI."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--range takes two numbers LO,HI, got '{text}'") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UserError(f"--range needs finite LO < HI, got '{text}'")
    return low, high


def _output_program(src, of, sizes):
    import einderiv as ed
    p = ed.parse(src, sizes=sizes)
    names = [st.name for st in p.statements]
    if of not in names:
        raise ed.EinderivError(f"of='{of}' is not defined by the program (it defines: {', '.join(names)})")
    from .program import Program
    upto = p.statements[:names.index(of) + 1]
    q = Program(upto, (of,), p._inputs, p._members, p._sizes, source=src)
    return q


def input_shapes(program, sizes=None) -> dict:
    """A shape for every input: --sizes by index name, else distinct small sizes (3, 4, 2, 5...)."""
    sizes = sizes or {}
    by_dim = {}
    for dim, members in program._members.items():
        for _tensor, _axis, index, _line in members:
            if index in sizes:
                by_dim[dim] = sizes[index]
                break
    fallback = iter([3, 4, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    shapes = {}
    for name, dims in program._inputs.items():
        for dim in dims:
            if dim not in by_dim:
                by_dim[dim] = sizes.get(dim.lstrip("="), None) or next(fallback, 3)
        shapes[name] = tuple(by_dim[dim] for dim in dims)
    return shapes


ROUNDING_SAFETY = 16     # the rounding allowance of check: this many times eps |f| / h


def central_differences(f, arrays, var, eps=1e-6, rounding=None):
    """∂f/∂var by central differences: axes of f's value, then those of var.

    The step is relative to each entry, h = eps |x| (eps where x is 0), so that it stays
    far inside the domain near a pole or an edge (log or sqrt of x = 1e-7). ``rounding``, a
    dict, receives under "bound" the rounding error of each difference, eps_64 (|f(x+h)| +
    |f(x−h)|) / (2h): what float64 cannot resolve when f is large next to its derivative."""
    x = arrays[var]
    base = f(arrays)
    out = np.zeros(base.shape + x.shape)
    bound = np.zeros(base.shape + x.shape)
    for index in np.ndindex(*x.shape):
        h = eps * (abs(float(x[index])) or 1.0)
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        h = float(plus[index] - minus[index]) / 2      # the step float64 actually took
        fp = f({**arrays, var: plus})
        fm = f({**arrays, var: minus})
        out[(Ellipsis,) + index] = (fp - fm) / (2 * h)
        bound[(Ellipsis,) + index] = np.finfo(np.float64).eps * (np.abs(fp) + np.abs(fm)) / (2 * h)
    if rounding is not None:
        rounding["bound"] = bound
    return out


def _attach_negative_range(argv: list) -> list:
    """``--range -1,1`` as ``--range=-1,1``: argparse takes '-1,1' for an option otherwise."""
    out = []
    for arg in argv:
        if out and out[-1] == "--range" and re.match(r"-[\d.]", arg):
            out[-1] = f"--range={arg}"
        else:
            out.append(arg)
    return out


COMMANDS = {"diff": cmd_diff, "differential": cmd_differential, "vjp": cmd_vjp,
            "check": cmd_check, "explain": cmd_explain}


def main(argv=None) -> int:
    from .errors import EinderivError
    for stream in (sys.stdout, sys.stderr):
        # δ, ∂ and ᵀ on a console without them (cp1252) print as '?' instead of failing
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # pragma: no cover - a stream that cannot change
                pass
    parser = build_parser()
    args = parser.parse_args(_attach_negative_range(sys.argv[1:] if argv is None else list(argv)))
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (EinderivError, UserError) as err:
        message = str(err).rstrip("\n") or type(err).__name__
        # the Python hint sizes={'k': n} reads --sizes k=N on the command line
        message = re.sub(r"sizes=\{'(\w+)': n\}", r"--sizes \1=N", message)
        message = message.replace("sizes=", "--sizes ") if "sizes={" in message else message
        print(f"einderiv: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        return 0
    except Exception as err:  # noqa: BLE001 - never a traceback for the user
        if os.environ.get("EINDERIV_DEBUG"):
            raise
        print(f"einderiv: internal error: {type(err).__name__}: {err} "
              f"(a bug in einderiv; set EINDERIV_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
