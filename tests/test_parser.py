"""The language of SPEC §1: every construct parses, and mistakes point at the place."""

import pytest

import einderiv as ed

VALID = [
    "C_ik = A_ij B_jk",
    "C_{ik} = A_{ij} B_{jk}",
    "y_{out,} = W_{out,in} x_{in,}",
    "y_{out,b} = W_{out,in} x_{in,b}",
    "C_ik = A_ij * B_jk",
    "y_i = A_ij x_j + b_i",
    "y_i = A_ij x_j - b_i",
    "L = -y_i log(p_i)",
    "L = (x_i - y_i)^2",
    "y_i = x_i^0.5 + x_i^(-1) + x_i^a",
    "y_i = exp(z_i) / sum_j(exp(z_j))",
    "y_i = tanh(sum_j(W_ij x_j) + b_i)",
    "t = A_ii",
    "d_i = A_ii",
    "C_ij = delta_ij + A_ij",
    "C_ij = δ_ij a + A_ij",
    "y = 1e-3 x + 2 z + .5 w",
    "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2",
    "h_i = x_i\n\n# a comment\nL = h_i h_i  # trailing comment\n",
    "L = α_i β_i",
    "L = sum_{ij}(A_ij)",
    "L = sum_{a,b}(M_{a,b})",
    "y_i = " + " + ".join(f"{f}(x_i)" for f in
                          "exp log sqrt sin cos tan tanh sinh cosh sigmoid softplus relu abs".split()),
    "y_i = a (x_i + b_i)",
    "y_i = -x_i^2",
]


@pytest.mark.parametrize("src", VALID)
def test_valid_formulas_parse(src):
    prog = ed.parse(src)
    assert prog.statements


def test_text_shows_explicit_sums():
    assert str(ed.parse("C_ik = A_ij B_jk")) == "C_ik = sum_j(A_ij B_jk)"
    assert str(ed.parse("y_i = tanh(W_ij x_j + b_i)")) == "y_i = sum_j(tanh(W_ij x_j + b_i))"
    assert str(ed.parse("y_i = tanh(sum_j(W_ij x_j) + b_i)")) == "y_i = tanh(sum_j(W_ij x_j) + b_i)"


def test_precedence():
    # ^ binds tighter than unary minus
    assert str(ed.parse("y_i = -x_i^2")) == "y_i = -x_i^2"
    # products and quotients left to right: x / z w = (x / z) w
    assert ed.parse("y_i = x_i / z_i w_i") == ed.parse("y_i = x_i w_i / z_i")


def test_brace_forms_are_the_same():
    assert ed.parse("C_ik = A_ij B_jk") == ed.parse("C_{ik} = A_{ij} B_{jk}")
    assert ed.parse("C_ik = A_ij B_jk") == ed.parse("C_{i,k} = A_{i,j} B_{j,k}")


def test_renamed_dummies_are_equal():
    assert ed.parse("L = x_i A_ij x_j") == ed.parse("L = x_k A_kl x_l")


def test_y_out_is_three_indices():
    prog = ed.parse("y_{out} = x_o x_u x_t")
    assert prog.indices == ("o", "u", "t")


@pytest.mark.parametrize("src, line, column", [
    ("C_ik = A_ij B_jk +", 1, 19),
    ("C_ik = (A_ij B_jk", 1, 18),
    ("C_ik = A_ij B_jk)", 1, 17),
    ("h_i = x_i\nL = h_i $ 2", 2, 9),
    ("C_ik == A_ij", 1, 7),
])
def test_syntax_errors_point_at_the_place(src, line, column):
    with pytest.raises(ed.EinderivSyntaxError) as info:
        ed.parse(src)
    err = info.value
    assert (err.line, err.column) == (line, column)
    message = str(err)
    assert f"line {line}, column {column}" in message
    caret_line = message.splitlines()[-1]
    source_line = message.splitlines()[-2]
    assert caret_line.strip() == "^"
    assert caret_line.index("^") == 2 + column - 1
    assert source_line.startswith("  ")


@pytest.mark.parametrize("src, column, shown", [
    ("y_i = x_i2", 10, "'2' directly after 'x_i'"),
    ("y_i = x_{i}2", 12, "'2' directly after 'x_{i}'"),
    ("y = 1..2", 7, "'.2' directly after '1.'"),
    ("y = 1.5.5", 8, "'.5' directly after '1.5'"),
    ("y_i = 2x_i", 8, "'x_i' directly after '2'"),
    ("y = 1e-3x", 9, "'x' directly after '1e-3'"),
    ("y_i = x_i^2y_i", 12, "'y_i' directly after '2'"),
    ("y_i = 2sin(x_i)", 8, "'sin(' directly after '2'"),
    ("y_i = (x_i)2", 12, "'2' directly after ')'"),
    ("y_i = 2(x_i)", 8, "'(' directly after '2'"),
])
def test_a_number_touching_its_neighbour_is_an_error(src, column, shown):
    """SPEC §1: juxtaposition needs a space, so a typo like x_i2 is not silently 2 x_i."""
    with pytest.raises(ed.EinderivSyntaxError, match="space or") as info:
        ed.parse(src)
    assert (info.value.line, info.value.column) == (1, column)
    assert shown in str(info.value)
    assert str(info.value).splitlines()[-1].index("^") == 2 + column - 1


