"""Einsum semantics term by term (SPEC §2), checked against numpy.einsum."""

import numpy as np
import pytest

import einderiv as ed

rng = np.random.default_rng(7)
A = rng.normal(size=(3, 4))
B = rng.normal(size=(4, 5))
S = rng.normal(size=(4, 4))
x = rng.normal(size=4)
y = rng.normal(size=4)
b = rng.normal(size=3)
c = rng.normal(size=3)

CASES = [
    ("C_ik = A_ij B_jk", dict(A=A, B=B), lambda: A @ B),
    ("C_ij = A_ij A_ij", dict(A=A), lambda: A * A),
    ("t = S_ii", dict(S=S), lambda: np.trace(S)),
    ("d_i = S_ii", dict(S=S), lambda: np.diag(S)),
    ("L = x_i S_ij x_j", dict(x=x, S=S), lambda: x @ S @ x),
    ("y_i = A_ij x_j + b_i", dict(A=A, x=x, b=b), lambda: A @ x + b),
    ("L = (x_i - y_i)^2", dict(x=x, y=y), lambda: np.sum((x - y) ** 2)),
    ("C_ij = A_ij + b_i", dict(A=A, b=b), lambda: A + b[:, None]),
    # the group is part of its term: b_i is summed over j too (times the size of j)
    ("y_i = (A_ij x_j + b_i) c_i", dict(A=A, x=x, b=b, c=c), lambda: (A @ x + 4 * b) * c),
    ("y_i = (sum_j(A_ij x_j) + b_i) c_i", dict(A=A, x=x, b=b, c=c), lambda: (A @ x + b) * c),
    # a function without an explicit sum is summed outside the function
    ("y_i = tanh(A_ij x_j + b_i)", dict(A=A, x=x, b=b),
     lambda: np.tanh(A * x[None, :] + b[:, None]).sum(axis=1)),
    ("y_i = tanh(sum_j(A_ij x_j) + b_i)", dict(A=A, x=x, b=b), lambda: np.tanh(A @ x + b)),
    ("L = log(sum_i(exp(x_i)))", dict(x=x), lambda: np.log(np.exp(x).sum())),
    ("p_i = exp(x_i) / sum_j(exp(x_j))", dict(x=x), lambda: np.exp(x) / np.exp(x).sum()),
    ("z_i = x_i / y_i x_i", dict(x=x, y=y), lambda: x / y * x),
    ("y_i = -x_i^2", dict(x=x), lambda: -(x ** 2)),
    ("y_i = x_i^a", dict(x=np.abs(x) + 0.1, a=np.array(1.7)), lambda: (np.abs(x) + 0.1) ** 1.7),
    ("C_ij = δ_ij x_i", dict(x=x), lambda: np.diag(x)),
    ("L = sum_i(x_i) sum_i(y_i)", dict(x=x, y=y), lambda: x.sum() * y.sum()),
    ("h_i = tanh(sum_j(A_ij x_j)); L = (h_i - b_i)^2", dict(A=A, x=x, b=b),
     lambda: np.sum((np.tanh(A @ x) - b) ** 2)),
    ("C_bik = P_bij Q_bjk", dict(P=rng.normal(size=(2, 3, 4)), Q=rng.normal(size=(2, 4, 5))), None),
    ("y = 2 + 3", {}, lambda: 5.0),
    # a parenthesized sum is one term: summed as a whole, the 1 included (n - Σ y)
    ("L = (1 - y_i)", dict(y=y), lambda: 4 - y.sum()),
    ("L = -x_i log(y_i^2) - (1 - x_i) y_i", dict(x=x, y=y), lambda: -(x * np.log(y ** 2)).sum() - ((1 - x) * y).sum()),
    ("Y_ij = x_i y_j", dict(x=x, y=y), lambda: np.outer(x, y)),
]


