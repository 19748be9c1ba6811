"""Hostile and broken input: every call returns a result or raises ``ed.EinderivError``
with a message — never another exception, never a RecursionError, never a hang.

Counts are fixed and seeded (``N_*``); ``BAD_INPUTS_PER_RUN`` is the number of bad inputs
tried in one run (reported in docs/reliability.md).
"""

from __future__ import annotations

import random
import string
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

import einderiv as ed
from strategies import generate_program

N_RANDOM_TEXT = 600
N_MUTATIONS = 1500
N_FUZZ_DIFF = 300
TIME_BOUND = 10.0          # seconds for any single hostile call
BIG_TIME_BOUND = 60.0      # 10,000-term sums and 1,000-deep nesting

_SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=False,
                 phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_ALPHABET = (string.ascii_letters + string.digits + " _{}(),;=+-*/^#.\n\t" + "δΣ∂é\x00\x07\x1b\r\x0b\x0c")
_FRAGMENTS = ["A_ij", "B_jk", "x_i", "sum_j(", ")", "(", "exp(", "log(", "δ_ij", "delta_ij",
              "^", "^(-1)", "=", "; ", "\n", "_{", "}", ",", "1e-3", "0.5", " ", "*", "/", "+", "-",
              "y_{out,in}", "__import__('os')", "lambda", "\\", "\"", "'", "𝛼", "\ufeff"]


def _attempt(fn, *args, bound=TIME_BOUND, **kwargs):
    """Call ``fn``; the call may succeed or raise EinderivError with a message; anything
    else (including RecursionError) fails the test."""
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        outcome = "ok"
    except RecursionError as e:          # before EinderivError: it must never surface
        pytest.fail(f"RecursionError for {args!r:.300}: {e}")
    except ed.EinderivError as e:
        msg = str(e)
        assert msg.strip(), f"empty message for {args!r:.300}"
        result, outcome = e, "error"
    elapsed = time.perf_counter() - t0
    assert elapsed < bound, f"{fn.__name__} took {elapsed:.1f} s on {args!r:.300}"
    return outcome, result


def _pipeline(text):
    """parse; if that works, str() and a derivative wrt each input, and evaluate."""
    outcome, prog = _attempt(ed.parse, text)
    if outcome != "ok":
        return outcome
    str(prog)
    for name in prog.inputs[:2]:
        _attempt(ed.diff, text, wrt=name)
    return outcome


def _mutate(text, rng):
    s = list(text)
    for _ in range(rng.randint(1, 3)):
        if not s:
            s = list(rng.choice(_FRAGMENTS))
        op = rng.choice(["delete", "double", "swap", "insert", "replace", "fragment"])
        k = rng.randrange(len(s))
        if op == "delete":
            del s[k]
        elif op == "double":
            s.insert(k, s[k])
        elif op == "swap" and len(s) > 1:
            j = min(k + 1, len(s) - 1) if rng.random() < 0.7 else rng.randrange(len(s))
            s[k], s[j] = s[j], s[k]
        elif op == "insert":
            s.insert(k, rng.choice(_ALPHABET))
        elif op == "replace":
            s[k] = rng.choice(_ALPHABET)
        else:
            s[k:k] = list(rng.choice(_FRAGMENTS))
    return "".join(s)


# ---------------------------------------------------------------------------
# random text and mutations of valid programs
# ---------------------------------------------------------------------------

@settings(max_examples=N_RANDOM_TEXT, **_SETTINGS)
@given(st.one_of(
    st.text(alphabet=_ALPHABET, max_size=80),
    st.text(max_size=40),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=25).map("".join),
))
def test_random_text_never_crashes(text):
    note(repr(text))
    _pipeline(text)


@settings(max_examples=N_MUTATIONS, **_SETTINGS)
@given(st.integers(0, 2 ** 63 - 1))
def test_mutated_programs_never_crash(seed):
    rng = random.Random(seed)
    text = _mutate(generate_program(seed, max_statements=2).text, rng)
    note(repr(text))
    _pipeline(text)


