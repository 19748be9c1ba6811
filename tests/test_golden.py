"""Golden outputs, asserted exactly: text, LaTeX and matrix form (text and LaTeX) of the
derivative of each formula; every matrix form is also evaluated with numpy and compared with
the derivative's own evaluation (so a golden string can never pin a wrong formula)."""

import numpy as np
import pytest

import einderiv as ed
from einderiv.cli import input_shapes

GOLDEN = [
    ('C_ik = A_ij B_jk', 'A_pq', 'numerator',
     'dC_ik/dA_pq = δ_ip B_qk',
     '\\frac{\\partial C_{ik}}{\\partial A_{pq}} = \\delta_{ip} B_{qk}',
     '∂vec(C)/∂vec(A) = Bᵀ ⊗ I   (numerator layout, vec stacks columns)',
     '\\frac{\\partial \\operatorname{vec}(C)}{\\partial \\operatorname{vec}(A)} = B^{\\top} \\otimes I'),
    ('C_ik = A_ij B_jk', 'A_pq', 'denominator',
     'dC_ik/dA_pq = δ_ip B_qk',
     '\\frac{\\partial C_{ik}}{\\partial A_{pq}} = \\delta_{ip} B_{qk}',
     '∂vec(C)/∂vec(A) = B ⊗ I   (denominator layout, vec stacks columns)',
     '\\frac{\\partial \\operatorname{vec}(C)}{\\partial \\operatorname{vec}(A)} = B \\otimes I'),
    ('C_ik = A_ij B_jk', 'B_pq', 'numerator',
     'dC_ik/dB_pq = δ_kq A_ip',
     '\\frac{\\partial C_{ik}}{\\partial B_{pq}} = \\delta_{kq} A_{ip}',
     '∂vec(C)/∂vec(B) = I ⊗ A   (numerator layout, vec stacks columns)',
     '\\frac{\\partial \\operatorname{vec}(C)}{\\partial \\operatorname{vec}(B)} = I \\otimes A'),
    ('L = A_ij X_jk B_ki', 'X', 'numerator',
     'dL/dX_pq = sum_i(A_ip B_qi)',
     '\\frac{\\partial L}{\\partial X_{pq}} = \\sum_{i} A_{ip} B_{qi}',
     '∂L/∂X = Aᵀ Bᵀ   (denominator layout: the shape of X)',
     '\\frac{\\partial L}{\\partial X} = A^{\\top} B^{\\top}'),
    ('L = x_i A_ij x_j', ['x_p', 'x_q'], 'numerator',
     'd²L/dx_p dx_q = A_pq + A_qp',
     '\\frac{\\partial^{2} L}{\\partial x_{p} \\partial x_{q}} = A_{pq} + A_{qp}',
     '∂²L/∂x∂x = A + Aᵀ   (rows x_p, columns x_q)',
     '\\frac{\\partial^{2} L}{\\partial x\\partial x} = A + A^{\\top}'),
    ('L = (sum_j(A_ij x_j) - b_i)^2', 'x', 'denominator',
     'dL/dx_p = 2 sum_i(A_ip (sum_j(A_ij x_j) - b_i))',
     '\\frac{\\partial L}{\\partial x_{p}} = 2 \\sum_{i} A_{ip} \\left(\\sum_{j} A_{ij} x_{j} - b_{i}\\right)',
     '∂L/∂x = 2 Aᵀ(Ax − b)   (denominator layout: the shape of x)',
     '\\frac{\\partial L}{\\partial x} = 2 A^{\\top} \\left(A x - b\\right)'),
    ('L = a_i X_ij b_j', 'X', 'denominator',
     'dL/dX_pq = a_p b_q',
     '\\frac{\\partial L}{\\partial X_{pq}} = a_{p} b_{q}',
     '∂L/∂X = a bᵀ   (denominator layout: the shape of X)',
     '\\frac{\\partial L}{\\partial X} = a b^{\\top}'),
    ('L = X_ji A_jk X_ki', 'X', 'denominator',
     'dL/dX_pq = sum_i(X_iq (A_ip + A_pi))',
     '\\frac{\\partial L}{\\partial X_{pq}} = \\sum_{i} X_{iq} \\left(A_{ip} + A_{pi}\\right)',
     '∂L/∂X = (A + Aᵀ) X   (denominator layout: the shape of X)',
     '\\frac{\\partial L}{\\partial X} = \\left(A + A^{\\top}\\right) X'),
    ('y_i = A_ij x_j + b_i', 'x', 'numerator',
     'dy_i/dx_p = A_ip',
     '\\frac{\\partial y_{i}}{\\partial x_{p}} = A_{ip}',
     '∂y/∂x = A   (numerator layout: rows y, columns x)',
     '\\frac{\\partial y}{\\partial x} = A'),
    ('y_i = A_ij x_j + b_i', 'x', 'denominator',
     'dy_i/dx_p = A_ip',
     '\\frac{\\partial y_{i}}{\\partial x_{p}} = A_{ip}',
     '∂y/∂x = Aᵀ   (denominator layout: rows x, columns y)',
     '\\frac{\\partial y}{\\partial x} = A^{\\top}'),
    ('t = A_ii', 'A', 'numerator',
     'dt/dA_pq = δ_pq',
     '\\frac{\\partial t}{\\partial A_{pq}} = \\delta_{pq}',
     '∂t/∂A = I   (denominator layout: the shape of A)',
     '\\frac{\\partial t}{\\partial A} = I'),
    ('L = x_i x_i', 'x', 'numerator',
     'dL/dx_p = 2 x_p',
     '\\frac{\\partial L}{\\partial x_{p}} = 2 x_{p}',
     '∂L/∂x = 2 x   (denominator layout: the shape of x)',
     '\\frac{\\partial L}{\\partial x} = 2 x'),
    ('L = x_i x_i', ['x', 'x'], 'numerator',
     'd²L/dx_p dx_q = 2 δ_pq',
     '\\frac{\\partial^{2} L}{\\partial x_{p} \\partial x_{q}} = 2 \\delta_{pq}',
     '∂²L/∂x∂x = 2 I   (rows x_p, columns x_q)',
     '\\frac{\\partial^{2} L}{\\partial x\\partial x} = 2 I'),
    ('L = log(sum_i(exp(x_i)))', 'x', 'numerator',
     'dL/dx_p = exp(x_p) / sum_i(exp(x_i))',
     '\\frac{\\partial L}{\\partial x_{p}} = \\frac{\\exp\\left(x_{p}\\right)}{\\sum_{i} \\exp\\left(x_{i}\\right)}',
     '∂L/∂x = exp(x) / (𝟙ᵀ exp(x))   (denominator layout: the shape of x)',
     '\\frac{\\partial L}{\\partial x} = \\frac{\\exp\\left(x\\right)}{\\mathbf{1}^{\\top} \\exp\\left(x\\right)}'),
    ('h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2', 'W', 'numerator',
     'h_i = tanh(sum_j(W_ij x_j))\ndL/dW_pq = 2 x_q (1 - h_p^2) (h_p - t_p)',
     '\\begin{aligned}h_{i} &= \\tanh\\left(\\sum_{j} W_{ij} x_{j}\\right) \\\\ \\frac{\\partial L}{\\partial W_{pq}} &= 2 x_{q} \\left(1 - h_{p}^{2}\\right) \\left(h_{p} - t_{p}\\right)\\end{aligned}',
     'h = tanh(Wx)\n∂L/∂W = 2 ((𝟙 − h^∘2) ⊙ (h − t)) xᵀ   (denominator layout: the shape of W)',
     '\\begin{aligned}h &= \\tanh\\left(W x\\right) \\\\ \\frac{\\partial L}{\\partial W} &= 2 \\left(\\left(\\mathbf{1} - h^{\\circ 2}\\right) \\odot \\left(h - t\\right)\\right) x^{\\top}\\end{aligned}'),
    ('y_i = tanh(sum_j(W_ij x_j) + b_i)', 'x', 'numerator',
     'y_i = tanh(sum_j(W_ij x_j) + b_i)\ndy_i/dx_p = W_ip (1 - y_i^2)',
     '\\begin{aligned}y_{i} &= \\tanh\\left(\\sum_{j} W_{ij} x_{j} + b_{i}\\right) \\\\ \\frac{\\partial y_{i}}{\\partial x_{p}} &= W_{ip} \\left(1 - y_{i}^{2}\\right)\\end{aligned}',
     'y = tanh(Wx + b)\n∂y/∂x = diag(𝟙 − y^∘2) W   (numerator layout: rows y, columns x)',
     '\\begin{aligned}y &= \\tanh\\left(W x + b\\right) \\\\ \\frac{\\partial y}{\\partial x} &= \\operatorname{diag}\\left(\\mathbf{1} - y^{\\circ 2}\\right) W\\end{aligned}'),
    ('y_i = tanh(sum_j(W_ij x_j) + b_i)', 'W', 'numerator',
     'y_i = tanh(sum_j(W_ij x_j) + b_i)\ndy_i/dW_pq = δ_ip x_q (1 - y_i^2)',
     '\\begin{aligned}y_{i} &= \\tanh\\left(\\sum_{j} W_{ij} x_{j} + b_{i}\\right) \\\\ \\frac{\\partial y_{i}}{\\partial W_{pq}} &= \\delta_{ip} x_{q} \\left(1 - y_{i}^{2}\\right)\\end{aligned}',
     'y = tanh(Wx + b)\n∂y/∂vec(W) = xᵀ ⊗ diag(𝟙 − y^∘2)   (numerator layout, vec stacks columns)',
     '\\begin{aligned}y &= \\tanh\\left(W x + b\\right) \\\\ \\frac{\\partial y}{\\partial \\operatorname{vec}(W)} &= x^{\\top} \\otimes \\operatorname{diag}\\left(\\mathbf{1} - y^{\\circ 2}\\right)\\end{aligned}'),
    ('L = A_ij B_ij', 'A', 'numerator',
     'dL/dA_pq = B_pq',
     '\\frac{\\partial L}{\\partial A_{pq}} = B_{pq}',
     '∂L/∂A = B   (denominator layout: the shape of A)',
     '\\frac{\\partial L}{\\partial A} = B'),
    ('y_i = x_i^3', 'x', 'numerator',
     'dy_i/dx_p = 3 δ_ip x_i^2',
     '\\frac{\\partial y_{i}}{\\partial x_{p}} = 3 \\delta_{ip} x_{i}^{2}',
     '∂y/∂x = 3 diag(x^∘2)   (numerator layout: rows y, columns x)',
     '\\frac{\\partial y}{\\partial x} = 3 \\operatorname{diag}\\left(x^{\\circ 2}\\right)'),
    ('L = sum_i(x_i)^2', 'x', 'numerator',
     'dL/dx_p = 2 sum_i(x_i)',
     '\\frac{\\partial L}{\\partial x_{p}} = 2 \\sum_{i} x_{i}',
     '∂L/∂x = 2 (𝟙ᵀ x) 𝟙   (denominator layout: the shape of x)',
     '\\frac{\\partial L}{\\partial x} = 2 \\left(\\mathbf{1}^{\\top} x\\right) \\mathbf{1}'),
    ('L = A_ij X_jk B_kl X_li', 'X', 'numerator',
     'dL/dX_pq = sum_ij(A_ip B_qj X_ji) + sum_ij(A_qj B_ip X_ji)',
     '\\frac{\\partial L}{\\partial X_{pq}} = \\sum_{ij} A_{ip} B_{qj} X_{ji} + \\sum_{ij} A_{qi} B_{jp} X_{ij}',
     '∂L/∂X = Aᵀ Xᵀ Bᵀ + Bᵀ Xᵀ Aᵀ   (denominator layout: the shape of X)',
     '\\frac{\\partial L}{\\partial X} = A^{\\top} X^{\\top} B^{\\top} + B^{\\top} X^{\\top} A^{\\top}'),
    ('C_ij = A_ij B_ij', 'A', 'numerator',
     'dC_ij/dA_pq = δ_ip δ_jq B_ij',
     '\\frac{\\partial C_{ij}}{\\partial A_{pq}} = \\delta_{ip} \\delta_{jq} B_{ij}',
     'no matrix form: the result has more than two axes and no Kronecker structure; in index form:\ndC_ij/dA_pq = δ_ip δ_jq B_ij',
     '\\text{no matrix form: the result has more than two axes and no Kronecker structure}'),
]


