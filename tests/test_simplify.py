"""Simplification: δ elimination, like terms, canonical dummies, common factors, and text
that reads back as the same program."""

import numpy as np
import pytest

import einderiv as ed

PRINTED = [
    ("C_ik = A_ij B_jk", "A_pq", "δ_ip B_qk"),
    ("L = x_i x_i", "x_p", "2 x_p"),
    ("L = x_i A_ij x_j", ["x_p", "x_q"], "A_pq + A_qp"),
    ("L = A_ij B_ji", "A_pq", "B_qp"),
    ("t = A_ii", "A_pq", "δ_pq"),
    ("C_ik = A_ij B_jk", "B_pq", "δ_kq A_ip"),
    ("L = X_ji A_jk X_ki", "X_pq", "sum_i(X_iq (A_ip + A_pi))"),
    ("L = (sum_j(A_ij x_j) - b_i)^2", "x_p", "2 sum_i(A_ip (sum_j(A_ij x_j) - b_i))"),
    ("C_bik = A_bij B_bjk", "A_pqr", "δ_bp δ_iq B_brk"),
    ("L = x_i + y_i + z", "y", "1"),
]


@pytest.mark.parametrize("src, wrt, rhs", PRINTED, ids=[p[0] + " " + str(p[1]) for p in PRINTED])
def test_printed_forms(src, wrt, rhs):
    assert str(ed.diff(src, wrt=wrt)).splitlines()[-1].split(" = ", 1)[1] == rhs


def test_delta_chain_collapses():
    prog = ed.parse("C_ik = δ_ij δ_jk x_k")
    assert str(prog) == "C_ik = δ_ik x_k"


def test_delta_trace_becomes_the_size():
    prog = ed.parse("L = δ_ii", sizes={"i": 4})
    assert prog.evaluate() == 4.0


def test_like_terms_merge_and_cancel():
    assert str(ed.parse("y_i = x_i + x_i")) == "y_i = 2 x_i"
    assert str(ed.parse("y_i = x_i - x_i + z_i")) == "y_i = z_i"
    assert ed.parse("L = x_i y_i + y_j x_j") == ed.parse("L = 2 x_k y_k")


def test_products_equal_up_to_summed_names_cancel():
    # the two A factors play symmetric roles: naming i, k by one refinement round of the
    # factors' keys left their order to the order they were written in
    assert str(ed.parse("L = sum_ik(A_i A_k B_ik) - sum_ik(A_k A_i B_ki)")) == "L = 0"
    assert str(ed.parse("L_j = x_i x_k T_jik - x_k x_i T_jki")) == "L_j = 0"


@pytest.mark.parametrize("text, renamed", [
    ("R = tanh(B_kkk + B_iij)", "R = tanh(B_aaa + B_ggh)"),
    ("R_jk = tanh(B_mj) tanh(T_j) tanh(A_k + A_l)", "R_jk = tanh(B_wj) tanh(A_k + A_e) tanh(T_j)"),
    ("R = X_ji A_jk X_ki", "R = X_ab A_ac X_cb"),
    ("R = x_i x_j x_k T_ijk", "R = T_cab x_b x_a x_c"),
], ids=["repeated-indices-in-a-function", "function-of-a-sum", "two-X-told-apart-by-A",
        "three-x"])
def test_summed_names_inside_functions_do_not_change_the_canonical_form(text, renamed):
    # a function's argument is sorted by the names of the indices summed outside it, and those
    # are named from the argument: the names must come from something the names do not decide
    assert str(ed.parse(text)) == str(ed.parse(renamed))


@pytest.mark.parametrize("text", [
    "h_niv = -sum_jk(exp(sigmoid(A_kin A_jii + A_kvv)))",
    "h = sum_ijk(B_ij sum_l(exp(A_l))^(a) (-1 + sum_m(B_ik B_im)))",
    "L = sum_ijk(A_ij cosh(cos(A_kl / (1 + exp(sin(A_il W))) + A_kj W)))",
])
def test_printed_text_reads_back_as_the_same_text(text):
    # a rename reached only the outer function: its nested arguments kept the old order
    once = str(ed.parse(text))
    assert str(ed.parse(once)) == once


def test_a_product_of_tensors_with_more_than_32_summed_axes():
    # a masked key names a summed index by its first axis; past axis 31 it raised IndexError
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"a{c}" for c in "abcdefgh"]
    axes = "{" + ",".join(letters) + "}"
    prog = ed.parse(f"L = T_{axes} B_{axes} C_{{a,b}}")
    shape = (1,) * len(letters)
    assert prog.evaluate(T=np.full(shape, 2.0), B=np.full(shape, 3.0), C=np.ones((1, 1))) == 6.0