@settings(max_examples=N_FUZZ_DIFF, **_SETTINGS)
@given(st.integers(0, 2 ** 63 - 1))
def test_bad_wrt_of_layout_never_crash(seed):
    rng = random.Random(seed)
    p = generate_program(seed, max_statements=2)
    w = rng.choice(p.inputs)
    junk = rng.choice([
        "Q", "Q_pq", f"{w}_" + "p" * (len(p.shapes[w]) + 1), f"{w}_pp", f"{w}_", "",
        f"{w}_{{p,}}", "L", "h", "1", "_p", f"{w}_p q", f"{w}; import os", "__import__('os')",
        [], [w, "Q"], 5, None,
    ])
    kwargs = {"wrt": junk}
    if rng.random() < 0.3:
        kwargs = {"wrt": w, "layout": rng.choice(["pq", "qq", "zz", "sideways", "", ["p"], 3])}
    if rng.random() < 0.2:
        kwargs = {"wrt": w, "of": rng.choice(["Q", "", "L_i", 3, "A"])}
    note(f"{p.text!r} {kwargs!r}")
    try:
        _attempt(ed.diff, p.text, **kwargs)
    except TypeError:
        # a wrong Python type (None, 5) may raise TypeError; strings never may
        assert not all(isinstance(v, str) for v in kwargs.values()), kwargs


# ---------------------------------------------------------------------------
# specific hostile inputs
# ---------------------------------------------------------------------------

BAD_TEXTS = [
    "", " ", "\n\n", "#", "=", "L =", "= x", "L = ", "L == x", "L = x +", "L = + x", "L = (x",
    "L = x)", "L = ((x)", "L = (x))", ")(", "L = sum_j(x_j", "L = sum_j x_j", "L = sum_(x)",
    "L = exp(", "L = exp()", "L = exp x", "L = x^", "L = x^^2", "L = x_i^y_i", "L = x_", "L = x__i",
    "L = x_{", "L = x_{}", "L = x_{i", "L = x_{,}", "L = x_{i,,j}", "L = delta_i x_i", "L = delta_ijk",
    "L = δ", "L = 1..2", "L = 1e", "L = 1e+", "L = .", "L = x x x x x x /", "L = */",
    "L_i = foo(x_i)", "L = unknownfunction(x)", "L = sum_j(x_i)", "L_ii = x_i", "L_i = y",
    "x = x", "L = L", "L = x; L = y", "A_i = x_i; B = A_ij", "L = x\x00", "L = x\x07 + y",
    "L\r= x", "L = x\x1b[31m", "\ufeffL = x", "L = 𝛼", "L = x_i\u200b", "L = x; ; ; y",
    "L = 1/0", "L = x / 0", "L = x^(-0)", "L = log(0)", "L = sqrt(-1)",
    "L = 1e999 x",
    "L = 2e308",
    "L = 1e-999 x",
    "L = " + "x" * 5000, "L = x_" + "i" * 60, "L_" + "i" * 30 + " = x_" + "i" * 30,
    "L = sum_" + "j" * 40 + "(x_j)", "L = x_{" + ",".join(f"a{k}" for k in range(200)) + "}",
    "L = " + "(" * 50 + "x", "L = " + "x)" * 50, "L = " + "-" * 200 + "x",
    "L = exp(" * 30 + "x" + ")" * 29, "L = x_i y_i; " * 200,
]

INJECTIONS = [          # must be rejected when parsed
    "L = __import__('os').system('x')",
    "L = __import__(os)",
    "A; import os = x",
    "L = A; import os",
    "L = x; import os",
    "L = eval(x)",
    "L = exec(x)",
    "L = os.system(x)",
    "L = x.__class__",
    "L = x[0]",
    "L = x['a']",
    "L = `x`",
    "L = A_ij\nimport os",
    "import os\nL = x",
    "L = lambda: 0",
    "L = {x}",
    "L = x_{i}; __builtins__ = x",
    "L = x_{i'}",
    'L = x_{i"}',
    "L = x_{i);import os;(}",
    "L = x_{i, j; import os}",
    "L = sum_{i);import os;(}(x)",
    "L = x_{\\n}",
    "L = x; os.system('rm')",
    "L = x_i; def f(): pass",
    "L = x\x00; import os",
]

# words that are names in the language but keywords or globals in Python: accepted as
# tensor names, and the exported code must still be valid and correct
HARMLESS = ["L = x if y else z", "exec = x", "L = x\\\nimport os", "L = x lambda", "L = x None",
            "L = np x", "L = oe x", "L = x derivative", "L = x # ); import os; (", "L = x __import__"]


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_bad_texts_fail_cleanly(text):
    _pipeline(text)


@pytest.mark.parametrize("text", INJECTIONS)
def test_code_injection_rejected_at_parse_time(text):
    outcome, res = _attempt(ed.parse, text)
    assert outcome == "error", f"{text!r} was accepted: {res}"