def _ids():
    return [f"{f} wrt {w} {lay}" for f, w, lay, *_ in GOLDEN]


def _arrays(program, seed=7):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0.5, 1.5, size=s) for n, s in input_shapes(program).items()}


@pytest.mark.parametrize("formula, wrt, layout, text, latex, matrix, matrix_latex", GOLDEN, ids=_ids())
def test_golden(formula, wrt, layout, text, latex, matrix, matrix_latex):
    d = ed.diff(formula, wrt=wrt, layout=layout)
    form = ed.matrix_form(d)
    assert str(d) == text
    assert d.latex() == latex
    assert str(form) == matrix
    assert form.latex() == matrix_latex
    assert str(d.matrix()) == matrix


@pytest.mark.parametrize("formula, wrt, layout, text, latex, matrix, matrix_latex", GOLDEN, ids=_ids())
def test_golden_matrix_form_is_numerically_right(formula, wrt, layout, text, latex, matrix, matrix_latex):
    d = ed.diff(formula, wrt=wrt, layout=layout)
    form = ed.matrix_form(d, check=False)      # the translation itself, without its own guard
    if matrix.startswith("no matrix form"):
        assert not form.exists
        return
    assert form.exists
    arrays = _arrays(d)
    expected = d.evaluate(**arrays)
    got = form.evaluate(**arrays)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


