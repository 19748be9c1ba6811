"""The command line through subprocess: every command, every --to, bad input, and exported
code run where einderiv is not importable."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv as ed
from einderiv.cli import input_shapes

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "einderiv.cli", *args], input=stdin,
                          capture_output=True, text=True, env=ENV, cwd=cwd or ROOT, timeout=120)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"einderiv {ed.__version__}"
    r = run("--help")
    assert r.returncode == 0
    for word in ("diff", "differential", "vjp", "check", "explain", "examples:", "--wrt A_pq"):
        assert word in r.stdout
    r = run("diff", "--help")
    assert r.returncode == 0 and "--layout" in r.stdout and "--to" in r.stdout



def test_vjp_help_describes_its_wrt_list():
    """vjp's --wrt help said 'a list x_p,x_q for higher order'; for vjp a list gives one
    result per variable, named without indices."""
    r = run("vjp", "--help")
    assert r.returncode == 0 and "higher order" not in r.stdout
    assert "W,x (one result each)" in " ".join(r.stdout.split())
    r = run("vjp", "L = w_i x_i", "--wrt", "w,x")
    assert r.returncode == 0 and r.stdout.splitlines() == ["Gw_p = G x_p", "Gx_p = G w_p"]

def test_diff_text_and_layout():
    r = run("diff", "C_ik = A_ij B_jk", "--wrt", "A_pq")
    assert (r.returncode, r.stdout, r.stderr) == (0, "dC_ik/dA_pq = δ_ip B_qk\n", "")
    r = run("diff", "L = A_ij X_jk B_ki", "--wrt", "X", "--to", "matrix")
    assert r.stdout == "∂L/∂X = Aᵀ Bᵀ   (denominator layout: the shape of X)\n"
    r = run("diff", "y_i = A_ij x_j", "--wrt", "x", "--layout", "denominator", "--to", "matrix")
    assert r.stdout.startswith("∂y/∂x = Aᵀ")


@pytest.mark.parametrize("to", ["text", "latex", "einsum", "matrix", "numpy", "torch", "jax"])
def test_every_target(to):
    d = ed.diff("C_ik = A_ij B_jk", wrt="A_pq")
    r = run("diff", "C_ik = A_ij B_jk", "--wrt", "A_pq", "--to", to)
    assert r.returncode == 0, r.stderr
    expected = {"text": str(d), "latex": d.latex(), "matrix": str(d.matrix())}.get(to)
    if expected is not None:
        assert r.stdout == expected + "\n"
    elif to == "einsum":
        assert "einsum(" in r.stdout and "B" in r.stdout
    else:
        assert r.stdout.rstrip("\n") == d.to_source(to).rstrip("\n")
        assert '"""' in r.stdout                       # the docstring with formula and shapes


def test_hessian_wrt_list_and_repeated():
    a = run("diff", "L = x_i A_ij x_j", "--wrt", "x_p,x_q")
    b = run("diff", "L = x_i A_ij x_j", "--wrt", "x_p", "--wrt", "x_q")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout == "d²L/dx_p dx_q = A_pq + A_qp\n"


def test_file_stdin_of_sizes_depends(tmp_path):
    model = tmp_path / "model.ein"
    model.write_text("# a small network\nh_i = tanh(sum_j(W_ij x_j))\nL = (h_i - t_i)^2\n")
    r = run("diff", str(model), "--wrt", "W", "--of", "L")
    assert r.returncode == 0
    assert r.stdout == "h_i = tanh(sum_j(W_ij x_j))\ndL/dW_pq = 2 x_q (1 - h_p^2) (h_p - t_p)\n"
    r = run("diff", "-", "--wrt", "W", "--of", "h", stdin="h_i = tanh(sum_j(W_ij x_j))\nL = (h_i - t_i)^2\n")
    assert r.returncode == 0 and r.stdout.startswith("h_i = tanh")
    assert "dh_i/dW_pq" in r.stdout
    r = run("diff", "C_ik = A_ij B_jk", "--wrt", "X_pq", "--depends", "A:X,B:X")
    assert r.stdout == str(ed.diff("C_ik = A_ij B_jk", wrt="X_pq", depends={"A": "X", "B": "X"})) + "\n"
    r = run("diff", "y_i = A_ij x_j + c_i", "--wrt", "x", "--sizes", "i=3")
    assert r.returncode == 0