@pytest.mark.parametrize("src, text", [
    ("y_i = 2 x_i", "y_i = 2 x_i"),
    ("y_i = 2*x_i", "y_i = 2 x_i"),
    ("y_i = x_i*2", "y_i = 2 x_i"),
    ("y_i = x_i^2", "y_i = x_i^2"),
    ("y_i = 1e-3 x_i", "y_i = 0.001 x_i"),
    ("y_i = W1_ij x_j", "y_i = sum_j(W1_ij x_j)"),
    ("y = 2 (x + z)", "y = 2 x + 2 z"),
])
def test_spaced_numbers_still_multiply(src, text):
    assert str(ed.parse(src)) == text


def test_unknown_function_lists_the_valid_ones():
    with pytest.raises(ed.EinderivError, match="unknown function 'foo'.*tanh"):
        ed.parse("y_i = foo(x_i)")


def test_name_defined_twice():
    with pytest.raises(ed.EinderivError, match="defined twice"):
        ed.parse("h_i = x_i; h_i = y_i")


def test_no_underscore_inside_names():
    with pytest.raises(ed.EinderivError):
        ed.parse("L = my_var_i")


def test_deep_nesting_is_refused_cleanly():
    src = "L = " + "exp(" * 1000 + "x" + ")" * 1000
    with pytest.raises(ed.EinderivError, match="nests deeper"):
        ed.parse(src)


def test_deep_parentheses_collapse():
    src = "L = " + "(" * 1000 + "x_i y_i" + ")" * 1000
    assert ed.parse(src) == ed.parse("L = x_i y_i")


def test_long_sums_do_not_recurse():
    src = "L = " + " + ".join(f"x{k}" for k in range(3000))
    prog = ed.parse(src)
    assert len(prog.output.expr.terms) == 3000


def test_empty_program():
    with pytest.raises(ed.EinderivError, match="empty"):
        ed.parse("  # nothing\n")


def test_reserved_words():
    with pytest.raises(ed.EinderivError, match="reserved"):
        ed.parse("exp = x")
    with pytest.raises(ed.EinderivError, match="reserved"):
        ed.parse("y = sum_i + 1")


def test_delta_alone_needs_sizes():
    with pytest.raises(ed.EinderivError, match="sizes="):
        ed.parse("C_ij = delta_ij").evaluate()
    prog = ed.parse("C_ij = delta_ij", sizes={"i": 3})
    import numpy as np
    assert np.array_equal(prog.evaluate(), np.eye(3))


@pytest.mark.parametrize("digits", ["9" * 5000, "0" * 5000 + "1", "0." + "0" * 5000 + "1"])
def test_a_number_with_thousands_of_digits_is_an_error(digits):
    with pytest.raises(ed.EinderivSyntaxError, match="characters; write it with an exponent") as info:
        ed.parse("y = " + digits + " x_i")
    assert (info.value.line, info.value.column) == (1, 5)


@pytest.mark.parametrize("src, text", [
    ("y_{out,} = W_{out,in} x_{in,}", "y_{out,} = sum_i(W_{out,i} x_i)"),
    ("y_{out,b} = W_{out,in} x_{in,b}", "y_{out,b} = sum_i(W_{out,i} x_ib)"),
    ("s_{ab,} = t_{ab,}", "s_{ab,} = t_{ab,}"),
])
def test_one_multi_letter_index_prints_with_its_comma_and_reads_back(src, text):
    prog = ed.parse(src)
    assert str(prog) == text
    assert ed.parse(str(prog)) == prog


def test_derivative_label_of_a_multi_letter_index():
    d = ed.diff("y_{out,} = W_{out,in} x_{in,}", wrt="W_pq")
    assert str(d).startswith("dy_{out,}/dW_pq = δ_{out,p} x_q")


@pytest.mark.parametrize("char, shown", [
    ("\xa0", r"'\xa0' (U+00A0 NO-BREAK SPACE)"),
    ("\x07", r"'\x07' (U+0007 a control character)"),
])
def test_an_unexpected_invisible_character_is_named(char, shown):
    with pytest.raises(ed.EinderivSyntaxError) as info:
        ed.parse(f"y = x{char}z")
    assert f"unexpected character {shown}" in str(info.value)
    assert (info.value.line, info.value.column) == (1, 6)


@pytest.mark.parametrize("wrt, message", [
    ("A_pp", "wrt='A_pp': the index 'p' repeats"),
    ("A_{p", "wrt='A_{p': the '{' in 'A_{p' is not closed"),
])
def test_wrt_mistakes_say_what_is_wrong(wrt, message):
    with pytest.raises(ed.EinderivError) as info:
        ed.diff("C_ik = A_ij B_jk", wrt=wrt)
    assert message in str(info.value)


