"""ed.explain: the derivation step by step."""

import pytest

import einderiv as ed

MATMUL = """\
Differentiate C_ik = A_ij B_jk with respect to A_pq (numerator layout).

1. The formula, every sum written out:
     C_ik = sum_j(A_ij B_jk)
     in matrix form: C = AB
     shapes: A is M×N, B is N×P

2. The differential, by the sum rule and the product rule d(fg) = df g + f dg:
     dC_ik = sum_j(A_ij dB_jk) + sum_j(B_jk dA_ij)
     in matrix form: dC = A dB + dA B

3. Substitute ∂A_ij/∂A_pq = δ_ip δ_jq for dA; B does not depend on A: dB = 0:
     dC_ik/dA_pq = sum_j(B_jk δ_ip δ_jq)

4. Eliminate the δ: a δ_jq inside a sum over j sets j = q and the sum disappears (Σ_j δ_jq f_j = f_q):
     dC_ik/dA_pq = δ_ip B_qk

5. The result:
     dC_ik/dA_pq = δ_ip B_qk

6. Shape in numerator layout (the axes of C first, then those of A_pq):
     axes (i, k, p, q): M×P×M×N

7. Matrix form:
     ∂vec(C)/∂vec(A) = Bᵀ ⊗ I   (numerator layout, vec stacks columns)"""


def test_matmul_golden():
    assert ed.explain("C_ik = A_ij B_jk", wrt="A_pq") == MATMUL


def test_denominator_layout_shape():
    text = ed.explain("C_ik = A_ij B_jk", wrt="A_pq", layout="denominator")
    assert "Shape in denominator layout (the axes of A_pq first, then those of C)" in text
    assert "axes (p, q, i, k): M×N×M×P" in text
    assert "∂vec(C)/∂vec(A) = B ⊗ I   (denominator layout" in text


@pytest.mark.parametrize("formula, wrt, matrix", [
    ("L = A_ij X_jk B_ki", "X", "∂L/∂X = Aᵀ Bᵀ"),
    ("L = (sum_j(A_ij x_j) - b_i)^2", "x", "∂L/∂x = 2 Aᵀ(Ax − b)"),
    ("L = a_i X_ij b_j", "X", "∂L/∂X = a bᵀ"),
    ("L = X_ji A_jk X_ki", "X", "∂L/∂X = (A + Aᵀ) X"),
    ("L = x_i A_ij x_j", ["x_p", "x_q"], "∂²L/∂x∂x = A + Aᵀ"),
])
def test_result_and_matrix_form_lines(formula, wrt, matrix):
    text = ed.explain(formula, wrt=wrt)
    d = ed.diff(formula, wrt=wrt)
    result = text.split("The result:\n", 1)[1]
    assert result.split("\n")[0].strip() == str(d).split("\n")[-1]
    assert "     " + matrix + "   (" in text
    assert "Substitute ∂" in text and "δ" in text


def test_hessian_differentiates_again():
    text = ed.explain("L = x_i A_ij x_j", wrt=["x_p", "x_q"])
    assert "dL/dx_p = sum_ij(A_ij (δ_ip x_j + δ_jp x_i))" in text
    assert "Differentiate again, the same way, with respect to x_q" in text
    assert "d²L/dx_p dx_q = A_pq + A_qp" in text


def test_program_one_statement_at_a_time():
    src = "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2"
    text = ed.explain(src, wrt="W")
    assert "dh_i = (1 - h_i^2) (sum_j(W_ij dx_j) + sum_j(dW_ij x_j))" in text
    assert "dL = 2 sum_i((dh_i - dt_i) (h_i - t_i))" in text
    assert "the chain rule d f(u) = f'(u) du for tanh" in text
    assert "dh_i/dW_pq = δ_ip x_q (1 - h_i^2)" in text          # the intermediate's own Jacobian
    assert "dL/dW_pq = 2 sum_i(dh/dW_ipq (h_i - t_i))" in text  # chain rule substitution
    assert "dL/dW_pq = 2 x_q (1 - h_p^2) (h_p - t_p)" in text
    assert "∂L/∂W = 2 ((𝟙 − h^∘2) ⊙ (h − t)) xᵀ" in text
    assert "x and t do not depend on W: dx = 0, dt = 0" in text


def test_no_matrix_form_is_said():
    text = ed.explain("C_ij = A_ij B_ij", wrt="A")
    assert "none (" in text and "the index form above is the answer" in text


def test_differential_only():
    text = ed.explain("C_ik = A_ij B_jk")
    assert "dC_ik = sum_j(A_ij dB_jk) + sum_j(B_jk dA_ij)" in text
    assert "Substitute" not in text


def test_depends():
    text = ed.explain("C_ik = A_ij B_jk", wrt="X_pq", depends={"A": "X", "B": "X"})
    assert "∂A/∂X = dAdX" in text
    assert str(ed.diff("C_ik = A_ij B_jk", wrt="X_pq", depends={"A": "X", "B": "X"})) in text


@pytest.mark.parametrize("kwargs", [dict(wrt="Z"), dict(wrt="A_pqr"), dict(wrt="A", of="Q"),
                                    dict(wrt="A", layout="xyz")])
def test_errors_are_einderiv_errors(kwargs):
    with pytest.raises(ed.EinderivError):
        ed.explain("C_ik = A_ij B_jk", **kwargs)


def test_syntax_error():
    with pytest.raises(ed.EinderivSyntaxError):
        ed.explain("C_ik = A_ij + * B_jk", wrt="A")


def test_a_size_factor_has_a_matrix_form():
    text = ed.explain("y_i = sum_j(x_i)", wrt="x")
    assert "∂y/∂x = n_j I   (numerator layout" in text
    assert "bug" not in text


def test_with_respect_to_an_intermediate_its_own_line_is_the_identity():
    text = ed.explain("h_i = tanh(x_i); L = h_i h_i", wrt="h")
    step3 = text.split("3. ", 1)[1].split("4. ", 1)[0]
    assert "dh_i/dh_p = δ_ip" in step3 and "dh_i/dh_p = 0" not in step3
    assert "dL/dh_p = 2 h_p" in text


def test_a_derivative_explained_again_is_its_next_derivative():
    """explain(diff(f, x), wrt=x) failed with 'wrt index p is already an index of the result'."""
    text = ed.explain(ed.diff("L = x_i x_i x_i", wrt="x"), wrt="x")
    assert "with respect to x_q" in text
    assert "d²L/dx_p dx_q = 6 δ_pq x_p" in text


def test_scalar_variable():
    """dy_i/da of y_i = x_i^a: matrix_form raised ValueError (a one-axis result), and the
    substitution read '∂a/∂a =  for da'."""
    text = ed.explain("y_i = x_i^a", wrt="a")
    assert "∂a/∂a = 1 for da" in text
    assert "dy_i/da = y_i log(x_i)" in text
    assert "each δ joining two free indices" not in text


def test_wrt_that_is_not_a_string_or_list_is_an_einderiv_error():
    with pytest.raises(ed.EinderivError, match="wrt"):
        ed.explain("L = x_i x_i", wrt=5)