def test_a_delta_inside_a_function_folds_to_one():
    d = ed.parse("L_i = sum_j(δ_ij exp(δ_ij^3 x_j))")
    assert str(d) == "L_i = exp(x_i)"          # not exp(x_i 1^3)
    x = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(d.evaluate(x=x), np.exp(x), rtol=1e-15)


def _random_product(rng, functions=False):
    """A random product of tensors (and, with ``functions``, of tanh or exp of a sum of one or
    two tensors) with some indices free, as text, and the same product with its summed
    indices renamed and its factors shuffled."""
    pool = "ijklmn"[:rng.randint(2, 6)]
    rank = {name: rng.randint(1, 3) for name in "ABT"}

    def tensor():
        name = rng.choice("ABT")
        return name, [rng.choice(pool) for _ in range(rank[name])]

    factors = []
    for _ in range(rng.randint(1 if functions else 2, 4 if functions else 5)):
        if functions and rng.random() < 0.35:
            factors.append((rng.choice(["exp", "tanh"]), [tensor() for _ in range(rng.randint(1, 2))]))
        else:
            factors.append(tensor())

    def indices(f):
        return f[1] if isinstance(f[1][0], str) else [i for _, idx in f[1] for i in idx]

    used = sorted({i for f in factors for i in indices(f)})
    free = [i for i in used if rng.random() < 0.3]
    others = [c for c in "uvwxyzabcefgh"]
    rng.shuffle(others)
    rename = dict(zip([i for i in used if i not in free], others))

    def text(fs, names):
        def one(name, idx):
            return f"{name}_{''.join(names.get(i, i) for i in idx)}"
        return " ".join(one(*f) if isinstance(f[1][0], str)
                        else f"{f[0]}(" + " + ".join(one(*t) for t in f[1]) + ")" for f in fs)
    shuffled = list(factors)
    rng.shuffle(shuffled)
    return "".join(free), text(factors, {}), text(shuffled, rename)


def test_canonical_form_ignores_summed_names_and_factor_order():
    # 2,000 random products, compared as text (dimension tags are named after the axis that
    # first gives them, which depends on the order of the factors)
    import random
    rng = random.Random(5)
    for _ in range(2000):
        free, text, shuffled = _random_product(rng)
        lhs = f"R_{free}" if free else "R"
        a = ed.parse(f"{lhs} = {text}")
        b = ed.parse(f"{lhs} = {shuffled}")
        assert str(a) == str(b), (text, shuffled)
        assert str(ed.parse(f"{lhs} = {text} - {shuffled}")) == f"{lhs} = 0", text


def test_canonical_form_ignores_summed_names_inside_functions():
    # 600 random products with tanh / exp of sums; the summed indices of the product appear
    # inside the functions, whose terms are sorted by them
    import random
    rng = random.Random(11)
    for _ in range(600):
        free, text, shuffled = _random_product(rng, functions=True)
        lhs = f"R_{free}" if free else "R"
        assert str(ed.parse(f"{lhs} = {text}")) == str(ed.parse(f"{lhs} = {shuffled}")), \
            (text, shuffled)


def test_shared_factor_does_not_capture_other_sums():
    # Σ_j B_jj Σ_k B_kk is the square of the trace, not Σ_i B_ii²
    d = ed.diff("L = B_jj B_kk exp(x) x", wrt="x")
    b = np.arange(1.0, 10.0).reshape(3, 3) / 10
    x = np.array(0.7)
    np.testing.assert_allclose(d.evaluate(B=b, x=x), np.exp(x) * (1 + x) * np.trace(b) ** 2)


def test_five_factor_product_with_two_separate_contractions():
    src = "L = A_vl A_jl B_jli A_uk B_unn"
    rng = np.random.default_rng(2)
    A, B = rng.uniform(0.5, 1.5, (3, 2)), rng.uniform(0.5, 1.5, (3, 2, 2))
    d = ed.diff(src, wrt="A_pq")
    f = lambda A: np.einsum("vl,jl,jli,uk,unn->", A, A, B, A, B)  # noqa: E731
    h = 1e-6
    fd = np.zeros_like(A)
    for idx in np.ndindex(A.shape):
        e = np.zeros_like(A)
        e[idx] = h
        fd[idx] = (f(A + e) - f(A - e)) / (2 * h)
    np.testing.assert_allclose(d.evaluate(A=A, B=B), fd, rtol=1e-6)