def test_a_file_or_stdin_saved_with_a_byte_order_mark(tmp_path):
    """'UTF-8 with BOM' (U+FEFF first) was 'unexpected character' at column 1."""
    model = tmp_path / "bom.ein"
    model.write_bytes("\ufeffC_ik = A_ij B_jk\n".encode("utf-8"))
    for args, stdin in (([str(model)], None), (["-"], "\ufeffC_ik = A_ij B_jk\n")):
        r = run("diff", *args, "--wrt", "A_pq", stdin=stdin)
        assert (r.returncode, r.stdout) == (0, "dC_ik/dA_pq = δ_ip B_qk\n"), r.stderr


def test_differential_and_vjp():
    r = run("differential", "C_ik = A_ij B_jk")
    assert r.returncode == 0 and r.stdout == str(ed.differential("C_ik = A_ij B_jk")) + "\n"
    r = run("differential", "C_ik = A_ij B_jk", "--to", "matrix")
    assert r.stdout == "dC = A dB + dA B\n"
    src = "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2"
    r = run("vjp", src, "--wrt", "W,x")
    assert r.returncode == 0 and r.stdout == str(ed.vjp(src, wrt=["W", "x"])) + "\n"
    r = run("vjp", src, "--wrt", "W", "--cotangent", "g", "--to", "latex")
    assert r.returncode == 0 and r.stdout == ed.vjp(src, wrt="W", cotangent="g").latex() + "\n"
    r = run("vjp", "y_i = sum_j(W_ij x_j)", "--wrt", "y")      # the output's own cotangent
    assert r.returncode == 0 and r.stdout == "Gy_i = G_i\n"
    r = run("vjp", src, "--wrt", "h,W")                          # no ↦h: h's result is Gh
    assert r.returncode == 0 and "↦" not in r.stdout and "\nGh_i = " in r.stdout


def test_explain():
    r = run("explain", "C_ik = A_ij B_jk", "--wrt", "A_pq")
    assert r.returncode == 0 and r.stdout == ed.explain("C_ik = A_ij B_jk", wrt="A_pq") + "\n"


def test_check_passes_and_reports_errors():
    r = run("check", "L = x_i A_ij x_j", "--wrt", "x", "--sizes", "i=3,j=3")
    assert r.returncode == 0, r.stderr
    assert "max abs error" in r.stdout and "max rel error" in r.stdout and r.stdout.rstrip().endswith("OK")
    r = run("check", "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", "--wrt", "W,x", "--layout", "denominator")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("check", "L = log(sum_i(exp(x_i)))", "--wrt", "x", "--seed", "3")
    assert r.returncode == 0


@pytest.mark.parametrize("formula, where", [
    ("L = sum_i(exp(x_i))", "1,20"),       # |L| ~ 1e9 next to derivatives ~ 4: rounding
    ("L = log(x_i)", "1e-4,1e-3"),          # a fixed step of 1e-6 is large next to x
    ("L = sqrt(x_i)", "1e-7,1e-6"),         # ... and stepped out of the domain
])
def test_check_does_not_call_a_right_derivative_a_mismatch(formula, where):
    """These were MISMATCH (exit 1; 'max rel error 7.68e-11: MISMATCH') or 'not finite'
    (exit 2, after printing the derivative): the step was 1e-6 max(1, |x|) and the
    tolerance ignored the rounding error of differences of large values."""
    r = run("check", formula, "--wrt", "x", "--sizes", "i=5", "--range", where)
    assert (r.returncode, r.stderr) == (0, ""), r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("OK")