THE_FIVE = {
    # the forms issue 3 asks for by name
    ("L = A_ij X_jk B_ki", "X"): "Aᵀ Bᵀ",
    ("L = x_i A_ij x_j", ("x", "x")): "A + Aᵀ",
    ("L = (sum_j(A_ij x_j) - b_i)^2", "x"): "2 Aᵀ(Ax − b)",
    ("L = a_i X_ij b_j", "X"): "a bᵀ",
    ("L = X_ji A_jk X_ki", "X"): "(A + Aᵀ) X",
}


@pytest.mark.parametrize("key", list(THE_FIVE), ids=[k[0] for k in THE_FIVE])
def test_the_five_forms(key):
    formula, wrt = key
    d = ed.diff(formula, wrt=list(wrt) if isinstance(wrt, tuple) else wrt, layout="denominator")
    form = ed.matrix_form(d)
    assert form.text() == THE_FIVE[key]
    arrays = _arrays(d, seed=3)
    np.testing.assert_allclose(form.evaluate(**arrays), d.evaluate(**arrays), rtol=1e-10)


PROGRAMS = [
    ("C_ik = A_ij B_jk", "C = AB", "C = A B"),
    ("L = A_ij X_jk B_ki", "L = tr(AXB)", r"L = \operatorname{tr}\left(A X B\right)"),
    ("y_i = A_ij x_j + b_i", "y = Ax + b", "y = A x + b"),
    ("L = x_i A_ij x_j", "L = xᵀ Ax", r"L = x^{\top} A x"),
    ("C_ij = A_ij + b_i", "C = A + b 𝟙ᵀ", r"C = A + b \mathbf{1}^{\top}"),
    ("d_i = A_ii", "d = diag(A)", r"d = \operatorname{diag}\left(A\right)"),
    ("C_ij = A_ij B_ij", "C = A ⊙ B", r"C = A \odot B"),
]