ROUND_TRIP = [
    "L = A_ij + B_jk",                      # two sums over j of different sizes
    "L = sum_i(x_i + y)",                   # a size: y times the length of x
    "L = x_i - (1 - y_i)",
    "L = x_i A_ij x_j",
    "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2",
    "y_i = tanh(W_ij x_j + b_i)",
    "p_i = exp(z_i) / sum_j(exp(z_j))",
    "y_{out,b} = W_{out,in} x_{in,b}",
    "L = sum_i(x_i - x_i + 1) y",           # the text 'size(x,0) y' no longer shows x otherwise
]


@pytest.mark.parametrize("src", ROUND_TRIP)
def test_text_reads_back_as_the_same_program(src):
    prog = ed.parse(src)
    assert ed.parse(str(prog)) == prog


def test_text_of_a_size_evaluates_the_same():
    prog = ed.parse("L = sum_i(x_i + y)")
    x = np.array([1.0, 2.0, 3.0])
    again = ed.parse(str(prog))
    assert again.evaluate(x=x, y=0.5) == prog.evaluate(x=x, y=0.5) == 7.5


def test_derivative_text_reads_back():
    d = ed.diff("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", wrt="W")
    rhs = str(d).splitlines()[-1].split(" = ", 1)[1]
    again = ed.parse("h_i = tanh(sum_j(W_ij x_j)); G_pq = " + rhs)
    rng = np.random.default_rng(0)
    W, x, t = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=3)
    np.testing.assert_allclose(again.evaluate(W=W, x=x, t=t), d.evaluate(W=W, x=x, t=t))


def test_text_of_a_sum_over_a_broadcast_group_ties_every_letter():
    # d/dx of Σ_ij C_i (x / sin(x) + B_j): the group (…) is broadcast along j; its text once was
    # sum_ij(C_i (…)) with j tied to nothing ("index 'j' has no size" on re-parse)
    d = ed.diff("g_j = x / sin(x) + B_j; L = sum_ij(C_i g_j)", wrt="x")
    rhs = str(d).splitlines()[-1].split(" = ", 1)[1]
    again = ed.parse("R = " + rhs)
    x, b, c = 0.7, np.array([1.0, 2.0, 3.0]), np.array([0.5, -2.0])
    want = 3 * c.sum() * (1 / np.sin(x) - x * np.cos(x) / np.sin(x) ** 2)
    np.testing.assert_allclose(again.evaluate(**{n: {"x": x, "B": b, "C": c}[n] for n in again.inputs}),
                               want, rtol=1e-12)


def test_derivative_that_reads_only_a_length_keeps_that_input():
    # d/dx Σ_j 1 / (x + B_j - B_j) = -n_B / x²: B is read only for its length (was a KeyError)
    d = ed.diff("L = sum_j(1 / (x + B_j - B_j))", wrt="x")
    assert d.inputs == ("x", "B")
    assert d.evaluate(x=2.0, B=np.ones(3)) == -0.75


def test_growth_is_bounded():
    src = "L = exp(sum_i(x_i))"
    d = ed.diff(src, wrt=["x"] * 10)
    assert str(d).splitlines()[-1].endswith("= L")


def _distinct_nested(program):
    """How many distinct expression objects a program's statements hold, nested ones included."""
    from einderiv.ir import Func, Power
    seen = set()

    def walk(e):
        if id(e) not in seen:
            seen.add(id(e))
            for t in e.terms:
                for f in t.factors:
                    if isinstance(f, (Func, Power)):
                        walk(f.arg if isinstance(f, Func) else f.base)

    for st in program.statements:
        walk(st.expr)
    return len(seen)


def test_renaming_shares_the_nested_expressions_of_a_long_chain_rule_product():
    # d sin^n(x_i)/dx_p = Π_k cos(sin^k(x_p)): the k-th factor holds the (k-1)-th one's argument.
    # δ elimination renames i -> p in every factor; renaming each nested argument once (not
    # once per factor holding it) keeps n + 1 distinct expressions instead of n²/2 copies.
    n = 60
    d = ed.diff("L = " + "sin(" * n + "x_i" + ")" * n, wrt="x_p")
    assert _distinct_nested(d) <= 2 * n
    x = np.array([0.3, -0.7])
    want, value = np.ones(2), x
    for _ in range(n):
        want, value = want * np.cos(value), np.sin(value)
    np.testing.assert_allclose(d.evaluate(x=x), want, rtol=1e-12)
