"""The documentation's examples are real runs: every ``>>>`` example and every ``$ einderiv``
command in README.md and docs/tutorial.md is run, and its output must be what the page shows."""

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import einderiv as ed

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "tutorial.md"]


def _python_examples(page):
    """``(source, expected output)`` for each ``>>>`` example of a page, in order: the output
    runs to the next ``>>>``, a blank line or the end of the code fence."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    k = 0
    while k < len(lines):
        text = lines[k].strip()
        indent = len(lines[k]) - len(lines[k].lstrip())
        k += 1
        if not text.startswith(">>> "):
            continue
        source = [text[4:]]
        while k < len(lines) and lines[k].strip().startswith("... "):
            source.append(lines[k].strip()[4:])
            k += 1
        want = []
        while k < len(lines) and lines[k].strip() and not lines[k].strip().startswith((">>>", "```")):
            want.append(lines[k][indent:].rstrip())
            k += 1
        found.append(("\n".join(source), "\n".join(want)))
    return found


def _run_example(source, namespace):
    """What the interpreter prints for one example; an exception as ``Name: message``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(source, "<doc>", "single"), namespace)  # the page's own example
        except ed.EinderivError as err:
            print(f"{type(err).__name__}: {err}")
    return out.getvalue()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples_print_what_the_page_shows(page):
    namespace = {"np": np, "ed": ed}
    examples = _python_examples(page)
    assert examples, f"no >>> examples found in {page.name}"
    for source, want in examples:
        got = "\n".join(line.rstrip() for line in _run_example(source, namespace).splitlines())
        assert got == want, (page.name, source)


def _cli_examples(page):
    """``(command, expected output)`` for each ``$ einderiv ...`` line inside a code fence:
    the output runs to the next ``$`` line or the end of the fence."""
    found, command, lines, fenced = [], None, [], False
    for line in page.read_text(encoding="utf-8").splitlines() + ["```"]:
        if line.startswith("```"):
            if command is not None:
                found.append((command, "\n".join(lines).rstrip()))
            command, lines, fenced = None, [], not fenced
        elif fenced and line.startswith("$ einderiv "):
            if command is not None:
                found.append((command, "\n".join(lines).rstrip()))
            command, lines = line[len("$ einderiv "):], []
        elif command is not None:
            lines.append(line)
    return found


CLI = [(page.name, command, want) for page in PAGES for command, want in _cli_examples(page)]


def test_the_pages_have_command_line_examples():
    assert {name for name, _, _ in CLI} == {page.name for page in PAGES}


@pytest.mark.parametrize("page, command, want", CLI, ids=[f"{p}: {c}" for p, c, _ in CLI])
def test_command_line_examples_print_what_the_page_shows(page, command, want):
    run = subprocess.run([sys.executable, "-m", "einderiv.cli", *shlex.split(command)],
                         capture_output=True, text=True, encoding="utf-8", cwd=ROOT, timeout=120)
    got = (run.stdout + run.stderr).rstrip()
    assert _rounding_free(got) == _rounding_free(want)
    for shown, measured in zip(_ERRORS.findall(want), _ERRORS.findall(got)):
        # finite-difference errors are rounding noise: they differ between CPUs and BLAS
        # builds, so the page's figures must only be of the same order as this run's
        assert all(float(m) <= 100 * max(float(s), 1e-13) for s, m in zip(shown, measured))


_ERRORS = re.compile(r"max abs error (\S+), max rel error (\S+):")


def _rounding_free(text):
    """``text`` with the measured errors of ``check`` replaced by a placeholder."""
    return _ERRORS.sub("max abs error ?, max rel error ?:", text)