def test_check_outside_the_domain_prints_no_derivative_first():
    r = run("check", "L = sum_i(log(x_i - 1))", "--wrt", "x", "--sizes", "i=3")
    assert r.returncode == 2 and r.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--rtol", "-1"], "--rtol must be a finite number ≥ 0"),
    (["--atol", "nan"], "--atol must be a finite number ≥ 0"),
    (["--range", "3,2"], "--range needs finite LO < HI"),
    (["--range", "a"], "--range takes two numbers"),
    (["--sizes", "i=0"], "nothing to compare"),
    # 2·10^8 evaluations of the formula: it ran for minutes, its memory growing, before
    (["--sizes", "i=100000000"], "finite differences would evaluate"),
])
def test_check_refuses_what_cannot_be_checked(args, message):
    r = run("check", "L = x_i x_i", "--wrt", "x", *(args if "--sizes" in args else ["--sizes", "i=3", *args]))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_check_range_with_a_negative_lower_bound():
    """argparse read '-1,1' as an option and answered 'expected one argument' before."""
    r = run("check", "L = relu(x_i) + x_i^2", "--wrt", "x", "--sizes", "i=4", "--range", "-1,-0.5")
    assert (r.returncode, r.stderr) == (0, "") and "OK" in r.stdout


def test_check_outside_the_domain_is_not_a_mismatch_and_range_moves_inside():
    """NaN values were reported as MISMATCH (exit 1) though nothing was compared."""
    r = run("check", "L = sum_i(log(x_i - 1))", "--wrt", "x", "--sizes", "i=3")
    assert r.returncode == 2 and "--range" in r.stderr and "MISMATCH" not in r.stdout
    r = run("check", "L = sum_i(log(x_i - 1))", "--wrt", "x", "--sizes", "i=3", "--range", "2,3")
    assert r.returncode == 0 and "OK" in r.stdout


def _check_module_mismatch(monkeypatch, capsys):
    from einderiv import cli
    real = cli.central_differences
    monkeypatch.setattr(cli, "central_differences", lambda *a, **k: real(*a, **k) * 1.01)
    return cli.main(["check", "L = x_i x_i", "--wrt", "x"]), capsys.readouterr()


def test_check_mismatch_in_process(monkeypatch, capsys):
    code, out = _check_module_mismatch(monkeypatch, capsys)
    assert code == 1 and "MISMATCH" in out.out


