"""Matrix notation: every form that is printed equals the index form numerically; where no
form exists the reason is given and nothing wrong is printed."""

import numpy as np
import pytest

import einderiv as ed
from einderiv.cli import input_shapes
from einderiv.export import matrix as M

# (formula, wrt, must have a matrix form in both layouts)
CASES = [
    ("L = A_ij X_jk B_ki", "X", True),
    ("L = A_ij X_jk B_ki", "A", True),
    ("L = x_i A_ij x_j", "x", True),
    ("L = x_i A_ij x_j", "A", True),
    ("L = x_i A_ij x_j", ["x", "x"], True),
    ("L = (sum_j(A_ij x_j) - b_i)^2", "x", True),
    ("L = (sum_j(A_ij x_j) - b_i)^2", "A", True),
    ("L = (sum_j(A_ij x_j) - b_i)^2", ["x", "x"], True),
    ("L = a_i X_ij b_j", "X", True),
    ("L = X_ji A_jk X_ki", "X", True),
    ("L = A_ij X_jk B_kl X_li", "X", True),
    ("L = X_ij X_ij", "X", True),
    ("L = X_ii", "X", True),
    ("L = X_ij X_ji", "X", True),
    ("y_i = A_ij x_j + b_i", "x", True),
    ("y_i = A_ij x_j + b_i", "b", True),
    ("y_i = A_ij x_j + b_i", "A", True),
    ("y_i = x_i^3", "x", True),
    ("y_i = exp(x_i) / sum_j(exp(x_j))", "x", True),
    ("L = log(sum_i(exp(x_i)))", "x", True),
    ("L = log(sum_i(exp(x_i)))", ["x", "x"], True),
    ("y_i = tanh(sum_j(W_ij x_j) + b_i)", "x", True),
    ("y_i = tanh(sum_j(W_ij x_j) + b_i)", "W", True),
    ("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", "W", True),
    ("h_i = sigmoid(sum_j(W_ij x_j)); L = -t_i log(h_i)", "x", True),
    ("C_ik = A_ij B_jk", "A", True),
    ("C_ik = A_ij B_jk", "B", True),
    ("C_ij = A_ij + b_i", "b", True),
    ("L = sum_i(x_i)^2", "x", True),
    ("L = sqrt(x_i x_i)", "x", True),
    ("L = x_i y_i z_i", "x", True),
    ("L = A_ij x_i y_j z_j", "A", True),
    ("L = A_ij B_jk C_ki D_ij", "A", True),
    ("C_ij = A_ij B_ij", "A", False),
    ("T_ijk = A_ij b_k", "b", False),
]


def _arrays(program, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(0.5, 1.5, size=s) for n, s in input_shapes(program).items()}


@pytest.mark.parametrize("layout", ["numerator", "denominator"])
@pytest.mark.parametrize("formula, wrt, has_form", CASES, ids=[f"{c[0]} wrt {c[1]}" for c in CASES])
def test_matrix_form_matches_index_form(formula, wrt, has_form, layout):
    d = ed.diff(formula, wrt=wrt, layout=layout)
    raw = M.matrix_form(d, check=False)
    guarded = M.matrix_form(d)
    assert raw.exists == has_form, str(raw)
    assert guarded.exists == has_form
    if not has_form:
        assert str(guarded).startswith("no matrix form: ")
        assert str(d) in str(guarded)          # the index form is shown instead
        with pytest.raises(ed.EinderivError):
            guarded.evaluate(**_arrays(d))
        return
    assert str(raw) == str(guarded)
    for seed in (0, 1):
        arrays = _arrays(d, seed)
        np.testing.assert_allclose(raw.evaluate(**arrays), d.evaluate(**arrays), rtol=1e-9, atol=1e-12)


def test_scalar_gradients_say_denominator_layout():
    for layout in ("numerator", "denominator"):
        form = ed.matrix_form(ed.diff("L = A_ij X_jk B_ki", wrt="X", layout=layout))
        assert "denominator layout: the shape of X" in str(form)