@pytest.mark.parametrize("text", HARMLESS)
def test_python_keywords_as_names_export_safely(text):
    outcome, prog = _attempt(ed.parse, text)
    if outcome != "ok":
        return
    for name in prog.inputs + prog.outputs:
        assert name.isalnum(), name
    arrays = {n: np.full((), 1.5 + k) for k, n in enumerate(prog.inputs)}
    d = ed.diff(text, wrt=prog.inputs[0])
    src = d.to_source("numpy")
    ns = {}
    exec(compile(src, "<export>", "exec"), ns)
    got = ns["derivative"](*[arrays[n] for n in d.inputs])
    np.testing.assert_allclose(got, d.evaluate(**{n: arrays[n] for n in d.inputs}))


def test_exported_code_holds_only_identifiers():
    for text in ["L = x_i A_ij x_j", "C_ik = A_ij B_jk; L = C_ii", "y_{out,} = W_{out,in} x_{in,}"]:
        prog = ed.parse(text)
        d = ed.diff(text, wrt=prog.inputs[0])
        src = d.to_source("numpy")
        compile(src, "<export>", "exec")
        for bad in ("import os", "__import__", "eval(", "exec(", "system("):
            assert bad not in src


def test_syntax_error_shows_line_and_caret():
    text = "h_i = tanh(W_ij x_j)\nL = (h_i - t_i)^2 +* 3"
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(text)
    msg = str(info.value)
    assert "line 2" in msg
    assert "^" in msg
    lines = msg.splitlines()
    caret = [k for k, l in enumerate(lines) if l.strip() == "^"]
    assert caret, msg
    # the caret sits under the offending column of the quoted line
    quoted = lines[caret[0] - 1]
    col = lines[caret[0]].index("^")
    assert quoted.strip() and col < len(quoted) + 1, msg


@pytest.mark.parametrize("text", ["L = x +", "L = (x", "L = x)", "L = exp(", "L = x ^ ^ 2",
                                  "L = x_{i", "L = x\x07"])
def test_syntax_errors_name_the_place(text):
    with pytest.raises(ed.EinderivError) as info:
        ed.parse(text)
    msg = str(info.value)
    assert "line 1" in msg and "^" in msg, msg


def test_deep_nesting_is_refused_or_handled():
    text = "L = " + "(" * 1000 + "x_i" + ")" * 1000
    outcome, _ = _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    text = "L = " + "exp(" * 1000 + "x" + ")" * 1000
    _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    text = "L = " + "-(" * 1000 + "x" + ")" * 1000
    _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    text = "L = x" + "^x" * 1000
    _attempt(ed.parse, text, bound=BIG_TIME_BOUND)


def test_moderate_nesting_works():
    text = "L_i = " + "(" * 100 + "x_i" + ")" * 100
    prog = ed.parse(text)
    x = np.arange(3.0)
    np.testing.assert_allclose(prog.evaluate(x=x), x)
    d = ed.diff(text, wrt="x_p")
    np.testing.assert_allclose(d.evaluate(x=x), np.eye(3))