@pytest.mark.parametrize("src, arrays, expected", CASES, ids=[c[0] for c in CASES])
def test_value_matches_numpy(src, arrays, expected):
    got = ed.parse(src).evaluate(**arrays)
    if expected is None:
        expected = lambda: np.einsum("bij,bjk->bik", arrays["P"], arrays["Q"])  # noqa: E731
    np.testing.assert_allclose(got, expected(), rtol=1e-12, atol=1e-12)


def test_sizes_for_an_index_no_array_carries():
    prog = ed.parse("C_ij = x_i", sizes={"j": 5})
    assert prog.evaluate(x=x).shape == (4, 5)
    prog = ed.parse("C_ij = x_i", sizes={"j": 2})
    assert prog.evaluate(x=x, sizes={"j": 2}).shape == (4, 2)


def test_missing_lhs_size_is_an_error():
    # a left-hand index that no term mentions is most likely a typo: refused at once
    with pytest.raises(ed.EinderivError, match="index 'j'.*sizes="):
        ed.parse("C_ij = x_i")


def test_size_of_an_index_only_deltas_carry_may_come_when_evaluating():
    prog = ed.parse("C_ij = δ_ij")
    with pytest.raises(ed.EinderivError, match="index 'i'.*sizes="):
        prog.evaluate()
    np.testing.assert_array_equal(prog.evaluate(sizes={"i": 2}), np.eye(2))


def test_unknown_sizes_key():
    with pytest.raises(ed.EinderivError, match="'z'"):
        ed.parse("y_i = x_i", sizes={"z": 3})


def test_inputs_and_indices():
    prog = ed.parse("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2")
    assert prog.inputs == ("W", "x", "t")
    assert prog.indices == ()
    assert prog.outputs == ("L",)


def test_intermediate_with_other_index_names():
    prog = ed.parse("h_i = x_i; L = h_k S_kl h_l")
    np.testing.assert_allclose(prog.evaluate(x=x, S=S), x @ S @ x)


def test_intermediate_used_with_wrong_number_of_indices():
    with pytest.raises(ed.EinderivError, match="'h' has 1 indices"):
        ed.parse("h_i = x_i; L = h_ij")


def test_input_used_with_two_numbers_of_indices():
    with pytest.raises(ed.EinderivError, match="input 'x'"):
        ed.parse("L = x_i + x_ij")


def test_used_before_defined():
    with pytest.raises(ed.EinderivError, match="used before"):
        ed.parse("L = h_i h_i; h_i = x_i")


def test_self_reference():
    with pytest.raises(ed.EinderivError, match="own definition"):
        ed.parse("h_i = h_i + x_i")


def test_exponent_with_indices():
    with pytest.raises(ed.EinderivError, match="exponent"):
        ed.parse("y_i = x_i^z_i")


def test_two_sizes_along_one_dimension_name_the_tensor_axes():
    """The message names the indices and the tensor axes that tie them, never an internal
    dimension name such as 'A.0'."""
    with pytest.raises(ed.IndexSizeError) as err:
        ed.parse("L = x_i A_ij x_j", sizes={"i": 3, "j": 4})
    msg = str(err.value)
    assert "i=3, j=4" in msg and "axis 1 of A (j)" in msg and "A.0" not in msg


@pytest.mark.parametrize("src, want", [
    ("y = size(x,99) x_i", "'x' has 1 axis, axis 0"),
    ("y = size(A,2) A_ij", "'A' has 2 axes, 0 to 1"),
])
def test_size_of_a_missing_axis_counts_the_axes(src, want):
    with pytest.raises(ed.EinderivError, match=want):
        ed.parse(src)


def test_size_of_an_input_read_nowhere_else():
    # the text of sum_i(x_i - x_i + 1) is size(x,0): x is an input the formula reads only there,
    # with at least the axes it names (was "'x' is not an input of the program")
    prog = ed.parse("L = size(A,1) y")
    assert prog.inputs == ("y", "A")
    assert prog.evaluate(A=np.ones((2, 3)), y=2.0) == 6.0
    assert prog.evaluate(A=np.ones((2, 3, 5)), y=2.0) == 6.0
    with pytest.raises(ed.InputError, match=r"1 axis .* length of its axis 1 \(size\(A,1\)\)"):
        prog.evaluate(A=np.ones(3), y=2.0)
    with pytest.raises(ed.EinderivError, match="'h' is not an input"):
        ed.parse("h_i = x_i; L = size(h,0)")