def test_jacobian_layouts_are_transposes():
    num = ed.matrix_form(ed.diff("y_i = A_ij x_j", wrt="x", layout="numerator"))
    den = ed.matrix_form(ed.diff("y_i = A_ij x_j", wrt="x", layout="denominator"))
    assert num.text() == "A" and "numerator layout: rows y, columns x" in str(num)
    assert den.text() == "Aᵀ" and "denominator layout: rows x, columns y" in str(den)


def test_explicit_layout():
    d = ed.diff("y_i = A_ij x_j", wrt="x_p", layout="pi")
    form = ed.matrix_form(d)
    assert form.text() == "Aᵀ"
    assert "layout pi" in str(form)


def test_guard_refuses_a_wrong_translation(monkeypatch):
    """If the translation were wrong (here: a transpose dropped), no form is shown."""
    real = M.transpose

    def broken(node):
        return node if isinstance(node, M.Sym) else real(node)

    monkeypatch.setattr(M, "transpose", broken)
    d = ed.diff("L = A_ij X_jk B_ki", wrt="X")
    assert M.matrix_form(d, check=False).exists      # it would print something wrong...
    form = M.matrix_form(d)
    assert not form.exists                            # ...but the guard refuses it
    assert "did not match" in form.reason


def test_three_axis_inputs_have_no_matrix_form():
    form = ed.matrix_form(ed.diff("y_i = T_ijk x_j x_k", wrt="x"))
    assert not form.exists and "T has 3 axes" in form.reason


def test_differential_and_vjp_programs():
    p = ed.differential("C_ik = A_ij B_jk")
    form = p.matrix()
    assert str(form) == "dC = A dB + dA B"
    arrays = _arrays(p)
    np.testing.assert_allclose(form.evaluate(**arrays), p.evaluate(**arrays))
    v = ed.vjp("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", wrt="W")
    form = v.matrix()
    assert str(form) == "h = tanh(W x)\nGh = 2 G (h − t)\nGW = (Gh ⊙ (𝟙 − h^∘2)) xᵀ"
    arrays = _arrays(v)
    np.testing.assert_allclose(form.evaluate(**arrays), v.evaluate(**arrays))


def test_several_outputs_have_no_single_form():
    v = ed.vjp("y_i = sum_j(W_ij x_j)", wrt=["W", "x"])
    assert not v.matrix().exists


def test_repr_latex_and_repr():
    form = ed.matrix_form(ed.diff("L = a_i X_ij b_j", wrt="X"))
    assert form._repr_latex_() == r"$$\frac{\partial L}{\partial X} = a b^{\top}$$"
    assert repr(form).startswith("<MatrixForm: ∂L/∂X = a bᵀ")


def test_dimension_names_follow_the_inputs():
    p = ed.parse("C_ik = A_ij B_jk")
    names = M.dimension_names(p)
    assert [names[d] for d in p._inputs["A"]] == ["M", "N"]
    assert [names[d] for d in p._inputs["B"]] == ["N", "P"]


def test_products_are_spaced_when_names_have_several_letters():
    # GA = G Bᵀ, not "GBᵀ", which would read as the tensor GB transposed
    form = ed.vjp("C_ik = A_ij B_jk", wrt="A").matrix()
    assert str(form) == "GA = G Bᵀ"
    assert ed.parse("C_ik = A_ij B_jk").matrix().text() == "AB"


@pytest.mark.parametrize("sizes", [None, {"j": 3}])
def test_a_size_only_sizes_gives_is_named(sizes):
    # y_i = sum_j(x_i) = n_j x_i: its Jacobian is n_j I, checked with j sized by sizes=
    d = ed.diff("y_i = sum_j(x_i)", wrt="x", sizes=sizes)
    form = d.matrix()
    assert form.exists, form.reason
    assert str(form) == "∂y/∂x = n_j I   (numerator layout: rows y, columns x)"
    x = np.arange(1.0, 5.0)
    np.testing.assert_array_equal(form.evaluate(x=x, sizes={"j": 5}), 5 * np.eye(4))