@pytest.mark.parametrize("formula, text, latex", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_program_matrix_forms(formula, text, latex):
    p = ed.parse(formula)
    form = p.matrix()
    assert str(form) == text
    assert form.latex() == latex
    arrays = _arrays(p, seed=11)
    np.testing.assert_allclose(form.evaluate(**arrays), p.evaluate(**arrays), rtol=1e-10)


@pytest.mark.parametrize("formula, wrt, latex", [
    # (Σ_i x_i)² is not Σ_i x_i²: the sum inside a power keeps its parentheses
    ("L = sum_i(x_i)^2", None, "L = \\left(\\sum_{i} x_{i}\\right)^{2}"),
    ("L = sum_i(x_i^2)", None, "L = \\sum_{i} x_{i}^{2}"),
    ("y_i = x_i / sum_j(x_j)", "x",
     "\\frac{\\partial y_{i}}{\\partial x_{p}} = \\frac{\\delta_{ip}}{\\sum_{j} x_{j}}"
     " - \\frac{x_{i}}{\\left(\\sum_{j} x_{j}\\right)^{2}}"),
])
def test_latex_of_a_power_of_a_sum(formula, wrt, latex):
    program = ed.parse(formula) if wrt is None else ed.diff(formula, wrt=wrt)
    assert program.latex() == latex


def test_latex_writes_large_constants_with_a_power_of_ten():
    # '2e+20' is Python's notation, not LaTeX's
    assert ed.diff("L = 1e20 x_i x_i", wrt="x").latex() == (
        "\\frac{\\partial L}{\\partial x_{p}} = 2 \\cdot 10^{20} x_{p}")


def test_an_irrational_coefficient_is_shown_as_a_decimal_that_reads_back():
    # (1/2)^(1/3) / 3 was shown as the fraction 3968502629920499/15000000000000000
    d = ed.diff("y_i = (x_i/2)^(1/3)", wrt="x")
    assert str(d) == "dy_i/dx_p = 0.26456684199469993 δ_ip / x_i^(2/3)"
    assert "0.26456684199469993" in d.latex() and "frac{39" not in d.latex()
    x = np.array([0.3, 1.7, 4.0])
    np.testing.assert_allclose(np.diag(d.evaluate(x=x)), (x / 2) ** (-2 / 3) / 6, rtol=1e-14)
    again = ed.parse(str(d).replace("dy_i/dx_p", "J_ip"))
    np.testing.assert_allclose(again.evaluate(x=x, sizes={"p": 3}), d.evaluate(x=x), rtol=1e-15)


def test_small_fractions_stay_fractions():
    assert str(ed.diff("L = x_i x_i / 3", wrt="x")) == "dL/dx_p = 2/3 x_p"