def test_sizes_for_a_result_index_leave_the_same_letter_in_another_statement_alone():
    # k and n of the result come only from sizes=; in h, k and n both run along x's axis. The
    # sizes are for the result (h takes x's), as evaluate already read them: once "line 1: sizes
    # gives k=3, n=2, but these indices run along one dimension" (a derivative's text and the
    # sizes its result needs)
    prog = ed.parse("h = sum_k(x_k) sum_n(x_n)\nR_kn = h", sizes={"k": 3, "n": 2})
    np.testing.assert_array_equal(prog.evaluate(x=np.array([1.0, 2.0])), np.full((3, 2), 9.0))
    with pytest.raises(ed.IndexSizeError, match="k=3, n=2, but these indices run along one"):
        ed.parse("h = sum_k(x_k) sum_n(x_n)\nR = h", sizes={"k": 3, "n": 2})


def test_a_left_hand_index_sized_by_a_later_statement():
    # h_j = 2 broadcasts along j; L reads h along y's axis, which gives j its size (the text of
    # a derivative whose intermediate simplified to a number reads like this)
    prog = ed.parse("h_j = 2; L = sum_i(h_i y_i)")
    assert prog.evaluate(y=np.array([1.0, 2.0, 3.0])) == 12.0
    with pytest.raises(ed.IndexSizeError, match="left-hand index 'j' of 'h' appears in no term"):
        ed.parse("h_j = 2; L = sum_i(h_i)")


@pytest.mark.parametrize("src, column", [
    ("y = 1e200 1e200 x_i", 5),
    ("y_i = x_i^(1e200 1e200)", 12),
    ("y_i = (x_i^1e300)^1e300", 8),
    ("y = 2^1e300", 5),
    ("y_i = 1e308 x_i + 1e308 x_i", 7),
])
def test_a_constant_beyond_float64_is_an_error_at_its_place(src, column):
    with pytest.raises(ed.EinderivSyntaxError, match="beyond float64") as info:
        ed.parse(src)
    assert (info.value.line, info.value.column) == (1, column)
    assert str(info.value).splitlines()[-1].index("^") == 2 + column - 1


def test_a_derivative_coefficient_beyond_float64_is_an_error():
    assert "1e+300 δ_ip" in str(ed.diff("y_i = x_i^1e300", wrt="x"))
    with pytest.raises(ed.EinderivError, match="beyond float64"):
        ed.diff("y_i = x_i^1e300", wrt=["x", "x"])


@pytest.mark.parametrize("src, value", [
    ("y = 1e300 x + 1e300 x", 2e300), ("y = 0.5^1e300 x", 0.0), ("y = 2^(-1e300) x", 0.0),
    ("y = 1e20 x", 1e20), ("y = (-2)^3 x", -8.0),
])
def test_large_and_tiny_constants_within_float64(src, value):
    prog = ed.parse(src)
    assert float(prog.evaluate(x=np.array(1.0))) == value
    assert ed.parse(str(prog)) == prog


def test_a_forgotten_underscore_is_suggested():
    """'y_i = Wij xj' reads Wij and xj as scalars; the message names the likely tensor."""
    with pytest.raises(ed.IndexSizeError, match=r"did you mean W_ij\? indices follow '_'"):
        ed.parse("y_i = Wij xj")
    with pytest.raises(ed.EinderivError, match=r"inputs: xi, Aij, xj\) \(did you mean x_i\?"):
        ed.diff("L = xi Aij xj", wrt="x")
    with pytest.raises(ed.IndexSizeError) as info:
        ed.parse("y_a = alpha")             # a word, not a glued index list
    assert "did you mean" not in str(info.value)