BAD = [
    (["diff", "C_ik = A_ij + * B_jk", "--wrt", "A"], "unexpected"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "Z"], "'Z'"),
    (["diff", "C_ik = A_ij B_jk"], "--wrt"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "A", "--layout", "xyz"], "layout"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "A", "--sizes", "i3"], "--sizes"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "A", "--depends", "A"], "--depends"),
    (["diff", "no_such_file.ein", "--wrt", "A"], "no_such_file.ein"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "A", "--to", "fortran"], "invalid choice"),
    (["check", "L = x_i A_ij x_j", "--wrt", "x", "--sizes", "i=3,j=4"], "size"),
    (["check", "h_i = x_i^2; L = h_i h_i", "--wrt", "h"], "inputs only"),
    (["vjp", "y_i = A_ij x_j", "--wrt", "q"], "'q'"),
    (["vjp", "y_i = A_ij x_j", "--wrt", "A_pq"], "without indices: 'A', not 'A_pq'"),
    (["explain", "C_ik = A_ij B_jk", "--wrt", "A_pqr"], "A"),
    (["differential", "C_ik = A_ij B_j"], "k"),
    (["bogus"], "invalid choice"),
    (["check", "y_i = x_i", "--wrt", "x", "--sizes", "i=3,i=4"], "gives 'i' twice"),
    (["diff", "C_ik = A_ij B_jk", "--wrt", "X", "--depends", "A:X,A:Y"], "gives 'A' twice"),
    (["diff", "y_i = x_i − z_i", "--wrt", "x"], "a minus is written '-'"),
    (["check", "C_ik = A_ij B_jk", "--wrt", "A", "--sizes", "i=99999999999999999999999"],
     "above the memory limit"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_user_errors_exit_2_without_traceback(args, needle):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert needle in r.stderr


def test_syntax_error_shows_caret():
    r = run("diff", "C_ik = A_ij + * B_jk", "--wrt", "A")
    lines = r.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("einderiv: error: line 1, column 15")
    assert lines[1].strip() == "C_ik = A_ij + * B_jk"
    assert lines[2].index("^") == lines[1].index("*")


# --- exported code, run where einderiv cannot be imported --------------------------------------

EXPORTS = [
    ("C_ik = A_ij B_jk", "A_pq"),
    ("h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", "W"),
    ("L = x_i A_ij x_j", "x_p,x_q"),
]

RUNNER = """
import sys
sys.modules["einderiv"] = None  # block it even where it is installed: the code must not need it
import numpy as np
try:
    import einderiv
    sys.exit("einderiv must not be importable here")
except ImportError:
    pass
src = open("derivative.py").read()
ns = {}
exec(compile(src, "derivative.py", "exec"), ns)
inputs = [np.load(f"{n}.npy") for n in sys.argv[2:]]
if sys.argv[1] == "torch":
    import torch
    inputs = [torch.from_numpy(a) for a in inputs]
elif sys.argv[1] == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    inputs = [jnp.asarray(a) for a in inputs]
out = ns["derivative"](*inputs)
np.save("out.npy", np.asarray(out))
"""


def _available(target):
    if target == "numpy":
        return True
    try:
        __import__(target)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("target", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("formula, wrt", EXPORTS, ids=[e[0] for e in EXPORTS])
def test_exported_code_runs_standalone(tmp_path, target, formula, wrt):
    if not _available(target):
        pytest.skip(f"{target} is not installed")
    r = run("diff", formula, "--wrt", wrt, "--to", target)
    assert r.returncode == 0, r.stderr
    (tmp_path / "derivative.py").write_text(r.stdout)
    (tmp_path / "runner.py").write_text(RUNNER)
    wrt_list = wrt.split(",")
    d = ed.diff(formula, wrt=wrt_list if len(wrt_list) > 1 else wrt_list[0])
    rng = np.random.default_rng(5)
    arrays = {n: rng.uniform(0.5, 1.5, size=s) for n, s in input_shapes(d).items()}
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-I", "runner.py", target, *d.inputs], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, d.evaluate(**arrays), rtol=1e-10, atol=1e-12)


def test_a_console_without_unicode_gets_replacement_characters():
    """A cp1252 stdout (a Windows console) used to end in an internal error (exit 3)."""
    env = {**ENV, "PYTHONIOENCODING": "cp1252"}
    r = subprocess.run([sys.executable, "-m", "einderiv.cli", "diff", "C_ik = A_ij B_jk", "--wrt",
                        "A_pq"], capture_output=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("cp1252").strip() == "dC_ik/dA_pq = ?_ip B_qk"


def test_check_outside_a_domain_gives_a_hint_and_no_warnings():
    r = run("check", "L = sqrt(x_i - 1)", "--wrt", "x")
    assert r.returncode == 2
    assert "MISMATCH" not in r.stdout and "outside the domain" in r.stderr
    assert "RuntimeWarning" not in r.stderr


def test_einsum_listing_defines_every_temporary():
    r = run("diff", "h_i = tanh(sum_j(W_ij x_j)); L = (h_i - t_i)^2", "--wrt", "W", "--to", "einsum")
    assert r.returncode == 0, r.stderr
    assert "%t2 = tanh(%t1)\n" in r.stdout and "%t3 = h ** 2\n" in r.stdout
    r = run("diff", "C_ik = A_ij B_jk", "--wrt", "A_pq", "--to", "einsum")
    assert r.stdout == "∂C_ikpq += einsum('ab->ba', B)  # axes k q; on the diagonal i=p\n"
    r = run("diff", "y = 3 + x", "--wrt", "x", "--to", "einsum")
    assert r.stdout == "∂y += 1\n"


def test_python_dash_m_einderiv_is_the_command_line():
    run = subprocess.run([sys.executable, "-m", "einderiv", "diff", "C_ik = A_ij B_jk", "--wrt", "A_pq"],
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert (run.returncode, run.stdout.strip()) == (0, "dC_ik/dA_pq = δ_ip B_qk"), run.stderr
    bad = subprocess.run([sys.executable, "-m", "einderiv", "diff", "C_ik = A_ij +", "--wrt", "A"],
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "^" in bad.stderr