@pytest.mark.parametrize("layout", ["pqki", "ikqp"])
def test_a_custom_layout_without_vec_form_says_so(layout):
    form = ed.diff("C_ik = A_ij B_jk", wrt="A_pq", layout=layout).matrix()
    assert not form.exists
    assert f"layout '{layout}' orders the axes" in form.reason
    assert ed.diff("C_ik = A_ij B_jk", wrt="A_pq", layout="pqik").matrix().exists


def test_matrix_form_takes_a_formula_string():
    """ed.matrix_form("...") used to raise AttributeError; a string is parsed."""
    assert str(ed.matrix_form("L = A_ij X_jk B_ki")) == str(ed.matrix_form(ed.parse("L = A_ij X_jk B_ki")))
    with pytest.raises(ed.EinderivError, match="formula string or a Program, got int"):
        ed.matrix_form(3)


def test_one_axis_derivative_with_respect_to_a_scalar():
    """∂y/∂a with y a vector, a a scalar: the layout note unpacked two axes (ValueError)."""
    x, a = np.array([0.5, 1.5, 2.0]), np.array(1.3)
    form = ed.matrix_form(ed.diff("y_i = x_i a", wrt="a"))
    assert str(form) == "∂y/∂a = x   (numerator layout)"
    np.testing.assert_allclose(ed.diff("y_i = x_i^a", wrt="a").evaluate(x=x, a=a),
                               x ** a * np.log(x), rtol=1e-12)
    assert ed.matrix_form(ed.diff("y_i = x_i^a", wrt="a")).exists


@pytest.mark.parametrize("src, wrt, layout, want", [
    ("L = A_ij X_jk B_ki", "X_pq", "qp", "∂L/∂X = BA   (layout qp: the transpose of the shape of X)"),
    ("L = A_ij X_jk B_ki", "X_pq", None, "∂L/∂X = Aᵀ Bᵀ   (denominator layout: the shape of X)"),
    ("L = x_i B_ij y_j", ["x_p", "y_q"], "qp", "∂²L/∂x∂y = Bᵀ   (rows y_q, columns x_p)"),
    ("L = x_i B_ij y_j", ["x_p", "y_q"], None, "∂²L/∂x∂y = B   (rows x_p, columns y_q)"),
    ("L = exp(a) x_i x_i", ["a", "x_p"], None, "∂²L/∂a∂x = 2 exp(a) x   (a vector along x_p)"),
])
def test_the_layout_note_describes_the_axes_as_written(src, wrt, layout, want):
    """An explicit layout that reverses the axes was described as the default: BA (the
    transpose of the gradient) was labelled 'denominator layout: the shape of X'."""
    kw = {} if layout is None else {"layout": layout}
    assert str(ed.matrix_form(ed.diff(src, wrt=wrt, **kw))).splitlines()[-1] == want


def test_latex_of_labels_and_powers_compiles_as_written():
    """d(dL/dx_p) was \\frac{\\partial \\mathrm{(dL}}{...}; the 12th derivative leaked '^12L';
    A^{\\top}^{\\circ 2} is a double superscript TeX refuses; Greek names stayed raw."""
    d = ed.differential(ed.diff("L = x_i A_ij x_j", wrt="x_p"))
    assert d.latex().startswith(r"d\left(\frac{\partial L}{\partial x_{p}}\right) = ")
    form = ed.matrix_form(d)
    assert str(form).startswith("d(∂L/∂x) = ")
    assert form.latex().startswith(r"d\left(\frac{\partial L}{\partial x}\right) = ")
    high = ed.diff("L = exp(a)", wrt=["a"] * 12)
    assert r"\frac{\partial^{12} L}{" in high.latex() and "^12" not in high.latex()
    assert r"\frac{\partial^{12} L}{" in ed.matrix_form(high).latex()
    squared = ed.matrix_form(ed.diff("L = (A_ij x_j)^2", wrt="x")).latex()
    assert r"{A^{\top}}^{\circ 2}" in squared and r"^{\top}^" not in squared
    greek = ed.matrix_form(ed.diff("L = exp(α) x_i x_i", wrt=["α", "x"])).latex()
    assert greek.startswith(r"\frac{\partial^{2} L}{\partial \alpha\partial x} = ")