@pytest.mark.parametrize("func", ["sin", "tanh"])
def test_deepest_accepted_nesting_differentiates_fast(func):
    """199 nested functions (the parser allows 200 levels): the chain rule has 199 factors and
    shares its nested arguments, so diff, text and evaluation take seconds, not minutes."""
    n = 199
    text = "y_i = " + f"{func}(" * n + "x_i" + ")" * n
    start = time.perf_counter()
    d = ed.diff(text, wrt="x_p")
    str(d)
    x = np.array([0.1, 0.2, 0.3])
    jac = d.evaluate(x=x)
    assert time.perf_counter() - start < TIME_BOUND
    prog, h = ed.parse(text), 1e-6
    fd = np.stack([(prog.evaluate(x=x + h * e) - prog.evaluate(x=x - h * e)) / (2 * h)
                   for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-9)


def test_ten_thousand_term_sum():
    n = 10_000
    text = "L = " + " + ".join(f"{(k % 7) + 1} x_i" for k in range(n))
    outcome, prog = _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    if outcome == "ok":
        x = np.array([0.5, -1.0, 2.0])
        coef = sum((k % 7) + 1 for k in range(n))
        np.testing.assert_allclose(prog.evaluate(x=x), coef * x.sum())
        outcome, d = _attempt(ed.diff, text, wrt="x_p", bound=BIG_TIME_BOUND)
        if outcome == "ok":
            np.testing.assert_allclose(d.evaluate(x=x), np.full(3, float(coef)))


def test_ten_thousand_distinct_terms():
    n = 10_000
    text = "L = " + " + ".join(f"x_i^{k % 5 + 1} y_{'ijk'[k % 3]}" for k in range(n))
    outcome, prog = _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    if outcome == "ok":
        _attempt(ed.diff, text, wrt="x", bound=BIG_TIME_BOUND)


def test_ten_thousand_statements():
    text = "h0_i = x_i\n" + "\n".join(f"h{k}_i = h{k - 1}_i + x_i" for k in range(1, 2000)) + "\nL = h1999_i"
    outcome, prog = _attempt(ed.parse, text, bound=BIG_TIME_BOUND)
    if outcome == "ok":
        x = np.array([1.0, 2.0])
        np.testing.assert_allclose(prog.evaluate(x=x), 2000 * x.sum())


def test_very_long_names():
    name = "W" + "a" * 10_000
    text = f"L = {name}_ij x_i x_j"
    outcome, prog = _attempt(ed.parse, text)
    if outcome == "ok":
        d = ed.diff(text, wrt="x")
        w = np.eye(2)
        np.testing.assert_allclose(d.evaluate(**{name: w, "x": np.array([1.0, 2.0])}), [2.0, 4.0])


@pytest.mark.parametrize("wrt", ["Q", "Q_pq", "A_p", "A_pqr", "A_pp", "A_{p,}",
                                 "", "1", "A_p;q"])
def test_diff_with_bad_wrt_raises(wrt):
    with pytest.raises(ed.EinderivError) as info:
        ed.diff("C_ik = A_ij B_jk", wrt=wrt)
    assert str(info.value).strip()


def test_diff_unknown_of_raises():
    with pytest.raises(ed.EinderivError):
        ed.diff("C_ik = A_ij B_jk", wrt="A", of="Z")


BAD_INPUTS_PER_RUN = (N_RANDOM_TEXT + N_MUTATIONS + N_FUZZ_DIFF + len(BAD_TEXTS) + len(INJECTIONS)
                      + len(HARMLESS) + 9 + 1 + 7 + 4 + 4)


@pytest.mark.parametrize("target", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("text", ["y_i = 2 str_i", "y_i = getattr_i next_i + ValueError_i",
                                  "str_i = x_i^2; y_i = str_i len_i"])
def test_names_of_python_builtins_export_safely(target, text):
    """A tensor named like a builtin the generated code calls (str, getattr, next, len,
    ValueError) made the exported function call the array ('Tensor' object is not callable)
    or fail with UnboundLocalError; evaluate never minded."""
    if target != "numpy":
        lib = pytest.importorskip(target)
        if target == "jax":
            lib.config.update("jax_enable_x64", True)
    prog = ed.parse(text)
    arrays = {n: np.arange(1.0, 4.0) + k for k, n in enumerate(prog.inputs)}
    for shapes in (None, {n: (3,) for n in prog.inputs}):
        ns = {}
        exec(compile(prog.to_source(target, shapes=shapes), "<export>", "exec"), ns)
        got = ns["derivative"](*[arrays[n] for n in prog.inputs])
        np.testing.assert_allclose(np.asarray(got), prog.evaluate(**arrays), rtol=1e-12)
    if target == "numpy":      # shapes= spells out numpy's kernels, behind a shape guard
        with pytest.raises(ValueError, match="exported for shapes"):
            ns["derivative"](*[np.ones(4) for _ in prog.inputs])


def test_an_exported_function_may_not_be_named_like_a_builtin():
    with pytest.raises(ed.EinderivError, match="name='str'"):
        ed.parse("y_i = x_i").to_source(name="str")


@pytest.mark.parametrize("layout", [[1, 2], [None, "p"], ("p", 3)])
def test_a_layout_list_of_non_strings_is_an_einderiv_error(layout):
    """It raised TypeError from str.join."""
    with pytest.raises(ed.EinderivError, match="layout must be"):
        ed.diff("y_i = x_i", wrt="x_p", layout=layout)


@pytest.mark.parametrize("shape", [(2.5, 3), "23", (True, 3), (2, "3")])
def test_export_shapes_must_be_whole_numbers(shape):
    """(2.5, 3) was read as (2, 3) and '23' as (2, 3), which then 'had size 3 in A but 3 in B'."""
    with pytest.raises(ed.EinderivError, match="whole-number sizes"):
        ed.parse("C_ik = A_ij B_jk").to_source("numpy", shapes={"A": shape, "B": (3, 4)})