def test_latex_of_one_multi_letter_index_has_no_stray_comma():
    """The text form's y_{out,} comma showed up in LaTeX as y_{\\mathrm{out},}."""
    assert ed.parse("y_{out,} = 2 x_{out,}").latex() == r"y_{\mathrm{out}} = 2 x_{\mathrm{out}}"
    d = ed.diff("y_{out,} = W_{out,in} x_{in,}", wrt="W_pq")
    assert d.latex().startswith(r"\frac{\partial y_{\mathrm{out}}}{\partial W_{pq}}")


def _says_at(src, hint, column):
    """parse(src) is a syntax error on line 1 at ``column`` whose message holds ``hint``."""
    with pytest.raises(ed.EinderivSyntaxError) as info:
        ed.parse(src)
    assert hint in str(info.value)
    assert (info.value.line, info.value.column) == (1, column)


@pytest.mark.parametrize("src, column, hint", [
    ("y_i = W_ij · x_j", 12, "unexpected character '·' (write a product with a space, A_ij B_jk, or with '*')"),
    ("y_i = W_ij×x_j", 11, "unexpected character '×' (write a product"),
    ("C_ik = A_ij @ B_jk", 13, "unexpected character '@' (write a product"),
    ("L = x' x", 6, "no transpose mark; swap the indices instead: Aᵀ_ij is A_ji"),
    ("y_i = W[i,j]", 8, "indices follow '_': A_ij, not A[i,j]"),
    ("y_i = W_{ij x_j", 8, "the '{' of this index list is not closed"),
    ("y_i = W_ij} x_j", 11, "a '}' without its '{'"),
    ("L = x_i**2", 9, "unexpected '*' (a power is written with '^', like x_i^2)"),
    ("L = x_i^-2", 9, "unexpected '-' (a signed exponent goes in parentheses, like x^(-2))"),
    ("L = x_i^ +1", 10, "(a signed exponent goes in parentheses, like x^(-2))"),
    ("L = sum_j W_j x_j", 5, "'sum_j' needs parentheses around what it sums: sum_j( ... )"),
    ("L = sum(x_i)", 5, "a sum names its indices: sum_j( ... )"),
])
def test_a_likely_mistake_says_what_to_write(src, column, hint):
    """Operators from other notations (·, ×, @, ', **, A[i,j]), a signed exponent and a sum without its
    parentheses: the message points at the place and says what einderiv writes instead."""
    _says_at(src, hint, column)


@pytest.mark.parametrize("src, column, hint", [
    # the caret stands under the sub- or superscript itself
    ("L = x_i²", 8, "'²' is a Unicode superscript; write a power with '^'"),
    ("y₁ = W_ij x_j", 2, "'₁' is a Unicode subscript; write indices as letters after '_'"),
    ("y_i = W_ij x₁", 13, "'₁' is a Unicode subscript"),
    ("y_i = Wᵢⱼ x_j", 8, "'ᵢ' is a Unicode subscript"),
    ("y_i = x_₁", 9, "'₁' is a Unicode subscript"),
    ("L = x_i Aᵀ_ij x_j", 10, "there is no transpose mark"),
])
def test_unicode_sub_and_superscripts_are_refused(src, column, hint):
    """Python counts '₁', 'ᵢ', '²' as letters or digits: x_i² read as a tensor with the
    indices i and ², so 'L = x_i²' by x gave dL/dx_pq = 1, and y₁ was a scalar named y₁."""
    _says_at(src, hint, column)


@pytest.mark.parametrize("src, hint", [
    ("y_i = tahn(x_i)", "unknown function 'tahn' (did you mean 'tanh'?)"),
    ("y_i = Exp(x_i)", "unknown function 'Exp' (did you mean 'exp'?)"),
    ("y_i = sigmod(x_i)", "unknown function 'sigmod' (did you mean 'sigmoid'?)"),
    ("L = tr(A_ij)", "a trace is a repeated index: tr(A) is A_ii, tr(AXB) is A_ij X_jk B_ki"),
    ("L = log(det(X))", "determinants and inverses are not index formulas"),
    ("L = logdet(X_ij)", "determinants and inverses are not index formulas"),
    ("y_i = softmax(z_i)", "exp(z_i) / sum_j(exp(z_j))"),
    ("y = ln(x)", "the natural logarithm is log"),
])
def test_an_unknown_function_suggests_what_to_write(src, hint):
    with pytest.raises(ed.EinderivSyntaxError) as info:
        ed.parse(src)
    assert hint in str(info.value)


@pytest.mark.parametrize("src", ["L = α_i β_i", "y_i = μ_i σ_i", "L = x1_i x2_i"])
def test_greek_letters_and_digits_still_name_tensors(src):
    assert ed.parse(src).statements
